"""TFLite lowering of ONNX `CumSum`: LiteRT's CUMSUM builtin (int32, int64 and float32 inputs).

Where it occurs: RoBERTa-family embeddings number the non-pad tokens with a running sum over
`input_ids != pad` (position id = cumsum(mask) * mask + pad), so every RoBERTa and XLM-R graph has one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgecompress.backends.tflite.registry import lowers

if TYPE_CHECKING:  # the lowering imports this file's package; the registry keeps it a leaf
    from edgecompress.backends.tflite.lowering import Lowering

_KERNEL_DTYPES = (np.dtype(np.int32), np.dtype(np.int64), np.dtype(np.float32))


@lowers("CumSum")
def cumsum(lw: Lowering, node) -> None:
    """`CumSum(X, axis, exclusive, reverse)` -> `CUMSUM(X, axis, exclusive, reverse)` for a constant axis."""
    axis = lw.constant(node.input[1])
    if axis is None:
        raise lw.unsupported(node, "an axis that is not a constant")
    dtype = lw.dtype(node.input[0])
    if dtype not in _KERNEL_DTYPES:
        raise lw.unsupported(node, f"input type {dtype} (LiteRT's CUMSUM takes int32, int64 and float32)")
    rank = len(lw.shape(node.input[0]))
    axis_value = int(np.asarray(axis).reshape(())) % rank
    lw.emit(
        "CUMSUM",
        [lw.value(node.input[0]), lw.const(np.array(axis_value, np.int32), f"axis{axis_value}")],
        out=node.output[0],
        options=lw.options(
            "Cumsum", exclusive=bool(lw.attr(node, "exclusive", 0)), reverse=bool(lw.attr(node, "reverse", 0))
        ),
    )
