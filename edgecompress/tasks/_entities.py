"""Entity-level precision, recall and F1 over IOB2 (and IOBES) tags, with seqeval's definition.

Reimplemented rather than depended on: seqeval requires scikit-learn, which a mobile export tool has no other
use for. Same rules as seqeval 1.2.2's default (non-strict) mode: `get_entities` chunks the tag sequences
with its `end_of_chunk` / `start_of_chunk` rules, sentences are joined with an "O" between them, an entity is
(type, start, end), and precision/recall/F1 are micro averages over entities (0 where undefined).
"""

from __future__ import annotations

from edgecompress.tasks._stats import f1


def split_tag(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', '_') as seqeval reads a prefix tag."""
    return tag[0], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (
        prev_tag in ("E", "S")
        or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
        or (prev_tag not in ("O", ".") and prev_type != type_)
    )


def _starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (
        tag in ("B", "S")
        or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
        or (tag not in ("O", ".") and prev_type != type_)
    )


def entities(sentences: list[list[str]]) -> set[tuple[str, int, int]]:
    """Every entity as (type, first, last) positions in the sentences joined with one "O" after each."""
    tags = [tag for sentence in sentences for tag in [*sentence, "O"]]
    found = set()
    prev_tag, prev_type, begin = "O", "", 0
    for i, chunk in enumerate([*tags, "O"]):
        tag, type_ = split_tag(chunk)
        if _ends(prev_tag, tag, prev_type, type_):
            found.add((prev_type, begin, i - 1))
        if _starts(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return found


def entity_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """Micro-averaged entity precision, recall and F1 (seqeval's precision_score, recall_score, f1_score)."""
    true, pred = entities(gold), entities(predicted)
    hits = len(true & pred)
    return {
        "entity_precision": hits / len(pred) if pred else 0.0,
        "entity_recall": hits / len(true) if true else 0.0,
        "entity_f1": f1(hits, len(pred) - hits, len(true) - hits),
    }
