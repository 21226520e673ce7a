"""ONNX lowering of the integer program: the same `program.integer_forward`, run on a backend that emits nodes.

Before -> After: an `IntegerPlan` (numpy integers and dyadic multipliers) -> an opset-17 graph in which
every value between the int64 token ids and the final `Cast -> Mul(logit scale)` is an integer:
MatMulInteger (uint8 x int8 -> int32; signed activations enter as uint8 with zero point 128, the fast
u8s8 path, same integers), Gather on int8 tables, Add/Sub/Mul/Div/Mod/Abs/Less/Greater/GreaterOrEqual/
Where/ReduceSum/CumSum/Cast/Reshape/Transpose on int64, BitShift on uint64, ReduceMax on int32. Every op/type
pair has an onnxruntime CPU kernel (the tests run the graph).

Measured onnxruntime 1.31 pitfalls this lowering avoids (tests/test_integer_kernels.py guards them):
- int64 Min, Max, Clip and ReduceMax return wrong values for some operands above 2^31: min/max/clip are
  Where(Less(a, b), a, b), and the row max of attention scores (int32 by construction) runs on int32;
- int64 ReduceSum is exact only while sums stay below 2^53: the kernels keep their sums below that.

Floor division: ONNX Div truncates toward zero. By a constant d, the numerator is first shifted by a
multiple of d to non-negative; by a tensor d, it is Div(Sub(x, Mod(x, d)), d) with Mod's fmod=0 (the
remainder is in [0, d)); by a power of two, BitShift on the shifted value as uint64.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecompress.compress.integer_only.kernels import POW2
from edgecompress.compress.integer_only.program import IntegerPlan, integer_forward
from edgecompress.errors import InternalError

OPSET = 17
IR_VERSION = 8  # the IR version of opset 17; onnxruntime 1.31 and mobile builds load it
OFFSET = 1 << 62  # added before a floor division so that Div's truncation is floor (values stay below 2^62)
FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


class OnnxOps:
    """The emitting backend: every op appends nodes and returns the name of its output value."""

    def __init__(self):
        self.nodes: list = []
        self.initializers: list = []
        self._constants: dict = {}
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def _node(self, op: str, inputs: list, **attributes) -> str:
        output = self._name(op.lower())
        names = ["" if isinstance(i, str) and i == "" else self.value(i) for i in inputs]  # "": optional input
        self.nodes.append(helper.make_node(op, names, [output], name=output, **attributes))
        return output

    def value(self, x, dtype=np.int64) -> str:
        """A value name for a graph value (str) or a constant (Python int, numpy array) as an initializer."""
        if isinstance(x, str):
            return x
        array = np.asarray(x, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            name = self._name("const")
            self.initializers.append(numpy_helper.from_array(array, name))
            self._constants[key] = name
        return self._constants[key]

    def add(self, a, b):
        return self._node("Add", [a, b])

    def sub(self, a, b):
        return self._node("Sub", [a, b])

    def mul(self, a, b):
        return self._node("Mul", [a, b])

    def floor_div(self, a, d):
        """floor(a / d), d > 0. A constant d: shift a by a multiple of d to non-negative, where Div's
        truncation is floor (|a| < 2^62); a tensor d: Div(Sub(a, Mod(a, d)), d)."""
        if isinstance(d, int):
            offset = d * (OFFSET // d)
            return self._node("Sub", [self._node("Div", [self._node("Add", [a, offset]), d]), offset // d])
        return self._node("Div", [self._node("Sub", [a, self._node("Mod", [a, d], fmod=0)]), d])

    def floor_shift(self, a, c, plus=0):
        """floor((a + plus) / 2^c) without a division: (a + plus + 2^62) >> c as uint64 (BitShift is
        unsigned), minus 2^(62-c). The two constants fold into one Add."""
        shifted = self._node(
            "Cast", [self._node("Add", [a, np.asarray(plus, dtype=np.int64) + OFFSET])], to=TensorProto.UINT64
        )
        shifted = self._node("BitShift", [shifted, self.value(c, np.uint64)], direction="RIGHT")
        return self._node("Sub", [self._node("Cast", [shifted], to=TensorProto.INT64), OFFSET >> np.asarray(c)])

    def div_nonneg(self, a, d):
        """a >= 0, d > 0: Div's truncation is floor."""
        return self._node("Div", [a, d])

    def shift_right(self, a, z):
        """a >= 0 shifted by a tensor z: as uint64 through BitShift."""
        shifted = self._node(
            "BitShift",
            [self._node("Cast", [a], to=TensorProto.UINT64), self._node("Cast", [z], to=TensorProto.UINT64)],
            direction="RIGHT",
        )
        return self._node("Cast", [shifted], to=TensorProto.INT64)

    # onnxruntime 1.31's int64 Min, Max, Clip and ReduceMax kernels return wrong values for some
    # operands above 2^31 (measured; see tests/test_integer_kernels.py): compare-and-select instead.
    def minimum(self, a, b):
        return self._node("Where", [self._node("Less", [a, b]), a, b])

    def maximum(self, a, b):
        return self._node("Where", [self._node("Greater", [a, b]), a, b])

    def clip(self, a, low: int, high: int):
        return self.minimum(self.maximum(a, low), high)

    def abs(self, a):
        return self._node("Abs", [a])

    def is_negative(self, a):
        return self._node("Less", [a, 0])

    def where(self, cond, a, b):
        return self._node("Where", [cond, a, b])

    def reduce_sum(self, a, axis: int):
        """Exact while partial sums stay below 2^53: onnxruntime 1.31 accumulates int64 sums inexactly beyond."""
        return self._node("ReduceSum", [a, np.array([axis])], keepdims=1)

    def reduce_max(self, a, axis: int):
        """Values must fit int32 (attention scores do): onnxruntime's int64 ReduceMax is wrong above 2^31."""
        narrow = self._node("Cast", [a], to=TensorProto.INT32)
        return self._node("Cast", [self._node("ReduceMax", [narrow], axes=[axis], keepdims=1)], to=TensorProto.INT64)

    def bit_length(self, a):
        above = self._node("GreaterOrEqual", [self._node("Unsqueeze", [a, np.array([-1])]), POW2])
        return self._node("ReduceSum", [self._node("Cast", [above], to=TensorProto.INT64), np.array([-1])], keepdims=0)

    def gather(self, table, index):
        if isinstance(table, np.ndarray) and table.dtype == np.int8:  # int8 embedding tables stay int8
            gathered = self._node("Gather", [self.value(table, np.int8), index])
            return self._node("Cast", [gathered], to=TensorProto.INT64)
        return self._node("Gather", [table, index])

    def matmul(self, a, b, *, a_unsigned: bool = False):
        if a_unsigned:
            a8, zero_point = self._node("Cast", [a], to=TensorProto.UINT8), ""
        else:
            a8 = self._node("Cast", [self._node("Add", [a, 128])], to=TensorProto.UINT8)
            zero_point = self.value(128, np.uint8)
        b8 = self.value(b, np.int8) if isinstance(b, np.ndarray) else self._node("Cast", [b], to=TensorProto.INT8)
        product = self._node("MatMulInteger", [a8, b8, zero_point] if zero_point else [a8, b8])
        return self._node("Cast", [product], to=TensorProto.INT64)

    def positions(self, input_ids, pad: int | None = None):
        if pad is None:
            length = self._node("Gather", [self._node("Shape", [input_ids]), 1])
            return self._node("Range", [0, length, 1])
        real = self._node("Cast", [self._node("Not", [self._node("Equal", [input_ids, pad])])], to=TensorProto.INT64)
        counted = self._node("Mul", [self._node("CumSum", [real, np.array(1)]), real])
        return self._node("Add", [counted, pad])

    def key_mask(self, attention_mask):
        return self._node("Unsqueeze", [self._node("Greater", [attention_mask, 0]), np.array([1, 2])])

    def split_heads(self, x, heads: int, head_size: int, *, transpose: bool = False):
        split = self._node("Reshape", [x, np.array([0, 0, heads, head_size])])
        return self._node("Transpose", [split], perm=[0, 2, 3, 1] if transpose else [0, 2, 1, 3])

    def merge_heads(self, x, width: int):
        return self._node("Reshape", [self._node("Transpose", [x], perm=[0, 2, 1, 3]), np.array([0, 0, width])])

    def first_token(self, x):
        return self._node("Gather", [x, 0], axis=1)

    def dequantize(self, q, scale: float):
        """The output boundary, the graph's only float ops: Cast to float, Mul by the logit scale."""
        as_float = self._node("Cast", [q], to=TensorProto.FLOAT)
        return self._node("Mul", [as_float, self.value(np.float32(scale), np.float32)])


def lower_plan(plan: IntegerPlan, *, input_names: tuple[str, ...], output_name: str) -> onnx.ModelProto:
    """The integer program as an ONNX model with dynamic batch and sequence axes."""
    ops = OnnxOps()
    logits = integer_forward(ops, plan, *input_names)
    if ops.nodes[-1].output[0] != logits:
        raise InternalError("the integer program's last node is not its output")
    ops.nodes[-1].output[0] = output_name  # the final Mul writes the graph output itself
    labels = len(plan.head.classifier.bias)
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"]) for name in input_names]
    output = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", labels])
    graph = helper.make_graph(ops.nodes, "integer_only", inputs, [output], ops.initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgecompress-integer-only"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def float_nodes(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(name, op_type) of every node with a float input or output: the audit's raw material."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    }
    types.update({t.name: t.data_type for t in inferred.graph.initializer})
    return [
        (node.name, node.op_type)
        for node in inferred.graph.node
        if any(types.get(name) in FLOAT_TYPES for name in list(node.input) + list(node.output))
    ]
