"""Legalize an ONNX graph for the TFLite backend: rewrite subgraphs LiteRT has no builtin for.

Before -> After:
- `Mul(Mul(X, Add(Erf(Div(X, sqrt(2))), 1)), 0.5)` (exact GELU as torch exports it, in either association
  and any operand order) -> `com.microsoft::Gelu(X)`, which lowers to the GELU builtin. LiteRT has no ERF
  builtin, so without this an unfused graph (`fuse_transformer` skipped, or a third-party ONNX file) could
  not be written at all.
- `Mul(Cast(MatMulInteger(DynamicQuantizeLinear(X), Wq)), Mul(s_x, s_w))` (ONNX Runtime's dynamic int8
  matmul) -> `com.microsoft::DynamicQuantizeMatMul(X, Wq, s_w, z_w)`, the op ONNX Runtime itself fuses it
  into when it loads the model; it lowers to a hybrid int8 FULLY_CONNECTED on X.
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
    legal = _rewritten(model) if triggered else model
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
