"""TFLite lowering of ONNX GatherElements, which DeBERTa's disentangled attention writes: per query row, the
content-to-position (and position-to-content) scores are picked at each key's relative-position bucket.

LiteRT has no element-wise gather; GATHER_ND reads whole coordinates, so each index becomes a full one.

Before -> After:
- `GatherElements(X [..., R, K], I const [..., R, J], axis=-1)` with the same I[r, j] for every leading index
  (DeBERTa: fixed shapes make the relative-position buckets a constant table, broadcast over batch and heads)
  -> `RESHAPE(GATHER(RESHAPE(X, [n, R*K]), r*K + I[r, j] (int32 [R*J]), axis=1), out shape)`. The table is one
  int32 per score, stored once per bucket length and shared by every layer reading the same positions (full
  coordinates would take rank x 4 bytes per score of every head, batch row and layer: ~75 MB on
  DeBERTa-v3-base at 128 tokens).
- otherwise `GATHER_ND(X, CONCATENATION(coordinates of the other axes (constant), RESHAPE(FLOOR_MOD(CAST(I),
  X.shape[axis]), [..., 1])))` with the coordinates in axis order (all of them constant when I is). Run-time
  indices come from a hand-exported RoBERTa (or BERT) without `token_type_ids`: it gathers its zero token-type
  buffer by the CumSum-computed position ids; FLOOR_MOD maps ONNX's negative indices into range.
"""

from __future__ import annotations

import hashlib
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
    indices = lw.constant(node.input[1])
    if indices is not None and _row_table_gather(lw, node, np.where(indices < 0, indices + data_shape[axis], indices)):
        return
    grid = np.indices(index_shape, dtype=np.int32)  # [rank, *index_shape]: each element's own coordinates
    if indices is not None:
        grid[axis] = np.where(indices < 0, indices + data_shape[axis], indices)
        coordinates = lw.const(np.moveaxis(grid, 0, -1).copy(), f"{node.output[0]}/coordinates")
    else:
        coordinates = _coordinates_at_run_time(lw, node, grid, axis)
    lw.emit("GATHER_ND", [lw.value(node.input[0]), coordinates], out=node.output[0], options=lw.options("GatherNd"))


def _row_table_gather(lw: Lowering, node, indices: np.ndarray) -> bool:
    """The one-GATHER form of the module docstring, when it applies (else False, nothing written)."""
    data_shape, index_shape = lw.shape(node.input[0]), indices.shape
    rank = len(index_shape)
    if rank < 2 or int(lw.attr(node, "axis", 0)) % rank != rank - 1 or data_shape[:-1] != index_shape[:-1]:
        return False
    tables = indices.reshape(-1, *index_shape[-2:])
    if not (tables == tables[0]).all():
        return False
    rows, width = data_shape[-2], data_shape[-1]
    flat = (np.arange(rows)[:, None] * width + tables[0]).reshape(-1).astype(np.int32)
    leading = int(np.prod(index_shape[:-2], dtype=np.int64))
    flat_data = [leading, rows * width]
    x = lw.emit(
        "RESHAPE",
        [lw.value(node.input[0]), lw.const(np.array(flat_data, np.int32), f"shape{flat_data}")],
        shape=flat_data,
        dtype=lw.dtype(node.input[0]),
    )
    table = lw.const(flat, f"gather_elements_rows/{hashlib.sha256(flat.tobytes()).hexdigest()[:16]}")
    gathered = lw.emit(
        "GATHER",
        [x, table],
        shape=[leading, flat.size],
        dtype=lw.dtype(node.input[0]),
        options=lw.options("Gather", axis=1),
    )
    out_shape = list(lw.shape(node.output[0]))
    lw.emit("RESHAPE", [gathered, lw.const(np.array(out_shape, np.int32), f"shape{out_shape}")], out=node.output[0])
    return True


def _coordinates_at_run_time(lw: Lowering, node, grid: np.ndarray, axis: int) -> int:
    """[..., rank] int32 coordinates: the constant ones of the other axes around the run-time indices."""
    index_shape = tuple(grid.shape[1:])
    column = (*index_shape, 1)
    index = lw.value(node.input[1])
    if lw.dtype(node.input[1]) != _INT32:
        index = lw.emit("CAST", [index], shape=index_shape, dtype=_INT32)
    size = lw.shape(node.input[0])[axis]
    index = lw.emit(
        "FLOOR_MOD", [index, lw.const(np.array(size, np.int32), f"dim{size}_int32")], shape=index_shape, dtype=_INT32
    )
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
