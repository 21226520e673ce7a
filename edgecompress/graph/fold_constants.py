"""Constant folding: compute every node whose inputs are all known at export time.

Before -> After: `Shape(X) -> Gather(., 1) -> Unsqueeze -> Concat -> Reshape(Y, .)` with X of fixed
shape -> `Reshape(Y, [1, 128, 12, 32])`. Run after `fix_shapes`, when shape arithmetic is constant.

Every Constant node it leaves holds a tensor (`value`): onnxscript's folder writes a folded `Shape` as
`Constant<value_ints=...>`, which ONNX Runtime's symbolic shape inference cannot read (the later passes'
shape inference and quantizers then failed on the third-party MiniLM-L3 file); `ensures` checks it.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgecompress.errors import InternalError
from edgecompress.graph._graph_edit import ATTRIBUTE_CONSTANTS, tensor_constants
from edgecompress.passes import Pass, PassContext, PassResult, register_pass


@register_pass
@dataclass(frozen=True)
class FoldConstants(Pass):
    name = "fold_constants"
    stage = "graph"
    in_place = False  # onnx-ir edits its own copy of the graph
    runs_after = ("fix_shapes",)  # shape arithmetic is constant only once shapes are fixed

    def run(self, model, ctx: PassContext) -> PassResult:
        import onnx_ir as ir
        from onnx_ir.passes.common import RemoveUnusedNodesPass
        from onnxscript.optimizer import fold_constants

        before = len(model.graph.node)
        graph_model = ir.from_proto(model)
        fold_constants(graph_model)
        RemoveUnusedNodesPass()(graph_model)
        result = ir.to_proto(graph_model)
        result.ir_version = model.ir_version
        tensors = tensor_constants(result)
        after = len(result.graph.node)
        return PassResult(
            result,
            [f"nodes {before} -> {after}"],
            {"nodes_before": before, "nodes_after": after, "constants_as_tensors": tensors},
            fired=after < before,
        )

    def ensures(self, before, result: PassResult, ctx: PassContext) -> None:
        untyped = [
            node.output[0]
            for node in result.model.graph.node
            if node.op_type == "Constant" and any(a.name in ATTRIBUTE_CONSTANTS for a in node.attribute)
        ]
        if untyped:
            raise InternalError(f"fold_constants left Constant nodes without a tensor value: {untyped[:3]}")
