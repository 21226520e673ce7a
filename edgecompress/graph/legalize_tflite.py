"""Legalize an ONNX graph for the TFLite backend: rewrite subgraphs LiteRT has no builtin for.

Before -> After: `Mul(Mul(X, Add(Erf(Div(X, sqrt(2))), 1)), 0.5)` (exact GELU as torch exports it, in
either association and any operand order) -> `com.microsoft::Gelu(X)`, which lowers to the GELU builtin.
LiteRT has no ERF builtin, so without this an unfused graph (`fuse_transformer` skipped, or a
third-party ONNX file) could not be written at all. The math is unchanged; the ONNX artifacts of the
export do not see this rewrite, it happens on the backend's private copy.
"""

from __future__ import annotations

import math


def _gelu_outer_half(op, x):
    return 0.5 * (x * (op.Erf(x / math.sqrt(2)) + 1.0))


def _gelu_inner_half(op, x):
    return x * (0.5 * (op.Erf(x / math.sqrt(2)) + 1.0))


def _gelu(op, x):
    return op.Gelu(x, _domain="com.microsoft")


def legalize_for_tflite(model):
    """A copy of `model` with the rewrites above applied (the input is not modified)."""
    from onnxscript.rewriter import pattern, rewrite

    if not any(node.op_type == "Erf" for node in model.graph.node):
        return model

    rules = pattern.RewriteRuleSet([pattern.RewriteRule(_gelu_outer_half, _gelu),
                                    pattern.RewriteRule(_gelu_inner_half, _gelu)], commute=True)
    result = rewrite(model, pattern_rewrite_rules=rules)
    result.ir_version = model.ir_version
    return result
