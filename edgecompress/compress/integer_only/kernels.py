"""Integer kernels of I-BERT (Kim et al. 2021), written once against an `ops` backend.

Every kernel takes integer tensors (`q`, meaning the real value q * scale) and returns integers plus,
where it changes, the new scale. Scales are Python floats or numpy vectors fixed at build time, so
the arithmetic that runs is integer only. The same code runs eagerly in torch (`TORCH`, int64
tensors) and emits the ONNX graph (`onnx_ops.OnnxOps`, int32 wherever the values' intervals fit): the
two can only differ where an op differs.

Bit budgets are chosen so that the hot tensors fit int32 (I-BERT's design): the softmax's exponentials
(ln2 in at most 2^13 steps, shifted down before their row sum), GELU's product (i-erf's 1.0 in 16 bits),
and the requantizations to narrow outputs (`requantizer`: a dyadic with fewer bits, or a division).

Rounding is explicit and identical in both backends:
    requantize: round half up, floor((q * b + 2^(c-1)) / 2^c) with m ~ b / 2^c (dyadic), or
                floor((q + floor(d/2)) / d) with m ~ 1/d (a divisor, for small m)
    divisions:  floor division (of a signed numerator by a positive divisor)
"""

from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from edgecompress.errors import InternalError

DYADIC_BITS = 24  # b in [2^23, 2^24]: relative error of a requantization multiplier <= 2^-24
# An int32 requantization (`requantizer`): |q| * b stays within 2^29.5, leaving room for the rounding and the
# offset (2^30) that makes a floor non-negative; b (or a divisor d) keeps at least 7 bits, relative error <= 2^-8
# (the error of an int8 weight step; a gain error that small moves no prediction measurably).
INT32_PRODUCT_BITS = 29.5
INT32_MIN_BITS = 7
# LayerNorm runs in int32 (see `i_layernorm`): its normalized value (x - mean) / std at 2^-10, gamma in 14 bits
# relative to the largest |gamma|. Bound: |normalized| <= 2 sqrt(n) 2^10 (< 2^15.3 for n = 384), times gamma
# 2^14 plus beta stays below 2^30.
LN_FRACTION_BITS = 10
LN_GAMMA_BITS = 14
LN_WIDE_BITS = 14  # the centered values LayerNorm normalizes, per row: the largest in 14 bits
VAR_FRACTION_BITS = 8  # LayerNorm's variance (of its w-bit values) at 2^-8, on one value per row
ROW_SHIFT_MAX = 30  # LayerNorm's per-row shift: rows wider than 2^(30 + w) are clipped (none are: inputs are 20 bits)
SOFTMAX_FINEST_SCALE = math.log(2.0) / 2**13  # ln2 in 2^13 steps: exp's integers stay below 2^31 (int32)
EXP_RANGE = 30  # exp(x) for x < -30 ln2 is taken as exp(-30 ln2) (I-BERT's clamp)
ERF_ONE_BITS = 16  # i-erf's 1.0 in at most 16 bits: GELU's product of a 14-bit input stays in int32
POW2 = np.array([1 << i for i in range(63)], dtype=np.int64)
GELU_A, GELU_B = -0.2888, -1.769  # erf(x) ~ sign(x) [a (min(|x|, -b) + b)^2 + 1]
EXP_A, EXP_B, EXP_C = 0.3585, 1.353, 0.344  # exp(p) ~ a (p + b)^2 + c on p in (-ln2, 0]


class TorchOps:
    """The eager backend: int64 torch tensors, exact integer arithmetic.

    `matmul` multiplies int8-range operands in float64: every product and partial sum is an integer
    below 255 * 127 * K < 2^53 for any K < 2.7e11, so float64 holds it exactly and BLAS is fast.
    """

    def __init__(self):
        self._constants: dict[tuple, torch.Tensor] = {}

    def _t(self, value, dtype=torch.int64):
        """Numpy constants (weights, tables, per-channel vectors) become tensors once, for as long as the array
        lives: a kernel's per-call arrays (a bias times its multiplier) are dropped with it, where a cache keyed by
        id alone kept every one of them (194 more per forward of a 6-layer model). Ints stay Python ints."""
        if isinstance(value, np.ndarray):
            key = (id(value), dtype)
            if key not in self._constants:
                self._constants[key] = torch.from_numpy(value.astype(np.int64)).to(dtype)
                weakref.finalize(value, self._constants.pop, key, None)
            return self._constants[key]
        return value

    def add(self, a, b):
        return self._t(a) + self._t(b)

    def sub(self, a, b):
        return self._t(a) - self._t(b)

    def mul(self, a, b):
        return self._t(a) * self._t(b)

    def floor_div(self, a, d, plus=0):
        """floor((a + plus) / d) for d > 0 (a constant, a per-channel vector or a tensor)."""
        return torch.div(self.add(a, plus), self._t(d), rounding_mode="floor")

    def div_nonneg(self, a, d):
        """floor(a / d) for a >= 0, d > 0 (the ONNX backend may truncate)."""
        return torch.div(self._t(a), self._t(d), rounding_mode="floor")

    def floor_shift(self, a, c, plus=0):
        """floor((a + plus) / 2^c) for signed a, c >= 0 and plus: constants (ints or per-channel vectors) or, for c
        in [0, 30] and plus, per-row tensors."""
        return torch.bitwise_right_shift(self.add(a, plus), self._t(c))  # arithmetic shift on int64: floor

    def shift_right(self, a, z):
        """floor(a / 2^z) for a >= 0 and a tensor z in [0, 62]."""
        return torch.bitwise_right_shift(a, z)

    def minimum(self, a, b):
        return torch.minimum(torch.as_tensor(self._t(a)), torch.as_tensor(self._t(b)))

    def maximum(self, a, b):
        return torch.maximum(torch.as_tensor(self._t(a)), torch.as_tensor(self._t(b)))

    def clip(self, a, low, high):
        """a clipped to [low, high]: ints or per-channel vectors."""
        return torch.maximum(torch.minimum(a, torch.as_tensor(self._t(high))), torch.as_tensor(self._t(low)))

    def clip_mul(self, a, low, high, b):
        """a clipped to [low, high], then times b (each an int or a per-channel vector)."""
        return self.clip(a, low, high) * self._t(b)

    def abs(self, a):
        return torch.abs(a)

    def is_negative(self, a):
        return a < 0

    def where(self, cond, a, b):
        return torch.where(cond, torch.as_tensor(self._t(a)), torch.as_tensor(self._t(b)))

    def reduce_sum(self, a, axis: int, terms: int | None = None):
        """`terms` bounds the number of values summed (the emitting backend types the sum by it)."""
        return a.sum(dim=axis, keepdim=True)

    def reduce_max(self, a, axis: int):
        return a.amax(dim=axis, keepdim=True)

    def bit_length(self, a):
        """Number of bits of a >= 0 (0 for 0): how many powers of two are <= a."""
        return (a.unsqueeze(-1) >= self._t(POW2)).sum(-1)

    def gather(self, table, index):
        return self._t(table)[index]

    lookup = gather  # one op here; the emitting backend writes large lookups differently (`OnnxOps.lookup`)

    def matmul(self, a, b, *, a_unsigned: bool = False, terms: int | None = None):
        """a @ b for int8 a (uint8 when `a_unsigned`) and int8 b; `terms`: the inner length (for emission)."""
        b = self._t(b, torch.float64) if isinstance(b, np.ndarray) else b.double()
        return torch.matmul(a.double(), b).long()

    # Shapes and the two boundaries.
    def positions(self, input_ids, pad: int | None = None):
        """0..n-1, or (pad given) the running count of non-pad tokens past pad, pad tokens at pad (RoBERTa)."""
        if pad is None:
            return torch.arange(input_ids.shape[1])
        real = (input_ids != pad).long()
        return torch.cumsum(real, dim=1) * real + pad

    def key_mask(self, attention_mask):
        """[B, S] -> bool [B, 1, 1, S]: which keys each query may attend to."""
        return (attention_mask > 0)[:, None, None, :]

    def split_heads(self, x, heads: int, head_size: int, *, transpose: bool = False):
        """[B, S, H*D] -> [B, H, S, D] (or [B, H, D, S] with `transpose`)."""
        x = x.view(x.shape[0], x.shape[1], heads, head_size)
        return x.permute(0, 2, 3, 1) if transpose else x.permute(0, 2, 1, 3)

    def merge_heads(self, x, width: int):
        return x.permute(0, 2, 1, 3).reshape(x.shape[0], x.shape[2], width)

    def first_token(self, x):
        return x[:, 0]

    def dequantize(self, q, scale: float):
        return q.float() * torch.tensor(scale, dtype=torch.float32)


TORCH = TorchOps()


@dataclass(frozen=True)
class Dyadic:
    """A positive real multiplier m ~ b / 2^c (scalar or per channel)."""

    b: np.ndarray  # int64
    c: np.ndarray  # int64, >= 1
    half: np.ndarray  # 2^(c-1), for rounding half up
    # |q| is clipped to this first (None: not), per channel or one for all: exact when the output is clipped, since
    # every input beyond it gives a clipped output anyway; it bounds q * b, so that the product fits int32 (see
    # `requantizer`).
    limit: int | np.ndarray | None = None

    @property
    def value(self) -> np.ndarray:
        return self.b / 2.0**self.c


@dataclass(frozen=True)
class Divisor:
    """A positive real multiplier m ~ 1 / d, d an integer (scalar or per channel), for m far below 1: the
    product of a dyadic multiplier would not fit int32 there, a division needs no headroom."""

    d: np.ndarray  # int64, >= 2
    limit: int | None = None  # as Dyadic.limit

    @property
    def value(self) -> np.ndarray:
        return 1.0 / self.d


Multiplier = Dyadic | Divisor  # a requantization multiplier, as `requantize` takes it


def dyadic(m) -> Dyadic:
    """m -> (b, c) with b in [2^(DYADIC_BITS-1), 2^DYADIC_BITS]; shifts above 62 keep b small instead."""
    m = np.asarray(m, dtype=np.float64)
    if not np.all(np.isfinite(m)) or np.any(m <= 0):
        raise InternalError(f"requantization multiplier must be positive and finite, got {m}")
    c = np.minimum(DYADIC_BITS - 1 - np.floor(np.log2(m)), 62).astype(np.int64)
    if np.any(c < 1):
        raise InternalError(f"requantization multiplier {m.max():.3g} is too large for {DYADIC_BITS}-bit dyadic")
    return _dyadic(m, c)


def _dyadic(m: np.ndarray, c: np.ndarray, limit: int | None = None) -> Dyadic:
    b = np.round(m * 2.0**c).astype(np.int64)
    half = POW2[c - 1]
    if b.ndim == 0:
        return Dyadic(int(b), int(c), int(half), limit)
    return Dyadic(b, c, half, limit)


def requantizer(m, in_bound: int, out_bits: int | None) -> Multiplier:
    """The multiplier m for inputs |q| <= in_bound (to `out_bits` signed, or unclipped), in int32 if it can be.

    int32 needs |q| * b (plus rounding and the floor's offset) below 2^31, so b gets fewer bits than a
    DYADIC_BITS dyadic: the inputs are first clipped, channel by channel, where the output clips (`limit`), then c
    is the largest shift keeping limit * b <= 2^INT32_PRODUCT_BITS. When m is so small that b would keep fewer
    than INT32_MIN_BITS bits, a division by d = round(1/m) is more precise (relative error 1/2d). When neither
    keeps INT32_MIN_BITS bits (a relative error up to 2^-8), the multiplier is the DYADIC_BITS one and runs in
    int64.
    """
    m = np.asarray(dyadic(m).value, dtype=np.float64)  # validated
    limit = np.full(m.shape, in_bound, dtype=np.int64)
    if out_bits is not None:
        limit = np.minimum(in_bound, np.ceil(2 ** (out_bits - 1) / m).astype(np.int64) + 2)
    clip = _limit(limit) if np.any(limit < in_bound) else None
    c = np.floor(np.log2(2.0**INT32_PRODUCT_BITS / (limit * m))).astype(np.int64)
    if np.all(c >= 1) and np.all(c <= 31) and np.all(np.round(m * 2.0**c) >= 2**INT32_MIN_BITS):
        return _dyadic(m, c, clip)
    d = np.round(1.0 / m).astype(np.int64)
    # the floor division's offset makes the numerator non-negative: |q| + |q| + d must fit int32
    if np.all(d >= 2**INT32_MIN_BITS) and 2 * int(limit.max()) + int(d.max()) < 2**31:
        return Divisor(int(d) if d.ndim == 0 else d, int(limit.max()) if clip is not None else None)
    return dyadic(m)


def _limit(limit: np.ndarray):
    """One limit for every channel as an int, else the per-channel vector."""
    return int(limit.max()) if limit.ndim == 0 or np.all(limit == limit.flat[0]) else limit


def requantize(ops, q, m: Multiplier, bits: int | None = None, bias=None):
    """q (+ bias) at scale s_in -> round((q + bias) * s_in / s_out) at s_out, with m = s_in / s_out; clipped to
    signed `bits`.

    round half up: floor((q b + 2^(c-1)) / 2^c) for a dyadic m, floor((q + floor(d/2)) / d) for m = 1/d. A `bias`
    (a per-channel vector: a linear layer's) joins the constants the rounding adds anyway, b * bias + 2^(c-1) or
    bias + floor(d/2), and the limits move by it: one element-wise Add fewer than adding it to q first.
    """
    bias = np.zeros((), dtype=np.int64) if bias is None else np.asarray(bias, dtype=np.int64)
    if isinstance(m, Divisor):
        if m.limit is not None:  # q + bias within the limit
            q = ops.clip(q, -m.limit - bias, m.limit - bias)
        out = ops.floor_div(q, m.d, plus=np.asarray(m.d) // 2 + bias)
    elif m.limit is None:
        out = ops.floor_shift(ops.mul(q, m.b), m.c, plus=m.half + bias * m.b)
    else:
        out = ops.floor_shift(ops.clip_mul(q, -m.limit - bias, m.limit - bias, m.b), m.c, plus=m.half + bias * m.b)
    return out if bits is None else ops.clip(out, -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)


def linear_requantized(ops, x, params: LinearParams, m: Multiplier, bits: int | None = None):
    """A linear layer (int8 x int8 -> int32 plus bias) requantized, the bias folded into the requantization (see
    `requantize`)."""
    return requantize(ops, ops.matmul(x, params.weight), m, bits, bias=params.bias)


def i_poly(ops, q, scale: float, a: float, b: float, c: float):
    """a (x + b)^2 + c in integers for a > 0: (q + floor(b/S))^2 + floor(c/(a S^2)) at scale a S^2."""
    q_b, q_c = math.floor(b / scale), math.floor(c / (a * scale * scale))
    shifted = ops.add(q, q_b)
    return ops.add(ops.mul(shifted, shifted), q_c), a * scale * scale


def i_erf(ops, q, scale: float):
    """I-BERT's i-erf: sign(x) [1 - |a| (min(|x|, -b) + b)^2], returned as (q_erf, scale, q_one).

    q_one is the integer that means 1.0 at the returned scale (GELU adds it). The value is shifted
    right by a build-time constant so that q_one stays within ERF_ONE_BITS.
    """
    q_b = math.floor(GELU_B / scale)
    poly_scale = -GELU_A * scale * scale
    shift = max(0, math.ceil(math.log2(1.0 / poly_scale)) - ERF_ONE_BITS)
    q_one = math.floor(1.0 / poly_scale)
    clipped = ops.minimum(ops.abs(q), -q_b)
    base = ops.add(clipped, q_b)
    square = ops.mul(base, base)
    magnitude = ops.floor_shift(ops.sub(q_one, square), shift)
    signed = ops.where(ops.is_negative(q), ops.sub(0, magnitude), magnitude)
    return signed, poly_scale * 2**shift, q_one // 2**shift


def i_gelu(ops, q, scale: float):
    """GELU(x) = x (1 + erf(x / sqrt 2)) / 2 -> (q_out, scale) with q_out = q (q_erf + q_one)."""
    q_erf, erf_scale, q_one = i_erf(ops, q, scale / math.sqrt(2.0))
    return ops.mul(q, ops.add(q_erf, q_one)), scale * erf_scale / 2


def gelu_table(input_scale: float, input_bits: int) -> tuple[np.ndarray, float]:
    """i-GELU tabulated over every `input_bits` input q (at index q + 2^(bits-1) - 1), and its output scale.

    The table is the kernel's integer function computed once at build time: one lookup replaces its 15
    element-wise ops (measured on onnxruntime 1.31, 196,608 int32 values: GatherElements 0.22 ms, each op it
    replaces 40-140 us). The values fit int32 (GELU_BITS inputs times i-erf's ERF_ONE_BITS).
    """
    top = 2 ** (input_bits - 1) - 1
    gelu, scale = i_gelu(TORCH, torch.arange(-top, top + 1), input_scale)
    return gelu.numpy().astype(np.int32), scale


def i_exp(ops, q, scale: float, down: int = 0):
    """exp(x) for x <= 0: x = -ln2 z + p, exp(p) by I-BERT's polynomial, then shift right by z (and by `down`
    more, at 2^down times the scale, to keep the values narrow; shifts stop at 31, which empties a value
    below 2^31 as any larger shift would)."""
    q_ln2 = math.floor(math.log(2.0) / scale)
    if q_ln2 < 16:
        raise InternalError(f"i-exp input scale {scale:.3g} is too coarse (ln2 is {q_ln2} steps; need >= 16)")
    # Both clips state what holds anyway (x <= 0; p in (-ln2, 0]), so that the emitting backend's intervals
    # know it: the polynomial's square then fits int32.
    q = ops.clip(q, -EXP_RANGE * q_ln2, 0)
    z = ops.div_nonneg(ops.sub(0, q), q_ln2)
    p = ops.clip(ops.add(q, ops.mul(z, q_ln2)), 1 - q_ln2, 0)
    poly, poly_scale = i_poly(ops, p, scale, EXP_A, EXP_B, EXP_C)
    if down and exp_bound(scale) < 2**31:
        z = ops.minimum(ops.add(z, down), 31)
    elif down:
        z = ops.add(z, down)
    return ops.shift_right(poly, z), poly_scale * 2**down


def exp_bound(scale: float) -> int:
    """The largest integer i-exp's polynomial gives at `scale` (at p = 0, where (p + q_b)^2 is largest)."""
    q_b, q_c = math.floor(EXP_B / scale), math.floor(EXP_C / (EXP_A * scale * scale))
    return q_b * q_b + q_c


def i_softmax(
    ops, q, scale: float, key_mask, out_bits: int = 8, max_keys: int | None = None, q_bound: int | None = None
):
    """Softmax over the last axis where `key_mask` is true -> unsigned `out_bits` integers at 2^-out_bits.

    exp(q - max) is i-exp tabulated by the distance max - q (`exp_table`): one lookup in place of i-exp's ops.
    Masked keys are pushed 2^30 below every real score, past the table's end, where its last entry is exactly 0.
    Normalisation is the integer division round(e * 2^bits / sum(e)).
    With `max_keys` (a bound on the number of keys) the exponentials are shifted down just enough that a row
    sum of them, and each times 2^out_bits, fit int32 (the largest keeps >= 2^20 levels, so the mass lost to
    the shift is below max_keys x 2^-20 of a row); `q_bound` bounds |q| for the same reason.
    """
    q = _coarsen(ops, q, scale, q_bound)
    scale = max(scale, SOFTMAX_FINEST_SCALE)
    masked = ops.add(q, ops.where(key_mask, 0, -(2**30)))  # scores are int32 (|q| < 127^2 x head size)
    down = 0
    if max_keys:
        widest = max(int(max_keys).bit_length(), out_bits + 1)
        down = max(0, exp_bound(scale).bit_length() + widest - 30)
    table = exp_table(scale, down)
    distance = ops.minimum(ops.sub(ops.reduce_max(masked, -1), masked), len(table) - 1)
    e = ops.lookup(table, distance)
    total = ops.maximum(ops.reduce_sum(e, -1, max_keys), 1)
    # Round to nearest (add half the divisor): flooring would bias every row's sum low.
    half_total = ops.floor_shift(total, 1)
    probs = ops.div_nonneg(ops.add(ops.mul(e, 2**out_bits), half_total), total)
    return ops.minimum(probs, 2**out_bits - 1), 2.0**-out_bits


@functools.lru_cache(maxsize=64)
def exp_table(scale: float, down: int) -> np.ndarray:
    """i-exp of -d at `scale` (shifted down by `down`) for every distance d from 0 to where it stays 0, then one
    0 more: the entry every larger distance (a masked key) reads. The entries are i-exp's own integers; past
    I-BERT's clamp at -30 ln2 they are 0 instead of exp(-30 ln2), a change of at most one level.
    """
    q_ln2 = math.floor(math.log(2.0) / scale)
    values = i_exp(TORCH, -torch.arange(EXP_RANGE * q_ln2 + 1), scale, down)[0].numpy()
    nonzero = np.flatnonzero(values)
    length = int(nonzero[-1]) + 1 if len(nonzero) else 0
    table = np.zeros(length + 1, dtype=np.int32 if values.max(initial=0) < 2**31 else np.int64)
    table[:length] = values[:length]
    table.flags.writeable = False  # cached and shared
    return table


def _coarsen(ops, q, scale: float, q_bound: int | None):
    """Scores finer than SOFTMAX_FINEST_SCALE would make exp's integers (and their row sums) too wide."""
    if scale >= SOFTMAX_FINEST_SCALE:
        return q
    m = scale / SOFTMAX_FINEST_SCALE
    return requantize(ops, q, dyadic(m) if q_bound is None else requantizer(m, q_bound, None))


def i_tanh(ops, q, scale: float, out_bits: int = 8):
    """tanh(|x|) = (1 - e) / (1 + e) with e = exp(-2|x|) from i-exp; sign restored; at 1/(2^(bits-1) - 1)."""
    e, e_scale = i_exp(ops, ops.sub(0, ops.abs(q)), 2 * scale)
    q_one = math.floor(1.0 / e_scale)
    top = 2 ** (out_bits - 1) - 1
    e = ops.minimum(e, q_one)
    numerator = ops.add(ops.mul(ops.sub(q_one, e), 2 * top), ops.add(q_one, e))  # + half the divisor: round
    magnitude = ops.div_nonneg(numerator, ops.mul(ops.add(q_one, e), 2))
    return ops.where(ops.is_negative(q), ops.sub(0, magnitude), magnitude), 1.0 / top


RSQRT_BITS = 12  # the reciprocal square root's table: read with 11-12 significant bits of the variance


@functools.lru_cache(maxsize=8)
def rsqrt_table(big_r: int) -> np.ndarray:
    """round(2^R / sqrt(m)) for m < 2^RSQRT_BITS, capped at its value at m = 2^(RSQRT_BITS - 2) (the smallest
    mantissa `rsqrt` reads, but for a zero variance, whose row is all zeros)."""
    m = np.arange(2**RSQRT_BITS, dtype=np.float64)
    cap = 2.0 ** (big_r - RSQRT_BITS // 2 + 1)
    table = np.minimum(np.round(2.0**big_r / np.sqrt(np.maximum(m, 1))), cap).astype(np.int64)
    table.flags.writeable = False  # cached and shared
    return table


def rsqrt(ops, v, big_r: int):
    """1 / sqrt(v) for v >= 0 as (r, t): 2^R / sqrt(v) ~ r / 2^t, r within about 2^-12, on one value per row.

    v = m 4^t with the mantissa m in [2^(B-2), 2^B) (B = RSQRT_BITS; t may be negative), r = table[m] in
    (2^(R - B/2), 2^(R - B/2 + 1)]: the caller shifts by t, where a shifted reciprocal would lose r's low bits.
    """
    t = ops.floor_shift(ops.add(ops.bit_length(v), 1 - RSQRT_BITS), 1)
    up, down = ops.maximum(ops.sub(0, t), 0), ops.maximum(t, 0)
    mantissa = ops.shift_right(ops.mul(v, ops.gather(POW2, ops.add(up, up))), ops.add(down, down))
    return ops.lookup(rsqrt_table(big_r), mantissa), t


@dataclass(frozen=True)
class LayerNormParams:
    """gamma at 2^-G, beta at 2^-(K+G), and the requantization from 2^-(K+G) to the output scale."""

    gamma: np.ndarray
    beta: np.ndarray
    out: Multiplier
    out_bits: int
    out_scale: float


def layernorm_params(gamma: np.ndarray, beta: np.ndarray, out_scale: float, out_bits: int) -> LayerNormParams:
    g_bits = LN_GAMMA_BITS - max(0, math.ceil(math.log2(max(float(np.abs(gamma).max()), 1e-12))))
    gamma_q = np.round(gamma * 2.0**g_bits).astype(np.int64)
    beta_q = np.round(beta * 2.0 ** (g_bits + LN_FRACTION_BITS)).astype(np.int64)
    affine_bound = _normalized_bound(len(gamma)) * int(np.abs(gamma_q).max()) + int(np.abs(beta_q).max())
    m = requantizer(2.0 ** -(g_bits + LN_FRACTION_BITS) / out_scale, affine_bound, out_bits)
    return LayerNormParams(gamma_q, beta_q, m, out_bits, out_scale)


def _round_to_bits(ops, x, bits, width: int):
    """(round(x / 2^z), z) per row, z = max(0, bits - width): the row's largest |x| (of `bits` bits) in `width`."""
    z = ops.clip(ops.sub(bits, width), 0, ROW_SHIFT_MAX)
    return ops.clip(ops.floor_shift(x, z, plus=_half(ops, z)), -(2**width), 2**width), z


def _square_sum_bits(n: int) -> int:
    """The most bits w such that n squares of |x| <= 2^w sum within int32."""
    w = 0
    while n * 4 ** (w + 1) < 2**31:
        w += 1
    return w


def _half(ops, z):
    """2^(z-1) per row, or 0 for z = 0: what a rounding shift by z adds first."""
    return ops.floor_shift(ops.gather(POW2[: ROW_SHIFT_MAX + 1], z), 1)


def _normalized_bound(n: int) -> int:
    """|(x - mean) / std| <= sqrt(n) for the exact std; the integer one, from rounded values and a floored variance,
    may be up to 2x smaller, so 2 sqrt(n), at 2^-LN_FRACTION_BITS."""
    return 2 * (math.isqrt(n) + 1) << LN_FRACTION_BITS


def i_layernorm(ops, q, params: LayerNormParams):
    """LayerNorm over the last axis in int32 (I-BERT's i-LayerNorm with its sums kept narrow); the input scale
    cancels (eps is below one integer step, dropped).

        c = x - floor(sum / n)                      the centered row
        c' = round(c / 2^z), |c'| <= 2^W            per row, the row's largest |c| in W = 14 bits (an outlier
                                                    channel 100x the rest leaves the rest 7 bits)
        c'' = round(c' / 2^d)                       the same in w bits (d = W - w), so that n squares sum
                                                    within int32 (w = 11 for n = 384)
        v = floor(sum(c''^2) 2^F / n)               the variance at 2^-F
        (r, t) = rsqrt(v)                           2^R / std(c'') ~ r 2^(F/2) / 2^t (`rsqrt`), r to 2^-12
        y = round(c' r / 2^(R-K-F/2+t+d)) gamma + beta
                                                    (c / std) at 2^-K, times gamma, then requantized

    Every per-element op is int32; the square root and the shifts' amounts are worked out on one value per row.
    (c / std) keeps K = 10 fraction bits before the output.
    """
    n = len(params.gamma)
    big_r = 28 - LN_WIDE_BITS + RSQRT_BITS // 2  # |c'| r <= 2^W 2^(R - B/2 + 1) = 2^29
    centered = ops.sub(q, ops.floor_div(ops.reduce_sum(q, -1, n), n))
    wide, _ = _round_to_bits(ops, centered, ops.bit_length(ops.reduce_max(ops.abs(centered), -1)), LN_WIDE_BITS)
    drop = max(0, LN_WIDE_BITS - _square_sum_bits(n))
    narrow = ops.floor_shift(wide, drop, plus=(1 << drop) >> 1) if drop else wide
    # the variance at 2^-VAR_FRACTION_BITS: with a floor to whole steps, a variance of 200 would lose 0.5%
    variance = ops.div_nonneg(ops.mul(ops.reduce_sum(ops.mul(narrow, narrow), -1, n), 2**VAR_FRACTION_BITS), n)
    reciprocal, t = rsqrt(ops, variance, big_r)
    # c / std = c' / (std(c'') 2^d) = c' r 2^(F/2 - R - t - d): the shift R - K - F/2 + t + d is >= 0 (t >= -B/2)
    constant = big_r - LN_FRACTION_BITS - VAR_FRACTION_BITS // 2 + drop
    shift = ops.clip(ops.add(t, constant), 0, ROW_SHIFT_MAX)
    normalized = ops.floor_shift(ops.mul(wide, reciprocal), shift, plus=_half(ops, shift))
    bound = _normalized_bound(n)
    affine = ops.add(ops.mul(ops.clip(normalized, -bound, bound), params.gamma), params.beta)
    return requantize(ops, affine, params.out, params.out_bits)


@dataclass(frozen=True)
class LinearParams:
    """int8 weights [in, out] (symmetric, per output channel), int32 bias at s_x * s_w."""

    weight: np.ndarray  # int8 values, shape [in, out]
    bias: np.ndarray  # int64 holding int32 values
    acc_scale: np.ndarray  # s_x * s_w per output channel


def linear_params(weight: np.ndarray, bias: np.ndarray | None, input_scale: float) -> LinearParams:
    """weight [out, in] float -> int8 per output channel; bias -> round(b / (s_x s_w)) in int32."""
    w_scale = np.maximum(np.abs(weight).max(axis=1), 1e-12) / 127.0
    weight_q = np.clip(np.round(weight / w_scale[:, None]), -127, 127).astype(np.int8)
    acc_scale = input_scale * w_scale
    bias = np.zeros(len(w_scale)) if bias is None else bias
    bias_q = np.clip(np.round(bias / acc_scale), -(2**31), 2**31 - 1).astype(np.int64)
    return LinearParams(np.ascontiguousarray(weight_q.T), bias_q, acc_scale)


def quantize_float(x: torch.Tensor, scale, bits: int) -> torch.Tensor:
    """Float -> symmetric integers at `scale` (round half to even, clipped), as int64."""
    top = 2 ** (bits - 1) - 1
    return torch.clamp(torch.round(x / torch.as_tensor(scale)), -top, top).long()
