"""TFLite lowerings of the ONNX Runtime contrib ops that `fuse_transformer` leaves in BERT graphs.

Each is written as the builtin sequence computing what ONNX Runtime's CPU kernel computes, in the same
order, so the `.tflite` and the `.onnx` of one export are the same model (see each Before -> After).
The embedding and attention cores are shared with their int8 forms in `tflite_dynamic`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgecompress.backends.tflite.ops.standard import layer_norm
from edgecompress.backends.tflite.registry import MS_DOMAIN, lowers

if TYPE_CHECKING:  # the lowering imports this file's package; the registry keeps it a leaf
    from edgecompress.backends.tflite.lowering import Lowering

_FLOAT32 = np.dtype(np.float32)
_INT32 = np.dtype(np.int32)
_HEADS_PERM = [0, 2, 1, 3]  # [B, S, N, h] <-> [B, N, S, h]


def padded_inputs(node, count: int) -> list[str]:
    """Node inputs padded with "" up to `count`, so optional ones can be tested by truthiness."""
    return list(node.input) + [""] * (count - len(node.input))


@lowers("EmbedLayerNormalization", domain=MS_DOMAIN)
def embed_layer_norm(lw: Lowering, node) -> None:
    """Before -> After: `EmbedLayerNormalization(ids, segments, word, position, segment, gamma, beta, mask)` ->
    `LayerNorm(ADD(ADD(GATHER(word, ids), position[:S]), GATHER(segment, segments)))` and
    `mask_index = SUM(CAST(EQUAL(mask, 1)), axis 1)` (ORT counts the ones of each mask row).
    """
    ids, segments, word, position, segment, gamma, beta, mask, position_ids = padded_inputs(node, 9)
    length = lw.shape(ids)[1]
    rows = [_rows(lw, word, ids)]
    if position_ids:
        rows.append(_rows(lw, position, position_ids))
    else:
        rows.append(lw.const(lw.constant(position)[:length], f"{position}/first_{length}"))
    if segments:
        rows.append(_rows(lw, segment, segments))
    embedding_norm(lw, node, rows, lw.value(gamma), lw.value(beta), mask)


def _rows(lw: Lowering, table: str, ids: str) -> int:
    return lw.emit(
        "GATHER",
        [lw.value(table), lw.value(ids)],
        shape=(*lw.shape(ids), lw.shape(table)[1]),
        dtype=_FLOAT32,
        options=lw.options("Gather"),
    )


def embedding_norm(lw: Lowering, node, rows: list[int], gamma: int, beta: int, mask: str) -> None:
    """Sum the embedding rows left to right (word, position, segment: ORT's order), layer-normalize, and
    write the mask index and the optional embedding-sum output when something reads them."""
    batch, length = lw.shape(node.input[0])
    shape = (batch, length, lw.shape(node.output[0])[2])
    total = rows[0]
    for row in rows[1:]:
        total = lw.emit("ADD", [total, row], shape=shape, dtype=_FLOAT32)
    layer_norm(lw, total, shape, [2], gamma, beta, lw.attr(node, "epsilon", 1e-12), out=node.output[0])
    if len(node.output) > 1 and lw.used(node.output[1]):
        _mask_index(lw, mask, batch, out=node.output[1])
    if len(node.output) > 2 and lw.used(node.output[2]):
        lw.bind(node.output[2], total)


def _mask_index(lw: Lowering, mask: str, batch: int, *, out: str) -> None:
    """Valid length per row = number of mask entries equal to 1; without a mask ORT writes zeros."""
    if not mask:
        lw.bind(out, lw.const(np.zeros(batch, np.int32), f"{out}/zeros"))
        return
    shape = lw.shape(mask)
    ones = lw.emit(
        "EQUAL",
        [lw.value(mask), lw.const(np.array(1, lw.dtype(mask)), f"one_{lw.dtype(mask)}")],
        shape=shape,
        dtype=np.bool_,
    )
    counted = lw.emit("CAST", [ones], shape=shape, dtype=_INT32)
    lw.emit(
        "SUM",
        [counted, lw.const(np.array([1], np.int32), "axes[1]")],
        out=out,
        options=lw.options("Reducer", keepDims=False),
    )


@lowers("SkipLayerNormalization", domain=MS_DOMAIN)
def skip_layer_norm(lw: Lowering, node) -> None:
    """Before -> After: `SkipLayerNormalization(x, skip, gamma, beta, bias)` ->
    `LayerNorm(ADD(ADD(x, skip), bias))`, or `LayerNorm(ADD(x, skip))` when the FULLY_CONNECTED writing x
    (or skip) already added the bias (`Lowering.fold_bias`); the optional sum output is the last ADD."""
    x, skip, gamma, beta, bias = padded_inputs(node, 5)
    if any(lw.used(name) for name in node.output[1:3]):
        raise lw.unsupported(node, "its mean or inverse-std-dev outputs are used")
    shape = lw.shape(x)
    total = lw.emit("ADD", [lw.value(x), lw.value(skip)], shape=shape, dtype=_FLOAT32)
    if bias and x not in lw.biased and skip not in lw.biased:
        total = lw.emit("ADD", [total, lw.value(bias)], shape=shape, dtype=_FLOAT32)
    layer_norm(
        lw,
        total,
        shape,
        [len(shape) - 1],
        lw.value(gamma),
        lw.value(beta) if beta else None,
        lw.attr(node, "epsilon", 1e-12),
        out=node.output[0],
    )
    if len(node.output) > 3 and lw.used(node.output[3]):
        lw.bind(node.output[3], total)


@lowers("BiasGelu", "Gelu", domain=MS_DOMAIN)
def bias_gelu(lw: Lowering, node) -> None:
    """Before -> After: `BiasGelu(x, bias)` -> `GELU(ADD(x, bias), approximate=False)` (the erf form), or
    `GELU(x)` when the FULLY_CONNECTED writing x already added the bias (`Lowering.fold_bias`);
    `Gelu(x)` -> `GELU(x)`."""
    x = lw.value(node.input[0])
    if len(node.input) > 1 and node.input[1] and node.input[0] not in lw.biased:
        x = lw.emit("ADD", [x, lw.value(node.input[1])], shape=lw.shape(node.input[0]), dtype=_FLOAT32)
    lw.emit("GELU", [x], out=node.output[0], options=lw.options("Gelu", approximate=False))


@lowers("FastGelu", domain=MS_DOMAIN)
def fast_gelu(lw: Lowering, node) -> None:
    """Before -> After: `FastGelu(x[, bias])` (the tanh form ONNX Runtime's fuser writes for `gelu_new`, ALBERT's
    activation) -> `GELU(ADD(x, bias), approximate=True)`: LiteRT's approximate GELU is the same tanh formula."""
    x = lw.value(node.input[0])
    if len(node.input) > 1 and node.input[1]:
        x = lw.emit("ADD", [x, lw.value(node.input[1])], shape=lw.shape(node.input[0]), dtype=_FLOAT32)
    lw.emit("GELU", [x], out=node.output[0], options=lw.options("Gelu", approximate=True))


@lowers("Attention", domain=MS_DOMAIN)
def attention(lw: Lowering, node) -> None:
    """Before -> After: `Attention(x, W [H, 3H], b [3H], mask_index)` ->
    Q, K, V = `FULLY_CONNECTED(x, W_part^T, b_part)` each, Q's weights and bias multiplied by the score
    scale at export (`attention_scale`), then `attention_core`."""
    x, weight_name, bias_name, mask = padded_inputs(node, 4)[:4]
    check_attention(lw, node, decoder_inputs=slice(4, None))
    weight, bias = lw.constant(weight_name), lw.constant(bias_name)
    if weight is None or bias is None:
        raise lw.unsupported(node, "QKV weights or bias that are not constants")
    hidden = weight.shape[1] // 3
    scale = attention_scale(lw, node, hidden)
    projections = []
    for index, part in enumerate("qkv"):
        columns = slice(index * hidden, (index + 1) * hidden)
        factor = scale if part == "q" else np.float32(1)
        projections.append(
            lw.emit(
                "FULLY_CONNECTED",
                [
                    lw.value(x),
                    lw.const(weight[:, columns].T * factor, f"{weight_name}/{part}"),
                    lw.const(bias[columns] * factor, f"{bias_name}/{part}"),
                ],
                shape=(*lw.shape(x)[:2], hidden),
                dtype=_FLOAT32,
                options=lw.options("FullyConnected", keepNumDims=True),
            )
        )
    attention_core(lw, node, projections, mask)


@lowers("MultiHeadAttention", domain=MS_DOMAIN)
def multi_head_attention(lw: Lowering, node) -> None:
    """Before -> After (the encoder form `fuse_transformer`'s own rule writes, graph/attention_to_mha.py):
    `MultiHeadAttention(q, k, v, , key_padding_mask[, attention_bias])` [B, S, H] each ->
    `attention_core(MUL(q, scale), k, v)` with the mask as ORT builds it from the key padding mask, plus
    `attention_bias` on the scores (after the mask, ORT's order). The scale goes on Q, [B, S, H], not on
    the [B, N, S, S] scores."""
    query, key, value, bias, mask, attention_bias = padded_inputs(node, 6)[:6]
    check_attention(lw, node, decoder_inputs=slice(6, None))
    if bias:
        raise lw.unsupported(node, "a packed Q/K/V bias input (the rule leaves the bias in the projections)")
    widths = {lw.shape(name)[-1] for name in (query, key, value)}
    if len(widths) != 1 or len({lw.shape(name) for name in (query, key, value)}) != 1:
        raise lw.unsupported(node, "query, key and value of different shapes (cross attention)")
    scale = attention_scale(lw, node, widths.pop())
    scaled = lw.emit(
        "MUL",
        [lw.value(query), lw.const(np.array(scale, np.float32), f"attention_scale{scale!r}")],
        shape=lw.shape(query),
        dtype=_FLOAT32,
    )
    attention_core(lw, node, [scaled, lw.value(key), lw.value(value)], mask, bias=attention_bias)


def attention_scale(lw: Lowering, node, hidden: int) -> np.float32:
    """The factor on Q.K^T: the node's `scale`, else 1/sqrt(head size) in float32, as ORT computes it.

    Callers fold it into Q's projection (weights and bias, or an int8 weight's scales): a product of
    constants at export instead of a MUL over every [B, N, S, S] score at run time, four times the size
    of Q at BERT's shapes; the same value up to float rounding.
    """
    head_size = hidden // lw.attr(node, "num_heads")
    return np.float32(lw.attr(node, "scale", 0.0) or np.float32(1.0) / np.sqrt(np.float32(head_size)))


def check_attention(lw: Lowering, node, decoder_inputs: slice) -> None:
    """Only BERT's encoder form: equal Q/K/V widths, bidirectional, no past state, no extra bias."""
    if any(node.input[decoder_inputs]):
        raise lw.unsupported(node, "past state or attention bias inputs (decoder attention)")
    if lw.attr(node, "unidirectional", 0) or lw.attr(node, "do_rotary", 0):
        raise lw.unsupported(node, "unidirectional or rotary attention")
    sizes = lw.attr(node, "qkv_hidden_sizes")
    if sizes and len(set(sizes)) != 1:
        raise lw.unsupported(node, f"unequal qkv_hidden_sizes {list(sizes)}")


def attention_core(lw: Lowering, node, projections: list[int], mask: str, bias: str = "") -> None:
    """Before -> After: projected Q (already multiplied by `attention_scale`), K, V [B, S, H] ->
    heads = `TRANSPOSE(RESHAPE(., [B, S, N, h]))`; `P = SOFTMAX(ADD(ADD(BATCH_MATMUL(Q, K, adj_y), mask),
    bias))`; `RESHAPE(TRANSPOSE(BATCH_MATMUL(P, V)), [B, S, H])`. The mask is -10000 (mask_filter_value) on
    keys at or after each row's mask_index, added to the scaled scores as ORT's kernel does; `bias` (an
    attention bias [B or 1, N, S, S], MultiHeadAttention's) is added after it, when given.
    """
    batch, length, hidden = lw.shape(node.output[0])
    heads = lw.attr(node, "num_heads")
    head_size = hidden // heads
    split = (batch, length, heads, head_size)
    q, k, v = (_heads(lw, projected, split) for projected in projections)
    scores_shape = (batch, heads, length, length)
    scores = lw.emit(
        "BATCH_MATMUL", [q, k], shape=scores_shape, dtype=_FLOAT32, options=lw.options("BatchMatMul", adjY=True)
    )
    if mask:
        filter_value = lw.attr(node, "mask_filter_value", -10000.0)
        scores = lw.emit(
            "ADD",
            [scores, _additive_mask(lw, node, mask, batch, length, filter_value)],
            shape=scores_shape,
            dtype=_FLOAT32,
        )
    if bias:
        scores = lw.emit("ADD", [scores, lw.value(bias)], shape=scores_shape, dtype=_FLOAT32)
    probs = lw.emit("SOFTMAX", [scores], shape=scores_shape, dtype=_FLOAT32, options=lw.options("Softmax", beta=1.0))
    context = lw.emit(
        "BATCH_MATMUL",
        [probs, v],
        shape=(batch, heads, length, head_size),
        dtype=_FLOAT32,
        options=lw.options("BatchMatMul"),
    )
    merged = lw.emit("TRANSPOSE", [context, _perm(lw)], shape=split, dtype=_FLOAT32, options=lw.options("Transpose"))
    out_shape = [batch, length, hidden]
    lw.emit(
        "RESHAPE",
        [merged, lw.const(np.array(out_shape, np.int32), f"shape{out_shape}")],
        out=node.output[0],
        options=lw.options("Reshape", newShape=out_shape),
    )


def _perm(lw: Lowering) -> int:
    return lw.const(np.array(_HEADS_PERM, np.int32), f"perm{_HEADS_PERM}")


def _heads(lw: Lowering, projected: int, split) -> int:
    """[B, S, H] -> [B, N, S, h]."""
    batch, length, heads, head_size = split
    reshaped = lw.emit(
        "RESHAPE",
        [projected, lw.const(np.array(split, np.int32), f"shape{list(split)}")],
        shape=split,
        dtype=_FLOAT32,
        options=lw.options("Reshape", newShape=list(split)),
    )
    return lw.emit(
        "TRANSPOSE",
        [reshaped, _perm(lw)],
        shape=(batch, heads, length, head_size),
        dtype=_FLOAT32,
        options=lw.options("Transpose"),
    )


def _additive_mask(lw: Lowering, node, mask: str, batch: int, length: int, filter_value: float) -> int:
    """[B, 1, 1, S]: `filter_value` on masked keys, 0 elsewhere; built once and shared by every layer.

    A 1-D mask_index [B] is each row's valid length (keys at or after it are masked); a 2-D mask [B, S]
    is the raw attention mask (keys where it is 0 are masked), the two forms ORT's fuser writes.
    """
    key = ("attention_mask", mask, float(filter_value))
    if key in lw.cache:
        return lw.cache[key]
    shape, dtype = lw.shape(mask), lw.dtype(mask)
    if shape == (batch,):
        ends = lw.emit(
            "RESHAPE",
            [lw.value(mask), lw.const(np.array([batch, 1], np.int32), f"shape[{batch}, 1]")],
            shape=(batch, 1),
            dtype=dtype,
            options=lw.options("Reshape", newShape=[batch, 1]),
        )
        positions = lw.const(np.arange(length, dtype=dtype)[None, :], f"positions{length}_{dtype}")
        masked = lw.emit("GREATER_EQUAL", [positions, ends], shape=(batch, length), dtype=np.bool_)
    elif shape == (batch, length):
        zero = lw.const(np.array(0, dtype), f"zero_{dtype}")
        masked = lw.emit("LESS_EQUAL", [lw.value(mask), zero], shape=(batch, length), dtype=np.bool_)
    else:
        raise lw.unsupported(node, f"a mask of shape {list(shape)} (only [batch] mask_index or [batch, seq] masks)")
    as_float = lw.emit("CAST", [masked], shape=(batch, length), dtype=_FLOAT32)
    additive = lw.emit(
        "MUL",
        [as_float, lw.const(np.array(filter_value, np.float32), f"mask_filter{filter_value!r}")],
        shape=(batch, length),
        dtype=_FLOAT32,
    )
    four_d = [batch, 1, 1, length]
    lw.cache[key] = lw.emit(
        "RESHAPE",
        [additive, lw.const(np.array(four_d, np.int32), f"shape{four_d}")],
        shape=tuple(four_d),
        dtype=_FLOAT32,
        options=lw.options("Reshape", newShape=four_d),
    )
    return lw.cache[key]
