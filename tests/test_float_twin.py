"""A quantized export is timed against its float twin, built from the same passes minus the lossy ones."""

from __future__ import annotations

import json

import onnx

from edgecompress.measure.float_twin import compare_speed
from edgecompress.recipe import load_recipe
from edgecompress.rewrite import rewrite_with_twin

from helpers import pass_context


def _lowered(tiny_checkpoint, tiny_data):
    from edgecompress.intake.data import load_dataset, tokenize
    from edgecompress.intake.model import load_bundle
    from edgecompress.lower import export_onnx

    bundle = load_bundle(tiny_checkpoint)
    feeds = tokenize(
        bundle.tokenizer,
        load_dataset(tiny_data, require_labels=False).texts,
        seq_len=16,
        input_names=bundle.input_names,
    )
    context = pass_context(bundle, seq_len=16, calibration=feeds)
    return export_onnx(bundle, feeds), context


def _ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


def test_twin_is_the_graph_before_a_trailing_quantization(tiny_checkpoint, tiny_data):
    graph, context = _lowered(tiny_checkpoint, tiny_data)
    rewrite = rewrite_with_twin(load_recipe("dynamic-int8").graph, graph, context)
    assert rewrite.records[-1].name == "quantize_dynamic" and rewrite.records[-1].lossy
    assert "MatMulInteger" in _ops(rewrite.graph) or "DynamicQuantizeMatMul" in _ops(rewrite.graph)
    assert not _ops(rewrite.float_twin) & {"MatMulInteger", "DynamicQuantizeLinear", "QAttention"}
    assert "Attention" in _ops(rewrite.float_twin)  # fused, as in the float recipe


def test_twin_gets_the_non_lossy_passes_after_a_leading_quantization(tiny_checkpoint, tiny_data):
    graph, context = _lowered(tiny_checkpoint, tiny_data)
    rewrite = rewrite_with_twin(load_recipe("int4").graph, graph, context)
    assert "MatMulNBits" in _ops(rewrite.graph)
    twin_ops = _ops(rewrite.float_twin)
    assert "MatMulNBits" not in twin_ops and "SkipLayerNormalization" in twin_ops  # fused after the fact
    shapes = [d.dim_value for d in rewrite.float_twin.graph.input[0].type.tensor_type.shape.dim]
    assert shapes == [1, 16]  # fix_shapes ran on the twin too


def test_float_recipe_has_no_twin(tiny_checkpoint, tiny_data):
    graph, context = _lowered(tiny_checkpoint, tiny_data)
    assert rewrite_with_twin(load_recipe("default").graph, graph, context).float_twin is None


def test_slower_only_beyond_the_noise_margin():
    def result(p50):
        return {"latency_ms": {"p50": p50}}

    assert not compare_speed(result(10.2), result(10.0), threads=2)["slower"]
    slow = compare_speed(result(12.0), result(10.0), threads=2)
    assert slow["slower"] and abs(slow["speedup"] - 10 / 12) < 1e-9 and slow["how"] == "measured"


def test_quantized_export_reports_speed_against_its_twin(tmp_path, tiny_checkpoint, tiny_device, tiny_data):
    from click.testing import CliRunner

    from edgecompress.cli import main

    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "export",
            str(tiny_checkpoint),
            "--device",
            str(tiny_device),
            "--data",
            str(tiny_data),
            "-o",
            str(out),
            "--quantize",
            "dynamic-int8",
            "--runs",
            "5",
            "--json",
        ],
    )
    assert result.exit_code in (0, 3), result.output
    report = json.loads(result.stdout)
    for artifact in report["artifacts"]:
        speed = artifact["speed_vs_float"]
        assert speed["p50_ms"] > 0 and speed["float_p50_ms"] > 0 and speed["how"] == "measured"
        assert (f"{artifact['file']} is slower than its float twin" in "\n".join(report["notes"])) == speed["slower"]
    assert sorted(p.name for p in out.iterdir()) == ["tinyphone"]  # the twin's scratch folder is gone
