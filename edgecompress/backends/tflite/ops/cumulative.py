"""TFLite lowering of ONNX CumSum, which MPNet's (and RoBERTa-style) position ids write: the running count of
non-padding tokens along the sequence.

Before -> After: `CumSum(X, axis const, exclusive, reverse)` -> `CUMSUM(X, axis int32, exclusive, reverse)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgecompress.backends.tflite.registry import lowers

if TYPE_CHECKING:  # the lowering imports this file's package; the registry keeps it a leaf
    from edgecompress.backends.tflite.lowering import Lowering


@lowers("CumSum")
def cumsum(lw: Lowering, node) -> None:
    axis = lw.constant(node.input[1])
    if axis is None:
        raise lw.unsupported(node, "an axis that is not a constant")
    rank = len(lw.shape(node.input[0]))
    options = lw.options(
        "Cumsum", exclusive=bool(lw.attr(node, "exclusive", 0)), reverse=bool(lw.attr(node, "reverse", 0))
    )
    axis_tensor = lw.const(np.array(int(axis) % rank, np.int32), f"axis{int(axis) % rank}")
    lw.emit("CUMSUM", [lw.value(node.input[0]), axis_tensor], out=node.output[0], options=options)
