"""The emitting backend of the integer program: every op appends ONNX nodes and returns its output's name.

Each value carries an interval [lo, hi] that holds every integer it can take, derived op by op from the
intervals of its inputs (weights and constants exactly, MatMulInteger from its operands and inner length,
sums from their number of terms). An op computes in int32 when its inputs and its result fit int32, else in
int64, casting an input across once where its type differs. So the graph runs int32 wherever the program's
bit budgets allow (measured on onnxruntime 1.31: int32 elementwise kernels ~2x, ReduceSum, Div and the
comparisons 3-5x faster than int64), and the integers are the same as the torch backend's int64 ones,
because an int32 value can never leave its interval.

Graph inputs and values of unknown range are int64 and taken to stay below 2^62 in magnitude (the kernels'
own budgets), as before int32 existed; intervals of int64 values only choose types, nothing relies on them.

Measured onnxruntime 1.31 pitfalls this backend avoids (tests/test_integer_kernels.py guards them):
- int64 Min, Max, Clip and ReduceMax return wrong values for some operands above 2^31: in int64, min/max/clip
  are Where(Less(a, b), a, b), and a row max of int32-range values runs on int32; in int32 they are exact;
- int64 ReduceSum is exact only while sums stay below 2^53: the kernels keep their sums below that.

Floor division: ONNX Div truncates toward zero. By a constant d, the numerator is first shifted by a
multiple of d to non-negative; by a tensor d, it is Div(Sub(x, Mod(x, d)), d) with Mod's fmod=0 (the
remainder is in [0, d)); by a power of two, BitShift on the shifted value as unsigned (BitShift has no
signed types).
"""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from edgecompress.compress.integer_only.kernels import POW2
from edgecompress.errors import InternalError

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
UNKNOWN = (-(2**62), 2**62)  # a value of unknown range: int64, below 2^62 in magnitude by the kernels' budgets
OFFSET = 1 << 62  # int64: added before a floor division so that Div's truncation is floor
NUMPY: dict[int, type] = {TensorProto.INT32: np.int32, TensorProto.INT64: np.int64}
UNSIGNED: dict[int, int] = {TensorProto.INT32: TensorProto.UINT32, TensorProto.INT64: TensorProto.UINT64}


def _fits32(*intervals: tuple[int, int]) -> bool:
    return all(INT32_MIN <= lo and hi <= INT32_MAX for lo, hi in intervals)


def _corners(f, a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """The interval of f(x, y) for f monotone in each argument on the boxes given."""
    values = [f(x, y) for x in a for y in b]
    return min(values), max(values)


class OnnxOps:
    """Emits the program's ops as ONNX nodes, in int32 where the value intervals allow (see the module)."""

    def __init__(self):
        self.nodes: list = []
        self.initializers: list = []
        self._constants: dict = {}
        self._casts: dict = {}
        self._shifted_u8: dict[str, str] = {}  # int8 value -> its uint8 form (+ 128) for MatMulInteger
        self._count = 0
        self.types: dict[str, int] = {}  # value name -> ONNX element type
        self.ranges: dict[str, tuple[int, int]] = {}  # value name -> interval of its integers

    # ---- values -------------------------------------------------------------------------------------------

    def declare(self, name: str, dtype: int = TensorProto.INT64, interval: tuple[int, int] = UNKNOWN) -> str:
        """A graph input: its type and the interval its integers lie in."""
        self.types[name], self.ranges[name] = dtype, interval
        return name

    def interval(self, x) -> tuple[int, int]:
        if isinstance(x, str):
            return self.ranges.get(x, UNKNOWN)
        array = np.asarray(x)
        return int(array.min()), int(array.max())

    def dtype_of(self, name: str) -> int:
        return self.types.get(name, TensorProto.INT64)

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def _node(self, op: str, inputs: list, **attributes) -> str:
        output = self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def _out(self, name: str, dtype: int, interval: tuple[int, int] | None = None) -> str:
        self.types[name] = dtype
        if interval is not None:
            self.ranges[name] = interval
        return name

    def constant(self, x, dtype=np.int64) -> str:
        """A constant (Python int, numpy array) as an initializer of numpy type `dtype`, shared by value."""
        array = np.asarray(x, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            name = self._name("const")
            self.initializers.append(numpy_helper.from_array(array, name))
            self._constants[key] = name
        return self._constants[key]

    def _as(self, x, dtype: int) -> str:
        """`x` as a value of integer type `dtype`: a constant in that type, or a graph value cast once."""
        if not isinstance(x, str):
            return self.constant(x, NUMPY[dtype])
        if self.dtype_of(x) == dtype:
            return x
        if (x, dtype) not in self._casts:
            cast = self._node("Cast", [x], to=dtype)
            self._casts[x, dtype] = self._out(cast, dtype, self.interval(x))
        return self._casts[x, dtype]

    def _arith(self, op: str, operands: list, interval: tuple[int, int], **attributes) -> str:
        """`op` on operands of one type: int32 when every operand and the result fit int32."""
        dtype = TensorProto.INT32 if _fits32(interval, *map(self.interval, operands)) else TensorProto.INT64
        return self._out(self._node(op, [self._as(x, dtype) for x in operands], **attributes), dtype, interval)

    def _compare(self, op: str, a, b) -> str:
        dtype = TensorProto.INT32 if _fits32(self.interval(a), self.interval(b)) else TensorProto.INT64
        return self._out(self._node(op, [self._as(a, dtype), self._as(b, dtype)]), TensorProto.BOOL)

    # ---- arithmetic ---------------------------------------------------------------------------------------

    def add(self, a, b):
        (alo, ahi), (blo, bhi) = self.interval(a), self.interval(b)
        return self._arith("Add", [a, b], (alo + blo, ahi + bhi))

    def sub(self, a, b):
        (alo, ahi), (blo, bhi) = self.interval(a), self.interval(b)
        return self._arith("Sub", [a, b], (alo - bhi, ahi - blo))

    def mul(self, a, b):
        interval = _corners(lambda x, y: x * y, self.interval(a), self.interval(b))
        if isinstance(a, str) and isinstance(b, str) and a == b:  # a square is never negative
            lo, hi = self.interval(a)
            interval = (0 if lo <= 0 <= hi else min(lo * lo, hi * hi), interval[1])
        return self._arith("Mul", [a, b], interval)

    def floor_div(self, a, d, plus=0):
        """floor((a + plus) / d), d > 0. A constant d (or per-channel vector): shift the numerator by a multiple
        of d to non-negative, where Div's truncation is floor; a tensor d: Div(Sub(x, Mod(x, d)), d)."""
        d_iv = self.interval(d)
        divisors = (max(d_iv[0], 1), max(d_iv[1], 1))
        if isinstance(d, str):
            x = a if isinstance(plus, int) and plus == 0 else self.add(a, plus)
            remainder = self._arith("Mod", [x, d], (0, divisors[1] - 1), fmod=0)
            return self._arith(
                "Div", [self.sub(x, remainder), d], _corners(lambda u, v: u // v, self.interval(x), divisors)
            )
        a_iv, p_iv = self.interval(a), self.interval(plus)
        total = (a_iv[0] + p_iv[0], a_iv[1] + p_iv[1])
        result = _corners(lambda u, v: u // v, total, divisors)
        d = np.asarray(d, dtype=np.int64)
        shift = d * -(total[0] // d) if total[0] < 0 else np.zeros_like(d)  # the least multiples making it >= 0
        if not _fits32(a_iv, total, (total[0] + int(shift.min()), total[1] + int(shift.max()))):
            shift = d * (OFFSET // d)  # int64: any |a| < 2^62
        if not shift.any() and p_iv == (0, 0):
            return self._arith("Div", [a, d], result)
        shifted = self.add(a, np.asarray(plus, dtype=np.int64) + shift)
        quotient = self._arith("Div", [shifted, d], _corners(lambda u, v: u // v, self.interval(shifted), divisors))
        return self.sub(quotient, shift // d) if shift.any() else quotient

    def floor_shift(self, a, c, plus=0):
        """floor((a + plus) / 2^c) of the value made non-negative: in int32 a Div by 2^c (one node where BitShift
        needs two Casts around it, and no slower: measured on onnxruntime 1.31, 196,608 values: Div 110 us,
        Cast-BitShift-Cast 134 us), in int64 a BitShift as unsigned.

        The shift making it non-negative is the least power of two >= 2^max(c) above -min(a + plus) in int32,
        2^62 in int64; it folds into the Add of `plus` and comes off again after the shift. A run-time c (and plus)
        goes through `_floor_shift_by`."""
        if isinstance(c, str):
            return self._floor_shift_by(a if isinstance(plus, int) and plus == 0 else self.add(a, plus), c)
        c_iv, p_iv, a_iv = self.interval(c), self.interval(plus), self.interval(a)
        total = (a_iv[0] + p_iv[0], a_iv[1] + p_iv[1])
        result = _corners(lambda x, y: x >> y, total, c_iv)
        offset = 0 if total[0] >= 0 else 1 << max(c_iv[1], math.ceil(math.log2(-total[0])))
        dtype = TensorProto.INT32
        # a uint32 BitShift by 32 or more is undefined (x86 shifts by the amount mod 32)
        if c_iv[1] > 31 or not _fits32(a_iv, total, (total[0] + offset, total[1] + offset), result):
            dtype, offset = TensorProto.INT64, OFFSET
        summed = self._as(a, dtype)
        if offset or p_iv != (0, 0):
            shifted_plus = np.asarray(plus, dtype=np.int64) + offset
            summed = self._node("Add", [summed, self.constant(shifted_plus, NUMPY[dtype])])
        if dtype == TensorProto.INT32 and c_iv[1] <= 30:  # 2^c fits int32
            shifted = self._node("Div", [summed, self.constant(POW2[np.asarray(c)], np.int32)])
        else:
            unsigned = UNSIGNED[dtype]
            as_unsigned = self._node("Cast", [summed], to=unsigned)
            amount = self.constant(c, np.uint32 if dtype == TensorProto.INT32 else np.uint64)
            shifted = self._node("Cast", [self._node("BitShift", [as_unsigned, amount], direction="RIGHT")], to=dtype)
        if offset:
            shifted = self._node("Sub", [shifted, self.constant(offset >> np.asarray(c), NUMPY[dtype])])
        return self._out(shifted, dtype, result)

    def div_nonneg(self, a, d):
        """a >= 0, d > 0: Div's truncation is floor."""
        d_iv = self.interval(d)
        return self._arith(
            "Div", [a, d], _corners(lambda x, y: x // y, self.interval(a), (max(d_iv[0], 1), max(d_iv[1], 1)))
        )

    def shift_right(self, a, z):
        """a >= 0 shifted by a tensor z in [0, 62]: BitShift as unsigned."""
        (lo, hi), (zlo, zhi) = self.interval(a), self.interval(z)
        zlo, zhi = min(max(zlo, 0), 62), min(max(zhi, 0), 62)
        dtype = TensorProto.INT32 if _fits32((lo, hi)) and zhi <= 31 else TensorProto.INT64
        unsigned = UNSIGNED[dtype]
        shifted = self._node(
            "BitShift",
            [
                self._node("Cast", [self._as(a, dtype)], to=unsigned),
                self._node("Cast", [self._as(z, dtype)], to=unsigned),
            ],
            direction="RIGHT",
        )
        return self._out(self._node("Cast", [shifted], to=dtype), dtype, (lo >> zhi, hi >> zlo))

    def _floor_shift_by(self, a, z):
        """floor(a / 2^z) for signed a and a tensor z in [0, 30]: a made non-negative by a power of two O that is a
        multiple of every 2^z, shifted as unsigned, and O / 2^z (from a table, indexed by z) taken off again."""
        lo, zhi = self.interval(a)[0], self.interval(z)[1]
        offset = 1 << max(zhi, (-lo).bit_length()) if lo < 0 else 0
        shifted = self.shift_right(self.add(a, offset), z)
        if not offset:
            return shifted
        return self.sub(shifted, self.gather(np.array([offset >> k for k in range(zhi + 1)]), z))  # O / 2^z

    # onnxruntime 1.31's int64 Min, Max, Clip and ReduceMax kernels return wrong values for some operands above
    # 2^31 (measured; see tests/test_integer_kernels.py): in int64, compare-and-select instead.
    def minimum(self, a, b):
        (alo, ahi), (blo, bhi) = self.interval(a), self.interval(b)
        interval = (min(alo, blo), min(ahi, bhi))
        if _fits32(self.interval(a), self.interval(b)):
            return self._arith("Min", [a, b], interval)
        return self._out(self.where(self._compare("Less", a, b), a, b), TensorProto.INT64, interval)

    def maximum(self, a, b):
        (alo, ahi), (blo, bhi) = self.interval(a), self.interval(b)
        interval = (max(alo, blo), max(ahi, bhi))
        if _fits32(self.interval(a), self.interval(b)):
            return self._arith("Max", [a, b], interval)
        return self._out(self.where(self._compare("Greater", a, b), a, b), TensorProto.INT64, interval)

    def clip(self, a, low, high):
        """a clipped to [low, high]: ints, or per-channel (last axis) vectors as Min and Max."""
        if np.ndim(low) or np.ndim(high):
            return self.maximum(self.minimum(a, np.asarray(high, dtype=np.int64)), np.asarray(low, dtype=np.int64))
        low, high = int(low), int(high)
        lo, hi = self.interval(a)
        if isinstance(a, str) and low <= lo and hi <= high:  # its interval says it changes nothing: no node
            return a
        if _fits32((lo, hi), (low, high)):
            return self._arith("Clip", [a, low, high], (min(max(lo, low), high), max(min(hi, high), low)))
        return self.minimum(self.maximum(a, low), high)

    def clip_mul(self, a, low, high, b):
        """a clipped to [low, high], then times b, for per-channel (last axis) vectors: the product's interval is
        the widest low_j b_j, high_j b_j, where one interval per value would pair the widest of each."""
        if np.ndim(low) == 0 and np.ndim(high) == 0:
            return self.mul(self.clip(a, int(low), int(high)), b)
        low, high, b = (np.asarray(v, dtype=np.int64) for v in (low, high, b))
        ends = np.stack(np.broadcast_arrays(low * b, high * b))
        return self._arith("Mul", [self.clip(a, low, high), b], (int(ends.min()), int(ends.max())))

    def abs(self, a):
        lo, hi = self.interval(a)
        return self._arith("Abs", [a], (max(lo, -hi, 0), max(-lo, hi)))

    def is_negative(self, a):
        return self._compare("Less", a, 0)

    def where(self, cond, a, b):
        (alo, ahi), (blo, bhi) = self.interval(a), self.interval(b)
        interval = (min(alo, blo), max(ahi, bhi))
        dtype = TensorProto.INT32 if _fits32(interval) else TensorProto.INT64
        return self._out(self._node("Where", [cond, self._as(a, dtype), self._as(b, dtype)]), dtype, interval)

    def reduce_sum(self, a, axis: int, terms: int | None = None):
        """Sum of at most `terms` values (None: unknown, int64). int64 sums are exact only below 2^53 in
        onnxruntime 1.31: the kernels keep theirs below that."""
        lo, hi = self.interval(a)
        interval = (min(lo, 0) * terms, max(hi, 0) * terms) if terms else UNKNOWN
        dtype = TensorProto.INT32 if _fits32(interval, (lo, hi)) else TensorProto.INT64
        axes = self.constant(np.array([axis]))  # int64 whatever the data's type
        return self._out(self._node("ReduceSum", [self._as(a, dtype), axes], keepdims=1), dtype, interval)

    def reduce_max(self, a, axis: int):
        """Values must fit int32 (attention scores do): onnxruntime's int64 ReduceMax is wrong above 2^31."""
        interval = self.interval(a)
        narrow = self._as(a, TensorProto.INT32)  # by the precondition, even from int64
        return self._out(self._node("ReduceMax", [narrow], axes=[axis], keepdims=1), TensorProto.INT32, interval)

    def bit_length(self, a):
        """How many powers of two are <= a: compared with exactly the powers a's interval can reach."""
        lo, hi = self.interval(a)
        most = max(-lo, hi, 0).bit_length()
        dtype = TensorProto.INT32 if _fits32((lo, hi)) else TensorProto.INT64
        powers = self.constant(POW2[: max(most, 1)], NUMPY[dtype])
        above = self._node(
            "GreaterOrEqual", [self._node("Unsqueeze", [self._as(a, dtype), self.constant(np.array([-1]))]), powers]
        )
        count = self._node("Cast", [above], to=TensorProto.INT32)
        return self._out(
            self._node("ReduceSum", [count, self.constant(np.array([-1]))], keepdims=0), TensorProto.INT32, (0, most)
        )

    def gather(self, table, index):
        if isinstance(table, np.ndarray) and table.dtype == np.int8:  # int8 embedding tables stay int8
            gathered = self._node("Gather", [self.constant(table, np.int8), index])
            return self._out(
                self._node("Cast", [gathered], to=TensorProto.INT32), TensorProto.INT32, self.interval(table)
            )
        interval = self._entries(table, index)
        dtype = TensorProto.INT32 if _fits32(interval) else TensorProto.INT64
        return self._out(self._node("Gather", [self._as(table, dtype), index]), dtype, interval)

    def _entries(self, table, index) -> tuple[int, int]:
        """The interval of the entries of a 1-D constant table that the index's interval can reach."""
        table = np.asarray(table)
        lo, hi = self.interval(index)
        reached = table[max(lo, 0) : min(hi, len(table) - 1) + 1] if table.ndim == 1 and lo >= 0 else table
        return self.interval(reached if reached.size else table)

    def lookup(self, table: np.ndarray, index):
        """table[index]: GatherElements on the flattened indices (onnxruntime 1.31's Gather of single elements is
        7x slower, measured on 196,608 lookups), reshaped back."""
        flat = self._node("Reshape", [index, self.constant(np.array([-1]))])
        interval = self._entries(table, index)
        dtype = TensorProto.INT32 if _fits32(interval) else TensorProto.INT64
        gathered = self._node("GatherElements", [self._as(table, dtype), flat], axis=0)
        shaped = self._node("Reshape", [gathered, self._node("Shape", [index])])
        return self._out(shaped, dtype, interval)

    def matmul(self, a, b, *, a_unsigned: bool = False, terms: int | None = None):
        """MatMulInteger (int32 out): a as uint8 (signed a shifted by 128 with zero point 128, the fast u8s8 path),
        b int8; `terms` is the inner length when b is a graph value."""
        a_iv, b_iv = self.interval(a), self.interval(b)
        if terms is None and not isinstance(b, np.ndarray):
            raise InternalError("matmul of two graph values needs its inner length (terms)")
        inner = terms if terms is not None else b.shape[0]
        bound = inner * max(abs(a_iv[0]), abs(a_iv[1])) * max(abs(b_iv[0]), abs(b_iv[1]))
        if bound > INT32_MAX:
            raise InternalError(f"MatMulInteger over {inner} terms of |a| <= {max(map(abs, a_iv))} can overflow int32")
        dtype = self.dtype_of(a) if isinstance(a, str) else TensorProto.INT32
        if a_unsigned:
            a8, zero_point = self._node("Cast", [a], to=TensorProto.UINT8), None
        else:  # shifted once per value: Q, K and V read the same input
            if a not in self._shifted_u8:
                shifted = self._node("Add", [a, self.constant(128, NUMPY[dtype])])
                self._shifted_u8[a] = self._node("Cast", [shifted], to=TensorProto.UINT8)
            a8, zero_point = self._shifted_u8[a], self.constant(128, np.uint8)
        b8 = self.constant(b, np.int8) if isinstance(b, np.ndarray) else self._node("Cast", [b], to=TensorProto.INT8)
        product = self._node("MatMulInteger", [a8, b8, zero_point] if zero_point else [a8, b8])
        return self._out(product, TensorProto.INT32, (-bound, bound))

    # ---- shapes and the two boundaries --------------------------------------------------------------------

    def positions(self, input_ids, pad: int | None = None):
        if pad is None:
            length = self._node("Gather", [self._node("Shape", [input_ids]), self.constant(1)])
            return self._node("Range", [self.constant(0), length, self.constant(1)])
        ne = self._node("Not", [self._node("Equal", [input_ids, self.constant(pad)])])
        real = self._node("Cast", [ne], to=TensorProto.INT64)
        counted = self._node("Mul", [self._node("CumSum", [real, self.constant(1)]), real])
        return self._node("Add", [counted, self.constant(pad)])

    def key_mask(self, attention_mask):
        greater = self._node("Greater", [attention_mask, self.constant(0)])
        return self._out(self._node("Unsqueeze", [greater, self.constant(np.array([1, 2]))]), TensorProto.BOOL)

    def _like(self, name: str, source: str) -> str:
        return self._out(name, self.dtype_of(source), self.interval(source))

    def split_heads(self, x, heads: int, head_size: int, *, transpose: bool = False):
        split = self._node("Reshape", [x, self.constant(np.array([0, 0, heads, head_size]))])
        return self._like(self._node("Transpose", [split], perm=[0, 2, 3, 1] if transpose else [0, 2, 1, 3]), x)

    def merge_heads(self, x, width: int):
        moved = self._node("Transpose", [x], perm=[0, 2, 1, 3])
        return self._like(self._node("Reshape", [moved, self.constant(np.array([0, 0, width]))]), x)

    def first_token(self, x):
        return self._like(self._node("Gather", [x, self.constant(0)], axis=1), x)

    def dequantize(self, q, scale: float):
        """The output boundary, the graph's only float ops: Cast to float, Mul by the logit scale."""
        as_float = self._node("Cast", [q], to=TensorProto.FLOAT)
        return self._out(self._node("Mul", [as_float, self.constant(np.float32(scale), np.float32)]), TensorProto.FLOAT)
