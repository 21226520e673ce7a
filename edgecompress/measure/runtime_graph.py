"""The graph ONNX Runtime really executes: the file after its load-time graph optimizations.

At session start ORT rewrites the graph (level "all", what the runner and an app get by default): it folds
constants, fuses MatMul + Add into FusedGemm/FusedMatMul, Gelu + bias into BiasGelu, MatMulInteger + scales
into DynamicQuantizeMatMul, DQ -> MatMul <- DQ into MatMulIntegerToFloat, an unfused third-party export's
LayerNorm and attention subgraphs into their fused kernels, and drops what it fused away. Estimating the file as
written charges nodes that never run and prices fused kernels as their parts, so the estimates read this graph:
ORT writes it out with SessionOptions.optimized_model_filepath.

The rewrite is this host's onnxruntime: the version and level are returned for the estimate's method string.
Layout rewrites for x86 (NCHWc convolutions) are left out (level "extended"): they are this host's, not an Arm
device's, and no BERT-class graph has them.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from edgecompress.errors import UserError
from edgecompress.onnx_facts import load_model

LEVEL = "extended"


@dataclass(frozen=True)
class RuntimeGraph:
    model: onnx.ModelProto
    how: str  # e.g. "the graph onnxruntime 1.31.1 runs after its load-time optimizations (level extended)"


def runtime_graph(model: onnx.ModelProto | str | Path) -> RuntimeGraph:
    """The model as ORT's CPU provider optimizes it at load (a new ModelProto; the input is not changed)."""
    import onnxruntime as ort

    model = load_model(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="edgecompress-runtime-graph-") as scratch:
        optimized = Path(scratch) / "optimized.onnx"
        options.optimized_model_filepath = str(optimized)
        try:
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises several unrelated types for models it cannot load
            raise UserError(
                f"onnxruntime cannot load the model to see which graph it runs: {' '.join(str(exc).split())[:300]}",
                where="estimate",
                expected="a model onnxruntime's CPU provider runs",
            ) from None
        result = onnx.load(str(optimized))
    return RuntimeGraph(
        result, f"the graph onnxruntime {ort.__version__} runs after its load-time optimizations (level {LEVEL})"
    )
