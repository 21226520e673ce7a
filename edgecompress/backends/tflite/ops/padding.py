"""TFLite lowering of ONNX Pad (constant mode), which MobileBERT's trigram embedding writes (`F.pad` of the
token embeddings shifted one step left and right).

Before -> After: `Pad(X, pads [begin..., end...] const, value const)` -> `PAD(X, paddings
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
    """ONNX's flat [begin of each axis..., end of each axis...] -> TFLite's int32 [rank, 2]."""
    pads = lw.constant(node.input[1])
    if len(node.input) > 3 and node.input[3]:
        raise lw.unsupported(node, "an axes input (opset 18); pad every axis instead")
    if pads is None:
        raise lw.unsupported(node, "pads that are not constants")
    if (pads < 0).any():
        raise lw.unsupported(node, "negative pads (cropping)")
    return np.stack([pads[:rank], pads[rank:]], axis=1).astype(np.int32)
