"""What a student knows of its teacher, and accuracy on held-out texts (issue 17, items 11 and 13).

A student replaces its teacher, so its accuracy budget is judged against the teacher (a BiLSTM 3.7-3.9 points
below the teacher it replaced was "all budgets met" against its own float model). `distill` records the
teacher (path, a digest of its weights and config, and its held-out accuracy when `--eval-data` is given) in
the student's training.json; `export` reads it back (verify/teacher.py).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# The files whose bytes make a checkpoint what it is (the tokenizer is copied into the student as it is).
_WEIGHT_PATTERNS = ("config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin")


def checkpoint_digest(folder: Path) -> str:
    """sha256 over the config and weight files of a checkpoint folder, in name order (name, then bytes)."""
    digest = hashlib.sha256()
    files = sorted({p for pattern in _WEIGHT_PATTERNS for p in Path(folder).glob(pattern) if p.is_file()})
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def held_out_accuracy(bundle, path: Path, seq_len: int) -> dict[str, Any]:
    """`bundle`'s accuracy on the labelled texts of `path`, each cut to `seq_len` tokens."""
    from edgecompress.intake.data import label_ids, load_dataset, tokenize
    from edgecompress.verify.evaluate import reference_outputs

    dataset = load_dataset(path, require_labels=True)
    labels = label_ids(dataset, bundle.labels)
    feeds = tokenize(bundle.tokenizer, dataset.texts, seq_len=seq_len, input_names=bundle.input_names)
    predicted = reference_outputs(bundle, feeds).argmax(-1)
    return {
        "accuracy": float(np.mean(predicted == labels)),
        "texts": len(labels),
        "data": str(Path(path).resolve()),
        "seq_len": seq_len,
        "how": "measured",
        "method": f"torch eager on {len(labels)} labelled texts of {Path(path).name}, cut to {seq_len} tokens",
    }


def shipped_export_lengths() -> dict[str, int]:
    """The longest input of each shipped device profile: what a student is exported at."""
    from edgecompress.devices import list_profiles

    return {profile.name: profile.runtime.seq_len for profile in list_profiles()}


def length_warnings(tokens: np.ndarray, seq_len: int, export_lengths: dict[str, int]) -> list[str]:
    """Warnings for a --seq-len shorter than most training texts, or than the length the student is exported at
    while some training texts fall between the two (those the app serves whole but the student learned cut; when
    no text is longer than --seq-len, a longer export length loses nothing and is not worth a warning)."""
    warnings = []
    longer = int(np.sum(tokens > seq_len))
    if longer * 2 > len(tokens):
        warnings.append(
            f"--seq-len {seq_len} is shorter than most training texts: {longer} of {len(tokens)} "
            f"({100 * longer / len(tokens):.0f}%) are longer (median {int(np.median(tokens))} tokens) "
            f"and are cut in training; raise --seq-len"
        )
    above = {name: length for name, length in export_lengths.items() if length > seq_len}
    if above and longer:
        longest = max(above.values())
        names = ", ".join(sorted(n for n, length in above.items() if length == longest))
        warnings.append(
            f"--seq-len {seq_len} is shorter than the {longest} tokens the student will be exported at "
            f"({names}): {longer} training texts are longer than {seq_len} tokens, and the student "
            f"never learns from their tokens past {seq_len} that the app will feed it; distill with "
            f"--seq-len {longest} or export with a profile of seq_len {seq_len}"
        )
    return warnings
