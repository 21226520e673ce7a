"""End to end on the real all-MiniLM-L6-v2 (untrained classification head: parity needs no accuracy)."""

from __future__ import annotations

import json

import onnx
import pytest

from edgecompress.pipeline import ExportRequest, run_export

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(minilm_classifier, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    result = run_export(
        ExportRequest(model=minilm_classifier, device="pixel7", out_root=out, quantize="none", runs=5, warmup=1)
    )
    return result


def test_writes_every_artifact(exported):
    names = {p.name for p in exported.out_dir.iterdir()}
    assert {
        "model.onnx",
        "model.ort",
        "required_operators.config",
        "manifest.json",
        "report.json",
        "report.md",
        "tokenizer.json",
        "vocab.txt",
        "labels.txt",
    } <= names
    assert not any(p.name.startswith(".") for p in exported.out_dir.parent.iterdir())


def test_attention_is_fused_once_per_layer(exported):
    fused = next(p for p in exported.report.passes if p["name"] == "fuse_transformer")["stats"]["fused"]
    assert fused["Attention"] == 6
    assert fused["SkipLayerNormalization"] == 12
    graph = onnx.load(str(exported.out_dir / "model.onnx"), load_external_data=False)
    assert sum(n.op_type == "Attention" for n in graph.graph.node) == 6


def test_every_artifact_matches_torch(exported):
    for artifact in exported.report.artifacts:
        assert artifact.parity["passed"], artifact.file
        assert artifact.parity["max_abs_diff"] <= 1e-4
        assert artifact.parity["prediction_agreement"] == 1.0


def test_manifest_describes_the_call(exported):
    manifest = json.loads((exported.out_dir / "manifest.json").read_text())
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    # pixel7 serves length buckets: the ONNX Runtime graph takes any length on its sequence axis
    assert all(i["shape"] == [1, "sequence"] and i["dtype"] == "int64" for i in manifest["inputs"])
    assert manifest["length_buckets"]["lengths"] == [16, 32, 64, 128]
    assert manifest["outputs"] == [{"name": "logits", "dtype": "float32", "shape": [1, 2]}]
    assert manifest["tokenizer"]["lowercase"] is True
    assert manifest["model"]["labels"] == ["negative", "positive"]
    assert "com.microsoft" not in json.dumps(manifest["inputs"])
    assert {f["path"] for f in manifest["files"]} >= {"model.onnx", "model.ort", "required_operators.config"}


def test_report_says_how_each_figure_was_obtained(exported):
    report = json.loads((exported.out_dir / "report.json").read_text())
    for artifact in report["artifacts"]:
        assert artifact["size"]["how"] == "static"
        assert artifact["device_latency"]["how"] == "estimated"
        assert artifact["memory"]["how"] == "estimated"
        assert artifact["host_latency"]["how"] == "measured"
        assert f"({artifact['runtime']} " in artifact["host_latency"]["method"]
        assert {v["budget"] for v in artifact["verdicts"]} == {
            "artifact size",
            "peak memory",
            "p90 latency (longest-bucket)",
        }
