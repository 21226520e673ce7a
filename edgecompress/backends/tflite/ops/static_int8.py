"""TFLite lowerings of QDQ graphs (QuantizeLinear / DequantizeLinear): int8 tensors where the pattern allows.

Before -> After:
- `QuantizeLinear(X, s, z)` -> `QUANTIZE(X)` into an int8 tensor with scale s and zero point z. A uint8
  tensor is written as int8 with zero point z - 128: the same real values, the type TFLite's int8
  kernels take.
- `DequantizeLinear(q)` of a run-time tensor -> `DEQUANTIZE(q)`, written only if a float op reads it.
- `QuantizeLinear(MatMul(DQ(xq), DQ(Wq)) [+ bias])` -> `FULLY_CONNECTED(xq, Wq^T, bias int32)` writing
  the QuantizeLinear's int8 tensor: full-integer, with per-channel weight scales and an int32 bias of
  scale s_x * s_w[c], as TFLite's int8 kernels (and XNNPACK's qs8 ones) expect.
- `MatMul(DQ(xq), DQ(Wq))` with a float result (what `quantize_static` writes today) -> hybrid
  `FULLY_CONNECTED` on `DEQUANTIZE(xq)` with guard columns (`guarded_fully_connected`): the same integer
  products as ONNX Runtime's MatMulIntegerToFloat, on the graph's calibrated input grid.
- `MatMul(X float, DQ(Wq))` -> `FULLY_CONNECTED(X, Wq^T)` hybrid: int8 weights in the file, the input
  quantized per row at run time (TFLite's dynamic-range quantization, the weights-only option).
- `Q(Op(DQ(a), DQ(b)))` for Add, Sub, Mul, MatMul of two run-time values (attention), Softmax, Gelu,
  Transpose and the reshape family -> the int8 builtin (see "int8 islands" below).
- Any other DequantizeLinear of a constant is computed at export, and the float lowering applies.
Weights must be int8 and symmetric (zero point 0), per tensor or per output channel, as TFLite requires;
activations int8 or uint8 with one scale per tensor (anything else is a UserError naming the node).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgecompress.backends.tflite.registry import MS_DOMAIN, lowers, lowers_int8
from edgecompress.backends.tflite.writer import schema

if TYPE_CHECKING:  # the lowering imports this file's package; the registry keeps it a leaf
    from edgecompress.backends.tflite.lowering import Lowering

_INT8 = np.dtype(np.int8)
_UINT8_TO_INT8 = 128


@lowers("QuantizeLinear")
def quantize_linear(lw: Lowering, node) -> None:
    """`QuantizeLinear(X)` -> `QUANTIZE(X)` into an int8 tensor; `Q(DQ(q))` requantizes `q` int8 -> int8
    (or is `q` itself when the parameters are the same)."""
    scale, zero = activation_params(lw, node)
    source = _quantized_source(lw, node.input[0])
    if source is not None and lw.qparams[source] == (scale, zero):
        lw.bind(node.output[0], lw.value(source))
    else:
        x = lw.value(source if source is not None else node.input[0])
        lw.emit("QUANTIZE", [x], out=node.output[0], dtype=_INT8, quantization=quantization([scale], [zero]))
    lw.qparams[node.output[0]] = (scale, zero)


@lowers("DequantizeLinear")
def dequantize_linear(lw: Lowering, node) -> None:
    """`DequantizeLinear(q)` -> `DEQUANTIZE(q)`, deferred: an int8 consumer reads `q` itself."""
    source = node.input[0]
    if source not in lw.qparams or activation_params(lw, node) != lw.qparams[source]:
        raise lw.unsupported(
            node,
            "a dequantization whose input is not a QuantizeLinear output with the same per-tensor scale and zero point",
        )
    lw.defer(node.output[0], lambda: lw.emit("DEQUANTIZE", [lw.value(source)], out=node.output[0]))


def activation_params(lw: Lowering, node) -> tuple[float, int]:
    """(scale, int8 zero point) of a per-tensor Q/DQ node with constant parameters; TFLite's int8 kernels
    take one scale per activation tensor, in int8 (or uint8, shifted)."""
    scale = lw.constant(node.input[1])
    zero = lw.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
    if scale is None or zero is None:
        raise lw.unsupported(node, "a scale or zero point computed at run time (TFLite needs constants)")
    if scale.size != 1 or zero.size != 1:
        raise lw.unsupported(
            node,
            f"per-channel activation quantization ({scale.size} scales; TFLite's int8 "
            "kernels take one scale per activation tensor)",
        )
    if zero.dtype not in (np.int8, np.uint8):
        raise lw.unsupported(node, f"{zero.dtype} quantization (only int8 and uint8 activations are lowered)")
    shift = _UINT8_TO_INT8 if zero.dtype == np.uint8 else 0
    return float(scale.reshape(())), int(zero.reshape(())) - shift


def quantization(scales, zeros):
    """TFLite quantization parameters; several scales run along axis 0 ([N, K] weights, [N] biases)."""
    params = schema().QuantizationParametersT()
    params.scale = [float(s) for s in scales]
    params.zeroPoint = [int(z) for z in zeros]
    params.quantizedDimension = 0
    return params


def quantized_matmul(lw: Lowering, node) -> bool:
    """Write `node` (a MatMul) as an int8 or hybrid FULLY_CONNECTED if its weight is a QDQ int8 constant."""
    weight = _int8_weight(lw, node.input[1])
    if weight is None:
        return False
    weights, scales = weight
    source = _quantized_source(lw, node.input[0])
    closing = _closing_quantize(lw, node)
    if source is not None and closing is not None:
        _int8_fully_connected(lw, node, source, weights, scales, closing)
    elif source is not None:
        _static_input_fully_connected(lw, node, source, weights, scales)
    else:
        fold = lw.fold_bias(node.output[0])  # the float bias of its reader, added by the hybrid kernel
        hybrid_fully_connected(
            lw,
            lw.value(node.input[0]),
            weights,
            scales,
            f"{node.input[1]}/int8_weight",
            bias=None if fold is None else fold.bias,
            out=node.output[0] if fold is None else fold.out,
        )
    return True


def _int8_weight(lw: Lowering, name: str):
    """(int8 weights [K, N], scales [N]) when `name` is DequantizeLinear of a symmetric int8 constant."""
    node = lw.producers.get(name)
    if node is None or node.op_type != "DequantizeLinear":
        return None
    weights, scale = lw.constant(node.input[0]), lw.constant(node.input[1])
    zero = lw.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(1, np.int8)
    if weights is None or scale is None or zero is None or weights.dtype != _INT8 or weights.ndim != 2 or zero.any():
        return None
    per_channel = scale.size == weights.shape[1] and lw.attr(node, "axis", 1) in (1, -1)
    if scale.size != 1 and not per_channel:
        return None
    return weights, np.broadcast_to(scale.reshape(-1), (weights.shape[1],)).astype(np.float32)


def _quantized_source(lw: Lowering, name: str) -> str | None:
    """The int8 tensor behind `name` when `name` is DequantizeLinear of a run-time quantized tensor."""
    node = lw.producers.get(name)
    if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in lw.qparams:
        return None
    return node.input[0]


def _closing_quantize(lw: Lowering, node):
    """(QuantizeLinear node, (bias, its Add node) or None) when the MatMul's result, maybe plus a constant
    bias, is only quantized: then the int8 kernel can write the quantized tensor directly."""
    reader = lw.sole_reader(node.output[0])
    bias = None
    if reader is not None and reader.op_type == "Add":
        other = [name for name in reader.input if name != node.output[0]]
        bias = lw.constant(other[0]) if len(other) == 1 else None
        if bias is None or bias.size != lw.shape(node.output[0])[-1]:
            return None
        added, reader = reader, lw.sole_reader(reader.output[0])
    if reader is None or reader.op_type != "QuantizeLinear":
        return None
    return reader, None if bias is None else (bias.reshape(-1), added)


def _int8_fully_connected(lw: Lowering, node, source: str, weights, scales, closing) -> None:
    quantize_node, bias = closing
    input_scale, _ = lw.qparams[source]
    out_scale, out_zero = activation_params(lw, quantize_node)
    inputs = [lw.value(source), int8_weight(lw, weights, scales, f"{node.input[1]}/int8_weight"), -1]
    if bias is not None:
        values, added = bias
        bias_scales = input_scale * scales.astype(np.float64)
        inputs[2] = lw.const(
            np.round(values / bias_scales).astype(np.int32),
            f"{node.output[0]}/bias_int32",
            quantization=quantization(bias_scales, [0] * len(scales)),
        )
        lw.absorb(added)
    lw.absorb(quantize_node)
    out = quantize_node.output[0]
    lw.emit(
        "FULLY_CONNECTED",
        inputs,
        out=out,
        dtype=_INT8,
        quantization=quantization([out_scale], [out_zero]),
        options=lw.options("FullyConnected", keepNumDims=True),
    )
    lw.qparams[out] = (out_scale, out_zero)


def _static_input_fully_connected(lw: Lowering, node, source: str, weights, scales) -> None:
    """Before -> After: `MatMul(DQ(xq, s_x, z_x), DQ(Wq, s_w))` with a float result (ORT runs it as
    MatMulIntegerToFloat) -> `guarded_fully_connected(DEQUANTIZE(xq), guards at the ends of xq's grid)`.

    TFLite's int8 FULLY_CONNECTED needs an output scale the graph does not have; the hybrid one, given
    the guards, quantizes each row back onto exactly the graph's calibrated grid. The float bias of the
    result's reader, if it has one, is added by the kernel (`Lowering.fold_bias`).
    """
    x_scale, x_zero = lw.qparams[source]
    ends = (np.array([-128, 127], np.float32) - np.float32(x_zero)) * np.float32(x_scale)
    guard_shape = (*lw.shape(node.input[0])[:-1], GUARD_COLUMNS)
    guards = lw.const(np.broadcast_to(ends, guard_shape).astype(np.float32), f"{source}/grid_ends")
    fold = lw.fold_bias(node.output[0])
    guarded_fully_connected(
        lw,
        lw.value(node.input[0]),
        guards,
        weights,
        scales,
        f"{node.input[1]}/int8_weight",
        bias=None if fold is None else fold.bias,
        out=node.output[0] if fold is None else fold.out,
    )


# Columns appended to a hybrid FULLY_CONNECTED's input holding its grid's two ends (see below).
GUARD_COLUMNS = 2


def guarded_fully_connected(
    lw: Lowering, x: int, guards: int, weights, scales, key: str, *, bias=None, out: str | None = None, shape=None
) -> int:
    """A hybrid FULLY_CONNECTED that computes ONNX Runtime's integer product exactly, for an input `x`
    already on an int8 grid (static QDQ or DynamicQuantizeLinear).

    Before -> After: `(xq - z) @ Wq * (s * s_w)` -> `FULLY_CONNECTED(CONCATENATION(x, guards), [Wq; 0, 0]^T)`.
    The hybrid kernel quantizes each row over its own min..max; the guard columns hold the grid's ends,
    so every row's range is the whole grid, its run-time scale is s and its zero point z, and the row
    is quantized back to the same integers (the guards meet zero weights). Without them a row is
    re-rounded onto a finer grid of its own: on the MiniLM teacher that changed 2-3% of the predictions
    relative to model.onnx.
    """
    cache_key = ("guarded", x, guards)
    if cache_key not in lw.cache:
        x_shape = lw.flat.tensors[x].shape
        widened = (*x_shape[:-1], x_shape[-1] + GUARD_COLUMNS)
        lw.cache[cache_key] = lw.emit(
            "CONCATENATION",
            [x, guards],
            shape=widened,
            dtype=np.float32,
            options=lw.options("Concatenation", axis=len(x_shape) - 1),
        )
    padded = np.concatenate([weights, np.zeros((GUARD_COLUMNS, weights.shape[1]), weights.dtype)])
    return hybrid_fully_connected(
        lw, lw.cache[cache_key], padded, scales, f"{key}/guarded", bias=bias, out=out, shape=shape
    )


def hybrid_fully_connected(
    lw: Lowering, x: int, weights, scales, key: str, *, bias=None, out: str | None = None, shape=None
) -> int:
    """`FULLY_CONNECTED` with float input and output and int8 weights [K, N]: LiteRT quantizes each input
    row at run time (asymmetric, the more accurate of its two modes) and runs the product in int8."""
    # keyed by the result when it has a name: MatMuls sharing a weight can add different (folded) biases
    bias_key = f"{out}/fc_bias" if out else f"{key}/bias"
    bias_tensor = -1 if bias is None else lw.const(bias.astype(np.float32), bias_key)
    return lw.emit(
        "FULLY_CONNECTED",
        [x, int8_weight(lw, weights, scales, key), bias_tensor],
        out=out,
        shape=shape,
        dtype=None if out else np.float32,
        options=lw.options("FullyConnected", keepNumDims=True, asymmetricQuantizeInputs=True),
    )


def int8_weight(lw: Lowering, weights, scales, key: str) -> int:
    """The [K, N] int8 weight stored as [N, K] with one scale per output row (quantized dimension 0)."""
    return lw.const(np.ascontiguousarray(weights.T), key, quantization=quantization(scales, [0] * len(scales)))


# --- int8 islands: ops between DequantizeLinear and QuantizeLinear ------------------------------------
#
# Before -> After: `Q(Op(DQ(a), DQ(b)), s, z)` -> `OP(a, b)` writing an int8 tensor of scale s and zero
# point z: TFLite's int8 kernels requantize to their output's parameters, so the float round trip of the
# QDQ graph is one integer kernel. A node whose inputs are not all int8 (or constants) or whose output is
# read by anything but one QuantizeLinear stays float: the graph says so, and the file keeps it so.

_INT8_BINARY = {"Add": ("ADD", "Add"), "Sub": ("SUB", "Sub"), "Mul": ("MUL", "Mul")}
# TFLite's int8 SOFTMAX writes probabilities with exactly this scale and zero point.
SOFTMAX_SCALE, SOFTMAX_ZERO = 1.0 / 256, -128


@lowers_int8(*_INT8_BINARY)
def int8_binary(lw: Lowering, node) -> bool:
    """`Q(Add(DQ(a), DQ(b)))` -> int8 `ADD(a, b)`; Sub and Mul likewise. A float constant operand is
    quantized at export (symmetric, per tensor), as TFLite's int8 kernels read only int8 operands."""
    island = int8_island(lw, node, constants=True)
    if island is None:
        return False
    builtin, kind = _INT8_BINARY[node.op_type]
    write_int8(lw, builtin, island.inputs, island.closing, options=lw.options(kind))
    return True


@lowers_int8("MatMul")
def int8_batch_matmul(lw: Lowering, node) -> bool:
    """`Q(MatMul(DQ(a), DQ(b)))` with both operands computed at run time (attention's Q.K^T and P.V) ->
    int8 `BATCH_MATMUL(a, b)`. A constant weight is a FULLY_CONNECTED (`quantized_matmul`)."""
    if lw.constant(node.input[1]) is not None or _int8_weight(lw, node.input[1]) is not None:
        return False
    island = int8_island(lw, node, constants=False)
    if island is None:
        return False
    write_int8(lw, "BATCH_MATMUL", island.inputs, island.closing, options=lw.options("BatchMatMul"))
    return True


@lowers_int8("Softmax")
def int8_softmax(lw: Lowering, node) -> bool:
    """`Q(Softmax(DQ(x)))` -> int8 `SOFTMAX(x)` at scale 1/256, zero point -128 (what the kernel writes),
    then `QUANTIZE` to the graph's output parameters when they differ (ORT's quantizer picks 1/255)."""
    rank = len(lw.shape(node.input[0]))
    if lw.attr(node, "axis", -1) not in (-1, rank - 1):
        return False
    island = int8_island(lw, node, constants=False)
    if island is None:
        return False
    params = activation_params(lw, island.closing)
    if params == (SOFTMAX_SCALE, SOFTMAX_ZERO):
        write_int8(lw, "SOFTMAX", island.inputs, island.closing, options=lw.options("Softmax", beta=1.0))
        return True
    probs = lw.emit(
        "SOFTMAX",
        island.inputs,
        shape=lw.shape(node.output[0]),
        dtype=_INT8,
        quantization=quantization([SOFTMAX_SCALE], [SOFTMAX_ZERO]),
        options=lw.options("Softmax", beta=1.0),
    )
    write_int8(lw, "QUANTIZE", [probs], island.closing)
    return True


@lowers_int8("Gelu", domain=MS_DOMAIN)
def int8_gelu(lw: Lowering, node) -> bool:
    """`Q(Gelu(DQ(x)))` -> int8 `GELU(x)` (a lookup table over the 256 input values)."""
    island = int8_island(lw, node, constants=False)
    if island is None:
        return False
    write_int8(lw, "GELU", island.inputs, island.closing, options=lw.options("Gelu", approximate=False))
    return True


@lowers_int8("Transpose", "Reshape", "Unsqueeze", "Squeeze", "Flatten")
def int8_move(lw: Lowering, node) -> bool:
    """`Q(Transpose(DQ(x)))` -> int8 `TRANSPOSE(x)`, and RESHAPE for the reshape family: data movement
    keeps the input's parameters; a QuantizeLinear with other ones becomes a requantizing `QUANTIZE`."""
    island = int8_island(lw, node, constants=False, run_time_inputs=1)
    if island is None:
        return False
    source = island.sources[0]
    shape = lw.shape(node.output[0])
    if node.op_type == "Transpose":
        perm = list(lw.attr(node, "perm", range(len(shape) - 1, -1, -1)))
        extra = [lw.const(np.array(perm, np.int32), f"perm{perm}")]
        builtin, options = "TRANSPOSE", lw.options("Transpose")
    else:
        extra, builtin = [lw.const(np.array(shape, np.int32), f"shape{list(shape)}")], "RESHAPE"
        options = lw.options("Reshape", newShape=list(shape))
    if lw.qparams[source] == activation_params(lw, island.closing):
        write_int8(lw, builtin, [island.inputs[0], *extra], island.closing, options=options)
        return True
    moved = lw.emit(
        builtin,
        [island.inputs[0], *extra],
        shape=shape,
        dtype=_INT8,
        quantization=quantization(*map(list, zip(lw.qparams[source]))),
        options=options,
    )
    write_int8(lw, "QUANTIZE", [moved], island.closing)
    return True


class Island:
    """An int8-ready node: its operands as int8 tensors and the QuantizeLinear its result goes to."""

    def __init__(self, inputs: list[int], sources: list[str], closing) -> None:
        self.inputs, self.sources, self.closing = inputs, sources, closing


def int8_island(lw: Lowering, node, *, constants: bool, run_time_inputs: int | None = None) -> Island | None:
    """The node's int8 operands and closing QuantizeLinear, or None when the node is not between QDQ:
    an operand that is neither dequantized int8 nor (with `constants`) a float constant, or a result
    read by anything but one QuantizeLinear. `run_time_inputs` limits which inputs are operands."""
    closing = lw.sole_reader(node.output[0])
    if closing is None or closing.op_type != "QuantizeLinear" or any(lw.used(n) for n in node.output[1:]):
        return None
    names = [name for name in node.input[:run_time_inputs] if name]
    inputs, sources = [], []
    for name in names:
        source = _quantized_source(lw, name)
        if source is not None:
            inputs.append(lw.value(source))
            sources.append(source)
            continue
        constant = _int8_constant(lw, name, quantize_float=constants)
        if constant is None:
            return None
        inputs.append(constant)
        sources.append(name)
    if not any(name in lw.qparams for name in sources):
        return None  # all constants: folded elsewhere, nothing run-time to keep in int8
    activation_params(lw, closing)  # parameters TFLite cannot hold are refused here, naming the node
    return Island(inputs, sources, closing)


def _int8_constant(lw: Lowering, name: str, *, quantize_float: bool) -> int | None:
    """An int8 constant tensor for `name`: a DequantizeLinear of an int8/uint8 constant keeps its values;
    a float constant is quantized now, symmetric per tensor, when `quantize_float`."""
    node = lw.producers.get(name)
    if node is not None and node.op_type == "DequantizeLinear" and lw.constant(node.input[0]) is not None:
        values = lw.constant(node.input[0])
        if values.dtype not in (np.int8, np.uint8):
            return None
        scale, zero = activation_params(lw, node)
        shifted = values.astype(np.int16) - (_UINT8_TO_INT8 if values.dtype == np.uint8 else 0)
        return lw.const(shifted.astype(np.int8), f"{name}/int8", quantization=quantization([scale], [zero]))
    values = lw.constant(name)
    if values is None or not quantize_float or values.dtype != np.float32:
        return None
    peak = float(np.abs(values).max())
    scale = peak / 127 if peak > 0 else 1.0
    quantized = np.clip(np.round(values / scale), -127, 127).astype(np.int8)
    return lw.const(quantized, f"{name}/int8_symmetric", quantization=quantization([scale], [0]))


def write_int8(lw: Lowering, builtin: str, inputs: list[int], closing, *, options=None) -> int:
    """Emit `builtin` writing the closing QuantizeLinear's int8 tensor, which it replaces."""
    scale, zero = activation_params(lw, closing)
    lw.absorb(closing)
    out = closing.output[0]
    tensor = lw.emit(builtin, inputs, out=out, dtype=_INT8, quantization=quantization([scale], [zero]), options=options)
    lw.qparams[out] = (scale, zero)
    return tensor
