"""TFLite lowerings of the integer arithmetic of integer-only (I-BERT) graphs, exact on LiteRT's integer kernels.

The integer-only pass (`compress/integer_only/onnx_ops.py`) writes int32 ops where the values' intervals allow
and int64 elsewhere; this file writes each such node as LiteRT builtins computing the same integers. What
LiteRT 2.3 runs, measured on the host with its reference kernels (tests/test_tflite_integer_ops.py guards it):
- int32 and int64 ADD, SUB, MUL, MINIMUM, MAXIMUM, LESS/GREATER(_EQUAL), EQUAL, SELECT_V2, SUM, REDUCE_MAX,
  GATHER, TRANSPOSE, RESHAPE, FLOOR_MOD and CAST: exact, so the standard lowerings serve them. int64 MUL
  wraps modulo 2^64 (the division below relies on it, see `_exact_quotient`);
- int32 DIV truncates toward zero, as ONNX Div does: int32 Div keeps the standard lowering;
- int64 DIV and FLOOR_DIV, int64 RIGHT_SHIFT and int64 ABS have no kernel: int64 Div and the uint64 BitShift
  are composed below from the ops that exist;
- FULLY_CONNECTED refuses int32 outputs for int8 inputs; BATCH_MATMUL int8 x int8 -> int32 is exact but
  ignores the operands' zero points: MatMulInteger lowers to it, the zero point applied through B's column sums;
- CAST between integer types wraps modulo 2^bits, as ONNX Cast does;
- there are no UINT32 or UINT64 tensors in the writer: ONNX's unsigned values (only ever the operands of a
  BitShift, cast from and back to the signed type of the same width) are carried as the same bits in the
  signed type, so those Casts write nothing.
XNNPACK takes none of these integer builtins: every node runs on LiteRT's own kernels.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

from edgecompress.backends.tflite.registry import lowers, lowers_int8

if TYPE_CHECKING:  # the lowering imports this file's package; the registry keeps it a leaf
    from edgecompress.backends.tflite.lowering import Lowering

_I8, _U8, _I32, _I64 = (np.dtype(t) for t in (np.int8, np.uint8, np.int32, np.int64))
_BOOL = np.dtype(np.bool_)
# ONNX unsigned types -> the signed type carrying the same bits in LiteRT
_CARRIER = {np.dtype(np.uint32): _I32, np.dtype(np.uint64): _I64}
_INT32_MIN = -(2**31)
NEWTON_STEPS = 5  # a 2-adic inverse of an odd o starts right to 3 bits (o * o = 1 mod 8); 5 steps reach 96 >= 64


def carrier(lw: Lowering, name: str) -> np.dtype:
    """The LiteRT tensor type of an ONNX value: its own, or the signed type of an unsigned one."""
    dtype = lw.dtype(name)
    return _CARRIER.get(dtype, dtype)


class _Writer:
    """Intermediate tensors of one lowering, of one shape unless told: `op(builtin, inputs, dtype)`."""

    def __init__(self, lw: Lowering, shape) -> None:
        self.lw, self.shape = lw, tuple(shape)

    def op(self, builtin: str, inputs: list[int], dtype, shape=None, options=None, out: str | None = None) -> int:
        if out is not None:
            return self.lw.emit(builtin, inputs, out=out, dtype=dtype, options=options)
        return self.lw.emit(builtin, inputs, shape=self.shape if shape is None else shape, dtype=dtype, options=options)

    def const(self, value, dtype) -> int:
        array = np.asarray(value, dtype=dtype)
        digest = hashlib.sha256(array.tobytes()).hexdigest()[:16]  # one tensor per distinct constant
        return self.lw.const(array, f"int/{array.dtype}{list(array.shape)}/{digest}")

    def cast(self, x: int, dtype, shape=None) -> int:
        return self.op("CAST", [x], dtype, shape)


# ---- Cast and Div: integer forms tried before the standard lowerings ------------------------------------------


@lowers_int8("Cast")
def reinterpret_cast(lw: Lowering, node) -> bool:
    """`Cast(X: int32 <-> uint32)` and `Cast(X: int64 <-> uint64)` -> nothing: the same bits (see the module).
    `Cast(X, to=uint8)` read only by MatMulInteger -> written only if something else reads it: MatMulInteger
    takes its operand from before the Cast (`_signed_operand`)."""
    source, target = lw.dtype(node.input[0]), lw.dtype(node.output[0])
    if (
        source.itemsize == target.itemsize
        and source.kind in "iu"
        and target.kind in "iu"
        and {source, target} & set(_CARRIER)
    ):
        if target in _CARRIER:
            check_unsigned_readers(lw, node, node.output[0])
        lw.bind(node.output[0], lw.value(node.input[0]))
        return True
    if target == _U8 and all(r.op_type == "MatMulInteger" for r in lw.readers.get(node.output[0], [])):
        if node.output[0] not in lw.graph_outputs:
            lw.defer(node.output[0], lambda: lw.emit("CAST", [lw.value(node.input[0])], out=node.output[0]))
            return True
    return False


def check_unsigned_readers(lw: Lowering, node, name: str) -> None:
    """An unsigned value carried in the signed type is right only where its readers do not compare, widen or
    output it: a BitShift, or a Cast to the other type of its width (the integer-only graph's only uses)."""
    width = lw.dtype(name).itemsize
    for reader in lw.readers.get(name, []):
        if reader.op_type == "BitShift" or (reader.op_type == "Cast" and lw.dtype(reader.output[0]).itemsize == width):
            continue
        raise lw.unsupported(
            node,
            f"its {lw.dtype(name)} result is read by {reader.op_type} '{reader.name}': LiteRT has no "
            f"{lw.dtype(name)} arithmetic and carries the bits in the signed type, which only a BitShift or a "
            "same-width Cast reads right",
        )
    if name in lw.graph_outputs:
        raise lw.unsupported(node, f"its {lw.dtype(name)} result is a graph output (LiteRT has no such tensors)")


@lowers_int8("Div")
def int64_div(lw: Lowering, node) -> bool:
    """int64 `Div(X, D)` (ONNX: truncated toward zero) -> `FLOOR_MOD`, an exact division of `X - (X mod D)` by D
    (`_exact_quotient`) and the step from floor to truncation; other types keep the standard DIV (int32 DIV
    truncates like ONNX, measured). `Div(Sub(Y, Mod(Y, D)), D)`, how the integer-only graph floors by a run-time
    divisor, divides a multiple of D: the exact division alone."""
    if lw.dtype(node.output[0]) != _I64:
        return False
    w = _Writer(lw, lw.shape(node.output[0]))
    x, d = lw.value(node.input[0]), lw.value(node.input[1])
    d_shape = lw.shape(node.input[1])
    divisor = lw.constant(node.input[1])
    if divisor is not None and not np.all(divisor != 0):
        raise lw.unsupported(node, "a constant divisor with a zero in it")
    if _a_multiple(lw, node.input[0], node.input[1]) and lw.shape(node.input[0]) == lw.shape(node.output[0]):
        lw.bind(node.output[0], _exact_quotient(w, x, d, divisor, d_shape))
        return True
    remainder = w.op("FLOOR_MOD", [x, d], _I64)  # sign of d: x - r is a multiple of d, and (x - r) / d = floor
    floor = _exact_quotient(w, w.op("SUB", [x, remainder], _I64), d, divisor, d_shape)
    # trunc = floor + 1 where the remainder is not 0 and x, d differ in sign
    x_negative = w.op("LESS", [x, w.const(0, _I64)], _BOOL, lw.shape(node.input[0]))
    if divisor is not None and np.all(divisor > 0):
        signs_differ = x_negative
    else:
        signs_differ = w.op("NOT_EQUAL", [x_negative, _is_negative(w, d, divisor, d_shape)], _BOOL)
    inexact = w.op("NOT_EQUAL", [remainder, w.const(0, _I64)], _BOOL)
    step = w.cast(w.op("LOGICAL_AND", [inexact, signs_differ], _BOOL), _I64)
    w.op("ADD", [floor, step], _I64, out=node.output[0], options=lw.options("Add"))
    return True


def _a_multiple(lw: Lowering, numerator: str, divisor: str) -> bool:
    """`numerator` is `Sub(Y, Mod(Y, divisor))` with fmod=0: Y minus its floor remainder, a multiple of divisor."""
    sub = lw.producers.get(numerator)
    if sub is None or sub.op_type != "Sub":
        return False
    mod = lw.producers.get(sub.input[1])
    return (
        mod is not None
        and mod.op_type == "Mod"
        and not lw.attr(mod, "fmod", 0)
        and list(mod.input) == [sub.input[0], divisor]
    )


def _is_negative(w: _Writer, d: int, constant: np.ndarray | None, shape) -> int:
    if constant is not None:
        return w.const(np.asarray(constant) < 0, np.bool_)
    return w.op("LESS", [d, w.const(0, _I64)], _BOOL, shape)


def _exact_quotient(w: _Writer, m: int, d: int, constant: np.ndarray | None, d_shape) -> int:
    """m / d for an int64 m that d divides exactly, without a division: with d = 2^t o (o odd),
    m / d = (m >> t) * o^-1 mod 2^64, because m >> t = (m / d) o exactly and the quotient fits int64.
    The 2-adic inverse o^-1 is Newton's x <- x (2 - o x) (each step doubles the correct low bits); LiteRT's int64
    MUL and SUB wrap modulo 2^64 (measured), which is the arithmetic the inverse lives in. A constant d has t
    and o^-1 computed here; a run-time d (a row sum found at run time) counts its trailing zeros with FLOOR_MOD."""
    if constant is not None:
        d64 = np.asarray(constant, dtype=np.int64)
        t = _trailing_zeros(d64)
        odd = d64 >> t
        inverse = np.vectorize(lambda o: _wrap64(pow(int(o), -1, 1 << 64)))(odd).astype(np.int64)
        shifted = m if not t.any() else shift_right_64(w, m, t, logical=False)
        return shifted if np.all(inverse == 1) else w.op("MUL", [shifted, w.const(inverse, _I64)], _I64)
    powers = w.const(np.array([1 << j for j in range(1, 63)], np.int64), _I64)
    expanded = w.op("RESHAPE", [d, w.const(list(d_shape) + [1], np.int32)], _I64, list(d_shape) + [1])
    divisible = w.op("FLOOR_MOD", [expanded, powers], _I64, list(d_shape) + [62])
    zero = w.op("EQUAL", [divisible, w.const(0, _I64)], _BOOL, list(d_shape) + [62])
    t = w.op(
        "SUM",
        [w.cast(zero, _I32, list(d_shape) + [62]), w.const([len(d_shape)], np.int32)],
        _I32,
        d_shape,
        options=w.lw.options("Reducer", keepDims=False),
    )
    odd = shift_right_64(w, d, t, logical=False, shape=d_shape)
    inverse = odd
    two = w.const(2, _I64)
    for _ in range(NEWTON_STEPS):
        error = w.op("SUB", [two, w.op("MUL", [odd, inverse], _I64, d_shape)], _I64, d_shape)
        inverse = w.op("MUL", [inverse, error], _I64, d_shape)
    return w.op("MUL", [shift_right_64(w, m, t, logical=False, amount_shape=d_shape), inverse], _I64)


def _trailing_zeros(d: np.ndarray) -> np.ndarray:
    t = np.zeros(d.shape, np.int64)
    for index, value in np.ndenumerate(d):
        v = int(value)
        t[index] = (v & -v).bit_length() - 1
    return t


def _wrap64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


# ---- Mod, BitShift, MatMulInteger --------------------------------------------------------------------------


@lowers("Mod")
def mod(lw: Lowering, node) -> None:
    """`Mod(X, D, fmod=0)` (integers: the remainder takes the divisor's sign) -> `FLOOR_MOD(X, D)`, int32 or int64."""
    if lw.attr(node, "fmod", 0):
        raise lw.unsupported(node, "fmod=1 (C's fmod; only fmod=0, floor semantics, is lowered)")
    lw.emit("FLOOR_MOD", [lw.value(name) for name in node.input], out=node.output[0])


@lowers("BitShift")
def bit_shift(lw: Lowering, node) -> None:
    """`BitShift(X: uint32 | uint64, A, direction=RIGHT)` -> a logical right shift of X's bits in int32/int64
    (`shift_right_32` / `shift_right_64`); A is a constant or a run-time tensor of amounts below the width."""
    if lw.attr(node, "direction", b"RIGHT") not in (b"RIGHT", "RIGHT"):
        raise lw.unsupported(node, "direction LEFT (only RIGHT shifts are lowered)")
    dtype = carrier(lw, node.input[0])
    if dtype not in (_I32, _I64):
        raise lw.unsupported(node, f"type {lw.dtype(node.input[0])} (uint32 and uint64 are lowered)")
    amount = lw.constant(node.input[1])
    width = dtype.itemsize * 8
    if amount is not None and (np.any(amount < 0) or np.any(amount >= width)):
        raise lw.unsupported(node, f"shift amounts outside [0, {width - 1}] (ONNX leaves them undefined)")
    w = _Writer(lw, lw.shape(node.output[0]))
    x = lw.value(node.input[0])
    if amount is None:
        amount = w.cast(lw.value(node.input[1]), _I32, lw.shape(node.input[1]))
    by = lw.shape(node.input[1])
    if dtype == _I32:
        shifted = shift_right_32(w, x, amount, amount_shape=by)
    else:
        shifted = shift_right_64(w, x, amount, logical=True, amount_shape=by)
    check_unsigned_readers(lw, node, node.output[0])
    lw.bind(node.output[0], shifted)


def shift_right_32(w: _Writer, x: int, amount, shape=None, amount_shape=None) -> int:
    """The bits of int32 `x` shifted right logically (as uint32) by `amount` (a constant or an int32 tensor in
    [0, 31]). RIGHT_SHIFT on int32 is arithmetic (floor, measured): a value with its top bit set is first made
    x + 2^31 (in range: x < 0) and 2^(31 - a) is added back after the shift."""
    shape = w.shape if shape is None else shape
    amount_shape = shape if amount_shape is None else amount_shape  # a run-time amount broadcasts to x
    if isinstance(amount, np.ndarray):
        a = amount.astype(np.int32)
        if not a.any():
            return x
        if np.all(a >= 2):  # 2^(32 - a) fits int32: FLOOR_MOD keeps the low 32 - a bits of the arithmetic shift
            asr = w.op("RIGHT_SHIFT", [x, w.const(a, np.int32)], _I32, shape)
            return w.op("FLOOR_MOD", [asr, w.const(1 << (32 - a.astype(np.int64)), np.int32)], _I32, shape)
        amount_t, top = w.const(a, np.int32), w.const(np.where(a > 0, 1 << (31 - a.astype(np.int64)), 0), np.int32)
        zero = w.const(a == 0, np.bool_)
    else:
        amount_t = amount
        table = w.const([0] + [1 << (31 - k) for k in range(1, 32)], np.int32)
        top = w.op("GATHER", [table, amount], _I32, amount_shape, options=w.lw.options("Gather", axis=0))
        zero = w.op("EQUAL", [amount, w.const(0, np.int32)], _BOOL, amount_shape)
    negative = w.op("LESS", [x, w.const(0, np.int32)], _BOOL, shape)
    low31 = w.op("SELECT_V2", [negative, w.op("SUB", [x, w.const(_INT32_MIN, np.int32)], _I32, shape), x], _I32, shape)
    shifted = w.op("RIGHT_SHIFT", [low31, amount_t], _I32, shape)
    restored = w.op(
        "ADD", [shifted, w.op("SELECT_V2", [negative, top, w.const(0, np.int32)], _I32, shape)], _I32, shape
    )
    return w.op("SELECT_V2", [zero, x, restored], _I32, shape)


def shift_right_64(w: _Writer, x: int, amount, *, logical: bool, shape=None, amount_shape=None) -> int:
    """int64 `x` shifted right by `amount` in [0, 63] (a constant array or an int32 tensor broadcasting to x):
    floor(x / 2^a) (`logical=False`), or the uint64 bits shifted (`logical=True`). LiteRT has no int64 shift:
    BITCAST splits x into its 32-bit words (lo first: the file is little-endian, as LiteRT's targets are),
        a >= 32: hi >> (a - 32)                                   (x >> a only reads hi)
        a < 32:  hi * 2^(32 - a) + (lo >>> a)                     (|hi| 2^(32 - a) < 2^63 for a >= 1)
    with hi taken as unsigned for a logical shift, and a = 0 leaving x."""
    shape = tuple(w.shape if shape is None else shape)
    by = shape if amount_shape is None else tuple(amount_shape)  # a run-time amount's shape; it broadcasts to x
    constant = isinstance(amount, np.ndarray)
    a = np.asarray(amount).astype(np.int64) if constant else np.zeros(0, np.int64)  # its own shape: it broadcasts
    if constant and not a.any():
        return x
    words = w.op("BITCAST", [x], _I32, shape + (2,))
    if constant:
        big_a, small_a = np.asarray(np.maximum(a - 32, 0)), np.asarray(np.clip(a, 1, 31))
    else:
        big_a = w.op(
            "MAXIMUM", [w.op("SUB", [amount, w.const(32, np.int32)], _I32, by), w.const(0, np.int32)], _I32, by
        )
        small_a = w.op(
            "MINIMUM", [w.op("MAXIMUM", [amount, w.const(1, np.int32)], _I32, by), w.const(31, np.int32)], _I32, by
        )

    def big() -> int:  # a >= 32: hi alone
        hi = _word(w, words, 1, shape)
        if not logical:
            amount_t = w.const(big_a, np.int32) if constant else big_a
            return w.cast(w.op("RIGHT_SHIFT", [hi, amount_t], _I32, shape), _I64, shape)
        shifted = shift_right_32(w, hi, big_a, shape, by)
        if constant and np.all(a > 32):  # a logical shift by 1 or more leaves a non-negative int32
            return w.cast(shifted, _I64, shape)
        return _unsigned64(w, shifted, shape)

    def small() -> int:  # 1 <= a < 32
        hi, lo = _word(w, words, 1, shape), _word(w, words, 0, shape)
        high = _unsigned64(w, hi, shape) if logical else w.cast(hi, _I64, shape)
        if constant:
            factor = w.const(1 << (32 - small_a), np.int64)
        else:
            table = w.const([0] + [1 << (32 - k) for k in range(1, 32)], np.int64)
            factor = w.op("GATHER", [table, small_a], _I64, by, options=w.lw.options("Gather", axis=0))
        low = w.cast(shift_right_32(w, lo, small_a, shape, by), _I64, shape)  # small_a >= 1: non-negative
        return w.op("ADD", [w.op("MUL", [high, factor], _I64, shape), low], _I64, shape)

    if constant:
        if np.all(a >= 32):
            return big()
        if np.all((a >= 1) & (a < 32)):
            return small()
        is_big, is_zero = w.const(a >= 32, np.bool_), w.const(a == 0, np.bool_)
    else:
        is_big = w.op("GREATER_EQUAL", [amount, w.const(32, np.int32)], _BOOL, by)
        is_zero = w.op("EQUAL", [amount, w.const(0, np.int32)], _BOOL, by)
    return _select(w, is_big, big(), _select(w, is_zero, x, small(), shape), shape)


def _word(w: _Writer, words: int, k: int, shape) -> int:
    begin, size = [0] * len(shape) + [k], list(shape) + [1]
    sliced = w.op("SLICE", [words, w.const(begin, np.int32), w.const(size, np.int32)], _I32, size)
    return w.op("RESHAPE", [sliced, w.const(list(shape), np.int32)], _I32, shape)


def _unsigned64(w: _Writer, word: int, shape) -> int:
    """A 32-bit word as the unsigned value it holds, in int64."""
    return w.op("FLOOR_MOD", [w.cast(word, _I64, shape), w.const(1 << 32, np.int64)], _I64, shape)


def _select(w: _Writer, cond: int, a: int, b: int, shape) -> int:
    return w.op("SELECT_V2", [cond, a, b], _I64, shape)


@lowers("MatMulInteger")
def matmul_integer(lw: Lowering, node) -> None:
    """`MatMulInteger(A: uint8 | int8, B: int8, a_zero?, b_zero?)` -> int32 `BATCH_MATMUL(A', B)` plus a column-sum
    term: (A - z) B = A' B + (c - z) colsum(B), with A' = A - c as int8 (c = 128 for uint8 A, 0 for int8 A).

    LiteRT's int8 BATCH_MATMUL with an int32 output is exact and ignores zero points (measured), so the zero point
    goes into the column-sum term, which is 0 for the integer-only graph's uint8 A with zero point 128. A uint8 A
    is read from before its Cast to uint8: the graph's `Cast(Add(x, 128))` gives x itself (CAST to int8 wraps
    modulo 256 like ONNX's Cast, measured, so this holds for any x). B's zero point must be 0 (the graph's
    weights are symmetric); B's column sums are constants for constant weights, a SUM for run-time B."""
    a, b = node.input[0], node.input[1]
    a_zero = _zero_point(lw, node, 2)
    if len(node.input) > 3 and node.input[3] and _zero_point(lw, node, 3):
        raise lw.unsupported(node, "a non-zero zero point for B")
    if carrier(lw, b) != _I8 or lw.dtype(a) not in (_U8, _I8):
        raise lw.unsupported(node, f"A of type {lw.dtype(a)} and B of {lw.dtype(b)} (uint8/int8 x int8 is lowered)")
    offset = 128 if lw.dtype(a) == _U8 else 0
    a_shape, b_shape = lw.shape(a), lw.shape(b)
    w = _Writer(lw, lw.shape(node.output[0]))
    b_tensor = lw.value(b)
    product = w.op(
        "BATCH_MATMUL", [_signed_operand(lw, w, a, offset, a_shape), b_tensor], _I32, options=lw.options("BatchMatMul")
    )
    scale = offset - a_zero
    if not scale:
        lw.bind(node.output[0], product)
        return
    weights = lw.constant(b)
    if weights is not None:
        column_sums = w.const(scale * weights.astype(np.int32).sum(axis=-2, keepdims=True), np.int32)
    else:
        reduced = tuple(b_shape[:-2]) + (1, b_shape[-1])
        summed = w.op(
            "SUM",
            [w.cast(b_tensor, _I32, b_shape), w.const([len(b_shape) - 2], np.int32)],
            _I32,
            reduced,
            options=lw.options("Reducer", keepDims=True),
        )
        column_sums = w.op("MUL", [summed, w.const(scale, np.int32)], _I32, reduced)
    lw.bind(node.output[0], w.op("ADD", [product, column_sums], _I32))


def _zero_point(lw: Lowering, node, index: int) -> int:
    if len(node.input) <= index or not node.input[index]:
        return 0
    value = lw.constant(node.input[index])
    if value is None or value.size != 1:
        raise lw.unsupported(node, "a zero point that is not a constant scalar")
    return int(value.reshape(()))


def _signed_operand(lw: Lowering, w: _Writer, a: str, offset: int, shape) -> int:
    """A - offset as an int8 tensor: A itself for int8 A (offset 0), A - 128 for uint8 A (offset 128)."""
    if lw.dtype(a) == _I8 and offset == 0:
        return lw.value(a)
    source = lw.producers.get(a)
    if source is not None and source.op_type == "Cast" and lw.dtype(source.input[0]) in (_I32, _I64):
        before = source.input[0]
        adder = lw.producers.get(before)
        if adder is not None and adder.op_type == "Add":  # Cast(Add(x, offset)): x is A - offset
            for mine, other in ((0, 1), (1, 0)):
                added = lw.constant(adder.input[other])
                if added is not None and added.size == 1 and int(added.reshape(())) == offset:
                    return w.cast(lw.value(adder.input[mine]), _I8, shape)
        wide = lw.value(before)
        dtype = lw.dtype(before)
    else:
        wide, dtype = w.cast(lw.value(a), _I32, shape), _I32
    if offset:
        wide = w.op("SUB", [wide, w.const(offset, dtype)], dtype, shape)
    return w.cast(wide, _I8, shape)
