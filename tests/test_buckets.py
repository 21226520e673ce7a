"""Length buckets (issue 16): the profile's buckets, the graph's symbolic sequence axis, per-bucket artifacts,
exactness per bucket, the manifest, truncation counts and what the latency budget bounds.

The `.tflite` side of one signature per bucket is tested in test_tflite_buckets.py; here the whole export is.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgecompress.devices import derived_profile_text, load_profile
from edgecompress.errors import UserError
from edgecompress.graph.cls_row_apart import ClsRowApart
from edgecompress.graph.fix_shapes import FixShapes
from edgecompress.intake.data import TextLengths, bucket_of
from edgecompress.passes import apply_pass
from edgecompress.rewrite import specialize
from edgecompress.tasks.sentence_embedding import SentenceEmbedding
from edgecompress.tasks.sequence_classification import SingleLabelClassification

from conftest import write_csv
from helpers import pass_context
from test_cls_row_apart import ffn_model, rows_input, run

LABEL, EMBEDDING = SingleLabelClassification(None), SentenceEmbedding()

BUCKETS = (4, 8, 16)


# ---- the rule the manifest gives the app ---------------------------------------------------------------------------


@pytest.mark.parametrize("tokens, bucket", [(1, 4), (4, 4), (5, 8), (8, 8), (9, 16), (16, 16), (40, 16)])
def test_a_text_runs_at_the_smallest_bucket_that_holds_it(tokens, bucket):
    assert bucket_of(np.array([tokens]), BUCKETS).tolist() == [bucket]


def test_text_lengths_count_texts_per_bucket_and_the_truncated_ones():
    lengths = TextLengths(BUCKETS, np.array([3, 4, 6, 12, 16, 17, 40]))
    assert lengths.per_bucket() == {4: 2, 8: 1, 16: 4}
    assert lengths.truncated == 2
    summary = lengths.summary()
    assert (summary["tokens_max"], summary["longest_input"], summary["truncated"]) == (40, 16, 2)
    assert summary["texts_per_bucket"] == {"4": 2, "8": 1, "16": 4}


# ---- profiles --------------------------------------------------------------------------------------------------------


def test_shipped_phones_serve_buckets_and_say_what_the_latency_budget_bounds():
    from edgecompress.devices import get_profile

    pixel7 = get_profile("pixel7")
    assert pixel7.runtime.buckets == (16, 32, 64, 128) and pixel7.runtime.seq_len == 128
    assert pixel7.budgets.latency_applies_to == "longest-bucket"
    assert get_profile("a55-lowend").runtime.buckets == (16, 32, 64)


@pytest.mark.parametrize(
    "buckets, message",
    [
        ("[32, 16, 128]", "field 'runtime.buckets' must be ascending with each length once, got [32, 16, 128]"),
        ("[16, 16, 128]", "field 'runtime.buckets' must be ascending with each length once, got [16, 16, 128]"),
        ("[16, 32, 64]", "field 'runtime.buckets' must end with seq_len 128, got [16, 32, 64]"),
        ("[0, 128]", "field 'runtime.buckets' must be a non-empty list of positive integers, got [0, 128]"),
        ("[]", "field 'runtime.buckets' must be a non-empty list of positive integers, got []"),
    ],
)
def test_bad_buckets_are_refused_naming_the_field(tmp_path, buckets, message):
    path = tmp_path / "phone.toml"
    path.write_text(
        derived_profile_text("pixel7", name="phone").replace("buckets = [16, 32, 64, 128]", f"buckets = {buckets}")
    )
    with pytest.raises(UserError) as err:
        load_profile(path)
    assert message in str(err.value)


def test_a_profile_without_buckets_serves_its_one_length(tmp_path):
    path = tmp_path / "phone.toml"
    path.write_text(derived_profile_text("pixel7", name="phone").replace("buckets = [16, 32, 64, 128]\n", ""))
    assert load_profile(path).runtime.buckets == (128,)


# ---- graph passes on a symbolic sequence axis --------------------------------------------------------------------


def _symbolic(model):
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "sequence"
    return model


def test_fix_shapes_fixes_only_the_batch_when_the_profile_has_buckets():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", 8])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=9,
    )
    fixed, record = apply_pass(FixShapes(), model, pass_context(seq_len=16, buckets=BUCKETS))
    dims = [d.dim_value or d.dim_param for d in fixed.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, "sequence", 8]
    assert record.notes == ["fixed inputs to batch 1; the sequence axis serves lengths [4, 8, 16]"]


def test_cls_row_apart_splits_a_symbolic_sequence_axis_and_every_length_still_matches():
    model = _symbolic(ffn_model())
    split, record = apply_pass(ClsRowApart(), model, pass_context(seq_len=16, buckets=BUCKETS))
    assert record.fired and "rows 1:sequence" in record.notes[0]
    for rows in (2, 4, 9):
        x = rows_input(rows)
        np.testing.assert_allclose(run(split, x), run(model, x), rtol=0, atol=1e-5)


def test_specialize_fixes_the_sequence_axis_and_keeps_the_weights():
    model = _symbolic(ffn_model())
    fixed = specialize(model, 9)
    assert [d.dim_value for d in fixed.graph.input[0].type.tensor_type.shape.dim] == [1, 9, 8]
    weights = {t.name: t.raw_data for t in model.graph.initializer}
    assert {t.name: t.raw_data for t in fixed.graph.initializer} == weights
    x = rows_input(9)
    np.testing.assert_allclose(run(fixed, x), run(model, x), rtol=0, atol=1e-6)


# ---- the whole export ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bucket_device(tmp_path_factory):
    """The tiny phone serving 4, 8 and 16 tokens, with a .tflite."""
    text = derived_profile_text("pixel7", name="tinybuckets", seq_len=16, buckets=list(BUCKETS))
    path = tmp_path_factory.mktemp("devices") / "tinybuckets.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def long_data(tmp_path_factory):
    """Short texts, a few mid-length ones and two longer than the longest bucket (16 tokens)."""
    rows = [
        ("a good movie", "positive"),
        ("bad", "negative"),
        ("a very good movie indeed", "positive"),
        ("a bad and dull and slow movie", "negative"),
    ] * 6
    rows += [(" ".join(["good"] * 30), "positive"), (" ".join(["bad"] * 25), "negative")]
    return write_csv(tmp_path_factory.mktemp("data") / "lengths.csv", rows)


@pytest.fixture(scope="module")
def bucketed(tiny_checkpoint, bucket_device, long_data, tmp_path_factory):
    from click.testing import CliRunner

    from edgecompress.cli import main

    out = tmp_path_factory.mktemp("dist")
    result = CliRunner().invoke(
        main,
        [
            "export",
            str(tiny_checkpoint),
            "--device",
            str(bucket_device),
            "--data",
            str(long_data),
            "-o",
            str(out),
            "--runs",
            "5",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    return out / "tinybuckets"


def test_bucketed_export_keeps_a_symbolic_sequence_axis_for_onnxruntime(bucketed):
    import onnx

    model = onnx.load(str(bucketed / "model.onnx"))
    assert [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, "sequence"]


def test_bucketed_tflite_has_a_signature_per_bucket(bucketed):
    from edgecompress.backends.tflite.artifact import load_interpreter

    interpreter = load_interpreter(bucketed / "model.tflite", threads=1)
    assert sorted(interpreter.get_signature_list()) == ["seq_16", "seq_4", "seq_8"]


def test_every_artifact_is_exact_per_bucket_and_timed_per_bucket(bucketed):
    report = json.loads((bucketed / "report.json").read_text())
    per_bucket = report["data"]["lengths"]["texts_per_bucket"]
    assert sum(per_bucket.values()) == 26 and all(per_bucket.values())  # every bucket gets texts here
    for artifact in report["artifacts"]:
        parity = artifact["bucket_parity"]
        assert parity["passed"] and parity["prediction_agreement"] >= 0.995, artifact["file"]
        assert {str(b): n for b, n in parity["texts_per_bucket"].items()} == per_bucket
        if artifact["file"].endswith(".tflite"):  # one signature per bucket
            assert parity["served_at"] == "its length bucket"
            assert set(artifact["host_latency_buckets"]) == {"4", "8", "16"}
        else:  # a free sequence axis: each text at its own length, timed every OWN_LENGTH_STEP (8) tokens
            assert parity["served_at"] == "its own length (no padding)"
            assert set(artifact["host_latency_buckets"]) == {"8", "16"}
        real = artifact["host_latency_real_text"]
        assert real["texts"] == 26 and real["p50_ms"] <= real["p90_ms"]
        assert artifact["device_latency_real_text"]["how"] == "estimated"
        assert artifact["device_latency_real_text"]["value"] <= artifact["device_latency"]["value"]


def test_the_report_counts_and_warns_about_truncated_texts(bucketed):
    report = json.loads((bucketed / "report.json").read_text())
    lengths = report["data"]["lengths"]
    assert (lengths["truncated"], lengths["longest_input"]) == (2, 16)
    assert any("2 of 26 texts (7.7%) are longer than 16 tokens and were truncated" in n for n in report["notes"])
    assert "## Length buckets" in (bucketed / "report.md").read_text()


def test_the_manifest_tells_the_app_which_bucket_to_call(bucketed):
    manifest = json.loads((bucketed / "manifest.json").read_text())
    buckets = manifest["length_buckets"]
    assert buckets["lengths"] == [4, 8, 16] and "the smallest bucket >= n" in buckets["choose"]
    assert buckets["long_inputs"]["policy"] == "truncate" and buckets["long_inputs"]["max_tokens"] == 16
    assert buckets["calls"]["model.tflite"] == {
        "4": "signature seq_4",
        "8": "signature seq_8",
        "16": "signature seq_16",
    }
    assert "run each text at its own length n, no padding (any n up to 16)" in buckets["calls"]["model.onnx"]
    assert manifest["tokenizer"]["padding"] == "as length_buckets.calls says per file"


@pytest.mark.parametrize("applies_to", ["real-text", "longest-bucket"])
def test_the_latency_budget_bounds_what_the_profile_says(tiny_checkpoint, long_data, tmp_path, applies_to):
    from click.testing import CliRunner

    from edgecompress.cli import main

    text = derived_profile_text("pixel7", name="tinylatency", seq_len=16, buckets=list(BUCKETS), artifacts=["onnx"])
    text = text.replace('latency_applies_to = "longest-bucket"', f'latency_applies_to = "{applies_to}"')
    device = tmp_path / "tinylatency.toml"
    device.write_text(text)
    result = CliRunner().invoke(
        main,
        [
            "export",
            str(tiny_checkpoint),
            "--device",
            str(device),
            "--data",
            str(long_data),
            "-o",
            str(tmp_path / "out"),
            "--no-measure",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    artifact = json.loads(result.stdout)["artifacts"][0]
    [verdict] = [v for v in artifact["verdicts"] if v["budget"].startswith("p90 latency")]
    assert verdict["budget"] == f"p90 latency ({applies_to})"
    bounded = artifact["device_latency_real_text"] if applies_to == "real-text" else artifact["device_latency"]
    assert verdict["value"] == bounded["value"]


# ---- the quantized criterion ---------------------------------------------------------------------------------------


def _logits(labels: np.ndarray) -> np.ndarray:
    return np.stack([1.0 - labels, labels.astype(float)], axis=1).astype(np.float32)


def test_quantized_buckets_pass_when_as_faithful_to_the_reference_as_the_padded_run():
    """Padded and bucketed runs each 1% off the reference, on different texts: they agree on 98% with each
    other, below 99.5%, but the bucketed run is as faithful as the padded one, so it passes."""
    from edgecompress.verify.evaluate import bucket_fidelity, compare_buckets

    reference = np.zeros(1000, dtype=int)
    padded, bucketed = reference.copy(), reference.copy()
    padded[:10], bucketed[10:20] = 1, 1
    parity = compare_buckets(_logits(padded), _logits(bucketed), task=LABEL, feeds={}, lossy=True)
    assert not parity.passed and parity.prediction_agreement == pytest.approx(0.98)
    fidelity = bucket_fidelity(_logits(reference), _logits(padded), _logits(bucketed), task=LABEL, feeds={})
    assert fidelity["passed"] and fidelity["padded"] == fidelity["bucketed"] == pytest.approx(0.99)
    bucketed[20:30] = 1  # now 2% off the reference: less faithful than the padded run by more than the slack
    fidelity = bucket_fidelity(_logits(reference), _logits(padded), _logits(bucketed), task=LABEL, feeds={})
    flips = (10 + 1) / (1000 + 2)  # the padded run's share of flips by Laplace's rule of succession
    assert not fidelity["passed"] and fidelity["slack"] == pytest.approx(3 * np.sqrt(flips * (1 - flips) / 1000))


def test_the_fidelity_slack_covers_the_counting_noise_of_a_few_flips():
    """1,280 texts, the padded run 0.63% off the reference, the own-length run 0.94%: 4 texts apart, within three
    standard errors (0.70 points, the share of flips taken as (8 + 1) / (1280 + 2)) though beyond the fixed 0.25;
    3% off is not."""
    from edgecompress.verify.evaluate import bucket_fidelity

    reference = np.zeros(1280, dtype=int)
    padded, bucketed = reference.copy(), reference.copy()
    padded[:8], bucketed[100:112] = 1, 1
    fidelity = bucket_fidelity(_logits(reference), _logits(padded), _logits(bucketed), task=LABEL, feeds={})
    assert fidelity["passed"] and 0.0025 < fidelity["slack"] < 0.0075
    bucketed[200:240] = 1
    fidelity = bucket_fidelity(_logits(reference), _logits(padded), _logits(bucketed), task=LABEL, feeds={})
    assert not fidelity["passed"]


def test_one_flip_of_a_few_texts_is_within_the_noise_of_a_padded_run_that_flipped_none():
    """12 texts, the padded run agreeing with the reference on all, the own-length run on 11: the padded run's share
    of flips taken as zero gave a zero standard error, and the export failed (a tiny ALBERT regressor, issue 15).
    Estimated as (0 + 1) / (12 + 2) it is not zero; half the texts flipped still fails."""
    from edgecompress.verify.evaluate import bucket_fidelity

    reference = np.zeros(12, dtype=int)
    padded, bucketed = reference.copy(), reference.copy()
    bucketed[0] = 1
    fidelity = bucket_fidelity(_logits(reference), _logits(padded), _logits(bucketed), task=LABEL, feeds={})
    assert fidelity["passed"] and fidelity["slack"] == pytest.approx(3 * np.sqrt(1 / 14 * 13 / 14 / 12))
    bucketed[:6] = 1
    assert not bucket_fidelity(_logits(reference), _logits(padded), _logits(bucketed), task=LABEL, feeds={})["passed"]


def test_the_report_lists_the_signatures_and_what_the_memory_estimate_leaves_out(bucketed):
    report = json.loads((bucketed / "report.json").read_text())
    [tflite] = [a for a in report["artifacts"] if a["file"] == "model.tflite"]
    assert list(tflite["signatures"]) == ["seq_16", "seq_8", "seq_4"] and tflite["shared_weight_bytes"] > 0
    assert any(
        n.startswith("model.tflite: LiteRT's XNNPACK delegate packs the shared weights again") for n in report["notes"]
    )


def test_the_weighted_percentile_is_the_nearest_rank_over_weighted_values():
    from edgecompress.measure.host import weighted_percentile

    # 246, 656 and 374 texts at three bucket estimates: p90 falls in the last bucket, p50 in the middle one
    assert weighted_percentile([1.0, 2.0, 4.0], [246, 656, 374], 90) == 4.0
    assert weighted_percentile([4.0, 1.0, 2.0], [374, 246, 656], 50) == 2.0
    assert weighted_percentile([1.0, 2.0], [90, 10], 90) == 1.0  # exactly 90% of the weight at 1.0
