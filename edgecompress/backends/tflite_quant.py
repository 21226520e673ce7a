"""TFLite lowerings of QDQ graphs (QuantizeLinear / DequantizeLinear): int8 tensors where the pattern allows.

Before -> After:
- `QuantizeLinear(X, s, z)` -> `QUANTIZE(X)` into an int8 tensor with scale s and zero point z. A uint8
  tensor is written as int8 with zero point z - 128: the same real values, the type TFLite's int8
  kernels take.
- `DequantizeLinear(q)` of a run-time tensor -> `DEQUANTIZE(q)`, written only if a float op reads it.
- `QuantizeLinear(MatMul(DQ(xq), DQ(Wq)) [+ bias])` -> `FULLY_CONNECTED(xq, Wq^T, bias int32)` writing
  the QuantizeLinear's int8 tensor: full-integer, with per-channel weight scales and an int32 bias of
  scale s_x * s_w[c], as TFLite's int8 kernels (and XNNPACK's qs8 ones) expect.
- `MatMul(X float, DQ(Wq))` -> `FULLY_CONNECTED(X, Wq^T)` hybrid: int8 weights in the file, the input
  quantized per row at run time (TFLite's dynamic-range quantization, the weights-only option).
- Any other DequantizeLinear of a constant is computed at export, and the float lowering applies.
Weights must be int8 and symmetric (zero point 0), per tensor or per output channel, as TFLite requires.
"""

from __future__ import annotations

import numpy as np

from .tflite_lower import Lowering, lowers
from .tflite_writer import schema

_INT8 = np.dtype(np.int8)
_UINT8_TO_INT8 = 128


@lowers("QuantizeLinear")
def quantize_linear(lw: Lowering, node) -> None:
    """`QuantizeLinear(X)` -> `QUANTIZE(X)` into an int8 tensor."""
    scale, zero = activation_params(lw, node)
    lw.emit("QUANTIZE", [lw.value(node.input[0])], out=node.output[0], dtype=_INT8,
            quantization=quantization([scale], [zero]))
    lw.qparams[node.output[0]] = (scale, zero)


@lowers("DequantizeLinear")
def dequantize_linear(lw: Lowering, node) -> None:
    """`DequantizeLinear(q)` -> `DEQUANTIZE(q)`, deferred: an int8 consumer reads `q` itself."""
    source = node.input[0]
    if source not in lw.qparams or activation_params(lw, node) != lw.qparams[source]:
        raise lw.unsupported(node, "a dequantization whose input is not a QuantizeLinear output with the same "
                                   "per-tensor scale and zero point")
    lw.defer(node.output[0], lambda: lw.emit("DEQUANTIZE", [lw.value(source)], out=node.output[0]))


def activation_params(lw: Lowering, node) -> tuple[float, int]:
    """(scale, int8 zero point) of a per-tensor Q/DQ node with constant parameters."""
    scale = lw.constant(node.input[1])
    zero = lw.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
    if scale is None or zero is None or scale.size != 1 or zero.dtype not in (np.int8, np.uint8):
        raise lw.unsupported(node, "run-time or per-channel activation scales, or a type other than int8/uint8")
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
    else:
        hybrid_fully_connected(lw, lw.value(node.input[0]), weights, scales, f"{node.input[1]}/int8_weight",
                               out=node.output[0])
    return True


def _int8_weight(lw: Lowering, name: str):
    """(int8 weights [K, N], scales [N]) when `name` is DequantizeLinear of a symmetric int8 constant."""
    node = lw.producers.get(name)
    if node is None or node.op_type != "DequantizeLinear":
        return None
    weights, scale = lw.constant(node.input[0]), lw.constant(node.input[1])
    zero = lw.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(1, np.int8)
    if weights is None or scale is None or zero is None or weights.dtype != _INT8 or weights.ndim != 2 \
            or zero.any():
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
        inputs[2] = lw.const(np.round(values / bias_scales).astype(np.int32), f"{node.output[0]}/bias_int32",
                             quantization=quantization(bias_scales, [0] * len(scales)))
        lw.absorb(added)
    lw.absorb(quantize_node)
    out = quantize_node.output[0]
    lw.emit("FULLY_CONNECTED", inputs, out=out, dtype=_INT8, quantization=quantization([out_scale], [out_zero]),
            options=lw.options("FullyConnected", keepNumDims=True))
    lw.qparams[out] = (out_scale, out_zero)


def hybrid_fully_connected(lw: Lowering, x: int, weights, scales, key: str, *, bias=None, out: str | None = None,
                           shape=None) -> int:
    """`FULLY_CONNECTED` with float input and output and int8 weights [K, N]: LiteRT quantizes each input
    row at run time (asymmetric, the more accurate of its two modes) and runs the product in int8."""
    bias_tensor = -1 if bias is None else lw.const(bias.astype(np.float32), f"{key}/bias")
    return lw.emit("FULLY_CONNECTED", [x, int8_weight(lw, weights, scales, key), bias_tensor], out=out, shape=shape,
                   dtype=None if out else np.float32,
                   options=lw.options("FullyConnected", keepNumDims=True, asymmetricQuantizeInputs=True))


def int8_weight(lw: Lowering, weights, scales, key: str) -> int:
    """The [K, N] int8 weight stored as [N, K] with one scale per output row (quantized dimension 0)."""
    return lw.const(np.ascontiguousarray(weights.T), key, quantization=quantization(scales, [0] * len(scales)))
