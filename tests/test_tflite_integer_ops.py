"""TFLite lowerings of the integer-only graph's arithmetic (`backends/tflite/ops/integer.py`): each one on a tiny
inline graph, bit-exact against ONNX Runtime on edge values (negatives, rounding cases, values near the int32 and
int64 limits), plus the LiteRT facts they rest on and the TFLite audit's float-inside list."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgecompress.backends.tflite.artifact import audit_tflite
from edgecompress.errors import UserError

from test_tflite_backend import build, const, litert_run, lowered, ort_run, value

I8, U8, I32, I64, U32, U64, F = (
    TensorProto.INT8,
    TensorProto.UINT8,
    TensorProto.INT32,
    TensorProto.INT64,
    TensorProto.UINT32,
    TensorProto.UINT64,
    TensorProto.FLOAT,
)
RNG = np.random.default_rng(7)
INT64_EDGES = [-(2**62), -(2**62) + 1, -(2**40) - 5, -7, -6, -5, -1, 0, 1, 5, 6, 7, 2**40 + 7, 2**62 - 1, 2**62]


def exact(model, feeds, tmp_path) -> dict[str, int]:
    """Lower, run ONNX Runtime and LiteRT (its default XNNPACK setup), require equal outputs to the bit; returns
    the .tflite op histogram."""
    path = lowered(model, tmp_path)
    want, got = ort_run(model, feeds), litert_run(path, feeds)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    return audit_tflite(path).op_histogram


# ---- Div --------------------------------------------------------------------------------------------------------


def test_int64_div_by_constants_truncates_like_onnx(tmp_path):
    """Scalar and per-channel divisors: odd, even, powers of two, above 2^32, negative."""
    divisors = np.array([1, 2, 3, 384, 2**40, 12345678901, -3, -384], np.int64)
    x = np.array([[v] * len(divisors) for v in INT64_EDGES], np.int64)
    nodes = [helper.make_node("Div", ["x", "d"], ["q"]), helper.make_node("Div", ["x", "n"], ["per_row"])]
    model = build(
        nodes,
        [value("x", I64, list(x.shape))],
        [value("q", I64, list(x.shape)), value("per_row", I64, list(x.shape))],
        [const("d", divisors), const("n", np.array(384, np.int64))],
    )
    histogram = exact(model, {"x": x}, tmp_path)
    assert "DIV" not in histogram and "FLOOR_DIV" not in histogram  # LiteRT has no int64 division kernel


def test_int64_div_by_a_run_time_divisor_truncates_like_onnx(tmp_path):
    """A division by one divisor per row, found at run time (a wide softmax's row sum; trailing zeros, 2-adic
    inverse); odd, even, powers of two, 2^31 - 1, above 2^32, negative. The divisor is d + 1, so that the lowering's
    shape run on zeros divides by 1."""
    divisors = np.array([[1], [2], [3], [384], [2**31 - 1], [3 << 20], [1 << 40], [999983], [-6]], np.int64)
    x = np.array([INT64_EDGES] * len(divisors), np.int64)
    model = build(
        [helper.make_node("Add", ["d", "one"], ["divisor"]), helper.make_node("Div", ["x", "divisor"], ["q"])],
        [value("x", I64, list(x.shape)), value("d", I64, list(divisors.shape))],
        [value("q", I64, list(x.shape))],
        [const("one", np.array(1, np.int64))],
    )
    exact(model, {"x": x, "d": divisors - 1}, tmp_path)


def test_int64_floor_by_a_run_time_divisor_is_the_exact_division_alone(tmp_path):
    """The integer-only graph's floor: `Div(Sub(y, Mod(y, d)), d)` divides a multiple of d, so no FLOOR_MOD of
    its own and no truncation step (one FLOOR_MOD: the graph's Mod, plus the trailing-zero count's)."""
    divisors = np.array([[1], [6], [384], [1 << 40], [999983]], np.int64)
    y = np.array([INT64_EDGES[1:-1]] * len(divisors), np.int64)
    nodes = [
        helper.make_node("Add", ["d", "one"], ["divisor"]),
        helper.make_node("Mod", ["y", "divisor"], ["r"], fmod=0),
        helper.make_node("Sub", ["y", "r"], ["multiple"]),
        helper.make_node("Div", ["multiple", "divisor"], ["q"]),
    ]
    model = build(
        nodes,
        [value("y", I64, list(y.shape)), value("d", I64, list(divisors.shape))],
        [value("q", I64, list(y.shape))],
        [const("one", np.array(1, np.int64))],
    )
    histogram = exact(model, {"y": y, "d": divisors - 1}, tmp_path)
    assert histogram["FLOOR_MOD"] == 2 and "LOGICAL_AND" not in histogram


def test_int32_div_keeps_the_truncating_div_builtin(tmp_path):
    x = np.array([[-(2**31) + 1, -7, -6, -5, -1, 0, 1, 5, 6, 7, 2**31 - 1]] * 3, np.int32)
    d = np.array([[3], [-3], [2**31 - 1]], np.int32)
    model = build(
        [helper.make_node("Div", ["x", "d"], ["q"])],
        [value("x", I32, list(x.shape))],
        [value("q", I32, list(x.shape))],
        [const("d", d)],
    )
    assert exact(model, {"x": x}, tmp_path) == {"DIV": 1}


# ---- Mod --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("elem_type, dtype", [(I32, np.int32), (I64, np.int64)], ids=["int32", "int64"])
def test_mod_takes_the_divisors_sign(tmp_path, elem_type, dtype):
    x = np.array([[-(2**30), -7, -6, -1, 0, 1, 6, 7, 2**30]] * 4, dtype)
    d = np.array([[3], [-3], [384], [2**20 + 1]], dtype)
    model = build(
        [helper.make_node("Mod", ["x", "d"], ["r"], fmod=0)],
        [value("x", elem_type, list(x.shape))],
        [value("r", elem_type, list(x.shape))],
        [const("d", d)],
    )
    assert exact(model, {"x": x}, tmp_path) == {"FLOOR_MOD": 1}


def test_mod_with_fmod_is_refused_by_name(tmp_path):
    model = build(
        [helper.make_node("Mod", ["x", "d"], ["r"], fmod=1)],
        [value("x", I32, [2])],
        [value("r", I32, [2])],
        [const("d", np.array([3, 5], np.int32))],
    )
    with pytest.raises(UserError, match="cannot lower Mod node .*fmod=1"):
        lowered(model, tmp_path)


# ---- BitShift ---------------------------------------------------------------------------------------------------


def _shift_graph(signed, unsigned, shape, amount_shape, constant_amount=None):
    """Cast(x -> unsigned) -> BitShift(RIGHT) -> Cast(-> signed), as the integer-only graph writes it."""
    amount_type = unsigned
    nodes = [
        helper.make_node("Cast", ["x"], ["u"], to=unsigned),
        helper.make_node("BitShift", ["u", "a" if constant_amount is not None else "au"], ["s"], direction="RIGHT"),
        helper.make_node("Cast", ["s"], ["y"], to=signed),
    ]
    inputs = [value("x", signed, shape)]
    initializers = []
    if constant_amount is None:
        nodes.insert(0, helper.make_node("Cast", ["amount"], ["au"], to=amount_type))
        inputs.append(value("amount", signed, amount_shape))
    else:
        initializers.append(const("a", constant_amount))
    return build(nodes, inputs, [value("y", signed, shape)], initializers)


INT32_VALUES = [-(2**31), -(2**31) + 1, -12345, -5, -1, 0, 1, 5, 12345, 2**30, 2**31 - 1]
INT64_VALUES = [-(2**63), -(2**62), -(2**40) - 5, -1, 0, 1, 2**32, 2**40 + 7, 2**62 + 3, 2**63 - 1]


@pytest.mark.parametrize("amounts", [[0, 1, 2, 5, 31], [3, 9, 21, 30, 31], [1]], ids=["with-0-and-1", "2-up", "one"])
def test_uint32_shift_by_constants_is_logical(tmp_path, amounts):
    a = np.array(amounts, np.uint32)
    x = np.array([[v] * len(a) for v in INT32_VALUES], np.int32)
    model = _shift_graph(I32, U32, list(x.shape), None, constant_amount=a)
    histogram = exact(model, {"x": x}, tmp_path)
    assert "CAST" not in histogram  # the same bits: the Casts to and from uint32 write nothing


def test_uint32_shift_by_a_run_time_amount_is_logical(tmp_path):
    x = np.array([INT32_VALUES] * 6, np.int32)
    amount = np.array([[0], [1], [2], [7], [30], [31]], np.int32)
    model = _shift_graph(I32, U32, list(x.shape), [6, 1])
    exact(model, {"x": x, "amount": amount}, tmp_path)


@pytest.mark.parametrize("amounts", [[0, 1, 2, 31, 32, 33, 42, 63], [42], [1]], ids=["mixed", "42", "1"])
def test_uint64_shift_by_constants_is_logical(tmp_path, amounts):
    a = np.array(amounts, np.uint64)
    x = np.array([[v] * len(a) for v in INT64_VALUES], np.int64)
    model = _shift_graph(I64, U64, list(x.shape), None, constant_amount=a)
    assert "BITCAST" in exact(model, {"x": x}, tmp_path)  # LiteRT has no int64 shift: 32-bit words


def test_uint64_shift_by_a_run_time_amount_is_logical(tmp_path):
    x = np.array([INT64_VALUES] * 8, np.int64)
    amount = np.array([[0], [1], [2], [31], [32], [33], [50], [63]], np.int64)
    model = _shift_graph(I64, U64, list(x.shape), [8, 1])
    exact(model, {"x": x, "amount": amount}, tmp_path)


def test_left_shift_is_refused_by_name(tmp_path):
    model = _shift_graph(I32, U32, [2], None, constant_amount=np.array([1], np.uint32))
    model.graph.node[1].attribute[0].s = b"LEFT"
    with pytest.raises(UserError, match="cannot lower BitShift node .*direction LEFT"):
        lowered(model, tmp_path)


def test_an_unsigned_value_compared_is_refused_by_name(tmp_path):
    """uint32 travels as int32 bits: a Less on it would compare the wrong way for values above 2^31."""
    nodes = [
        helper.make_node("Cast", ["x"], ["u"], to=U32),
        helper.make_node("Less", ["u", "u"], ["y"]),
    ]
    model = build(nodes, [value("x", I32, [2])], [value("y", TensorProto.BOOL, [2])])
    with pytest.raises(UserError, match="cannot lower Cast node .*read by Less"):
        lowered(model, tmp_path)


# ---- MatMulInteger ----------------------------------------------------------------------------------------------


def _extreme_int8(shape):
    values = RNG.integers(-128, 128, shape)
    values.flat[:2] = [-128, 127]
    return values


def test_matmul_integer_of_a_shifted_activation_is_an_int8_batch_matmul(tmp_path):
    """The integer-only graph's linear layer: Cast(Add(x, 128)) to uint8 with zero point 128, int8 weights."""
    x = _extreme_int8((2, 5, 48)).astype(np.int32)
    weights = _extreme_int8((48, 7)).astype(np.int8)
    weights[:, 0] = -128  # the most negative column sum
    nodes = [
        helper.make_node("Add", ["x", "c128"], ["shifted"]),
        helper.make_node("Cast", ["shifted"], ["x8"], to=U8),
        helper.make_node("MatMulInteger", ["x8", "w", "zero"], ["y"]),
    ]
    model = build(
        nodes,
        [value("x", I32, [2, 5, 48])],
        [value("y", I32, [2, 5, 7])],
        [const("c128", np.array(128, np.int32)), const("w", weights), const("zero", np.array(128, np.uint8))],
    )
    histogram = exact(model, {"x": x}, tmp_path)
    assert histogram.get("BATCH_MATMUL") == 1 and "FULLY_CONNECTED" not in histogram
    assert "ADD" not in histogram  # x itself feeds the matmul: the Add(x, 128) nothing reads is not written


def test_matmul_integer_of_unsigned_probabilities_by_run_time_values(tmp_path):
    """Attention's P.V: uint8 probabilities in [0, 255] without a zero point, run-time int8 values per head."""
    probs = RNG.integers(0, 256, (1, 2, 6, 6)).astype(np.int32)
    probs.flat[:2] = [0, 255]
    values = _extreme_int8((1, 2, 6, 4)).astype(np.int32)
    nodes = [
        helper.make_node("Cast", ["p"], ["p8"], to=U8),
        helper.make_node("Cast", ["v"], ["v8"], to=I8),
        helper.make_node("MatMulInteger", ["p8", "v8"], ["y"]),
    ]
    model = build(
        nodes, [value("p", I32, [1, 2, 6, 6]), value("v", I32, [1, 2, 6, 4])], [value("y", I32, [1, 2, 6, 4])]
    )
    assert exact(model, {"p": probs, "v": values}, tmp_path).get("BATCH_MATMUL") == 1


@pytest.mark.parametrize("a_type, zero", [(U8, 3), (U8, 250), (I8, -5)], ids=["uint8-zp3", "uint8-zp250", "int8"])
def test_matmul_integer_with_other_zero_points(tmp_path, a_type, zero):
    """A graph input A of either type, any zero point: the zero point goes into B's column sums."""
    dtype = np.uint8 if a_type == U8 else np.int8
    info = np.iinfo(dtype)
    a = RNG.integers(info.min, int(info.max) + 1, (3, 16)).astype(dtype)
    a.flat[:2] = [info.min, info.max]
    weights = _extreme_int8((16, 5)).astype(np.int8)
    model = build(
        [helper.make_node("MatMulInteger", ["a", "w", "zero"], ["y"])],
        [value("a", a_type, [3, 16])],
        [value("y", I32, [3, 5])],
        [const("w", weights), const("zero", np.array(zero, dtype))],
    )
    exact(model, {"a": a}, tmp_path)


# ---- the audit --------------------------------------------------------------------------------------------------


def test_the_audit_names_a_float_op_between_integer_ops(tmp_path):
    """int32 Add -> float Mul -> int32 Add: the Mul is inside the integer region; the final dequantize is not."""
    nodes = [
        helper.make_node("Add", ["x", "one"], ["x1"]),
        helper.make_node("Cast", ["x1"], ["xf"], to=F),
        helper.make_node("Mul", ["xf", "half"], ["scaled"]),
        helper.make_node("Cast", ["scaled"], ["back"], to=I32),
        helper.make_node("Add", ["back", "one"], ["y"]),
        helper.make_node("Cast", ["y"], ["yf"], to=F),
        helper.make_node("Mul", ["yf", "half"], ["logits"]),
    ]
    model = build(
        nodes,
        [value("x", I32, [4])],
        [value("logits", F, [4])],
        [const("half", np.array(0.5, np.float32)), const("one", np.array(1, np.int32))],
    )
    inside = audit_tflite(lowered(model, tmp_path)).float_ops_inside
    assert len(inside) == 1 and inside[0].startswith("MUL ")
