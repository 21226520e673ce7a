"""ONNX Runtime artifacts carry the residual add and layer norm as `Add` + `LayerNormalization`, not the fused
`SkipLayerNormalization` that the transformer optimizer writes.

Before -> After, per residual (the graph stage's fused form; LiteRT lowers it as it is):
    SkipLayerNormalization(x, skip, gamma, beta, bias) -> LayerNormalization(Add(Add(x, skip), bias), gamma, beta)

Why: measured with onnxruntime 1.31 on the host (x86-64, 1 thread, tools/bench_buckets.py's teacher export),
the CPU kernel of the fused op costs 3x the pair it replaces (12 ops: 0.81 ms against 0.27 ms at 32 tokens),
and splitting it made the whole int8 `.onnx` 17-23% faster at every length from 16 to 128 tokens. Both kernels
are portable C++ in ONNX Runtime (no x86-only path), but the split has not been timed on an ARM phone: the
report names it, so that an on-device measurement can overturn it. ONNX Runtime does not fuse the pair back
when it loads the `.onnx` or converts the `.ort` (its SkipLayerNormFusion did not match the split graph at
level "all"; tests/test_ort_layer_norm.py keeps that true).
"""

from __future__ import annotations

from typing import Any

MS_DOMAIN = "com.microsoft"
# LayerNormalization entered the ai.onnx domain at opset 17; older graphs keep the fused op.
LAYER_NORM_OPSET = 17
NOTE = (
    "onnxruntime artifacts compute each residual add and layer norm as Add + LayerNormalization instead of "
    "SkipLayerNormalization: measured 3x faster for that op and 17-23% faster end to end on the host "
    "(onnxruntime 1.31, x86-64); not yet measured on an ARM device"
)


def split_skip_layer_norms(model) -> tuple[Any, int]:
    """The model with every SkipLayerNormalization split into Add and LayerNormalization (in place), and how
    many were split; an opset below 17 leaves the model as it is."""
    from onnx import helper

    if _onnx_opset(model) < LAYER_NORM_OPSET:
        return model, 0
    nodes, split = [], 0
    for node in model.graph.node:
        if node.op_type == "SkipLayerNormalization" and node.domain == MS_DOMAIN:
            nodes += _split(node, helper)
            split += 1
        else:
            nodes.append(node)
    if split:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return model, split


def _split(node, helper) -> list:
    """Add(x, skip) [+ bias] -> LayerNormalization, keeping every output name the graph reads."""
    inputs = list(node.input) + [""] * (5 - len(node.input))
    x, skip, gamma, beta, bias = inputs[:5]
    outputs = list(node.output) + [""] * (4 - len(node.output))
    epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
    name = node.name or outputs[0]
    summed = outputs[3] or f"{name}/sum"  # output 3 is the residual sum: the next layer's skip reads it
    adds = [helper.make_node("Add", [x, skip], [summed if not bias else f"{name}/sum_skip"], name=f"{name}/add")]
    if bias:
        adds.append(helper.make_node("Add", [f"{name}/sum_skip", bias], [summed], name=f"{name}/add_bias"))
    norm_outputs = [outputs[0], outputs[1], outputs[2]]
    while norm_outputs and not norm_outputs[-1]:
        norm_outputs.pop()
    norm = helper.make_node(
        "LayerNormalization",
        [summed, gamma] + ([beta] if beta else []),
        norm_outputs,
        name=f"{name}/layer_norm",
        axis=-1,
        epsilon=epsilon,
    )
    return [*adds, norm]


def _onnx_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
