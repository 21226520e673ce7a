"""GatherElements -> LiteRT's GATHER_ND with the other axes' coordinates as constants.

Before -> After: `GatherElements(X, I, axis)` with I of fixed shape S ->
`GATHER_ND(X, CONCATENATION(c_0, .., FLOOR_MOD(I, X.shape[axis]), .., c_n))` where c_k = the k-th
coordinate of every element of S (`np.indices`), one trailing axis each.

A RoBERTa (or BERT) exported without `token_type_ids` gathers its zero token-type buffer by the position ids,
which a RoBERTa computes from the input (a CumSum), so the node cannot be folded at export. FLOOR_MOD maps
ONNX's negative indices into range, as the op allows them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgecompress.backends.tflite.registry import lowers

if TYPE_CHECKING:
    from edgecompress.backends.tflite.lowering import Lowering


@lowers("GatherElements")
def gather_elements(lw: Lowering, node) -> None:
    data_shape, index_shape = lw.shape(node.input[0]), lw.shape(node.input[1])
    axis = int(lw.attr(node, "axis", 0)) % len(data_shape)
    dtype = np.dtype(np.int64) if lw.dtype(node.input[1]) == np.int64 else np.dtype(np.int32)
    trailing = (*index_shape, 1)
    wrapped = lw.emit(
        "FLOOR_MOD",
        [lw.value(node.input[1]), lw.const(np.array(data_shape[axis], dtype), f"dim{data_shape[axis]}_{dtype}")],
        shape=index_shape,
        dtype=dtype,
    )
    index = lw.emit(
        "RESHAPE",
        [wrapped, lw.const(np.array(trailing, np.int32), f"shape{list(trailing)}")],
        shape=trailing,
        dtype=dtype,
    )
    coordinates = np.indices(index_shape, dtype=dtype)
    parts = [
        index
        if k == axis
        else lw.const(coordinates[k].reshape(trailing), f"coordinate{k}_of{list(index_shape)}_{dtype}")
        for k in range(len(data_shape))
    ]
    joined = lw.emit(
        "CONCATENATION",
        parts,
        shape=(*index_shape, len(data_shape)),
        dtype=dtype,
        options=lw.options("Concatenation", axis=len(index_shape)),
    )
    lw.emit("GATHER_ND", [lw.value(node.input[0]), joined], out=node.output[0])
