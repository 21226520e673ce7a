"""Benchmark: the methods that shrink the file (issue 14 parts 2 and 3): low-rank FFN factors and factorised
embeddings against narrow dense models of the same size, and cross-layer sharing, on the Rotten Tomatoes
teacher, float, seq_len 128, batch 1, 1 thread, ORT and LiteRT.

Variants, each a full `edgecompress export` (Pixel 7 profile at one length of 128 tokens, no quantization, so
the table shows the method itself), trained where they train on --train-data (the train split, --limit texts)
and scored on the test split:

  teacher              the default recipe
  svd-ffn-r96          low_rank rank 96 on both FFN matrices of every layer, 1 epoch of distilled recovery
  narrow-ffn-480       prune_schedule ffn to 480 neurons (the same FFN parameter count as rank 96:
                       96 x (384 + 1536) = 480 x 384), one round, 1 epoch of distilled recovery
  factorised-emb-128   factorise_embeddings width 128, 1 epoch of distilled recovery
  trimmed-vocab        trim_vocab: the other way to shrink the word table (no training)
  shared-layers-2      share_layers group 2 (6 depths run 3 weight sets), no recovery (epochs 0): what the
                       files and the runtimes' memory do with shared weights; its accuracy is the plain tie's

Exports go to --work and are reused with --reuse, so the timing phase can be repeated alone on a quiet
machine. Latency: the standalone runners (model.ort on ONNX Runtime, model.tflite on LiteRT with XNNPACK),
synthetic inputs at 128 tokens, interleaved rounds so load hits every variant alike; medians of all runs.

    python tools/bench_size_methods.py --work /work/bench-low-rank [--limit 4000] [--rounds 5 --runs 20] [--reuse]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from edgecompress.measure.runner import run_runner  # noqa: E402

import example_assets  # noqa: E402
from bench_common import RUNTIMES, export_float, first_rows, load_average, log, show_progress  # noqa: E402

SEQ_LEN = 128
RECOVERY = "epochs = 1.0\n"
VARIANTS = {
    "teacher": None,
    "svd-ffn-r96": '[[compress]]\npass = "low_rank"\nrank = 96\n' + RECOVERY,
    "narrow-ffn-480": '[[compress]]\npass = "prune_schedule"\nheads = 0.0\nffn = 0.6875\nsteps = 1\n' + RECOVERY,
    "factorised-emb-128": '[[compress]]\npass = "factorise_embeddings"\nwidth = 128\n' + RECOVERY,
    "trimmed-vocab": '[[compress]]\npass = "trim_vocab"\n',
    "shared-layers-2": '[[compress]]\npass = "share_layers"\ngroup = 2\nepochs = 0\n',
}


def main() -> None:
    args = parse_args()
    show_progress(compress_steps=True)
    args.work.mkdir(parents=True, exist_ok=True)
    splits = example_assets.rotten_tomatoes_dir()
    train = first_rows(splits / "train.csv", args.limit, args.work, "train")
    rows = {name: export(name, recipe, splits, train, args) for name, recipe in VARIANTS.items()}
    latencies = measure_interleaved(rows, args)
    print(f"load average before timing: {args.load_before}; after: {load_average()}")
    print_table(rows, latencies)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="exports go here (kept for --reuse)")
    parser.add_argument("--limit", type=int, default=4000, help="training texts for the recovery (0: all)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per variant, runtime and round")
    parser.add_argument("--reuse", action="store_true", help="keep exports already in --work")
    return parser.parse_args()


def export(name: str, compress: str | None, splits: Path, train: Path, args) -> dict:
    def extra(report) -> dict:
        compressed = [p for p in report.passes if p["stage"] == "compress"]
        return {
            "training_s": sum(p["stats"].get("training_seconds", 0.0) for p in compressed),
            "parameters": next(
                (p["stats"]["parameters_after"] for p in report.passes if "parameters_after" in p["stats"]), None
            ),
        }

    return export_float(
        args.work,
        name,
        compress,
        reuse=args.reuse,
        seq_len=SEQ_LEN,
        data=splits / "test.csv",
        calibration=splits / "validation.csv",
        train_data=train,
        extra=extra,
    )


def measure_interleaved(rows: dict, args) -> dict:
    args.load_before = load_average()
    samples: dict = {(name, f): [] for name in rows for f in RUNTIMES}
    peak_rss: dict = {}
    for round_index in range(args.rounds):
        log(f"round {round_index + 1}/{args.rounds}")
        for name, row in rows.items():
            for file, runner in RUNTIMES.items():
                result = run_runner(
                    Path(row["dir"]) / file,
                    runner=runner,
                    threads=1,
                    runs=args.runs,
                    warmup=3,
                    seq_len=SEQ_LEN,
                    keep_samples=True,
                )
                samples[(name, file)] += result["latency_samples_ms"]
                peak_rss[(name, file)] = max(peak_rss.get((name, file), 0.0), result["peak_rss_mb"])
    return {key: (float(np.median(values)), peak_rss[key]) for key, values in samples.items()}


def print_table(rows: dict, p50: dict) -> None:
    print(
        "| variant | parameters | .ort MB | .tflite MB | ORT p50 ms | LiteRT p50 ms | ORT speed-up "
        "| peak RSS MiB ORT / LiteRT | test accuracy | agreement with teacher | training s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    base = p50[("teacher", "model.ort")][0]
    for name, row in rows.items():
        (ort, ort_rss), (lite, lite_rss) = p50[(name, "model.ort")], p50[(name, "model.tflite")]
        parameters = f"{row['parameters'] / 1e6:.2f}M" if row["parameters"] else "teacher's"
        agreement = f"{100 * row['agreement']:.2f}%" if row["agreement"] is not None else "-"
        print(
            f"| {name} | {parameters} | {row['sizes_mb']['model.ort']:.1f} | {row['sizes_mb']['model.tflite']:.1f} "
            f"| {ort:.2f} | {lite:.2f} | {base / ort:.2f}x | {ort_rss:.0f} / {lite_rss:.0f} "
            f"| {100 * row['accuracy']:.2f}% | {agreement} "
            f"| {row['training_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
