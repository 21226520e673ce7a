"""Remove nodes that do nothing at inference time, then nodes whose outputs nobody reads.

Before -> After: `Dropout(X) -> X`, `Identity(X) -> X`, unused nodes -> (gone).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgecompress.passes import Pass, PassContext, PassResult, PassSkipped, register_pass

_INFERENCE_NO_OPS = ("Dropout", "Identity")


@register_pass
@dataclass(frozen=True)
class RemoveTrainingNodes(Pass):
    name = "remove_training_nodes"
    stage = "graph"
    in_place = False  # onnx-ir edits its own copy of the graph

    def requires(self, model, ctx: PassContext) -> None:
        if not any(n.op_type in _INFERENCE_NO_OPS for n in model.graph.node) and not _dead_nodes(model):
            raise PassSkipped("no Dropout, Identity or dead nodes in the graph")

    def run(self, model, ctx: PassContext) -> PassResult:
        import onnx_ir as ir
        from onnx_ir.passes.common import IdentityEliminationPass, RemoveUnusedNodesPass

        before = _op_count(model)
        graph_model = ir.from_proto(model)
        for node in graph_model.graph:
            if node.op_type == "Dropout" and node.domain == "" and len(node.outputs) >= 1:
                _dropout_to_identity(node)
        IdentityEliminationPass()(graph_model)
        RemoveUnusedNodesPass()(graph_model)
        result = ir.to_proto(graph_model)
        after = _op_count(result)
        removed = {op: before[op] - after.get(op, 0) for op in before if before[op] > after.get(op, 0)}
        notes = [f"removed {count} {op}" for op, count in sorted(removed.items())]
        return PassResult(result, notes or ["nothing removed"], {"removed": removed}, fired=bool(removed))


def _dropout_to_identity(node) -> None:
    """A Dropout whose mask output is unused is an Identity at inference; one whose mask is read stays."""
    if len(node.outputs) > 1 and node.outputs[1].uses():
        return
    node.op_type = "Identity"
    node.attributes.clear()
    node.resize_inputs(1)
    node.resize_outputs(1)


def _op_count(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _dead_nodes(model) -> list:
    read = {name for node in model.graph.node for name in node.input}
    read |= {output.name for output in model.graph.output}
    return [node for node in model.graph.node if not any(o in read for o in node.output if o)]
