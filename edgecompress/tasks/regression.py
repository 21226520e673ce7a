"""Regression (problem_type "regression", or one label): logits [batch, 1] is the predicted value itself.

Scored by Pearson, Spearman and mean absolute error against numeric labels. Two models agree on a text when
their values differ by at most AGREEMENT_SHARE of the spread (max - min) of the first model's values on the
texts checked: a relative tolerance, since a regression's scale is the user's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import UserError
from edgecompress.tasks._stats import pearson, spearman
from edgecompress.tasks.base import Encoded, Examples, Feeds, Score, Task, register_task
from edgecompress.tasks.sequence_classification import is_regression

AGREEMENT_SHARE = 0.02
ABSOLUTE_FLOOR = 1e-4  # the float parity tolerance: identical outputs on constant predictions still agree


@register_task
class Regression(Task):
    name = "regression"
    head = "ForSequenceClassification"
    output_name = "logits"
    output_axes = ("batch", "1")
    data_format = "CSV/TSV/JSONL with a text column and a numeric label column"
    agreement_meaning = (
        f"values within {AGREEMENT_SHARE:.0%} of the spread (max - min) of the reference's values on the texts checked"
    )

    def __init__(self) -> None:
        self.labels = None

    @classmethod
    def claims(cls, config: dict[str, Any]) -> bool:
        return is_regression(config)

    @classmethod
    def from_config(cls, config: dict[str, Any], folder: Path | None) -> Task:
        return cls()

    def read(self, path: Path) -> Examples:
        from edgecompress.intake.data import load_dataset

        dataset = load_dataset(path, require_labels=False)
        gold = None
        if dataset.labels is not None:
            gold = np.array([_number(label, path, row) for row, label in enumerate(dataset.labels, start=1)])
        return Examples(dataset.path, dataset.texts, gold=gold)

    def agrees(self, a: np.ndarray, b: np.ndarray, feeds: Feeds) -> np.ndarray:
        values = a[:, 0].astype(np.float64)
        spread = float(values.max() - values.min()) if values.size else 0.0
        return np.abs(values - b[:, 0]) <= max(AGREEMENT_SHARE * spread, ABSOLUTE_FLOOR)

    def score(self, outputs: np.ndarray, examples: Examples, encoded: Encoded) -> Score | None:
        if examples.gold is None:
            return None
        predicted = outputs[:, 0].astype(np.float64)
        figures = {
            "pearson": pearson(predicted, examples.gold),
            "spearman": spearman(predicted, examples.gold),
            "mean_absolute_error": float(np.mean(np.abs(predicted - examples.gold))),
        }
        method = "Pearson's r, Spearman's rho (average ranks for ties) and mean |prediction - label|"
        return Score(figures, "pearson", method, len(examples))

    def decoding(self) -> dict[str, Any]:
        return {"predict": "logits[..., 0] is the predicted value (no activation)"}


def _number(label: str, path: Path, row: int) -> float:
    try:
        value = float(label)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value):
        raise UserError(
            f"label {label!r} is not a number",
            where=f"{path} (data row {row})",
            expected="a numeric label on every row for a regression model",
            hint="is this classification data? config.json says regression (problem_type, or num_labels 1)",
        )
    return value
