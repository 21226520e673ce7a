"""ONNX Runtime artifacts ship Add + LayerNormalization instead of SkipLayerNormalization (backends/ort/layer_norm.py):
the split computes the same numbers, ONNX Runtime does not fuse it back, and the report names it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecompress.backends.ort.layer_norm import NOTE, split_skip_layer_norms

HIDDEN = 8


def skip_layer_norm_graph(*, bias: bool, sum_output: bool, opset: int = 17) -> onnx.ModelProto:
    """x, skip -> SkipLayerNormalization -> y (and the residual sum, read by a later Add, as in BERT)."""
    rng = np.random.default_rng(0)
    weights = {"gamma": rng.normal(1, 0.1, HIDDEN), "beta": rng.normal(0, 0.1, HIDDEN)}
    weights["bias"] = rng.normal(0, 1, HIDDEN)
    inputs = ["x", "skip", "gamma", "beta"] + (["bias"] if bias else [])
    outputs = ["y"] + (["", "", "residual"] if sum_output else [])
    nodes = [helper.make_node("SkipLayerNormalization", inputs, outputs, domain="com.microsoft", epsilon=1e-5)]
    graph_outputs = ["y"]
    if sum_output:
        nodes.append(helper.make_node("Add", ["residual", "y"], ["z"]))
        graph_outputs.append("z")
    spec = [1, "sequence", HIDDEN]
    graph = helper.make_graph(
        nodes,
        "sln",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, spec) for n in ("x", "skip")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, spec) for n in graph_outputs],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items() if k in inputs],
    )
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    return model


def run(model: onnx.ModelProto, feeds: dict, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL) -> list:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("sum_output", [True, False])
def test_the_split_computes_what_the_fused_op_computes(bias, sum_output):
    rng = np.random.default_rng(1)
    feeds = {n: rng.normal(0, 2, (1, 5, HIDDEN)).astype(np.float32) for n in ("x", "skip")}
    fused = skip_layer_norm_graph(bias=bias, sum_output=sum_output)
    expected = run(fused, feeds)
    split, count = split_skip_layer_norms(skip_layer_norm_graph(bias=bias, sum_output=sum_output))
    onnx.checker.check_model(split)
    assert count == 1 and [n.op_type for n in split.graph.node][-2 if sum_output else -1] == "LayerNormalization"
    for want, got in zip(expected, run(split, feeds)):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_onnxruntime_does_not_fuse_the_split_back_at_level_all(tmp_path):
    split, _ = split_skip_layer_norms(skip_layer_norm_graph(bias=True, sum_output=True))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(split.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert "SkipLayerNormalization" not in ops and "LayerNormalization" in ops


def test_a_graph_below_opset_17_keeps_the_fused_op():
    model, count = split_skip_layer_norms(skip_layer_norm_graph(bias=True, sum_output=False, opset=16))
    assert count == 0 and model.graph.node[0].op_type == "SkipLayerNormalization"


def test_an_export_ships_the_split_to_onnxruntime_and_the_fused_op_to_litert(bucketed_export):
    ort_ops = {n.op_type for n in onnx.load(str(bucketed_export / "model.onnx")).graph.node}
    assert "SkipLayerNormalization" not in ort_ops and "LayerNormalization" in ort_ops
    report = json.loads((bucketed_export / "report.json").read_text())
    assert NOTE in report["notes"]
    histogram = next(a for a in report["artifacts"] if a["file"] == "model.ort")["op_histogram"]
    assert "SkipLayerNormalization" not in histogram and histogram.get("LayerNormalization")


@pytest.fixture(scope="module")
def bucketed_export(tiny_checkpoint, tiny_device, tiny_data, tmp_path_factory):
    from click.testing import CliRunner

    from edgecompress.cli import main

    out = tmp_path_factory.mktemp("dist")
    args = ["export", str(tiny_checkpoint), "--device", str(tiny_device), "--data", str(tiny_data), "-o", str(out)]
    result = CliRunner().invoke(main, [*args, "--no-measure"])
    assert result.exit_code in (0, 3), result.output
    return next(p for p in out.iterdir() if p.is_dir())
