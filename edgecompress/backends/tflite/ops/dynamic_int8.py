"""TFLite lowerings of ONNX Runtime's dynamic int8 ops (what the `quantize_dynamic` pass writes).

ONNX Runtime quantizes an activation at run time per tensor to uint8 (`DynamicQuantizeLinear`: range
widened to include 0, scale (max - min) / 255). LiteRT's hybrid FULLY_CONNECTED quantizes per row
instead, the finer grid. Which of the two each lowering computes, measured on the Rotten Tomatoes MiniLM
teacher (1,276 test texts, seq_len 128; `cls_row_apart` in the recipe):
- `QAttention`'s input is held to ORT's per-tensor grid by two guard columns holding the tensor's range
  (`ort_dynamic_quantize`, `guarded_fully_connected`): LiteRT then quantizes every row over that range,
  as ORT does, and both runtimes multiply the same integers. The [CLS] and padding rows set that range
  (max |x| 8-10 and 5-7 against 3 for text tokens), so per row the Q, K and V products would drift from
  ORT's: without these guards the .tflite agreed with the ONNX Runtime file on 98.98% of the texts,
  under the 99% the cross-runtime check asks.
- `DynamicQuantizeMatMul` (the attention output projection and, split by `cls_row_apart`, the FFN) runs
  LiteRT's own per-row quantization: guarding them cost 10-17% of the int8 run time (mostly the
  concatenation's copy), and with [CLS] computed apart ORT's per-tensor FFN grids are close to per row:
  the .tflite agrees with the ONNX Runtime file on 99.29% (with float: 99.37%, as litert-torch's file)
  and runs level with litert-torch's dynamic int8 file (0.95-1.03x over seq_len 64/128 and 1/2 threads
  in tools/bench_tflite.py), where guards everywhere agreed on 99.76% at 0.84-0.93x. A model on which
  per row misses the 99% is written again with guards everywhere (`exact_dynamic_int8`, the
  export's cross-runtime check decides and says so in the report).

Before -> After:
- `DynamicQuantizeMatMul(X, Wq, s_w, z_w, bias)` (legalized from `DynamicQuantizeLinear -> MatMulInteger
  -> Cast -> Mul`, see graph/legalize_tflite.py) -> hybrid `FULLY_CONNECTED(X, Wq^T int8, bias)`; without
  a bias input, the bias of its skip-LayerNorm, BiasGelu or Add reader (`Lowering.fold_bias`): the hybrid
  kernel adds a float bias in its own output pass.
- `QAttention(DynamicQuantizeLinear(X), Wq, bias, ...)` -> hybrid `FULLY_CONNECTED(CONCATENATION(X,
  guards), [Wq; 0]^T int8, bias)` for Q, K and V (one set of guards, the score scale folded into Q's
  weight scales and bias), then the float attention core of `Attention`.
- `QEmbedLayerNormalization(uint8 tables)` -> `DEQUANTIZE(GATHER(uint8 table, ids))` for the word and
  segment rows (the tables stay uint8 in the file), position rows and gamma/beta dequantized at export,
  then the float `EmbedLayerNormalization` core.
- `DynamicQuantizeLinear` itself writes nothing: the ops above read its float input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgecompress.backends.tflite.ops.contrib import (
    attention_core,
    attention_scale,
    check_attention,
    embedding_norm,
    padded_inputs,
)
from edgecompress.backends.tflite.ops.static_int8 import (
    GUARD_COLUMNS,
    guarded_fully_connected,
    hybrid_fully_connected,
    quantization,
)
from edgecompress.backends.tflite.registry import MS_DOMAIN, lowers

if TYPE_CHECKING:  # the lowering imports this file's package; the registry keeps it a leaf
    from edgecompress.backends.tflite.lowering import Lowering

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
    bias_values, out = _bias(lw, node, bias), node.output[0]
    fold = lw.fold_bias(out) if bias_values is None else None  # the reader's bias, when the node has none
    if fold is not None:
        bias_values, out = fold.bias, fold.out
    key = f"{weights}/int8_weight"
    if lw.exact_dynamic_int8:
        x_value, guards = ort_dynamic_quantize(lw, x)
        guarded_fully_connected(lw, x_value, guards, int8, scales, key, bias=bias_values, out=out)
    else:
        hybrid_fully_connected(lw, lw.value(x), int8, scales, key, bias=bias_values, out=out)


def _bias(lw: Lowering, node, bias: str) -> np.ndarray | None:
    if not bias:
        return None
    values = lw.constant(bias)
    if values is None:
        raise lw.unsupported(node, "a bias that is not a constant")
    return values


@lowers("QAttention", domain=MS_DOMAIN)
def q_attention(lw: Lowering, node) -> None:
    quantized, weights, bias, _, weight_scale, mask, _, weight_zero = padded_inputs(node, 8)[:8]
    check_attention(lw, node, decoder_inputs=slice(8, None))
    x, guards = _float_input(lw, node, quantized)
    int8, scales = _symmetric_int8(lw, node, weights, weight_scale, weight_zero)
    bias_values = lw.constant(bias)
    if bias_values is None:
        raise lw.unsupported(node, "a QKV bias that is not a constant")
    hidden = int8.shape[1] // 3
    parts = [slice(part * hidden, (part + 1) * hidden) for part in range(3)]
    # Q's score scale goes into its weight scales and bias: the integer products stay ORT's
    factors = [attention_scale(lw, node, hidden), np.float32(1), np.float32(1)]
    projections = [
        guarded_fully_connected(
            lw,
            x,
            guards,
            int8[:, columns],
            scales[columns] * factor,
            f"{weights}/{'qkv'[index]}",
            bias=bias_values[columns] * factor,
            shape=(*lw.shape(quantized)[:2], hidden),
        )
        for index, (columns, factor) in enumerate(zip(parts, factors))
    ]
    attention_core(lw, node, projections, mask)


@lowers("QEmbedLayerNormalization", domain=MS_DOMAIN)
def q_embed_layer_norm(lw: Lowering, node) -> None:
    (
        ids,
        segments,
        word,
        position,
        segment,
        gamma,
        beta,
        mask,
        word_scale,
        position_scale,
        segment_scale,
        gamma_scale,
        beta_scale,
        word_zero,
        position_zero,
        segment_zero,
        gamma_zero,
        beta_zero,
    ) = padded_inputs(node, 18)
    length = lw.shape(ids)[1]
    rows = [
        _quantized_rows(lw, node, word, word_scale, word_zero, ids),
        lw.const(
            _dequantized(lw, node, position, position_scale, position_zero)[:length],
            f"{position}/dequantized_first_{length}",
        ),
    ]
    if segments:
        rows.append(_quantized_rows(lw, node, segment, segment_scale, segment_zero, segments))
    gamma_values = _dequantized(lw, node, gamma, gamma_scale, gamma_zero)
    beta_values = _dequantized(lw, node, beta, beta_scale, beta_zero)
    embedding_norm(
        lw,
        node,
        rows,
        lw.const(gamma_values, f"{gamma}/dequantized"),
        lw.const(beta_values, f"{beta}/dequantized"),
        mask,
    )


def _float_input(lw: Lowering, node, quantized: str) -> tuple[int, int]:
    """The DynamicQuantizeLinear behind QAttention's uint8 input, written as ONNX Runtime computes it."""
    producer = lw.producers.get(quantized)
    if producer is None or producer.op_type != "DynamicQuantizeLinear":
        raise lw.unsupported(node, "an input that is not quantized by DynamicQuantizeLinear")
    return ort_dynamic_quantize(lw, producer.input[0])


def ort_dynamic_quantize(lw: Lowering, name: str) -> tuple[int, int]:
    """Before -> After: `DynamicQuantizeLinear(X)` -> (X, guards = [lo, hi] on every row) with
    lo = `MINIMUM(min(X), 0)` and hi = `MAXIMUM(max(X), 0)`: the range ONNX Runtime quantizes the whole
    tensor over (scale (hi - lo) / 255). Given to `guarded_fully_connected`, every row is quantized over
    that range, i.e. per tensor as ORT does, instead of over its own. Written once per quantized value,
    however many matmuls read it.

    min(X) is `REDUCE_MIN(REDUCE_MIN(X, last axis), other axes)` (max likewise): XNNPACK splits a
    reduction's work by output element, so a one-step reduction to a scalar runs on one thread, while the
    row-wise first step runs on all of them (MiniLM dynamic int8, seq 128, 2 threads: 3.9 -> 3.6 ms).
    """
    key = ("dynamic_quantize", name)
    if key in lw.cache:
        return lw.cache[key]
    x, shape = lw.value(name), lw.shape(name)
    zero = lw.const(np.array(0, np.float32), "scalar0.0")

    def step(op, inputs, to_shape=(), options=None):
        return lw.emit(op, inputs, shape=to_shape, dtype=_FLOAT32, options=options)

    as_pair = [1] * (len(shape) - 1) + [1]
    lo = step("MINIMUM", [_reduce_to_scalar(lw, "REDUCE_MIN", x, shape), zero], as_pair)
    hi = step("MAXIMUM", [_reduce_to_scalar(lw, "REDUCE_MAX", x, shape), zero], as_pair)
    ends = step(
        "CONCATENATION", [lo, hi], [1] * (len(shape) - 1) + [2], lw.options("Concatenation", axis=len(shape) - 1)
    )
    guard_shape = (*shape[:-1], GUARD_COLUMNS)
    guards = step("ADD", [lw.const(np.zeros(guard_shape, np.float32), f"zeros{list(guard_shape)}"), ends], guard_shape)
    lw.cache[key] = (x, guards)
    return lw.cache[key]


def _reduce_to_scalar(lw: Lowering, op: str, x: int, shape) -> int:
    """`op` over all axes in two steps, rows first (see `ort_dynamic_quantize`); keeps every dim as 1."""
    rank, keep = len(shape), lw.options("Reducer", keepDims=True)
    last = lw.const(np.array([rank - 1], np.int32), f"axes[{rank - 1}]")
    rows = lw.emit(op, [x, last], shape=(*shape[:-1], 1), dtype=_FLOAT32, options=keep)
    if rank == 1:
        return rows
    rest = lw.const(np.arange(rank - 1, dtype=np.int32), f"axes{list(range(rank - 1))}")
    return lw.emit(op, [rows, rest], shape=(1,) * rank, dtype=_FLOAT32, options=keep)


def _symmetric_int8(lw: Lowering, node, weights: str, scale: str, zero: str):
    """(int8 weights [K, N], per-column scales [N]); TFLite's hybrid kernels take symmetric int8 only."""
    values, scales = lw.constant(weights), lw.constant(scale)
    zeros = lw.constant(zero) if zero else np.zeros(1, np.int8)
    if (
        values is None
        or scales is None
        or zeros is None
        or values.dtype != np.int8
        or values.ndim != 2
        or zeros.any()
        or scales.size not in (1, values.shape[1])
    ):
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
    rows = lw.emit(
        "GATHER",
        [lw.const(values, table, quantization=params), lw.value(ids)],
        shape=shape,
        dtype=values.dtype,
        options=lw.options("Gather"),
        quantization=params,
    )
    return lw.emit("DEQUANTIZE", [rows], shape=shape, dtype=_FLOAT32)


def _dequantized(lw: Lowering, node, name: str, scale: str, zero: str) -> np.ndarray:
    """(q - z) * s at export, in ORT's order: an integer difference, then one float product."""
    table_scale, table_zero = _table_params(lw, node, scale, zero)
    return (lw.constant(name).astype(np.int32) - table_zero).astype(np.float32) * np.float32(table_scale)
