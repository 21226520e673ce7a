"""Legalize an ONNX graph for the TFLite backend: rewrite subgraphs LiteRT has no builtin for.

Before -> After:
- `Mul(Mul(X, Add(Erf(Div(X, sqrt(2))), 1)), 0.5)` (exact GELU as torch exports it, in either association
  and any operand order) -> `com.microsoft::Gelu(X)`, which lowers to the GELU builtin. LiteRT has no ERF
  builtin, so without this an unfused graph (`fuse_transformer` skipped, or a third-party ONNX file) could
  not be written at all.
- `Mul(Cast(MatMulInteger(DynamicQuantizeLinear(X), Wq)), Mul(s_x, s_w))` (ONNX Runtime's dynamic int8
  matmul) -> `com.microsoft::DynamicQuantizeMatMul(X, Wq, s_w, z_w)`, the op ONNX Runtime itself fuses it
  into when it loads the model; it lowers to a hybrid int8 FULLY_CONNECTED on X. An unfused attention's
  Q, K and V matmuls share one `DynamicQuantizeLinear(X)` (ONNX Runtime's quantizer quantizes each input
  once); it is first copied once per matmul, so that each chain matches on its own (the copies compute the
  same values, and the rewrite removes them all).
- `Concat(F(Slice(X, rows 0:1)), F(Slice(X, rows 1:S)))` (what `cls_row_apart` writes) -> `F(X)`: LiteRT
  quantizes per row, so the split changes nothing on it but costs copies (graph/rejoin_row_slices.py).
The math is unchanged on LiteRT (ONNX Runtime gives identical outputs before and after the first two); the
ONNX artifacts of the export do not see these rewrites, they happen on the backend's private copy.
"""

from __future__ import annotations

import math

from onnx import TensorProto

_TRIGGERS = ("Erf", "MatMulInteger")


def _gelu_outer_half(op, x):
    return 0.5 * (x * (op.Erf(x / math.sqrt(2)) + 1.0))


def _gelu_inner_half(op, x):
    return x * (0.5 * (op.Erf(x / math.sqrt(2)) + 1.0))


def _gelu(op, x):
    return op.Gelu(x, _domain="com.microsoft")


def _dynamic_int8_matmul(op, x, weights, weight_zero, weight_scale):
    quantized, scale, zero = op.DynamicQuantizeLinear(x, _outputs=3)
    product = op.MatMulInteger(quantized, weights, zero, weight_zero)
    return op.Mul(op.Cast(product, to=TensorProto.FLOAT), op.Mul(scale, weight_scale))


def _dynamic_quantize_matmul(op, x, weights, weight_zero, weight_scale):
    return op.DynamicQuantizeMatMul(x, weights, weight_scale, weight_zero, _domain="com.microsoft")


def legalize_for_tflite(model, *, rejoin_row_splits: bool = True):
    """`model` with the rewrites above applied, as a copy when any applies (the input is not modified); the
    row splits stay when the lowering keeps ONNX Runtime's per-tensor grids (`rejoin_row_splits=False`)."""
    from edgecompress.backends.tflite.rejoin_row_slices import rejoin_row_slices

    triggered = any(node.op_type in _TRIGGERS for node in model.graph.node)
    legal = _rewritten(_one_quantizer_per_matmul(model)) if triggered else model
    return rejoin_row_slices(legal) if rejoin_row_splits else legal


def _rewritten(model):
    from onnxscript.rewriter import pattern, rewrite

    rules = pattern.RewriteRuleSet(
        [
            pattern.RewriteRule(_gelu_outer_half, _gelu),
            pattern.RewriteRule(_gelu_inner_half, _gelu),
            pattern.RewriteRule(_dynamic_int8_matmul, _dynamic_quantize_matmul),
        ],
        commute=True,
    )
    result = rewrite(model, pattern_rewrite_rules=rules)
    result.ir_version = model.ir_version
    return result


def _one_quantizer_per_matmul(model):
    """A copy of `model` where every `DynamicQuantizeLinear` read by several int8 matmul chains is copied per
    chain (see the module docstring); `model` itself when none is shared."""
    import onnx

    graph = model.graph
    producer = {name: node for node in graph.node for name in node.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    shared = [
        node
        for node in graph.node
        if node.op_type == "DynamicQuantizeLinear" and len(_chains(node, readers, producer)) > 1
    ]
    if not shared:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    nodes = {id(node): i for i, node in enumerate(graph.node)}
    for quantizer in shared:
        for k, chain in enumerate(_chains(quantizer, readers, producer)[1:], start=1):
            renamed = {name: f"{name}/chain{k}" for name in quantizer.output}
            clone = copy.graph.node.add()
            clone.CopyFrom(quantizer)
            clone.name = f"{quantizer.name}/chain{k}"
            clone.output[:] = [renamed[name] for name in quantizer.output]
            for reader in chain:
                target = copy.graph.node[nodes[id(reader)]]
                target.input[:] = [renamed.get(name, name) for name in target.input]
    return _topologically_sorted(copy)


def _chains(quantizer, readers, producer) -> list[list]:
    """The readers of `quantizer`'s outputs grouped per int8 matmul chain: each `MatMulInteger` with the
    `Mul(scale, s_w)` that its `Mul(Cast(product), ...)` multiplies by. Empty when some reader fits no chain."""
    chains = []
    for matmul in (r for r in readers.get(quantizer.output[0], []) if r.op_type == "MatMulInteger"):
        casts = readers.get(matmul.output[0], [])
        finals = readers.get(casts[0].output[0], []) if len(casts) == 1 else []
        if len(finals) != 1:
            return []
        scale_muls = [producer.get(name) for name in finals[0].input if name != casts[0].output[0]]
        chains.append([matmul, *(m for m in scale_muls if m is not None and quantizer.output[1] in m.input)])
    accounted = {id(node) for chain in chains for node in chain}
    everyone = {id(node) for name in quantizer.output for node in readers.get(name, [])}
    return chains if accounted == everyone else []


def _topologically_sorted(model):
    """The copies were appended at the end of the node list; ONNX wants producers before readers."""
    import onnx

    graph = model.graph
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            return model  # a cycle or a missing input: leave it for the checker to name
        for node in ready:
            available.update(node.output)
            ordered.append(onnx.NodeProto())
            ordered[-1].CopyFrom(node)
        pending = [n for n in pending if not any(n is r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)
    return model
