"""The test set only scores; tuning runs on other texts (issue 17, items 10a and 12).

10a: without --data, parity is judged on enough built-in sentences that the 95% agreement rule means
something (16 sentences: one flip failed the headline command). 12: passes that tune (activation ranges,
sensitivity trials, the mask-value check, the vocabulary trim) never see --data's rows.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from click.testing import CliRunner

from edgecompress import pipeline, rewrite
from edgecompress.cli import main
from edgecompress.compress.trim_vocab import kept_ids
from edgecompress.intake.builtin_corpus import BUILTIN_JUDGING, BUILTIN_TUNING
from edgecompress.intake.data import tokenize
from edgecompress.intake.model import load_bundle
from edgecompress.tasks.sentence_embedding import SentenceEmbedding
from edgecompress.tasks.sequence_classification import SingleLabelClassification
from edgecompress.verify.evaluate import compare

from conftest import write_csv
from helpers import pass_context

LABEL, EMBEDDING = SingleLabelClassification(None), SentenceEmbedding()


def _export(*args):
    return CliRunner().invoke(main, ["export", *map(str, args)])


def test_without_data_one_flip_no_longer_fails_a_quantized_export():
    reference = np.tile([[0.0, 1.0]], (len(BUILTIN_JUDGING), 1))
    flipped = reference.copy()
    flipped[0] = [1.0, 0.0]
    assert len(BUILTIN_JUDGING) >= 150
    assert compare(reference, flipped, task=LABEL, feeds={}, lossy=True).passed
    # On 16 texts one flip failed the headline command (the built-in sentences came of it); since verification
    # judges the share within its counting noise (issue 15) it no longer does, and a quarter of them still does.
    assert compare(reference[:16], flipped[:16], task=LABEL, feeds={}, lossy=True).passed
    flipped[:4] = [1.0, 0.0]
    assert not compare(reference[:16], flipped[:16], task=LABEL, feeds={}, lossy=True).passed


def test_the_built_in_sentences_that_tune_never_judge():
    assert not set(BUILTIN_TUNING) & set(BUILTIN_JUDGING)
    assert len(BUILTIN_TUNING) >= 60  # the passes calibrate on 64 rows at most


def test_a_quantized_export_without_data_says_what_it_was_judged_and_tuned_on(tiny_checkpoint, tiny_device, tmp_path):
    device = tmp_path / "q" / "tinyphone.toml"
    device.parent.mkdir()
    device.write_text(tiny_device.read_text().replace('quantize = "none"', 'quantize = "dynamic-int8"'))
    result = _export(tiny_checkpoint, "--device", device, "-o", tmp_path / "out", "--no-measure")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "tinyphone" / "report.json").read_text())["data"]
    assert data["texts"] == len(BUILTIN_JUDGING)
    assert data["judged_on"].startswith(f"no --data: {len(BUILTIN_JUDGING)} built-in sentences")
    assert "at least 95% of them within counting noise (18 flips allowed)" in data["judged_on"]
    assert data["tuned_on"].startswith(
        f"activation ranges, quantization sensitivity and the mask-value check ran on "
        f"{len(BUILTIN_TUNING)} texts of the built-in sentences held out for tuning"
    )


def test_no_pass_tunes_on_the_rows_of_data(tiny_checkpoint, tiny_device, tiny_data, tmp_path, monkeypatch):
    seen = []
    real = pipeline.apply_pass

    def spy(p, model, ctx):
        seen.append((p.name, ctx.calibration, ctx.calibration_source))
        return real(p, model, ctx)

    monkeypatch.setattr(pipeline, "apply_pass", spy)
    monkeypatch.setattr(rewrite, "apply_pass", spy)
    result = _export(
        tiny_checkpoint,
        "--device",
        tiny_device,
        "--data",
        tiny_data,
        "-o",
        tmp_path / "out",
        "--quantize",
        "int8",
        "--no-measure",
    )
    assert result.exit_code == 0, result.output
    bundle = load_bundle(tiny_checkpoint)
    data_rows = tokenize(
        bundle.tokenizer, [t for t, _ in _rows(tiny_data)], seq_len=16, input_names=bundle.input_names
    )["input_ids"]
    assert any(name == "quantize_static" for name, _, _ in seen)
    for name, calibration, source in seen:
        assert source == "built-in", name
        rows = {tuple(r) for r in calibration["input_ids"]}
        assert not rows & {tuple(r) for r in data_rows}, name
    tuned_on = json.loads((tmp_path / "out" / "tinyphone" / "report.json").read_text())["data"]["tuned_on"]
    assert tuned_on.endswith(f"--data ({tiny_data.name}) only scores")


def test_calibration_comes_from_train_data_before_the_built_in_sentences(
    tiny_checkpoint, tiny_device, tiny_data, tmp_path
):
    train = write_csv(tmp_path / "train.csv", [("the plot was fun", "positive"), ("dull actor", "negative")])
    result = _export(
        tiny_checkpoint,
        "--device",
        tiny_device,
        "--data",
        tiny_data,
        "--train-data",
        train,
        "-o",
        tmp_path / "out",
        "--quantize",
        "int8",
        "--no-measure",
    )
    assert result.exit_code == 0, result.output
    tuned_on = json.loads((tmp_path / "out" / "tinyphone" / "report.json").read_text())["data"]["tuned_on"]
    assert "ran on 2 texts of --train-data (" in tuned_on


def test_the_vocabulary_trim_does_not_keep_words_of_the_built_in_fallback(tiny_checkpoint):
    bundle = load_bundle(tiny_checkpoint)
    builtin = tokenize(bundle.tokenizer, ["awful boring plot"], seq_len=16, input_names=bundle.input_names)
    ctx = dataclasses.replace(pass_context(bundle, seq_len=16), calibration=builtin, calibration_source="built-in")
    assert bundle.tokenizer.convert_tokens_to_ids("boring") not in kept_ids(bundle, ctx)
    ctx = dataclasses.replace(ctx, calibration_source="calibration")
    assert bundle.tokenizer.convert_tokens_to_ids("boring") in kept_ids(bundle, ctx)


def _rows(path):
    import csv

    with path.open() as handle:
        return [(row["text"], row["label"]) for row in csv.DictReader(handle)]


def _embeddings_at(cosines: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of unit vectors with the given cosines."""
    angles = np.arccos(np.asarray(cosines))
    return (np.stack([np.ones_like(angles), np.zeros_like(angles)], -1), np.stack([np.cos(angles), np.sin(angles)], -1))


def test_an_encoder_across_runtimes_is_judged_by_a_share_of_texts_not_the_single_worst():
    """10a: judging on 185 texts instead of 16 must not fail an encoder for one text the minimum rule never saw
    (the third-party MiniLM-L3: LiteRT vs ONNX Runtime 0.99893 on 1 of 185 sentences, >= 0.99984 elsewhere)."""
    from edgecompress.verify.evaluate import compare_runtimes

    def verdict(cosines):
        ort, other = _embeddings_at(cosines)
        return compare_runtimes(ort, other, task=EMBEDDING, feeds={}, lossy=True)

    one_off = verdict([0.99999] * 184 + [0.99893])
    assert one_off.passed and one_off.cosine_share == 184 / 185
    assert not verdict([0.99999] * 183 + [0.99893] * 2).passed  # 98.9% < 99%
    assert not verdict([0.99999] * 184 + [0.98]).passed  # every text must stay at 0.99
    assert verdict([0.99999] * 16).passed


def test_tuning_texts_are_encoded_as_the_task_feeds_the_model(tmp_path):
    """Question answering: each tuning text is the context of a question (token types 1 on it), the rows the app
    sends, so the quantizers' trials decode spans over real contexts; a classifier's are the plain texts."""
    from test_tasks import build

    tuning = pipeline.TuningTexts(["the movie was fun", "a dull plot"], "calibration", "c.csv")
    qa = load_bundle(build(tmp_path / "qa", "ForQuestionAnswering"))
    feeds = pipeline._calibration_feeds(qa, tuning, 16)
    assert (feeds["token_type_ids"] == 1).sum(axis=1).tolist() == [5, 4]  # 4 and 3 words, and the closing [SEP]
    classifier = load_bundle(build(tmp_path / "cls", "ForSequenceClassification"))
    plain = tokenize(classifier.tokenizer, tuning.texts, seq_len=16, input_names=classifier.input_names)
    feeds = pipeline._calibration_feeds(classifier, tuning, 16)
    assert all((feeds[name] == plain[name]).all() for name in plain)
