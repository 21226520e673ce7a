"""Multi-label sequence classification (problem_type "multi_label_classification"): logits [batch, labels];
label i is predicted when sigmoid(logit i) reaches its threshold (0.5 unless config.json's `thresholds` says
otherwise: one number, or one per label). Scored by micro and macro F1 over labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import UserError
from edgecompress.tasks._stats import f1
from edgecompress.tasks.base import Encoded, Examples, Feeds, Score, Task, read_rows, register_task, wrong_format_hint
from edgecompress.tasks.sequence_classification import is_multi_label, label_names

DEFAULT_THRESHOLD = 0.5
SEPARATORS = ("|", ";")
EXPECTED = (
    "CSV/TSV/JSONL with a text column and a label column: label names separated by '|' (a JSON list in JSONL), "
    "empty for none"
)


@register_task
class MultiLabelClassification(Task):
    name = "multi-label-classification"
    head = "ForSequenceClassification"
    output_name = "logits"
    output_axes = ("batch", "labels")
    data_format = EXPECTED
    agreement_meaning = "same predicted set of labels (sigmoid >= threshold per label)"

    def __init__(self, labels: list[str] | None, thresholds: list[float]):
        self.labels = labels
        self.thresholds = thresholds

    @classmethod
    def claims(cls, config: dict[str, Any]) -> bool:
        return is_multi_label(config)

    @classmethod
    def from_config(cls, config: dict[str, Any], folder: Path | None) -> Task:
        if not config:  # an .onnx file given --task: labels unknown, every threshold the default
            return cls(None, [])
        labels = label_names(config)
        given = config.get("thresholds", DEFAULT_THRESHOLD)
        thresholds = [float(given)] * len(labels) if isinstance(given, (int, float)) else given
        if (
            not isinstance(thresholds, list)
            or len(thresholds) != len(labels)
            or not all(isinstance(t, (int, float)) and 0 < t < 1 for t in thresholds)
        ):
            raise UserError(
                f"'thresholds' {given!r} is not usable",
                where=str(Path(folder or ".") / "config.json"),
                expected=f"one number in (0, 1), or a list of {len(labels)} such numbers (one per label)",
            )
        return cls(labels, [float(t) for t in thresholds])

    def predict(self, outputs: np.ndarray) -> np.ndarray:
        """[examples, labels] booleans. sigmoid(x) >= t is x >= logit(t): no exp overflow on large logits."""
        thresholds = np.asarray(self.thresholds or [DEFAULT_THRESHOLD])
        cut = np.log(thresholds / (1 - thresholds))
        return outputs >= cut

    def read(self, path: Path) -> Examples:
        from edgecompress.intake.data import LABEL_COLUMNS, TEXT_COLUMNS, _pick

        rows = read_rows(path, expected=EXPECTED)
        text_col, label_col = _pick(rows.columns, TEXT_COLUMNS), _pick(rows.columns, LABEL_COLUMNS)
        if text_col is None:
            raise UserError(
                f"no text column among {rows.columns}",
                where=str(path),
                expected=f"one of {', '.join(TEXT_COLUMNS)}",
                hint=wrong_format_hint(rows.columns),
            )
        texts = [str(row.get(text_col) or "") for _, row in rows.numbered]
        gold = None
        if label_col is not None and self.labels is not None:
            gold = np.array([self._label_row(row.get(label_col), f"{path}:{n}") for n, row in rows.numbered])
        return Examples(Path(path), texts, gold=gold)

    def _label_row(self, value, where: str) -> np.ndarray:
        """A row's labels as a multi-hot vector over the model's labels."""
        if isinstance(value, list):
            names = [str(v).strip() for v in value]
        else:
            text = "" if value is None else str(value)
            separator = next((s for s in SEPARATORS if s in text), SEPARATORS[0])
            names = [part.strip() for part in text.split(separator) if part.strip()]
        labels = self.labels or []
        unknown = [name for name in names if name not in labels]
        if unknown:
            raise UserError(
                f"labels {unknown[:5]} are not known to the model",
                where=where,
                expected=f"names among {self.labels} (from config.json id2label), separated by '|'",
            )
        return np.isin(labels, names)

    def agreement_id(self) -> str:
        return f"{super().agreement_id()}, thresholds {self.thresholds or [DEFAULT_THRESHOLD]}"

    def agrees(self, a: np.ndarray, b: np.ndarray, feeds: Feeds) -> np.ndarray:
        return (self.predict(a) == self.predict(b)).all(axis=-1)

    def score(self, outputs: np.ndarray, examples: Examples, encoded: Encoded) -> Score | None:
        if examples.gold is None:
            return None
        predicted, gold = self.predict(outputs), examples.gold.astype(bool)
        tp, fp, fn = (predicted & gold).sum(0), (predicted & ~gold).sum(0), (~predicted & gold).sum(0)
        figures = {
            "micro_f1": f1(tp.sum(), fp.sum(), fn.sum()),
            "macro_f1": float(np.mean([f1(*counts) for counts in zip(tp, fp, fn)])),
            "exact_match": float(np.mean((predicted == gold).all(-1))),
        }
        method = (
            "micro F1 over every (text, label) decision; macro F1: the mean of per-label F1 (0 for a label "
            "neither predicted nor gold, as scikit-learn's zero_division=0); exact match: the whole label set"
        )
        return Score(figures, "micro_f1", method, len(examples))

    def decoding(self) -> dict[str, Any]:
        return {
            "predict": "label i (labels.txt, line i) is present when sigmoid(logits[..., i]) >= thresholds[i]",
            "thresholds": self.thresholds,
        }
