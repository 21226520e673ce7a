"""TFLite lowering of ONNX Tile, which DeBERTa's disentangled attention writes: the relative-position keys
and queries, projected once, are repeated for every text of the batch.

Before -> After: `Tile(X, repeats)` -> `TILE(X, repeats as int32)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgecompress.backends.tflite.registry import lowers

if TYPE_CHECKING:  # the lowering imports this file's package; the registry keeps it a leaf
    from edgecompress.backends.tflite.lowering import Lowering

_INT32 = np.dtype(np.int32)


@lowers("Tile")
def tile(lw: Lowering, node) -> None:
    repeats = lw.constant(node.input[1])
    if repeats is not None:
        multiples = lw.const(repeats.astype(np.int32), f"multiples{repeats.tolist()}")
    else:
        multiples = lw.emit("CAST", [lw.value(node.input[1])], shape=lw.shape(node.input[1]), dtype=_INT32)
    lw.emit("TILE", [lw.value(node.input[0]), multiples], out=node.output[0])
