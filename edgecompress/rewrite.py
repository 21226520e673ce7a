"""The rewrite stage: the recipe's graph passes in order, keeping the float twin of a quantized graph.

The float twin is the graph from just before the first lossy pass (a quantization), given the same
non-lossy passes that followed it (shape fixing, folding); the measure stage times it beside the
quantized artifact (see `measure/float_twin.py`).

Before -> After (int8 recipe): passes [remove, fuse, fix, fold, quantize_static] -> graph after all five,
twin = graph after the first four. For int4 (quantize first): twin = the lowered graph after [fuse, fix,
fold], i.e. the float recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgecompress.passes import PassContext, PassRecord, apply_pass


@dataclass
class Rewrite:
    graph: Any
    records: list[PassRecord] = field(default_factory=list)
    float_twin: Any = None  # None when no graph pass was lossy


def with_finishing_passes(passes: tuple) -> tuple:
    """The recipe's graph passes, then `share_initializers` unless the recipe already ends with it.

    It belongs after every pass that can copy a constant (fusion packs Q/K/V per node, quantizers write a
    copy per node), and a recipe that extends another appends passes after the base's: so the stage adds it
    at the end instead of every recipe carrying it. Merging equal constants is exact.
    """
    from edgecompress.graph.share_initializers import ShareInitializers

    if passes and isinstance(passes[-1], ShareInitializers):
        return tuple(passes)
    return (*passes, ShareInitializers())


def rewrite_with_twin(passes, graph, context: PassContext) -> Rewrite:
    """Apply `passes` in order; keep the graph from before the first lossy pass as the float twin.

    Only an in-place pass edits the graph it is given, so the candidate twin is copied only before one;
    any other pass leaves its input as it was (`apply_pass` checks both). `graph` itself is the first
    pass's input, edited when that pass works in place.
    """
    from edgecompress.graph._quant_common import copy_model

    result = Rewrite(graph)
    twin, twin_passes = None, []
    for p in passes:
        before = result.graph
        if twin is None and p.in_place:
            before = copy_model(result.graph)
        result.graph, record = apply_pass(p, result.graph, context)
        result.records.append(record)
        if twin is None and record.lossy:
            twin = before
        elif twin is not None and not record.lossy:
            twin_passes.append(p)
    for p in twin_passes:  # the twin gets the same non-lossy rewrites that followed the quantization
        twin, _ = apply_pass(p, twin, context)
    result.float_twin = twin
    return result


def specialize(graph, seq_len: int):
    """One length bucket's graph: the symbolic sequence axis fixed to `seq_len` and the shape arithmetic that
    then becomes constant folded (fix_shapes, fold_constants), for runtimes that need every shape fixed.

    Before -> After: `input_ids[1, sequence]` -> `input_ids[1, 32]`, `Range(0, Shape(x)[1])` -> constant
    0..31. The weights are the same tensors in every bucket's graph, so a writer can store them once.
    """
    from edgecompress.graph.fix_shapes import FixShapes
    from edgecompress.graph.fold_constants import FoldConstants

    first = graph.graph.input[0].type.tensor_type.shape.dim
    batch = first[0].dim_value if first and first[0].HasField("dim_value") else 1
    context = PassContext(seq_len=seq_len, batch=batch, dynamic_shapes=False)
    for p in (FixShapes(), FoldConstants()):
        graph, _ = apply_pass(p, graph, context)
    return graph
