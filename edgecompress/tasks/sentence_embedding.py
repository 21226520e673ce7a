"""Sentence embeddings: a base model (no head) pooled to sentence_embedding [batch, dim].

Pooling follows a sentence-transformers folder as its `encode()` does: `modules.json` names a Pooling module
(`1_Pooling/config.json`: CLS, mean, max and mean-sqrt-len pooling, concatenated in that library's order) and
an optional Normalize module (L2 normalisation). A folder without modules.json is mean-pooled, the pooling
sentence-transformers ships for MiniLM encoders. The pooling is part of the model so the app receives the
embedding, not per-token states. Scored, when --data has pairs (text_a, text_b, score), by Spearman's rho of
the pairs' cosine against the gold score.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import UserError
from edgecompress.tasks._stats import pearson, spearman
from edgecompress.tasks.base import Encoded, Examples, Feeds, Score, Task, read_rows, register_task, wrong_format_hint

# sentence_transformers.models.Pooling's modes, in the order its forward() concatenates them.
POOLING_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
UNSUPPORTED_MODES = ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")
KNOWN_MODULES = {"Transformer", "Pooling", "Normalize"}
MASKED_FOR_MAX = -1e9  # what sentence-transformers writes over padded tokens before max pooling
COSINE_AGREEMENT = 0.99  # two embeddings "agree" at this cosine (verify/evaluate.py's LOSSY_MIN_COSINE)
EXPECTED = "CSV/TSV/JSONL with a text column, or sentence pairs with text_a, text_b and a numeric score"


@register_task
class SentenceEmbedding(Task):
    name = "sentence-embedding"
    head = None
    output_name = "sentence_embedding"
    output_axes = ("batch", "hidden")
    data_format = EXPECTED
    agreement_meaning = f"cosine >= {COSINE_AGREEMENT} between the two embeddings"
    parity_measure = "cosine"

    def __init__(self, pooling: tuple[str, ...] = ("mean",), normalize: bool = False, source: str = "default"):
        self.labels = None
        self.pooling = pooling
        self.normalize = normalize
        self.source = source  # where the pooling was read from, for the manifest

    @classmethod
    def from_config(cls, config: dict[str, Any], folder: Path | None) -> Task:
        modules = folder / "modules.json" if folder is not None else None
        if modules is None or not modules.is_file():
            return cls()
        return _from_sentence_transformers(modules)

    def reference_output(self, model_output, attention_mask):
        import torch

        tokens = model_output.last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        pooled = []
        for mode in self.pooling:
            if mode == "cls":
                pooled.append(tokens[:, 0])
            elif mode == "max":
                pooled.append(torch.where(mask > 0, tokens, torch.full_like(tokens, MASKED_FOR_MAX)).amax(dim=1))
            else:
                summed, count = (tokens * mask).sum(dim=1), mask.sum(dim=1).clamp(min=1e-9)
                pooled.append(summed / count if mode == "mean" else summed / torch.sqrt(count))
        embedding = pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=1)
        if self.normalize:  # torch.nn.functional.normalize(p=2, eps=1e-12), written out in plain ops
            embedding = embedding / torch.sqrt((embedding * embedding).sum(dim=1, keepdim=True)).clamp(min=1e-12)
        return embedding

    def read(self, path: Path) -> Examples:
        from edgecompress.intake.data import TEXT_COLUMNS, _pick

        rows = read_rows(path, expected=EXPECTED)
        lowered = {c.strip().lower(): c for c in rows.columns if c}
        if "text_a" in lowered and "text_b" in lowered:
            return _pairs(rows, lowered)
        text_col = _pick(rows.columns, TEXT_COLUMNS)
        if text_col is None:
            raise UserError(
                f"no text column among {rows.columns}",
                where=str(path),
                expected=EXPECTED,
                hint=wrong_format_hint(rows.columns),
            )
        return Examples(Path(path), [str(row.get(text_col) or "") for _, row in rows.numbered])

    def agrees(self, a: np.ndarray, b: np.ndarray, feeds: Feeds) -> np.ndarray:
        return cosines(a, b) >= COSINE_AGREEMENT

    def score(self, outputs: np.ndarray, examples: Examples, encoded: Encoded) -> Score | None:
        if examples.gold is None:
            return None
        half = len(examples.gold)
        similarity = cosines(outputs[:half], outputs[half:])
        figures = {"spearman": spearman(similarity, examples.gold), "pearson": pearson(similarity, examples.gold)}
        method = "Spearman's rho (and Pearson's r) of each pair's cosine similarity against its gold score"
        return Score(figures, "spearman", method, half)

    def decoding(self) -> dict[str, Any]:
        return {
            "embedding": "sentence_embedding is the sentence's embedding: pooled in the model, nothing to add",
            "pooling": list(self.pooling),
            "normalized": self.normalize,
            "pooling_from": self.source,
            "similarity": "cosine" + (" (a dot product: the embeddings have unit length)" if self.normalize else ""),
        }


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.sum(a * b, axis=-1) / np.maximum(norms, 1e-12)


def _pairs(rows, lowered: dict[str, str]) -> Examples:
    """Labelled pairs: the model rows are every text_a, then every text_b; gold is the pair's score."""
    first, second = lowered["text_a"], lowered["text_b"]
    score_col = next((lowered[c] for c in ("score", "label", "similarity") if c in lowered), None)
    a = [str(row.get(first) or "") for _, row in rows.numbered]
    b = [str(row.get(second) or "") for _, row in rows.numbered]
    gold = None
    if score_col is not None:
        values = []
        for number, row in rows.numbered:
            try:
                values.append(float(row.get(score_col)))
            except (TypeError, ValueError):
                raise UserError(
                    f"score {row.get(score_col)!r} is not a number",
                    where=f"{rows.path}:{number}",
                    expected="a numeric similarity score on every pair",
                ) from None
        gold = np.array(values)
    return Examples(rows.path, a + b, gold=gold)


def _from_sentence_transformers(modules_path: Path) -> SentenceEmbedding:
    """The pooling and normalisation of a sentence-transformers folder, or one clear error for what we cannot
    reproduce exactly (a Dense layer, weighted-mean or last-token pooling)."""
    folder = modules_path.parent
    modules = _json(modules_path)
    if not isinstance(modules, list):
        raise UserError("modules.json is not a list of modules", where=str(modules_path))
    kinds = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules if isinstance(m, dict)}
    unknown = sorted(set(kinds) - KNOWN_MODULES)
    if unknown:
        raise UserError(
            f"sentence-transformers module(s) {unknown} are not supported",
            where=str(modules_path),
            expected=f"only {', '.join(sorted(KNOWN_MODULES))}",
        )
    if "Pooling" not in kinds:
        return SentenceEmbedding(("mean",), "Normalize" in kinds, "modules.json (no Pooling module: mean)")
    pooling_path = folder / str(kinds["Pooling"].get("path", "1_Pooling")) / "config.json"
    config = _json(pooling_path)
    chosen = [mode for key, mode in POOLING_MODES.items() if config.get(key)]
    refused = [key for key in UNSUPPORTED_MODES if config.get(key)]
    if refused or not chosen:
        raise UserError(
            f"pooling {refused or 'none'} is not supported",
            where=str(pooling_path),
            expected=f"one or more of {', '.join(POOLING_MODES)}",
        )
    return SentenceEmbedding(tuple(chosen), "Normalize" in kinds, f"{pooling_path.relative_to(folder)}")


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError("file is missing", where=str(path), expected="the folder sentence-transformers saved") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"not valid JSON ({exc})", where=str(path)) from None
