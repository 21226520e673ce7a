"""Keep only the word pieces the task uses: a smaller word-embedding matrix and a tokenizer to match.

Before -> After (MiniLM on Rotten Tomatoes):
    word_embeddings Embedding(30522, 384); vocab.txt / tokenizer.json with 30522 tokens
 -> word_embeddings Embedding(n, 384);     vocab.txt / tokenizer.json of the n kept tokens, renumbered
    0..n-1 in their old order; config vocab_size n
The shipped tokenizer files produce the new ids directly, so the app remaps nothing at run time.

Kept: every token id of the task corpus — the `--train-data` texts and the `--calibration` texts, never
`--data`'s (the test set only scores: keeping its words flattered the score, issue 17 item 12) — plus the
special and added tokens.

What is guaranteed: a text whose word pieces (under the old vocabulary) are all kept tokenizes to the
same pieces, hence gives bit-identical logits. WordPiece takes the longest vocabulary entry that
prefixes the rest of a word; removing entries that were never that longest match changes no match.
That holds for every corpus text; the export's `--data` is not part of the corpus, so its score counts
words the app will meet unseen the way the app meets them: a word with a piece never seen is re-split into
kept pieces or becomes [UNK] (tools/bench_prune.py measures such texts with a `--calibration` file that is
not the test split).

Measured on the Rotten Tomatoes teacher (train split as --train-data, validation as --calibration):
30522 -> 14133 tokens (46% of the matrix); 76.6% of the test texts tokenize exactly as before, and test
accuracy went 84.01% -> 83.93% with 99.1% prediction agreement. Also keeping every ASCII character
(so that unseen words spell out rather than become [UNK]) changed neither figure measurably.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgecompress.architectures import architecture_of
from edgecompress.compress._pruning import cloned, set_config
from edgecompress.errors import InternalError, UserError
from edgecompress.intake.model import load_tokenizer
from edgecompress.passes import Pass, PassContext, PassResult, PassSkipped, register_pass

# Constructor arguments of a transformers tokenizer that name its source files, not its behaviour.
_SOURCE_KWARGS = (
    "vocab",
    "vocab_file",
    "tokenizer_file",
    "tokenizer_object",
    "added_tokens_decoder",
    "name_or_path",
    "backend",
    "is_local",
    "local_files_only",
)


@register_pass
@dataclass(frozen=True)
class TrimVocab(Pass):
    name = "trim_vocab"
    stage = "compress"
    in_place = False  # works on a copy (`cloned`): the pipeline keeps the input as the accuracy reference

    def requires(self, bundle, ctx: PassContext) -> None:
        if bundle.module is None:
            raise PassSkipped("the model came in as ONNX: there is no torch embedding to trim")
        if ctx.train_data is None and _task_calibration(ctx) is None:
            raise UserError(
                f"pass '{self.name}' keeps the tokens of the task's texts, but none were given",
                expected="--train-data or --calibration (--data only scores: keeping its tokens "
                "would flatter the score)",
                hint="without texts every token would go",
            )
        model = _tokenizer_json(bundle.tokenizer).get("model", {})
        if model.get("type") != "WordPiece":
            raise PassSkipped(
                f"the tokenizer's model is {model.get('type')!r}; only WordPiece vocabularies are trimmed"
                + _WHY_NOT.get(str(model.get("type")), "")
            )
        kept = kept_ids(bundle, ctx)
        if len(kept) == len(bundle.tokenizer):
            raise PassSkipped(f"all {len(kept)} tokens occur in the task's texts: nothing to trim")

    def run(self, bundle, ctx: PassContext) -> PassResult:
        kept = kept_ids(bundle, ctx)
        new = cloned(bundle)
        folder = Path(tempfile.mkdtemp(prefix="edgecompress-vocab-"))
        try:
            files = write_tokenizer(bundle.tokenizer, kept, folder)
            new.tokenizer, _ = load_tokenizer(folder, bundle.config, folder)  # what the shipped files say
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        # The folder lives as long as the tokenizer it describes (at the latest until exit).
        weakref.finalize(new.tokenizer, shutil.rmtree, folder, True)
        new.tokenizer_dir = folder
        pad_id = int(new.tokenizer.pad_token_id or 0)
        new.tokenizer_settings = dataclasses.replace(bundle.tokenizer_settings, pad_token_id=pad_id, files=files)
        before = _word_embeddings(new.module).weight.shape
        _set_word_embeddings(
            new.module,
            torch.nn.Embedding.from_pretrained(
                _word_embeddings(new.module).weight.detach()[torch.tensor(kept)].clone(),
                freeze=False,
                padding_idx=pad_id,
            ),
        )
        set_config(new, vocab_size=len(kept), pad_token_id=pad_id)
        return PassResult(new, _notes(ctx, before, len(kept)), _stats(before, len(kept)), lossy=True)

    def ensures(self, before, result: PassResult, ctx: PassContext) -> None:
        """The new ids name the same pieces as the old ones on corpus texts, and sizes agree."""
        bundle = result.model
        rows = _word_embeddings(bundle.module).weight.shape[0]
        if not rows == len(bundle.tokenizer) == bundle.config["vocab_size"]:
            raise InternalError(
                f"{self.name}: {rows} embedding rows, {len(bundle.tokenizer)} tokens, "
                f"config vocab_size {bundle.config['vocab_size']}"
            )
        texts = ctx.train_data.texts[:64] if ctx.train_data is not None else []
        old = [before.tokenizer.convert_ids_to_tokens(ids) for ids in before.tokenizer(texts)["input_ids"]]
        new = [bundle.tokenizer.convert_ids_to_tokens(ids) for ids in bundle.tokenizer(texts)["input_ids"]]
        if old != new:
            raise InternalError(f"{self.name}: the trimmed tokenizer splits training texts differently")


# Why the other subword models are left whole: keeping only the corpus's final pieces would change how
# the corpus itself tokenizes, so the guarantee above would not hold (RoBERTa, XLM-R).
_WHY_NOT = {
    "BPE": " (BPE builds a word's pieces through merges whose intermediate tokens must stay, and a byte-level"
    " BPE needs all 256 byte tokens: keeping only the corpus's pieces would re-split corpus words; not written yet)",
    "Unigram": " (Unigram picks the most probable split over all pieces, so its pieces' scores and <unk>"
    " fallback would have to be carried over; not written yet)",
}


def kept_ids(bundle, ctx: PassContext) -> list[int]:
    """Old ids to keep, ascending: special and added tokens, and every id of the task's texts."""
    tokenizer = bundle.tokenizer
    ids = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    if ctx.train_data is not None:
        encoded = tokenizer(ctx.train_data.texts, truncation=True, max_length=bundle.tokenizer_settings.max_length)[
            "input_ids"
        ]
        ids.update(i for row in encoded for i in row)
    calibration = _task_calibration(ctx)
    if calibration is not None:
        ids.update(np.unique(calibration["input_ids"]).tolist())
    return sorted(ids)


def _task_calibration(ctx: PassContext):
    """Calibration texts of the task (--calibration, or --train-data's), not the built-in sentences an export
    falls back to: their words are no evidence of what the task's texts contain."""
    return None if ctx.calibration_source == "built-in" else ctx.calibration


def write_tokenizer(tokenizer, kept: list[int], folder: Path) -> tuple[str, ...]:
    """Write tokenizer.json, tokenizer_config.json and vocab.txt of the kept tokens, renumbered."""
    from tokenizers import Tokenizer

    data = _renumbered(_tokenizer_json(tokenizer), kept)
    options = {k: v for k, v in tokenizer.init_kwargs.items() if k not in _SOURCE_KWARGS}
    trimmed = type(tokenizer)(tokenizer_object=Tokenizer.from_str(json.dumps(data)), **options)
    trimmed.save_pretrained(str(folder))
    vocab = sorted(data["model"]["vocab"], key=data["model"]["vocab"].get)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return tuple(
        name
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
        if (folder / name).is_file()
    )


def _tokenizer_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.loads(backend.to_str()) if backend is not None else {}


def _renumbered(data: dict, kept: list[int]) -> dict:
    """The tokenizer.json content with only the kept tokens, every id reference moved to its new id."""
    new_id = {old: new for new, old in enumerate(kept)}
    token_of = {i: token for token, i in data["model"]["vocab"].items()}
    data["model"]["vocab"] = {token_of[old]: new for new, old in enumerate(kept)}
    for token in data.get("added_tokens") or []:
        token["id"] = new_id[token["id"]]
    if data.get("padding"):
        data["padding"]["pad_id"] = new_id[data["padding"]["pad_id"]]
    _renumber_post_processor(data.get("post_processor"), new_id)
    return data


def _renumber_post_processor(node: dict | None, new_id: dict[int, int]) -> None:
    """[CLS]/[SEP] ids live in the post-processor too, in one of three shapes."""
    if not node:
        return
    if node["type"] == "TemplateProcessing":
        for spec in node["special_tokens"].values():
            spec["ids"] = [new_id[i] for i in spec["ids"]]
    elif node["type"] in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            node[key][1] = new_id[node[key][1]]
    elif node["type"] == "Sequence":
        for child in node["processors"]:
            _renumber_post_processor(child, new_id)


def _word_embeddings(module) -> torch.nn.Embedding:
    return architecture_of(module).word_embeddings(module.hf_model)


def _set_word_embeddings(module, embedding: torch.nn.Embedding) -> None:
    architecture_of(module).set_word_embeddings(module.hf_model, embedding)


def _notes(ctx: PassContext, before: torch.Size, kept: int) -> list[str]:
    sources = []
    if ctx.train_data is not None:
        sources.append(f"{len(ctx.train_data)} training texts")
    calibration = _task_calibration(ctx)
    if calibration is not None and ctx.calibration_source != "train-data":
        sources.append(f"{len(calibration['input_ids'])} calibration texts")
    rows, width = before
    return [
        f"kept {kept} of {rows} tokens: those in {' and '.join(sources)}, and the special tokens",
        f"word embeddings {rows}x{width} -> {kept}x{width} ({rows * width * 4 / 1e6:.1f} MB -> "
        f"{kept * width * 4 / 1e6:.1f} MB float32, {kept / rows:.0%})",
        "texts made only of kept word pieces give identical logits; elsewhere a word with an unseen "
        "piece is re-split into kept pieces or becomes [UNK]",
    ]


def _stats(before: torch.Size, kept: int) -> dict:
    rows, width = before
    return {
        "vocab_before": rows,
        "vocab_after": kept,
        "embedding_parameters_before": rows * width,
        "embedding_parameters_after": kept * width,
    }
