"""Join row-split copies of a row-wise chain back into one chain, for runtimes that quantize per row.

Before -> After (what `cls_row_apart` writes, after `quantize_dynamic` and the TFLite legalisation):
  `Concat(F(Slice(X, rows 0:1)), F(Slice(X, rows 1:S)), axis 1)` -> `F(X)`, where F is the same chain of
  row-wise ops in both copies (same op types, attributes and constant inputs): DynamicQuantizeMatMul,
  MatMul by a constant, BiasGelu, FastGelu, Gelu, Relu, Add/Mul by a row-independent constant.

Why this is exact on LiteRT: the TFLite lowering of DynamicQuantizeMatMul is a hybrid FULLY_CONNECTED,
which quantizes every row on its own range; a row's result is then the same whether row 0 is computed
beside it or apart. ONNX Runtime quantizes per tensor, which is why the ONNX artifact keeps the split.
Joined, the .tflite saves the two slices, the concatenation and a second set of small kernels per FFN
(MiniLM teacher at seq 128: 5.31 ms split, 4.87 ms joined, one thread).

This is a helper of `legalize_for_tflite`, not a pass: the ONNX artifacts never see it.
"""

from __future__ import annotations

from edgecompress.graph._graph_edit import constant, drop_unused, forget_shapes, readers
from edgecompress.graph._quant_common import copy_model
from edgecompress.graph.cls_row_apart import ROW_WISE_OPS
from edgecompress.onnx_facts import node_attribute

# A Slice end at or past this runs "to the end" of any axis a model here has (cls_row_apart writes int64 max).
TO_THE_END = 2**31 - 1

# cls_row_apart's row-wise ops, plus the MatMuls by a constant: DynamicQuantizeMatMul is row-wise on LiteRT only
_ROW_WISE_OPS = ROW_WISE_OPS | {("com.microsoft", "DynamicQuantizeMatMul"), ("", "MatMul")}


def rejoin_row_slices(model):
    """`model` itself when it has no joinable row split, else a copy with every one joined."""
    if not _joins(model):
        return model
    model = copy_model(model)
    joins = _joins(model)
    # Nodes go by their position, found by their outputs (unique in the graph) before any rewiring: after it,
    # the kept chain writes the Concat's output. Never by id(): upb recycles the ids of dropped node wrappers.
    dropped = {tuple(node.output) for _, (_, first_chain, _, slices) in joins for node in (*first_chain, *slices)} | {
        tuple(concat.output) for concat, _ in joins
    }
    removed = {index for index, node in enumerate(model.graph.node) if tuple(node.output) in dropped}
    orphans = set()
    for concat, (x, first_chain, other_chain, slices) in joins:
        orphans.update(name for node in (*first_chain, *slices, concat) for name in (*node.input, *node.output))
        _rewire(other_chain, x, concat.output[0])
        forget_shapes(model, {name for node in other_chain for name in node.output})  # now over all rows
    kept = [node for index, node in enumerate(model.graph.node) if index not in removed]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    drop_unused(model, orphans)
    return model


def _joins(model) -> list:
    """(Concat, what `_joinable` found) for every Concat along axis 1 that joins a row split."""
    concats = [
        n
        for n in model.graph.node
        if n.op_type == "Concat" and len(n.input) == 2 and node_attribute(n, "axis", None) in (1, -2)
    ]
    if not concats:
        return []
    by_input = readers(model)
    producers = {name: node for node in model.graph.node for name in node.output}
    found = [(concat, _joinable(model, concat, producers, by_input)) for concat in concats]
    return [(concat, joined) for concat, joined in found if joined is not None]


def _joinable(model, concat, producers: dict, by_input: dict):
    """(X, chain on row 0, chain on rows 1:, the two Slices) when `concat` joins a row split, else None."""
    chains = [_chain_to_slice(name, producers, by_input) for name in concat.input]
    if any(chain is None for chain in chains):
        return None
    (first, first_slice), (other, other_slice) = chains
    x = first_slice.input[0]
    if other_slice.input[0] != x or len(first) != len(other) or not first:
        return None
    other_rows = _rows(model, other_slice)
    if _rows(model, first_slice) != (0, 1) or other_rows is None or other_rows[0] != 1 or other_rows[1] < TO_THE_END:
        return None
    if not all(_same_op(model, a, b) for a, b in zip(first, other)):
        return None
    return x, first, other, (first_slice, other_slice)


def _chain_to_slice(value: str, producers: dict, by_input: dict):
    """(row-wise nodes from the Slice to `value`, the Slice) when each value has one reader, else None."""
    chain = []
    node = producers.get(value)
    while node is not None and node.op_type != "Slice":
        if (node.domain or "", node.op_type) not in _ROW_WISE_OPS or len(by_input.get(node.output[0], [])) != 1:
            return None
        chain.append(node)
        node = producers.get(node.input[0])
    if node is None or len(by_input.get(node.output[0], [])) != 1:
        return None
    return chain[::-1], node


def _rows(model, slice_node) -> tuple[int, int] | None:
    """(start, stop) of a Slice along axis 1 with step 1, or None for any other slicing."""
    values = [constant(model, name) for name in slice_node.input[1:]]
    if len(values) < 3 or any(v is None or v.size != 1 for v in values):
        return None
    if int(values[2].reshape(-1)[0]) != 1 or (len(values) > 3 and int(values[3].reshape(-1)[0]) != 1):
        return None
    return int(values[0].reshape(-1)[0]), int(values[1].reshape(-1)[0])


def _same_op(model, a, b) -> bool:
    """Same op, attributes and non-data inputs (constants, by name or by value), data input at the same place."""
    if (a.op_type, a.domain, len(a.input)) != (b.op_type, b.domain, len(b.input)):
        return False
    if sorted(x.SerializeToString() for x in a.attribute) != sorted(x.SerializeToString() for x in b.attribute):
        return False
    for index, (left, right) in enumerate(zip(a.input, b.input)):
        if index == 0 or left == right:
            continue
        lv, rv = constant(model, left), constant(model, right)
        if lv is None or rv is None or lv.shape != rv.shape or not (lv == rv).all():
            return False
    return True


def _rewire(chain: list, x: str, out: str) -> None:
    chain[0].input[0] = x
    chain[-1].output[0] = out
