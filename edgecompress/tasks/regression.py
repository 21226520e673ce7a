"""Regression (problem_type "regression", or one label): logits [batch, 1] is the predicted value itself.

Scored by Pearson, Spearman and mean absolute error against numeric labels.

Agreement. Two models agree on a text when their values differ by at most AGREEMENT_SHARE (0.2) of the standard
deviation of the first (reference) model's values over the texts checked. Why this rule:
- Relative, since a regression's scale is the user's; and computed from the two models' outputs alone, since
  it must mean the same on labelled --data, on the unlabelled built-in sentences and on the tuning texts the
  quantizers judge their trials on (which have no gold, so the float model's own residual error against gold
  cannot be the scale everywhere).
- The standard deviation, not the spread (max - min) used before: the spread grows with the number of texts
  (about 3.3 standard deviations at 12 texts, 6.5 at 1,000), so the same artifact agreed more on a longer
  file, and a quantizer judging 61 tuning texts accepted graphs that 12 texts of --data then refused.
- Why 0.2: as strict as a classifier's agreement for the same quantization noise. Measured on the MiniLM
  teacher (600 Rotten Tomatoes test texts, the default pixel7 recipe's dynamic int8 at 64 tokens), its logit
  difference read as a regression: int8 moved it by 0.043 standard deviations (root mean square), and kept
  99.5% of texts within 0.2 standard deviations (96.5% within 0.1, 98.8% within 0.15) while keeping 99.7% of
  its argmax decisions. A broken artifact, Gaussian noise the size of the signal, would agree on 16%.
- What it means against the model's own error: for predictions that correlate r with gold (calibrated: their
  deviation is r times the gold's), the residual error is sqrt(1 - r^2) times the gold's deviation, so the
  tolerance is 0.2 r / sqrt(1 - r^2) of it: 0.37 of the residual at r = 0.88 (BERT on STS-B), 0.27 at r = 0.8.
  A text that agrees moved by about a third of what the float model already gets wrong, or less.
- What it guarantees for the scores: every text within e standard deviations turns the centred predictions by
  at most asin(e), so Pearson's r against any gold moves by at most e (0.2) in the worst case, noise aligned
  with the residuals; noise of rms n independent of them moves it by a factor 1 / sqrt(1 + n^2) (0.1% at the
  measured 0.043). The mean absolute error moves by at most e deviations of the predictions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import UserError
from edgecompress.tasks._stats import pearson, spearman
from edgecompress.tasks.base import Encoded, Examples, Feeds, Score, Task, register_task
from edgecompress.tasks.sequence_classification import is_regression

AGREEMENT_SHARE = 0.2  # of the standard deviation of the reference's values (see the module docstring)
ABSOLUTE_FLOOR = 1e-4  # the float parity tolerance: identical outputs on constant predictions still agree


@register_task
class Regression(Task):
    name = "regression"
    head = "ForSequenceClassification"
    output_name = "logits"
    output_axes = ("batch", "1")
    data_format = "CSV/TSV/JSONL with a text column and a numeric label column"
    agreement_meaning = (
        f"values within {AGREEMENT_SHARE:g} standard deviations of the reference's values on the texts checked"
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
        deviation = float(values.std()) if values.size else 0.0
        return np.abs(values - b[:, 0]) <= max(AGREEMENT_SHARE * deviation, ABSOLUTE_FLOOR)

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
