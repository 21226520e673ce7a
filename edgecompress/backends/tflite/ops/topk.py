"""TFLite lowering of ONNX `TopK`: LiteRT's TOPK_V2 builtin (the k largest along the last axis, sorted).

Where it occurs: token elimination (compress/eliminate_tokens.py) keeps the k most-attended tokens after a
layer, with k fixed per layer. TOPK_V2 writes int32 indices; a CAST gives the graph its int64 ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgecompress.backends.tflite.registry import lowers
from edgecompress.backends.tflite.writer import opcode

if TYPE_CHECKING:  # the lowering imports this file's package; the registry keeps it a leaf
    from edgecompress.backends.tflite.lowering import Lowering


@lowers("TopK")
def topk(lw: Lowering, node) -> None:
    """`TopK(X, K, axis=-1, largest=1)` -> `TOPK_V2(X, k)` (values) and `CAST(indices)` for a constant K."""
    rank = len(lw.shape(node.input[0]))
    if int(lw.attr(node, "axis", -1)) % rank != rank - 1:
        raise lw.unsupported(node, "an axis other than the last (TOPK_V2 ranks along the last axis)")
    if not lw.attr(node, "largest", 1):
        raise lw.unsupported(node, "largest=0 (TOPK_V2 keeps the largest values)")
    k = lw.constant(node.input[1])
    if k is None:
        raise lw.unsupported(node, "a K that is not a constant")
    shape = lw.shape(node.output[1])
    values = lw.flat.tensor(node.output[0] or f"{node.output[1]}/values", shape, lw.dtype(node.input[0]))
    indices = lw.flat.tensor(f"{node.output[1]}/int32", shape, np.dtype(np.int32))
    k_tensor = lw.const(np.array(int(np.asarray(k).reshape(())), np.int32), f"k{int(np.asarray(k).reshape(()))}")
    # ONNX sorted=0 leaves the order open: TOPK_V2's sorted output is one of the orders it allows.
    lw.flat.operator(opcode("TOPK_V2"), [lw.value(node.input[0]), k_tensor], [values, indices], lw.options("TopKV2"))
    if node.output[0]:
        lw.bind(node.output[0], values)
    lw.emit("CAST", [indices], out=node.output[1])
