"""Per-class recall and macro-F1 beside accuracy, and a warning when a class loses more than the budget
(issue 17, item 14)."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from edgecompress.cli import main
from edgecompress.report.per_class import class_figures, class_loss_notes

NAMES = ["world", "sports", "business"]


def test_recall_and_macro_f1_from_the_confusion_matrix():
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    predictions = np.array([0, 0, 0, 1, 1, 1, 0, 0])  # 'business' never predicted
    figures = class_figures(predictions, labels, NAMES)
    assert figures["recall"] == {"world": 0.75, "sports": 1.0, "business": 0.0}
    # F1: world P 3/5 R 3/4 -> 2/3; sports P 2/3 R 1 -> 0.8; business 0
    assert abs(figures["macro_f1"] - (2 / 3 + 0.8 + 0) / 3) < 1e-12
    assert figures["support"] == {"world": 4, "sports": 2, "business": 2}


def test_a_class_absent_from_the_labels_has_no_recall_and_is_not_averaged():
    figures = class_figures(np.array([0, 1]), np.array([0, 1]), NAMES)
    assert figures["recall"]["business"] is None and figures["macro_f1"] == 1.0


def test_a_class_that_loses_more_than_the_budget_is_a_warning_even_when_accuracy_holds():
    labels = np.array([0] * 90 + [2] * 10)
    original = class_figures(labels.copy(), labels, NAMES)  # 100% everywhere
    compressed = class_figures(np.array([0] * 90 + [0] * 10), labels, NAMES)  # accuracy 90%, business 0%
    notes = class_loss_notes("model.onnx", compressed, original, budget_points=1.0)
    assert notes == [
        "warning: model.onnx loses 100.0 points of recall on class 'business' (100.0% uncompressed "
        "-> 0.0%, 10 texts), more than the accuracy budget of 1 points; overall accuracy can hide this"
    ]
    assert class_loss_notes("model.onnx", original, original, budget_points=1.0) == []


def test_an_export_reports_recall_per_class_and_macro_f1(tiny_checkpoint, tiny_device, tiny_data, tmp_path):
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
            str(tmp_path),
            "--no-measure",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "tinyphone" / "report.json").read_text())
    assert set(report["data"]["reference_classes"]["recall"]) == {"negative", "positive"}
    for artifact in report["artifacts"]:
        assert set(artifact["classes"]["recall"]) == {"negative", "positive"}
        assert 0 <= artifact["classes"]["macro_f1"] <= 1
    assert "| uncompressed | " in (tmp_path / "tinyphone" / "report.md").read_text()
