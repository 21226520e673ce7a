"""The students' ops through the TFLite backend: ONNX LSTM and Conv lowered to LiteRT builtins, float and int8.

Tiny graphs are built inline per op family and run in LiteRT (the default XNNPACK setup, one interpreter
for several texts in a row, as the verify stage does) against ONNX Runtime on the same inputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecompress.backends.tflite.artifact import audit_tflite, load_interpreter
from edgecompress.backends.tflite.lowering import lower_to_tflite
from edgecompress.errors import UserError
from edgecompress.graph.quantize_dynamic import QuantizeDynamic
from edgecompress.measure.estimate import estimate_latency
from edgecompress.onnx_facts import infer_shapes
from edgecompress.pipeline import ExportRequest, run_export

from helpers import pass_context

FLOAT_ATOL = 1e-4
SEQ, FEATURES, HIDDEN = 6, 4, 3
# Three texts of different lengths, run one after another through one interpreter.
LENGTHS = (6, 2, 4)


# ---- helpers ------------------------------------------------------------------------------------------------


def lstm_model(
    direction: str, *, lengths: bool, batch: int = 1, outputs=("Y", "Y_h"), peepholes: bool = False, **attributes
) -> onnx.ModelProto:
    """One ONNX LSTM with random weights; X (and sequence_lens) are graph inputs."""
    rng = np.random.default_rng(0)
    dirs = 2 if direction == "bidirectional" else 1
    weights = {
        "W": rng.normal(0, 0.5, (dirs, 4 * HIDDEN, FEATURES)),
        "R": rng.normal(0, 0.5, (dirs, 4 * HIDDEN, HIDDEN)),
        "B": rng.normal(0, 0.2, (dirs, 8 * HIDDEN)),
    }
    if peepholes:
        weights["P"] = rng.normal(0, 0.2, (dirs, 3 * HIDDEN))
    x_shape = [SEQ, batch, FEATURES]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    if lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT32, [batch]))
    node_inputs = ["X", "W", "R", "B", "lengths" if lengths else "", "", "", "P" if peepholes else ""]
    node_outputs = [name if name in outputs else "" for name in ("Y", "Y_h", "Y_c")]
    node = helper.make_node(
        "LSTM", node_inputs, node_outputs, name="lstm", hidden_size=HIDDEN, direction=direction, **attributes
    )
    y_shape, state_shape = [SEQ, dirs, batch, HIDDEN], [dirs, batch, HIDDEN]
    graph_outputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, y_shape if name == "Y" else state_shape)
        for name in outputs
    ]
    initializers = [numpy_helper.from_array(value.astype(np.float32), name) for name, value in weights.items()]
    graph = helper.make_graph([node], "tiny_lstm", inputs, graph_outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def lstm_feeds(lengths: bool, batch: int = 1) -> list[dict[str, np.ndarray]]:
    """One feed per text; steps past a text's length hold noise, as padding embeddings do."""
    rng = np.random.default_rng(1)
    feeds = []
    for first in range(len(LENGTHS)):
        rows = [LENGTHS[(first + row) % len(LENGTHS)] for row in range(batch)]
        x = rng.normal(0, 1, (SEQ, batch, FEATURES)).astype(np.float32)
        feed = {"X": x}
        if lengths:
            feed["lengths"] = np.array(rows, np.int32)
        feeds.append(feed)
    return feeds


def run_both(
    model: onnx.ModelProto, feeds: list[dict], folder: Path, *, delegate: bool = True, name: str = "model.tflite"
):
    """(ORT outputs, LiteRT outputs) per feed and output name, LiteRT reusing one interpreter throughout."""
    path = folder / name
    path.write_bytes(lower_to_tflite(model))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    interpreter = load_interpreter(path, threads=1, delegate=delegate)
    inputs = {d["name"]: d for d in interpreter.get_input_details()}
    outputs = {d["name"]: d for d in interpreter.get_output_details()}
    names = [value.name for value in model.graph.output]
    expected, actual = [], []
    for feed in feeds:
        expected.append(dict(zip(names, session.run(names, feed))))
        for name, value in feed.items():
            interpreter.set_tensor(inputs[name]["index"], value)
        interpreter.invoke()
        actual.append({name: interpreter.get_tensor(outputs[name]["index"]).copy() for name in names})
    return expected, actual


def max_diff(expected, actual) -> float:
    return max(float(np.abs(e[name] - a[name]).max()) for e, a in zip(expected, actual) for name in e)


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    noise = float(np.sum((reference.astype(np.float64) - candidate) ** 2))
    return 10 * np.log10(float(np.sum(reference.astype(np.float64) ** 2)) / max(noise, 1e-30))


# ---- LSTM ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_lstm_matches_onnx_runtime(direction, lengths, tmp_path):
    model = lstm_model(direction, lengths=lengths)
    expected, actual = run_both(model, lstm_feeds(lengths), tmp_path)
    assert max_diff(expected, actual) <= FLOAT_ATOL
    if lengths:  # ORT writes zeros past a text's length; so must the lowering
        assert np.all(actual[1]["Y"][LENGTHS[1] :] == 0)


def test_lstm_padded_batch_of_two_rows(tmp_path):
    model = lstm_model("bidirectional", lengths=True, batch=2)
    expected, actual = run_both(model, lstm_feeds(True, batch=2), tmp_path)
    assert max_diff(expected, actual) <= FLOAT_ATOL


def test_lstm_state_does_not_leak_between_invocations(tmp_path):
    """TFLite's LSTM keeps its state in variable tensors; the lowering rewrites them before every run."""
    model = lstm_model("forward", lengths=False, outputs=("Y_h",))
    feeds = lstm_feeds(False)
    _, actual = run_both(model, [feeds[0], feeds[1], feeds[0]], tmp_path)
    np.testing.assert_array_equal(actual[0]["Y_h"], actual[2]["Y_h"])
    ops = audit_tflite(tmp_path / "model.tflite").op_histogram
    assert ops["UNIDIRECTIONAL_SEQUENCE_LSTM"] == 1 and ops["BROADCAST_TO"] == 2


def test_bidirectional_lstm_lowers_to_two_unidirectional_lstms(tmp_path):
    model = lstm_model("bidirectional", lengths=True)
    (tmp_path / "model.tflite").write_bytes(lower_to_tflite(model))
    ops = audit_tflite(tmp_path / "model.tflite").op_histogram
    assert ops["UNIDIRECTIONAL_SEQUENCE_LSTM"] == 2 and ops["REVERSE_SEQUENCE"] >= 2


@pytest.mark.parametrize(
    "variant, why",
    [
        (dict(peepholes=True), "peephole weights P (not lowered)"),
        (dict(activations=["Sigmoid", "Relu", "Tanh"]), "activations ['Sigmoid', 'Relu', 'Tanh']"),
        (dict(clip=5.0), "attribute 'clip'"),
        (dict(outputs=("Y", "Y_c")), "its cell-state output Y_c is used"),
    ],
)
def test_unsupported_lstm_variant_is_a_user_error_naming_op_and_node(variant, why):
    model = lstm_model("forward", lengths=False, **variant)
    with pytest.raises(UserError) as error:
        lower_to_tflite(model)
    assert str(error.value).startswith(f"model 'tiny_lstm': cannot lower LSTM node 'lstm' to TFLite: {why}")


# ---- Conv and pooling ---------------------------------------------------------------------------------------


def window_model(nodes, x_shape, out_shape, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "tiny_window",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(v, n) for n, v in initializers],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def conv1d_max_over_time(width: int = 3) -> onnx.ModelProto:
    """The CNN student's shape: Conv1d padded by width-1 on both sides, ReLU, max over time."""
    rng = np.random.default_rng(2)
    weights = rng.normal(0, 0.5, (5, FEATURES, width)).astype(np.float32)
    bias = rng.normal(0, 0.1, 5).astype(np.float32)
    nodes = [
        helper.make_node(
            "Conv", ["X", "W", "B"], ["conv"], name="conv", kernel_shape=[width], pads=[width - 1, width - 1]
        ),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("ReduceMax", ["relu"], ["out"], axes=[2], keepdims=0),
    ]
    return window_model(nodes, [1, FEATURES, SEQ], [1, 5], [("W", weights), ("B", bias)])


def test_conv1d_and_max_over_time_match_onnx_runtime(tmp_path):
    rng = np.random.default_rng(3)
    feeds = [{"X": rng.normal(0, 1, (1, FEATURES, SEQ)).astype(np.float32)} for _ in range(3)]
    model = conv1d_max_over_time()
    expected, actual = run_both(model, feeds, tmp_path)
    assert max_diff(expected, actual) <= FLOAT_ATOL
    ops = audit_tflite(tmp_path / "model.tflite").op_histogram
    assert ops["CONV_2D"] == 1 and ops["REDUCE_MAX"] == 1 and ops["PAD"] == 1


def test_conv2d_with_stride_dilation_and_pooling(tmp_path):
    rng = np.random.default_rng(4)
    weights = rng.normal(0, 0.5, (4, 2, 3, 2)).astype(np.float32)
    nodes = [
        helper.make_node(
            "Conv",
            ["X", "W"],
            ["conv"],
            name="conv",
            kernel_shape=[3, 2],
            strides=[2, 1],
            dilations=[1, 2],
            pads=[1, 0, 1, 1],
        ),
        helper.make_node("MaxPool", ["conv"], ["pool"], kernel_shape=[2, 2], strides=[1, 2]),
        helper.make_node("GlobalMaxPool", ["pool"], ["out"]),
    ]
    model = window_model(nodes, [1, 2, 7, 6], [1, 4, 1, 1], [("W", weights)])
    model = onnx.shape_inference.infer_shapes(model)
    feeds = [{"X": rng.normal(0, 1, (1, 2, 7, 6)).astype(np.float32)} for _ in range(2)]
    expected, actual = run_both(model, feeds, tmp_path)
    assert max_diff(expected, actual) <= FLOAT_ATOL


def test_grouped_conv_is_a_user_error():
    weights = np.ones((4, 2, 3), np.float32)
    node = helper.make_node("Conv", ["X", "W"], ["out"], name="grouped", kernel_shape=[3], group=2)
    model = window_model([node], [1, 4, SEQ], [1, 4, SEQ - 2], [("W", weights)])
    with pytest.raises(UserError, match=r"cannot lower Conv node 'grouped' to TFLite: group=2"):
        lower_to_tflite(model)


# ---- int8 ---------------------------------------------------------------------------------------------------


def quantized(model: onnx.ModelProto):
    """The quantize_dynamic pass without calibration data: every supported node quantized."""
    context = pass_context(seq_len=SEQ, input_names=tuple(v.name for v in model.graph.input))
    return QuantizeDynamic().run(model, context)


def test_dynamic_int8_lstm_runs_as_a_hybrid_lstm(tmp_path):
    model = lstm_model("bidirectional", lengths=True, outputs=("Y",))
    result = quantized(model)
    assert [n.op_type for n in result.model.graph.node] == ["DynamicQuantizeLSTM"]
    feeds = lstm_feeds(True)
    expected, actual = run_both(result.model, feeds, tmp_path)
    floats, _ = run_both(model, feeds, tmp_path, name="float.tflite")
    for reference, ort_int8, litert_int8 in zip(floats, expected, actual):
        assert sqnr_db(ort_int8["Y"], litert_int8["Y"]) >= 25  # the two int8 kernels agree
        assert sqnr_db(reference["Y"], litert_int8["Y"]) >= 25  # and both stay near the float model
    lstm_ops = [
        op
        for op in load_interpreter(tmp_path / "model.tflite", threads=1, delegate=False)._get_ops_details()
        if op["op_name"] == "UNIDIRECTIONAL_SEQUENCE_LSTM"
    ]
    assert len(lstm_ops) == 2 and all(np.int8 in op["operand_types"] for op in lstm_ops)


def test_dynamic_int8_conv_runs_as_a_hybrid_conv(tmp_path):
    model = conv1d_max_over_time()
    result = quantized(model)
    assert "ConvInteger" in {n.op_type for n in result.model.graph.node}
    rng = np.random.default_rng(5)
    feeds = [{"X": rng.normal(0, 1, (1, FEATURES, SEQ)).astype(np.float32)} for _ in range(3)]
    expected, actual = run_both(result.model, feeds, tmp_path, delegate=False)
    for ort_int8, litert_int8 in zip(expected, actual):
        assert sqnr_db(ort_int8["out"], litert_int8["out"]) >= 25
    audit = audit_tflite(tmp_path / "model.tflite")
    assert audit.op_histogram["CONV_2D"] == 1 and "CONV_2D" not in audit.float_ops


# ---- the students end to end --------------------------------------------------------------------------------

STUDENTS = {
    "bilstm": {"embedding_dim": 8, "lstm_hidden": 6, "mlp_hidden": 8},
    "bilstm-final": {"embedding_dim": 8, "lstm_hidden": 6, "mlp_hidden": 8, "pooling": "final"},
    "cnn": {"embedding_dim": 8, "num_filters": 6, "kernel_sizes": [2, 3], "mlp_hidden": 8},
}


@pytest.fixture(scope="module")
def student_folders(tmp_path_factory, tiny_checkpoint) -> dict[str, Path]:
    """Seeded, untrained students on the tiny BERT's tokenizer: parity does not need accuracy."""
    import torch
    from safetensors.torch import save_file

    from edgecompress.distill.students import build_student, student_config
    from edgecompress.intake.model import load_bundle

    teacher = load_bundle(tiny_checkpoint)
    folders = {}
    for name, overrides in STUDENTS.items():
        config = student_config(
            name.split("-")[0],
            overrides,
            tokenizer=teacher.tokenizer,
            labels=["negative", "positive"],
            max_positions=64,
            where="test",
        )
        torch.manual_seed(0)
        module = build_student(config)
        folder = tmp_path_factory.mktemp("students") / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
        save_file(
            {k: v.contiguous() for k, v in module.state_dict().items()},
            str(folder / "model.safetensors"),
            metadata={"format": "pt"},
        )
        for file in teacher.tokenizer_settings.files:
            shutil.copyfile(teacher.tokenizer_dir / file, folder / file)
        folders[name] = folder
    return folders


@pytest.mark.parametrize("recipe", ["default", "dynamic-int8"])
@pytest.mark.parametrize("student", list(STUDENTS))
def test_student_exports_to_every_artifact(student_folders, student, recipe, tiny_device, tiny_data, tmp_path):
    result = run_export(
        ExportRequest(
            model=student_folders[student],
            device=str(tiny_device),
            out_root=tmp_path,
            data=tiny_data,
            recipe=recipe,
            measure=False,
        )
    )
    artifacts = {a.kind: a for a in result.report.artifacts}
    assert set(artifacts) == {"onnx", "ort", "tflite"}
    for artifact in artifacts.values():
        assert artifact.parity["passed"]
        if recipe == "default":
            assert artifact.parity["max_abs_diff"] <= FLOAT_ATOL
    graph_ops = {n.op_type for n in onnx.load(result.out_dir / "model.onnx").graph.node}
    if recipe == "dynamic-int8":
        # the CNN's convolutions run as one quantized MatMul (conv1d_as_matmul): ORT's ConvInteger is slow
        assert ("DynamicQuantizeLSTM" if student.startswith("bilstm") else "MatMulInteger") in graph_ops
        assert "ConvInteger" not in graph_ops
        tflite_ops = audit_tflite(result.out_dir / "model.tflite").op_histogram
        assert "DEQUANTIZE" in tflite_ops  # the 8-bit embedding table, gathered before dequantizing


def test_bilstm_export_is_one_lstm_with_lengths_and_no_exporter_warnings(student_folders, tiny_data, capfd):
    from edgecompress.intake.data import load_dataset, tokenize
    from edgecompress.intake.model import load_bundle
    from edgecompress.lower import export_onnx

    bundle = load_bundle(student_folders["bilstm-final"])
    feeds = tokenize(
        bundle.tokenizer, load_dataset(tiny_data, require_labels=True).texts, seq_len=16, input_names=bundle.input_names
    )
    capfd.readouterr()
    graph = export_onnx(bundle, feeds)
    assert "PackPadded" not in capfd.readouterr().err
    lstm = next(node for node in graph.graph.node if node.op_type == "LSTM")
    assert lstm.input[4]  # per-text lengths reach the LSTM


# ---- estimate -----------------------------------------------------------------------------------------------


def test_lstm_estimate_pays_every_recurrent_step():
    """A BiLSTM at batch 1 re-reads R on each of its seq_len steps per direction: memory-bound, sequential."""
    model = lstm_model("bidirectional", lengths=False, outputs=("Y",))
    peaks = dict(
        peak_fp32_ops_per_s=1e11,
        peak_int8_ops_per_s=4e11,
        bandwidth_bytes_per_s=1e10,
        compute_efficiency=1.0,
        bandwidth_efficiency=1.0,
    )
    cost = estimate_latency(model, **peaks, node_overhead_s=0).nodes[0]
    r_bytes_per_direction = 4 * HIDDEN * HIDDEN * 4
    assert cost.bytes >= 2 * SEQ * r_bytes_per_direction  # R read once per step and direction
    per_step = max(2 * HIDDEN * 4 * HIDDEN / 1e11, r_bytes_per_direction / 1e10)
    assert cost.ms >= 1e3 * 2 * SEQ * per_step
    assert cost.bound == "memory"


def test_conv_estimate_counts_im2col_traffic():
    model = conv1d_max_over_time(width=3)
    shapes = infer_shapes(model)
    cost = estimate_latency(
        model, peak_fp32_ops_per_s=1e11, peak_int8_ops_per_s=4e11, bandwidth_bytes_per_s=1e10
    ).nodes[0]
    plain = sum(int(np.prod(shapes[name][0])) * 4 for name in ("X", "W", "B", "conv"))
    out_steps = SEQ + 2
    assert cost.flops == 2 * 5 * out_steps * FEATURES * 3
    assert cost.bytes == plain + 2 * out_steps * FEATURES * 3 * 4
