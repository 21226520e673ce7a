"""CumSum -> LiteRT's CUMSUM builtin.

Before -> After: `CumSum(X, axis, exclusive, reverse)` -> `CUMSUM(X, axis:int32[], exclusive, reverse)`.

RoBERTa-family embeddings number their positions from the tokens that are not padding,
`cumsum(input_ids != pad, dim=1) * mask + pad`, so every RoBERTa graph carries a CumSum over the
sequence axis that only the input fixes (not foldable). LiteRT's CUMSUM takes float32, int32 and int64.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgecompress.backends.tflite.registry import lowers

if TYPE_CHECKING:
    from edgecompress.backends.tflite.lowering import Lowering

_CUMSUM_TYPES = (np.float32, np.int32, np.int64)


@lowers("CumSum")
def cumsum(lw: Lowering, node) -> None:
    axis = lw.constant(node.input[1])
    if axis is None:
        raise lw.unsupported(node, "its axis is computed at run time; LiteRT's CUMSUM needs it fixed")
    if lw.dtype(node.input[0]) not in _CUMSUM_TYPES:
        raise lw.unsupported(node, f"LiteRT's CUMSUM takes float32, int32 or int64, not {lw.dtype(node.input[0])}")
    rank = len(lw.shape(node.input[0]))
    axis_value = np.array(int(axis.reshape(-1)[0]) % rank, np.int32)
    options = lw.options(
        "Cumsum", exclusive=bool(lw.attr(node, "exclusive", 0)), reverse=bool(lw.attr(node, "reverse", 0))
    )
    lw.emit(
        "CUMSUM",
        [lw.value(node.input[0]), lw.const(axis_value, f"cumsum_axis{int(axis_value)}")],
        out=node.output[0],
        options=options,
    )
