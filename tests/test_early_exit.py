"""Early exit (`early_exit` pass, exits/): ramps, the exit policy, segments chained in ONNX Runtime, the export."""

from __future__ import annotations

import json
import random

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from edgecompress.cli import main
from edgecompress.compress._taskdata import task_data
from edgecompress.compress.early_exit import EarlyExit
from edgecompress.exits.policy import exit_index, normalized_entropy
from edgecompress.exits.ramps import layer_rows, ramp_logits
from edgecompress.exits.segments import export_segment, segments, torch_chain
from edgecompress.exits.ship import write_segments
from edgecompress.intake.data import TextDataset
from edgecompress.intake.model import load_bundle
from edgecompress.passes import apply_pass
from edgecompress.pipeline import ExportRequest, run_export
from edgecompress.verify.evaluate import reference_outputs

from conftest import SENTENCES, WORDS, user_error, write_csv
from family_models import build_any_family_checkpoint
from helpers import FLOAT_GRAPH_STAGE, pass_context

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train_set(count: int, seed: int) -> TextDataset:
    """Random sentences of the tiny vocabulary, labelled by whether a positive word outnumbers a negative one."""
    rng = random.Random(seed)
    good, bad = {"good", "great", "loved", "best", "fun"}, {"bad", "awful", "hated", "worst", "boring", "dull"}
    texts, labels = [], []
    for _ in range(count):
        words = rng.sample(WORDS, rng.randint(3, 7))
        texts.append(" ".join(words))
        labels.append("positive" if len(good & set(words)) >= len(bad & set(words)) else "negative")
    return TextDataset(path=None, texts=texts, labels=labels)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def exited(fitted_teacher):
    """The fitted tiny teacher with ramps, and its plain bundle."""
    bundle = load_bundle(fitted_teacher)
    train = _train_set(200, seed=0)
    new, record = apply_pass(EarlyExit(epochs=30), bundle, pass_context(bundle, train_data=train))
    return bundle, new, record


def _feeds(bundle, texts):
    encoded = bundle.task.encode(
        bundle.tokenizer, bundle.task.unlabelled(texts, "test"), seq_len=16, input_names=bundle.input_names
    )
    return encoded.feeds


def test_it_fires_and_the_last_exit_is_the_model_exactly(exited):
    bundle, new, record = exited
    assert record.fired and new.exits.exits == 2 and new.module is bundle.module
    feeds = _feeds(bundle, [text for text, _ in SENTENCES])
    chained = torch_chain(segments(new), feeds)
    assert chained.shape == (2, len(SENTENCES), 2)
    reference = reference_outputs(bundle, feeds)
    # the same modules on the same rows: equal up to float rounding (the reference batches its rows its own way)
    np.testing.assert_allclose(chained[-1], reference, rtol=0, atol=1e-6)
    assert (chained[-1].argmax(-1) == reference.argmax(-1)).all()


def test_segments_in_onnx_runtime_and_litert_reproduce_every_exit(exited, tmp_path):
    bundle, new, _ = exited
    feeds = _feeds(bundle, [text for text, _ in SENTENCES])
    shipped = write_segments(new, feeds, reference_outputs(bundle, feeds), tmp_path, 1e-4, seq_len=16, tflite=True)
    assert [p.name for p in shipped.files] == ["exit_segment_0.onnx", "exit_segment_1.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exit_segment_0.onnx", "exit_segment_1.onnx", "exits.tflite"]
    for runtime in ("onnxruntime", "litert"):
        assert max(shipped.parity[runtime]["max_abs_diff_per_exit"]) <= 1e-4, runtime
        assert shipped.parity[runtime]["last_exit_vs_model"] <= 1e-4, runtime
    assert [s["signature"] for s in shipped.specs] == ["exit_0", "exit_1"]
    for path in shipped.files:  # fused as the whole model is: one attention op per segment
        assert [n.op_type for n in onnx.load(str(path)).graph.node].count("Attention") == 1, path.name
    assert [i["name"] for i in shipped.specs[1]["inputs"]] == ["hidden_in", "attention_mask"]
    assert [o["name"] for o in shipped.specs[0]["outputs"]] == ["hidden", "logits"]
    assert [o["name"] for o in shipped.specs[1]["outputs"]] == ["logits"]


def test_a_segment_that_differs_from_torch_is_not_written(exited, tmp_path):
    from edgecompress.errors import VerificationError

    bundle, new, _ = exited
    feeds = _feeds(bundle, [text for text, _ in SENTENCES])
    wrong = reference_outputs(bundle, feeds) + 0.01  # the whole model's output as a broken lowering would give
    with pytest.raises(VerificationError, match="last exit"):
        write_segments(new, feeds, wrong, tmp_path, 1e-4, seq_len=16, tflite=True)
    assert not list(tmp_path.iterdir())


def test_ramps_reach_an_accuracy_floor_on_held_out_texts(exited):
    bundle, new, _ = exited
    held_out = _train_set(200, seed=1)
    data = task_data(bundle, held_out, seq_len=16)
    rows, teacher, labels = layer_rows(bundle.module, bundle.architecture, data)
    ramp = ramp_logits(new.exits.ramps, rows)[0].argmax(-1)
    untrained = ramp_logits(torch.nn.ModuleList([_head_as_ramp(bundle)]), rows)[0].argmax(-1)
    agreement = float(np.mean(ramp == teacher.numpy().argmax(-1)))
    # measured 0.97 on this toy task; the model's own head read at layer 1 agrees far less
    assert agreement >= 0.85, agreement
    assert agreement > float(np.mean(untrained == teacher.numpy().argmax(-1)))


def _head_as_ramp(bundle):
    from edgecompress.exits.ramps import Ramp

    dense, output = bundle.architecture.head(bundle.module.hf_model)
    return Ramp(dense, output, bundle.architecture.head_activation)


def test_patience_without_a_threshold_ships_half_the_layers(exited):
    bundle, _, _ = exited
    again, _ = apply_pass(
        EarlyExit(policy="patience", epochs=1), bundle, pass_context(bundle, train_data=_train_set(20, seed=5))
    )
    assert again.exits.threshold == 1.0 and again.exits.sweep == (0.0, 1.0)


def test_policy_thresholds_at_their_ends():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 50, 3)).astype(np.float32)
    assert (exit_index(logits, "entropy", 0.0) == 3).all()  # never early: the whole model
    assert (exit_index(logits, "entropy", 1.0) == 0).all()  # anything but a perfect tie stops at the first exit
    assert (exit_index(logits, "patience", 0) == 0).all()
    assert (exit_index(logits, "patience", 3) == 3).all()
    middle = exit_index(logits, "entropy", float(np.median(normalized_entropy(logits[0]))))
    assert 0 < (middle == 0).sum() < 50  # about half stop at the first exit


def test_patience_stops_where_predictions_agree_in_a_row():
    # predictions per exit for three texts: (0, 0, 1, 1), (0, 1, 1, 1), (0, 1, 0, 1)
    preds = np.array([[0, 0, 0], [0, 1, 1], [1, 1, 0], [1, 1, 1]])
    logits = np.stack([np.eye(2)[p] for p in preds]).astype(np.float32)
    assert exit_index(logits, "patience", 1).tolist() == [1, 2, 3]
    assert exit_index(logits, "patience", 2).tolist() == [3, 3, 3]


RECIPE = (
    """
description = "early exit test"
[[compress]]
pass = "early_exit"
policy = "entropy"
threshold = 0.5
sweep = [0.0, 0.2, 1.0]
epochs = 5
"""
    + FLOAT_GRAPH_STAGE
)


def test_export_ships_segments_policy_and_per_threshold_figures(fitted_teacher, tiny_device, tmp_path):
    recipe, data = tmp_path / "exit.toml", write_csv(tmp_path / "eval.csv", SENTENCES)
    recipe.write_text(RECIPE)
    train = write_csv(tmp_path / "train.csv", list(zip(*[_train_set(60, 2).texts, _train_set(60, 2).labels])))
    request = ExportRequest(
        fitted_teacher,
        str(tiny_device),
        tmp_path / "out",
        data=data,
        train_data=train,
        recipe=str(recipe),
        runs=3,
        warmup=1,
    )
    result = run_export(request)
    manifest = json.loads((result.out_dir / "manifest.json").read_text())
    exits = manifest["early_exit"]
    assert exits["policy"]["kind"] == "entropy" and exits["policy"]["threshold"] == 0.5
    shipped = {f["path"] for f in manifest["files"]}
    assert {s["file"] for s in exits["segments"]} <= shipped
    report = result.report.early_exit
    rows = {row["threshold"]: row for row in report["sweep"]}
    assert set(rows) == {0.0, 0.2, 0.5, 1.0} and rows[0.5]["shipped"]
    assert rows[0.0]["agreement_with_model"] == 1.0 and rows[0.0]["mean_exit_layer"] == 2.0
    assert rows[0.0]["agreement_with_original"] == 1.0  # float segments: the last exit is the model as given
    assert rows[1.0]["mean_exit_layer"] == 1.0
    accuracy = result.report.artifacts[0].accuracy.value
    assert rows[0.0]["accuracy"] == pytest.approx(accuracy)  # exit last = the whole model's accuracy
    for runtime in ("onnxruntime", "litert"):  # one segment costs less than two
        assert rows[1.0]["mean_latency_ms"][runtime] < rows[0.0]["mean_latency_ms"][runtime], runtime
        assert "measured on host" in report["latency_how"][runtime]
    assert set(exits["runtimes"]) == {"onnxruntime", "litert"} and "exits.tflite" in shipped
    assert "## Early exit" in (result.out_dir / "report.md").read_text()
    html = (result.out_dir / "report.html").read_text()
    assert "<h2>Early exit (entropy, threshold 0.5 shipped, 2 exits)</h2>" in html and "0.5 (shipped)" in html


def _run(argv):
    return CliRunner().invoke(main, [str(a) for a in argv])


@pytest.mark.parametrize(
    "options, fragment",
    [
        ("threshold = 1.5", "exit threshold 1.5 is out of range for policy 'entropy'"),
        ('policy = "patience"\nthreshold = 2', "exit threshold 2 is out of range for policy 'patience'"),
        ('policy = "confidence"', "unknown exit policy 'confidence'"),
        ("sweep = [-0.1]", "exit threshold -0.1 is out of range"),
        ("label_weight = 2.0", "option 'label_weight' of pass 'early_exit' = 2.0 cannot train"),
    ],
)
def test_bad_thresholds_are_refused_before_any_work(options, fragment, tiny_checkpoint, tiny_device, tmp_path):
    recipe, out = tmp_path / "exit.toml", tmp_path / "out"
    recipe.write_text(f'[[compress]]\npass = "early_exit"\n{options}\n' + FLOAT_GRAPH_STAGE)
    train = write_csv(tmp_path / "train.csv", SENTENCES)
    line = user_error(
        _run(
            ["export", tiny_checkpoint, "--device", tiny_device, "--recipe", recipe, "--train-data", train, "-o", out]
        ),
        out,
    )
    assert fragment in line, line


@pytest.mark.parametrize(
    "model, fragment",
    [
        ("distilbert", "early exit does not apply to DistilBERT"),
        ("encoder", "early exit does not apply to task 'sentence-embedding'"),
    ],
)
def test_families_and_tasks_it_does_not_apply_to_are_refused(model, fragment, tiny_encoder, tiny_device, tmp_path):
    checkpoint = tiny_encoder if model == "encoder" else build_any_family_checkpoint(tmp_path / model, model)
    recipe, out = tmp_path / "exit.toml", tmp_path / "out"
    recipe.write_text('[[compress]]\npass = "early_exit"\n' + FLOAT_GRAPH_STAGE)
    train = write_csv(tmp_path / "train.csv", SENTENCES)
    line = user_error(
        _run(["export", checkpoint, "--device", tiny_device, "--recipe", recipe, "--train-data", train, "-o", out]),
        out,
    )
    assert fragment in line, line


def test_it_does_not_fire_twice_and_says_why(exited):
    bundle, new, _ = exited
    again, record = apply_pass(EarlyExit(epochs=1), new, pass_context(new, train_data=_train_set(20, seed=3)))
    assert not record.fired and again is new
    assert record.notes == ["skipped: the model has exit ramps already"]


def test_roberta_segments_reproduce_the_model(tmp_path):
    """RoBERTa opts in too: positions from the pad id, no token types; its segments must still chain exactly."""
    bundle = load_bundle(build_any_family_checkpoint(tmp_path / "roberta", "roberta"))
    new, record = apply_pass(EarlyExit(epochs=2), bundle, pass_context(bundle, train_data=_train_set(40, seed=4)))
    feeds = _feeds(bundle, [text for text, _ in SENTENCES])
    assert "token_type_ids" not in feeds or "token_type_ids" not in bundle.input_names
    reference = reference_outputs(bundle, feeds)
    shipped = write_segments(new, feeds, reference, tmp_path, 1e-4, seq_len=16, tflite=True)
    assert shipped.parity["litert"]["last_exit_vs_model"] <= 1e-4
    assert [i["name"] for i in shipped.specs[0]["inputs"]] == ["input_ids", "attention_mask"]


def test_dynamic_int8_segments_are_held_to_the_lossy_bar(exited, tmp_path):
    """Under a dynamic-int8 whole model the segments are int8 too: smaller, verified by agreement, not 1e-4."""
    bundle, new, _ = exited
    feeds = _feeds(bundle, [text for text, _ in SENTENCES])
    reference = reference_outputs(bundle, feeds)
    shipped = write_segments(
        new, feeds, reference, tmp_path, 1e-4, seq_len=16, tflite=True, quantization="dynamic-int8"
    )
    assert shipped.quantization == "dynamic-int8"
    float_bytes = sum(len(export_segment(p, s).SerializeToString()) for p, s in zip(segments(new), shipped.samples))
    assert sum(p.stat().st_size for p in shipped.files) < 0.8 * float_bytes
    for runtime in ("onnxruntime", "litert"):
        parity = shipped.parity[runtime]
        assert parity["lossy"] and parity["tolerance"] is None
        assert min(parity["agreement_per_exit"]) >= 0.95, (runtime, parity)
    assert max(shipped.parity["onnxruntime"]["max_abs_diff_per_exit"]) > 0  # it did quantize
    for path in shipped.files:
        assert "QAttention" in {n.op_type for n in onnx.load(str(path)).graph.node}, path.name


@pytest.mark.slow
def test_minilm_segments_reproduce_the_real_model(minilm_classifier, tmp_path):
    """The real 6-layer MiniLM at seq_len 128: six segments, float, chained in both runtimes."""
    bundle = load_bundle(minilm_classifier)
    new, _ = apply_pass(EarlyExit(epochs=2), bundle, pass_context(bundle, seq_len=128, train_data=_train_set(64, 6)))
    encoded = bundle.task.encode(
        bundle.tokenizer,
        bundle.task.unlabelled([text for text, _ in SENTENCES], "test"),
        seq_len=128,
        input_names=bundle.input_names,
    )
    reference = reference_outputs(bundle, encoded.feeds)
    shipped = write_segments(new, encoded.feeds, reference, tmp_path, 1e-4, seq_len=128, tflite=True)
    assert len(shipped.files) == 6
    for runtime in ("onnxruntime", "litert"):
        assert shipped.parity[runtime]["last_exit_vs_model"] <= 1e-4, runtime
