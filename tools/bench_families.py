"""Benchmark (issue 15): every encoder family against the peer a user gets by hand.

For each registered family (edgecompress.architectures.architectures(); a model_type of
tools/tiny_families.TINY_CONFIGS that is not registered is skipped with the reason printed) and each task
(edgecompress.tasks' registry when it exists, else sequence classification), on the family's tiny random
config with a trained tokenizer, and for every real checkpoint given with `--checkpoint DIR`:

  ours   `edgecompress export CKPT --device pixel7` twice: `--quantize none` (float) and the default recipe
         (dynamic int8). Fused ops (fuse_transformer's statistics), float parity of model.onnx (ORT) and
         model.tflite (LiteRT) against the torch reference, int8 agreement with float, file sizes.
  peer   plain `torch.onnx.export` (TorchScript, eager attention, dynamic axes; tiny_families.hand_export)
         then `onnxruntime.quantization.quantize_dynamic` (QInt8, per channel).

Host p50 at seq 128, 1 thread: ours model.onnx and the peer in onnxruntime (sessions opened as
runtimes/ort_runner.py opens them), ours model.tflite in LiteRT; timing in rounds that rotate the order
(tools/bench_timing.py, as tools/bench_buckets.py), medians over every run. Targets, ratios of the same run:
peer p50 / ours p50 >= 1 and peer size / ours size >= 1 for every family. The load average is printed
beside the table.

The size ratio compares like with like: our int8 model.onnx against the peer's int8 .onnx, one graph each
serving any length. Our .tflite is shown beside it but not compared: it holds one signature per length bucket
(the weights stored once, each bucket's graph and folded constants apart; MPNet's relative position bias,
[heads, n, n] floats per bucket, is most of its tiny .tflite).

    python tools/bench_families.py --quick          # smoke run: BERT only, 1 round of 5 runs
    python tools/bench_families.py [--families bert roberta ...] [--checkpoint DIR ...] [--rounds 5] [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

import numpy as np  # noqa: E402

from edgecompress.architectures import architectures  # noqa: E402
from edgecompress.backends.tflite.buckets import signature_key  # noqa: E402
from runtimes.litert_runner import open_interpreter, prepare  # noqa: E402
from runtimes.ort_runner import ORT_DTYPES, open_session  # noqa: E402

from bench_timing import load_line, p50, timed_rounds  # noqa: E402
from tiny_families import TINY_CONFIGS, build_checkpoint, hand_export  # noqa: E402

SEQ_LEN = 128
CLASSIFICATION = "sequence-classification"
# Parity texts with labels, as `--data` asks (the tiny models are random: agreement, not accuracy, is scored).
LABELLED = [("a very good movie", "positive"), ("the worst film ever", "negative"), ("boring and dull", "negative")]
LABELLED += [("i loved it", "positive"), ("not bad at all, really", "positive"), ("an awful plot", "negative")]
TEXTS = [text for text, _ in LABELLED]


@dataclass
class Row:
    model: str
    task: str
    fused: dict = field(default_factory=dict)
    float_parity: dict = field(default_factory=dict)  # artifact -> max |diff| vs the torch reference
    int8_agreement: float | None = None
    sizes: dict = field(default_factory=dict)  # ours-int8 .onnx, ours .tflite, peer -> bytes
    p50: dict = field(default_factory=dict)  # ours-ort, ours-litert, peer-ort -> ms
    skipped: str = ""


def main() -> None:
    args = parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-families-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "texts.csv"
    data.write_text("text,label\n" + "".join(f'"{text}",{label}\n' for text, label in LABELLED * 4))
    load_before = os.getloadavg()
    rows = [bench_family(t, task, work, data, args) for t in args.families for task in tasks()]
    rows += [bench_checkpoint(Path(c), work, data, args) for c in args.checkpoint]
    print_table(rows, load_before, os.getloadavg(), args)
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in rows], indent=2))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(TINY_CONFIGS), help="model_types to benchmark")
    parser.add_argument("--checkpoint", nargs="*", default=[], help="real classifier checkpoint folders")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--work", help="folder for checkpoints and artifacts (default: a new temp folder)")
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--quick", action="store_true", help="smoke run: BERT only, 1 round of 5 runs")
    args = parser.parse_args()
    if args.quick:
        args.families, args.rounds, args.runs = ["bert"], 1, 5
    return args


def tasks() -> list[str]:
    """The tasks edgecompress.tasks registers (when that seam exists), else sequence classification."""
    try:
        from edgecompress import tasks as registry  # type: ignore[attr-defined]
    except ImportError:
        return [CLASSIFICATION]
    names = [str(name) for name in getattr(registry, "tasks", lambda: {})()]
    return [name for name in names if name == CLASSIFICATION] or [CLASSIFICATION]


def bench_family(model_type: str, task: str, work: Path, data: Path, args) -> Row:
    name = f"tiny {model_type}"
    if model_type not in architectures():
        return Row(name, task, skipped=f"model_type {model_type!r} is not registered in edgecompress.architectures")
    log(f"{name}: building the checkpoint")
    folder = build_checkpoint(model_type, work / model_type, classifier=task == CLASSIFICATION)
    return bench_checkpoint(folder, work, data, args, name=name, task=task)


def bench_checkpoint(folder: Path, work: Path, data: Path, args, *, name: str = "", task: str = CLASSIFICATION) -> Row:
    row = Row(name or folder.name, task)
    out = work / "out" / row.model.replace(" ", "-")
    reports = {}
    for quantize in ("none", "dynamic-int8"):
        report, why = export_ours(folder, data, out / quantize, quantize)
        if report is None:
            row.skipped = f"edgecompress export ({quantize}) failed: {why}"
            return row
        reports[quantize] = report
    fill_ours(row, reports)
    peer = out / "peer" / "model.int8.onnx"
    try:
        build_peer(folder, peer)
    except Exception as exc:  # a peer that cannot be built is a row that says why, not a failed benchmark
        row.skipped = f"peer export failed: {exc}"[:300]
        return row
    row.sizes["peer"] = peer.stat().st_size
    files = {
        "ours-ort": out / "dynamic-int8" / "pixel7" / "model.onnx",
        "ours-litert": out / "dynamic-int8" / "pixel7" / "model.tflite",
        "peer-ort": peer,
    }
    log(f"{row.model}: timing {args.rounds} rounds x {args.runs} runs")
    samples = timed_rounds(calls_for(files, folder), rounds=args.rounds, runs=args.runs)
    row.p50 = {key: p50(values) for key, values in samples.items()}
    return row


def export_ours(folder: Path, data: Path, out: Path, quantize: str) -> tuple[dict | None, str]:
    command = [sys.executable, "-c", "from edgecompress.cli import main; main()", "export", str(folder)]
    command += ["--device", "pixel7", "--data", str(data), "-o", str(out), "--quantize", quantize, "--no-measure"]
    log(f"{folder.name}: edgecompress export --quantize {quantize}")
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    report = out / "pixel7" / "report.json"
    if proc.returncode not in (0, 3) or not report.is_file():
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        return None, lines[-1] if lines else f"exit {proc.returncode}"
    return json.loads(report.read_text()), ""


def fill_ours(row: Row, reports: dict[str, dict]) -> None:
    fuse = next((p for p in reports["dynamic-int8"]["passes"] if p["name"] == "fuse_transformer"), None)
    row.fused = fuse["stats"].get("fused", {}) if fuse and fuse.get("stats") else {}
    for artifact in reports["none"]["artifacts"]:
        row.float_parity[artifact["file"]] = artifact["parity"]["max_abs_diff"]
    quantized = {a["file"]: a for a in reports["dynamic-int8"]["artifacts"]}
    row.int8_agreement = quantized["model.onnx"]["parity"]["prediction_agreement"]
    row.sizes["ours .onnx"] = quantized["model.onnx"]["size"]["value"]
    row.sizes["ours .tflite"] = quantized["model.tflite"]["size"]["value"]


def build_peer(folder: Path, path: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path.parent.mkdir(parents=True, exist_ok=True)
    float_path = path.with_suffix(".float.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hand_export(folder, float_path)
    graph = onnx.load(str(float_path))
    graph.ir_version = min(graph.ir_version, 10)  # onnxruntime 1.31 loads IR <= 13; onnx 1.23 may write 14
    quantize_dynamic(graph, str(path), per_channel=True, weight_type=QuantType.QInt8)
    float_path.unlink()


def calls_for(files: dict[str, Path], folder: Path) -> dict:
    """One run of a real text padded to SEQ_LEN per file, 1 thread, inputs prepared beforehand."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    row = {k: np.asarray(v) for k, v in tokenizer(TEXTS[:1], padding="max_length", max_length=SEQ_LEN).items()}
    row.setdefault("token_type_ids", np.zeros_like(row["input_ids"]))
    calls = {}
    for key, path in files.items():
        if path.suffix == ".onnx":
            session, _ = open_session(str(path), 1, "all")
            feeds = {m.name: row[m.name].astype(ORT_DTYPES[m.type]) for m in session.get_inputs()}
            calls[key] = lambda session=session, feeds=feeds: session.run(None, feeds)
        else:
            interpreter, _ = open_interpreter(str(path), 1, "xnnpack")
            prepare(interpreter, {d["name"]: d["shape"] for d in interpreter.get_input_details()})
            keys = list(interpreter.get_signature_list())  # a bucketed file: `seq_128` among its signatures
            runner = interpreter.get_signature_runner(signature_key(SEQ_LEN) if len(keys) > 1 else keys[0])
            details = runner.get_input_details()
            feeds = {name: row[name].astype(d["dtype"]) for name, d in details.items()}
            calls[key] = lambda runner=runner, feeds=feeds: runner(**feeds)
    return calls


def print_table(rows: list[Row], load_before, load_after, args) -> None:
    print(f"{load_line(load_before, load_after)}. {args.rounds} rounds x {args.runs} runs, seq {SEQ_LEN}, 1 thread.")
    print("Size ratio: int8 .onnx vs int8 .onnx; the .tflite (one signature per length bucket) is not compared.")
    print(
        "| model | task | fused | float parity (ORT / LiteRT) | int8 agreement | size ours/peer KB | "
        "p50 ms ours ORT / LiteRT / peer | peer/ours speed | peer/ours size |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.skipped:
            print(f"| {r.model} | {r.task} | skipped: {r.skipped} |")
            continue
        fused = ", ".join(f"{n} {op}" for op, n in sorted(r.fused.items()))
        parity = " / ".join(f"{r.float_parity.get(f, float('nan')):.1e}" for f in ("model.onnx", "model.tflite"))
        kb = {key: f"{value / 1e3:.0f}" for key, value in r.sizes.items()}
        sizes = f"{kb['ours .onnx']} (.tflite {kb['ours .tflite']}) / {kb['peer']}"
        times = f"{r.p50['ours-ort']:.3f} / {r.p50['ours-litert']:.3f} / {r.p50['peer-ort']:.3f}"
        speed = r.p50["peer-ort"] / r.p50["ours-ort"]
        size = r.sizes["peer"] / r.sizes["ours .onnx"]
        print(
            f"| {r.model} | {r.task} | {fused} | {parity} | {r.int8_agreement:.3f} | {sizes} | {times} | "
            f"{speed:.2f} {'met' if speed >= 1 else 'NOT met'} | {size:.2f} {'met' if size >= 1 else 'NOT met'} |"
        )


def log(message: str) -> None:
    print(f"[bench_families] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
