"""Shared pieces of the quantization passes: which nodes carry weights, running a graph, and scoring it.

This module registers no pass. The quantization passes hand ONNX Runtime's quantizers a copy of the
graph, so every helper here takes and returns an `onnx.ModelProto` and never edits its argument.
"""

from __future__ import annotations

import collections
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.onnx_facts import node_attribute

# Graphs are run on at most this many rows at a time when their batch axis is symbolic.
_DYNAMIC_BATCH = 8
# SQNR of an output identical to the reference; a finite number keeps report.json valid JSON.
MAX_SQNR_DB = 200.0
# A rewrite meant to be exact may move outputs by float rounding only: this much, relative to the largest
# output magnitude (or 1).
ROUNDING_RTOL = 1e-5


def constant_weight_nodes(model, op_types: tuple[str, ...], weight_input: int = 1) -> list:
    """Named nodes of `op_types` whose weight input is a float initializer (what a weight quantizer takes).

    Quantizers pick nodes by name, so an unnamed node cannot be chosen and is left out.
    """
    import onnx

    floats = {init.name for init in model.graph.initializer if init.data_type == onnx.TensorProto.FLOAT}
    return [
        node
        for node in model.graph.node
        if node.op_type in op_types
        and node.name
        and len(node.input) > weight_input
        and node.input[weight_input] in floats
    ]


def nbits_quantizer_class():
    """onnxruntime's `matmul_nbits_quantizer` calls `logging.basicConfig(level=INFO)` when imported, which
    would turn on every library's INFO logs for the rest of the process; import it and undo that."""
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    root.setLevel(level)
    root.handlers = handlers
    return MatMulNBitsQuantizer


def copy_model(model):
    import onnx

    result = onnx.ModelProto()
    result.CopyFrom(model)
    return result


def without_value_info(model):
    """A copy without `value_info`: ONNX Runtime's quantizers trip over shapes left by earlier rewrites."""
    result = copy_model(model)
    del result.graph.value_info[:]
    return result


def with_contrib_shapes(model):
    """A copy with every tensor typed: ONNX shape inference skips contrib ops (Attention, SkipLayerNormalization),
    ONNX Runtime's symbolic one does not. A quantizer skips an activation whose type it does not know."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    from edgecompress.graph._graph_edit import tensor_constants

    typed = without_value_info(model)
    tensor_constants(typed)  # ONNX Runtime's inference reads only Constant(value=tensor)
    return SymbolicShapeInference.infer_shapes(typed, auto_merge=True)


def keep_model_props(quantized, source):
    """Carry over what ONNX Runtime's quantizers reset: IR version, producer (the fuser checks it), metadata."""
    quantized.ir_version = source.ir_version
    quantized.producer_name, quantized.producer_version = source.producer_name, source.producer_version
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(source.metadata_props)
    if any(n.domain == "com.microsoft" for n in quantized.graph.node) and not any(
        o.domain == "com.microsoft" for o in quantized.opset_import
    ):
        entry = quantized.opset_import.add()
        entry.domain, entry.version = "com.microsoft", 1
    return quantized


def through_file(quantize, model):
    """Run an ONNX Runtime quantizer that writes its result to a path; return the loaded result."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="edgecompress-quant-") as scratch:
        out = Path(scratch) / "quantized.onnx"
        quantize(model, out)
        return onnx.load(str(out))


def size_mb(model) -> float:
    """Serialized size: what the .onnx file on disk will weigh."""
    return model.ByteSize() / 1e6


def op_counts(model) -> dict[str, int]:
    return dict(sorted(collections.Counter(node.op_type for node in model.graph.node).items()))


def calibration_rows(calibration: dict[str, np.ndarray], input_names, rows: int) -> dict[str, np.ndarray]:
    """At most `rows` evenly spaced rows of the model's inputs: a spread of the data, not its first file lines."""
    total = len(next(iter(calibration.values())))
    picked = np.unique(np.linspace(0, total - 1, num=min(rows, total)).round().astype(int))
    return {name: calibration[name][picked] for name in input_names}


def graph_input_names(model) -> tuple[str, ...]:
    initializers = {init.name for init in model.graph.initializer}
    return tuple(value.name for value in model.graph.input if value.name not in initializers)


def run_model(model, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The first output of `model` on every row of `feeds`, with ONNX Runtime as it will run on the device."""
    from edgecompress.verify.evaluate import ort_session, run_session

    session = ort_session(model.SerializeToString(), threads=2, optimize=True)
    batch = session.get_inputs()[0].shape[0]
    return run_session(
        session,
        feeds,
        output_name=model.graph.output[0].name,
        batch_size=batch if isinstance(batch, int) and batch > 0 else _DYNAMIC_BATCH,
    )


def rounding_diff(before, result, feeds: dict[str, np.ndarray], rows: str) -> tuple[float, float]:
    """(max |diff|, what float rounding allows) between `before` and `result.model` on `feeds`, recorded in
    the result's stats and notes; the pass that meant to be exact judges and says what went wrong."""
    reference, candidate = run_model(before, feeds), run_model(result.model, feeds)
    diff = float(np.max(np.abs(reference.astype(np.float64) - candidate)))
    allowed = ROUNDING_RTOL * max(1.0, float(np.max(np.abs(reference))))
    result.stats["max_abs_diff"] = diff
    result.notes.append(
        f"outputs on {len(candidate)} {rows} rows: max |diff| {diff:.3g} (float rounding allows {allowed:.3g})"
    )
    return diff, allowed


@dataclass(frozen=True)
class Error:
    """How far a quantized graph's outputs are from the float graph's on the same rows."""

    sqnr_db: float
    max_abs_diff: float
    # Units whose outputs disagree: by the task's own agreement (texts, real tokens, decoded spans) when the
    # task is known, else rows whose argmax changed; None when neither applies (outputs that are not class scores).
    flips: int | None
    rows: int
    units: int | None = None  # what `flips` counts over (None: rows)
    unit: str = "predictions"  # what a unit is, for notes ("texts", "tokens", "questions")

    @property
    def flip_rate(self) -> float:
        return 0.0 if not self.flips else self.flips / (self.units or self.rows)

    def describe(self) -> str:
        flips = "" if self.flips is None else f", {self.flips}/{self.units or self.rows} {self.unit} disagree"
        return f"SQNR {self.sqnr_db:.1f} dB, max |diff| {self.max_abs_diff:.3g}{flips}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "sqnr_db": self.sqnr_db,
            "max_abs_diff": self.max_abs_diff,
            "flips": self.flips,
            "rows": self.rows,
            "units": self.units,
            "unit": self.unit,
        }


def output_error(
    reference: np.ndarray, candidate: np.ndarray, *, classifier: bool, task: Any = None, feeds=None
) -> Error:
    """Signal-to-quantization-noise ratio over all outputs, the largest deviation, and the units that disagree:
    by `task`'s agreement on `feeds` (the rows both outputs came from) when given, else argmax flips of a
    classifier's rows."""
    ref = reference.astype(np.float64)
    noise = float(np.sum((ref - candidate.astype(np.float64)) ** 2))
    signal = float(np.sum(ref**2))
    sqnr = MAX_SQNR_DB if noise == 0 else min(MAX_SQNR_DB, 10 * math.log10(max(signal, 1e-30) / noise))
    sqnr, diff = round(sqnr, 2), float(np.max(np.abs(ref - candidate)))
    if task is not None:
        agrees = np.asarray(task.agrees(reference, candidate, feeds))
        return Error(sqnr, diff, int(agrees.size - agrees.sum()), len(reference), int(agrees.size), task.agreement_unit)
    flips = int(np.sum(reference.argmax(-1) != candidate.argmax(-1))) if classifier else None
    return Error(sqnr, diff, flips, len(reference))


def is_classifier(model) -> bool:
    """The exporter names a classifier's output `logits`; only then are argmax flips a meaningful measure."""
    return model.graph.output[0].name == "logits"


def gemms_as_matmuls(model, min_weights: int):
    """`Gemm(X, W, b)` (alpha = beta = 1, X not transposed, W a constant of at least `min_weights`) ->
    `Add(MatMul(X, W'), b)` with W' = W^T when transB, the MatMul keeping the Gemm's name: the weight
    quantizers pick nodes by name and take MatMul (ONNX Runtime's dynamic quantizer rewrites a Gemm as
    MatMul + Add under another name, MatMulNBits replaces MatMul only). Returns a copy."""
    from onnx import helper, numpy_helper

    result = copy_model(model)
    tables = {init.name: init for init in model.graph.initializer}
    nodes = []
    for node in model.graph.node:  # read from `model`: `result`'s nodes are replaced below
        if not _plain_gemm(node, tables, min_weights):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(tables[node.input[1]])
        if node_attribute(node, "transB", 0):
            weight = weight.T
        name = f"{node.input[1]}_as_matmul"
        result.graph.initializer.append(numpy_helper.from_array(weight.copy(), name))
        product = f"{node.output[0]}_matmul" if len(node.input) > 2 else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [product], name=node.name))
        if len(node.input) > 2:
            nodes.append(helper.make_node("Add", [product, node.input[2]], list(node.output), name=f"{node.name}/bias"))
    del result.graph.node[:]
    result.graph.node.extend(nodes)
    used = {name for node in result.graph.node for name in node.input}
    kept = [init for init in result.graph.initializer if init.name in used]
    del result.graph.initializer[:]
    result.graph.initializer.extend(kept)
    return result


def gemm_nodes(model, min_weights: int) -> list:
    """The Gemms `gemms_as_matmuls` rewrites."""
    tables = {init.name: init for init in model.graph.initializer}
    return [node for node in model.graph.node if _plain_gemm(node, tables, min_weights)]


def _plain_gemm(node, tables, min_weights: int) -> bool:
    import onnx

    if node.op_type != "Gemm" or not node.name or len(node.input) < 2 or node.input[1] not in tables:
        return False
    weight = tables[node.input[1]]
    return (
        weight.data_type == onnx.TensorProto.FLOAT
        and len(weight.dims) == 2
        and weight.dims[0] * weight.dims[1] >= min_weights
        and not node_attribute(node, "transA", 0)
        and node_attribute(node, "alpha", 1.0) == 1.0
        and node_attribute(node, "beta", 1.0) == 1.0
        and (len(node.input) < 3 or node.input[2] in tables and len(tables[node.input[2]].dims) == 1)
    )


def gemm_note(before, after, weights: str) -> list[str]:
    gemms = sum(n.op_type == "Gemm" for n in before.graph.node) - sum(n.op_type == "Gemm" for n in after.graph.node)
    return (
        [f"{gemms} Gemm(s) with a large constant weight rewritten as MatMul + Add to take {weights}"] if gemms else []
    )
