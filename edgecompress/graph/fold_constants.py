"""Constant folding: compute every node whose inputs are all known at export time.

Before -> After: `Shape(X) -> Gather(., 1) -> Unsqueeze -> Concat -> Reshape(Y, .)` with X of fixed
shape -> `Reshape(Y, [1, 128, 12, 32])`. Run after `fix_shapes`, when shape arithmetic is constant.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        after = len(result.graph.node)
        return PassResult(result, [f"nodes {before} -> {after}"], {"nodes_before": before, "nodes_after": after},
                          fired=after < before)
