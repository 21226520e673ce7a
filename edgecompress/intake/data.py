"""Labelled text datasets (CSV, TSV, JSONL) and their tokenization for the model and the artifacts."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from edgecompress.errors import UserError

TEXT_COLUMNS = ("text", "sentence", "review", "content")
LABEL_COLUMNS = ("label", "labels", "category", "class")
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}


@dataclass
class TextDataset:
    path: Path
    texts: list[str]
    labels: list[str] | None  # None for unlabelled data (calibration, embedding models)

    def __len__(self) -> int:
        return len(self.texts)


def load_dataset(path: Path, *, require_labels: bool) -> TextDataset:
    """Read rows with a text column and (when required) a label column; one clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            "data file does not exist", where=str(path), expected=f"a {', '.join(FORMATS)} file with a text column"
        )
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(
            f"unknown data format '{path.suffix}'",
            where=str(path),
            expected=f"one of {', '.join(FORMATS)}",
            hint="CoNLL files are token-classification data and SQuAD .json question-answering data"
            if path.suffix.lower() in (".conll", ".txt", ".json", ".bio", ".iob")
            else None,
        )
    _check_encoding(path)
    numbered = _read_jsonl(path) if fmt == "jsonl" else _read_delimited(path, "\t" if fmt == "tsv" else ",")
    if not numbered:
        raise UserError(
            "data file has no rows",
            where=str(path),
            expected="one JSON object per line" if fmt == "jsonl" else "a header line and at least one row",
        )
    rows = [row for _, row in numbered]
    columns = list(rows[0].keys())
    text_col = _pick(columns, TEXT_COLUMNS)
    if text_col is None and fmt != "jsonl" and len(columns) == 1:
        separator = next((sep for sep in (";", "\t", ",", "|") if sep in (columns[0] or "")), None)
        if separator is not None:
            raise UserError(
                f"the header {columns[0]!r} is one column: the columns seem separated by {separator!r}",
                where=str(path),
                expected=f"{'tab' if fmt == 'tsv' else 'comma'}-separated columns for a {path.suffix} file",
                hint="re-save with commas as .csv (or tabs as .tsv)",
            )
    if text_col is None:
        from edgecompress.tasks.base import wrong_format_hint

        raise UserError(
            f"no text column among {columns}",
            where=str(path),
            expected=f"one of {', '.join(TEXT_COLUMNS)}",
            hint=wrong_format_hint(columns),
        )
    label_col = _pick(columns, LABEL_COLUMNS)
    if require_labels and label_col is None:
        raise UserError(
            f"no label column among {columns}", where=str(path), expected=f"one of {', '.join(LABEL_COLUMNS)}"
        )
    texts = [str(row.get(text_col) or "") for row in rows]
    labels = None
    if label_col:
        labels = ["" if row.get(label_col) is None else str(row.get(label_col)).strip() for row in rows]
        blank = next((number for (number, _), label in zip(numbered, labels) if not label), None)
        if require_labels and blank is not None:
            raise UserError(
                f"row has no value in the '{label_col}' column",
                where=f"{path}:{blank}",
                expected="a label on every row",
            )
    return TextDataset(path=path, texts=texts, labels=labels)


_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def _check_encoding(path: Path) -> None:
    """UTF-16 (Excel's "Unicode text", PowerShell's default) is named as such, not as a decoding error."""
    with path.open("rb") as handle:
        head = handle.read(4)
    if head.startswith(_UTF16_BOMS) or (len(head) >= 2 and (head[0] == 0) != (head[1] == 0)):
        raise UserError(
            "the file is UTF-16 text",
            where=str(path),
            expected="UTF-8 text",
            hint="re-save it as UTF-8 (e.g. Excel: 'CSV UTF-8'; iconv -f UTF-16 -t UTF-8)",
        )


def _pick(columns: list[str], candidates: tuple[str, ...]) -> str | None:
    lowered = {c.strip().lower(): c for c in columns if c}
    return next((lowered[c] for c in candidates if c in lowered), None)


def _read_delimited(path: Path, delimiter: str) -> list[tuple[int, dict]]:
    """Rows with the line number each ends on; a UTF-8 byte-order mark (Excel's "CSV UTF-8") is skipped."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            return [(reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot parse file ({exc})", where=str(path), expected="UTF-8 text") from None


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(
                    f"not UTF-8 text ({exc.reason} at byte {exc.start})",
                    where=f"{path}:{number}",
                    expected="UTF-8 text",
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"invalid JSON ({exc.msg})", where=f"{path}:{number}") from None
            if not isinstance(row, dict):
                raise UserError("each line must be a JSON object", where=f"{path}:{number}")
            rows.append((number, row))
    return rows


def label_ids(dataset: TextDataset, model_labels: list[str]) -> np.ndarray:
    """Map dataset labels onto the model's label order; labels the model does not know are an error.

    Integer labels ("0", "1") are accepted as indices when the model's names are not in the data.
    """
    assert dataset.labels is not None
    index = {name: i for i, name in enumerate(model_labels)}
    unknown = sorted(set(dataset.labels) - set(index))
    if unknown and all(label.isdigit() for label in dataset.labels):
        out_of_range = sorted({int(label) for label in dataset.labels if int(label) >= len(model_labels)})
        if out_of_range:
            raise UserError(
                f"integer labels {out_of_range[:5]} are out of range for the model's {len(model_labels)} labels",
                where=str(dataset.path),
                expected=f"0..{len(model_labels) - 1} or names among {model_labels} (from config.json id2label)",
            )
        return np.array([int(label) for label in dataset.labels], dtype=np.int64)
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise UserError(
            f"labels {unknown[:5]}{more} are not known to the model",
            where=str(dataset.path),
            expected=f"labels among {model_labels} (from config.json id2label)",
        )
    return np.array([index[label] for label in dataset.labels], dtype=np.int64)


def tokenize(tokenizer, texts: list[str], *, seq_len: int, input_names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Tokenize exactly as the shipped manifest tells the app to: pad and truncate to `seq_len`."""
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
    feeds = {}
    for name in input_names:
        values = encoded.get(name)
        if values is None and name == "token_type_ids":
            values = np.zeros_like(encoded["input_ids"])
        feeds[name] = np.asarray(values, dtype=np.int64)
    return feeds


def token_counts(tokenizer, texts: list[str]) -> np.ndarray:
    """Each text's length in tokens, special tokens included, before any truncation."""
    encoded = tokenizer(texts, truncation=False, padding=False, add_special_tokens=True, verbose=False)
    return np.array([len(ids) for ids in encoded["input_ids"]], dtype=np.int64)


def bucket_of(lengths: np.ndarray, buckets: tuple[int, ...]) -> np.ndarray:
    """The bucket each text runs at: the smallest bucket >= its token count (longer texts: the longest,
    truncated to it). This is the rule the manifest gives the app."""
    index = np.searchsorted(np.asarray(buckets), np.minimum(lengths, buckets[-1]), side="left")
    return np.asarray(buckets)[index]


@dataclass(frozen=True)
class TextLengths:
    """How the texts of --data fall into the profile's length buckets (one bucket: seq_len)."""

    buckets: tuple[int, ...]
    tokens: np.ndarray  # each text's token count before truncation, special tokens included

    def per_bucket(self) -> dict[int, int]:
        which = bucket_of(self.tokens, self.buckets)
        return {int(b): int(np.sum(which == b)) for b in self.buckets}

    def at_own_length(self, step: int = 1) -> TextLengths:
        """The lengths a file with a free sequence axis runs these texts at: each text at its own token count
        (capped at the longest bucket), rounded up to a multiple of `step` (1: exactly its own; timing takes a
        coarser step so that it runs one length per step rather than every length)."""
        longest = self.buckets[-1]
        rounded = np.minimum(-(-np.minimum(self.tokens, longest) // step) * step, longest)
        return TextLengths(tuple(sorted({int(n) for n in rounded} | {longest})), self.tokens)

    @property
    def truncated(self) -> int:
        """Texts longer than the longest bucket: the app truncates them, and so did every figure here."""
        return int(np.sum(self.tokens > self.buckets[-1]))

    def summary(self) -> dict:
        tokens = self.tokens
        return {
            "tokens_p50": int(np.percentile(tokens, 50)),
            "tokens_p90": int(np.percentile(tokens, 90)),
            "tokens_max": int(tokens.max()),
            "longest_input": self.buckets[-1],
            "truncated": self.truncated,
            "truncated_share": self.truncated / len(tokens),
            "buckets": list(self.buckets),
            "texts_per_bucket": {str(b): n for b, n in self.per_bucket().items()},
        }


class EvalData(NamedTuple):
    """What the data stage hands on: the eval examples as the model's task reads them, tokenized at the
    profile's length as the model's tokenizer as given does, and how model rows map back to the examples."""

    dataset: Any  # a tasks.Examples: path, texts, gold (None without labels), structured items
    feeds: dict[str, np.ndarray]
    alignment: Any = None  # per task: first sub-token of each word, context offsets

    @property
    def gold(self) -> Any:
        return self.dataset.gold

    @property
    def encoded(self):
        from edgecompress.tasks.base import Encoded

        return Encoded(self.feeds, self.alignment)


# What a dataset of the built-in sentences (intake/builtin_corpus.py) is called in reports.
BUILTIN_SOURCE = "<built-in sentences>"


def prepare_eval_data(bundle, data_path: Path | None, seq_len: int) -> EvalData:
    """Load `--data` (or the built-in sentences) in the format of the model's task, check its gold against the
    model, tokenize."""
    from edgecompress.intake.builtin_corpus import BUILTIN_JUDGING

    max_length = bundle.tokenizer_settings.max_length
    if seq_len > max_length:
        raise UserError(
            f"device seq_len {seq_len} exceeds the model's maximum length {max_length}",
            hint="pick a device profile with a smaller seq_len",
        )
    task = bundle.task
    examples = task.unlabelled(list(BUILTIN_JUDGING), BUILTIN_SOURCE) if data_path is None else task.read(data_path)
    encoded = task.encode(bundle.tokenizer, examples, seq_len=seq_len, input_names=bundle.input_names)
    return EvalData(examples, encoded.feeds, encoded.alignment)


def load_train_data(bundle, path: Path | None) -> TextDataset | None:
    """`--train-data`: texts (with labels, for a single-label classifier) for passes that train or score by
    gradient; read in the task's format; None when not given."""
    if path is None:
        return None
    examples = bundle.task.read(path)
    return TextDataset(path=examples.path, texts=examples.texts, labels=examples.labels)
