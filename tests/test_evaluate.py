"""Parity rules (float vs lossy), the padding-free torch reference, and budget verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from edgecompress.devices import get_profile
from edgecompress.intake.data import tokenize
from edgecompress.intake.model import load_bundle
from edgecompress.report.budgets import accuracy_verdict, latency_verdict, memory_verdict, size_verdict
from edgecompress.report.document import ESTIMATED, Figure
from edgecompress.tasks.sentence_embedding import SentenceEmbedding
from edgecompress.tasks.sequence_classification import SingleLabelClassification
from edgecompress.verify.evaluate import FLOAT_PARITY_ATOL, LOSSY_MIN_AGREEMENT, compare, reference_outputs

from conftest import SENTENCES

LABEL, EMBEDDING = SingleLabelClassification(None), SentenceEmbedding()


def logits(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randn(rows, 2).astype(np.float32)


def test_float_parity_needs_the_tolerance_and_identical_predictions():
    ref = logits(100)
    assert compare(ref, ref + FLOAT_PARITY_ATOL / 2, task=LABEL, feeds={}).passed
    assert not compare(ref, ref + FLOAT_PARITY_ATOL * 2, task=LABEL, feeds={}).passed
    flipped = ref.copy()
    flipped[0] = flipped[0, ::-1]
    parity = compare(ref, flipped, task=LABEL, feeds={})
    assert not parity.passed and parity.prediction_agreement == 0.99


def test_lossy_parity_is_judged_by_agreement():
    ref = logits(100)
    allowed = round(100 * (1 - LOSSY_MIN_AGREEMENT))
    noisy = ref + 0.01
    noisy[:allowed] = noisy[:allowed, ::-1]  # flips up to the floor are allowed: accuracy is the budget's call
    parity = compare(ref, noisy, task=LABEL, feeds={}, lossy=True)
    assert parity.passed and parity.tolerance is None and parity.prediction_agreement == LOSSY_MIN_AGREEMENT
    noisy[allowed] = noisy[allowed, ::-1]
    assert not compare(ref, noisy, task=LABEL, feeds={}, lossy=True).passed


def test_embedding_parity_reports_cosine():
    ref = np.random.RandomState(1).randn(10, 8).astype(np.float32)
    parity = compare(ref, ref * 1.0001, task=EMBEDDING, feeds={}, lossy=True)
    assert parity.min_cosine == pytest.approx(1.0, abs=1e-6) and parity.passed
    assert not compare(ref, -ref, task=EMBEDDING, feeds={}, lossy=True).passed


def test_padding_free_reference_equals_the_padded_forward(tiny_checkpoint):
    import torch

    bundle = load_bundle(tiny_checkpoint)
    feeds = tokenize(bundle.tokenizer, [t for t, _ in SENTENCES], seq_len=24, input_names=bundle.input_names)
    trimmed = reference_outputs(bundle, feeds, batch_size=4)
    with torch.no_grad():
        padded = bundle.module(*[torch.from_numpy(feeds[n]) for n in bundle.input_names]).numpy()
    np.testing.assert_allclose(trimmed, padded, atol=1e-5)


def test_verdicts_compare_each_figure_with_its_budget():
    budgets = get_profile("pixel7").budgets
    assert size_verdict(budgets, int(budgets.artifact_size_mb * 1e6)).passed
    assert not size_verdict(budgets, int(budgets.artifact_size_mb * 1e6) + 1).passed
    slow = latency_verdict(budgets, Figure(budgets.latency_p90_ms + 1, "ms", ESTIMATED, "roofline"))
    assert not slow.passed and slow.how == ESTIMATED
    assert slow.line("pixel7", "model.ort") == (
        f"EXCEEDED: p90 latency on pixel7 for model.ort: {budgets.latency_p90_ms + 1:.4g} ms > "
        f"{budgets.latency_p90_ms:.4g} ms (estimated)"
    )
    assert memory_verdict(budgets, Figure(1.0, "MB", ESTIMATED, "liveness")).passed
    drop = accuracy_verdict(budgets, 0.84, 0.84 - budgets.accuracy_drop_points / 100)
    assert drop.passed and drop.value == pytest.approx(budgets.accuracy_drop_points)
    assert not accuracy_verdict(budgets, 0.84, 0.80).passed


def test_accuracy_guard_names_the_variant_and_both_accuracies():
    budgets = get_profile("pixel7").budgets
    miss = accuracy_verdict(budgets, 0.8401, 0.8200, variant="int4")
    assert not miss.passed
    assert miss.line("pixel7", "model.onnx") == (
        f"EXCEEDED: accuracy drop of recipe int4 (84.01% uncompressed -> 82.00%) on pixel7 for model.onnx: "
        f"2.01 points > {budgets.accuracy_drop_points:.4g} points (measured)"
    )


def test_lossy_tflite_must_agree_with_onnxruntime_on_99_percent():
    from edgecompress.verify.evaluate import compare_runtimes

    ort = np.tile(np.array([[1.0, 0.0]], np.float32), (200, 1))
    tflite = ort.copy()
    tflite[:2] = [0.0, 1.0]  # 1% flipped: allowed
    assert compare_runtimes(ort, tflite, task=LABEL, feeds={}, lossy=True).passed
    tflite[:3] = [0.0, 1.0]  # 1.5% flipped
    parity = compare_runtimes(ort, tflite, task=LABEL, feeds={}, lossy=True)
    assert not parity.passed and parity.prediction_agreement == 0.985


def test_float_tflite_must_match_onnxruntime_to_the_float_tolerance():
    from edgecompress.verify.evaluate import compare_runtimes

    ort = np.zeros((4, 2), np.float32)
    assert compare_runtimes(ort, ort + 5e-5, task=LABEL, feeds={}, lossy=False).passed
    assert not compare_runtimes(ort, ort + 5e-4, task=LABEL, feeds={}, lossy=False).passed
