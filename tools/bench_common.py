"""What the method benchmarks share: the float graph passes their recipes end with, the float export of the teacher
they compare against (kept for --reuse), a first-N-rows copy of a CSV split, the load average they print beside
each table, and their progress log on stderr."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from edgecompress.logs import show_progress_on_stderr

import example_assets
import train_teacher

# The default recipe's graph stage without quantization: a recipe of torch passes alone would get no graph passes.
FLOAT_GRAPH_PASSES = "".join(
    f'\n[[graph]]\npass = "{name}"\n'
    for name in ("remove_training_nodes", "fuse_transformer", "attention_mask_value", "fix_shapes", "fold_constants")
)


# The float exports' files and the runner each is timed through.
RUNTIMES = {"model.ort": "ort_runner", "model.tflite": "litert_runner"}


def export_float(
    work: Path,
    name: str,
    compress: str | None,
    *,
    reuse: bool,
    seq_len: int,
    data: Path,
    train_data: Path,
    calibration: Path | None = None,
    buckets: list[int] | None = None,
    extra: Callable[[object], dict] = lambda report: {},
) -> dict:
    """The teacher exported float (RUNTIMES' files, no quantization) for a pixel7 variant at `seq_len` (one length,
    or `buckets`), `compress` (TOML of torch passes, or None) before the float graph passes; returns its summary
    row (folder, export seconds, ORT accuracy and agreement, file sizes, and `extra(report)`), kept as
    WORK/NAME.json: with `reuse`, a kept row is returned without exporting."""
    from edgecompress.devices import derived_profile_text
    from edgecompress.pipeline import ExportRequest, run_export

    out_root, summary = work / name, work / f"{name}.json"
    if reuse and summary.is_file():
        log(f"{name}: reusing {out_root}")
        return json.loads(summary.read_text())
    profile = "bench-buckets" if buckets else "bench"
    device = work / f"{profile}.toml"
    text = derived_profile_text("pixel7", name=profile, seq_len=seq_len, buckets=buckets, artifacts=["ort", "tflite"])
    device.write_text(text.replace('quantize = "dynamic-int8"', 'quantize = "none"'))
    recipe = "default"
    if compress:
        recipe = str(work / f"{name}.toml")
        Path(recipe).write_text(f'description = "{name}"\n{compress}{FLOAT_GRAPH_PASSES}')
    log(f"{name}: exporting")
    start = time.perf_counter()
    request = ExportRequest(
        model=train_teacher.teacher_dir(),
        device=str(device),
        out_root=out_root,
        data=data,
        calibration=calibration,
        train_data=train_data,
        recipe=recipe,
        measure=False,
    )
    result = run_export(request)
    ort = next(a for a in result.report.artifacts if a.kind == "ort")
    row = {
        "dir": str(result.out_dir),
        "export_s": round(time.perf_counter() - start, 1),
        **extra(result.report),
        "accuracy": ort.accuracy.value,
        "agreement": ort.agreement.value if ort.agreement else None,
        "sizes_mb": {f: (result.out_dir / f).stat().st_size / 1e6 for f in RUNTIMES},
    }
    summary.write_text(json.dumps(row, indent=2) + "\n")
    return row


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
