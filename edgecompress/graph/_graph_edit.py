"""Small edits of ONNX graphs shared by the rewriting passes: shapes, readers, constants, fresh names.

This module registers no pass. Every helper reads or edits the `onnx.ModelProto` it is given.
"""

from __future__ import annotations

import numpy as np


def static_shapes(model) -> dict[str, tuple[int, ...]]:
    """Shapes from the graph's own value_info after ONNX shape inference; symbolic dims make a shape unknown."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    shapes = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor = value.type.tensor_type
        if tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):
            shapes[value.name] = tuple(int(d.dim_value) for d in tensor.shape.dim)
    return shapes


def known_shapes(model) -> dict[str, tuple[int | str, ...]]:
    """Shapes after ONNX shape inference where every dim is known, a fixed size or a named symbol (the
    sequence axis of a graph that serves several lengths); dims with neither make a shape unknown."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    shapes = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor = value.type.tensor_type
        dims = tensor.shape.dim if tensor.HasField("shape") else []
        if tensor.HasField("shape") and all(d.HasField("dim_value") or d.dim_param for d in dims):
            shapes[value.name] = tuple(int(d.dim_value) if d.HasField("dim_value") else d.dim_param for d in dims)
    return shapes


def readers(model) -> dict[str, list]:
    """Value name -> the nodes that read it, in graph order."""
    found: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def reader_indices(model) -> dict[str, list[int]]:
    """Value name -> the positions in `graph.node` of the nodes that read it, in graph order.

    A rewrite that plans in one walk over the nodes and rebuilds the list in another matches nodes by
    position (valid until the node list is edited), never by id(): upb hands out Python wrappers for
    nodes that come and go, and reuses the id of a dropped one.
    """
    found: dict[str, list[int]] = {}
    for index, node in enumerate(model.graph.node):
        for name in node.input:
            found.setdefault(name, []).append(index)
    return found


def constant(model, name: str) -> np.ndarray | None:
    """The value of an initializer or Constant node output (what fold_constants leaves), else None."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            value = next((a for a in node.attribute if a.name == "value"), None)
            return None if value is None else numpy_helper.to_array(value.t)
    return None


# Constant attributes other than `value` (a tensor), with the numpy dtype each one means.
ATTRIBUTE_CONSTANTS = {
    "value_int": np.int64,
    "value_ints": np.int64,
    "value_float": np.float32,
    "value_floats": np.float32,
}


def tensor_constants(model) -> int:
    """Rewrite every `Constant(value_int(s)=...)` / `Constant(value_float(s)=...)` as `Constant(value=tensor)`,
    in place; returns how many were rewritten.

    Before -> After: `Constant<value_ints=[1, 128]>()` -> `Constant<value=int64[2] {1, 128}>()`. Both are
    valid ONNX, but ONNX Runtime's symbolic shape inference (quantizers, contrib shapes) and numpy_helper
    readers only take the tensor form; onnxscript's constant folder writes the attribute form for folded
    `Shape` outputs.
    """
    import onnx
    from onnx import numpy_helper

    count = 0
    for node in model.graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
            continue
        attribute = node.attribute[0]
        dtype = ATTRIBUTE_CONSTANTS.get(attribute.name)
        if dtype is None:
            continue
        value = np.array(onnx.helper.get_attribute_value(attribute), dtype=dtype)
        del node.attribute[:]
        node.attribute.append(onnx.helper.make_attribute("value", numpy_helper.from_array(value)))
        count += 1
    return count


def drop_unused(model, candidates: set) -> list[str]:
    """Remove what the removed nodes read or wrote and nothing uses any more: their weights, the Slice
    bounds (initializers or Constant nodes), stale value_info. Returns the dropped constants' names."""
    graph = model.graph
    used = {name for node in graph.node for name in node.input} | {v.name for v in graph.output}
    unused = candidates - used
    dropped = [init.name for init in graph.initializer if init.name in unused]
    for entries, gone in ((graph.initializer, unused), (graph.input, set(dropped))):
        _remove_named(entries, gone)
    forget_shapes(model, unused)
    constants = [node for node in graph.node if node.op_type == "Constant" and node.output[0] in unused]
    for node in constants:
        graph.node.remove(node)
    return dropped + [node.output[0] for node in constants]


def forget_shapes(model, names: set) -> None:
    """Drop the value_info of `names`: values a rewrite removed, or whose shape it changed."""
    _remove_named(model.graph.value_info, names)


def _remove_named(entries, names: set) -> None:
    kept = [entry for entry in entries if entry.name not in names]
    del entries[:]
    entries.extend(kept)


def all_names(model) -> set:
    graph = model.graph
    return (
        {init.name for init in graph.initializer}
        | {v.name for v in graph.input}
        | {name for node in graph.node for name in (*node.output, node.name)}
    )


def fresh(name: str, names: set) -> str:
    """`name`, or `name_<n>` when the graph already uses it."""
    candidate, n = name, 0
    while candidate in names:
        n += 1
        candidate = f"{name}_{n}"
    names.add(candidate)
    return candidate


def check_feeds(model, ctx) -> tuple[dict[str, np.ndarray], str]:
    """Token inputs from the calibration texts or synthetic padded rows; float inputs random normal."""
    import onnx

    from edgecompress.graph.attention_mask_value import check_rows

    feeds, source = check_rows(model, ctx)
    values = {value.name: value for value in model.graph.input}
    rng = np.random.default_rng(0)
    for name in feeds:
        tensor = values[name].type.tensor_type
        if tensor.elem_type == onnx.TensorProto.FLOAT:
            dims = [d.dim_value or 1 for d in tensor.shape.dim]
            feeds[name] = rng.normal(0, 1, (len(feeds[name]), *dims[1:])).astype(np.float32)
    return feeds, source
