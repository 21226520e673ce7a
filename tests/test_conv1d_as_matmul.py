"""conv1d_as_matmul: 1-D Convs become im2col + MatMul; it fires, it says why it does not, outputs still match."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecompress.errors import InternalError
from edgecompress.graph import conv1d_as_matmul
from edgecompress.graph.conv1d_as_matmul import Conv1dAsMatmul
from edgecompress.passes import PassContext, apply_pass

from helpers import pass_context
from test_tflite_students import student_folders  # noqa: F401  (the tiny CNN student, a fixture)

CHANNELS, STEPS, FILTERS = 4, 9, 5
# A rewrite only reorders the sums: outputs agree to float rounding.
ATOL = 1e-5


def context() -> PassContext:
    return pass_context(seq_len=STEPS)


def conv(name: str, width: int, *, x: str = "X", out: str | None = None, bias: bool = True, **attributes):
    """(Conv node, its initializers) with seeded random weights [FILTERS, C, width] (and bias)."""
    rng = np.random.default_rng(width)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (FILTERS, CHANNELS, width)).astype(np.float32), f"{name}.W")]
    inputs = [x, f"{name}.W"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.2, FILTERS).astype(np.float32), f"{name}.B"))
        inputs.append(f"{name}.B")
    node = helper.make_node("Conv", inputs, [out or name], name=name, kernel_shape=[width], **attributes)
    return node, inits


def graph_model(nodes, inits, outputs: list[str], x_shape=(1, CHANNELS, STEPS)) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))
    graph = helper.make_graph(
        nodes,
        "tiny_conv",
        [x],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def outputs(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"X": x})


def assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto, x_shape=(1, CHANNELS, STEPS)) -> None:
    x = np.random.default_rng(7).normal(0, 1, x_shape).astype(np.float32)
    for expected, actual in zip(outputs(before, x), outputs(after, x)):
        assert expected.shape == actual.shape
        assert np.abs(expected - actual).max() <= ATOL


def op_types(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


# ---- it fires, outputs match ------------------------------------------------------------------------------


@pytest.mark.parametrize("pads", [[0, 0], [1, 1], [2, 0], [0, 3]])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("width", [1, 2, 3, 5])
def test_conv_becomes_im2col_matmul_with_the_same_outputs(width, bias, pads):
    node, inits = conv("conv", width, bias=bias, pads=pads)
    model = graph_model([node], inits, ["conv"])
    result, record = apply_pass(Conv1dAsMatmul(), model, context())
    assert record.fired
    ops = op_types(result)
    assert "Conv" not in ops and ops.count("MatMul") == 1 and ops.count("Slice") == width
    assert ("Add" in ops) == bias
    assert ops.count("Concat") == (2 if any(pads) else 1)  # zero rows only when the windows reach past X
    assert {init.name for init in result.graph.initializer}.isdisjoint({"conv.W"})  # the float weight is gone
    assert_same_outputs(model, result)
    assert record.stats["max_abs_diff"] <= ATOL


def test_student_pattern_absorbs_the_time_slice_and_merges_widths():
    """The CNN student: Convs of widths 2, 3 padded by width-1 on both sides, each followed by a Slice that
    keeps the windows starting on a token. One MatMul computes exactly the kept windows of both."""
    nodes, inits, outs = [], [], []
    for width in (2, 3):
        node, weights = conv(f"conv{width}", width, pads=[width - 1, width - 1])
        starts, ends, axes = (
            numpy_helper.from_array(np.array([v], np.int64), f"s{width}.{what}")
            for what, v in (("starts", width - 1), ("ends", 2**62), ("axes", 2))
        )
        nodes += [
            node,
            helper.make_node(
                "Slice", [node.output[0], starts.name, ends.name, axes.name], [f"kept{width}"], name=f"slice{width}"
            ),
            helper.make_node("Relu", [f"kept{width}"], [f"relu{width}"]),
        ]
        inits += [*weights, starts, ends, axes]
        outs.append(f"relu{width}")
    model = graph_model(nodes, inits, outs)
    result, record = apply_pass(Conv1dAsMatmul(), model, context())
    ops = op_types(result)
    assert ops.count("MatMul") == 1 and "Conv" not in ops
    assert record.stats["absorbed_slices"] == 2 and record.stats["matmuls"] == 1
    assert not {"slice2", "slice3"} & {node.name for node in result.graph.node}
    assert "absorbed" in record.notes[0] and "zero taps add 20% multiply-adds" in record.notes[0]  # 3*10 / (2+3)*5
    names = {init.name for init in result.graph.initializer}
    assert not names & {"s2.starts", "s3.ends", "conv2.W", "conv3.B"}  # what only the removed nodes read
    windows = next(n for n in result.graph.node if n.op_type == "Concat" and n.input[0].endswith("tap_0"))
    assert len(windows.input) == 3  # widest width
    assert_same_outputs(model, result)


def test_convs_on_one_input_with_different_windows_get_their_own_matmuls():
    a, a_inits = conv("same", 3, pads=[1, 1])
    b, b_inits = conv("valid", 2)
    model = graph_model([a, b], a_inits + b_inits, ["same", "valid"])
    result, record = apply_pass(Conv1dAsMatmul(), model, context())
    ops = op_types(result)
    assert ops.count("MatMul") == 2 and ops.count("Transpose") == 3  # X transposed once, shared
    assert_same_outputs(model, result)


# ---- it does not fire, and says why ------------------------------------------------------------------------


def test_graph_without_conv_is_skipped_with_the_reason():
    model = onnx.parser.parse_model("""
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[1, 4, 9] X) => (float[1, 4, 9] Y) {
      Y = Relu(X)
    }
    """)
    result, record = apply_pass(Conv1dAsMatmul(), model, context())
    assert not record.fired and result is model
    assert record.notes == ["skipped: no 1-D Conv (a Conv whose weight is a constant [F, C, k])"]


@pytest.mark.parametrize(
    "attributes, why",
    [
        (dict(strides=[2]), "'strided': strides=[2] (only [1] is rewritten)"),
        (dict(dilations=[2]), "'strided': dilations=[2] (only [1] is rewritten)"),
        (dict(auto_pad="SAME_UPPER"), "'strided': auto_pad SAME_UPPER (only explicit pads are rewritten)"),
    ],
)
def test_conv_it_cannot_rewrite_is_skipped_with_the_reason(attributes, why):
    node, inits = conv("strided", 3, **attributes)
    _, record = apply_pass(Conv1dAsMatmul(), graph_model([node], inits, ["strided"]), context())
    assert not record.fired
    assert record.notes == [f"skipped: no 1-D Conv it can rewrite: {why}"]


def test_2d_conv_is_skipped_with_the_reason():
    weights = numpy_helper.from_array(np.ones((FILTERS, CHANNELS, 3, 3), np.float32), "W")
    node = helper.make_node("Conv", ["X", "W"], ["Y"], name="conv2d", kernel_shape=[3, 3])
    model = graph_model([node], [weights], ["Y"], x_shape=(1, CHANNELS, STEPS, STEPS))
    _, record = apply_pass(Conv1dAsMatmul(), model, context())
    assert record.notes == ["skipped: no 1-D Conv it can rewrite: 'conv2d': a 2-D convolution (only 1-D is rewritten)"]


def test_conv_it_cannot_rewrite_is_left_alone_beside_one_it_rewrites():
    plain, plain_inits = conv("plain", 3)
    strided, strided_inits = conv("strided", 2, strides=[2])
    model = graph_model([plain, strided], plain_inits + strided_inits, ["plain", "strided"])
    result, record = apply_pass(Conv1dAsMatmul(), model, context())
    assert record.fired and record.stats["rewritten"] == ["plain"]
    assert [n.name for n in result.graph.node if n.op_type == "Conv"] == ["strided"]
    assert "left alone: Conv 'strided': strides=[2] (only [1] is rewritten)" in record.notes
    assert_same_outputs(model, result)


def test_symbolic_input_shape_is_skipped_with_the_reason():
    node, inits = conv("conv", 3)
    model = graph_model([node], inits, ["conv"], x_shape=("batch", CHANNELS, "time"))
    _, record = apply_pass(Conv1dAsMatmul(), model, context())
    assert record.notes == [
        "skipped: no 1-D Conv it can rewrite: 'conv': input 'X' has no fixed rank-3 shape (run after fix_shapes)"
    ]


def test_wrong_rewrite_fails_loudly(monkeypatch):
    """`ensures` compares outputs: a rewrite with the taps in the wrong order must not pass."""
    monkeypatch.setattr(
        conv1d_as_matmul,
        "_tap_major",
        lambda weight, width: np.ascontiguousarray(
            weight[:, :, ::-1].transpose(2, 1, 0).reshape(width * weight.shape[1], weight.shape[0])
        ),
    )
    node, inits = conv("conv", 3)
    with pytest.raises(InternalError, match="conv1d_as_matmul changed the outputs"):
        apply_pass(Conv1dAsMatmul(), graph_model([node], inits, ["conv"]), context())


# ---- in the dynamic-int8 recipe ---------------------------------------------------------------------------


# student_folders is the fixture imported from test_tflite_students, taken by name as pytest does.
def test_cnn_student_dynamic_int8_has_no_conv_integer_and_its_tflite_verifies(
    student_folders,  # noqa: F811
    tiny_device,
    tiny_data,
    tmp_path,
):
    from edgecompress.backends.tflite.artifact import audit_tflite, load_interpreter
    from edgecompress.pipeline import ExportRequest, run_export

    result = run_export(
        ExportRequest(
            model=student_folders["cnn"],
            device=str(tiny_device),
            out_root=tmp_path,
            data=tiny_data,
            recipe="dynamic-int8",
            measure=False,
        )
    )
    record = next(p for p in result.report.passes if p["name"] == "conv1d_as_matmul")
    assert record["fired"] and record["stats"]["matmuls"] == 1
    graph_ops = set(op_types(onnx.load(result.out_dir / "model.onnx")))
    assert not graph_ops & {"Conv", "ConvInteger"} and "MatMulInteger" in graph_ops
    artifacts = {a.kind: a for a in result.report.artifacts}
    assert all(a.parity["passed"] for a in artifacts.values())
    assert artifacts["tflite"].parity_vs_onnxruntime["passed"]
    assert "CONV_2D" not in audit_tflite(result.out_dir / "model.tflite").op_histogram
    interpreter = load_interpreter(result.out_dir / "model.tflite", threads=1, delegate=False)
    hybrid = [
        op
        for op in interpreter._get_ops_details()
        if op["op_name"] == "FULLY_CONNECTED" and np.int8 in op["operand_types"]
    ]
    assert len(hybrid) == 1  # the two widths (2, 3) in one MatMul, int8 weights (the head stays float)


def test_bert_teacher_dynamic_int8_skips_the_pass(tiny_checkpoint, tiny_device, tiny_data, tmp_path):
    from edgecompress.pipeline import ExportRequest, run_export

    result = run_export(
        ExportRequest(
            model=tiny_checkpoint,
            device=str(tiny_device),
            out_root=tmp_path,
            data=tiny_data,
            recipe="dynamic-int8",
            measure=False,
        )
    )
    record = next(p for p in result.report.passes if p["name"] == "conv1d_as_matmul")
    assert not record["fired"]
    assert record["notes"] == ["skipped: no 1-D Conv (a Conv whose weight is a constant [F, C, k])"]
