"""TFLite lowering of ONNX Split: `Split(X, split, axis) -> STRIDED_SLICE(X, begin_i, end_i)` per output.

A question-answering head splits its [batch, seq, 2] logits into start and end logits; shapes are fixed, so
each output's extent along the axis is known from shape inference and one STRIDED_SLICE per output writes
it (a single-output builtin per value, like every other lowering here). Outputs nothing reads are skipped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgecompress.backends.tflite.registry import lowers

if TYPE_CHECKING:  # the lowering imports this file's package; the registry keeps it a leaf
    from edgecompress.backends.tflite.lowering import Lowering


@lowers("Split")
def split(lw: Lowering, node) -> None:
    """Each output `i` of `Split` -> `STRIDED_SLICE(X, begin, end)` over its span of the split axis."""
    shape = lw.shape(node.input[0])
    axis = int(lw.attr(node, "axis", 0))
    axis = axis + len(shape) if axis < 0 else axis
    start = 0
    for name in node.output:
        width = lw.shape(name)[axis]
        if name and lw.used(name):
            begin, end = [0] * len(shape), list(shape)
            begin[axis], end[axis] = start, start + width
            vectors = [
                lw.const(np.array(v, np.int32), f"{name}/{what}")
                for v, what in ((begin, "begin"), (end, "end"), ([1] * len(shape), "strides"))
            ]
            lw.emit("STRIDED_SLICE", [lw.value(node.input[0]), *vectors], out=name, options=lw.options("StridedSlice"))
        start += width
