"""Benchmark: our float export against what a user gets by hand, on the Rotten Tomatoes teacher.

Variants, all batch 1, at each seq_len and thread count:
  torch eager      the fine-tuned Hugging Face model as loaded (default attention implementation)
  peer .onnx       plain `torch.onnx.export(model, args, path)` (torch's default exporter) + a default
                   onnxruntime session
  ours .onnx/.ort  `edgecompress export` with the default recipe

Latency: medians and p90 over all timed runs, measured in interleaved rounds (every variant once per
round) so that load from other processes on this shared machine hits all variants alike; the ONNX
files run in the standalone runner subprocess, torch in-process with the same warm-up and timer.
Accuracy and agreement: every variant on the whole test split.

    python tools/bench_export.py [--rounds 5 --runs 40 --seq-lens 64 128 --threads 1 2]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from edgecompress.devices import derived_profile_text
from edgecompress.intake.data import label_ids, load_dataset, tokenize  # noqa: E402
from edgecompress.measure.runner import run_runner  # noqa: E402
from edgecompress.pipeline import ExportRequest, run_export  # noqa: E402

import example_assets  # noqa: E402
import train_teacher  # noqa: E402

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def main() -> None:
    args = parse_args()
    teacher, test_csv = train_teacher.teacher_dir(), example_assets.rotten_tomatoes_dir() / "test.csv"
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for seq_len in args.seq_lens:
            rows += bench_seq_len(Path(scratch), teacher, test_csv, seq_len, args)
    print_table(rows)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=40, help="timed runs per variant per round")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    return parser.parse_args()


def bench_seq_len(scratch: Path, teacher: Path, test_csv: Path, seq_len: int, args) -> list[dict]:
    log(f"seq_len {seq_len}: exporting with edgecompress")
    device = device_with_seq_len(scratch, seq_len)
    start = time.perf_counter()
    result = run_export(
        ExportRequest(
            model=teacher, device=str(device), out_root=scratch / f"ours{seq_len}", data=test_csv, measure=False
        )
    )
    export_seconds = time.perf_counter() - start
    ours = {a.file: a for a in result.report.artifacts}
    model, tokenizer, dataset = load_teacher(teacher, test_csv)
    feeds = tokenize(tokenizer, dataset.texts, seq_len=seq_len, input_names=INPUTS)
    labels = label_ids(dataset, [model.config.id2label[i] for i in range(model.config.num_labels)])
    torch_logits = torch_outputs(model, feeds)
    log(f"seq_len {seq_len}: plain torch.onnx.export (the peer)")
    start = time.perf_counter()
    peer_path = export_peer(model, feeds, scratch / f"peer{seq_len}.onnx")
    peer_seconds = time.perf_counter() - start
    peer_logits = ort_outputs(peer_path, feeds)
    files = {
        "peer .onnx": peer_path,
        "ours .onnx": result.out_dir / "model.onnx",
        "ours .ort": result.out_dir / "model.ort",
    }
    accuracy = {"torch eager": torch_logits, "peer .onnx": peer_logits, "ours .onnx": None, "ours .ort": None}
    rows = []
    for threads in args.threads:
        latencies = measure_interleaved(model, files, feeds, threads, args)
        for variant, samples in latencies.items():
            logits = accuracy[variant]
            report = ours.get(f"model{variant.split()[-1]}") if variant.startswith("ours") else None
            rows.append(
                {
                    "seq_len": seq_len,
                    "threads": threads,
                    "variant": variant,
                    "p50": float(np.median(samples)),
                    "p90": float(np.percentile(samples, 90)),
                    "size_mb": files[variant].stat().st_size / 1e6 if variant in files else None,
                    "accuracy": report.accuracy.value if report else float(np.mean(logits.argmax(-1) == labels)),
                    "agreement": (
                        report.agreement.value
                        if report
                        else float(np.mean(logits.argmax(-1) == torch_logits.argmax(-1)))
                    ),
                    "export_s": export_seconds
                    if variant.startswith("ours")
                    else (peer_seconds if variant.startswith("peer") else None),
                }
            )
    return rows


def device_with_seq_len(scratch: Path, seq_len: int) -> Path:
    # The ONNX Runtime artifacts are what this benchmark compares; .tflite has its own (bench_tflite).
    text = derived_profile_text("pixel7", name=f"bench{seq_len}", seq_len=seq_len, artifacts=["onnx", "ort"])
    path = scratch / f"bench{seq_len}.toml"
    path.write_text(text)
    return path


def load_teacher(teacher: Path, test_csv: Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(teacher), local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(teacher), local_files_only=True)
    return model, tokenizer, load_dataset(test_csv, require_labels=True)


def torch_outputs(model, feeds) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate(
            [
                model(**{k: torch.from_numpy(v[i : i + 64]) for k, v in feeds.items()}).logits.numpy()
                for i in range(0, len(feeds["input_ids"]), 64)
            ]
        )


def export_peer(model, feeds, path: Path) -> Path:
    """What a user writes by hand: torch's default exporter, one file, the shipped input shape."""
    import torch

    args = tuple(torch.from_numpy(feeds[name][:1]) for name in INPUTS)
    with contextlib_quiet():
        torch.onnx.export(
            model, args, str(path), input_names=list(INPUTS), output_names=["logits"], external_data=False
        )
    return path


def contextlib_quiet():
    import contextlib

    return contextlib.redirect_stdout(io.StringIO())


def ort_outputs(path: Path, feeds) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate(
        [
            session.run(["logits"], {k: v[i : i + 1] for k, v in feeds.items()})[0]
            for i in range(len(feeds["input_ids"]))
        ]
    )


def measure_interleaved(model, files: dict[str, Path], feeds, threads: int, args) -> dict[str, list[float]]:
    first = {k: v[:1] for k, v in feeds.items()}
    samples: dict[str, list[float]] = {"torch eager": [], **{name: [] for name in files}}
    for round_index in range(args.rounds):
        log(f"  threads {threads}: round {round_index + 1}/{args.rounds}")
        samples["torch eager"] += time_torch(model, first, threads, args.runs)
        for name, path in files.items():
            result = run_runner(path, threads=threads, runs=args.runs, warmup=5, inputs=first, keep_samples=True)
            samples[name] += result["latency_samples_ms"]
    return samples


def time_torch(model, feeds, threads: int, runs: int) -> list[float]:
    import torch

    torch.set_num_threads(threads)
    tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.no_grad():
        for _ in range(5):
            model(**tensors)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model(**tensors)
            times.append((time.perf_counter() - start) * 1e3)
    return times


def print_table(rows: list[dict]) -> None:
    print("| seq_len | threads | variant | size MB | p50 ms | p90 ms | p50 vs peer | accuracy | agreement | export s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        peer = next(
            r
            for r in rows
            if r["seq_len"] == row["seq_len"] and r["threads"] == row["threads"] and r["variant"] == "peer .onnx"
        )
        size = f"{row['size_mb']:.1f}" if row["size_mb"] else "-"
        export = f"{row['export_s']:.1f}" if row["export_s"] else "-"
        print(
            f"| {row['seq_len']} | {row['threads']} | {row['variant']} | {size} | {row['p50']:.2f} | "
            f"{row['p90']:.2f} | {peer['p50'] / row['p50']:.2f}x | {100 * row['accuracy']:.2f}% | "
            f"{100 * row['agreement']:.2f}% | {export} |"
        )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
