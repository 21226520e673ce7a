"""Per-class recall and macro-F1 beside accuracy, and a warning when one class loses more than the budget.

Overall accuracy hides a model that stopped predicting some classes (issue 17 item 14: on an 8-class news set
the shipped model predicted two classes, six had zero recall, and the report said "all budgets met"). Computed
with numpy from the confusion matrix: recall = TP / (TP + FN) per class, precision = TP / (TP + FP), F1 their
harmonic mean (0 where both are 0), macro-F1 the unweighted mean of F1 over the classes present in the labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def class_figures(predictions: np.ndarray, labels: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Recall per class (None for a class absent from the labels), macro-F1 over the present classes."""
    classes = len(names)
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    true_positive = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    recall = np.divide(true_positive, support, out=np.zeros(classes), where=support > 0)
    precision = np.divide(true_positive, predicted, out=np.zeros(classes), where=predicted > 0)
    total = recall + precision
    f1 = np.divide(2 * recall * precision, total, out=np.zeros(classes), where=total > 0)
    present = support > 0
    return {
        "recall": {name: (float(recall[i]) if present[i] else None) for i, name in enumerate(names)},
        "support": {name: int(support[i]) for i, name in enumerate(names)},
        "macro_f1": float(f1[present].mean()) if present.any() else None,
        "how": "measured",
        "method": f"from the confusion matrix over {len(labels)} labelled texts; macro-F1: "
        f"unweighted mean of per-class F1 over the {int(present.sum())} classes "
        f"present in the labels",
    }


def class_loss_notes(file: str, artifact: dict[str, Any], original: dict[str, Any], budget_points: float) -> list[str]:
    """A warning per class whose recall dropped by more than the accuracy budget against the original model."""
    notes = []
    for name, before in original["recall"].items():
        after = artifact["recall"][name]
        if before is None or after is None:
            continue
        drop = 100 * (before - after)
        if drop > budget_points + 1e-9:
            notes.append(
                f"warning: {file} loses {drop:.1f} points of recall on class '{name}' "
                f"({100 * before:.1f}% uncompressed -> {100 * after:.1f}%, "
                f"{artifact['support'][name]} texts), more than the accuracy budget of "
                f"{budget_points:g} points; overall accuracy can hide this"
            )
    return notes
