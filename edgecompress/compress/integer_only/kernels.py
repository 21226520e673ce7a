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

import math
from dataclasses import dataclass

import numpy as np
import torch

from edgecompress.errors import InternalError

DYADIC_BITS = 24  # b in [2^23, 2^24]: relative error of a requantization multiplier <= 2^-24
# An int32 requantization (`requantizer`): |q| * b stays within 2^29, leaving room for the rounding and the
# offset that makes a floor non-negative; b (or a divisor d) keeps at least 8 bits, relative error <= 2^-9.
INT32_PRODUCT_BITS = 29
INT32_MIN_BITS = 8
LN_FRACTION_BITS = 16  # LayerNorm's normalized value (x - mean) / std, fixed point at 2^-16
# The largest |gamma| of a LayerNorm in 16 bits. Bound: |normalized| <= 2 sqrt(n) 2^16 with the integer
# std (2^21.3 for n = 384), times gamma 2^16 plus beta, times a 24-bit dyadic multiplier, stays below
# 2^62 (what floor_shift needs).
LN_GAMMA_BITS = 16
NEWTON_STEPS = 6  # from an initial guess within 2x of sqrt(n), 6 steps reach isqrt(n) for n < 2^62
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
        self._constants: dict[int, tuple] = {}

    def _t(self, value, dtype=torch.int64):
        """Numpy constants (weights, per-channel vectors) become tensors once; ints stay Python ints."""
        if isinstance(value, np.ndarray):
            key = (id(value), dtype)
            if key not in self._constants or self._constants[key][0] is not value:
                self._constants[key] = (value, torch.from_numpy(value.astype(np.int64)).to(dtype))
            return self._constants[key][1]
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
        """floor((a + plus) / 2^c) for signed a and constants c >= 0, plus (ints or per-channel vectors)."""
        return torch.bitwise_right_shift(self.add(a, plus), self._t(c))  # arithmetic shift on int64: floor

    def shift_right(self, a, z):
        """floor(a / 2^z) for a >= 0 and a tensor z in [0, 62]."""
        return torch.bitwise_right_shift(a, z)

    def minimum(self, a, b):
        return torch.minimum(torch.as_tensor(self._t(a)), torch.as_tensor(self._t(b)))

    def maximum(self, a, b):
        return torch.maximum(torch.as_tensor(self._t(a)), torch.as_tensor(self._t(b)))

    def clip(self, a, low: int, high: int):
        return torch.clamp(a, low, high)

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
    # |q| is clipped to this first (None: not): exact when the output is clipped, since every input beyond it
    # gives a clipped output anyway; it bounds q * b, so that the product fits int32 (see `requantizer`).
    limit: int | None = None

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
    DYADIC_BITS dyadic: the inputs are first clipped where the output clips (`limit`), then c is the largest
    shift keeping limit * b <= 2^INT32_PRODUCT_BITS. When m is so small that b would keep fewer than
    INT32_MIN_BITS bits, a division by d = round(1/m) is more precise (relative error 1/2d). When neither keeps
    INT32_MIN_BITS bits (a relative error up to 2^-9), the multiplier is the DYADIC_BITS one and runs in int64.
    """
    m = np.asarray(dyadic(m).value, dtype=np.float64)  # validated
    limit = in_bound
    if out_bits is not None:
        limit = min(in_bound, int(math.ceil(2 ** (out_bits - 1) / float(m.min()))) + 2)
    clip = limit if limit < in_bound else None
    c = np.floor(np.log2(2.0**INT32_PRODUCT_BITS / (limit * m))).astype(np.int64)
    if np.all(c >= 1) and np.all(c <= 31) and np.all(np.round(m * 2.0**c) >= 2**INT32_MIN_BITS):
        return _dyadic(m, c, clip)
    d = np.round(1.0 / m).astype(np.int64)
    if np.all(d >= 2**INT32_MIN_BITS) and limit + int(d.max()) < 2**INT32_PRODUCT_BITS:
        return Divisor(int(d) if d.ndim == 0 else d, clip)
    return dyadic(m)


def requantize(ops, q, m: Multiplier, bits: int | None = None):
    """q at scale s_in -> round(q * s_in / s_out) at s_out, with m = s_in / s_out; clipped to signed `bits`.

    round half up: floor((q b + 2^(c-1)) / 2^c) for a dyadic m, floor((q + floor(d/2)) / d) for m = 1/d.
    """
    if m.limit is not None:
        q = ops.clip(q, -m.limit, m.limit)
    if isinstance(m, Divisor):
        out = ops.floor_div(q, m.d, plus=np.asarray(m.d) // 2)
    else:
        out = ops.floor_shift(ops.mul(q, m.b), m.c, plus=m.half)
    return out if bits is None else ops.clip(out, -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)


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

    Masked keys get exactly 0. Normalisation is the integer division round(e * 2^bits / sum(e)).
    With `max_keys` (a bound on the number of keys) the exponentials are shifted down just enough that a row
    sum of them, and each times 2^out_bits, fit int32 (the largest keeps >= 2^20 levels, so the mass lost to
    the shift is below max_keys x 2^-20 of a row); `q_bound` bounds |q| for the same reason.
    """
    q = _coarsen(ops, q, scale, q_bound)
    scale = max(scale, SOFTMAX_FINEST_SCALE)
    masked = ops.where(key_mask, q, -(2**30))  # scores are int32 (|q| < 127^2 x head size)
    shifted = ops.sub(masked, ops.reduce_max(masked, -1))
    down = 0
    if max_keys:
        widest = max(int(max_keys).bit_length(), out_bits + 1)
        down = max(0, exp_bound(scale).bit_length() + widest - 30)
    e, _ = i_exp(ops, shifted, scale, down)
    e = ops.where(key_mask, e, 0)
    total = ops.maximum(ops.reduce_sum(e, -1, max_keys), 1)
    # Round to nearest (add half the divisor): flooring would bias every row's sum low.
    half_total = ops.floor_shift(total, 1)
    probs = ops.div_nonneg(ops.add(ops.mul(e, 2**out_bits), half_total), total)
    return ops.minimum(probs, 2**out_bits - 1), 2.0**-out_bits


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


def isqrt(ops, n):
    """floor(sqrt(n)) for 1 <= n < 2^62 (n = 0 gives 1): Newton from 2^ceil(bits/2) >= sqrt(n).

    The guess is within 2x of sqrt(n), so NEWTON_STEPS fixed steps converge; `minimum` keeps the
    iteration from oscillating between isqrt(n) and isqrt(n) + 1.
    """
    n = ops.maximum(n, 1)
    x = ops.gather(POW2, ops.floor_shift(ops.add(ops.bit_length(n), 1), 1))
    for _ in range(NEWTON_STEPS):
        x = ops.minimum(x, ops.floor_shift(ops.add(x, ops.div_nonneg(n, x)), 1))
    return x


@dataclass(frozen=True)
class LayerNormParams:
    """gamma at 2^-G, beta at 2^-(K+G), and the requantization from 2^-(K+G) to the output scale."""

    gamma: np.ndarray
    beta: np.ndarray
    out: Dyadic
    out_bits: int
    out_scale: float


def layernorm_params(gamma: np.ndarray, beta: np.ndarray, out_scale: float, out_bits: int) -> LayerNormParams:
    g_bits = LN_GAMMA_BITS - max(0, math.ceil(math.log2(max(float(np.abs(gamma).max()), 1e-12))))
    gamma_q = np.round(gamma * 2.0**g_bits).astype(np.int64)
    beta_q = np.round(beta * 2.0 ** (g_bits + LN_FRACTION_BITS)).astype(np.int64)
    m = dyadic(2.0 ** -(g_bits + LN_FRACTION_BITS) / out_scale)
    return LayerNormParams(gamma_q, beta_q, m, out_bits, out_scale)


def i_layernorm(ops, q, params: LayerNormParams):
    """LayerNorm over the last axis; the input scale cancels (eps is below one integer step, dropped).

    mean = floor(sum / n); var = floor(sum((x - mean)^2) / n); std = isqrt(var);
    y = floor((x - mean) 2^K / std) gamma + beta; then requantized to the output scale.
    """
    n = len(params.gamma)
    centered = ops.sub(q, ops.floor_div(ops.reduce_sum(q, -1, n), n))
    variance = ops.div_nonneg(ops.reduce_sum(ops.mul(centered, centered), -1, n), n)
    normalized = ops.floor_div(ops.mul(centered, 2**LN_FRACTION_BITS), isqrt(ops, variance))
    affine = ops.add(ops.mul(normalized, params.gamma), params.beta)
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


def i_linear(ops, q, params: LinearParams):
    """int8 x int8 -> int32 accumulation plus bias, at scale `params.acc_scale` (per output channel)."""
    return ops.add(ops.matmul(q, params.weight), params.bias)


def quantize_float(x: torch.Tensor, scale, bits: int) -> torch.Tensor:
    """Float -> symmetric integers at `scale` (round half to even, clipped), as int64."""
    top = 2 ** (bits - 1) - 1
    return torch.clamp(torch.round(x / torch.as_tensor(scale)), -top, top).long()
