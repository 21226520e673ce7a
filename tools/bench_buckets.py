"""Benchmark (issue 16): latency on real texts of length-bucketed artifacts, against padding and the peers.

Rotten Tomatoes test split, the teacher (tools/train_teacher.py) and any `--student DIR`, the default pixel7
recipe (dynamic int8), batch 1. Per model, six files:

  onnxruntime  ours bucketed     `edgecompress export --device pixel7` model.ort (symbolic sequence axis):
                                 each text at its own length, as its manifest tells the app (no padding)
               ours padded-128   the same export with one bucket [128] (today's artifact): every text at 128
               peer dynamic-axes Optimum-style: `torch.onnx.export` (TorchScript exporter, opset 14, dynamic
                                 batch and sequence axes, no edgecompress pass) of the transformers classifier,
                                 then `onnxruntime.quantization.quantize_dynamic` (QInt8, per channel, as
                                 tools/bench_quantize.py's peer): each text at its own exact length
  litert       ours bucketed     the export's model.tflite, one signature per bucket (`seq_16`, ...)
               ours padded-128   the single-bucket export's model.tflite (one signature, 128)
               peer litert-torch litert-torch's `.tflite` with its dynamic-range int8 recipe, one fixed shape 128
                                 (tools/peer_litert_torch.py, in its own environment, see below)

Both peers convert the same torch module (peer_litert_torch.load_classifier: eager attention). Texts longer
than 128 tokens are truncated to 128 for every file (the test split has none).

Latency, the same method for every file: in-process sessions opened exactly as the runners open them
(runtimes/ort_runner.py `open_session`, optimization "all"; runtimes/litert_runner.py `open_interpreter`,
XNNPACK, one signature runner per bucket), a run being one `session.run` / signature-runner call (set inputs,
run, read outputs), as in the runners. For each file and thread count, every distinct length the file
serves the test texts at (a bucket, 128, or each exact length) is timed on a real test text of that length,
plus length 128 (the padded figure). Timing goes in rounds: in each round every file in turn (the order
rotated per round) runs `--runs` times at each of its lengths, the lengths shuffled so that consecutive runs
change shape as real traffic does, so load from other processes hits all files alike. Real-text p50/p90:
every text takes all the runs at its length, each weighted 1/runs (the runs pooled and weighted by each
length's share of the texts, as the export report's real-text figure), nearest rank. Padded-128 p50: the
same file's runs at 128. The load average is printed beside the table: figures taken on a busy machine mean
little.

Accuracy on the test labels and agreement with the float torch model (edgecompress's intake of the
checkpoint, at 128 padded): every file on every test text (or `--texts`), each at the length it serves it
at, 2 threads. Size: file bytes; `.tflite` growth is bucketed vs single-bucket file.

Targets (ratios of the same run): onnxruntime, peer dynamic-axes p50 / ours bucketed p50 >= 1.3 at equal or
better accuracy; litert, ours padded-128 p50 / ours bucketed p50 >= 3 and peer litert-torch p50 / ours
bucketed p50 > 1; `.tflite` size growth <= 2%.

The peer environment (outside the repository; litert-torch pins its own converter and quantizer), as built
for tools/bench_tflite.py (~100 s from a cold pip cache):

    python3 -m venv /work/venvs/litert-torch
    /work/venvs/litert-torch/bin/pip install torch==2.13.0
    echo torch==2.13.0 > /tmp/peer-constraints.txt
    /work/venvs/litert-torch/bin/pip install -c /tmp/peer-constraints.txt litert-torch==0.10.0

Without it (or with `--peer-python` pointing nowhere) the litert-torch rows say why they are missing.

    python tools/bench_buckets.py --quick                      # smoke run: 300 texts, 1 round, 1 thread
    python tools/bench_buckets.py [--student DIR ...] [--threads 1 2] [--rounds 5] [--runs 30]
                                  [--work DIR [--reuse]] [--json FILE]

The default run (teacher only) takes about 10 minutes on 2 cores, most of it the two exports; each student
adds at most as much. `--work DIR --reuse` keeps the files for a rerun that only scores and times.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(TOOLS))

import numpy as np  # noqa: E402

from edgecompress.backends.tflite.buckets import signature_key  # noqa: E402
from edgecompress.devices import derived_profile_text, get_profile, load_profile  # noqa: E402
from edgecompress.intake.data import bucket_of, label_ids, load_dataset, token_counts, tokenize  # noqa: E402
from runtimes.litert_runner import open_interpreter, prepare, signature_inputs  # noqa: E402
from runtimes.ort_runner import ORT_DTYPES, open_session  # noqa: E402

import example_assets  # noqa: E402
import train_teacher  # noqa: E402
from bench_tflite import child_env, copy_head, feed_names, last_line  # noqa: E402
from bench_timing import fmt_load, weighted_rank  # noqa: E402

PEER_PYTHON = Path("/work/venvs/litert-torch/bin/python")
EXPORT_OK = (0, 3)  # 3: a budget missed; the artifacts are written all the same
EVAL_THREADS = 2
WARMUP = 2  # untimed runs per length when a file's sessions are new
BUCKETS = get_profile("pixel7").runtime.buckets
LONGEST = BUCKETS[-1]
# How each variant runs a text of n tokens: at its bucket, padded to the longest, or at its exact length. Our
# bucketed ONNX Runtime files keep a free sequence axis and the manifest tells the app to run each text at its
# own length (SERVES_ON overrides by runtime).
SERVES_ON = {("onnxruntime", "ours bucketed"): "exact"}
SERVES = {
    "ours bucketed": "bucket",
    "ours padded-128": "padded",
    "peer dynamic-axes": "exact",
    "peer litert-torch": "padded",
}
RUNTIMES = {
    "onnxruntime": ("ours bucketed", "ours padded-128", "peer dynamic-axes"),
    "litert": ("ours bucketed", "ours padded-128", "peer litert-torch"),
}


@dataclass
class Variant:
    """One file of one model, or why there is none."""

    model: str
    runtime: str
    name: str
    path: Path | None
    missing: str | None = None
    size_mb: float | None = None
    accuracy: float | None = None
    agreement: float | None = None
    samples: dict[int, dict[int, list[float]]] = field(default_factory=dict)  # threads -> length -> ms
    tokens: np.ndarray | None = None  # token counts of the scored texts (the real length distribution)

    def length(self, tokens: np.ndarray) -> np.ndarray:
        """The input length this file runs each text at."""
        serves = SERVES_ON.get((self.runtime, self.name), SERVES[self.name])
        if serves == "bucket":
            return bucket_of(tokens, BUCKETS)
        if serves == "padded":
            return np.full_like(tokens, LONGEST)
        return np.minimum(tokens, LONGEST)


@dataclass
class Texts:
    """The scored test texts: padded feeds (truncated to LONGEST), token counts, labels, the torch reference."""

    feeds: dict[str, np.ndarray]
    tokens: np.ndarray
    labels: np.ndarray
    reference: np.ndarray  # argmax of the float torch model


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-buckets-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        profiles = write_profiles(work)
        export_texts = work / "export-texts.csv"
        copy_head(args.data_dir / "test.csv", export_texts, args.export_texts)
        variants, facts = [], {}
        for model_dir in [args.teacher, *args.student]:
            found, fact = bench_model(work, model_dir, profiles, export_texts, args)
            variants, facts[fact["model"]] = variants + found, fact
    load_after = os.getloadavg()
    print_results(variants, facts, args, load_before, load_after)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "load_average": {"before": load_before, "after": load_after},
                    "texts": facts,
                    "threads": args.threads,
                    "rounds": args.rounds,
                    "runs": args.runs,
                    "rows": [row_json(v, args.threads) for v in variants],
                    "targets": targets(variants, args.threads),
                },
                indent=1,
            )
            + "\n"
        )


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", type=Path, default=None, help="default: tools/train_teacher.py's teacher")
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
        default=None,
        help="folder with test.csv (default: tools/example_assets.py's Rotten Tomatoes)",
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30, help="timed runs per file, length and round")
    parser.add_argument("--texts", type=int, default=None, help="the first N test texts (default all)")
    parser.add_argument("--export-texts", type=int, default=256, help="test texts each export verifies on")
    parser.add_argument("--peer-python", type=Path, default=PEER_PYTHON)
    parser.add_argument("--work", type=Path, help="keep exports here instead of a temporary folder")
    parser.add_argument("--reuse", action="store_true", help="reuse files already in --work")
    parser.add_argument("--json", type=Path, help="also write the rows and ratios as JSON here")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 300 texts, 1 thread, 1 round of 3 runs, exports verified on 64 texts",
    )
    args = parser.parse_args()
    if args.quick:
        args.texts, args.threads, args.rounds, args.runs, args.export_texts = 300, [1], 1, 3, 64
    if args.reuse and not args.work:
        parser.error("--reuse needs --work")
    args.teacher = args.teacher or train_teacher.teacher_dir()
    args.data_dir = args.data_dir or example_assets.rotten_tomatoes_dir()
    return args


def write_profiles(work: Path) -> dict[str, Path]:
    """pixel7 as shipped (its buckets) and with one bucket [128], both writing model.ort and model.tflite."""
    paths = {}
    for variant, buckets in (("ours bucketed", None), ("ours padded-128", [LONGEST])):
        name = "pixel7-buckets" if buckets is None else "pixel7-padded"
        path = work / f"{name}.toml"
        path.write_text(derived_profile_text("pixel7", name=name, buckets=buckets, artifacts=["ort", "tflite"]))
        served = load_profile(path).runtime.buckets
        if served != (tuple(buckets) if buckets else BUCKETS):
            raise SystemExit(f"could not derive {name} from pixel7.toml: buckets {served}")
        paths[variant] = path
    return paths


# --- producing the files ----------------------------------------------------------------------------


def bench_model(
    work: Path, model_dir: Path, profiles: dict[str, Path], export_texts: Path, args
) -> tuple[list[Variant], dict]:
    """The model's six files, scored and timed; and facts about its texts (lengths, float accuracy)."""
    model = "teacher" if model_dir == args.teacher else model_dir.name
    folder = work / model
    variants = []
    for name, profile in profiles.items():
        out = folder / "ours"
        paths = {"onnxruntime": out / profile.stem / "model.ort", "litert": out / profile.stem / "model.tflite"}
        error = None
        if not (args.reuse and all(p.is_file() for p in paths.values())):
            log(f"{model}: edgecompress export --device {profile.stem}")
            error = export_ours(model_dir, profile, export_texts, out)
        variants += [
            Variant(model, runtime, name, None if error else path, missing=error) for runtime, path in paths.items()
        ]
    variants.append(export_dynamic_axes(model, model_dir, folder / "peer-dynamic-axes.onnx", args))
    variants.append(convert_litert_torch(model, model_dir, folder / "peer-litert-torch", args))
    for v in variants:
        if v.path is not None:
            v.size_mb = v.path.stat().st_size / 1e6
    texts = prepare_texts(model_dir, args)
    for v in variants:
        v.tokens = texts.tokens
        if v.path is not None:
            score(v, texts)
    measure(variants, texts, args)
    per_bucket = bucket_of(texts.tokens, BUCKETS)
    return variants, {
        "model": model,
        "texts": len(texts.tokens),
        "tokens_mean": float(texts.tokens.mean()),
        "distinct_lengths": len(np.unique(np.minimum(texts.tokens, LONGEST))),
        "texts_per_bucket": {int(b): int(np.sum(per_bucket == b)) for b in BUCKETS},
        "truncated": int(np.sum(texts.tokens > LONGEST)),
        "float_torch_accuracy": float(np.mean(texts.reference == texts.labels)),
    }


def export_ours(model_dir: Path, profile: Path, export_texts: Path, out: Path) -> str | None:
    """The CLI from this checkout with the profile's own recipe; None on success, else why not."""
    cmd = [
        sys.executable,
        "-c",
        "from edgecompress.cli import main; main()",
        "export",
        str(model_dir),
        "--device",
        str(profile),
        "--data",
        str(export_texts),
        "-o",
        str(out),
        "--no-measure",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(REPO))
    log(
        f"  exit {proc.returncode} after {time.perf_counter() - start:.0f} s"
        + (f" ({last_line(proc.stdout)})" if proc.returncode else "")
    )
    if proc.returncode in EXPORT_OK:
        return None
    return f"export failed: {last_line(proc.stderr) or f'exit {proc.returncode}'}"


def export_dynamic_axes(model: str, model_dir: Path, path: Path, args) -> Variant:
    """The Optimum-style peer: TorchScript export with dynamic batch/sequence axes, then quantize_dynamic."""
    variant = Variant(model, "onnxruntime", "peer dynamic-axes", path)
    if args.reuse and path.is_file():
        return variant
    log(f"{model}: torch.onnx.export (dynamic axes) + quantize_dynamic")
    try:
        build_dynamic_axes(model_dir, path)
    except Exception as exc:  # a peer that cannot be built is a row that says why, not a failed benchmark
        return Variant(model, "onnxruntime", "peer dynamic-axes", None, missing=f"peer export failed: {exc}"[:300])
    return variant


def build_dynamic_axes(model_dir: Path, path: Path) -> None:
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from peer_litert_torch import load_classifier

    module, names = load_classifier(model_dir)
    ids = torch.full((1, 16), 1000, dtype=torch.int64)
    sample = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    axes = {0: "batch_size", 1: "sequence_length"}
    path.parent.mkdir(parents=True, exist_ok=True)
    float_path = path.with_suffix(".float.onnx")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(sample[n] for n in names),
            str(float_path),
            input_names=list(names),
            output_names=["logits"],
            opset_version=14,
            dynamo=False,
            dynamic_axes={**dict.fromkeys(names, axes), "logits": {0: "batch_size"}},
        )
    graph = onnx.load(str(float_path))
    graph.ir_version = min(graph.ir_version, 10)  # onnxruntime 1.31 loads IR <= 13; onnx 1.23 may write 14
    quantize_dynamic(graph, str(path), per_channel=True, weight_type=QuantType.QInt8)
    float_path.unlink()


def convert_litert_torch(model: str, model_dir: Path, folder: Path, args) -> Variant:
    """litert-torch's dynamic-range int8 `.tflite` at 128, via tools/peer_litert_torch.py in its environment."""
    path = folder / "int8.tflite"
    if not args.peer_python.is_file():
        why = f"peer environment missing: no {args.peer_python} (see this script's docstring)"
        return Variant(model, "litert", "peer litert-torch", None, missing=why)
    if not (args.reuse and path.is_file()):
        log(f"{model}: litert-torch convert (peer environment)")
        cmd = [
            str(args.peer_python),
            str(TOOLS / "peer_litert_torch.py"),
            str(model_dir),
            "--seq-len",
            str(LONGEST),
            "-o",
            str(folder),
            "--variants",
            "int8",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(None))
        if proc.returncode != 0:
            why = f"litert-torch failed: {last_line(proc.stderr) or f'exit {proc.returncode}'}"
            return Variant(model, "litert", "peer litert-torch", None, missing=why)
    return Variant(model, "litert", "peer litert-torch", path)


# --- running a file ---------------------------------------------------------------------------------


class Opened:
    """A file opened as its runner opens it (one ONNX Runtime session, or one LiteRT interpreter with a
    signature runner per length), ready to run inputs cut to any of `lengths`."""

    def __init__(self, v: Variant, threads: int, lengths):
        self.path = v.path
        if v.runtime == "onnxruntime":
            self.session, _ = open_session(str(v.path), threads, "all")
            self.dtypes = {meta.name: ORT_DTYPES[meta.type] for meta in self.session.get_inputs()}
            return
        self.session = None
        self.interpreter, _ = open_interpreter(str(v.path), threads, "xnnpack")
        prepare(self.interpreter, {d["name"]: d["shape"] for d in self.interpreter.get_input_details()})
        keys = list(self.interpreter.get_signature_list())
        self.runners = {
            length: self.interpreter.get_signature_runner(self.signature(keys, length)) for length in lengths
        }

    def signature(self, keys: list[str], length: int) -> str:
        """`seq_<length>` in a bucketed file, else the file's one signature (its fixed shape is checked)."""
        if signature_key(length) in keys:
            return signature_key(length)
        if len(keys) != 1:
            raise SystemExit(f"{self.path}: no signature for length {length} (has {keys})")
        return keys[0]

    def call(self, length: int, row: dict[str, np.ndarray]) -> Callable[[], object]:
        """A run of one text (`row`: batch 1, padded to LONGEST) cut to `length`: inputs prepared in the file's
        dtypes beforehand, so the call is set inputs + run + read outputs, as in the runners."""
        cut = {name: values[:, :length] for name, values in row.items()}
        if self.session is not None:
            feeds = {name: cut[name].astype(dtype) for name, dtype in self.dtypes.items()}
            return lambda: self.session.run(None, feeds)
        runner = self.runners[length]
        details = signature_inputs(runner)
        if any(list(d["shape"]) != [1, length] for d in details):
            raise SystemExit(
                f"{self.path}: signature inputs {[list(d['shape']) for d in details]}, expected [1, {length}]"
            )
        names = feed_names(details, cut)
        feeds = {d["name"]: cut[names[d["name"]]].astype(d["dtype"]) for d in details}
        return lambda: runner(**feeds)


def logits_of(output) -> np.ndarray:
    """The one output of a run, from either runtime."""
    values = list(output.values()) if isinstance(output, dict) else output
    return np.asarray(values[0]).reshape(-1)


def row_of(texts: Texts, i: int) -> dict[str, np.ndarray]:
    return {name: values[i : i + 1] for name, values in texts.feeds.items()}


# --- scoring ----------------------------------------------------------------------------------------


def prepare_texts(model_dir: Path, args) -> Texts:
    from edgecompress.intake.model import load_bundle

    bundle = load_bundle(model_dir)
    dataset = load_dataset(args.data_dir / "test.csv", require_labels=True)
    rows = slice(0, args.texts)
    texts = dataset.texts[rows]
    feeds = tokenize(bundle.tokenizer, texts, seq_len=LONGEST, input_names=bundle.input_names)
    tokens = token_counts(bundle.tokenizer, texts)
    labels = label_ids(dataset, bundle.labels)[rows]
    return Texts(feeds, tokens, labels, torch_logits(bundle, feeds).argmax(-1))


def torch_logits(bundle, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    torch.set_num_threads(EVAL_THREADS)
    with torch.no_grad():
        return np.concatenate(
            [
                bundle.module(*[torch.from_numpy(feeds[name][i : i + 32]) for name in bundle.input_names]).numpy()
                for i in range(0, len(feeds["input_ids"]), 32)
            ]
        )


def score(v: Variant, texts: Texts) -> None:
    """Accuracy and agreement: every text at the length the file serves it at, batch 1."""
    log(f"{v.model}: scoring {v.runtime} {v.name} on {len(texts.labels)} texts")
    lengths = v.length(texts.tokens)
    opened = Opened(v, EVAL_THREADS, sorted({int(n) for n in lengths}))
    predicted = np.array([logits_of(opened.call(int(n), row_of(texts, i))()).argmax() for i, n in enumerate(lengths)])
    v.accuracy = float(np.mean(predicted == texts.labels))
    v.agreement = float(np.mean(predicted == texts.reference))


# --- latency ----------------------------------------------------------------------------------------


def measure(variants: list[Variant], texts: Texts, args) -> None:
    """Every present file at each of its lengths, in rounds; see the module docstring."""
    present = [v for v in variants if v.path is not None]
    shuffle = random.Random(16)
    for threads in args.threads:
        calls = {id(v): open_calls(v, threads, texts) for v in present}
        for v in present:
            v.samples[threads] = {n: [] for n in calls[id(v)]}
        for round_index in range(args.rounds):
            log(f"{present[0].model}: threads {threads}, round {round_index + 1}/{args.rounds}")
            start = round_index % len(present)
            for v in present[start:] + present[:start]:
                schedule = [n for n in calls[id(v)] for _ in range(args.runs)]
                shuffle.shuffle(schedule)
                for n in schedule:
                    call = calls[id(v)][n]
                    begin = time.perf_counter()
                    call()
                    v.samples[threads][n].append((time.perf_counter() - begin) * 1e3)
        del calls  # close this thread count's sessions before the next opens its own


def open_calls(v: Variant, threads: int, texts: Texts) -> dict[int, Callable[[], object]]:
    """The file's runs at every length it serves the texts at, and at LONGEST, warmed up."""
    lengths = sorted({int(n) for n in v.length(texts.tokens)} | {LONGEST})
    opened = Opened(v, threads, lengths)
    calls = {n: opened.call(n, row_of(texts, representative(v, texts, n))) for n in lengths}
    for call in calls.values():
        for _ in range(WARMUP):
            call()
    return calls


def representative(v: Variant, texts: Texts, length: int) -> int:
    """A test text the file runs at `length`: the one of median token count among them (else the first)."""
    served = np.flatnonzero(v.length(texts.tokens) == length)
    if len(served) == 0:
        return 0
    return int(served[np.argsort(texts.tokens[served], kind="stable")[len(served) // 2]])


def real_text(v: Variant, threads: int) -> tuple[float, float]:
    """p50/p90 over the texts, each text taking every run at its length weighted 1/runs (nearest rank)."""
    lengths, counts = np.unique(v.length(v.tokens), return_counts=True)
    values, weights = [], []
    for n, count in zip(lengths, counts):
        runs = v.samples[threads][int(n)]
        values += runs
        weights += [count / len(runs)] * len(runs)
    return weighted_rank(values, weights, 50), weighted_rank(values, weights, 90)


def padded_p50(v: Variant, threads: int) -> float:
    runs = v.samples[threads][LONGEST]
    return weighted_rank(runs, [1.0] * len(runs), 50)


# --- output -----------------------------------------------------------------------------------------


def print_results(variants: list[Variant], facts: dict[str, dict], args, load_before, load_after) -> None:
    print(
        f"Load average (1, 5, 15 min): {fmt_load(load_before)} at start, {fmt_load(load_after)} at end; "
        f"{os.cpu_count()} CPUs. Rounds {args.rounds} x {args.runs} runs per file and length."
    )
    print()
    print(
        "| model | runtime | variant | threads | real-text p50 ms | real-text p90 ms | padded-128 p50 ms | "
        "accuracy | agreement | size MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    order = [(runtime, name) for runtime, names in RUNTIMES.items() for name in names]
    models = list(dict.fromkeys(v.model for v in variants))
    ordered = sorted(variants, key=lambda v: (models.index(v.model), order.index((v.runtime, v.name))))
    for threads in args.threads:
        for v in ordered:
            head = f"| {v.model} | {v.runtime} | {v.name} | {threads} |"
            if v.path is None:
                print(f"{head} missing: {v.missing} | | | | | |")
                continue
            p50, p90 = real_text(v, threads)
            print(
                f"{head} {p50:.2f} | {p90:.2f} | {padded_p50(v, threads):.2f} | {100 * v.accuracy:.2f}% | "
                f"{100 * v.agreement:.2f}% | {v.size_mb:.2f} |"
            )
    print()
    for f in facts.values():
        print(
            f"{f['model']}: {f['texts']} test texts, mean {f['tokens_mean']:.1f} tokens, {f['distinct_lengths']} "
            f"distinct lengths, per bucket {f['texts_per_bucket']}, {f['truncated']} truncated to {LONGEST}; "
            f"float torch accuracy {100 * f['float_torch_accuracy']:.2f}%"
        )
    print()
    print("| model | threads | ratio | value | target | met |")
    print("|---|---|---|---|---|---|")
    for t in targets(variants, args.threads):
        print(f"| {t['model']} | {t['threads'] or '-'} | {t['ratio']} | {t['value']} | {t['target']} | {t['met']} |")


def targets(variants: list[Variant], threads_list: list[int]) -> list[dict]:
    """The issue's targets as ratios of this run; a missing file makes its ratio 'n/a'."""
    rows = []
    for model in dict.fromkeys(v.model for v in variants):
        pick = {(v.runtime, v.name): v for v in variants if v.model == model and v.path is not None}
        for threads in threads_list:

            def p50(runtime: str, name: str, threads: int = threads, pick: dict = pick) -> float | None:
                v = pick.get((runtime, name))
                return real_text(v, threads)[0] if v else None

            ours, peer = pick.get(("onnxruntime", "ours bucketed")), pick.get(("onnxruntime", "peer dynamic-axes"))
            accurate = ours is not None and peer is not None and ours.accuracy >= peer.accuracy
            rows.append(
                target(
                    model,
                    threads,
                    "onnxruntime: peer dynamic-axes p50 / ours bucketed p50",
                    ratio(p50("onnxruntime", "peer dynamic-axes"), p50("onnxruntime", "ours bucketed")),
                    1.3,
                    ">= 1.30x at equal or better accuracy",
                    "" if accurate else " (accuracy below the peer's)",
                )
            )
            rows.append(
                target(
                    model,
                    threads,
                    "litert: ours padded-128 p50 / ours bucketed p50",
                    ratio(p50("litert", "ours padded-128"), p50("litert", "ours bucketed")),
                    3.0,
                    ">= 3.00x",
                )
            )
            rows.append(
                target(
                    model,
                    threads,
                    "litert: peer litert-torch p50 / ours bucketed p50",
                    ratio(p50("litert", "peer litert-torch"), p50("litert", "ours bucketed")),
                    1.0,
                    "> 1.00x",
                    strict=True,
                )
            )
        bucketed, single = pick.get(("litert", "ours bucketed")), pick.get(("litert", "ours padded-128"))
        growth = bucketed.size_mb / single.size_mb - 1 if bucketed and single else None
        rows.append(
            {
                "model": model,
                "threads": None,
                "ratio": ".tflite size: bucketed / single-bucket - 1",
                "value": "n/a" if growth is None else f"{100 * growth:+.2f}%",
                "target": "<= 2%",
                "met": "n/a" if growth is None else ("yes" if growth <= 0.02 else "no"),
            }
        )
    return rows


def ratio(peer: float | None, ours: float | None) -> float | None:
    return peer / ours if peer is not None and ours is not None else None


def target(
    model: str,
    threads: int,
    name: str,
    value: float | None,
    floor: float,
    goal: str,
    why_not: str = "",
    strict: bool = False,
) -> dict:
    """One ratio row: met when `value` reaches `floor` (exceeds it if `strict`) and nothing else says no."""
    if value is None:
        met = "n/a"
    else:
        reached = value > floor if strict else value >= floor
        met = "yes" if reached and not why_not else "no" + why_not
    return {
        "model": model,
        "threads": threads,
        "ratio": name,
        "value": "n/a" if value is None else f"{value:.2f}x",
        "target": goal,
        "met": met,
    }


def row_json(v: Variant, threads_list: list[int]) -> dict:
    row = {
        "model": v.model,
        "runtime": v.runtime,
        "variant": v.name,
        "serves": SERVES[v.name],
        "path": str(v.path) if v.path else None,
        "missing": v.missing,
        "size_mb": v.size_mb,
        "accuracy": v.accuracy,
        "agreement": v.agreement,
        "latency": {},
    }
    for threads in threads_list:
        if v.path is None:
            continue
        p50, p90 = real_text(v, threads)
        row["latency"][threads] = {
            "real_text_p50_ms": p50,
            "real_text_p90_ms": p90,
            "padded_128_p50_ms": padded_p50(v, threads),
            "per_length": {
                n: {"p50_ms": weighted_rank(s, [1.0] * len(s), 50), "runs": len(s)}
                for n, s in v.samples[threads].items()
            },
        }
    return row


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
