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
    return run_export(
        ExportRequest(
            model=onnx_path,
            device="pixel7",
            out_root=out,
            quantize="none",
            tokenizer=minilm_dir,
            task="sentence-embedding",  # its outputs (output, 461, 463: all 2-D) do not say which is the embedding
            runs=3,
            warmup=1,
        )
    )


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


@pytest.mark.parametrize("quantize", [None, "int8"], ids=["default-pixel7", "int8-calibrated"])
def test_quantized_recipes_take_the_third_party_file(quantize, minilm_dir, tmp_path):
    """Issue 17, item 1: fold_constants left Constant<value_ints>, and cls_row_apart's precondition (default
    dynamic int8) and quantize_static's shape inference crashed with AttributeError on it."""
    import example_assets

    calibration = tmp_path / "calibration.csv"
    calibration.write_text(
        "text\n"
        + "\n".join(f"a {w} film, number {i}" for i, w in enumerate(["good", "bad", "dull", "great"] * 4))
        + "\n"
    )
    extra = {"quantize": quantize, "calibration": calibration} if quantize else {}
    result = run_export(
        ExportRequest(
            model=example_assets.paraphrase_onnx_path(),
            device="pixel7",
            out_root=tmp_path / "dist",
            tokenizer=minilm_dir,
            task="sentence-embedding",
            measure=False,
            **extra,
        )
    )
    passes = {p["name"]: p for p in result.report.passes}
    assert passes["quantize_dynamic" if quantize is None else "quantize_static"]["fired"]
    manifest = json.loads((result.out_dir / "manifest.json").read_text())
    assert manifest["quantization"] == ("dynamic-int8" if quantize is None else "int8")
