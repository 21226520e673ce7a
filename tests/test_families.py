"""DistilBERT, RoBERTa, XLM-RoBERTa and ELECTRA end to end on tiny random-initialised checkpoints with real
tokenizers of each kind (`family_models.py`): their parts through the seam, float and default-recipe exports
(the pipeline checks parity on every artifact and the fusion check demands one fused attention per layer),
the compression passes, trimming of each tokenizer kind, and BERT students made from each teacher.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from edgecompress.architectures import architecture_for
from edgecompress.cli import main
from edgecompress.compress._pruning import encoder_layers, unit_masks, units_of
from edgecompress.compress.prune_heads import PruneHeads
from edgecompress.compress.trim_vocab import TrimVocab
from edgecompress.intake.data import load_dataset, tokenize
from edgecompress.intake.model import load_bundle
from edgecompress.passes import apply_pass

from conftest import SENTENCES, write_csv
from family_models import FAMILIES, build_family_checkpoint
from helpers import pass_context

TEXTS = [text for text, _ in SENTENCES]
FLOAT_TOLERANCE = 1e-4
SEQ = 16


@pytest.fixture(scope="session")
def family_checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {name: build_family_checkpoint(root / name, name) for name in FAMILIES}


@pytest.fixture(scope="module")
def train_csv(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("train") / "train.csv", SENTENCES)


@pytest.fixture(scope="module")
def bucketed_device(tmp_path_factory) -> Path:
    """pixel7 as shipped (its default recipe: dynamic int8), serving two length buckets a tiny model fits."""
    from edgecompress.devices import derived_profile_text

    path = tmp_path_factory.mktemp("devices") / "tinybuckets.toml"
    path.write_text(derived_profile_text("pixel7", name="tinybuckets", seq_len=32, buckets=[16, 32]))
    return path


def export(checkpoint: Path, device: Path, data: Path, out: Path, *extra, codes=(0,)) -> dict:
    result = CliRunner().invoke(
        main,
        [str(a) for a in ("export", checkpoint, "--device", device, "--data", data, "-o", out, "--no-measure")]
        + [str(a) for a in extra],
    )
    assert result.exit_code in codes, (result.output, result.exception)
    return json.loads((out / device.stem / "report.json").read_text())


def fused_attention(report: dict) -> int:
    fused = next(p for p in report["passes"] if p["name"] == "fuse_transformer")["stats"]["fused"]
    return fused.get("Attention", 0) + fused.get("QAttention", 0)


def logits(bundle, texts=TEXTS) -> torch.Tensor:
    feeds = tokenize(bundle.tokenizer, texts, seq_len=SEQ, input_names=bundle.input_names)
    with torch.no_grad():
        return bundle.module(*(torch.from_numpy(feeds[name]) for name in bundle.input_names))


# ---- the seam ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_is_registered_and_its_parts_are_the_modules_its_model_runs(family_checkpoints, name):
    bundle = load_bundle(family_checkpoints[name])
    family = bundle.architecture
    assert family is architecture_for(name) and family.ort_model_type == "bert"  # onnxruntime 1.31 has no other
    hf = bundle.module.hf_model
    layer = family.layers(hf)[0]
    parts = family.attention(layer)
    assert parts.query.out_features == parts.head_size * bundle.num_heads == bundle.hidden_size == 32
    assert family.ffn(layer)[0].out_features == 64 and len(family.layers(hf)) == bundle.num_layers == 2
    assert family.word_embeddings(hf) is hf.get_input_embeddings()
    produced = set(bundle.tokenizer("a good movie"))  # what the family's own tokenizer hands the app
    assert set(bundle.input_names) == produced & {"input_ids", "attention_mask", "token_type_ids"}


def test_roberta_serves_two_positions_fewer_than_its_table_and_takes_no_token_types(family_checkpoints):
    for name in ("roberta", "xlm-roberta"):
        bundle = load_bundle(family_checkpoints[name])
        assert bundle.tokenizer_settings.max_length == 64  # table of 66 rows: rows 0 and 1 are before pad+1
        assert bundle.input_names == ("input_ids", "attention_mask")


# ---- exports ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_float_export_matches_the_reference_on_every_artifact_with_every_attention_fused(
    family_checkpoints, tiny_device, tiny_data, tmp_path, name
):
    report = export(family_checkpoints[name], tiny_device, tiny_data, tmp_path)
    assert {a["file"] for a in report["artifacts"]} == {"model.onnx", "model.ort", "model.tflite"}
    for artifact in report["artifacts"]:
        parity = artifact["parity"]
        assert parity["passed"] and parity["max_abs_diff"] <= FLOAT_TOLERANCE, artifact["file"]
        assert parity["prediction_agreement"] == 1.0, artifact["file"]
    assert fused_attention(report) == 2  # one per layer: the fusion check would have failed the export
    assert report["model"]["config"]["num_hidden_layers"] == 2  # under BERT's key names, for every family
    if name in ("roberta", "xlm-roberta"):  # their position ids are a running count over non-pad tokens
        tflite = next(a for a in report["artifacts"] if a["file"] == "model.tflite")
        assert tflite["op_histogram"].get("CUMSUM") == 1


@pytest.mark.parametrize("name", FAMILIES)
def test_a_bare_encoder_exports_its_mean_pooled_embedding_at_float_parity(tiny_device, tiny_data, tmp_path, name):
    encoder = build_family_checkpoint(tmp_path / "encoder", name, classifier=False)
    report = export(encoder, tiny_device, tiny_data, tmp_path / "dist")
    assert report["model"]["task"] == "sentence-embedding"
    assert all(a["parity"]["passed"] and a["parity"]["max_abs_diff"] <= FLOAT_TOLERANCE for a in report["artifacts"])
    assert fused_attention(report) == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_default_pixel7_recipe_exports_and_verifies_every_bucket(
    family_checkpoints, bucketed_device, tiny_data, tmp_path, name
):
    report = export(family_checkpoints[name], bucketed_device, tiny_data, tmp_path)
    assert report["recipe"]["name"] == "dynamic-int8" and report["passed"]
    assert all(a["parity"]["passed"] for a in report["artifacts"])
    assert fused_attention(report) == 2


COMPRESSING_RECIPE = """
description = "every torch pass through the seam, then static int8"
extends = "int8"
[[compress]]
pass = "drop_layers"
[[compress]]
pass = "prune_heads"
ratio = 0.5
[[compress]]
pass = "prune_ffn"
ratio = 0.5
[[compress]]
pass = "trim_vocab"
[[compress]]
pass = "qat"
epochs = 1.0
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["distilbert", "roberta"])
def test_layer_dropping_pruning_qat_and_static_int8_export_and_verify(
    family_checkpoints, tiny_device, tiny_data, train_csv, tmp_path, name
):
    recipe = tmp_path / "compressing.toml"
    recipe.write_text(COMPRESSING_RECIPE)
    report = export(
        family_checkpoints[name],
        tiny_device,
        tiny_data,
        tmp_path / "dist",
        "--recipe",
        recipe,
        "--train-data",
        train_csv,
    )
    fired = {p["name"]: p["fired"] for p in report["passes"] if p["stage"] == "compress"}
    assert fired == {
        "drop_layers": True,
        "prune_heads": True,
        "prune_ffn": True,
        "trim_vocab": name != "roberta",
        "qat": True,
    }
    assert report["model"]["config"] | {"vocab_size": None} == {
        "num_hidden_layers": 1,
        "hidden_size": 32,
        "num_attention_heads": 1,
        "intermediate_size": 32,
        "vocab_size": None,
    }
    assert fused_attention(report) == 1 and all(a["parity"]["passed"] for a in report["artifacts"])
    quantized = next(p for p in report["passes"] if p["name"] == "quantize_static")
    assert quantized["fired"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["distilbert", "roberta"])
def test_int4_recipe_exports_and_verifies(family_checkpoints, tiny_device, tiny_data, tmp_path, name):
    report = export(family_checkpoints[name], tiny_device, tiny_data, tmp_path, "--recipe", "int4")
    onnx_ops = next(a for a in report["artifacts"] if a["file"] == "model.onnx")["op_histogram"]
    assert onnx_ops.get("com.microsoft::MatMulNBits", 0) > 0
    assert all(a["parity"]["passed"] for a in report["artifacts"])


# ---- passes on each family ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_head_pruning_equals_the_original_with_the_heads_masked(family_checkpoints, train_csv, name):
    bundle = load_bundle(family_checkpoints[name])
    ctx = pass_context(bundle, train_data=load_dataset(train_csv, require_labels=True))
    pruned, record = apply_pass(PruneHeads(ratio=0.5), bundle, ctx)
    assert (pruned.num_heads, pruned.attention_width) == (1, 16)
    units = units_of(bundle.module, "head")
    masks = []
    for layer, removed in zip(encoder_layers(bundle.module), record.stats["removed"]):
        mask = torch.ones(units.count(layer))
        mask[removed] = 0
        masks.append(mask)
    with unit_masks(bundle.module, units, masks):
        expected = logits(bundle)
    torch.testing.assert_close(logits(pruned), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["distilbert", "electra"])
def test_wordpiece_families_trim_their_vocabulary_keeping_logits_exact(family_checkpoints, train_csv, name):
    bundle = load_bundle(family_checkpoints[name])
    ctx = pass_context(bundle, train_data=load_dataset(train_csv, require_labels=True))
    trimmed, record = apply_pass(TrimVocab(), bundle, ctx)
    assert record.fired and trimmed.config["vocab_size"] < bundle.config["vocab_size"]
    torch.testing.assert_close(logits(trimmed), logits(bundle), atol=0, rtol=0)


@pytest.mark.parametrize("name, model", [("roberta", "BPE"), ("xlm-roberta", "Unigram")])
def test_subword_models_other_than_wordpiece_are_not_trimmed_and_say_why(family_checkpoints, train_csv, name, model):
    bundle = load_bundle(family_checkpoints[name])
    ctx = pass_context(bundle, train_data=load_dataset(train_csv, require_labels=True))
    kept, record = apply_pass(TrimVocab(), bundle, ctx)
    assert not record.fired and kept is bundle
    assert f"the tokenizer's model is '{model}'; only WordPiece vocabularies are trimmed" in record.notes[0]


# ---- distillation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["distilbert", "roberta", "xlm-roberta"])
def test_a_full_depth_bert_student_starts_as_the_teacher(family_checkpoints, name):
    """Same width and every layer: the BERT student computes the teacher's hidden states on real tokens."""
    from edgecompress.distill.small_bert import init_from_teacher, new_transformer_student, transformer_config

    teacher = load_bundle(family_checkpoints[name])
    config = transformer_config(teacher.config, {"num_hidden_layers": 2}, tokenizer=teacher.tokenizer, where="t")
    student = new_transformer_student(config).eval()
    init_from_teacher(student, config, teacher.module.hf_model)
    feeds = tokenize(teacher.tokenizer, TEXTS, seq_len=SEQ, input_names=teacher.input_names)
    ids, mask = torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])
    with torch.no_grad():
        family = teacher.architecture
        hf = teacher.module.hf_model
        want = family.encoder_model(hf)(input_ids=ids, attention_mask=mask, **family.zero_inputs_for(ids))
        got = student.bert(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
    real = mask.bool()
    torch.testing.assert_close(got.last_hidden_state[real], want.last_hidden_state[real], atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["distilbert", "roberta"])
def test_teachers_distil_into_every_student_which_exports_with_the_teachers_tokenizer(
    family_checkpoints, tiny_device, tiny_data, tmp_path, name
):
    from edgecompress.distill.run import DistillRequest, distill

    teacher = family_checkpoints[name]
    for kind in ("bilstm", "cnn", "transformer"):
        request = DistillRequest(
            teacher=teacher,
            student=kind,
            train_data=tiny_data,
            out_dir=tmp_path / kind,
            augment=1,
            seq_len=SEQ,
            training={"epochs": 1, "batch_size": 8},
        )
        student = distill(request)
        assert len(load_bundle(student).tokenizer) == len(load_bundle(teacher).tokenizer)
        # exit 3 allowed: a one-epoch student of a random teacher may miss the accuracy budget (still written)
        report = export(student, tiny_device, tiny_data, tmp_path / f"{kind}-dist", codes=(0, 3))
        assert all(a["parity"]["passed"] for a in report["artifacts"]), kind


# ---- what a family refuses, and the fusion check's teeth ------------------------------------------------------


# Families integer-only still refuses, with what their reason names (DistilBERT, RoBERTa and XLM-R take it:
# test_integer_only_families.py).
INTEGER_ONLY_REFUSED = [
    ("electra", "its head's GELU"),
    ("albert", "embedding projection \\(embedding_hidden_mapping_in\\)"),
    ("mobilebert", "NoNorm"),
    ("deberta-v2", "disentangled relative-position scores"),
    ("mpnet", "relative position bias"),
]


@pytest.mark.parametrize(("name", "reason"), INTEGER_ONLY_REFUSED)
def test_integer_only_is_refused_before_any_work_with_the_reason(tmp_path, name, reason):
    from edgecompress.errors import UserError
    from edgecompress.pipeline import check_passes_apply
    from edgecompress.recipe import load_recipe

    from family_models import build_any_family_checkpoint

    bundle = load_bundle(build_any_family_checkpoint(tmp_path / name, name))
    family = bundle.architecture.describe().replace("(", "\\(").replace(")", "\\)")
    with pytest.raises(UserError, match=f"does not apply to {family}: integer-only inference \\(I-BERT\\) .*{reason}"):
        check_passes_apply(load_recipe("integer-only"), bundle)


def test_an_integer_only_export_of_electra_is_one_line_and_writes_nothing(family_checkpoints, tiny_data, tmp_path):
    from conftest import user_error

    out = tmp_path / "dist"
    args = ["export", family_checkpoints["electra"], "--device", "pixel7", "--data", tiny_data, "-o", out]
    result = CliRunner().invoke(main, [str(a) for a in args] + ["--quantize", "integer-only"])
    line = user_error(result, out)
    assert "pass 'integer_only' of recipe" in line and "does not apply to ELECTRA (model_type 'electra')" in line


def test_the_fusion_check_fails_a_roberta_export_that_fuses_fewer_attention_ops_than_its_family_promises(
    family_checkpoints,
):
    from edgecompress.architectures.roberta import Roberta
    from edgecompress.errors import InternalError
    from edgecompress.graph.fuse_transformer import FuseTransformer
    from edgecompress.lower import export_onnx

    bundle = load_bundle(family_checkpoints["roberta"])
    feeds = tokenize(bundle.tokenizer, TEXTS[:2], seq_len=SEQ, input_names=bundle.input_names)
    graph = export_onnx(bundle, feeds)

    class TwoPerLayer(Roberta):  # not registered: a family whose fuser would make two per layer
        fused_attention_per_layer = 2

    _, record = apply_pass(FuseTransformer(), graph, pass_context(bundle, architecture=bundle.architecture))
    assert record.stats["fused"]["Attention"] == 2
    with pytest.raises(InternalError, match="attention fusion fell short: 2 fused attention ops for 4"):
        apply_pass(FuseTransformer(), export_onnx(bundle, feeds), pass_context(bundle, architecture=TwoPerLayer()))
