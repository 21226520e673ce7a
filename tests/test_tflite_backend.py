"""The LiteRT backend: ONNX -> .tflite lowering per op family, its errors, the executor, the audit, end to end.

Every lowering test builds a tiny ONNX model inline, writes it as .tflite and runs both files on the same
inputs: onnxruntime (graph optimizations off) against LiteRT with its default XNNPACK delegate.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecompress.backends import backend_for, backends
from edgecompress.backends.tflite.lowering import lower_to_tflite
from edgecompress.errors import UserError

pytest.importorskip("ai_edge_litert")
# The pipeline registers backends in file order (ort before tflite), and emit_all writes artifacts in
# registration order; importing tflite.py first from here would reorder the manifests of later tests.
backends()
from edgecompress.backends.tflite.artifact import audit_for_report, audit_tflite, load_interpreter, run_tflite_artifact  # noqa: E402

FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
TOLERANCE = 1e-5
RNG = np.random.default_rng(0)


def value(name, elem_type, shape):
    return helper.make_tensor_value_info(name, elem_type, shape)


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def build(nodes, inputs, outputs, initializers=(), name="tiny"):
    """An opset-17, IR-9 model (what the pipeline writes), with the com.microsoft domain when used."""
    opsets = [helper.make_opsetid("", 17)]
    if any(node.domain == "com.microsoft" for node in nodes):
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    model = helper.make_model(helper.make_graph(nodes, name, inputs, outputs, list(initializers)), opset_imports=opsets)
    model.ir_version = 9
    return model


def lowered(model, tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(lower_to_tflite(model))
    return path


def litert_run(path, feeds):
    interpreter = load_interpreter(path, threads=1)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], feeds[detail["name"]])
    interpreter.invoke()
    return {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}


def ort_run(model, feeds):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def check(model, feeds, tmp_path) -> dict[str, int]:
    """Lower, run both runtimes, compare every output; returns the .tflite op histogram."""
    path = lowered(model, tmp_path)
    want, got = ort_run(model, feeds), litert_run(path, feeds)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        np.testing.assert_allclose(got[name], want[name], rtol=TOLERANCE, atol=TOLERANCE, err_msg=name)
    return audit_tflite(path).op_histogram


def floats(*shape, positive=False):
    array = RNG.standard_normal(shape).astype(np.float32)
    return np.abs(array) + 0.1 if positive else array


# --- op families ---------------------------------------------------------------------------------


def test_elementwise_arithmetic_broadcasts(tmp_path):
    ops = {"Add": "ADD", "Sub": "SUB", "Mul": "MUL", "Div": "DIV", "Pow": "POW", "Max": "MAXIMUM", "Min": "MINIMUM"}
    nodes = [helper.make_node(op, ["x", "b" if op in ("Add", "Mul") else "z"], [op.lower()]) for op in ops]
    model = build(
        nodes,
        [value("x", FLOAT, [2, 3, 4]), value("z", FLOAT, [2, 1, 4])],
        [value(op.lower(), FLOAT, [2, 3, 4]) for op in ops],
        [const("b", floats(4))],
    )
    histogram = check(model, {"x": floats(2, 3, 4, positive=True), "z": floats(2, 1, 4, positive=True)}, tmp_path)
    assert histogram == {builtin: 1 for builtin in ops.values()}


def test_unary_ops(tmp_path):
    ops = {
        "Tanh": "TANH",
        "Sqrt": "SQRT",
        "Exp": "EXP",
        "Relu": "RELU",
        "Sigmoid": "LOGISTIC",
        "Neg": "NEG",
        "Abs": "ABS",
    }
    nodes = [helper.make_node(op, ["x"], [op.lower()]) for op in ops]
    model = build(nodes, [value("x", FLOAT, [2, 8])], [value(op.lower(), FLOAT, [2, 8]) for op in ops])
    assert check(model, {"x": floats(2, 8, positive=True)}, tmp_path) == {b: 1 for b in ops.values()}


def test_comparisons_logic_and_where(tmp_path):
    nodes = [
        helper.make_node("Equal", ["a", "b"], ["eq"]),
        helper.make_node("Less", ["a", "b"], ["lt"]),
        helper.make_node("Greater", ["a", "b"], ["gt"]),
        helper.make_node("LessOrEqual", ["a", "b"], ["le"]),
        helper.make_node("GreaterOrEqual", ["a", "b"], ["ge"]),
        helper.make_node("And", ["lt", "le"], ["both"]),
        helper.make_node("Or", ["eq", "gt"], ["either"]),
        helper.make_node("Not", ["either"], ["neither"]),
        helper.make_node("Where", ["neither", "x", "zero"], ["picked"]),
    ]
    bools = [value(n, TensorProto.BOOL, [2, 5]) for n in ("eq", "ge", "both", "neither")]
    model = build(
        nodes,
        [value("a", INT64, [2, 5]), value("b", INT64, [1, 5]), value("x", FLOAT, [2, 5])],
        bools + [value("picked", FLOAT, [2, 5])],
        [const("zero", np.float32(0))],
    )
    feeds = {"a": RNG.integers(0, 3, (2, 5)), "b": RNG.integers(0, 3, (1, 5)), "x": floats(2, 5)}
    histogram = check(model, feeds, tmp_path)
    assert {
        "EQUAL",
        "LESS",
        "GREATER",
        "LESS_EQUAL",
        "GREATER_EQUAL",
        "LOGICAL_AND",
        "LOGICAL_OR",
        "LOGICAL_NOT",
        "SELECT_V2",
    } == set(histogram)


def test_clip_with_one_or_two_bounds(tmp_path):
    nodes = [helper.make_node("Clip", ["x", "lo"], ["low"]), helper.make_node("Clip", ["x", "lo", "hi"], ["both"])]
    model = build(
        nodes,
        [value("x", FLOAT, [3, 4])],
        [value("low", FLOAT, [3, 4]), value("both", FLOAT, [3, 4])],
        [const("lo", np.float32(-0.5)), const("hi", np.float32(0.7))],
    )
    assert check(model, {"x": floats(3, 4)}, tmp_path) == {"MAXIMUM": 2, "MINIMUM": 1}


def test_matmul_by_a_constant_is_fully_connected_and_by_a_value_batch_matmul(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["projected"]), helper.make_node("MatMul", ["a", "b"], ["scores"])]
    inputs = [value("x", FLOAT, [1, 4, 8]), value("a", FLOAT, [1, 2, 4, 8]), value("b", FLOAT, [1, 2, 8, 4])]
    outputs = [value("projected", FLOAT, [1, 4, 6]), value("scores", FLOAT, [1, 2, 4, 4])]
    model = build(nodes, inputs, outputs, [const("w", floats(8, 6))])
    feeds = {"x": floats(1, 4, 8), "a": floats(1, 2, 4, 8), "b": floats(1, 2, 8, 4)}
    assert check(model, feeds, tmp_path) == {"FULLY_CONNECTED": 1, "BATCH_MATMUL": 1}


def test_gemm_in_both_weight_layouts_with_bias(tmp_path):
    nodes = [
        helper.make_node("Gemm", ["x", "w_nk", "bias"], ["y1"], transB=1),
        helper.make_node("Gemm", ["x", "w_kn", "bias_row"], ["y2"]),
    ]
    model = build(
        nodes,
        [value("x", FLOAT, [3, 8])],
        [value("y1", FLOAT, [3, 6]), value("y2", FLOAT, [3, 6])],
        [
            const("w_nk", floats(6, 8)),
            const("w_kn", floats(8, 6)),
            const("bias", floats(6)),
            const("bias_row", floats(1, 6)),
        ],
    )
    assert check(model, {"x": floats(3, 8)}, tmp_path) == {"FULLY_CONNECTED": 2}


# --- bias folding: the reader's bias moves into the FULLY_CONNECTED -----------------------------------

MS = {"domain": "com.microsoft"}
_BIAS_READERS = {  # reader of MatMul(x, w) -> "product": (its node, the ADDs it writes itself once folded)
    "SkipLayerNormalization": (
        helper.make_node(
            "SkipLayerNormalization", ["product", "skip", "gamma", "beta", "b"], ["y"], epsilon=1e-12, **MS
        ),
        3,
    ),  # skip, epsilon, beta
    "BiasGelu": (helper.make_node("BiasGelu", ["product", "b"], ["y"], **MS), 0),
    "Add": (helper.make_node("Add", ["b", "product"], ["y"]), 0),
}


def _fc_biases(path) -> list[bool]:
    """For each FULLY_CONNECTED of the file, whether it has a bias input."""
    ops = load_interpreter(path, threads=1, delegate=False)._get_ops_details()
    return [len(op["inputs"]) > 2 and int(op["inputs"][2]) >= 0 for op in ops if op["op_name"] == "FULLY_CONNECTED"]


def _bias_model(reader: str, matmul, initializers, x_shape=(2, 5, 8)):
    """(model, feeds): `matmul` writing "product" [.., 6] from x, read by `reader` with bias b."""
    skip_ln = reader == "SkipLayerNormalization"
    inputs, feeds = [value("x", FLOAT, list(x_shape))], {"x": floats(*x_shape)}
    if skip_ln:
        inputs.append(value("skip", FLOAT, [*x_shape[:-1], 6]))
        feeds["skip"] = floats(*x_shape[:-1], 6)
        initializers = [*initializers, const("gamma", 1 + floats(6) / 4), const("beta", floats(6))]
    model = build(
        [*matmul, _BIAS_READERS[reader][0]],
        inputs,
        [value("y", FLOAT, [*x_shape[:-1], 6])],
        [const("b", floats(6)), *initializers],
    )
    return model, feeds


@pytest.mark.parametrize("reader", list(_BIAS_READERS))
def test_a_float_matmuls_bias_is_added_by_its_fully_connected(tmp_path, reader):
    """`R(MatMul(x, W), bias)` -> `R(FULLY_CONNECTED(x, W^T, bias))`: the separate ADD over the product is gone."""
    model, feeds = _bias_model(
        reader, [helper.make_node("MatMul", ["x", "w"], ["product"])], [const("w", floats(8, 6))]
    )
    histogram = check(model, feeds, tmp_path)
    assert histogram.get("ADD", 0) == _BIAS_READERS[reader][1]
    assert _fc_biases(tmp_path / "model.tflite") == [True]


@pytest.mark.parametrize("reader", ["BiasGelu", "Add"])
def test_a_dynamic_int8_matmuls_bias_is_a_float_bias_of_the_hybrid_fully_connected(tmp_path, reader):
    """ORT's dynamic int8 matmul (DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul) before a bias: the
    hybrid kernel adds the float bias in its own output pass; no separate ADD, no guard columns."""
    weights, quantized, scales = _qdq_weights()
    matmul = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "x_s", "x_z"]),
        helper.make_node("MatMulInteger", ["xq", "wq", "x_z", "w_z"], ["int_product"]),
        helper.make_node("Cast", ["int_product"], ["product_f"], to=FLOAT),
        helper.make_node("Mul", ["x_s", "w_s"], ["scale"]),
        helper.make_node("Mul", ["product_f", "scale"], ["product"]),
    ]
    model, feeds = _bias_model(
        reader,
        matmul,
        [const("wq", quantized[:, :6]), const("w_z", np.zeros(6, np.int8)), const("w_s", scales[:6])],
        x_shape=(1, 8, K),
    )
    path = lowered(model, tmp_path)
    assert _sqnr_db(ort_run(model, feeds)["y"], litert_run(path, feeds)["y"]) >= 30  # both int8, rounded apart
    assert _fc_biases(path) == [True]
    assert "ADD" not in audit_tflite(path).op_histogram


@pytest.mark.parametrize("form", ["weights_only", "static_input"])
def test_a_qdq_weight_matmuls_bias_is_a_float_bias_of_the_hybrid_fully_connected(tmp_path, form):
    weights, quantized, scales = _qdq_weights()
    nodes = [helper.make_node("DequantizeLinear", ["wq", "w_s"], ["wd"], axis=1)]
    if form == "static_input":
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"]),
        ]
    nodes += [
        helper.make_node("MatMul", ["xd" if form == "static_input" else "x", "wd"], ["product"]),
        helper.make_node("Add", ["product", "b"], ["y"]),
    ]
    model = build(
        nodes,
        [value("x", FLOAT, [1, 8, K])],
        [value("y", FLOAT, [1, 8, N])],
        [
            const("wq", quantized),
            const("w_s", scales),
            const("x_s", np.float32(3 / 127)),
            const("x_z", np.uint8(128)),
            const("b", floats(1, 1, N)),
        ],
    )
    x, path = floats(1, 8, K), lowered(model, tmp_path)
    got = litert_run(path, {"x": x})["y"]
    if form == "static_input":  # the calibrated grid is kept exactly: ORT's numbers to float rounding
        np.testing.assert_allclose(got, ort_run(model, {"x": x})["y"], rtol=1e-5, atol=1e-5)
    assert _sqnr_db(x @ weights + numpy_helper.to_array(model.graph.initializer[-1]), got) >= 30
    assert _fc_biases(path) == [True] and "ADD" not in audit_tflite(path).op_histogram


@pytest.mark.parametrize("weight", ["float", "int8"])
def test_matmuls_sharing_a_weight_keep_their_own_biases(tmp_path, weight):
    _, quantized, scales = _qdq_weights()
    if weight == "float":
        nodes, initializers = [], [const("w", floats(K, N))]
    else:
        nodes, initializers = (
            [helper.make_node("DequantizeLinear", ["wq", "w_s"], ["w"], axis=1)],
            [const("wq", quantized), const("w_s", scales)],
        )
    for index in (1, 2):
        nodes += [
            helper.make_node("MatMul", ["x", "w"], [f"p{index}"]),
            helper.make_node("Add", [f"p{index}", f"b{index}"], [f"y{index}"]),
        ]
        initializers.append(const(f"b{index}", floats(N) * index))
    model = build(
        nodes, [value("x", FLOAT, [1, 8, K])], [value(f"y{i}", FLOAT, [1, 8, N]) for i in (1, 2)], initializers
    )
    x, path = floats(1, 8, K), lowered(model, tmp_path)
    got, want = litert_run(path, {"x": x}), ort_run(model, {"x": x})
    for name in ("y1", "y2"):  # int8: the run-time row quantization is LiteRT's own, hence the looser check
        assert _sqnr_db(want[name], got[name]) >= (100 if weight == "float" else 30), name
    assert _fc_biases(path) == [True, True]


@pytest.mark.parametrize(
    "case, why",
    [
        ("two_readers", "it is read by 2 nodes"),
        ("graph_output", "it is a graph output"),
        ("run_time_bias", "the bias 'b' of Add '' is not a constant"),
        ("broadcast", "Add '' broadcasts it to [3, 2, 5, 6]"),
        ("row_bias", "the bias 'b' is not a float32 vector of 6 (shape [5, 6])"),
        ("no_bias", "its reader Relu '' adds no bias"),
    ],
)
def test_a_bias_that_cannot_move_into_the_fully_connected_stays_an_add_and_says_why(tmp_path, caplog, case, why):
    x, w = value("x", FLOAT, [2, 5, 8]), const("w", floats(8, 6))
    nodes, inputs, outputs, extra = [helper.make_node("MatMul", ["x", "w"], ["product"])], [x], [], []
    feeds = {"x": floats(2, 5, 8)}
    y = value("y", FLOAT, [2, 5, 6])
    if case in ("two_readers", "graph_output"):
        nodes.append(helper.make_node("Add", ["product", "b"], ["y"]))
        extra.append(const("b", floats(6)))
        outputs = [y, value("product", FLOAT, [2, 5, 6])] if case == "graph_output" else [y]
        if case == "two_readers":
            nodes.append(helper.make_node("Relu", ["product"], ["r"]))
            outputs.append(value("r", FLOAT, [2, 5, 6]))
    elif case == "run_time_bias":
        nodes.append(helper.make_node("Add", ["product", "b"], ["y"]))
        inputs.append(value("b", FLOAT, [6]))
        feeds["b"], outputs = floats(6), [y]
    elif case in ("broadcast", "row_bias"):
        shape = [3, 1, 1, 6] if case == "broadcast" else [5, 6]
        nodes.append(helper.make_node("Add", ["product", "b"], ["y"]))
        extra.append(const("b", floats(*shape)))
        outputs = [value("y", FLOAT, [3, 2, 5, 6] if case == "broadcast" else [2, 5, 6])]
    else:
        nodes.append(helper.make_node("Relu", ["product"], ["y"]))
        outputs = [y]
    caplog.set_level("DEBUG", logger="edgecompress.backends.tflite.lowering")
    check(build(nodes, inputs, outputs, [w, *extra]), feeds, tmp_path)
    assert f"bias of 'product' not folded into its FULLY_CONNECTED: {why}" in caplog.messages
    assert _fc_biases(tmp_path / "model.tflite") == [False]


def test_gather_rows_and_a_constant_token(tmp_path):
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["rows"]),
        helper.make_node("Gather", ["rows", "zero"], ["first"], axis=1),
        helper.make_node("Gather", ["rows", "last_and_first"], ["picked"], axis=-2),
    ]
    model = build(
        nodes,
        [value("ids", INT64, [1, 5])],
        [value("first", FLOAT, [1, 4]), value("picked", FLOAT, [1, 2, 4])],
        [const("table", floats(10, 4)), const("zero", np.int64(0)), const("last_and_first", np.array([-1, 0]))],
    )
    histogram = check(model, {"ids": RNG.integers(0, 10, (1, 5))}, tmp_path)
    assert histogram == {"GATHER": 2, "SLICE": 1, "RESHAPE": 1}  # the constant token is a slice XNNPACK runs


def test_shape_ops(tmp_path):
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["reshaped"]),
        helper.make_node("Unsqueeze", ["x", "axis0"], ["unsqueezed"]),
        helper.make_node("Squeeze", ["unsqueezed", "axis0"], ["squeezed"]),
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("Transpose", ["x"], ["transposed"], perm=[0, 2, 1]),
        helper.make_node("Concat", ["x", "x"], ["joined"], axis=-1),
        helper.make_node("Expand", ["row", "big"], ["expanded"]),
        helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["sliced"]),
        helper.make_node("Identity", ["x"], ["same"]),
    ]
    outputs = [
        value("reshaped", FLOAT, [2, 12]),
        value("squeezed", FLOAT, [2, 3, 4]),
        value("flat", FLOAT, [2, 12]),
        value("transposed", FLOAT, [2, 4, 3]),
        value("joined", FLOAT, [2, 3, 8]),
        value("expanded", FLOAT, [2, 3, 4]),
        value("sliced", FLOAT, [2, 3, 2]),
        value("same", FLOAT, [2, 3, 4]),
    ]
    model = build(
        nodes,
        [value("x", FLOAT, [2, 3, 4]), value("row", FLOAT, [1, 4])],
        outputs,
        [
            const("shape", np.array([0, -1])),
            const("axis0", np.array([0])),
            const("big", np.array([2, 3, 4])),
            const("starts", np.array([-1])),
            const("ends", np.array([-1000])),
            const("axes", np.array([2])),
            const("steps", np.array([-2])),
        ],
    )
    histogram = check(model, {"x": floats(2, 3, 4), "row": floats(1, 4)}, tmp_path)
    assert histogram == {"RESHAPE": 5, "TRANSPOSE": 1, "CONCATENATION": 1, "BROADCAST_TO": 1, "STRIDED_SLICE": 1}


def test_softmax_layer_norm_reductions_and_cast(tmp_path):
    nodes = [
        helper.make_node("Softmax", ["x"], ["probs"], axis=-1),
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["normed"], axis=-1, epsilon=1e-12),
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1], keepdims=0),
        helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=1),
        helper.make_node("ReduceMax", ["x"], ["peak"], axes=[-1], keepdims=0),
        helper.make_node("Cast", ["ids"], ["ids_f"], to=FLOAT),
    ]
    outputs = [
        value("probs", FLOAT, [2, 3, 8]),
        value("normed", FLOAT, [2, 3, 8]),
        value("mean", FLOAT, [2, 8]),
        value("total", FLOAT, [1, 3, 1]),
        value("peak", FLOAT, [2, 3]),
        value("ids_f", FLOAT, [2, 3]),
    ]
    model = build(
        nodes,
        [value("x", FLOAT, [2, 3, 8]), value("ids", INT64, [2, 3])],
        outputs,
        [const("gamma", floats(8)), const("beta", floats(8)), const("axes", np.array([0, 2]))],
    )
    histogram = check(model, {"x": 3 + floats(2, 3, 8), "ids": RNG.integers(0, 100, (2, 3))}, tmp_path)
    assert {"SOFTMAX", "MEAN", "SUM", "REDUCE_MAX", "CAST", "RSQRT"} <= set(histogram)


def test_shape_arithmetic_with_fixed_shapes_is_computed_at_export(tmp_path):
    """Before -> After: `Shape(X) -> Gather(., 1) -> Unsqueeze -> Concat -> Reshape(Y, .)` -> `RESHAPE(Y)`."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["length"]),
        helper.make_node("Unsqueeze", ["length", "axis0"], ["length_1d"]),
        helper.make_node("Concat", ["length_1d", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    model = build(
        nodes,
        [value("x", FLOAT, [2, 3, 4])],
        [value("y", FLOAT, [3, 8])],
        [const("one", np.int64(1)), const("axis0", np.array([0])), const("minus_one", np.array([-1]))],
    )
    assert check(model, {"x": floats(2, 3, 4)}, tmp_path) == {"RESHAPE": 1}


def test_torch_erf_gelu_becomes_the_gelu_builtin(tmp_path):
    """LiteRT has no ERF: the exact-GELU subgraph of an unfused graph is legalized to GELU."""
    nodes = [
        helper.make_node("Div", ["x", "sqrt2"], ["scaled"]),
        helper.make_node("Erf", ["scaled"], ["erf"]),
        helper.make_node("Add", ["erf", "one"], ["shifted"]),
        helper.make_node("Mul", ["x", "shifted"], ["times_x"]),
        helper.make_node("Mul", ["times_x", "half"], ["y"]),
    ]
    model = build(
        nodes,
        [value("x", FLOAT, [2, 16])],
        [value("y", FLOAT, [2, 16])],
        [const("sqrt2", np.float32(math.sqrt(2))), const("one", np.float32(1)), const("half", np.float32(0.5))],
    )
    assert check(model, {"x": 3 * floats(2, 16)}, tmp_path) == {"GELU": 1}
    assert [n.op_type for n in model.graph.node] == ["Div", "Erf", "Add", "Mul", "Mul"]  # the input is untouched


def test_an_erf_outside_gelu_is_not_legalized_and_is_refused():
    model = build(
        [helper.make_node("Erf", ["x"], ["y"], name="lone_erf")],
        [value("x", FLOAT, [2, 4])],
        [value("y", FLOAT, [2, 4])],
    )
    with pytest.raises(UserError, match="cannot lower Erf node 'lone_erf' to TFLite: no lowering to LiteRT"):
        lower_to_tflite(model)


def test_a_value_type_litert_cannot_store_names_the_node():
    """e.g. the uint64 shifts of an integer-only graph: a clear refusal, not a KeyError from the writer."""
    model = build(
        [
            helper.make_node("Cast", ["x"], ["wide"], to=TensorProto.UINT64, name="to_uint64"),
            helper.make_node("Cast", ["wide"], ["y"], to=TensorProto.FLOAT, name="back"),
        ],
        [value("x", FLOAT, [2, 4])],
        [value("y", FLOAT, [2, 4])],
    )
    with pytest.raises(UserError, match="cannot lower Cast node 'to_uint64' to TFLite: values of type uint64"):
        lower_to_tflite(model)


# --- the ONNX Runtime contrib ops of fused BERT graphs ----------------------------------------------

HIDDEN, HEADS, SEQ, BATCH = 16, 2, 6, 2


def _bert_layer(mask_output: bool):
    """EmbedLayerNormalization -> Attention -> MatMul -> SkipLayerNormalization -> MatMul -> BiasGelu,
    with int64 inputs cast to int32 as the fuser writes them."""
    ms = {"domain": "com.microsoft"}
    mask_index = "mask_index" if mask_output else ""
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32),
        helper.make_node("Cast", ["token_type_ids"], ["types32"], to=TensorProto.INT32),
        helper.make_node("Cast", ["attention_mask"], ["mask32"], to=TensorProto.INT32),
        helper.make_node(
            "EmbedLayerNormalization",
            ["ids32", "types32", "word", "position", "segment", "gamma", "beta", "mask32"],
            ["embedded", "mask_index"],
            epsilon=1e-12,
            **ms,
        ),
        helper.make_node("Attention", ["embedded", "qkv_w", "qkv_b", mask_index], ["attended"], num_heads=HEADS, **ms),
        helper.make_node("MatMul", ["attended", "out_w"], ["projected"]),
        helper.make_node(
            "SkipLayerNormalization",
            ["projected", "embedded", "gamma", "beta", "out_b"],
            ["normed"],
            epsilon=1e-12,
            **ms,
        ),
        helper.make_node("MatMul", ["normed", "up_w"], ["up"]),
        helper.make_node("BiasGelu", ["up", "up_b"], ["hidden"], **ms),
    ]
    initializers = [
        const("word", floats(30, HIDDEN)),
        const("position", floats(16, HIDDEN)),
        const("segment", floats(2, HIDDEN)),
        const("gamma", 1 + floats(HIDDEN) / 4),
        const("beta", floats(HIDDEN)),
        const("qkv_w", floats(HIDDEN, 3 * HIDDEN) / 2),
        const("qkv_b", floats(3 * HIDDEN)),
        const("out_w", floats(HIDDEN, HIDDEN)),
        const("out_b", floats(HIDDEN)),
        const("up_w", floats(HIDDEN, 2 * HIDDEN)),
        const("up_b", floats(2 * HIDDEN)),
    ]
    inputs = [value(name, INT64, [BATCH, SEQ]) for name in ("input_ids", "attention_mask", "token_type_ids")]
    return build(nodes, inputs, [value("hidden", FLOAT, [BATCH, SEQ, 2 * HIDDEN])], initializers)


def _bert_feeds():
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], np.int64)
    return {
        "input_ids": RNG.integers(1, 30, (BATCH, SEQ)) * mask,
        "attention_mask": mask,
        "token_type_ids": np.array([[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1]], np.int64),
    }


@pytest.mark.parametrize("masked", [True, False], ids=["mask_index", "no_mask"])
def test_fused_bert_layer_matches_onnxruntime(tmp_path, masked):
    histogram = check(_bert_layer(masked), _bert_feeds(), tmp_path)
    assert {"GATHER", "FULLY_CONNECTED", "BATCH_MATMUL", "SOFTMAX", "GELU", "MEAN", "RSQRT"} <= set(histogram)
    assert ("GREATER_EQUAL" in histogram) == masked  # keys at or after each row's valid length are masked
    # Q, K, V, output and up projections all add their bias; the score scale is in Q's weights, so no
    # elementwise op runs over the [B, N, S, S] scores but the mask's ADD and the SOFTMAX
    assert _fc_biases(tmp_path / "model.tflite") == [True] * 5
    scores = [BATCH, HEADS, SEQ, SEQ]
    assert [op for op, shape in _op_outputs(tmp_path / "model.tflite") if shape == scores] == ["BATCH_MATMUL"] + [
        "ADD"
    ] * masked + ["SOFTMAX"]


def _op_outputs(path) -> list[tuple[str, list[int]]]:
    """(builtin, shape of its first output) for each op of the file, in order."""
    interpreter = load_interpreter(path, threads=1, delegate=False)
    shapes = {d["index"]: [int(n) for n in d["shape"]] for d in interpreter.get_tensor_details()}
    return [(op["op_name"], shapes[int(op["outputs"][0])]) for op in interpreter._get_ops_details()]


def test_attention_with_a_raw_2d_mask(tmp_path):
    node = helper.make_node(
        "Attention", ["x", "qkv_w", "qkv_b", "mask"], ["y"], num_heads=HEADS, domain="com.microsoft"
    )
    model = build(
        [node],
        [value("x", FLOAT, [BATCH, SEQ, HIDDEN]), value("mask", TensorProto.INT32, [BATCH, SEQ])],
        [value("y", FLOAT, [BATCH, SEQ, HIDDEN])],
        [const("qkv_w", floats(HIDDEN, 3 * HIDDEN) / 2), const("qkv_b", floats(3 * HIDDEN))],
    )
    feeds = {"x": floats(BATCH, SEQ, HIDDEN), "mask": np.array([[1, 1, 0, 1, 0, 0], [1] * SEQ], np.int32)}
    assert "LESS_EQUAL" in check(model, feeds, tmp_path)


# --- QDQ int8 ------------------------------------------------------------------------------------

K, N = 32, 16


def _qdq_weights():
    """Symmetric int8 weights with one scale per output column, as ONNX Runtime's QDQ quantizer writes them."""
    weights = floats(K, N) / 4
    scales = (np.abs(weights).max(axis=0) / 127).astype(np.float32)
    return weights, np.round(weights / scales).astype(np.int8), scales


def _sqnr_db(reference, candidate):
    """Signal-to-quantization-noise ratio in dB; inf when the two are identical."""
    with np.errstate(divide="ignore"):
        return 10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / np.sum((reference - candidate) ** 2))


@pytest.mark.parametrize("activation", [np.uint8, np.int8])
def test_qdq_matmul_with_bias_runs_as_an_int8_fully_connected(tmp_path, activation):
    weights, quantized, scales = _qdq_weights()
    bias = floats(N) / 4
    shift = 128 if activation == np.uint8 else 0
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "w_s", "w_z"], ["wd"], axis=1),
        helper.make_node("MatMul", ["xd", "wd"], ["product"]),
        helper.make_node("Add", ["product", "b"], ["sum"]),
        helper.make_node("QuantizeLinear", ["sum", "y_s", "y_z"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "y_s", "y_z"], ["y"]),
    ]
    y_scale = 0.05
    model = build(
        nodes,
        [value("x", FLOAT, [1, 8, K])],
        [value("y", FLOAT, [1, 8, N])],
        [
            const("x_s", np.float32(3 / 127)),
            const("x_z", np.array(shift, activation)),
            const("wq", quantized),
            const("w_s", scales),
            const("w_z", np.zeros(N, np.int8)),
            const("b", bias),
            const("y_s", np.float32(y_scale)),
            const("y_z", np.array(shift - 20, activation)),
        ],
    )
    x = floats(1, 8, K)
    path = lowered(model, tmp_path)
    got, want = litert_run(path, {"x": x})["y"], ort_run(model, {"x": x})["y"]
    # int32 bias and fixed-point requantization: at most one step of the output scale from ORT's float QDQ
    assert np.abs(got - want).max() <= y_scale * 1.001 and np.mean(got == want) >= 0.95
    assert _sqnr_db(x @ weights + bias, got) >= 25
    audit = audit_tflite(path)
    assert audit.op_histogram == {"QUANTIZE": 1, "FULLY_CONNECTED": 1, "DEQUANTIZE": 1}
    assert audit.float_ops == []  # the matmul computes in int8; DEQUANTIZE only converts
    assert audit.left_to_litert == {}  # XNNPACK's qs8 kernels take all three


@pytest.mark.parametrize("zero", [128, 100], ids=["centred", "offset"])
def test_qdq_matmul_with_a_float_result_keeps_the_calibrated_input_scale(tmp_path, zero):
    """What quantize_static writes today (the MatMul's result stays float): ORT runs MatMulIntegerToFloat;
    the hybrid FULLY_CONNECTED, given the grid's ends as guard columns, re-quantizes each row onto the same
    calibrated grid, so it computes the same integer products."""
    weights, quantized, scales = _qdq_weights()
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "w_s"], ["wd"], axis=1),
        helper.make_node("MatMul", ["xd", "wd"], ["y"]),
    ]
    model = build(
        nodes,
        [value("x", FLOAT, [1, 8, K])],
        [value("y", FLOAT, [1, 8, N])],
        [
            const("x_s", np.float32(3 / 127)),
            const("x_z", np.array(zero, np.uint8)),
            const("wq", quantized),
            const("w_s", scales),
        ],
    )
    histogram = check(model, {"x": floats(1, 8, K)}, tmp_path)  # to float rounding, not to a quantization step
    assert histogram == {"QUANTIZE": 1, "DEQUANTIZE": 1, "CONCATENATION": 1, "FULLY_CONNECTED": 1}


def _per_row_int8_product(x: np.ndarray, quantized: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """LiteRT's hybrid FULLY_CONNECTED in numpy: each row of x to asymmetric int8 over its own range (0
    included), an integer product with the int8 weights, then both scales."""
    lo, hi = np.minimum(x.min(-1, keepdims=True), 0), np.maximum(x.max(-1, keepdims=True), 0)
    scale = (hi - lo) / 255
    zero = np.round(-128 - lo / scale)
    rows = np.clip(np.round(x / scale) + zero, -128, 127) - zero
    return (rows @ quantized.astype(np.float64)) * scale * scales


def test_dynamic_int8_matmul_quantizes_each_row_as_litert_does(tmp_path):
    """`DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul` (quantize_dynamic's MatMul) is LiteRT's own hybrid
    FULLY_CONNECTED: every row on its own int8 grid, so one row's outlier does not coarsen the others (ORT's
    per-tensor grid differs; cls_row_apart keeps the two close on BERT, see backends/tflite_dynamic.py)."""
    _, quantized, scales = _qdq_weights()
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "x_s", "x_z"]),
        helper.make_node("MatMulInteger", ["xq", "wq", "x_z", "w_z"], ["product"]),
        helper.make_node("Cast", ["product"], ["product_f"], to=FLOAT),
        helper.make_node("Mul", ["x_s", "w_s"], ["scale"]),
        helper.make_node("Mul", ["product_f", "scale"], ["y"]),
    ]
    model = build(
        nodes,
        [value("x", FLOAT, [1, 8, K])],
        [value("y", FLOAT, [1, 8, N])],
        [const("wq", quantized), const("w_z", np.zeros(N, np.int8)), const("w_s", scales)],
    )
    x = floats(1, 8, K) + np.linspace(-1, 2, K, dtype=np.float32)
    path = lowered(model, tmp_path)
    got = litert_run(path, {"x": x})["y"]
    step = np.abs(_per_row_int8_product(x, quantized, scales) - x @ (quantized * scales)).max()
    np.testing.assert_allclose(got, _per_row_int8_product(x, quantized, scales), rtol=0, atol=step / 10)
    outlier = x.copy()
    outlier[0, 0] *= 50
    np.testing.assert_array_equal(litert_run(path, {"x": outlier})["y"][0, 1:], got[0, 1:])
    assert audit_tflite(path).op_histogram == {"FULLY_CONNECTED": 1}


def test_weights_only_qdq_matmul_is_dynamic_range_int8(tmp_path):
    weights, quantized, scales = _qdq_weights()
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "w_s"], ["wd"], axis=1),
        helper.make_node("MatMul", ["x", "wd"], ["y"]),
    ]
    model = build(
        nodes,
        [value("x", FLOAT, [1, 8, K])],
        [value("y", FLOAT, [1, 8, N])],
        [const("wq", quantized), const("w_s", scales)],
    )
    x = floats(1, 8, K)
    path = lowered(model, tmp_path)
    got = litert_run(path, {"x": x})["y"]
    assert _sqnr_db(x @ weights, got) >= 30  # weights and (at run time, per row) inputs in int8
    details = load_interpreter(path, threads=1, delegate=False).get_tensor_details()
    assert [
        (d["dtype"], len(d["quantization_parameters"]["scales"])) for d in details if d["name"] == "wd/int8_weight"
    ] == [(np.int8, N)]  # per-channel int8 in the file
    assert audit_tflite(path).op_histogram == {"FULLY_CONNECTED": 1}


def test_dequantized_activations_feed_float_ops_and_int8_weights_need_zero_points_of_zero(tmp_path):
    _, quantized, scales = _qdq_weights()
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_s"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_s"], ["xd"]),
        helper.make_node("Tanh", ["xd"], ["t"]),
        helper.make_node("DequantizeLinear", ["wq", "w_s", "w_z"], ["wd"], axis=1),
        helper.make_node("MatMul", ["t", "wd"], ["y"]),
    ]
    model = build(
        nodes,
        [value("x", FLOAT, [1, 8, K])],
        [value("y", FLOAT, [1, 8, N])],
        [
            const("x_s", np.float32(3 / 127)),
            const("wq", quantized),
            const("w_s", scales),
            const("w_z", np.full(N, 3, np.int8)),
        ],
    )
    # asymmetric weights have no TFLite int8 form: they are dequantized at export and the matmul stays float
    assert check(model, {"x": floats(1, 8, K)}, tmp_path) == {
        "QUANTIZE": 1,
        "DEQUANTIZE": 1,
        "TANH": 1,
        "FULLY_CONNECTED": 1,
    }


# --- int8 islands: ops between DequantizeLinear and QuantizeLinear -----------------------------------

U8 = np.uint8


def _q(x, scale, zero, out, name=""):
    return helper.make_node("QuantizeLinear", [x, scale, zero], [out], name=name)


def _dq(x, scale, zero, out):
    return helper.make_node("DequantizeLinear", [x, scale, zero], [out])


def _qdq(name, scale="s_in", zero="z_in"):
    """`name` quantized and dequantized: the `name_d` operand of an int8 island."""
    return [_q(name, scale, zero, f"{name}_q"), _dq(f"{name}_q", scale, zero, f"{name}_d")]


def _closed(op_node, scale="s_out", zero="z_out"):
    """`op_node` followed by the QuantizeLinear/DequantizeLinear pair ORT's QDQ quantizer writes after it."""
    result = op_node.output[0]
    return [op_node, _q(result, scale, zero, f"{result}_q"), _dq(f"{result}_q", scale, zero, "y")]


ISLAND_PARAMS = [
    const("s_in", np.float32(0.03)),
    const("z_in", np.array(128, U8)),
    const("s_b", np.float32(0.02)),
    const("z_b", np.array(120, U8)),
    const("s_out", np.float32(0.05)),
    const("z_out", np.array(130, U8)),
]


def _island_check(tmp_path, nodes, inputs, out_shape, feeds, extra=(), step=0.05):
    """Lower, run both runtimes; the int8 kernels requantize in fixed point where ORT rounds a float, so
    outputs may differ by one step of the output scale. Returns the audit."""
    model = build(nodes, inputs, [value("y", FLOAT, out_shape)], ISLAND_PARAMS + list(extra))
    path = lowered(model, tmp_path)
    got, want = litert_run(path, feeds)["y"], ort_run(model, feeds)["y"]
    assert np.abs(got - want).max() <= step * 1.001 and np.mean(np.isclose(got, want, atol=1e-6)) >= 0.8
    return audit_tflite(path)


SHAPE = [2, 4, 8]


def test_qdq_add_of_two_int8_tensors_is_an_int8_add(tmp_path):
    nodes = _qdq("a") + _qdq("b", "s_b", "z_b") + _closed(helper.make_node("Add", ["a_d", "b_d"], ["sum"]))
    audit = _island_check(
        tmp_path,
        nodes,
        [value("a", FLOAT, SHAPE), value("b", FLOAT, SHAPE)],
        SHAPE,
        {"a": floats(*SHAPE), "b": floats(*SHAPE)},
    )
    assert audit.op_histogram == {"QUANTIZE": 2, "ADD": 1, "DEQUANTIZE": 1}
    assert audit.float_ops == [] and audit.left_to_litert == {}  # XNNPACK's qs8 add takes it


def test_qdq_mul_by_a_float_constant_quantizes_the_constant(tmp_path):
    nodes = _qdq("a") + _closed(helper.make_node("Mul", ["a_d", "gain"], ["scaled"]))
    audit = _island_check(
        tmp_path, nodes, [value("a", FLOAT, SHAPE)], SHAPE, {"a": floats(*SHAPE)}, extra=[const("gain", floats(8))]
    )
    assert audit.op_histogram == {"QUANTIZE": 1, "MUL": 1, "DEQUANTIZE": 1} and audit.float_ops == []


@pytest.mark.parametrize("scale", [1 / 256, 1 / 255], ids=["tflite_scale", "ort_scale"])
def test_qdq_softmax_is_int8_at_tflites_output_scale(tmp_path, scale):
    """TFLite's int8 SOFTMAX writes scale 1/256, zero point -128; other graph parameters are requantized."""
    nodes = _qdq("a") + _closed(helper.make_node("Softmax", ["a_d"], ["probs"], axis=-1), "s_p", "z_p")
    audit = _island_check(
        tmp_path,
        nodes,
        [value("a", FLOAT, SHAPE)],
        SHAPE,
        {"a": 3 * floats(*SHAPE)},
        extra=[const("s_p", np.float32(scale)), const("z_p", np.array(0, U8))],
        step=scale,
    )
    assert audit.op_histogram["SOFTMAX"] == 1 and audit.float_ops == []
    assert audit.op_histogram["QUANTIZE"] == (1 if scale == 1 / 256 else 2)


def test_qdq_attention_matmuls_are_int8_batch_matmuls(tmp_path):
    """Q.K^T as ORT's quantizer writes it: K transposed between its own QDQ pair, then MatMul, then Q."""
    heads = [1, 2, 4, 8]
    nodes = (
        _qdq("q")
        + _qdq("k", "s_b", "z_b")
        + [
            helper.make_node("Transpose", ["k_d"], ["k_t"], perm=[0, 1, 3, 2]),
            _q("k_t", "s_b", "z_b", "k_t_q"),
            _dq("k_t_q", "s_b", "z_b", "k_t_d"),
        ]
        + _closed(helper.make_node("MatMul", ["q_d", "k_t_d"], ["scores"]))
    )
    audit = _island_check(
        tmp_path,
        nodes,
        [value("q", FLOAT, heads), value("k", FLOAT, heads)],
        [1, 2, 4, 4],
        {"q": floats(*heads), "k": floats(*heads)},
    )
    assert audit.op_histogram == {"QUANTIZE": 2, "TRANSPOSE": 1, "BATCH_MATMUL": 1, "DEQUANTIZE": 1}
    assert audit.float_ops == []


def test_qdq_gelu_is_an_int8_gelu(tmp_path):
    nodes = _qdq("a") + _closed(helper.make_node("Gelu", ["a_d"], ["g"], domain="com.microsoft"))
    audit = _island_check(tmp_path, nodes, [value("a", FLOAT, SHAPE)], SHAPE, {"a": floats(*SHAPE)})
    assert audit.op_histogram == {"QUANTIZE": 1, "GELU": 1, "DEQUANTIZE": 1} and audit.float_ops == []


def test_an_op_the_graph_keeps_float_stays_float_between_qdq(tmp_path):
    """LayerNormalization between DQ and Q: no int8 kernel, so DEQUANTIZE -> float math -> QUANTIZE."""
    norm = helper.make_node("LayerNormalization", ["a_d", "gamma", "beta"], ["normed"], axis=-1, epsilon=1e-5)
    audit = _island_check(
        tmp_path,
        _qdq("a") + _closed(norm),
        [value("a", FLOAT, SHAPE)],
        SHAPE,
        {"a": floats(*SHAPE)},
        extra=[const("gamma", 1 + floats(8) / 4), const("beta", floats(8))],
    )
    assert audit.op_histogram["DEQUANTIZE"] == 2 and {"MEAN", "RSQRT"} <= set(audit.float_ops)


def test_an_island_whose_result_is_also_read_in_float_stays_float(tmp_path):
    nodes = (
        _qdq("a")
        + _qdq("b", "s_b", "z_b")
        + _closed(helper.make_node("Add", ["a_d", "b_d"], ["sum"]))
        + [helper.make_node("Tanh", ["sum"], ["t"])]
    )
    model = build(
        nodes,
        [value("a", FLOAT, SHAPE), value("b", FLOAT, SHAPE)],
        [value("y", FLOAT, SHAPE), value("t", FLOAT, SHAPE)],
        ISLAND_PARAMS,
    )
    histogram = check(model, {"a": floats(*SHAPE), "b": floats(*SHAPE)}, tmp_path)
    assert histogram["DEQUANTIZE"] == 3  # both operands for the float ADD, and its quantized result
    assert "ADD" in audit_tflite(lowered(model, tmp_path)).float_ops


@pytest.mark.parametrize(
    "params, why",
    [
        (
            [const("s_pc", np.full(8, 0.05, np.float32)), const("z_pc", np.zeros(8, U8))],
            "per-channel activation quantization \\(8 scales",
        ),
        ([const("s_pc", np.float32(0.001)), const("z_pc", np.array(0, np.int16))], "int16 quantization"),
    ],
    ids=["per_channel", "int16"],
)
def test_qdq_parameters_tflite_cannot_hold_are_a_user_error_naming_the_node(params, why):
    nodes = _qdq("a") + [
        helper.make_node("Add", ["a_d", "a_d"], ["sum"]),
        _q("sum", "s_pc", "z_pc", "sum_q", name="requantize_sum"),
        _dq("sum_q", "s_pc", "z_pc", "y"),
    ]
    model = build(nodes, [value("a", FLOAT, SHAPE)], [value("y", FLOAT, SHAPE)], ISLAND_PARAMS + params)
    model.opset_import[0].version = 21  # int16 QuantizeLinear is opset 21
    for node in model.graph.node:  # per-channel along the last axis, which ONNX allows
        if "sum_q" in (*node.input, *node.output):
            node.attribute.append(helper.make_attribute("axis", -1))
    with pytest.raises(UserError, match=f"cannot lower QuantizeLinear node 'requantize_sum' to TFLite: {why}"):
        lower_to_tflite(model)


# --- block-quantized weights (quantize_int4) -----------------------------------------------------


def _int4_model(bits: int, table_bits: int):
    """Gather(table, ids) -> MatMul(., W) -> MatMul(., W2), block-quantized by the int4 pass's own code."""
    from edgecompress.graph.quantize_int4 import quantize_weights

    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["rows"], name="embed"),
        helper.make_node("MatMul", ["rows", "w1"], ["h"], name="up"),
        helper.make_node("MatMul", ["h", "w2"], ["y"], name="down"),
    ]
    model = build(
        nodes,
        [value("ids", INT64, [2, 5])],
        [value("y", FLOAT, [2, 5, 16])],
        [const("table", floats(40, 64)), const("w1", floats(64, 96) / 4), const("w2", floats(96, 16) / 4)],
    )
    return model, quantize_weights(
        model, {"embed": table_bits, "up": bits, "down": bits}, block_size=32, accuracy_level=0
    )


def _weight_types(path) -> dict[str, str]:
    from ai_edge_litert import schema_py_generated as schema

    flat = schema.ModelT.InitFromObj(schema.Model.GetRootAs(path.read_bytes()))
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    return {
        t.name.decode(): names[t.type] for t in flat.subgraphs[0].tensors if flat.buffers[t.buffer].data is not None
    }


def test_4_bit_matmul_nbits_is_a_blockwise_int4_fully_connected(tmp_path):
    original, model = _int4_model(bits=4, table_bits=8)
    assert {n.op_type for n in model.graph.node} == {"GatherBlockQuantized", "MatMulNBits"}
    ids = {"ids": RNG.integers(0, 40, (2, 5))}
    path = lowered(model, tmp_path)
    got, want, exact = litert_run(path, ids)["y"], ort_run(model, ids)["y"], ort_run(original, ids)["y"]
    # LiteRT quantizes each input row to int8 at run time (ORT multiplies the 4-bit weights in float) and
    # clips the +8s of negated blocks: a little noise on top of the 4-bit weights' own
    assert _sqnr_db(want, got) >= 20 and _sqnr_db(exact, got) >= _sqnr_db(exact, want) - 3
    types = _weight_types(path)
    assert sorted(t for name, t in types.items() if "int4_blockwise" in name) == ["FLOAT16", "FLOAT16", "INT4", "INT4"]
    audit = audit_tflite(path)
    assert audit.op_histogram["FULLY_CONNECTED"] == 2 and "FULLY_CONNECTED" not in audit.left_to_litert
    report = audit_for_report(path)  # the report says what the file stores: int4 blocks and the int8 table
    assert {"INT4", "INT8"} <= set(report["weight_storage"]) and "weights stored as INT" in report["method"]


def test_negative_block_scales_are_flipped_and_a_lone_plus_8_is_clipped():
    from edgecompress.backends.tflite.ops.int4 import dequantize_blocks, positive_scales

    q = np.array([[[0, 8, 15, 9], [0, 1, 2, 3]]])  # stored with zero point 8: -8, 0, 7, 1 | -8, -7, -6, -5
    scales = np.array([[0.5, -0.25]], np.float32)
    values, positive = positive_scales((q, scales, np.full((1, 2), 8)))
    assert (positive > 0).all() and values.tolist() == [[-8, 0, 7, 1, 7, 7, 6, 5]]  # 8 clipped to 7
    exact = dequantize_blocks(q, scales, np.full((1, 2), 8))
    assert np.abs(values.reshape(1, 2, 4) * positive[..., None] - exact.reshape(1, 2, 4)).max() == 0.25


def test_8_bit_matmul_nbits_is_stored_as_int8_per_channel(tmp_path):
    """LiteRT has no blockwise int8 kernel: the 8-bit blocks are re-quantized per output channel."""
    _, model = _int4_model(bits=8, table_bits=8)
    ids = {"ids": RNG.integers(0, 40, (2, 5))}
    path = lowered(model, tmp_path)
    assert _sqnr_db(ort_run(model, ids)["y"], litert_run(path, ids)["y"]) >= 30
    types = _weight_types(path)
    assert sorted(t for name, t in types.items() if "int8_per_channel" in name) == ["INT8", "INT8"]


@pytest.mark.parametrize("table_bits", [8, 4])
def test_gather_block_quantized_is_exact_from_an_int8_table(tmp_path, table_bits):
    from edgecompress.graph.quantize_int4 import quantize_weights

    model = build(
        [helper.make_node("Gather", ["table", "ids"], ["y"], name="embed")],
        [value("ids", INT64, [2, 5])],
        [value("y", FLOAT, [2, 5, 64])],
        [const("table", floats(40, 64))],
    )
    model = quantize_weights(model, {"embed": table_bits}, block_size=32, accuracy_level=0)
    histogram = check(model, {"ids": RNG.integers(0, 40, (2, 5))}, tmp_path)  # same floats as ORT
    assert histogram["GATHER"] == 2 and histogram["CAST"] == 1 and histogram["MUL"] == 1
    types = _weight_types(lowered(model, tmp_path))
    assert [t for name, t in types.items() if name.endswith("/int8_table")] == ["INT8"]


def test_gather_block_quantized_with_constant_ids_is_computed_at_export(tmp_path):
    from edgecompress.graph.quantize_int4 import quantize_weights

    model = build(
        [
            helper.make_node("Gather", ["table", "positions"], ["rows"], name="embed"),
            helper.make_node("Add", ["x", "rows"], ["y"]),
        ],
        [value("x", FLOAT, [1, 3, 32])],
        [value("y", FLOAT, [1, 3, 32])],
        [const("table", floats(8, 32)), const("positions", np.array([[0, 1, 2]]))],
    )
    model = quantize_weights(model, {"embed": 8}, block_size=32, accuracy_level=0)
    assert check(model, {"x": floats(1, 3, 32)}, tmp_path) == {"ADD": 1}


# --- errors --------------------------------------------------------------------------------------

HINT = (
    'hint: only LiteRT builtin ops are written (no Flex/select TF ops): remove "tflite" from the device '
    "profile's artifacts, or use a recipe that does not leave this op in the graph"
)


def test_an_op_without_a_lowering_is_a_user_error_naming_op_node_and_model():
    model = build(
        [helper.make_node("NonZero", ["x"], ["y"], name="find_tokens")],
        [value("x", FLOAT, [2, 3])],
        [value("y", INT64, [2, None])],
    )
    with pytest.raises(UserError) as error:
        lower_to_tflite(model)
    assert str(error.value) == (
        "model 'tiny': cannot lower NonZero node 'find_tokens' to TFLite: no lowering to "
        "LiteRT builtins exists for this op; " + HINT
    )
    assert error.value.exit_code == 2


def test_a_form_without_a_lowering_says_which_form():
    model = build(
        [helper.make_node("Softmax", ["x"], ["y"], axis=1, name="inner_softmax")],
        [value("x", FLOAT, [2, 3, 4])],
        [value("y", FLOAT, [2, 3, 4])],
    )
    with pytest.raises(
        UserError,
        match="^model 'tiny': cannot lower Softmax node 'inner_softmax' to TFLite: axis 1 is not the last axis; hint: ",
    ):
        lower_to_tflite(model)


def test_decoder_attention_is_refused():
    node = helper.make_node(
        "Attention", ["x", "w", "b"], ["y"], num_heads=2, unidirectional=1, name="causal", domain="com.microsoft"
    )
    model = build(
        [node],
        [value("x", FLOAT, [1, 4, 8])],
        [value("y", FLOAT, [1, 4, 8])],
        [const("w", floats(8, 24)), const("b", floats(24))],
    )
    with pytest.raises(UserError, match="com.microsoft::Attention node 'causal' to TFLite: unidirectional or rotary"):
        lower_to_tflite(model)


def test_a_dynamic_input_dim_is_a_user_error_asking_for_fixed_shapes():
    model = build(
        [helper.make_node("Relu", ["x"], ["y"])], [value("x", FLOAT, ["batch", 8])], [value("y", FLOAT, ["batch", 8])]
    )
    with pytest.raises(UserError) as error:
        lower_to_tflite(model)
    assert str(error.value) == (
        "model 'tiny': input 'x' has a dynamic dimension 0 ('batch'); expected fixed shapes for the TFLite "
        "backend; hint: the device profile must fix shapes: set dynamic_shapes = false under [runtime] so the "
        "fix_shapes pass fixes batch and seq_len"
    )
    assert error.value.exit_code == 2


# --- writer, executor, audit ---------------------------------------------------------------------


def test_constant_buffers_are_16_byte_aligned(tmp_path):
    from ai_edge_litert import schema_py_generated as schema

    nodes = [helper.make_node("Add", ["x", "odd"], ["y"]), helper.make_node("MatMul", ["y", "w"], ["z"])]
    model = build(
        nodes,
        [value("x", FLOAT, [1, 3])],
        [value("z", FLOAT, [1, 5])],
        [const("odd", floats(3)), const("w", floats(3, 5))],
    )
    data = lowered(model, tmp_path).read_bytes()
    flat = schema.Model.GetRootAs(data)
    base = np.frombuffer(data, np.uint8).__array_interface__["data"][0]
    offsets = [
        flat.Buffers(i).DataAsNumpy().__array_interface__["data"][0] - base
        for i in range(flat.BuffersLength())
        if flat.Buffers(i).DataLength()
    ]
    assert len(offsets) == 2 and all(offset % 16 == 0 for offset in offsets)


def test_executor_runs_every_row_in_the_models_fixed_batch(tmp_path):
    model = build(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [value("x", FLOAT, [2, 4])],
        [value("y", FLOAT, [2, 3])],
        [const("w", floats(4, 3))],
    )
    path = lowered(model, tmp_path)
    rows = floats(5, 4)
    ticks = []
    got = backend_for("litert").execute(
        path, {"x": rows}, output_name="y", threads=1, progress=lambda done, total: ticks.append((done, total))
    )
    np.testing.assert_allclose(got, rows @ numpy_helper.to_array(model.graph.initializer[0]), rtol=1e-5, atol=1e-6)
    assert ticks == [(2, 5), (4, 5), (5, 5)]
    assert backend_for("litert").execute is run_tflite_artifact


def test_audit_counts_ops_float_ops_and_what_xnnpack_takes(tmp_path):
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["rows"]),
        helper.make_node("MatMul", ["rows", "w"], ["h"]),
        helper.make_node("Tanh", ["h"], ["y"]),
    ]
    model = build(
        nodes,
        [value("ids", INT64, [1, 4])],
        [value("y", FLOAT, [1, 4, 3])],
        [const("table", floats(10, 8)), const("w", floats(8, 3))],
    )
    audit = audit_tflite(lowered(model, tmp_path))
    assert audit.op_histogram == {"FULLY_CONNECTED": 1, "GATHER": 1, "TANH": 1}
    assert audit.float_ops == ["FULLY_CONNECTED", "GATHER", "TANH"]
    assert (audit.nodes, audit.delegated_nodes, audit.partitions) == (3, 2, 1)
    assert audit.left_to_litert == {"GATHER": 1}  # XNNPACK has no gather: embedding lookups stay on LiteRT
    assert "XNNPACK" in audit.method


# --- end to end ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tflite_device(tiny_device, tmp_path_factory):
    """The tiny device profile with a .tflite among its artifacts."""
    text = tiny_device.read_text()
    start = text.index("artifacts = [")
    end = text.index("]", start) + 1
    path = tmp_path_factory.mktemp("tflite-device") / "tinyphone.toml"
    path.write_text(text[:start] + 'artifacts = ["onnx", "tflite"]' + text[end:])
    return path


@pytest.mark.parametrize("checkpoint", ["tiny_checkpoint", "tiny_encoder"])
def test_export_writes_a_verified_tflite(request, checkpoint, tflite_device, tiny_data, tmp_path):
    from edgecompress.pipeline import ExportRequest, run_export

    data = tiny_data if checkpoint == "tiny_checkpoint" else None
    result = run_export(
        ExportRequest(
            model=request.getfixturevalue(checkpoint),
            device=str(tflite_device),
            out_root=tmp_path,
            data=data,
            runs=3,
            warmup=1,
        )
    )
    artifact = next(a for a in result.report.artifacts if a.file == "model.tflite")
    assert artifact.runtime == "litert"
    assert artifact.parity["passed"] and artifact.parity["max_abs_diff"] <= 1e-5
    assert artifact.host_latency["method"].startswith("measured on host (litert ")
    manifest = json.loads((result.out_dir / "manifest.json").read_text())
    [entry] = [a for a in manifest["artifacts"] if a["kind"] == "tflite"]
    assert (entry["file"], entry["runtime"]) == ("model.tflite", "litert")
    audit = audit_tflite(result.out_dir / "model.tflite")
    assert audit.partitions == 1  # all float math in one XNNPACK subgraph
    # LiteRT's own kernels keep only the embedding lookups and the integer mask bookkeeping.
    assert set(audit.left_to_litert) <= {"GATHER", "CAST", "EQUAL", "SUM", "RESHAPE", "GREATER_EQUAL"}


def test_onnxruntime_dynamic_int8_bert_lowers_to_hybrid_int8(tiny_checkpoint, tflite_device, tmp_path):
    """What the quantize_dynamic pass writes (ORT's dynamic quantizer on the fused graph): QEmbedLayerNormalization,
    QAttention, DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul; LiteRT runs it as hybrid int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgecompress.pipeline import ExportRequest, run_export

    exported = run_export(
        ExportRequest(model=tiny_checkpoint, device=str(tflite_device), out_root=tmp_path, measure=False)
    )
    fused = onnx.load(str(exported.out_dir / "model.onnx"))
    del fused.graph.value_info[:]
    onnx.save(fused, str(tmp_path / "fused.onnx"))
    quantize_dynamic(
        str(tmp_path / "fused.onnx"),
        str(tmp_path / "int8.onnx"),
        per_channel=True,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Attention", "EmbedLayerNormalization"],
        extra_options={"DefaultTensorType": FLOAT},
    )
    model = onnx.load(str(tmp_path / "int8.onnx"))
    assert {"QEmbedLayerNormalization", "QAttention", "MatMulInteger"} <= {n.op_type for n in model.graph.node}
    path = lowered(model, tmp_path)
    mask = np.zeros((1, 16), np.int64)
    mask[0, :9] = 1
    feeds = {
        "input_ids": RNG.integers(5, 100, (1, 16)) * mask,
        "attention_mask": mask,
        "token_type_ids": np.zeros((1, 16), np.int64),
    }
    got, want = litert_run(path, feeds)["logits"], ort_run(model, feeds)["logits"]
    # QAttention's input on ORT's per-tensor grid (guard columns), the other MatMuls per row: int8 apart
    assert _sqnr_db(want, got) >= 30
    audit = audit_tflite(path)
    attention = sum(node.op_type == "QAttention" for node in model.graph.node)
    assert audit.op_histogram["REDUCE_MIN"] == 2 * attention  # one two-step range per guarded input
    # the exact writer (what an export falls back to when per row misses the 99%): ORT's integers everywhere
    exact = tmp_path / "exact.tflite"
    exact.write_bytes(lower_to_tflite(model, exact_dynamic_int8=True))
    assert _sqnr_db(want, litert_run(exact, feeds)["logits"]) >= 80
    matmuls = sum(node.op_type == "MatMulInteger" for node in model.graph.node)
    assert (
        audit_tflite(exact).op_histogram["REDUCE_MIN"] == 2 * (attention + matmuls) > audit.op_histogram["REDUCE_MIN"]
    )
    assert audit.op_histogram["DEQUANTIZE"] == 2  # word and segment rows, gathered from uint8 tables
    assert audit.partitions == 1 and "FULLY_CONNECTED" not in audit.left_to_litert


@pytest.mark.slow
def test_minilm_tflite_matches_torch(minilm_classifier, tmp_path):
    from edgecompress.paths import device_profiles_dir
    from edgecompress.pipeline import ExportRequest, run_export

    text = (device_profiles_dir() / "pixel7.toml").read_text()
    start = text.index("artifacts = [")
    device = tmp_path / "pixel7-tflite.toml"
    device.write_text(
        text[:start].replace('name = "pixel7"', 'name = "pixel7-tflite"')
        + 'artifacts = ["tflite"]'
        + text[text.index("]", start) + 1 :]
    )
    result = run_export(
        ExportRequest(
            model=minilm_classifier, device=str(device), out_root=tmp_path / "dist", quantize="none", runs=3, warmup=1
        )
    )
    [artifact] = result.report.artifacts
    assert artifact.file == "model.tflite" and artifact.parity["passed"]
    assert artifact.parity["max_abs_diff"] <= 1e-4 and artifact.parity["prediction_agreement"] == 1.0
    audit = audit_tflite(result.out_dir / "model.tflite")
    assert audit.op_histogram["FULLY_CONNECTED"] == 6 * 6 + 2  # Q, K, V, output, up, down per layer; pooler, head
    assert _fc_biases(result.out_dir / "model.tflite") == [True] * (6 * 6 + 2)  # every bias inside its matmul
    assert audit.partitions == 1


@pytest.mark.parametrize("exclusive, reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_cumsum_runs_as_litert_cumsum_for_every_kernel_type_and_direction(tmp_path, exclusive, reverse):
    types = {"i32": (TensorProto.INT32, np.int32), "i64": (TensorProto.INT64, np.int64), "f": (FLOAT, np.float32)}
    nodes = [
        helper.make_node("CumSum", [name, "axis"], [f"{name}_sum"], exclusive=exclusive, reverse=reverse)
        for name in types
    ]
    model = build(
        nodes,
        [value(name, elem, [2, 5]) for name, (elem, _) in types.items()],
        [value(f"{name}_sum", elem, [2, 5]) for name, (elem, _) in types.items()],
        [const("axis", np.array(1, np.int64))],
    )
    feeds = {name: (RNG.standard_normal((2, 5)) * 4).astype(dtype) for name, (_, dtype) in types.items()}
    assert check(model, feeds, tmp_path) == {"CUMSUM": 3}


def test_roberta_position_ids_count_real_tokens_from_the_pad_id_plus_one(tmp_path):
    """transformers' create_position_ids_from_input_ids: (cumsum(ids != pad) * (ids != pad)) + pad."""
    pad = np.array(1, np.int64)
    nodes = [
        helper.make_node("Equal", ["ids", "pad"], ["is_pad"]),
        helper.make_node("Not", ["is_pad"], ["real"]),
        helper.make_node("Cast", ["real"], ["mask"], to=TensorProto.INT32),
        helper.make_node("CumSum", ["mask", "axis"], ["count"]),
        helper.make_node("Mul", ["count", "mask"], ["numbered"]),
        helper.make_node("Cast", ["numbered"], ["numbered64"], to=TensorProto.INT64),
        helper.make_node("Add", ["numbered64", "pad"], ["positions"]),
    ]
    model = build(
        nodes,
        [value("ids", TensorProto.INT64, [2, 6])],
        [value("positions", TensorProto.INT64, [2, 6])],
        [const("pad", pad), const("axis", np.array(-1, np.int64))],
    )
    ids = np.array([[0, 9, 8, 2, 1, 1], [0, 7, 2, 1, 1, 1]], np.int64)
    check(model, {"ids": ids}, tmp_path)
    positions = litert_run(lowered(model, tmp_path), {"ids": ids})["positions"]
    np.testing.assert_array_equal(positions, [[2, 3, 4, 5, 1, 1], [2, 3, 4, 1, 1, 1]])


def test_cumsum_with_an_axis_known_only_at_run_time_is_refused_naming_the_node(tmp_path):
    node = helper.make_node("CumSum", ["x", "axis"], ["y"], name="running")
    model = build([node], [value("x", FLOAT, [3]), value("axis", TensorProto.INT64, [])], [value("y", FLOAT, [3])])
    with pytest.raises(UserError, match="CumSum node 'running'.*an axis that is not a constant"):
        lowered(model, tmp_path)


@pytest.mark.parametrize("with_bias", [True, False])
def test_fast_gelu_lowers_to_the_approximate_gelu_and_matches_onnxruntime(tmp_path, with_bias):
    """ONNX Runtime's fuser writes FastGelu for `gelu_new` (ALBERT's activation, the tanh form)."""
    inputs = ["x", "b"] if with_bias else ["x"]
    model = build(
        [helper.make_node("FastGelu", inputs, ["y"], **MS)],
        [value("x", FLOAT, [2, 5, 6])],
        [value("y", FLOAT, [2, 5, 6])],
        [const("b", floats(6))] if with_bias else [],
    )
    histogram = check(model, {"x": 3 * floats(2, 5, 6)}, tmp_path)
    assert histogram.get("GELU") == 1 and histogram.get("ADD", 0) == int(with_bias)
