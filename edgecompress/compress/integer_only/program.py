"""The integer BERT forward, written once against an `ops` backend (torch eager, or ONNX emission).

Boundary: the inputs are the token ids themselves. Embedding rows are gathered from int8 tables and
summed in integers, so there is no float input quantization at all; the only float op is the final
dequantization of the logits (one multiply by the output scale). Per layer:

    h (int16) -> int8 -> Q, K, V (int8) -> scores (int32) -> i-softmax (uint8) -> context (int8)
      -> dense (int32) + h -> residual (22-bit) -> i-LayerNorm -> h1 (int16)
      -> int8 -> intermediate (int32) -> 16-bit -> i-GELU (a table) -> int8 -> dense (int32) + h1 -> i-LayerNorm -> h2
head: h[:, 0] -> int8 -> dense -> 16-bit -> i-tanh (int8 at 1/127), or -> int8 -> ReLU (DistilBERT's head)
      -> classifier (int32) -> 16-bit logits -> float

The plan is family-neutral: the family's differences are data in it, read off the architecture seam when the
plan is built (`model.build_plan`): a token-type table or none, positions counted past padding (RoBERTa) or
0..n-1, the head's activation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecompress.compress.integer_only.kernels import (
    LayerNormParams,
    LinearParams,
    Multiplier,
    i_layernorm,
    i_softmax,
    i_tanh,
    linear_requantized,
    requantize,
)

HIDDEN_BITS = 16  # the residual stream between layers
# A residual sum, as LayerNorm's input (I-BERT uses 22): its calibrated range in 20 bits.
RESIDUAL_BITS = 20
# The dense layer's part of a residual sum is clipped at 2x the sum's calibrated range: a bound that lets its
# requantization run in int32 and keeps LayerNorm's row sums within int32.
RESIDUAL_PART_BITS = RESIDUAL_BITS + 1
GELU_BITS = 14  # GELU's input, so that i-erf's square stays small
GELU_TOP = 2 ** (GELU_BITS - 1) - 1  # the largest |GELU input|: the table's index offset
LOGIT_BITS = 16  # the logits before the final dequantization


# The head activations the integer program computes (an Architecture's `head_activation`).
HEAD_ACTIVATIONS = ("tanh", "relu")


@dataclass
class EmbeddingPlan:
    word: np.ndarray  # int8 [vocab, hidden]
    position: np.ndarray  # int8 [positions, hidden]
    token_type: np.ndarray | None  # int8 [types, hidden]; None: the family takes no token types
    to_sum: tuple[Multiplier, ...]  # each table's scale (word, position[, token type]) -> the sum's scale
    norm: LayerNormParams
    position_pad: int | None = None  # positions count non-pad tokens from pad + 1 (RoBERTa); None: 0..n-1


@dataclass
class LayerPlan:
    heads: int
    head_size: int
    to_attn_input: Multiplier  # h scale -> int8 input of Q, K, V
    query: LinearParams
    key: LinearParams
    value: LinearParams
    to_qkv: tuple[Multiplier, ...]  # accumulators -> int8 Q, K, V
    score_scale: float  # s_q s_k / sqrt(head_size)
    to_context: Multiplier  # probs (2^-8) x s_v -> int8 context
    attn_out: LinearParams
    attn_residual: tuple[Multiplier, Multiplier]  # dense accumulator and h -> residual sum scale
    norm1: LayerNormParams
    to_ffn_input: Multiplier
    intermediate: LinearParams
    to_gelu: Multiplier  # accumulator -> GELU input scale
    gelu_table: np.ndarray  # int32 [2^GELU_BITS - 1]: i-GELU at its input scale, at index input + GELU_TOP
    from_gelu: Multiplier  # GELU output scale -> int8
    ffn_out: LinearParams
    ffn_residual: tuple[Multiplier, Multiplier]
    norm2: LayerNormParams


@dataclass
class HeadPlan:
    to_pool_input: Multiplier
    pooler: LinearParams  # the head's dense layer (BERT's pooler)
    activation: str  # one of HEAD_ACTIVATIONS
    to_activation: Multiplier  # dense accumulator -> tanh's 16-bit input, or ReLU's int8 input
    activation_scale: float  # tanh's input scale, or ReLU's (the classifier's input) step
    classifier: LinearParams  # input: tanh output at 1/127, or ReLU output at activation_scale
    to_logits: Multiplier
    logit_scale: float


@dataclass
class IntegerPlan:
    embeddings: EmbeddingPlan
    layers: list[LayerPlan]
    head: HeadPlan


def integer_forward(ops, plan: IntegerPlan, input_ids, attention_mask, token_type_ids=None):
    """(int64 ids, mask[, types]) -> float logits; everything in between is integer."""
    h = embed(ops, plan.embeddings, input_ids, token_type_ids)
    key_mask = ops.key_mask(attention_mask)
    max_len = len(plan.embeddings.position)  # every position reads a row of this table
    for layer in plan.layers:
        h = encoder_layer(ops, layer, h, key_mask, max_len)
    return classify(ops, plan.head, h)


def embed(ops, plan: EmbeddingPlan, input_ids, token_type_ids=None):
    word = requantize(ops, ops.gather(plan.word, input_ids), plan.to_sum[0])
    positions = ops.positions(input_ids, plan.position_pad)
    total = ops.add(word, requantize(ops, ops.gather(plan.position, positions), plan.to_sum[1]))
    if plan.token_type is not None:
        total = ops.add(total, requantize(ops, ops.gather(plan.token_type, token_type_ids), plan.to_sum[2]))
    return i_layernorm(ops, total, plan.norm)


def encoder_layer(ops, plan: LayerPlan, h, key_mask, max_len: int | None = None):
    """One layer; `max_len` bounds the number of keys (the emitting backend types by it; None: unknown)."""
    x = requantize(ops, h, plan.to_attn_input, 8)
    q, k, v = (
        linear_requantized(ops, x, params, to_int8, 8)
        for params, to_int8 in zip((plan.query, plan.key, plan.value), plan.to_qkv)
    )
    scores = ops.matmul(
        ops.split_heads(q, plan.heads, plan.head_size),
        ops.split_heads(k, plan.heads, plan.head_size, transpose=True),
        terms=plan.head_size,
    )
    q_bound = 127 * 127 * plan.head_size  # int8 Q and K over one head
    probs, _ = i_softmax(ops, scores, plan.score_scale, key_mask, max_keys=max_len, q_bound=q_bound)
    values = ops.split_heads(v, plan.heads, plan.head_size)
    context = ops.matmul(probs, values, a_unsigned=True, terms=max_len)
    context = requantize(ops, ops.merge_heads(context, plan.heads * plan.head_size), plan.to_context, 8)
    h1 = residual_norm(ops, context, plan.attn_out, h, plan.attn_residual, plan.norm1)
    x = requantize(ops, h1, plan.to_ffn_input, 8)
    gelu_in = linear_requantized(ops, x, plan.intermediate, plan.to_gelu, GELU_BITS)
    gelu = ops.lookup(plan.gelu_table, ops.add(gelu_in, GELU_TOP))  # i-GELU, tabulated
    x = requantize(ops, gelu, plan.from_gelu, 8)
    return residual_norm(ops, x, plan.ffn_out, h1, plan.ffn_residual, plan.norm2)


def residual_norm(ops, x, dense: LinearParams, skip, to_sum: tuple[Multiplier, Multiplier], norm: LayerNormParams):
    """LayerNorm(dense(x) + skip), each part requantized to the sum's scale."""
    part = linear_requantized(ops, x, dense, to_sum[0], RESIDUAL_PART_BITS)
    total = ops.add(part, requantize(ops, skip, to_sum[1]))
    return i_layernorm(ops, total, norm)


def classify(ops, plan: HeadPlan, h):
    x = requantize(ops, ops.first_token(h), plan.to_pool_input, 8)
    if plan.activation == "tanh":
        dense = linear_requantized(ops, x, plan.pooler, plan.to_activation, HIDDEN_BITS)
        pooled, _ = i_tanh(ops, dense, plan.activation_scale)
    else:  # relu: max(x, 0) on the int8 grid the classifier reads
        pooled = ops.maximum(linear_requantized(ops, x, plan.pooler, plan.to_activation, 8), 0)
    logits = linear_requantized(ops, pooled, plan.classifier, plan.to_logits, LOGIT_BITS)
    return ops.dequantize(logits, plan.logit_scale)
