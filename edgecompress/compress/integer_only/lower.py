"""ONNX lowering of the integer program: the same `program.integer_forward`, run on a backend that emits nodes.

Before -> After: an `IntegerPlan` (numpy integers and dyadic multipliers) -> an opset-17 graph in which
every value between the int64 token ids and the final `Cast -> Mul(logit scale)` is an integer:
MatMulInteger (uint8 x int8 -> int32; signed activations enter as uint8 with zero point 128, the fast
u8s8 path, same integers), Gather on int8 tables, Add/Sub/Mul/Div/Mod/Abs/Min/Max/Clip/Less/Greater/Where/
ReduceSum/ReduceMax/CumSum/Cast/Reshape/Transpose on int32 where the values' intervals allow and int64
elsewhere, BitShift on uint32/uint64 (`onnx_ops.OnnxOps` decides, value by value). Every op/type pair has
an onnxruntime CPU kernel (the tests run the graph).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from edgecompress.compress.integer_only.onnx_ops import OnnxOps
from edgecompress.compress.integer_only.program import IntegerPlan, integer_forward
from edgecompress.errors import InternalError

OPSET = 17
IR_VERSION = 8  # the IR version of opset 17; onnxruntime 1.31 and mobile builds load it
FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


def lower_plan(plan: IntegerPlan, *, input_names: tuple[str, ...], output_name: str) -> onnx.ModelProto:
    """The integer program as an ONNX model with dynamic batch and sequence axes."""
    ops = OnnxOps()
    for name in input_names:  # ids and token types index tables; the mask is compared with 0
        ops.declare(name)
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
