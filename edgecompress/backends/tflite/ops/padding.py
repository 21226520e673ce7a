"""TFLite lowering of ONNX Pad (constant mode), which MobileBERT's trigram embedding writes (`F.pad` of the
token embeddings shifted one step left and right).

Before -> After: `Pad(X, pads [begin..., end...] const, value const, axes const)` -> `PAD(X, paddings
[[begin, end], ...])` when the value is 0, else `PADV2(X, paddings, value)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgecompress.backends.tflite.registry import lowers

if TYPE_CHECKING:  # the lowering imports this file's package; the registry keeps it a leaf
    from edgecompress.backends.tflite.lowering import Lowering


@lowers("Pad")
def pad(lw: Lowering, node) -> None:
    mode = lw.attr(node, "mode", b"constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        raise lw.unsupported(node, f"mode {mode!r} (only constant padding is lowered)")
    rank = len(lw.shape(node.input[0]))
    paddings = _paddings(lw, node, rank)
    value = lw.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if len(node.input) > 2 and node.input[2] and value is None:
        raise lw.unsupported(node, "a padding value that is not a constant")
    operands = [lw.value(node.input[0]), lw.const(paddings, f"{node.output[0]}/paddings")]
    if value is None or not value.any():
        lw.emit("PAD", operands, out=node.output[0], options=lw.options("Pad"))
        return
    fill = np.asarray(value, lw.dtype(node.input[0])).reshape(())
    operands.append(lw.const(fill, f"{node.output[0]}/value"))
    lw.emit("PADV2", operands, out=node.output[0], options=lw.options("PadV2"))


def _paddings(lw: Lowering, node, rank: int) -> np.ndarray:
    """ONNX's flat [begin of each axis..., end of each axis...] over `axes` -> TFLite's int32 [rank, 2]."""
    pads = lw.constant(node.input[1])
    axes = lw.constant(node.input[3]) if len(node.input) > 3 and node.input[3] else np.arange(rank)
    if pads is None or axes is None:
        raise lw.unsupported(node, "pads or axes that are not constants")
    if (pads < 0).any():
        raise lw.unsupported(node, "negative pads (cropping)")
    paddings = np.zeros((rank, 2), np.int32)
    for i, axis in enumerate(int(a) % rank for a in axes):
        paddings[axis] = pads[i], pads[i + len(axes)]
    return paddings
