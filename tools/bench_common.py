"""What the method benchmarks share: the float graph passes their recipes end with, a first-N-rows copy of a CSV
split, the load average they print beside each table, and their progress log on stderr."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from edgecompress.logs import show_progress_on_stderr

import example_assets

# The default recipe's graph stage without quantization: a recipe of torch passes alone would get no graph passes.
FLOAT_GRAPH_PASSES = "".join(
    f'\n[[graph]]\npass = "{name}"\n'
    for name in ("remove_training_nodes", "fuse_transformer", "attention_mask_value", "fix_shapes", "fold_constants")
)


def first_rows(csv_path: Path, limit: int, work: Path, name: str) -> Path:
    """`csv_path` itself when `limit` is 0, else a copy of its first `limit` rows in `work` (`name-limit.csv`)."""
    if not limit:
        return csv_path
    path = work / f"{name}-{limit}.csv"
    example_assets.write_csv(path, example_assets.read_csv(csv_path)[:limit])
    return path


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def show_progress(*, compress_steps: bool = False) -> None:
    """Warnings only, the progress lines of long work (training steps with time left) on stderr, and with
    `compress_steps` the compress passes' own INFO lines (pruning rounds, recovery)."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    show_progress_on_stderr()
    if compress_steps:
        logging.getLogger("edgecompress.compress").setLevel(logging.INFO)
