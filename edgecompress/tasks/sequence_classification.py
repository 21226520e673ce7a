"""Single-label sequence classification: logits [batch, labels], the prediction is the argmax."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.tasks.base import Encoded, Examples, Feeds, Score, Task, register_task


def known_labels(config: dict[str, Any]) -> list[str] | None:
    """The label names of a config.json; None without one (an .onnx file given --task): nothing to score."""
    return label_names(config) if config else None


def label_names(config: dict[str, Any]) -> list[str]:
    id2label = config.get("id2label") or {}
    count = int(config.get("num_labels", len(id2label) or 2))
    return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(count)]


def is_multi_label(config: dict[str, Any]) -> bool:
    return config.get("problem_type") == "multi_label_classification"


def is_regression(config: dict[str, Any]) -> bool:
    """transformers trains with MSE when problem_type says so, or (unset) when there is one label."""
    return config.get("problem_type") == "regression" or (
        config.get("problem_type") is None and len(label_names(config)) == 1
    )


@register_task
class SingleLabelClassification(Task):
    name = "sequence-classification"
    head = "ForSequenceClassification"
    output_name = "logits"
    output_axes = ("batch", "labels")
    data_format = "CSV/TSV/JSONL with a text column and a label column (names from id2label, or label indices)"
    agreement_meaning = "same predicted label (argmax)"

    def __init__(self, labels: list[str] | None):
        self.labels = labels

    @classmethod
    def claims(cls, config: dict[str, Any]) -> bool:
        return not is_multi_label(config) and not is_regression(config)

    @classmethod
    def from_config(cls, config: dict[str, Any], folder: Path | None) -> Task:
        return cls(known_labels(config))

    def read(self, path: Path) -> Examples:
        from edgecompress.intake.data import label_ids, load_dataset

        dataset = load_dataset(path, require_labels=self.labels is not None)
        gold = label_ids(dataset, self.labels) if self.labels is not None and dataset.labels is not None else None
        return Examples(dataset.path, dataset.texts, gold=gold, labels=dataset.labels)

    def agrees(self, a: np.ndarray, b: np.ndarray, feeds: Feeds) -> np.ndarray:
        return a.argmax(-1) == b.argmax(-1)

    def score(self, outputs: np.ndarray, examples: Examples, encoded: Encoded) -> Score | None:
        if examples.gold is None:
            return None
        accuracy = float(np.mean(outputs.argmax(-1) == examples.gold))
        return Score({"accuracy": accuracy}, "accuracy", "share of texts whose argmax is the gold label", len(examples))

    def decoding(self) -> dict[str, Any]:
        return {
            "predict": "argmax over the last axis of logits; labels[i] (labels.txt, line i) names index i",
            "probabilities": "softmax over the last axis, if wanted",
        }
