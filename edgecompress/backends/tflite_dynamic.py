"""TFLite lowerings of ONNX Runtime's dynamic int8 ops (what the `quantize_dynamic` pass writes).

Both runtimes quantize activations at run time and keep int8 weights in the file: ORT per tensor to
uint8, LiteRT's hybrid FULLY_CONNECTED per row to int8, so the two agree to quantization noise (the
artifact is checked by prediction agreement, as every lossy artifact is).

Before -> After:
- `DynamicQuantizeMatMul(X, Wq, s_w, z_w, bias)` (legalized from `DynamicQuantizeLinear -> MatMulInteger
  -> Cast -> Mul`, see graph/legalize_tflite.py) -> hybrid `FULLY_CONNECTED(X, Wq^T int8, bias)`.
- `QAttention(DynamicQuantizeLinear(X), Wq, bias, ...)` -> three hybrid FULLY_CONNECTED for Q, K, V on X,
  then the float attention core of `Attention`.
- `QEmbedLayerNormalization(uint8 tables)` -> `DEQUANTIZE(GATHER(uint8 table, ids))` for the word and
  segment rows (the tables stay uint8 in the file), position rows and gamma/beta dequantized at export,
  then the float `EmbedLayerNormalization` core.
- `DynamicQuantizeLinear` itself writes nothing: the ops above read its float input.
"""

from __future__ import annotations

import numpy as np

from .tflite_contrib import attention_core, check_attention, embedding_norm, padded_inputs
from .tflite_lower import MS_DOMAIN, Lowering, lowers
from .tflite_quant import hybrid_fully_connected, quantization

_FLOAT32 = np.dtype(np.float32)


@lowers("DynamicQuantizeLinear")
def dynamic_quantize_linear(lw: Lowering, node) -> None:
    """Nothing is written: an op reading the uint8 tensor without an int8 lowering is refused by name."""

    def refuse() -> int:
        raise lw.unsupported(node, "its uint8 output feeds an op that has no int8 lowering")

    for name in node.output:
        lw.defer(name, refuse)


@lowers("DynamicQuantizeMatMul", domain=MS_DOMAIN)
def dynamic_quantize_matmul(lw: Lowering, node) -> None:
    x, weights, scale, zero, bias = padded_inputs(node, 5)
    int8, scales = _symmetric_int8(lw, node, weights, scale, zero)
    hybrid_fully_connected(lw, lw.value(x), int8, scales, f"{weights}/int8_weight",
                           bias=lw.constant(bias) if bias else None, out=node.output[0])


@lowers("QAttention", domain=MS_DOMAIN)
def q_attention(lw: Lowering, node) -> None:
    quantized, weights, bias, _, weight_scale, mask, _, weight_zero = padded_inputs(node, 8)[:8]
    check_attention(lw, node, decoder_inputs=slice(8, None))
    x = _float_input(lw, node, quantized)
    int8, scales = _symmetric_int8(lw, node, weights, weight_scale, weight_zero)
    bias_values = lw.constant(bias)
    if bias_values is None:
        raise lw.unsupported(node, "a QKV bias that is not a constant")
    hidden = int8.shape[1] // 3
    projections = [hybrid_fully_connected(lw, x, int8[:, part * hidden:(part + 1) * hidden],
                                          scales[part * hidden:(part + 1) * hidden], f"{weights}/{'qkv'[part]}",
                                          bias=bias_values[part * hidden:(part + 1) * hidden],
                                          shape=(*lw.shape(quantized)[:2], hidden))
                   for part in range(3)]
    attention_core(lw, node, projections, mask)


@lowers("QEmbedLayerNormalization", domain=MS_DOMAIN)
def q_embed_layer_norm(lw: Lowering, node) -> None:
    (ids, segments, word, position, segment, gamma, beta, mask, word_scale, position_scale, segment_scale,
     gamma_scale, beta_scale, word_zero, position_zero, segment_zero, gamma_zero, beta_zero) = padded_inputs(node, 18)
    length = lw.shape(ids)[1]
    rows = [_quantized_rows(lw, node, word, word_scale, word_zero, ids),
            lw.const(_dequantized(lw, node, position, position_scale, position_zero)[:length],
                     f"{position}/dequantized_first_{length}")]
    if segments:
        rows.append(_quantized_rows(lw, node, segment, segment_scale, segment_zero, segments))
    gamma_values = _dequantized(lw, node, gamma, gamma_scale, gamma_zero)
    beta_values = _dequantized(lw, node, beta, beta_scale, beta_zero)
    embedding_norm(lw, node, rows, lw.const(gamma_values, f"{gamma}/dequantized"),
                   lw.const(beta_values, f"{beta}/dequantized"), mask)


def _float_input(lw: Lowering, node, quantized: str) -> int:
    """The float tensor a DynamicQuantizeLinear quantized: the hybrid kernels quantize it themselves."""
    producer = lw.producers.get(quantized)
    if producer is None or producer.op_type != "DynamicQuantizeLinear":
        raise lw.unsupported(node, "an input that is not quantized by DynamicQuantizeLinear")
    return lw.value(producer.input[0])


def _symmetric_int8(lw: Lowering, node, weights: str, scale: str, zero: str):
    """(int8 weights [K, N], per-column scales [N]); TFLite's hybrid kernels take symmetric int8 only."""
    values, scales = lw.constant(weights), lw.constant(scale)
    zeros = lw.constant(zero) if zero else np.zeros(1, np.int8)
    if values is None or scales is None or zeros is None or values.dtype != np.int8 or values.ndim != 2 \
            or zeros.any() or scales.size not in (1, values.shape[1]):
        raise lw.unsupported(node, "weights that are not constant symmetric int8, per tensor or per column")
    return values, np.broadcast_to(scales.reshape(-1), (values.shape[1],)).astype(np.float32)


def _table_params(lw: Lowering, node, scale: str, zero: str) -> tuple[float, int]:
    scales, zeros = lw.constant(scale), lw.constant(zero)
    if scales is None or zeros is None or scales.size != 1 or zeros.size != 1:
        raise lw.unsupported(node, "embedding scales or zero points that are not constant scalars")
    return float(scales.reshape(())), int(zeros.reshape(()))


def _quantized_rows(lw: Lowering, node, table: str, scale: str, zero: str, ids: str) -> int:
    """`DEQUANTIZE(GATHER(table, ids))`: only the looked-up rows become float."""
    values = lw.constant(table)
    table_scale, table_zero = _table_params(lw, node, scale, zero)
    params = quantization([table_scale], [table_zero])
    shape = (*lw.shape(ids), values.shape[1])
    rows = lw.emit("GATHER", [lw.const(values, table, quantization=params), lw.value(ids)], shape=shape,
                   dtype=values.dtype, options=lw.options("Gather"), quantization=params)
    return lw.emit("DEQUANTIZE", [rows], shape=shape, dtype=_FLOAT32)


def _dequantized(lw: Lowering, node, name: str, scale: str, zero: str) -> np.ndarray:
    """(q - z) * s at export, in ORT's order: an integer difference, then one float product."""
    table_scale, table_zero = _table_params(lw, node, scale, zero)
    return (lw.constant(name).astype(np.int32) - table_zero).astype(np.float32) * np.float32(table_scale)
