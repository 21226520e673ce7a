"""Static int8: activation ranges calibrated once on the calibration texts, weights int8 per output channel.

Before -> After (on the fused graph):
  `MatMul(X, W)` -> `MatMul(DequantizeLinear(QuantizeLinear(X, s, z)), DequantizeLinear(Wq))`: QDQ with
  `s, z` from the MinMax range of X over the calibration rows, `Wq` symmetric int8 per output channel.
  The output stays float, so ONNX Runtime runs the pattern as one `MatMulIntegerToFloat`.
  `Attention` -> `QAttention` and `EmbedLayerNormalization` -> `QEmbedLayerNormalization`, as in
  `quantize_dynamic`: QDQ has no form for these fused contrib ops, and ONNX Runtime's QAttention takes
  a uint8 input quantized at run time (there is no int8-input QAttention CPU kernel).

`activation_type` picks the activations' int8 flavour. uint8 is the default because it is the fast
pairing with int8 weights where we measure: on this x86 host (AVX512-VNNI) u8s8 integer GEMM ran
~12x faster than s8s8 (DATA.md), and Arm cores with dotprod run u8s8 too. A target whose runtime
prefers s8s8 (e.g. a QDQ-consuming NPU delegate) sets `activation_type = "int8"` in its recipe.
The sensitivity analysis keeps float every node whose quantization breaks the output by the task's own
agreement, alone or together with the others.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgecompress.errors import InternalError, UserError
from edgecompress.graph import quantize_dynamic
from edgecompress.graph._quant_common import (
    calibration_rows,
    graph_input_names,
    keep_model_props,
    through_file,
    with_contrib_shapes,
)
from edgecompress.graph.quant_sensitivity import Thresholds, quantize_except_sensitive
from edgecompress.logs import captured_library_output
from edgecompress.passes import Pass, PassContext, PassResult, PassSkipped, register_pass

ACTIVATION_TYPES = ("uint8", "int8")
# Rows per calibrator call, which bounds the tensors it holds at once.
_CALIBRATION_CHUNK = 8


@register_pass
@dataclass(frozen=True)
class QuantizeStatic(Pass):
    name = "quantize_static"
    stage = "graph"
    in_place = False  # ONNX Runtime's quantizer writes a new file
    # After fusion and with fixed shapes, so the calibrated ranges are those of the shipped graph.
    runs_after = ("fuse_transformer", "fix_shapes")
    activation_type: str = "uint8"
    # A group (op class or layer) or node whose quantization alone drops the output below this SQNR, or makes
    # more than this share of the task's units disagree, stays float; so do the worst of them while all of
    # them together do (see quantize_dynamic).
    min_sqnr_db: float = 20.0
    max_flip_rate: float = 0.02
    calibration_rows: int = 64

    def __post_init__(self) -> None:
        if self.activation_type not in ACTIVATION_TYPES:
            raise UserError(
                f"option 'activation_type' of pass '{self.name}' is {self.activation_type!r}",
                expected=" or ".join(repr(t) for t in ACTIVATION_TYPES),
            )

    def requires(self, model, ctx: PassContext) -> None:
        if not quantize_dynamic.weighted_nodes(model):
            raise PassSkipped("no MatMul, Attention or EmbedLayerNormalization with constant float weights")
        if ctx.calibration is None:
            raise UserError(
                "calibration data missing; pass --calibration or --train-data",
                hint=f"the '{self.name}' pass calibrates activation ranges on real texts; quantize_dynamic needs none",
            )

    def run(self, model, ctx: PassContext) -> PassResult:
        nodes = quantize_dynamic.weighted_nodes(model)
        feeds = calibration_rows(ctx.calibration, graph_input_names(model), self.calibration_rows)
        shaped = with_contrib_shapes(model)
        with tempfile.TemporaryDirectory(prefix="edgecompress-ranges-") as scratch:
            ranges = Path(scratch) / "ranges.json"
            calibrate(shaped, feeds, ranges)
            quantize = functools.partial(quantize_nodes, activation_type=self.activation_type, ranges=ranges)
            thresholds = Thresholds.for_task(self.min_sqnr_db, self.max_flip_rate, ctx.task)
            outcome = quantize_except_sensitive(shaped, nodes, quantize, feeds, thresholds, task=ctx.task)
        result = keep_model_props(outcome.model, model)
        notes = outcome.notes(model, nodes) + [
            f"MatMul activations {self.activation_type}, calibrated on "
            f"{len(feeds[graph_input_names(model)[0]])} rows (MinMax)"
        ]
        return PassResult(result, notes, outcome.stats(model), fired=bool(outcome.quantized), lossy=True)

    def ensures(self, before, result: PassResult, ctx: PassContext) -> None:
        weight_only = float_activation_matmuls(result.model, result.stats["quantized"])
        if weight_only:
            raise InternalError(
                f"quantize_static left {len(weight_only)} MatMul(s) with float activations "
                f"(e.g. {weight_only[0]}); ONNX Runtime would run them as slow weight-only "
                "MatMulNBits. The quantizer probably found no type for their input"
            )


def float_activation_matmuls(model, quantized: list[str]) -> list[str]:
    """Quantized MatMuls whose activation input is not dequantized from int8 (i.e. only the weight was)."""
    producers = {output: node.op_type for node in model.graph.node for output in node.output}
    chosen = set(quantized)
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul" and node.name in chosen and producers.get(node.input[0]) != "DequantizeLinear"
    ]


def calibrate(model, feeds, ranges: Path) -> None:
    """MinMax ranges of every MatMul's tensors over the calibration rows, saved where quantize_static reads them.

    Rows go through the calibrator a chunk at a time: it keeps every tensor of every row it is given
    (about 18 MB per MiniLM row at seq_len 128) and merges ranges only between calls.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, create_calibrator, save_tensors_data

    rows = len(next(iter(feeds.values())))
    with tempfile.TemporaryDirectory(prefix="edgecompress-calibrate-") as scratch, captured_library_output():
        onnx.save(model, str(Path(scratch) / "model.onnx"))
        calibrator = create_calibrator(
            Path(scratch) / "model.onnx",
            ["MatMul"],
            augmented_model_path=str(Path(scratch) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.MinMax,
        )
        for start in range(0, rows, _CALIBRATION_CHUNK):
            calibrator.collect_data(_FeedReader({k: v[start : start + _CALIBRATION_CHUNK] for k, v in feeds.items()}))
        save_tensors_data(calibrator.compute_data(), ranges)


def quantize_nodes(model, nodes: list[str], *, activation_type: str, ranges: Path):
    """QDQ for the chosen MatMuls with the calibrated `ranges`, then the chosen fused contrib ops the way
    `quantize_dynamic` does them."""
    names = set(nodes)
    matmuls = [n.name for n in model.graph.node if n.name in names and n.op_type == "MatMul"]
    fused = [name for name in nodes if name not in set(matmuls)]
    if not matmuls:  # quantize_dynamic's quantizer writes a new model (a copy when given no node)
        return quantize_dynamic.quantize_nodes(model, fused)
    result = _qdq_matmuls(model, matmuls, activation_type, ranges)
    return quantize_dynamic.quantize_nodes(result, fused) if fused else result


def _qdq_matmuls(model, matmuls: list[str], activation_type: str, ranges: Path):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    activation = QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8

    def quantize(source, out):
        quantize_static(
            source,
            out,
            None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            activation_type=activation,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=matmuls,
            calibration_cache_path=ranges,
            extra_options={
                "WeightSymmetric": True,
                "MatMulConstBOnly": True,
                "OpTypesToExcludeOutputQuantization": ["MatMul"],
            },
        )

    with captured_library_output():
        quantized = through_file(quantize, model)
    return keep_model_props(float_inputs_for_float_ops(quantized, set(matmuls)), model)


def float_inputs_for_float_ops(model, quantized: set[str]):
    """In place: a node that stays float reads the float activation, not its quantize-dequantized copy.

    Before -> After: `X -> QuantizeLinear -> DequantizeLinear -> Xdq -> {MatMul, SkipLayerNormalization}`
    -> `Xdq -> MatMul` and `X -> SkipLayerNormalization`. ONNX Runtime's quantizer hands every consumer
    of a quantized activation the dequantized copy; in a BERT layer the attention block's LayerNorm
    output feeds both the FFN's first MatMul and, as the residual, the next SkipLayerNormalization,
    which then added uint8 rounding to the residual stream and ran one DequantizeLinear per layer
    (measured on MiniLM at seq_len 64: 6 DequantizeLinear, 0.17 ms of 10.4 ms per run).
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.name in quantized and node.op_type == "MatMul":
            continue
        for index, name in enumerate(node.input):
            float_source = _dequantized_activation(name, producers)
            if float_source is not None:
                node.input[index] = float_source
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    dead = [
        node
        for node in model.graph.node
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(out in used for out in node.output)
    ]
    for node in dead:
        model.graph.node.remove(node)
    return model


def _dequantized_activation(name: str, producers) -> str | None:
    """The float tensor X when `name` is DequantizeLinear(QuantizeLinear(X)) of an activation, else None."""
    dequantize = producers.get(name)
    if dequantize is None or dequantize.op_type != "DequantizeLinear":
        return None
    quantize = producers.get(dequantize.input[0])
    return quantize.input[0] if quantize is not None and quantize.op_type == "QuantizeLinear" else None


class _FeedReader:
    """ONNX Runtime's calibration data reader protocol over tokenized rows, one row per call (batch 1)."""

    def __init__(self, feeds):
        self._feeds = feeds
        self._rows = len(next(iter(feeds.values())))
        self._next = 0

    def get_next(self):
        if self._next >= self._rows:
            return None
        row = {name: values[self._next : self._next + 1] for name, values in self._feeds.items()}
        self._next += 1
        return row
