"""The integer-only (I-BERT) model, its ONNX lowering, the `integer_only` pass and the `integer-only` recipe.

Tiny 2-layer BERT in code for everything; the real MiniLM (untrained head) for one slow bit-exactness check.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgecompress.cli import main
from edgecompress.compress.integer_only.calibrate import calibrate
from edgecompress.compress.integer_only.lower import float_nodes
from edgecompress.compress.integer_only.model import integer_bert
from edgecompress.compress.integer_only.pass_ import IntegerOnly
from edgecompress.errors import UserError
from edgecompress.graph.fix_shapes import FixShapes
from edgecompress.intake.data import tokenize
from edgecompress.intake.model import load_bundle
from edgecompress.passes import PassContext, PassSkipped, apply_pass
from edgecompress.recipe import load_recipe

from conftest import SENTENCES
from helpers import ort_logits, pass_context, torch_logits

SEQ_LEN = 16
TEXTS = [text for text, _ in SENTENCES]
NAMES = ("input_ids", "attention_mask", "token_type_ids")


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint):
    return load_bundle(tiny_checkpoint)


@pytest.fixture(scope="module")
def feeds(bundle):
    return tokenize(bundle.tokenizer, TEXTS, seq_len=SEQ_LEN, input_names=bundle.input_names)


@pytest.fixture(scope="module")
def integer(bundle, feeds):
    model = bundle.module.hf_model
    return integer_bert(model, calibrate(model, feeds, rows=len(TEXTS), percentile=100.0), where="tiny")


def _ctx(feeds=None, **overrides) -> PassContext:
    return pass_context(seq_len=SEQ_LEN, input_names=NAMES, calibration=feeds, **overrides)


# ---- the integer module against the float model ---------------------------------------------------------


def test_integer_module_tracks_the_float_model(integer, bundle, feeds):
    reference, candidate = torch_logits(bundle.module, feeds, NAMES), torch_logits(integer, feeds, NAMES)
    sqnr = 10 * np.log10((reference**2).sum() / ((candidate - reference) ** 2).sum())
    assert sqnr > 25, sqnr  # measured 35 dB on the tiny random model
    assert integer.integer_only is True
    assert 0 < integer.parity_atol < 1e-3 * np.abs(reference).max()


def test_integer_module_ignores_trailing_padding(integer, feeds):
    """Masked keys get exactly zero attention, so the evaluator may trim padding without changing a bit."""
    width = int(feeds["attention_mask"].sum(1).max())
    assert width < SEQ_LEN
    trimmed = {n: feeds[n][:, :width] for n in NAMES}
    np.testing.assert_array_equal(torch_logits(integer, trimmed, NAMES), torch_logits(integer, feeds, NAMES))


# ---- ONNX lowering: bit-exact, integer-only --------------------------------------------------------------


def test_onnx_graph_is_bit_exact_with_the_torch_module(integer, feeds):
    graph = integer.to_onnx(feeds, input_names=NAMES, output_name="logits")
    expected = torch_logits(integer, feeds, NAMES)
    for optimize in (False, True):
        np.testing.assert_array_equal(ort_logits(graph, feeds, NAMES, optimize=optimize), expected)
    np.testing.assert_array_equal(ort_logits(graph, feeds, NAMES, optimize=True, batch=1), expected)
    assert graph.opset_import[0].version == 17 and graph.ir_version <= 9


def test_onnx_graph_with_fixed_shapes_is_bit_exact(integer, feeds):
    graph = integer.to_onnx(feeds, input_names=NAMES, output_name="logits")
    fixed = FixShapes().run(graph, _ctx()).model
    np.testing.assert_array_equal(
        ort_logits(fixed, feeds, NAMES, optimize=True, batch=1), torch_logits(integer, feeds, NAMES)
    )


def test_only_the_output_dequantization_is_float(integer, feeds):
    graph = integer.to_onnx(feeds, input_names=NAMES, output_name="logits")
    assert [op for _, op in float_nodes(graph)] == ["Cast", "Mul"]
    assert graph.graph.node[-1].output[0] == "logits"
    ops = {node.op_type for node in graph.graph.node}
    assert "MatMulInteger" in ops and not ops & {"MatMul", "Softmax", "LayerNormalization", "Erf", "Tanh"}


# ---- what the lowering refuses ---------------------------------------------------------------------------


def _refusal(model, match: str):
    with pytest.raises(UserError, match=match):
        integer_bert(model, {}, where="tiny")


def test_another_activation_is_refused_with_its_module_path(bundle):
    from transformers import BertForSequenceClassification

    config = copy.deepcopy(bundle.module.hf_model.config)
    config.hidden_act = "relu"
    _refusal(
        BertForSequenceClassification(config),
        "integer-only lowering cannot handle activation 'relu' of "
        "module 'bert.encoder.layer.0.intermediate.intermediate_act_fn' \\(ReLU\\)",
    )


def test_an_unknown_module_is_refused_with_its_path_and_type(bundle):
    class Adapter(torch.nn.Module):
        def forward(self, x):
            return x

    model = copy.deepcopy(bundle.module.hf_model)
    model.bert.encoder.layer[1].output.adapter = Adapter()
    _refusal(model, "cannot handle module 'bert.encoder.layer.1.output.adapter' of type Adapter")


def test_nan_weights_are_refused(bundle):
    model = copy.deepcopy(bundle.module.hf_model)
    with torch.no_grad():
        model.bert.encoder.layer[0].intermediate.dense.weight[0, 0] = float("nan")
    _refusal(model, "weight 'bert.encoder.layer.0.intermediate.dense.weight' contains NaN or inf")


def test_infinite_calibration_activations_are_refused(bundle, feeds):
    model = copy.deepcopy(bundle.module.hf_model)
    with torch.no_grad():
        model.bert.encoder.layer[0].intermediate.dense.weight.fill_(3e38)
    with pytest.raises(UserError, match="calibration produced NaN or inf at activation 'layer0.gelu_in'"):
        calibrate(model, feeds, rows=4, percentile=100.0)


# ---- the pass --------------------------------------------------------------------------------------------


def test_pass_fires_and_reports(bundle, feeds):
    model, record = apply_pass(IntegerOnly(calibration_rows=8), bundle, _ctx(feeds))
    assert record.fired and record.lossy
    assert record.stats["calibration_rows"] == 8 and record.stats["layers"] == 2
    assert record.stats["calibration_agreement"] >= 0.75
    assert model.module.integer_only and not hasattr(bundle.module, "integer_only")  # the input is untouched


def test_pass_needs_calibration_texts(bundle):
    with pytest.raises(UserError, match="expected --calibration or --train-data"):
        IntegerOnly().requires(bundle, _ctx(None))


def test_pass_needs_training_texts_for_qat(bundle, feeds):
    with pytest.raises(UserError, match="qat_epochs 0.5 but no training texts; expected --train-data"):
        IntegerOnly(qat_epochs=0.5).requires(bundle, _ctx(feeds))


def test_pass_skips_an_onnx_model_and_says_why(bundle, feeds):
    onnx_bundle = dataclasses.replace(bundle, module=None)
    with pytest.raises(PassSkipped, match="came in as ONNX"):
        IntegerOnly().requires(onnx_bundle, _ctx(feeds))


def test_pass_refuses_a_sentence_encoder(tiny_encoder, feeds):
    with pytest.raises(UserError, match="integer-only lowering cannot handle a sentence-embedding model"):
        IntegerOnly().requires(load_bundle(tiny_encoder), _ctx(feeds))


@pytest.mark.parametrize(
    "option, value, match",
    [
        ("percentile", 10.0, "must be in \\[50, 100\\]"),
        ("qat_epochs", -1.0, "must be 0 or more"),
        ("batch_size", 0, "must be positive"),
    ],
)
def test_pass_rejects_bad_options(bundle, feeds, option, value, match):
    with pytest.raises(UserError, match=f"option '{option}' of pass 'integer_only' {match}"):
        IntegerOnly(**{option: value}).requires(bundle, _ctx(feeds))


# ---- recipe and export -----------------------------------------------------------------------------------


def test_recipe_keeps_the_graph_integer():
    recipe = load_recipe("integer-only")
    assert [p.name for p in recipe.compress] == ["integer_only"]
    assert [p.name for p in recipe.graph] == ["fix_shapes", "fold_constants"]


@pytest.fixture(scope="module")
def ort_device(tiny_device, tmp_path_factory) -> Path:
    """The tiny phone without TFLite, for the tests about the integer graph itself (the .tflite has its own test)."""
    text = tiny_device.read_text().replace('name = "tinyphone"', 'name = "tinyort"')
    text = text.replace('artifacts = ["onnx", "ort", "tflite"]', 'artifacts = ["onnx", "ort"]')
    path = tmp_path_factory.mktemp("devices") / "tinyort.toml"
    path.write_text(text)
    return path


def test_export_ships_a_bit_exact_integer_graph(tiny_checkpoint, tiny_data, ort_device, tmp_path):
    import json

    result = CliRunner().invoke(
        main,
        [
            "export",
            str(tiny_checkpoint),
            "--device",
            str(ort_device),
            "--data",
            str(tiny_data),
            "-o",
            str(tmp_path),
            "--recipe",
            "integer-only",
            "--no-measure",
            "--json",
        ],
    )
    assert result.exit_code in (0, 3), result.output
    report = json.loads((tmp_path / "tinyort" / "report.json").read_text())
    assert [p["name"] for p in report["passes"]] == [
        "integer_only",
        "fix_shapes",
        "fold_constants",
        "share_initializers",
    ]
    for artifact in report["artifacts"]:
        assert artifact["parity"]["max_abs_diff"] == 0.0, artifact["file"]
        # 8 per layer (Q, K, V, scores, context, output, FFN in and out), pooler, classifier
        assert artifact["op_histogram"].get("MatMulInteger", 0) == 2 * 8 + 2, artifact["file"]


def test_export_without_data_calibrates_on_the_built_in_sentences(tiny_checkpoint, ort_device, tmp_path):
    """Issue 17 item 12: the export always has tuning texts (--calibration, --train-data or built-in sentences)."""
    import json

    result = CliRunner().invoke(
        main,
        [
            "export",
            str(tiny_checkpoint),
            "--device",
            str(ort_device),
            "-o",
            str(tmp_path / "out"),
            "--recipe",
            "integer-only",
            "--no-measure",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(next((tmp_path / "out").glob("*/report.json")).read_text())
    assert "of the built-in sentences held out for tuning" in report["data"]["tuned_on"]


def test_export_for_a_tflite_device_ships_a_bit_exact_full_integer_tflite(
    tiny_checkpoint, tiny_data, tiny_device, tmp_path
):
    """Issue 14 part 6: the .tflite of the integer graph runs on LiteRT's integer kernels, gives ONNX Runtime's
    logits to the bit, and computes in float only at the final dequantization (CAST and MUL of the logits)."""
    import json

    result = CliRunner().invoke(
        main,
        [
            "export",
            str(tiny_checkpoint),
            "--device",
            str(tiny_device),
            "--data",
            str(tiny_data),
            "-o",
            str(tmp_path / "out"),
            "--quantize",
            "integer-only",
            "--no-measure",
            "--json",
        ],
    )
    assert result.exit_code in (0, 3), result.output
    artifacts = {a["file"]: a for a in json.loads(result.stdout)["artifacts"]}
    tflite = artifacts["model.tflite"]
    assert tflite["parity"]["max_abs_diff"] == 0.0
    assert tflite["parity_vs_onnxruntime"]["max_abs_diff"] == 0.0
    assert tflite["float_ops_inside"] == [] and tflite["float_ops"] == ["CAST", "MUL"]
    assert tflite["op_histogram"]["BATCH_MATMUL"] == 2 * 8 + 2  # every MatMulInteger
    assert not {"FULLY_CONNECTED", "SOFTMAX", "TANH", "GELU"} & set(tflite["op_histogram"])


@pytest.mark.parametrize("diff, fails", [(0.0, False), (1e-7, True)], ids=["same-bits", "one-lsb-off"])
def test_an_integer_only_file_must_match_onnx_runtime_to_the_bit(diff, fails):
    """Both runtimes compute the same integers, so any difference is a lowering bug, however small."""
    from edgecompress.backends import Artifact
    from edgecompress.errors import VerificationError
    from edgecompress.verify.artifacts import Verified, check_bit_exact

    artifacts = [
        Artifact("onnx", Path("model.onnx"), "onnxruntime"),
        Artifact("tflite", Path("model.tflite"), "litert"),
    ]
    cross = {"max_abs_diff": diff, "against": "the ONNX Runtime artifact"}
    verified = Verified(artifacts, [], [], [{}, {}], [None, cross])
    if fails:
        with pytest.raises(VerificationError, match="model.tflite is not bit-exact with the ONNX Runtime artifact"):
            check_bit_exact(verified)
    else:
        check_bit_exact(verified)


def test_export_reports_an_empty_float_audit_inside_the_model(tiny_checkpoint, tiny_data, ort_device, tmp_path):
    import json

    result = CliRunner().invoke(
        main,
        [
            "export",
            str(tiny_checkpoint),
            "--device",
            str(ort_device),
            "--data",
            str(tiny_data),
            "-o",
            str(tmp_path),
            "--quantize",
            "integer-only",
            "--no-measure",
            "--json",
        ],
    )
    assert result.exit_code in (0, 3), result.output
    for artifact in json.loads(result.stdout)["artifacts"]:
        assert artifact["float_ops_inside"] == [] and artifact["float_ops"] == ["Mul"], artifact["file"]


# ---- the real MiniLM -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_integer(minilm_classifier):
    """The real MiniLM (seq 32), its integer module calibrated on TEXTS, and that module's ONNX graph."""
    bundle = load_bundle(minilm_classifier)
    feeds = tokenize(bundle.tokenizer, TEXTS, seq_len=32, input_names=bundle.input_names)
    model = bundle.module.hf_model
    integer = integer_bert(model, calibrate(model, feeds, rows=len(TEXTS), percentile=100.0), where="minilm")
    return model, feeds, integer, integer.to_onnx(feeds, input_names=NAMES, output_name="logits")


@pytest.mark.slow
def test_minilm_integer_graph_is_bit_exact(minilm_integer):
    model, feeds, integer, graph = minilm_integer
    expected = torch_logits(integer, feeds, NAMES)
    np.testing.assert_array_equal(ort_logits(graph, feeds, NAMES, optimize=True), expected)
    assert [op for _, op in float_nodes(graph)] == ["Cast", "Mul"]
    # The untrained head's logits are ~0.01: judge the encoder by its last hidden states instead.
    hidden = _integer_hidden_states(integer, feeds)
    real = feeds["attention_mask"] > 0
    with torch.no_grad():
        reference = model.bert(*(torch.from_numpy(feeds[n]) for n in NAMES)).last_hidden_state.numpy()[real]
    sqnr = 10 * np.log10((reference**2).sum() / ((hidden[real] - reference) ** 2).sum())
    assert sqnr > 15, sqnr  # measured 18.3 dB (12 short texts, ranges calibrated on them)


@pytest.mark.slow
def test_minilm_integer_tflite_is_bit_exact(minilm_integer, tmp_path):
    """The real MiniLM's ranges (int64 LayerNorm sums, 24-bit requantizations, 384-wide rows) on LiteRT."""
    from edgecompress.backends.tflite.artifact import run_tflite_artifact
    from edgecompress.backends.tflite.lowering import lower_to_tflite

    _, feeds, _, graph = minilm_integer
    fixed = FixShapes().run(graph, pass_context(seq_len=32, input_names=NAMES)).model
    path = tmp_path / "model.tflite"
    path.write_bytes(lower_to_tflite(fixed))
    litert = run_tflite_artifact(path, feeds, output_name="logits", threads=1)
    np.testing.assert_array_equal(litert, ort_logits(fixed, feeds, NAMES, optimize=True, batch=1))


def _integer_hidden_states(integer, feeds) -> np.ndarray:
    from edgecompress.compress.integer_only.kernels import TORCH
    from edgecompress.compress.integer_only.program import embed, encoder_layer

    ids, mask, types = (torch.from_numpy(feeds[n]) for n in NAMES)
    h = embed(TORCH, integer.plan.embeddings, ids, types)
    for layer in integer.plan.layers:
        h = encoder_layer(TORCH, layer, h, TORCH.key_mask(mask))
    return h.double().numpy() * integer.plan.layers[-1].norm2.out_scale


# ---- quantization-aware training -------------------------------------------------------------------------


def test_fake_quantized_model_sees_the_integer_rounding(bundle, feeds, integer):
    """Training runs the float model under the integer model's quantizers: its logits sit much closer to
    the integer model's than the float model's do."""
    from edgecompress.compress.integer_only.qat import fake_quantized

    model = copy.deepcopy(bundle.module.hf_model)
    ranges = calibrate(model, feeds, rows=len(TEXTS), percentile=100.0)
    args = [torch.from_numpy(feeds[n]) for n in NAMES]
    real = feeds["attention_mask"] > 0
    target = _integer_hidden_states(integer, feeds)[real]
    with torch.no_grad(), fake_quantized(model, ranges):
        simulated = model.bert(*args).last_hidden_state.numpy()[real]
    with torch.no_grad():
        plain = model.bert(*args).last_hidden_state.numpy()[real]
    ratio = np.abs(simulated - target).mean() / np.abs(plain - target).mean()
    assert ratio < 0.2, ratio  # measured 0.02 on the tiny model
    assert set(model.state_dict()) == set(bundle.module.hf_model.state_dict())  # wrappers removed
    np.testing.assert_array_equal(model(*args).logits.detach().numpy(), torch_logits(bundle.module, feeds, NAMES))


def test_pass_with_qat_trains_then_converts(bundle, feeds, tiny_data, tmp_path):
    from edgecompress.intake.data import load_dataset

    before = {k: v.clone() for k, v in bundle.module.hf_model.state_dict().items()}
    ctx = _ctx(feeds, train_data=load_dataset(tiny_data, require_labels=True))
    options = IntegerOnly(qat_epochs=1.0, batch_size=4, lr=1e-3, work_dir=str(tmp_path / "qat"))
    model, record = apply_pass(options, bundle, ctx)
    assert record.stats["steps"] == 3 and record.stats["qat_epochs"] == 1.0
    assert any(note.startswith("QAT: 1.0 epochs (3 steps") for note in record.notes)
    assert all(torch.equal(before[k], v) for k, v in bundle.module.hf_model.state_dict().items())
    assert not (tmp_path / "qat" / "checkpoint.pt").exists()  # removed once training completed
    graph = model.module.to_onnx(feeds, input_names=NAMES, output_name="logits")
    np.testing.assert_array_equal(
        ort_logits(graph, feeds, NAMES, optimize=True), torch_logits(model.module, feeds, NAMES)
    )
