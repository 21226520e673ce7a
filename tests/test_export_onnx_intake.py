"""ONNX intake on a file nobody here wrote: the third-party paraphrase-MiniLM-L3-v2 export."""

from __future__ import annotations

import json

import pytest

from edgecompress.pipeline import ExportRequest, run_export

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(minilm_dir, tmp_path_factory):
    import example_assets

    onnx_path = example_assets.paraphrase_onnx_path()
    out = tmp_path_factory.mktemp("dist")
    return run_export(ExportRequest(model=onnx_path, device="pixel7", out_root=out, quantize="none",
                                    tokenizer=minilm_dir, runs=3, warmup=1))


def test_fuses_every_attention_block_without_a_config(exported):
    record = next(p for p in exported.report.passes if p["name"] == "fuse_transformer")
    assert record["stats"]["fused"]["Attention"] == record["stats"]["expected_attention"] == 3


def test_artifacts_match_the_original_file(exported):
    assert exported.report.reference["kind"] == "input ONNX file in onnxruntime"
    for artifact in exported.report.artifacts:
        assert artifact.parity["passed"] and artifact.parity["max_abs_diff"] <= 1e-4
        assert artifact.parity["min_cosine"] > 0.9999


def test_manifest_names_the_embedding_output(exported):
    manifest = json.loads((exported.out_dir / "manifest.json").read_text())
    assert manifest["model"]["task"] == "sentence-embedding"
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "attention_mask"]
    assert manifest["outputs"][0]["shape"] == [1, 384]
