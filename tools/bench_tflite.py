"""Benchmark: our `.tflite` against litert-torch's, on the Rotten Tomatoes teacher and distilled students.

Variants per model and seq_len, all batch 1:
  ours float         `edgecompress export --recipe default` (fused float graph written as TFLite builtins)
  ours dynamic-int8  `--recipe dynamic-int8` (int8 weights, activations quantized at run time)
  ours int8          `--recipe int8` (static int8, calibrated on validation texts)
  peer float         litert-torch's `convert` of the same torch model (tools/peer_litert_torch.py)
  peer int8          the same with litert-torch's dynamic-range recipe `quant_recipes.full_dynamic_recipe()`
Our float is compared with the peer's float, both our int8 files with the peer's int8. Each export uses a
copy of the pixel7 profile with the seq_len set and `artifacts = ["tflite"]`; the export verifies on the
first `--export-texts` test texts (its own gate), this script then scores every file itself.

Latency: `runtimes/litert_runner.py` in a subprocess (LiteRT with its default XNNPACK delegate, what an app
gets), 1 and 2 threads, in interleaved rounds (every file once per round, so load from other processes on
this shared machine hits all alike); p50/p90 over all timed runs pooled. Input: the first test text,
tokenized and padded to seq_len, in each file's own input dtype (litert-torch narrows int64 inputs to
int32; ours keeps int64). Accuracy: every file on every test text with LiteRT (XNNPACK, batch 1) against the
labels; agreement: same argmax as the float torch model (edgecompress's intake of the checkpoint, the
module every export is verified against) on the same padded inputs. Op audit: `audit_tflite` (histogram,
nodes XNNPACK takes, partitions, what stays on LiteRT's own kernels) for every file.

The peer environment lives outside the repository (litert-torch pins its own converter and quantizer);
these commands built it (Python 3.11.7, ~100 s; litert-torch 0.10.0 accepts torch>=2.4,<2.15, so the same
local CPU wheel as ours works and no CUDA package is pulled):

    python3 -m venv /work/venvs/litert-torch
    /work/venvs/litert-torch/bin/pip install torch==2.13.0
    echo torch==2.13.0 > /tmp/peer-constraints.txt
    /work/venvs/litert-torch/bin/pip install -c /tmp/peer-constraints.txt litert-torch==0.10.0

which resolved to litert-torch 0.10.0, ai-edge-litert 2.3.0, ai-edge-quantizer 0.10.0, litert-converter
0.5.0, torchao 0.18.0, transformers 5.23.0, jax 0.10.2, numpy 2.4.6. Without that environment (or with
`--peer-python` pointing nowhere) the peer rows say why they are missing and ours are still measured.

    python tools/bench_tflite.py --quick
    python tools/bench_tflite.py [--seq-lens 64 128] [--threads 1 2] [--rounds 3] [--runs 30]
                                 [--student DIR ...] [--work DIR [--reuse]] [--json FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from edgecompress.devices import derived_profile_text, load_profile  # noqa: E402
from edgecompress.intake.data import label_ids, load_dataset, tokenize  # noqa: E402
from edgecompress.measure.runner import run_runner  # noqa: E402
from edgecompress.paths import cache_dir  # noqa: E402

PEER_PYTHON = Path("/work/venvs/litert-torch/bin/python")
OUR_RECIPES = {"ours float": "default", "ours dynamic-int8": "dynamic-int8", "ours int8": "int8"}
PEER_FOR = {"ours float": "peer float", "ours dynamic-int8": "peer int8", "ours int8": "peer int8"}
EXPORT_OK = (0, 3)  # 3: a budget missed; the artifacts are written all the same
EVAL_THREADS = 2


@dataclass
class Variant:
    """One `.tflite` file of one model, or why there is none."""

    model: str
    name: str
    path: Path | None
    missing: str | None = None
    size_mb: float | None = None
    accuracy: float | None = None
    agreement: float | None = None
    latency: dict[int, list[float]] = field(default_factory=dict)  # threads -> pooled samples (ms)
    audit: dict | None = None
    first_text: dict[str, np.ndarray] | None = None  # the latency input, by our input names, batch 1


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-tflite-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        inputs = prepare_texts(work, args)
        rows = []
        for seq_len in args.seq_lens:
            rows += bench_seq_len(work, seq_len, inputs, args)
    print_results(rows, args)
    if args.json:
        args.json.write_text(json.dumps([row_json(seq_len, v) for seq_len, v in rows], indent=1) + "\n")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", type=Path, default=cache_dir() / "teachers" / "minilm-rotten-tomatoes")
    parser.add_argument(
        "--student",
        type=Path,
        action="append",
        default=[],
        help="a student checkpoint folder (edgecompress distill); repeatable",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=cache_dir() / "data" / "rotten_tomatoes",
        help="folder with test.csv (scored) and validation.csv (int8 calibration)",
    )
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=30, help="timed runs per file per round")
    parser.add_argument("--texts", type=int, default=None, help="score on the first N test texts (default all)")
    parser.add_argument("--export-texts", type=int, default=256, help="test texts each export verifies on")
    parser.add_argument("--peer-python", type=Path, default=PEER_PYTHON)
    parser.add_argument("--work", type=Path, help="keep exports here instead of a temporary folder")
    parser.add_argument("--reuse", action="store_true", help="reuse .tflite files already in --work")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--quick", action="store_true", help="smoke run: seq_len 64, 64 texts, 1 round of 5 runs")
    args = parser.parse_args()
    if args.quick:
        args.seq_lens, args.texts, args.export_texts, args.rounds, args.runs = [64], 64, 64, 1, 5
    if args.reuse and not args.work:
        parser.error("--reuse needs --work")
    return args


def prepare_texts(work: Path, args) -> dict[str, Path]:
    """The scored test file, the export's verification subset, and the int8 calibration subset."""
    test = args.data_dir / "test.csv"
    out = {"test": test, "export": work / "export-texts.csv", "calibration": work / "calibration-texts.csv"}
    copy_head(test, out["export"], args.export_texts)
    copy_head(args.data_dir / "validation.csv", out["calibration"], 256)
    return out


def copy_head(source: Path, target: Path, rows: int) -> None:
    with source.open(newline="", encoding="utf-8") as reader, target.open("w", newline="", encoding="utf-8") as out:
        table = csv.reader(reader)
        writer = csv.writer(out)
        writer.writerow(next(table))
        for _, row in zip(range(rows), table):
            writer.writerow(row)


def bench_seq_len(work: Path, seq_len: int, inputs: dict[str, Path], args) -> list[tuple[int, Variant]]:
    profile = write_profile(work, seq_len)
    variants = []
    for model_dir in [args.teacher, *args.student]:
        model = model_dir.name if model_dir != args.teacher else "teacher"
        found = build_variants(work / f"seq{seq_len}" / model, model, model_dir, profile, seq_len, inputs, args)
        score(found, model_dir, seq_len, inputs["test"], args.texts)
        variants += found
    present = [v for v in variants if v.path]
    for v in present:
        v.size_mb = v.path.stat().st_size / 1e6
        v.audit = audit(v.path)
    measure_interleaved(present, seq_len, args)
    return [(seq_len, v) for v in variants]


def write_profile(work: Path, seq_len: int) -> Path:
    """pixel7 with another seq_len and only the `.tflite` artifact: the profile decides the fixed shapes."""
    text = derived_profile_text("pixel7", name=f"tflite{seq_len}", seq_len=seq_len, artifacts=["tflite"])
    path = work / f"tflite{seq_len}.toml"
    path.write_text(text)
    profile = load_profile(path)  # fails loudly if pixel7.toml changed shape under the substitutions
    if profile.runtime.seq_len != seq_len or profile.artifacts != ("tflite",):
        raise SystemExit(f"could not derive a seq_len {seq_len} tflite profile from pixel7.toml")
    return path


# --- producing the files ----------------------------------------------------------------------------


def build_variants(
    folder: Path, model: str, model_dir: Path, profile: Path, seq_len: int, inputs: dict[str, Path], args
) -> list[Variant]:
    variants = []
    for name, recipe in OUR_RECIPES.items():
        out = folder / recipe
        path = out / profile.stem / "model.tflite"
        if not (args.reuse and path.is_file()):
            log(f"seq_len {seq_len} {model}: edgecompress export --recipe {recipe}")
            error = export_ours(model_dir, profile, recipe, out, inputs)
            if error:
                variants.append(Variant(model, name, None, missing=f"export failed: {error}"))
                continue
        variants.append(Variant(model, name, path))
    return variants + convert_peer(folder / "peer", model, model_dir, seq_len, args)


def export_ours(model_dir: Path, profile: Path, recipe: str, out: Path, inputs: dict[str, Path]) -> str | None:
    """Run the CLI from this checkout; returns None on success, else the export's last stderr line."""
    cmd = [
        sys.executable,
        "-c",
        "from edgecompress.cli import main; main()",
        "export",
        str(model_dir),
        "--device",
        str(profile),
        "--recipe",
        recipe,
        "--data",
        str(inputs["export"]),
        "--calibration",
        str(inputs["calibration"]),
        "-o",
        str(out),
        "--no-measure",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(REPO))
    log(f"  exit {proc.returncode} after {time.perf_counter() - start:.0f} s")
    if proc.returncode in EXPORT_OK:
        return None
    return last_line(proc.stderr) or f"exit {proc.returncode}"


def convert_peer(folder: Path, model: str, model_dir: Path, seq_len: int, args) -> list[Variant]:
    """litert-torch's float and int8 files, via the conversion script in the peer environment."""
    names = {"float": "peer float", "int8": "peer int8"}
    paths = {kind: folder / f"{kind}.tflite" for kind in names}
    if not args.peer_python.is_file():
        why = f"peer environment missing: no {args.peer_python} (see this script's docstring)"
        return [Variant(model, name, None, missing=why) for name in names.values()]
    if not (args.reuse and all(p.is_file() for p in paths.values())):
        log(f"seq_len {seq_len} {model}: litert-torch convert (peer environment)")
        cmd = [
            str(args.peer_python),
            str(REPO / "tools" / "peer_litert_torch.py"),
            str(model_dir),
            "--seq-len",
            str(seq_len),
            "-o",
            str(folder),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(None))
        if proc.returncode != 0:
            why = f"litert-torch failed: {last_line(proc.stderr) or f'exit {proc.returncode}'}"
            return [Variant(model, name, None, missing=why) for name in names.values()]
        log(f"  converted in {json.loads(proc.stdout.strip().splitlines()[-1])['seconds']} s")
    return [Variant(model, names[kind], path) for kind, path in paths.items()]


def child_env(pythonpath: Path | None) -> dict[str, str]:
    """One thread per process (shared machine); the peer gets no PYTHONPATH into our environment."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return env


def last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


# --- scoring ----------------------------------------------------------------------------------------


def score(variants: list[Variant], model_dir: Path, seq_len: int, test_csv: Path, texts: int | None) -> None:
    """Accuracy against the labels and agreement with the float torch model, for every file present."""
    from edgecompress.intake.model import load_bundle

    bundle = load_bundle(model_dir)
    dataset = load_dataset(test_csv, require_labels=True)
    rows = slice(0, texts)
    feeds = {
        k: v[rows]
        for k, v in tokenize(bundle.tokenizer, dataset.texts, seq_len=seq_len, input_names=bundle.input_names).items()
    }
    labels = label_ids(dataset, bundle.labels)[rows]
    reference = torch_logits(bundle, feeds).argmax(-1)
    for v in variants:
        if v.path is None:
            continue
        v.first_text = {name: values[:1] for name, values in feeds.items()}
        log(f"seq_len {seq_len} {v.model}: scoring {v.name} on {len(labels)} texts")
        predicted = tflite_logits(v.path, feeds).argmax(-1)
        v.accuracy = float(np.mean(predicted == labels))
        v.agreement = float(np.mean(predicted == reference))


def torch_logits(bundle, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    torch.set_num_threads(1)
    with torch.no_grad():
        return np.concatenate(
            [
                bundle.module(*[torch.from_numpy(feeds[name][i : i + 32]) for name in bundle.input_names]).numpy()
                for i in range(0, len(feeds["input_ids"]), 32)
            ]
        )


def interpreter(path: Path, threads: int):
    from ai_edge_litert import interpreter as litert

    model = litert.Interpreter(model_path=str(path), num_threads=threads)
    model.allocate_tensors()
    return model


def feed_names(details: list[dict], feeds: dict[str, np.ndarray]) -> dict[str, str]:
    """Our tensors are named `input_ids`, litert-torch's `serving_default_input_ids`: match by suffix."""
    names = {}
    for detail in details:
        matches = [name for name in feeds if detail["name"].endswith(name)]
        if len(matches) != 1:
            raise SystemExit(f"cannot tell which input {detail['name']!r} is (feeds: {sorted(feeds)})")
        names[detail["name"]] = matches[0]
    return names


def tflite_logits(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Batch 1 over every row, each input cast to the file's own dtype; the file's one output."""
    model = interpreter(path, EVAL_THREADS)
    details = model.get_input_details()
    names = feed_names(details, feeds)
    output = model.get_output_details()[0]["index"]
    logits = []
    for row in range(len(feeds["input_ids"])):
        for detail in details:
            model.set_tensor(detail["index"], feeds[names[detail["name"]]][row : row + 1].astype(detail["dtype"]))
        model.invoke()
        logits.append(model.get_tensor(output)[0].copy())
    return np.stack(logits)


# --- latency and audit ------------------------------------------------------------------------------


def measure_interleaved(variants: list[Variant], seq_len: int, args) -> None:
    feeds = {v.path: file_feeds(v) for v in variants}
    for threads in args.threads:
        for round_index in range(args.rounds):
            log(f"seq_len {seq_len}: threads {threads}, round {round_index + 1}/{args.rounds}")
            for v in variants:
                result = run_runner(
                    v.path,
                    runner="litert_runner",
                    threads=threads,
                    runs=args.runs,
                    warmup=3,
                    inputs=feeds[v.path],
                    keep_samples=True,
                )
                v.latency.setdefault(threads, []).extend(result["latency_samples_ms"])


def file_feeds(v: Variant) -> dict[str, np.ndarray]:
    """The first test text for the file, keyed by the file's input names, in its input dtypes."""
    details = interpreter(v.path, 1).get_input_details()
    names = feed_names(details, v.first_text)
    return {d["name"]: v.first_text[names[d["name"]]].astype(d["dtype"]) for d in details}


def audit(path: Path) -> dict:
    from edgecompress.backends.tflite.artifact import audit_tflite

    found = audit_tflite(path)
    return {
        "nodes": found.nodes,
        "xnnpack_nodes": found.delegated_nodes,
        "partitions": found.partitions,
        "left_to_litert": found.left_to_litert,
        "op_histogram": found.op_histogram,
        "float_ops": found.float_ops,
    }


# --- output -----------------------------------------------------------------------------------------


def print_results(rows: list[tuple[int, Variant]], args) -> None:
    print(
        "| seq_len | threads | model | variant | size MB | p50 ms | p90 ms | size vs peer | "
        "speed vs peer (p50) | accuracy | agreement |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for threads in args.threads:
        for seq_len, v in rows:
            print(table_row(seq_len, threads, v, rows))
    print()
    print("| seq_len | model | variant | nodes | XNNPACK nodes | partitions | left to LiteRT | op histogram |")
    print("|---|---|---|---|---|---|---|---|")
    for seq_len, v in rows:
        if v.audit:
            a = v.audit
            left = ", ".join(f"{op} {n}" for op, n in a["left_to_litert"].items()) or "-"
            ops = ", ".join(f"{op} {n}" for op, n in sorted(a["op_histogram"].items(), key=lambda kv: -kv[1]))
            print(
                f"| {seq_len} | {v.model} | {v.name} | {a['nodes']} | {a['xnnpack_nodes']} | {a['partitions']} "
                f"| {left} | {ops} |"
            )


def table_row(seq_len: int, threads: int, v: Variant, rows: list[tuple[int, Variant]]) -> str:
    head = f"| {seq_len} | {threads} | {v.model} | {v.name} |"
    if v.path is None:
        return f"{head} missing: {v.missing} | | | | | | |"
    p50, p90 = percentile(v.latency[threads], 50), percentile(v.latency[threads], 90)
    peer = next(
        (
            p
            for s, p in rows
            if s == seq_len and p.model == v.model and p.name == PEER_FOR.get(v.name) and p.path is not None
        ),
        None,
    )
    size_ratio = f"{v.size_mb / peer.size_mb:.2f}x" if peer else "-"
    speed = f"{percentile(peer.latency[threads], 50) / p50:.2f}x" if peer else "-"
    return (
        f"{head} {v.size_mb:.2f} | {p50:.2f} | {p90:.2f} | {size_ratio} | {speed} | "
        f"{100 * v.accuracy:.2f}% | {100 * v.agreement:.2f}% |"
    )


def percentile(samples: list[float], q: int) -> float:
    return float(np.percentile(samples, q))


def row_json(seq_len: int, v: Variant) -> dict:
    row = asdict(v)
    del row["first_text"]
    row["path"] = str(v.path) if v.path else None
    row["seq_len"] = seq_len
    row["latency"] = {
        threads: {"p50": percentile(s, 50), "p90": percentile(s, 90), "runs": len(s)}
        for threads, s in v.latency.items()
    }
    return row


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
