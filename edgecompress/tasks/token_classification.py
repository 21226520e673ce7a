"""Token classification (NER, PII): logits [batch, seq, labels], one tag per word.

Data: CoNLL columns (the word first, its tag last, a blank line between sentences; -DOCSTART- lines skipped)
or JSONL {"tokens": [...], "tags": [...]}. Words are tokenized with is_split_into_words=True; a word's tag is
the prediction at its first sub-token (later sub-tokens and special tokens are not read). Words cut off by
truncation are predicted "O", as the app that truncates would. Scored at the entity level with seqeval's
definition (tasks/_entities.py); two models agree token by token on the real (unpadded) tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import UserError
from edgecompress.tasks._entities import entity_scores
from edgecompress.tasks.base import Encoded, Examples, Feeds, Score, Task, register_task
from edgecompress.tasks.sequence_classification import known_labels

EXPECTED = (
    "CoNLL columns (word ... tag per line, a blank line between sentences) or JSONL "
    '{"tokens": [...], "tags": [...]} per line'
)
OUTSIDE = "O"


@register_task
class TokenClassification(Task):
    name = "token-classification"
    head = "ForTokenClassification"
    output_name = "logits"
    output_axes = ("batch", "sequence", "labels")
    data_format = EXPECTED
    agreement_meaning = "same predicted tag (argmax) at each real token"
    agreement_unit = "tokens"
    per_token = True

    def __init__(self, labels: list[str] | None):
        self.labels = labels

    @classmethod
    def from_config(cls, config: dict[str, Any], folder: Path | None) -> Task:
        return cls(known_labels(config))

    def read(self, path: Path) -> Examples:
        from edgecompress.intake.data import _check_encoding

        path = Path(path)
        if not path.is_file():
            raise UserError("data file does not exist", where=str(path), expected=EXPECTED)
        _check_encoding(path)
        sentences = _read_jsonl(path) if path.suffix.lower() == ".jsonl" else _read_conll(path)
        if not sentences:
            raise UserError("data file has no sentences", where=str(path), expected=EXPECTED)
        words = [tokens for tokens, _, _ in sentences]
        gold = None
        if self.labels is not None and all(tags is not None for _, tags, _ in sentences):
            gold = [self._tag_names(tags or [], where) for _, tags, where in sentences]
        return Examples(path, [" ".join(w) for w in words], gold=gold, items=words)

    def unlabelled(self, texts: list[str], source: str) -> Examples:
        words = [text.split() for text in texts]
        return Examples(Path(source), list(texts), items=words)

    def _tag_names(self, tags: list, where: str) -> list[str]:
        """Tags as the model's label names (indices into id2label are accepted, as HF datasets store them)."""
        assert self.labels is not None  # only read against a model whose labels are known
        names = [self.labels[t] if isinstance(t, int) and 0 <= t < len(self.labels) else str(t) for t in tags]
        unknown = sorted(set(names) - set(self.labels))
        if unknown:
            raise UserError(
                f"tags {unknown[:5]} are not known to the model",
                where=where,
                expected=f"tags among {self.labels} (from config.json id2label)",
            )
        return names

    def encode(self, tokenizer, examples: Examples, *, seq_len: int, input_names: tuple[str, ...]) -> Encoded:
        words = examples.items if examples.items is not None else [t.split() for t in examples.texts]
        encoded = tokenizer(words, is_split_into_words=True, padding="max_length", truncation=True, max_length=seq_len)
        feeds = _feeds(encoded, input_names)
        first = np.full(feeds["input_ids"].shape, -1, dtype=np.int64)
        for row in range(len(words)):
            seen = set()
            for position, word in enumerate(encoded.word_ids(row)):
                if word is not None and word not in seen:
                    first[row, position] = word
                    seen.add(word)
        return Encoded(feeds, alignment=first)

    def token_counts(self, tokenizer, examples: Examples) -> np.ndarray:
        words = examples.items if examples.items is not None else [t.split() for t in examples.texts]
        encoded = tokenizer(words, is_split_into_words=True, truncation=False, padding=False, verbose=False)
        return np.array([len(ids) for ids in encoded["input_ids"]], dtype=np.int64)

    def predict(self, outputs: np.ndarray, examples: Examples, encoded: Encoded) -> list[list[str]]:
        """Each word's tag: the argmax at its first sub-token; "O" for words truncation cut off."""
        words, labels = examples.items or [], self.labels or []
        best = outputs.argmax(-1)
        tags = []
        for row, sentence in enumerate(words):
            row_tags = [OUTSIDE] * len(sentence)
            for position in np.flatnonzero(encoded.alignment[row] >= 0):
                row_tags[encoded.alignment[row, position]] = labels[best[row, position]]
            tags.append(row_tags)
        return tags

    def agrees(self, a: np.ndarray, b: np.ndarray, feeds: Feeds) -> np.ndarray:
        return self.real_values(a, feeds).argmax(-1) == self.real_values(b, feeds).argmax(-1)

    def score(self, outputs: np.ndarray, examples: Examples, encoded: Encoded) -> Score | None:
        if examples.gold is None:
            return None
        predicted = self.predict(outputs, examples, encoded)
        figures = entity_scores(examples.gold, predicted)
        pairs = [(g, p) for gs, ps in zip(examples.gold, predicted) for g, p in zip(gs, ps)]
        figures["word_accuracy"] = float(np.mean([g == p for g, p in pairs])) if pairs else 0.0
        method = (
            "entity-level micro precision/recall/F1 with seqeval's definition (IOB2 chunks, exact type and span), "
            "each word's tag read at its first sub-token; word accuracy: share of words with the gold tag"
        )
        return Score(figures, "entity_f1", method, len(examples))

    def decoding(self) -> dict[str, Any]:
        return {
            "predict": "argmax over the last axis of logits at each token; labels[i] (labels.txt) names index i",
            "words": "tokenize the pre-split words (is_split_into_words); a word's tag is the prediction at its "
            "first sub-token; later sub-tokens, [CLS], [SEP] and padding are ignored",
            "alignment": "first sub-token",
            "scheme": "IOB2 (B-TYPE begins an entity, I-TYPE continues it, O is outside)",
        }

    def tokenizer_notes(self) -> dict[str, Any]:
        return {"token_type_ids": "zeros", "is_split_into_words": True}


def _feeds(encoded, input_names: tuple[str, ...]) -> Feeds:
    feeds = {}
    for name in input_names:
        values = encoded.get(name)
        if values is None and name == "token_type_ids":
            values = np.zeros_like(np.asarray(encoded["input_ids"]))
        feeds[name] = np.asarray(values, dtype=np.int64)
    return feeds


def _read_conll(path: Path) -> list[tuple[list[str], list | None, str]]:
    """(words, tags, where) per sentence of a CoNLL file: the word in the first column, the tag in the last."""
    sentences: list[tuple[list[str], list | None, str]] = []
    words: list[str] = []
    tags: list[Any] = []
    start = 0
    with path.open(encoding="utf-8-sig", errors="strict") as handle:
        try:
            lines = handle.read().splitlines()
        except UnicodeDecodeError as exc:
            raise UserError(f"not UTF-8 text ({exc.reason})", where=str(path), expected="UTF-8 text") from None
    for number, line in enumerate([*lines, ""], start=1):
        columns = line.split()
        if not columns or columns[0] == "-DOCSTART-":
            if words:
                sentences.append((words, tags, f"{path}:{start}"))
            words, tags = [], []
            continue
        if len(columns) < 2:
            raise UserError(
                f"line has one column ({line.strip()[:40]!r})",
                where=f"{path}:{number}",
                expected=EXPECTED,
                hint="CSV rows of text and label are sequence-classification data; this model tags tokens",
            )
        start = start if words else number
        words.append(columns[0])
        tags.append(columns[-1])
    return sentences


def _read_jsonl(path: Path) -> list[tuple[list[str], list | None, str]]:
    from edgecompress.intake.data import _read_jsonl as read_objects

    sentences = []
    for number, row in read_objects(path):
        where = f"{path}:{number}"
        tokens = row.get("tokens")
        tags = row.get("tags", row.get("ner_tags"))
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            keys = ", ".join(sorted(row)) or "none"
            raise UserError(
                f"row has no list of word strings under 'tokens' (keys: {keys})",
                where=where,
                expected=EXPECTED,
                hint="rows with a text and a label are sequence-classification data; this model tags tokens",
            )
        if tags is not None and (not isinstance(tags, list) or len(tags) != len(tokens)):
            raise UserError(
                f"'tags' has {len(tags) if isinstance(tags, list) else json.dumps(tags)[:20]} entries for "
                f"{len(tokens)} tokens",
                where=where,
                expected="one tag per token",
            )
        sentences.append((tokens, tags, where))
    return sentences
