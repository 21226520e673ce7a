"""The Task seam: what a model is for, as one object (issue 15).

A task says which transformers head it runs on (`head`), its one model output (name and axes), how a
prediction is made from that output, how predictions are scored against gold, what "agreement" between two
models' outputs means (verification parity), which data format it reads and how that data becomes feeds,
and what the manifest tells the app. Task files register themselves with `@register_task`; this module is
the leaf they import, so adding a task is one file.

Every artifact carries exactly one output: the runners and the TFLite writer take one `output_name`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgecompress.errors import InternalError, UserError

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class Output:
    """The model output an app reads, e.g. Output("logits", ("batch", "labels"))."""

    name: str
    axes: tuple[str, ...]


@dataclass
class Examples:
    """Rows of a data file as a task reads them.

    `texts` is what a tokenizer reads of each row, one string per model input row (the vocabulary trim keeps
    their tokens; classifiers' passes train on them); `items` the structured rows (word lists with tags, SQuAD
    questions, text pairs) when the task has more than a text; `gold` what predictions are scored against.
    """

    path: Path
    texts: list[str]
    gold: Any = None
    items: list[Any] | None = None
    labels: list[str] | None = None  # raw label strings, single-label classification only (passes train on them)

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class Encoded:
    """Examples tokenized as the app does: the feeds, and how model rows map back to the examples."""

    feeds: Feeds
    alignment: Any = None  # per task: word ids of each token, context offsets, pair halves


@dataclass
class Score:
    """The figures of one run against gold: {name: value}, which one is the headline, and how they were made."""

    figures: dict[str, float]
    headline: str
    method: str
    examples: int


class Task:
    """One task. Subclasses set the class attributes and implement the methods below."""

    name: ClassVar[str] = ""
    head: ClassVar[str | None] = None  # transformers class suffix, e.g. "ForTokenClassification"; None: base model
    output_name: ClassVar[str] = ""
    output_axes: ClassVar[tuple[str, ...]] = ()
    data_format: ClassVar[str] = ""  # one line, for errors and the README
    agreement_meaning: ClassVar[str] = ""  # what agreement between two models' outputs means here
    agreement_unit: ClassVar[str] = "texts"  # what one agreement counts: a text, a real token, a question
    # Parity of lossy artifacts: by the share of examples that agree ("agreement"), or by cosine ("cosine").
    parity_measure: ClassVar[str] = "agreement"
    per_token: ClassVar[bool] = False  # the output has a sequence axis: only real tokens are compared

    labels: list[str] | None = None

    @property
    def output(self) -> Output:
        return Output(self.output_name, self.output_axes)

    @classmethod
    def claims(cls, config: dict[str, Any]) -> bool:
        """Whether a checkpoint whose head is `cls.head` is this task (e.g. problem_type), from config.json."""
        return True

    @classmethod
    def from_config(cls, config: dict[str, Any], folder: Path | None) -> Task:
        raise NotImplementedError

    def reference_output(self, model_output, attention_mask):
        """The one output tensor, from the transformers model's output."""
        return model_output.logits

    def read(self, path: Path) -> Examples:
        raise NotImplementedError

    def unlabelled(self, texts: list[str], source: str) -> Examples:
        """Examples made of plain texts without gold (the built-in sentences when there is no --data, the tuning
        texts): parity and tuning only, no scores. `source` names where the texts came from."""
        return Examples(Path(source), list(texts))

    def encode(self, tokenizer, examples: Examples, *, seq_len: int, input_names: tuple[str, ...]) -> Encoded:
        from edgecompress.intake.data import tokenize

        return Encoded(tokenize(tokenizer, examples.texts, seq_len=seq_len, input_names=input_names))

    def token_counts(self, tokenizer, examples: Examples) -> np.ndarray:
        """Each model row's length in tokens before truncation, special tokens included."""
        from edgecompress.intake.data import token_counts

        return token_counts(tokenizer, examples.texts)

    def agrees(self, a: np.ndarray, b: np.ndarray, feeds: Feeds) -> np.ndarray:
        """Per unit (example, or real token), whether two models' outputs agree."""
        raise NotImplementedError

    def agreement_id(self) -> str:
        """Everything that decides `agrees`, as text: the sensitivity cache keeps trials judged by it, so a
        change here must change this (subclasses with settings, such as thresholds, add them)."""
        return f"{self.name}: {self.agreement_meaning}"

    def agreement(self, a: np.ndarray, b: np.ndarray, feeds: Feeds) -> float:
        agrees = self.agrees(a, b, feeds)
        return float(np.mean(agrees)) if agrees.size else 1.0

    def score(self, outputs: np.ndarray, examples: Examples, encoded: Encoded) -> Score | None:
        """Figures against gold; None when the examples have no gold."""
        raise NotImplementedError

    def decoding(self) -> dict[str, Any]:
        """What the manifest tells the app to do with the output."""
        raise NotImplementedError

    def tokenizer_notes(self) -> dict[str, Any]:
        """Tokenizer settings this task adds to the manifest (pairs, pre-split words)."""
        return {"token_type_ids": "zeros"}

    def real_values(self, outputs: np.ndarray, feeds: Feeds) -> np.ndarray:
        """The values parity compares: every value, or for a per-token output only those of real tokens."""
        if not self.per_token:
            return outputs
        mask = feeds["attention_mask"][:, : outputs.shape[1]].astype(bool)
        return outputs[mask]


_TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task known under `cls.name` (checkpoint detection, --task choices)."""
    if not cls.name or cls.name in _TASKS:
        raise InternalError(f"task {cls.__name__} needs a unique name, got {cls.name!r}")
    if not cls.output_name or not cls.output_axes:
        raise InternalError(f"task {cls.__name__} must name its output and its axes")
    _TASKS[cls.name] = cls
    return cls


def registered() -> dict[str, type[Task]]:
    return _TASKS


@dataclass
class Rows:
    """Rows of a delimited or JSONL file, with the line number each ends on."""

    path: Path
    numbered: list[tuple[int, dict]] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return list(self.numbered[0][1].keys()) if self.numbered else []


def read_rows(path: Path, *, expected: str) -> Rows:
    """A CSV/TSV/JSONL file's rows (the format by suffix); one clear error for a missing or empty file."""
    from edgecompress.intake.data import FORMATS, _check_encoding, _read_delimited, _read_jsonl

    path = Path(path)
    if not path.is_file():
        raise UserError("data file does not exist", where=str(path), expected=expected)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"unknown data format '{path.suffix}'", where=str(path), expected=expected)
    _check_encoding(path)
    numbered = _read_jsonl(path) if fmt == "jsonl" else _read_delimited(path, "\t" if fmt == "tsv" else ",")
    if not numbered:
        raise UserError("data file has no rows", where=str(path), expected=expected)
    return Rows(path, numbered)


def wrong_format_hint(columns: list[str]) -> str | None:
    """When the columns are another task's data, say whose: the commonest mix-up (NER rows for a classifier)."""
    lowered = {c.strip().lower() for c in columns if c}
    if {"tokens", "tags"} <= lowered or {"tokens", "ner_tags"} <= lowered:
        return "these are token-classification rows (tokens, tags); the model is not a token classifier"
    if {"question", "context"} <= lowered:
        return "these are question-answering rows; the model is not a question-answering model"
    if {"text_a", "text_b"} <= lowered:
        return "these are sentence pairs (text_a, text_b, score) for an embedding model"
    return None
