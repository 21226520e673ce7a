"""Benchmark: early exit (issue 14 part 4) on the Rotten Tomatoes teacher, float, seq_len 128, batch 1, 1 thread,
ONNX Runtime and LiteRT.

One full `edgecompress export` per policy and quantization (Pixel 7 profile at one length of 128 tokens, 1 thread;
`none` shows early exit itself, `dynamic-int8` what the shipped profiles would ship: int8 segments beside the
int8 whole model) with the `early_exit` pass: ramps distilled on --train-data (the train split,
--limit texts), scored on the test split (--eval-limit texts). Per threshold: accuracy, agreement with the teacher
(the whole model), mean exit layer, and per runtime the mean latency (the measured p50 of each segment, summed
over the segments each text runs, averaged over the texts; see the report's "how") with its speed-up over running
every segment and over the whole-model artifact (model.onnx with the default recipe's fusions; model.tflite);
then the files' sizes and the ramps' training time. The issue's target: >= 1.5x lower mean latency at <= 1 point
of accuracy lost; the last lines name the fastest threshold that meets the accuracy half, per runtime.

Timing is only meaningful on a quiet machine (the load average is printed before and after).

    python tools/bench_early_exit.py --work /work/bench-early-exit [--limit 0] [--eval-limit 0] [--runs 50]
        [--policy entropy patience] [--quantize none dynamic-int8] [--epochs 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgecompress.devices import derived_profile_text  # noqa: E402
from edgecompress.pipeline import ExportRequest, run_export  # noqa: E402

import example_assets  # noqa: E402
import train_teacher  # noqa: E402
from bench_common import FLOAT_GRAPH_PASSES, first_rows, load_average, log, show_progress  # noqa: E402

SEQ_LEN = 128
RUNTIMES = ("onnxruntime", "litert")
WHOLE_MODEL = {"onnxruntime": "model.onnx", "litert": "model.tflite"}


def main() -> None:
    args = parse_args()
    show_progress(compress_steps=False)
    args.work.mkdir(parents=True, exist_ok=True)
    splits = example_assets.rotten_tomatoes_dir()
    train = first_rows(splits / "train.csv", args.limit, args.work, "train")
    test = first_rows(splits / "test.csv", args.eval_limit, args.work, "test")
    load_before = load_average()
    for quantize in args.quantize:
        device = args.work / quantize / "bench.toml"
        device.parent.mkdir(parents=True, exist_ok=True)
        text = derived_profile_text("pixel7", name="bench", seq_len=SEQ_LEN, artifacts=["onnx", "tflite"])
        device.write_text(
            text.replace('quantize = "dynamic-int8"', 'quantize = "none"').replace("threads = 2", "threads = 1")
        )
        for policy in args.policy:
            print_result(f"{policy}, {quantize}", export(policy, quantize, device, train, test, splits, args))
    print(f"\nload average before: {load_before}; after: {load_average()} (2 cores, shared)")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="exports go here")
    parser.add_argument("--limit", type=int, default=0, help="training texts for the ramps (0: the whole train split)")
    parser.add_argument("--eval-limit", type=int, default=0, help="test texts scored (0: the whole test split)")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per segment and runtime")
    parser.add_argument("--epochs", type=int, default=20, help="ramp training epochs over the cached rows")
    parser.add_argument("--policy", nargs="+", choices=("entropy", "patience"), default=["entropy", "patience"])
    parser.add_argument("--quantize", nargs="+", choices=("none", "dynamic-int8"), default=["none", "dynamic-int8"])
    return parser.parse_args()


def export(policy: str, quantize: str, device: Path, train: Path, test: Path, splits: Path, args):
    threshold = 0.3 if policy == "entropy" else 2
    recipe = device.parent / f"early-exit-{policy}.toml"
    recipe.write_text(
        f'description = "early exit, {policy}"\n[[compress]]\npass = "early_exit"\npolicy = "{policy}"\n'
        f"threshold = {threshold}\nepochs = {args.epochs}\n{FLOAT_GRAPH_PASSES}"
    )
    log(f"{policy}: exporting")
    start = time.perf_counter()
    request = ExportRequest(
        model=train_teacher.teacher_dir(),
        device=str(device),
        out_root=device.parent / policy,
        data=test,
        calibration=splits / "validation.csv",
        train_data=train,
        recipe=str(recipe),
        quantize=quantize,  # a recipe file is taken as written: the mode is given as --quantize would
        runs=args.runs,
        warmup=5,
    )
    result = run_export(request)
    log(f"{policy}: export took {time.perf_counter() - start:.0f} s")
    return result


def print_result(policy: str, result) -> None:
    report, out = result.report.early_exit, result.out_dir
    whole = report["whole_model_p50_ms"]
    # the model as given (torch, float) on the same texts: the teacher every row is judged against
    teacher_accuracy = result.report.data["reference_scores"]["accuracy"]
    print(f"\n### {policy}\n")
    header = ["threshold", "accuracy", "vs teacher (points)", "agreement with teacher", "mean exit layer"]
    # the first five columns are ONNX Runtime's chain; LiteRT's accuracy follows in its own column
    for rt in RUNTIMES:
        header += [f"{rt} accuracy", f"{rt} mean ms", f"{rt} vs all segments", f"{rt} vs {WHOLE_MODEL[rt]}"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in report["sweep"]:
        delta = f"{100 * (row['accuracy'] - teacher_accuracy):+.2f}"
        cells = [
            f"{row['threshold']:g}",
            f"{100 * row['accuracy']:.2f}%",
            delta,
            f"{100 * row['agreement_with_original']:.2f}%",
            f"{row['mean_exit_layer']:.2f}",
        ]
        for rt in RUNTIMES:  # each runtime's texts stop where its own logits say
            own, mean = row["by_runtime"][rt], row["mean_latency_ms"][rt]
            cells += [f"{100 * own['accuracy']:.2f}%", f"{mean:.2f}"]
            cells += [f"{row['speedup_vs_all_segments'][rt]:.2f}x", f"{whole[rt] / mean:.2f}x"]
        print("| " + " | ".join(cells) + " |")
    segments_mb = sum((out / s["file"]).stat().st_size for s in report["segments"]) / 1e6
    print(
        f"\nsizes: {report['exits']} ONNX segments {segments_mb:.1f} MB (model.onnx {size_mb(out / 'model.onnx')} MB), "
        f"exits.tflite {size_mb(out / 'exits.tflite')} MB (model.tflite {size_mb(out / 'model.tflite')} MB); "
        f"ramp training {report['training']['seconds']:.1f} s on {report['training']['texts']} texts "
        f"({report['training']['epochs']} epochs)"
    )
    print(
        "all segments (ms): "
        + ", ".join(f"{rt} {report['all_segments_ms'][rt]:.2f} vs {WHOLE_MODEL[rt]} {whole[rt]:.2f}" for rt in RUNTIMES)
    )
    for rt in RUNTIMES:
        print(target_line(report, rt, teacher_accuracy, whole[rt]))


def target_line(report: dict, runtime: str, teacher_accuracy: float, whole_ms: float) -> str:
    """The fastest threshold within 1 point of the teacher's accuracy, against the issue's 1.5x."""
    within = [r for r in report["sweep"] if r["by_runtime"][runtime]["accuracy"] >= teacher_accuracy - 0.01]
    if not within:
        return f"{runtime}: no threshold keeps accuracy within 1 point of the teacher's"
    best = min(within, key=lambda r: r["mean_latency_ms"][runtime])
    speedup = best["speedup_vs_all_segments"][runtime]
    verdict = "meets" if speedup >= 1.5 else "misses"
    return (
        f"{runtime}: fastest threshold within 1 point: {best['threshold']:g} "
        f"({100 * best['by_runtime'][runtime]['accuracy']:.2f}%), "
        f"{speedup:.2f}x vs all segments, {whole_ms / best['mean_latency_ms'][runtime]:.2f}x vs "
        f"{WHOLE_MODEL[runtime]}: {verdict} the 1.5x target (against all segments)"
    )


def size_mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f}" if path.is_file() else "-"


if __name__ == "__main__":
    main()
