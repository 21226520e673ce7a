"""Fuse BERT subgraphs into ONNX Runtime's contrib ops with `onnxruntime.transformers`.

Before -> After (per layer): `MatMul x3 -> Reshape/Transpose -> MatMul -> Div -> Add(mask) -> Softmax
-> MatMul -> Transpose/Reshape` -> `Attention`; `Add -> LayerNormalization` -> `SkipLayerNormalization`;
`Add(bias) -> Erf-GELU` -> `BiasGelu`.

Measured on MiniLM-L6 (torch 2.13, onnxruntime 1.31): this optimizer fuses 6/6 attention blocks of
our eager-attention TorchScript export; onnxscript's `ort_fusions` fuses them into
`MultiHeadAttention` with separate Q/K/V MatMuls (36 MatMul left vs 18). A library upgrade that
silently stops fusing would ship a slow model, so `ensures` fails loudly when attention fusion
falls short of what the family expects (one op per layer for BERT).

Families whose attention this optimizer has no pattern for (MobileBERT, MPNet) declare
`own_attention_fusion`: their blocks then go through our own rule (`attention_to_mha.py`,
-> `MultiHeadAttention`), checked against the fuser's graph on padded rows before it is kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from edgecompress.errors import InternalError
from edgecompress.logs import captured_library_output
from edgecompress.passes import Pass, PassContext, PassResult, PassSkipped, register_pass

log = logging.getLogger(__name__)

_ATTENTION_OPS = ("Attention", "MultiHeadAttention")


@register_pass
@dataclass(frozen=True)
class FuseTransformer(Pass):
    name = "fuse_transformer"
    stage = "graph"
    in_place = True  # ONNX Runtime's fuser rewrites the proto it is given and returns it
    # On the dynamic-shape graph: measured on MiniLM, fixing shapes and folding first left ONNX Runtime's
    # SkipLayerNormalization and EmbedLayerNormalization fusions unmatched (0 of 12 and 1).
    runs_before = ("fix_shapes", "fold_constants")
    # When true, fewer fused attention ops than encoder layers fails the export.
    require_attention: bool = True

    def requires(self, model, ctx: PassContext) -> None:
        if not any(n.op_type == "Softmax" for n in model.graph.node):
            raise PassSkipped("no Softmax in the graph: nothing that looks like attention to fuse")

    def run(self, model, ctx: PassContext) -> PassResult:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.onnx_model_bert import BertOnnxModel
        from onnxruntime.transformers.optimizer import optimize_by_fusion

        family = ctx.architecture
        model_type = family.ort_model_type if family else "bert"
        blocks = ctx.num_layers or _attention_blocks(model)
        expected = family.expected_fused_attention(blocks) if family else blocks
        ir_version = model.ir_version  # the fuser may change it
        options = FusionOptions(model_type)
        with captured_library_output() as library_notes:
            # 0 lets the fuser read heads and width off the graph (ONNX intake has no config).
            optimized: BertOnnxModel = optimize_by_fusion(
                model,
                model_type=model_type,
                num_heads=ctx.num_heads or 0,
                hidden_size=ctx.hidden_size or 0,
                optimization_options=options,
            )
        fused = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
        result = optimized.model  # `model` itself, rewritten
        result.ir_version = ir_version
        ours, own_notes = _own_attention(result, ctx) if family and family.own_attention_fusion else (0, [])
        if ours:
            fused["MultiHeadAttention"] = fused.get("MultiHeadAttention", 0) + ours
        _ensure_opset_import(result, "com.microsoft", 1)
        notes = [", ".join(f"{n} {op}" for op, n in sorted(fused.items())) or "no subgraph fused"]
        notes += own_notes + [f"onnxruntime.transformers said: {line}" for line in library_notes]
        attention = sum(fused.get(op, 0) for op in _ATTENTION_OPS)
        if attention < blocks and family is not None and attention >= expected:  # short of it: `ensures` fails
            why = family.unfused_attention or "the fuser has no pattern for it"
            unfused = f"{blocks - attention} of {blocks} layers"
            notes.append(f"attention runs unfused for {family.family} in {unfused}: {why}")
        return PassResult(result, notes, {"fused": fused, "expected_attention": expected})

    def ensures(self, before, result: PassResult, ctx: PassContext) -> None:
        attention = sum(result.stats["fused"].get(op, 0) for op in _ATTENTION_OPS)
        expected = result.stats["expected_attention"]
        if attention >= expected:
            return
        message = (
            f"attention fusion fell short: {attention} fused attention ops for {expected} "
            f"encoder layers, so ONNX Runtime would run the slow unfused path"
        )
        if not self.require_attention:
            # The recipe expects this (e.g. int4: MatMulNBits weights do not match the attention pattern),
            # so it is a note for the report, not a warning on the console.
            result.notes.append(
                f"note: {attention} fused attention ops for {expected} encoder layers; "
                "attention runs unfused (require_attention = false in the recipe)"
            )
            log.info(message)
            return
        result.notes.append("WARNING: " + message)
        log.warning(message)
        raise InternalError(
            message + "; check the onnxruntime/torch versions against "
            "tools/constraints.txt, or set require_attention = false in the recipe "
            "to ship anyway"
        )


def _own_attention(model, ctx: PassContext) -> tuple[int, list[str]]:
    """Fuse the attention blocks the optimizer left with our own rule, in place; (how many, notes). The result
    must give the optimizer's outputs on padded rows up to float rounding, else it is a bug, never shipped."""
    from edgecompress.graph._graph_edit import check_feeds
    from edgecompress.graph._quant_common import ROUNDING_RTOL, run_model
    from edgecompress.graph.attention_to_mha import fuse_attention, why_not

    masks = [value.name for value in model.graph.input if "mask" in value.name]
    mask = masks[0] if masks else "attention_mask"
    rewritten, count = fuse_attention(model, mask)
    if not count:
        reasons = sorted(set(why_not(model, mask)))
        return 0, [f"our attention rule did not fire: {'; '.join(reasons) or 'no block of its form'}"]
    feeds, source = check_feeds(model, ctx)
    reference, candidate = run_model(model, feeds), run_model(rewritten, feeds)
    diff = float(np.max(np.abs(reference.astype(np.float64) - candidate)))
    allowed = ROUNDING_RTOL * max(1.0, float(np.max(np.abs(reference))))
    if diff > allowed:
        raise InternalError(
            f"fuse_transformer: our attention rule changed the outputs by {diff:.3g} > {allowed:.3g} on "
            f"{len(candidate)} {source} rows"
        )
    model.CopyFrom(rewritten)
    return count, [
        f"{count} MultiHeadAttention by our own rule (graph/attention_to_mha.py), where the fuser has no pattern; "
        f"outputs on {len(candidate)} {source} rows: max |diff| {diff:.3g} (float rounding allows {allowed:.3g})"
    ]


def _attention_blocks(model) -> int:
    """Without a config, count attention blocks by their one Softmax each (BERT-family graphs)."""
    return sum(n.op_type == "Softmax" for n in model.graph.node)


def _ensure_opset_import(model, domain: str, version: int) -> None:
    """The fuser emits contrib ops without always declaring their domain, which later passes need."""
    if any(o.domain == domain for o in model.opset_import) or not any(n.domain == domain for n in model.graph.node):
        return
    entry = model.opset_import.add()
    entry.domain, entry.version = domain, version
