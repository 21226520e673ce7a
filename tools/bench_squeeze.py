"""Benchmark (issue 14 part 1): does Weight Squeezing beat plain distillation and training from scratch at equal
shape, on the Rotten Tomatoes teacher (all-MiniLM-L6-v2, fine-tuned)?

Three students of one shape (by default 3 layers, hidden 192, 6 heads, FFN 768: the squeezed student's default,
half the teacher's depth and width), trained on the train split with one teacher-labelled augmented copy per
text (one shared transfer set), for the same number of epochs:

  squeezed     `--student squeezed`: the maps of the teacher's weights train (logit, hidden-state and
               attention losses)
  distilled    `--student transformer` of the same shape: random layers, the teacher's PCA-projected word
               embeddings, the same losses through a learned projection
  scratch      `--student transformer` with "init": "random", the hard labels only (no teacher at all)

Each is exported (float and dynamic int8, seq_len 64, pixel7's graph passes) and scored on the whole test
split: accuracy, agreement with the float teacher, size, p50/p90 latency (ONNX Runtime runner, interleaved
rounds as tools/bench_distill.py does), training time. Students are cached under the edgecompress cache;
`--retrain` trains them again.

    python tools/bench_squeeze.py [--epochs 3] [--rounds 3 --runs 50 --threads 1 2] [--retrain]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgecompress.distill.run import DistillRequest  # noqa: E402
from edgecompress.logs import show_progress_on_stderr  # noqa: E402
from edgecompress.paths import cache_dir  # noqa: E402

import bench_distill  # noqa: E402
import example_assets  # noqa: E402
import train_teacher  # noqa: E402

SHAPE = {"num_hidden_layers": 3, "hidden_size": 192, "num_attention_heads": 6, "intermediate_size": 768}
AUGMENT = 1
# (student kind, student config beyond SHAPE, losses, training) per row. One learning rate for all three: at the
# transformer student's default (1e-4, tuned for a student that starts as the teacher's layers) the distilled one,
# whose layers start random, reached 57.8% in 2 epochs (a first run of this script).
STUDENTS = {
    "squeezed": ("squeezed", {}, {}, {"lr": 5e-4}),
    "distilled": ("transformer", {}, {}, {"lr": 5e-4}),
    "scratch": (
        "transformer",
        {"init": "random"},
        {"hard_weight": 1.0, "hidden_weight": 0.0, "attention_weight": 0.0},
        {"lr": 5e-4},
    ),
}


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    show_progress_on_stderr()
    logging.getLogger("edgecompress.distill").setLevel(logging.INFO)
    root = cache_dir() / "bench" / "squeeze"
    teacher, splits = train_teacher.teacher_dir(), example_assets.rotten_tomatoes_dir()
    students = {name: train(root, teacher, splits, name, args) for name in STUDENTS}
    exports = root / "exports"
    shutil.rmtree(exports, ignore_errors=True)
    device = bench_distill.bench_device(exports)
    rows = []
    for name, folder in {"teacher": teacher, **students}.items():
        rows.append(
            bench_distill.export_row(name, "float", folder, device, splits, exports, recipe=None, quantize="none")
        )
        rows.append(
            bench_distill.export_row(
                name, "int8", folder, device, splits, exports, recipe=None, quantize="dynamic-int8", float_row=rows[-1]
            )
        )
    bench_distill.score(rows, splits / "test.csv")
    bench_distill.measure(rows, args)
    (root / "results.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    print(f"Load average at the end: {os.getloadavg()[0]:.2f}, {os.getloadavg()[1]:.2f}, {os.getloadavg()[2]:.2f}")
    bench_distill.print_table(rows)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="training epochs, every student")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=50, help="timed runs per artifact per round")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--retrain", action="store_true", help="train the students again")
    return parser.parse_args()


def train(root: Path, teacher: Path, splits: Path, name: str, args) -> Path:
    kind, config, losses, training = STUDENTS[name]
    config_file = root / f"{name}.json"
    root.mkdir(parents=True, exist_ok=True)
    config_file.write_text(json.dumps({**SHAPE, **config}))
    request = DistillRequest(
        teacher=teacher,
        student=kind,
        train_data=splits / "train.csv",
        out_dir=root / name,
        augment=AUGMENT,
        seq_len=bench_distill.SEQ_LEN,
        student_config=config_file,
        transfer_set=cache_dir() / "bench" / "distill" / f"transfer-augment{AUGMENT}.npz",
        training={"epochs": args.epochs, **training},
        losses=losses,
        eval_data=splits / "validation.csv",
    )
    return bench_distill.cached_student(request, retrain=args.retrain)


if __name__ == "__main__":
    main()
