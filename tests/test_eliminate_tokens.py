"""Progressive token elimination (`eliminate_tokens`): it fires, it refuses and says why, outputs match where it
is exact, an agreement floor after recovery where it is not, and the export runs on ONNX Runtime and LiteRT."""

from __future__ import annotations

import onnx
import pytest
import torch
from click.testing import CliRunner

from edgecompress.cli import main
from edgecompress.compress._pruning import encoder_layers
from edgecompress.compress._taskdata import task_data
from edgecompress.compress.eliminate_tokens import EliminateTokens, predictions, significance
from edgecompress.errors import UserError
from edgecompress.intake.data import load_dataset, tokenize
from edgecompress.intake.model import load_bundle
from edgecompress.passes import apply_pass

from conftest import SENTENCES, user_error, write_csv
from family_models import build_any_family_checkpoint
from helpers import ort_logits, pass_context, torch_logits

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TEXTS = [text for text, _ in SENTENCES]


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint):
    return load_bundle(tiny_checkpoint)


def _feeds(bundle, texts=TEXTS, seq_len=16):
    return tokenize(bundle.tokenizer, texts, seq_len=seq_len, input_names=bundle.input_names)


def _logits(bundle, feeds):
    with torch.no_grad():
        return torch.from_numpy(torch_logits(bundle.module, feeds, bundle.input_names))


def test_retention_one_is_the_original_model(bundle):
    """Every token kept, and the last feed-forward on [CLS] alone: the original outputs up to float rounding."""
    eliminated, record = apply_pass(EliminateTokens(retention=[1.0], epochs=0), bundle, pass_context(bundle))
    assert record.fired and record.stats["keep"] == [16] and not record.lossy
    assert "[16, 1] of 16" in record.notes[0]
    feeds = _feeds(bundle)
    torch.testing.assert_close(_logits(eliminated, feeds), _logits(bundle, feeds), atol=1e-6, rtol=1e-6)


def test_fewer_tokens_change_the_output_but_not_with_the_padding(bundle):
    eliminated, record = apply_pass(EliminateTokens(retention=[2], epochs=0), bundle, pass_context(bundle))
    assert "[2, 1] of 16" in record.notes[0] and record.stats["dense_work_fraction"] < 0.5
    padded = _logits(eliminated, _feeds(bundle))
    assert not torch.allclose(padded, _logits(bundle, _feeds(bundle)), atol=1e-4), "keeping 2 tokens changed nothing"
    # Absolute counts: each text alone at its own length gives what it gives padded to 16.
    for i, text in enumerate(TEXTS):
        own = _feeds(bundle, [text])
        n = int(own["attention_mask"].sum())
        alone = _logits(eliminated, {name: values[:, :n] for name, values in own.items()})
        torch.testing.assert_close(alone[0], padded[i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta", "electra"])
def test_families_with_bert_layers_take_it(family, tmp_path):
    other = load_bundle(build_any_family_checkpoint(tmp_path / family, family))
    eliminated, record = apply_pass(EliminateTokens(retention=[2], epochs=0), other, pass_context(other))
    feeds = _feeds(other)
    padded = _logits(eliminated, feeds)
    assert not torch.allclose(padded, _logits(other, feeds), atol=1e-5), "keeping 2 tokens changed nothing"
    own = _feeds(other, TEXTS[:1])
    n = int(own["attention_mask"].sum())
    alone = _logits(eliminated, {name: values[:, :n] for name, values in own.items()})
    torch.testing.assert_close(alone[0], padded[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["bert", "roberta", "electra"])
def test_recomputed_probabilities_are_the_attentions_own(family, tmp_path, tiny_checkpoint):
    """The ranking reads probabilities recomputed beside the attention (which ONNX Runtime fuses): the same
    numbers eager attention computes, padding columns included."""
    checkpoint = tiny_checkpoint if family == "bert" else build_any_family_checkpoint(tmp_path / family, family)
    other = load_bundle(checkpoint)
    architecture, layer = other.architecture, encoder_layers(other.module)[0]
    hidden = torch.randn(2, 5, other.hidden_size)
    mask = torch.zeros(2, 1, 5, 5)
    mask[1, ..., 3:] = torch.finfo(torch.float32).min
    with torch.no_grad():
        _, eager = architecture.attention_block(layer)(hidden, mask)
        recomputed = architecture.attention_probabilities(layer, hidden, mask)
    torch.testing.assert_close(recomputed, eager, atol=1e-6, rtol=1e-5)


def test_significance_ranks_by_attention_received_cls_first_padding_last():
    # 1 row, 2 heads, 5 tokens of which the last 2 are padding; token 2 receives most, then token 1.
    probabilities = torch.zeros(1, 2, 5, 5)
    probabilities[..., 2] = 0.6
    probabilities[..., 1] = 0.3
    probabilities[..., 0] = 0.1
    probabilities[:, :, 3:, :] = 1.0  # padding queries attend heavily to padding keys: they must not count
    real = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0]])
    scores = significance(probabilities, real)
    assert torch.topk(scores, 3).indices.tolist() == [[0, 2, 1]]
    assert scores[0, 2] == pytest.approx(2 * 3 * 0.6)  # heads x real queries x probability
    assert (scores[0, 3:] < scores[0, :3].min()).all()


def test_search_keeps_the_agreement_floor(bundle, tmp_path):
    train = load_dataset(write_csv(tmp_path / "train.csv", SENTENCES * 2), require_labels=True)
    ctx = pass_context(bundle, train_data=train)
    eliminated, record = apply_pass(EliminateTokens(retention="search", agreement=0.9, epochs=0), bundle, ctx)
    keep = record.stats["keep"]
    assert len(keep) == 1 and keep[0] < 16 and any("searched on" in note for note in record.notes)
    held_out = task_data(bundle, train, seq_len=16)
    agreed = (predictions(eliminated.module, held_out) == predictions(bundle.module, held_out)).float().mean()
    assert agreed >= 0.9


def test_recovery_keeps_an_accuracy_floor(fitted_teacher, tmp_path):
    """Keep only [CLS] after the first layer's attention and distil: the labels of the learnable toy task are still
    got right (the fitted teacher gets all of them), by weights that training changed."""
    teacher = load_bundle(fitted_teacher)
    train = load_dataset(write_csv(tmp_path / "train.csv", SENTENCES * 8), require_labels=True)
    texts = task_data(teacher, train, seq_len=16)
    labels = torch.tensor(texts.labels)
    assert (predictions(teacher.module, texts) == labels).float().mean() == 1.0
    option = EliminateTokens(retention=[1], epochs=6, lr=3e-3, batch_size=8)
    student, record = apply_pass(option, teacher, pass_context(teacher, train_data=train))
    recovery = record.stats["recovery"]
    assert recovery["steps"] == 6 * 12, recovery
    pairs = list(zip(teacher.module.parameters(), student.module.parameters(), strict=True))
    assert any(not torch.equal(original, trained) for original, trained in pairs), "training changed no weight"
    assert (predictions(student.module, texts) == labels).float().mean() >= 0.9
    assert encoder_layers(student.module)[0].keep == 1


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: EliminateTokens(retention=[1.5], epochs=0), "value 1 = 1.5 is out of range"),
        (lambda: EliminateTokens(retention=[0], epochs=0), "value 1 = 0 is out of range"),
        (lambda: EliminateTokens(retention=[17], epochs=0), "value 1 = 17 is out of range"),
        (lambda: EliminateTokens(retention=[0.5, 0.5], epochs=0), "has the wrong form"),
        (lambda: EliminateTokens(retention=None, epochs=0), "has the wrong form"),
        (lambda: EliminateTokens(retention="search", epochs=0), "judges schedules on training texts"),
        (lambda: EliminateTokens(retention=[0.5]), "--train-data"),
        (lambda: EliminateTokens(retention=[0.5], epochs=0, hidden_weight=1.0), "must be 0"),
    ],
)
def test_bad_options_are_user_errors(bundle, make, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[")):
        make().requires(bundle, pass_context(bundle))


def test_a_bucketed_profile_is_refused(bundle):
    with pytest.raises(UserError, match="one fixed sequence length"):
        EliminateTokens(retention=[0.5], epochs=0).requires(bundle, pass_context(bundle, buckets=(8, 16)))


RECIPE = """
extends = "default"
[[compress]]
pass = "eliminate_tokens"
retention = {retention}
epochs = 0
"""


def _export_args(checkpoint, device, data, out, recipe):
    return ["export", str(checkpoint), "--device", str(device), "--data", str(data), "-o", str(out), "--no-measure"] + [
        "--recipe",
        str(recipe),
    ]


def _bucketed_device(folder):
    from edgecompress.devices import derived_profile_text

    text = derived_profile_text("pixel7", name="tinybuckets", seq_len=16, buckets=[8, 16])
    path = folder / "tinybuckets.toml"
    path.write_text(text.replace('quantize = "dynamic-int8"', 'quantize = "none"'))
    return path


@pytest.mark.parametrize(
    "retention, model, device, fragment",
    [
        ("[1.5]", "bert", "tiny", "value 1 = 1.5 is out of range"),
        ("[0]", "bert", "tiny", "value 1 = 0 is out of range"),
        ("[4]", "distilbert", "tiny", "does not apply to DistilBERT"),
        ("[4]", "encoder", "tiny", "does not apply to the task 'sentence-embedding'"),
        ("[4]", "bert", "buckets", "needs one fixed sequence length"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    retention, model, device, fragment, tmp_path, tiny_checkpoint, tiny_encoder, tiny_device, tiny_data
):
    recipe = tmp_path / "eliminate.toml"
    recipe.write_text(RECIPE.format(retention=retention))
    checkpoint = {"bert": tiny_checkpoint, "encoder": tiny_encoder}.get(model)
    if checkpoint is None:
        checkpoint = build_any_family_checkpoint(tmp_path / model, model)
    profile = tiny_device if device == "tiny" else _bucketed_device(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, _export_args(checkpoint, profile, tiny_data, out, recipe))
    assert fragment in user_error(result, out)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_export_runs_on_onnx_runtime_and_litert(family, tiny_checkpoint, tiny_device, tiny_data, tmp_path):
    checkpoint = tiny_checkpoint if family == "bert" else build_any_family_checkpoint(tmp_path / family, family)
    bundle = load_bundle(checkpoint)
    recipe = tmp_path / "eliminate.toml"
    recipe.write_text(RECIPE.format(retention="[4]"))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, _export_args(checkpoint, tiny_device, tiny_data, out, recipe))
    assert result.exit_code == 0, result.output
    folder = out / "tinyphone"
    graph = onnx.load(str(folder / "model.onnx"))
    ops = [node.op_type for node in graph.graph.node]
    assert ops.count("TopK") == 1 and ops.count("Attention") == 2, "an eliminating layer's attention did not fuse"
    # The shipped graph computes what the eliminating torch model computes, on real texts.
    eliminated, _ = apply_pass(EliminateTokens(retention=[4], epochs=0), bundle, pass_context(bundle))
    feeds = _feeds(bundle)
    expected = torch_logits(eliminated.module, feeds, bundle.input_names)
    got = ort_logits(graph, feeds, bundle.input_names, optimize=True, batch=1)
    assert abs(got - expected).max() < 1e-4
    assert (folder / "model.tflite").stat().st_size > 0  # the export verified it against the ONNX Runtime file
    assert encoder_layers(eliminated.module)[0].keep == 4
