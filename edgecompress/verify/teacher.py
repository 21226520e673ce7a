"""A student's accuracy budget is judged against its teacher (issue 17, item 11).

A student checkpoint's training.json names its teacher (path, digest, and the accuracy `distill` measured on
--eval-data). The export judges the student's accuracy drop against the teacher's accuracy on the same --data
when the teacher is still there with the recorded weights; else against the recorded held-out figure, saying
so; else (nothing recorded) against the student's own float model, as for any other checkpoint, with a note.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def student_record(source: Path) -> dict[str, Any] | None:
    """The teacher block of a student checkpoint's training.json, or None for a model that is not a student."""
    path = Path(source) / "training.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    teacher = record.get("teacher") if isinstance(record, dict) else None
    return teacher if isinstance(teacher, dict) and teacher.get("path") else None


def teacher_reference(bundle, dataset, labels: np.ndarray | None, seq_len: int) -> dict[str, Any] | None:
    """What the accuracy drop of this student is judged against: {accuracy, how, method, note}; None when the
    model is not a student or the data is unlabelled."""
    from edgecompress.distill.held_out import checkpoint_digest
    from edgecompress.intake.data import tokenize
    from edgecompress.intake.model import load_bundle
    from edgecompress.verify.evaluate import reference_outputs

    record = student_record(bundle.source)
    if record is None or labels is None:
        return None
    path = Path(record["path"])
    reason = None
    if not (path / "config.json").is_file():
        reason = f"the teacher is not at {path}"
    elif record.get("digest") and checkpoint_digest(path) != record["digest"]:
        reason = f"the teacher at {path} has changed since distillation (its weights' digest differs)"
    if reason is None:
        try:
            teacher = load_bundle(path)
        except Exception as exc:  # a teacher that no longer loads: fall back to what distill recorded
            reason = f"the teacher at {path} no longer loads ({type(exc).__name__}: {exc})"
    if reason is None:
        feeds = tokenize(teacher.tokenizer, dataset.texts, seq_len=seq_len, input_names=teacher.input_names)
        accuracy = float(np.mean(reference_outputs(teacher, feeds).argmax(-1) == labels))
        return {
            "accuracy": accuracy,
            "how": "measured",
            "source": "teacher",
            "method": f"the teacher ({path}, digest as recorded by distill) in torch eager on the same "
            f"{len(labels)} texts of --data at seq_len {seq_len}",
            "note": None,
        }
    held_out = record.get("held_out")
    if held_out:
        return {
            "accuracy": float(held_out["accuracy"]),
            "how": "recorded",
            "source": "teacher (recorded)",
            "method": f"recorded by distill: {held_out['method']}",
            "note": (
                f"{reason}: the accuracy drop is judged against the teacher's accuracy that distill "
                f"recorded on {Path(held_out['data']).name} ({held_out['texts']} texts), not on this "
                f"--data; put the teacher back at {path} for a like-for-like figure"
            ),
        }
    return {
        "accuracy": None,
        "how": None,
        "source": None,
        "method": None,
        "note": (
            f"{reason}, and distill recorded no held-out accuracy (no --eval-data): the accuracy drop is "
            f"judged against the student's own float model, which says nothing of what replacing the "
            f"teacher costs"
        ),
    }
