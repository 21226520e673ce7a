"""What an .onnx file's attention blocks say about the model: head count, head size, widths and depth.

ONNX intake has no config.json, so ONNX Runtime's fuser must learn the head count from the graph. It reads
it off the Q projection's Reshape to `[batch, seq, heads, head_size]` and falls back to the `num_heads` it
is given when that entry is not a positive constant. transformers 5 writes `view(*input_shape, -1,
head_dim)`: the heads entry is -1, and with 0 given the fuser fused no attention at all. The head count is
therefore derived here from what the graph does fix, the head size and the projection's width:

    MatMul(x, W[hidden, width]) -> Add(bias) -> Reshape(Concat(.., .., -1, head_size))
        -> heads = width / head_size

Every Q/K/V projection of the graph must agree; a graph whose blocks disagree (heads pruned per layer) or
that shows none of this gives no geometry, and the fuser reads what it can on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

_ONNX_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class AttentionGeometry:
    heads: int
    head_size: int
    hidden_size: int  # width of the projections' input (the residual stream)
    blocks: int  # attention blocks, one Softmax each

    @property
    def attention_width(self) -> int:
        """Q/K/V width (heads x head size): what ONNX Runtime's fuser calls `hidden_size`."""
        return self.heads * self.head_size


def read_attention_geometry(model) -> AttentionGeometry | None:
    """The one head layout every Q/K/V head split of the graph shows, or None when there is not exactly one."""
    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    constants = _small_constants(model)
    weight_dims = {init.name: tuple(init.dims) for init in graph.initializer}
    layouts = set()
    for node in graph.node:
        if node.op_type == "Reshape" and node.domain in _ONNX_DOMAINS:
            layout = _head_split(node, producers, constants, weight_dims)
            if layout is not None:
                layouts.add(layout)
    if len(layouts) != 1:
        return None
    heads, head_size, hidden = layouts.pop()
    blocks = sum(node.op_type == "Softmax" for node in graph.node)
    return AttentionGeometry(heads=heads, head_size=head_size, hidden_size=hidden, blocks=blocks)


def _head_split(reshape, producers, constants, weight_dims) -> tuple[int, int, int] | None:
    """(heads, head_size, hidden) of a Reshape that splits a linear projection into heads, else None."""
    weight = _projection_weight(reshape.input[0], producers, weight_dims)
    tail = _shape_tail(reshape.input[1], producers, constants)
    if weight is None or tail is None:
        return None
    hidden, width = weight
    heads_entry, size_entry = tail
    if size_entry > 0 and width % size_entry == 0:
        heads = width // size_entry
        return (heads, size_entry, hidden) if heads_entry in (-1, 0, heads) else None
    if heads_entry > 0 and width % heads_entry == 0 and size_entry in (-1, 0):
        return heads_entry, width // heads_entry, hidden
    return None


def _projection_weight(name: str, producers, weight_dims: Mapping[str, tuple[int, ...]]) -> tuple[int, int] | None:
    """(input width, output width) of `MatMul(x, W)` or `Add(MatMul(x, W), b)` producing `name`."""
    node = producers.get(name)
    if node is not None and node.op_type == "Add":
        node = next((producers[i] for i in node.input if i in producers and producers[i].op_type == "MatMul"), None)
    if node is None or node.op_type != "MatMul":
        return None
    dims = weight_dims.get(node.input[1])
    return (int(dims[0]), int(dims[1])) if dims is not None and len(dims) == 2 else None


def _shape_tail(name: str, producers, constants: Mapping[str, np.ndarray]) -> tuple[int, int] | None:
    """The last two entries of a 4-entry Reshape target: a constant, or a Concat whose last two parts are."""
    shape = constants.get(name)
    if shape is not None:
        return (int(shape[2]), int(shape[3])) if shape.shape == (4,) else None
    concat = producers.get(name)
    if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
        return None
    heads, head_size = (constants.get(part) for part in concat.input[2:])
    if heads is None or head_size is None or heads.size != 1 or head_size.size != 1:
        return None
    return int(heads.reshape(-1)[0]), int(head_size.reshape(-1)[0])


def _small_constants(model) -> dict[str, np.ndarray]:
    """Values of the initializers and Constant nodes small enough to be a shape (not the weights)."""
    from onnx import helper, numpy_helper

    small = [init for init in model.graph.initializer if int(np.prod(init.dims)) <= 8]
    values = {init.name: numpy_helper.to_array(init) for init in small}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in _ONNX_DOMAINS and len(node.attribute) == 1:
            attribute = node.attribute[0]
            if attribute.name in ("value", "value_int", "value_ints"):
                value = helper.get_attribute_value(attribute)
                values[node.output[0]] = numpy_helper.to_array(value) if attribute.name == "value" else np.array(value)
    return values
