"""TFLite lowering of ONNX GatherElements, which DeBERTa's disentangled attention writes: per query row, the
content-to-position (and position-to-content) scores are picked at each key's relative-position bucket.

LiteRT has no element-wise gather; GATHER_ND reads whole coordinates, so each index becomes a full one.

Before -> After: `GatherElements(X, I, axis)` ->
    `GATHER_ND(X, CONCATENATION(coordinates of the other axes (constant), RESHAPE(CAST(I), [..., 1])))`
with the coordinates in axis order; a constant I (fixed shapes make DeBERTa's buckets constant) becomes one
constant coordinate table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgecompress.backends.tflite.registry import lowers

if TYPE_CHECKING:  # the lowering imports this file's package; the registry keeps it a leaf
    from edgecompress.backends.tflite.lowering import Lowering

_INT32 = np.dtype(np.int32)


@lowers("GatherElements")
def gather_elements(lw: Lowering, node) -> None:
    data_shape, index_shape = lw.shape(node.input[0]), lw.shape(node.input[1])
    rank = len(index_shape)
    axis = int(lw.attr(node, "axis", 0)) % rank
    grid = np.indices(index_shape, dtype=np.int32)  # [rank, *index_shape]: each element's own coordinates
    indices = lw.constant(node.input[1])
    if indices is not None:
        grid[axis] = np.where(indices < 0, indices + data_shape[axis], indices)
        coordinates = lw.const(np.moveaxis(grid, 0, -1).copy(), f"{node.output[0]}/coordinates")
    else:
        coordinates = _coordinates_at_run_time(lw, node, grid, axis)
    lw.emit("GATHER_ND", [lw.value(node.input[0]), coordinates], out=node.output[0], options=lw.options("GatherNd"))


def _coordinates_at_run_time(lw: Lowering, node, grid: np.ndarray, axis: int) -> int:
    """[..., rank] int32 coordinates: the constant ones of the other axes around the run-time indices."""
    index_shape = tuple(grid.shape[1:])
    column = (*index_shape, 1)
    index = lw.value(node.input[1])
    if lw.dtype(node.input[1]) != _INT32:
        index = lw.emit("CAST", [index], shape=index_shape, dtype=_INT32)
    index = lw.emit(
        "RESHAPE", [index, lw.const(np.array(column, np.int32), f"shape{list(column)}")], shape=column, dtype=_INT32
    )
    parts = []
    if axis > 0:
        parts.append(lw.const(np.moveaxis(grid[:axis], 0, -1).copy(), f"{node.output[0]}/coordinates_before"))
    parts.append(index)
    if axis < len(index_shape) - 1:
        parts.append(lw.const(np.moveaxis(grid[axis + 1 :], 0, -1).copy(), f"{node.output[0]}/coordinates_after"))
    if len(parts) == 1:
        return index
    return lw.emit(
        "CONCATENATION",
        parts,
        shape=(*index_shape, len(index_shape)),
        dtype=_INT32,
        options=lw.options("Concatenation", axis=len(index_shape)),
    )
