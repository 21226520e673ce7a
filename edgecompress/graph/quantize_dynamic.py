"""Dynamic int8: weights int8 per output channel at export, activations quantized at run time from their range.

Before -> After (ONNX Runtime's dynamic quantizer on the fused graph):
  `MatMul(X, W)` -> `DynamicQuantizeLinear(X) -> MatMulInteger(Xq, Wq) -> Cast -> Mul(scales)`, which
  ONNX Runtime fuses into one `DynamicQuantizeMatMul` when it loads the model;
  `Attention(X, Wqkv)` -> `DynamicQuantizeLinear(X) -> QAttention(Xq, Wqkv_q)`;
  `EmbedLayerNormalization(tables)` -> `QEmbedLayerNormalization(int8 tables)`, which is what makes the
  file small (the word-embedding table is half of MiniLM).
The distilled students (BiLSTM, CNN) bring three more:
  `Gather(table, ids)` (their embedding) -> `DequantizeLinear(Gather(table uint8, ids))`, 4x smaller;
  `LSTM(X, W, R)` -> `com.microsoft::DynamicQuantizeLSTM(X, W int8, R int8)` (per gate row);
  `Conv(X, W)` -> `DynamicQuantizeLinear(X) -> ConvInteger(Xq, Wq) -> Cast -> Mul(scales) [-> Add(bias)]`.

The no-data option: it needs no calibration. When calibration texts are there anyway (the export always
gives its tuning texts), the sensitivity analysis keeps float every node whose quantization breaks the
output by the task's own agreement, alone or together with the others (quant_sensitivity.py).
Activations are uint8, weights int8: the only pairing ONNX Runtime's dynamic quantizer emits, and the
fast one on x86 (u8s8 VNNI) and on Arm with dotprod.

The head's `Gemm`s with at least `gemm_min_weights` weights (the pooler, a classifier's dense layer)
become MatMul + Add under their own name first, so that they can be chosen and quantized like the
others: ONNX Runtime's quantizer does that rewrite itself but names the MatMul anew, so a Gemm was never
among the nodes we pick and stayed float. MiniLM's pooler (384 x 384) was 0.59 MB of float in a 23.4 MB
int8 file, and made it 1% larger than the plain `quantize_dynamic` a user runs by hand (which quantizes
it); int8 it is 0.15 MB. The logits projection (2 x hidden) stays float: it gains a few KB.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgecompress.graph._quant_common import (
    calibration_rows,
    constant_weight_nodes,
    copy_model,
    gemm_nodes,
    gemm_note,
    gemms_as_matmuls,
    graph_input_names,
    keep_model_props,
    through_file,
    without_value_info,
)
from edgecompress.graph.quant_sensitivity import Thresholds, quantize_except_sensitive
from edgecompress.logs import captured_library_output
from edgecompress.passes import Pass, PassContext, PassResult, PassSkipped, register_pass

OP_TYPES = ("MatMul", "Attention", "EmbedLayerNormalization", "Gather", "LSTM", "Conv")
# Where each op type keeps the weight that makes it quantizable (a Gather's table is its data input; an
# LSTM's R is quantized with its W).
_WEIGHT_INPUT = {"MatMul": 1, "Attention": 1, "EmbedLayerNormalization": 2, "Gather": 0, "LSTM": 1, "Conv": 1}


@register_pass
@dataclass(frozen=True)
class QuantizeDynamic(Pass):
    name = "quantize_dynamic"
    stage = "graph"
    in_place = False  # ONNX Runtime's quantizer writes a new file
    # After fusion, so that Attention becomes QAttention and the fused embedding QEmbedLayerNormalization;
    # with fixed shapes, so that the sensitivity trials run the graph that ships.
    runs_after = ("fuse_transformer", "fix_shapes")
    # A group (op class or layer) or node whose quantization alone drops the output below this SQNR, or makes
    # more than this share of the task's units disagree (texts, real tokens, questions: by the task's own
    # agreement), stays float; so do the worst of them while all of them together do. Used only with
    # calibration data.
    min_sqnr_db: float = 20.0
    max_flip_rate: float = 0.02
    calibration_rows: int = 64
    # Gemms with at least this many weights become MatMul + Add and are quantized (see the docstring).
    gemm_min_weights: int = 64 * 64

    def requires(self, model, ctx: PassContext) -> None:
        if not weighted_nodes(model) and not gemm_nodes(model, self.gemm_min_weights):
            raise PassSkipped(
                "no MatMul, Gemm, Attention, EmbedLayerNormalization, Gather, LSTM or Conv with constant float weights"
            )

    def run(self, model, ctx: PassContext) -> PassResult:
        source, model = model, gemms_as_matmuls(model, self.gemm_min_weights)
        nodes = weighted_nodes(model)
        feeds = (
            None
            if ctx.calibration is None
            else calibration_rows(ctx.calibration, graph_input_names(model), self.calibration_rows)
        )
        outcome = quantize_except_sensitive(
            model,
            nodes,
            quantize_nodes,
            feeds,
            Thresholds.for_task(self.min_sqnr_db, self.max_flip_rate, ctx.task),
            quantizer_id=QUANTIZER_ID,
            task=ctx.task,
        )
        notes = gemm_note(source, model, "int8 weights") + outcome.notes(model, nodes)
        return PassResult(outcome.model, notes, outcome.stats(model), fired=bool(outcome.quantized), lossy=True)


# Names quantize_nodes and its settings for the sensitivity cache: change it whenever quantize_nodes changes.
QUANTIZER_ID = "quantize_dynamic QInt8 per_channel MatMulConstBOnly v1"


def weighted_nodes(model) -> list:
    """The nodes this pass can quantize, in graph order."""
    names = {node.name for op in OP_TYPES for node in constant_weight_nodes(model, (op,), _WEIGHT_INPUT[op])}
    return [node for node in model.graph.node if node.name in names]


def quantize_nodes(model, nodes: list[str]):
    """ONNX Runtime's dynamic quantizer on exactly `nodes`; an empty list quantizes nothing (not everything)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if not nodes:
        return copy_model(model)

    def quantize(source, out):
        quantize_dynamic(
            source,
            out,
            op_types_to_quantize=list(OP_TYPES),
            per_channel=True,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=nodes,
            # contrib-op outputs have no inferred type on the fused graph; they are float
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True},
        )

    with captured_library_output():
        quantized = through_file(quantize, without_value_info(model))
    return keep_model_props(quantized, model)
