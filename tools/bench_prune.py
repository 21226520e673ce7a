"""Benchmark: structured pruning of the Rotten Tomatoes teacher, float ONNX Runtime, batch 1.

Variants, each a full `edgecompress export` (seq_len 64, Pixel 7 profile otherwise):
  teacher float           the default recipe: no compression
  pruned, no recovery     prune_heads 0.5 + prune_ffn 0.75 (gradient importance on --train-data), trim_vocab
  pruned + recovery       the packaged `pruned` recipe: trim_vocab, then prune_schedule (heads 0.5, ffn 0.75,
                          3 rounds, 1 epoch of distillation after each)

Data: --train-data is the train split; --calibration is the validation split, so that trim_vocab keeps
only tokens of texts that are not the test split; --data is the test split (accuracy, agreement with
the unpruned teacher, and the share of test texts the trimmed tokenizer splits exactly as before).
Latency: model.onnx in the standalone runner, interleaved rounds (every variant once per round) so
load from other processes on this shared machine hits all variants alike; medians and p90 of all runs.

    python tools/bench_prune.py [--rounds 5 --runs 40 --threads 1 2 --limit N]
    python tools/bench_prune.py --recipe my_pruned.toml --variants "teacher float" "pruned + recovery"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from edgecompress.devices import derived_profile_text
from edgecompress.intake.data import load_dataset, tokenize  # noqa: E402
from edgecompress.measure.runner import run_runner  # noqa: E402
from edgecompress.paths import recipes_dir  # noqa: E402
from edgecompress.pipeline import ExportRequest, run_export  # noqa: E402

import example_assets  # noqa: E402
import train_teacher  # noqa: E402
from bench_common import FLOAT_GRAPH_PASSES, show_progress  # noqa: E402

SEQ_LEN = 64
VARIANTS = ("teacher float", "pruned, no recovery", "pruned + recovery")
ONE_SHOT = (
    """description = "prune_heads 0.5 + prune_ffn 0.75 + trim_vocab, no recovery"
[[compress]]
pass = "prune_heads"
ratio = 0.5
[[compress]]
pass = "prune_ffn"
ratio = 0.75
[[compress]]
pass = "trim_vocab"
"""
    + FLOAT_GRAPH_PASSES
)


def main() -> None:
    args = parse_args()
    show_progress(compress_steps=True)
    teacher = train_teacher.teacher_dir()
    splits = example_assets.rotten_tomatoes_dir()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        train_csv = limited(splits / "train.csv", args.limit, scratch)
        recipes = {
            "teacher float": "default",
            "pruned, no recovery": write(scratch / "one_shot.toml", ONE_SHOT),
            "pruned + recovery": args.recipe,
        }
        exports = {name: export(name, recipes[name], teacher, splits, train_csv, scratch) for name in args.variants}
        feeds = tokenize_first_row(exports, splits / "test.csv")
        latencies = {threads: measure_interleaved(exports, feeds, threads, args) for threads in args.threads}
        print_table(exports, latencies, teacher)
        print_vocab(exports, splits / "test.csv")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=40, help="timed runs per variant per round")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--limit", type=int, default=None, help="training texts (a smoke run; default: all)")
    parser.add_argument(
        "--recipe",
        default=str(recipes_dir() / "pruned.toml"),
        help="recipe of the 'pruned + recovery' variant (default: the packaged pruned.toml)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=list(VARIANTS),
        help="variants to run besides 'teacher float', which speed-ups are relative to",
    )
    args = parser.parse_args()
    args.variants = [VARIANTS[0], *(v for v in VARIANTS[1:] if v in args.variants)]
    return args


def limited(train_csv: Path, limit: int | None, scratch: Path) -> Path:
    if limit is None:
        return train_csv
    rows = example_assets.read_csv(train_csv)[:limit]
    path = scratch / "train.csv"
    example_assets.write_csv(path, rows)
    return path


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def device(scratch: Path) -> Path:
    text = derived_profile_text("pixel7", name="bench", seq_len=SEQ_LEN)
    return Path(write(scratch / "bench.toml", text))


def export(name: str, recipe: str, teacher: Path, splits: Path, train_csv: Path, scratch: Path) -> dict:
    log(f"{name}: exporting with recipe {Path(recipe).stem}")
    start = time.perf_counter()
    result = run_export(
        ExportRequest(
            model=teacher,
            device=str(device(scratch)),
            out_root=scratch / name.replace(" ", "_").replace(",", ""),
            data=splits / "test.csv",
            calibration=splits / "validation.csv",
            train_data=train_csv,
            recipe=recipe,
            measure=False,
        )
    )
    seconds = time.perf_counter() - start
    compress = next(s["seconds"] for s in result.report.stages if s["name"] == "compress")
    onnx_file = next(a for a in result.report.artifacts if a.file == "model.onnx")
    log(f"{name}: done in {seconds:.0f} s (compress stage {compress:.0f} s)")
    return {"dir": result.out_dir, "report": result.report, "artifact": onnx_file, "compress_s": compress}


def tokenize_first_row(exports: dict, test_csv: Path) -> dict:
    """One real test text per variant, tokenized by that variant's own shipped tokenizer."""
    from transformers import AutoTokenizer

    text = load_dataset(test_csv, require_labels=False).texts[:1]
    feeds = {}
    for name, item in exports.items():
        tokenizer = AutoTokenizer.from_pretrained(str(item["dir"]), local_files_only=True)
        feeds[name] = tokenize(
            tokenizer, text, seq_len=SEQ_LEN, input_names=("input_ids", "attention_mask", "token_type_ids")
        )
    return feeds


def measure_interleaved(exports: dict, feeds: dict, threads: int, args) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in exports}
    for round_index in range(args.rounds):
        log(f"threads {threads}: round {round_index + 1}/{args.rounds}")
        for name, item in exports.items():
            result = run_runner(
                item["dir"] / "model.onnx",
                threads=threads,
                runs=args.runs,
                warmup=5,
                inputs=feeds[name],
                keep_samples=True,
            )
            samples[name] += result["latency_samples_ms"]
    return samples


def parameters(path: Path) -> int:
    import onnx

    return sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)


def print_table(exports: dict, latencies: dict, teacher: Path) -> None:
    teacher_s = json.loads((teacher / "training.json").read_text())["wall_time_s"]
    print(
        "| threads | variant | params | model.onnx MB | p50 ms | p90 ms | speed-up (p50) | test accuracy "
        "| agreement | training s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for threads, samples in latencies.items():
        base = float(np.median(samples["teacher float"]))
        for name, item in exports.items():
            p50, p90 = float(np.median(samples[name])), float(np.percentile(samples[name], 90))
            artifact = item["artifact"]
            training = (
                f"{teacher_s:.0f} (fine-tuning)"
                if name == "teacher float"
                else f"{item['compress_s']:.0f} (compress stage)"
            )
            print(
                f"| {threads} | {name} | {parameters(item['dir'] / 'model.onnx') / 1e6:.2f}M | "
                f"{(item['dir'] / 'model.onnx').stat().st_size / 1e6:.1f} | {p50:.2f} | {p90:.2f} | "
                f"{base / p50:.2f}x | {100 * artifact.accuracy.value:.2f}% | "
                f"{100 * artifact.agreement.value:.2f}% | {training} |"
            )


def print_vocab(exports: dict, test_csv: Path) -> None:
    """Embedding rows before/after, and how many test texts the trimmed tokenizer splits as before."""
    from transformers import AutoTokenizer

    texts = load_dataset(test_csv, require_labels=False).texts
    full = AutoTokenizer.from_pretrained(str(exports["teacher float"]["dir"]), local_files_only=True)
    for name, item in exports.items():
        trim = next((p for p in item["report"].passes if p["name"] == "trim_vocab"), None)
        if trim is None:
            continue
        trimmed = AutoTokenizer.from_pretrained(str(item["dir"]), local_files_only=True)
        same = np.mean([full.tokenize(t) == trimmed.tokenize(t) for t in texts])
        stats = trim["stats"]
        print(
            f"{name}: vocabulary {stats['vocab_before']} -> {stats['vocab_after']} tokens "
            f"({stats['vocab_after'] / stats['vocab_before']:.1%} of the embedding matrix); "
            f"{same:.1%} of {len(texts)} test texts tokenize exactly as before"
        )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
