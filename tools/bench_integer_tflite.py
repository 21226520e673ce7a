"""Benchmark: the full-integer `.tflite` of the integer-only (I-BERT) model against float, on LiteRT and ONNX Runtime.

Two exports of the Rotten Tomatoes teacher from one copy of the pixel7 profile (seq_len fixed, `artifacts =
["onnx", "tflite"]`, both files written from the same final graph): `--recipe default` (float) and `--recipe
integer-only` (calibrated on the first 256 validation texts). Each export verifies its files on the first
`--export-texts` test texts (the integer-only `.tflite` must match ONNX Runtime to the bit, or nothing is written).

Per file: size (static, on disk); accuracy on the first `--texts` test texts (all by default) against the labels,
each text at batch 1 on its own runtime (ONNX Runtime, or LiteRT with its default XNNPACK delegate); latency p50
and p90 from `runtimes/ort_runner.py` / `runtimes/litert_runner.py` in a subprocess on the first test text padded
to seq_len, every file once per round in interleaved rounds (load from other processes hits all alike), samples
pooled; the op audit the export itself runs (float ops, float ops between integer ops, and for the `.tflite` the
nodes XNNPACK takes and what stays on LiteRT's own kernels). Timing on a shared machine is noisy: compare ratios
within one run.

    python tools/bench_integer_tflite.py --quick          # smoke run: 32 texts, 1 round of 2 runs
    python tools/bench_integer_tflite.py [--seq-len 128] [--threads 1] [--rounds 3] [--runs 30]
                                         [--texts N] [--export-texts 256] [--work DIR [--reuse]] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import numpy as np  # noqa: E402

from edgecompress.devices import derived_profile_text, load_profile  # noqa: E402
from edgecompress.intake.data import label_ids, load_dataset, tokenize  # noqa: E402
from edgecompress.measure.runner import run_runner  # noqa: E402
from edgecompress.paths import cache_dir  # noqa: E402

from bench_tflite import copy_head, export_ours, log, percentile  # noqa: E402

RECIPES = {"float": "default", "integer-only": "integer-only"}
FILES = {"onnxruntime": ("model.onnx", "ort_runner"), "litert": ("model.tflite", "litert_runner")}


@dataclass
class File:
    """One artifact of one export, or why there is none."""

    variant: str  # float | integer-only
    runtime: str  # onnxruntime | litert
    path: Path | None
    missing: str | None = None
    size_mb: float | None = None
    accuracy: float | None = None
    latency: dict[int, list[float]] = field(default_factory=dict)  # threads -> pooled samples (ms)
    audit: dict = field(default_factory=dict)


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-integer-tflite-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        texts = prepare_texts(work, args)
        profile = write_profile(work, args.seq_len)
        files = []
        for variant, recipe in RECIPES.items():
            files += export(work / variant, variant, recipe, profile, texts, args)
        present = [f for f in files if f.path]
        feeds, labels = test_feeds(args)
        for f in present:
            f.size_mb = f.path.stat().st_size / 1e6
            log(f"scoring {f.variant} on {f.runtime} ({len(labels)} texts)")
            f.accuracy = float(np.mean(logits(f, feeds).argmax(-1) == labels))
        measure_interleaved(present, {name: values[:1] for name, values in feeds.items()}, args)
    print_results(files, args)
    if args.json:
        args.json.write_text(json.dumps([row_json(f) for f in files], indent=1) + "\n")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", type=Path, default=cache_dir() / "teachers" / "minilm-rotten-tomatoes")
    parser.add_argument("--data-dir", type=Path, default=cache_dir() / "data" / "rotten_tomatoes")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=30, help="timed runs per file per round")
    parser.add_argument("--texts", type=int, default=None, help="score on the first N test texts (default all)")
    parser.add_argument("--export-texts", type=int, default=256, help="test texts each export verifies on")
    parser.add_argument("--work", type=Path, help="keep exports here instead of a temporary folder")
    parser.add_argument("--reuse", action="store_true", help="reuse exports already in --work")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--quick", action="store_true", help="smoke run: 32 texts, 16 to verify, 1 round of 2 runs")
    args = parser.parse_args()
    if args.quick:
        args.texts, args.export_texts, args.rounds, args.runs = 32, 16, 1, 2
    if args.reuse and not args.work:
        parser.error("--reuse needs --work")
    return args


def prepare_texts(work: Path, args) -> dict[str, Path]:
    out = {"export": work / "export-texts.csv", "calibration": work / "calibration-texts.csv"}
    copy_head(args.data_dir / "test.csv", out["export"], args.export_texts)
    copy_head(args.data_dir / "validation.csv", out["calibration"], 256)
    return out


def write_profile(work: Path, seq_len: int) -> Path:
    """pixel7 with the seq_len set and both files; no length buckets (one fixed shape)."""
    text = derived_profile_text("pixel7", name=f"int{seq_len}", seq_len=seq_len, artifacts=["onnx", "tflite"])
    path = work / f"int{seq_len}.toml"
    path.write_text(text)
    profile = load_profile(path)
    if profile.runtime.seq_len != seq_len or profile.artifacts != ("onnx", "tflite"):
        raise SystemExit(f"could not derive a seq_len {seq_len} onnx+tflite profile from pixel7.toml")
    return path


def export(out: Path, variant: str, recipe: str, profile: Path, texts: dict[str, Path], args) -> list[File]:
    """Run the CLI from this checkout (or reuse its files); the report's audits come along."""
    folder = out / profile.stem
    if not (args.reuse and (folder / "report.json").is_file()):
        log(f"{variant}: edgecompress export --recipe {recipe}")
        failure = export_ours(args.teacher, profile, recipe, out, texts)
        if failure is not None:
            why = f"export failed: {failure}"
            return [File(variant, runtime, None, missing=why) for runtime in FILES]
    report = {a["file"]: a for a in json.loads((folder / "report.json").read_text())["artifacts"]}
    files = []
    for runtime, (name, _) in FILES.items():
        a = report.get(name, {})
        audit = {key: a.get(key) for key in ("float_ops", "float_ops_inside", "delegation", "parity_vs_onnxruntime")}
        files.append(File(variant, runtime, folder / name, audit=audit))
    return files


def test_feeds(args) -> tuple[dict[str, np.ndarray], np.ndarray]:
    from edgecompress.intake.model import load_bundle

    bundle = load_bundle(args.teacher)
    dataset = load_dataset(args.data_dir / "test.csv", require_labels=True)
    rows = slice(0, args.texts)
    feeds = tokenize(bundle.tokenizer, dataset.texts, seq_len=args.seq_len, input_names=bundle.input_names)
    return {k: v[rows] for k, v in feeds.items()}, label_ids(dataset, bundle.labels)[rows]


def logits(f: File, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Batch 1 over every row on the file's own runtime (2 threads: scoring is not timing)."""
    if f.runtime == "litert":
        from edgecompress.backends.tflite.artifact import run_tflite_artifact

        return run_tflite_artifact(f.path, feeds, output_name="logits", threads=2)
    from edgecompress.verify.evaluate import ort_session, run_session

    session = ort_session(f.path.read_bytes(), threads=2, optimize=True)
    return run_session(session, feeds, output_name="logits", batch_size=1)


def measure_interleaved(files: list[File], first_text: dict[str, np.ndarray], args) -> None:
    for threads in args.threads:
        for round_index in range(args.rounds):
            log(f"threads {threads}, round {round_index + 1}/{args.rounds}")
            for f in files:
                result = run_runner(
                    f.path,
                    runner=FILES[f.runtime][1],
                    threads=threads,
                    runs=args.runs,
                    warmup=3,
                    inputs=first_text,
                    keep_samples=True,
                )
                f.latency.setdefault(threads, []).extend(result["latency_samples_ms"])


def print_results(files: list[File], args) -> None:
    float_accuracy = {f.runtime: f.accuracy for f in files if f.variant == "float" and f.accuracy is not None}
    print(f"seq_len {args.seq_len}, batch 1; latency measured on this host (shared: compare ratios within the run)")
    print("| variant | runtime | threads | size MB | p50 ms | p90 ms | p50 vs float | accuracy | vs float |")
    print("|---|---|---|---|---|---|---|---|---|")
    for threads in args.threads:
        for f in files:
            head = f"| {f.variant} | {f.runtime} | {threads} |"
            if f.path is None:
                print(f"{head} missing: {f.missing} | | | | | |")
                continue
            base = next((g for g in files if g.variant == "float" and g.runtime == f.runtime and g.path), None)
            p50 = percentile(f.latency[threads], 50)
            ratio = f"{p50 / percentile(base.latency[threads], 50):.2f}x" if base else "-"
            gap = float_accuracy.get(f.runtime)
            gap_text = f"{100 * (f.accuracy - gap):+.2f} pt" if gap is not None else "-"
            print(
                f"{head} {f.size_mb:.2f} | {p50:.2f} | {percentile(f.latency[threads], 90):.2f} | {ratio} | "
                f"{100 * f.accuracy:.2f}% | {gap_text} |"
            )
    print()
    print(
        "| variant | runtime | float ops | float ops between integer ops | XNNPACK nodes / nodes | bit-exact vs ORT |"
    )
    print("|---|---|---|---|---|---|")
    for f in files:
        if f.path is None:
            continue
        a = f.audit
        delegation = a.get("delegation") or {}
        taken = f"{delegation['delegated_nodes']} / {delegation['nodes']}" if delegation else "-"
        cross = a.get("parity_vs_onnxruntime") or {}
        exact = (
            "-" if not cross else ("yes" if cross.get("max_abs_diff") == 0.0 else f"max|diff| {cross['max_abs_diff']}")
        )
        inside = a.get("float_ops_inside")
        print(
            f"| {f.variant} | {f.runtime} | {', '.join(a.get('float_ops') or []) or 'none'} | "
            f"{'n/a' if inside is None else (', '.join(inside) or 'none')} | {taken} | {exact} |"
        )


def row_json(f: File) -> dict:
    return {
        "variant": f.variant,
        "runtime": f.runtime,
        "path": str(f.path) if f.path else None,
        "missing": f.missing,
        "size_mb": f.size_mb,
        "accuracy": f.accuracy,
        "latency": {
            t: {"p50": percentile(s, 50), "p90": percentile(s, 90), "runs": len(s)} for t, s in f.latency.items()
        },
        "audit": f.audit,
    }


if __name__ == "__main__":
    main()
