"""ALBERT, MobileBERT, DeBERTa-v2 and MPNet end to end: each exports float (parity verified by the pipeline on
.onnx, .ort and .tflite) and with pixel7's default recipe (dynamic int8, length buckets); the report names
the attention the fuser leaves unfused, or that our own rule fused; passes a family cannot take are refused
before any work; heads of the families that take head pruning are pruned exactly."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from edgecompress.architectures import architectures
from edgecompress.cli import main
from edgecompress.compress._pruning import encoder_layers, unit_masks, units_of
from edgecompress.compress.prune_heads import PruneHeads
from edgecompress.intake.data import tokenize
from edgecompress.intake.model import load_bundle
from edgecompress.passes import apply_pass

from conftest import SENTENCES, user_error
from family_models_b import FAMILIES_B, build_family_checkpoint
from helpers import pass_context

# Measured with onnxruntime 1.31's BERT fuser on the tiny configs: fused attention ops / attention blocks.
FUSED = {"albert": (1, 2), "mobilebert": (0, 4), "deberta-v2": (0, 2), "mpnet": (0, 2)}
# Our own rule (graph/attention_to_mha.py) fuses the rest of these families: MultiHeadAttention ops.
OWN_RULE = {"mobilebert": 4, "mpnet": 2}
TEXTS = [text for text, _ in SENTENCES]


@pytest.fixture(scope="module", params=FAMILIES_B)
def family_checkpoint(request, tmp_path_factory):
    return request.param, build_family_checkpoint(tmp_path_factory.mktemp(request.param) / "ckpt", request.param)


def export(*args):
    return CliRunner().invoke(main, ["export", *map(str, args), "--no-measure"])


def test_each_family_exports_float_with_parity_on_every_runtime_and_names_how_its_attention_runs(
    family_checkpoint, tiny_device, tiny_data, tmp_path
):
    family, checkpoint = family_checkpoint
    result = export(checkpoint, "--device", tiny_device, "--data", tiny_data, "-o", tmp_path)
    assert result.exit_code == 0, result.output
    out = tmp_path / "tinyphone"
    assert {"model.onnx", "model.ort", "model.tflite"} <= {p.name for p in out.iterdir()}
    report = (out / "report.md").read_text()
    fused, blocks = FUSED[family]
    name = architectures()[family].family
    if family in OWN_RULE:
        assert f"{OWN_RULE[family]} MultiHeadAttention by our own rule" in report and "runs unfused" not in report
        return
    assert f"attention runs unfused for {name} in {blocks - fused} of {blocks} layers" in report
    assert (f"{fused} Attention" in report) == (fused > 0)


@pytest.mark.slow
def test_each_family_exports_with_pixel7s_default_recipe(family_checkpoint, tiny_data, tmp_path):
    _, checkpoint = family_checkpoint
    result = export(checkpoint, "--device", "pixel7", "--data", tiny_data, "-o", tmp_path)
    assert result.exit_code == 0, result.output
    report = (tmp_path / "pixel7" / "report.md").read_text()
    assert "quantize_dynamic | yes" in report and "Texts per bucket: 16: " in report


def test_a_pass_the_family_cannot_take_is_refused_in_one_line_before_any_work(tmp_path):
    checkpoint = build_family_checkpoint(tmp_path / "deberta", "deberta-v2")
    out = tmp_path / "dist"
    result = CliRunner().invoke(
        main, ["export", str(checkpoint), "--device", "pixel7", "--recipe", "pruned", "-o", str(out)]
    )
    line = user_error(result, out)
    assert "pass 'trim_vocab' of recipe 'pruned' does not apply to DeBERTa-v2 (model_type 'deberta-v2')" in line
    assert "SentencePiece Unigram vocabulary" in line


@pytest.mark.parametrize(
    ("family", "refused"),
    [
        ("albert", ("drop_layers", "trim_vocab")),
        ("mobilebert", ("prune_ffn", "prune_schedule")),
        ("deberta-v2", ("prune_heads", "prune_schedule", "trim_vocab")),
        ("mpnet", ("prune_heads", "prune_schedule")),
    ],
)
def test_each_family_refuses_exactly_the_passes_it_cannot_take(family, refused):
    arch = architectures()[family]
    passes = ("prune_heads", "prune_ffn", "prune_schedule", "drop_layers", "trim_vocab", "quantize_dynamic")
    assert tuple(p for p in passes if arch.refuse(p)) == refused
    assert arch.refuse("integer_only")  # its reason: test_families.py's INTEGER_ONLY_REFUSED


def test_every_layer_part_the_seam_names_is_a_module_of_the_family(family_checkpoint):
    """The parts a student copies out of a teacher's layer (distill/small_bert.py's _LAYER_PARTS), LayerNorms
    included: ALBERT and MPNet keep theirs elsewhere than BERT, and a default path would break their students."""
    from edgecompress.distill.small_bert import _LAYER_PARTS, _get

    name, checkpoint = family_checkpoint
    bundle = load_bundle(checkpoint)
    family = bundle.architecture
    layer = family.layers(bundle.module.hf_model)[0]
    for part in _LAYER_PARTS:
        module = _get(layer, getattr(family, part))
        assert isinstance(module, torch.nn.Module), (name, part)
    for norm in ("attention_norm_path", "ffn_norm_path"):
        assert _get(layer, getattr(family, norm)).weight.dim() == 1, (name, norm)  # MobileBERT's: bottleneck-wide


@pytest.mark.parametrize("family", ["albert", "mobilebert"])
def test_pruned_heads_give_exactly_the_masked_original(family, tmp_path):
    """ALBERT: the one shared layer loses its head at every depth, as the mask removes it at every depth."""
    bundle = load_bundle(build_family_checkpoint(tmp_path / family, family))
    pruned, record = apply_pass(PruneHeads(ratio=0.5), bundle, pass_context(bundle, seq_len=16))
    assert record.fired and pruned.num_heads == 1
    feeds = tokenize(bundle.tokenizer, TEXTS, seq_len=16, input_names=bundle.input_names)
    inputs = [torch.from_numpy(feeds[name]) for name in bundle.input_names]
    units = units_of(bundle.module, "head")
    masks = []
    for layer, removed in zip(encoder_layers(bundle.module), record.stats["removed"]):
        masks.append(torch.ones(units.count(layer)).index_fill(0, torch.tensor(removed), 0.0))
    with torch.no_grad(), unit_masks(bundle.module, units, masks):
        expected = bundle.module(*inputs)
    with torch.no_grad():
        got = pruned.module(*inputs)
        original = bundle.module(*inputs)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)  # ALBERT: rounding through shared depths
    assert not torch.allclose(got, original, atol=1e-3)
