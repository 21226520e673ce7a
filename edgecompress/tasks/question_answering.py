"""Extractive question answering: span_logits [batch, seq, 2], start logits in [..., 0] and end logits in
[..., 1] (the reference module stacks transformers' start_logits and end_logits: one output per artifact).

Data: SQuAD JSON, v1.1 layout (data / paragraphs / context, qas / question, answers). Question and context are
tokenized as a pair with truncation="only_second". The answer is the span (start <= end, at most
`max_answer_length` tokens, both in the context) with the largest start + end logit, mapped back to the context
by character offsets. Scored by exact match and F1 as the SQuAD v1.1 script defines them; two models agree on
a question when they decode the same span.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import UserError
from edgecompress.tasks.base import Encoded, Examples, Feeds, Score, Task, register_task

EXPECTED = (
    'SQuAD v1.1 JSON: {"data": [{"paragraphs": [{"context": ..., "qas": [{"question": ..., "answers": [...]}]}]}]}'
)
DEFAULT_MAX_ANSWER_LENGTH = 30
# The question asked of unlabelled contexts (the built-in sentences, the tuning texts). Short, so that it fits
# with room for context at any length a profile uses: 8-10 tokens with the tiny tests' character-level
# vocabularies at 16 (where "what is this about?" took up to 17 and the export could not encode its tuning texts).
BUILTIN_QUESTION = "what is it?"


@register_task
class QuestionAnswering(Task):
    name = "question-answering"
    head = "ForQuestionAnswering"
    output_name = "span_logits"
    output_axes = ("batch", "sequence", "2")
    data_format = EXPECTED
    agreement_meaning = "same decoded answer span"
    agreement_unit = "questions"
    per_token = True

    def __init__(self, max_answer_length: int = DEFAULT_MAX_ANSWER_LENGTH):
        self.labels = None
        self.max_answer_length = max_answer_length

    @classmethod
    def from_config(cls, config: dict[str, Any], folder: Path | None) -> Task:
        return cls(int(config.get("max_answer_length", DEFAULT_MAX_ANSWER_LENGTH)))

    def reference_output(self, model_output, attention_mask):
        import torch

        return torch.stack([model_output.start_logits, model_output.end_logits], dim=-1)

    def read(self, path: Path) -> Examples:
        path = Path(path)
        if not path.is_file():
            raise UserError("data file does not exist", where=str(path), expected=EXPECTED)
        try:
            document = json.loads(path.read_text(encoding="utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"not SQuAD JSON ({type(exc).__name__})", where=str(path), expected=EXPECTED) from None
        items = list(_questions(document, path))
        if not items:
            raise UserError("the file has no questions", where=str(path), expected=EXPECTED)
        gold = [answers for _, _, answers in items]
        return Examples(path, [f"{q} {c}" for q, c, _ in items], gold=gold, items=[(q, c) for q, c, _ in items])

    def unlabelled(self, texts: list[str], source: str) -> Examples:
        """Each text as a context for one generic question: parity and tuning only, nothing to score."""
        items = [(BUILTIN_QUESTION, text) for text in texts]
        return Examples(Path(source), [f"{q} {c}" for q, c in items], items=items)

    def encode(self, tokenizer, examples: Examples, *, seq_len: int, input_names: tuple[str, ...]) -> Encoded:
        from edgecompress.tasks.token_classification import _feeds

        questions, contexts = zip(*examples.items) if examples.items else ((), ())
        try:
            encoded = tokenizer(
                list(questions),
                list(contexts),
                truncation="only_second",
                padding="max_length",
                max_length=seq_len,
                return_offsets_mapping=True,
            )
        except Exception as exc:  # the tokenizer refuses a question that leaves no room for its context
            raise UserError(
                f"cannot fit question and context into {seq_len} tokens ({' '.join(str(exc).split())[:120]})",
                where=str(examples.path),
                expected=f"questions far shorter than {seq_len} tokens",
            ) from None
        context = np.array(
            [[sid == 1 for sid in encoded.sequence_ids(row)] for row in range(len(questions))], dtype=bool
        ).reshape(len(questions), seq_len)
        offsets = np.array(encoded["offset_mapping"], dtype=np.int64).reshape(len(questions), seq_len, 2)
        return Encoded(_feeds(encoded, input_names), alignment=(context, offsets))

    def token_counts(self, tokenizer, examples: Examples) -> np.ndarray:
        questions, contexts = zip(*examples.items) if examples.items else ((), ())
        encoded = tokenizer(list(questions), list(contexts), truncation=False, padding=False, verbose=False)
        return np.array([len(ids) for ids in encoded["input_ids"]], dtype=np.int64)

    def spans(self, outputs: np.ndarray, context: np.ndarray) -> np.ndarray:
        """[examples, 2] best (start, end) token positions; (-1, -1) where no context token is left."""
        return np.array([best_span(row, mask, self.max_answer_length) for row, mask in zip(outputs, context)])

    def agreement_id(self) -> str:
        return f"{super().agreement_id()}, max_answer_length {self.max_answer_length}"

    def agrees(self, a: np.ndarray, b: np.ndarray, feeds: Feeds) -> np.ndarray:
        context = _context_from_feeds(feeds, a.shape[1])
        return (self.spans(a, context) == self.spans(b, context)).all(-1)

    def score(self, outputs: np.ndarray, examples: Examples, encoded: Encoded) -> Score | None:
        if examples.gold is None:
            return None
        context, offsets = encoded.alignment
        items = examples.items or []
        answers = [
            _answer_text(items[row][1], offsets[row], span)
            for row, span in enumerate(self.spans(outputs, context[:, : outputs.shape[1]]))
        ]
        em = [max(exact_match(a, g) for g in gold) for a, gold in zip(answers, examples.gold)]
        f1 = [max(f1_score(a, g) for g in gold) for a, gold in zip(answers, examples.gold)]
        method = (
            f"SQuAD v1.1 exact match and F1 (lowercase, punctuation, articles and extra whitespace removed; best "
            f"over the gold answers), spans of at most {self.max_answer_length} context tokens"
        )
        return Score({"f1": float(np.mean(f1)), "exact_match": float(np.mean(em))}, "f1", method, len(examples))

    def decoding(self) -> dict[str, Any]:
        return {
            "start_logits": "span_logits[..., 0]",
            "end_logits": "span_logits[..., 1]",
            "predict": "the (start, end) with start <= end, end - start + 1 <= max_answer_length, both context "
            "tokens (sequence id 1: token_type_ids 1, before the last [SEP]), that maximizes start_logits[start] + "
            "end_logits[end]; the answer is the context's characters from offset[start][0] to offset[end][1]",
            "max_answer_length": self.max_answer_length,
        }

    def tokenizer_notes(self) -> dict[str, Any]:
        return {
            "pair": "question first, context second: [CLS] question [SEP] context [SEP]",
            "truncation": "only_second (the context is cut, never the question)",
            "token_type_ids": "0 for [CLS] question [SEP], 1 for context [SEP]",
            "offsets": "keep each token's character offsets into the context to cut the answer out",
        }


def best_span(logits: np.ndarray, context: np.ndarray, max_length: int) -> tuple[int, int]:
    """The (start, end) over context tokens, start <= end < start + max_length, maximizing start + end logit;
    the first such span on ties. (-1, -1) when the row has no context token."""
    positions = np.flatnonzero(context)
    if not len(positions):
        return (-1, -1)
    start, end = logits[positions, 0].astype(np.float64), logits[positions, 1].astype(np.float64)
    scores = start[:, None] + end[None, :]
    gap = positions[None, :] - positions[:, None]  # end position - start position
    scores[(gap < 0) | (gap >= max_length)] = -np.inf
    i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return (int(positions[i]), int(positions[j]))


def _context_from_feeds(feeds: Feeds, length: int) -> np.ndarray:
    """Context tokens as the feeds show them: token_type_ids 1 on a real token (parity decodes both models with
    the same rule; the final [SEP] it includes is a candidate for both)."""
    real = feeds["attention_mask"][:, :length].astype(bool)
    if "token_type_ids" in feeds:
        return real & (feeds["token_type_ids"][:, :length] == 1)
    return real


def _answer_text(context: str, offsets: np.ndarray, span) -> str:
    start, end = span
    return "" if start < 0 else context[offsets[start][0] : offsets[end][1]]


def _questions(document, path: Path):
    """(question, context, answer texts) of every question; one clear error for a question without answers."""
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise UserError('no "data" list at the top level', where=str(path), expected=EXPECTED)
    for a, article in enumerate(document["data"]):
        for p, paragraph in enumerate(article.get("paragraphs", []) if isinstance(article, dict) else []):
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            if not isinstance(context, str):
                raise UserError("paragraph has no context text", where=f"{path}: data[{a}].paragraphs[{p}]")
            for q, qa in enumerate(paragraph.get("qas", [])):
                where = f"{path}: data[{a}].paragraphs[{p}].qas[{q}]"
                question = qa.get("question") if isinstance(qa, dict) else None
                answers = [x.get("text") for x in qa.get("answers") or [] if isinstance(x, dict)] if question else []
                if not isinstance(question, str) or not answers or not all(isinstance(t, str) for t in answers):
                    raise UserError(
                        "question without answers" if isinstance(question, str) else "entry has no question",
                        where=where,
                        expected='a "question" and at least one {"text": ...} in "answers" (SQuAD v1.1)',
                        hint="unanswerable questions (SQuAD v2) are not scored",
                    )
                yield question, context, answers


def normalize_answer(text: str) -> str:
    """The SQuAD v1.1 evaluation script's normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token-overlap F1 of the normalised answers (SQuAD v1.1's f1_score)."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)
