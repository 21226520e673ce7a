"""Drop the rows of an embedding table that constant indices can never reach.

Before -> After: `Gather(T[V, H], I)` with I a constant initializer -> `Gather(T[:m + 1], I)`, m = max(I);
likewise `GatherBlockQuantized(Tq, I, scales)` with Tq and scales cut to the same rows. Exact: the
gathered rows are the same rows.

Where it pays: once shapes are fixed and constants folded, BERT's position ids are the constant
0..seq_len-1, so only seq_len of the position table's 512 rows are ever read. The fused
`EmbedLayerNormalization` takes the table whole, but the int4 recipes keep the Gathers (as
GatherBlockQuantized); there the cut saves 0.15 MB of MiniLM's 8-bit position table at seq_len 128,
which is what it takes to bring the int4 file under 0.2x of float.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecompress.errors import InternalError
from edgecompress.graph._quant_common import copy_model, size_mb
from edgecompress.passes import Pass, PassContext, PassResult, PassSkipped, register_pass

GATHER_OPS = ("Gather", "GatherBlockQuantized")


@register_pass
@dataclass(frozen=True)
class TrimGatheredTables(Pass):
    name = "trim_gathered_tables"
    stage = "graph"
    in_place = False  # `ensures` compares the size of the graph it was given with the new one
    runs_after = ("fix_shapes", "fold_constants")  # they make the position ids constant

    def requires(self, model, ctx: PassContext) -> None:
        if not trimmable(model):
            raise PassSkipped(
                "no Gather of rows of a constant table by constant, non-negative indices that "
                "leave rows unread (run after fix_shapes and fold_constants to make position "
                "ids constant)"
            )

    def run(self, model, ctx: PassContext) -> PassResult:
        from onnx import numpy_helper

        result = copy_model(model)
        inits = {init.name: init for init in result.graph.initializer}
        notes = []
        for node, rows in trimmable(result):
            for name in _row_inputs(node):
                table = numpy_helper.to_array(inits[name])
                inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(table[:rows]), name))
            notes.append(
                f"{node.name}: table {node.input[0]} cut to the {rows} rows its constant indices read "
                f"(of {table.shape[0]})"
            )
        notes.append(f"size {size_mb(model):.2f} MB -> {size_mb(result):.2f} MB")
        return PassResult(
            result, notes, {"size_mb_before": round(size_mb(model), 3), "size_mb_after": round(size_mb(result), 3)}
        )

    def ensures(self, before, result: PassResult, ctx: PassContext) -> None:
        if size_mb(result.model) >= size_mb(before):
            raise InternalError("trim_gathered_tables did not make the graph smaller")


def trimmable(model) -> list[tuple]:
    """(node, rows read) for each row Gather whose constant indices read fewer rows than its table has.

    A table shared with another node is left whole: that node may read the other rows.
    """
    from onnx import numpy_helper

    inits = {init.name: init for init in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    found = []
    for node in model.graph.node:
        if (
            node.op_type not in GATHER_OPS
            or len(node.input) < 2
            or node.input[1] not in inits
            or not _gathers_rows(node)
        ):
            continue
        tables = _row_inputs(node)
        if not all(name in inits and readers[name] == 1 for name in tables):
            continue
        indices = numpy_helper.to_array(inits[node.input[1]])
        rows = int(indices.max()) + 1 if indices.size else 0
        if indices.size and indices.min() >= 0 and rows < inits[tables[0]].dims[0]:
            found.append((node, rows))
    return found


def _gathers_rows(node) -> bool:
    axis = "gather_axis" if node.op_type == "GatherBlockQuantized" else "axis"
    return all(a.i == 0 for a in node.attribute if a.name == axis)


def _row_inputs(node) -> list[str]:
    """The inputs indexed by row: the table, and for GatherBlockQuantized its scales and zero points."""
    if node.op_type == "Gather":
        return [node.input[0]]
    return [node.input[0]] + [name for name in node.input[2:4] if name]
