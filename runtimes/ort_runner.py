#!/usr/bin/env python3
"""Time an ONNX (.onnx) or ORT-format (.ort) model with onnxruntime and print one JSON result.

This script is pushed to phones and boards and run there as `python3 ort_runner.py MODEL ...`,
so it depends on the standard library, numpy and onnxruntime only, and keeps to Python 3.8
syntax and long-standing onnxruntime APIs. The host runs the very same file, which is what
makes host and device figures comparable.

Output (stdout, exactly one JSON object, schema "edgecompress.runner/1"):
  latency_ms  p10/p25/p50/p75/p90/p99 use the nearest-rank method on the sorted timed runs (see
              `nearest_rank`), so every percentile is a latency that was actually measured;
              mean/min/max are over the same runs; iqr (p75 - p25) and mad (median absolute
              deviation from p50) give the spread. Warm-up runs are excluded.
  load_ms     wall time to create the InferenceSession (parse + optimize + allocate).
  peak_rss_mb peak resident set size of the whole process in MiB (includes interpreter and
              imports), or null where the platform exposes no figure.
  baseline_rss_mb  resident set size in MiB just before the model is loaded (interpreter and
              runtime imported, nothing of the model read yet), or null: peak_rss_mb minus this is
              what loading and running the model added.
  output_digest  sha256 over the first timed run's outputs in name order: for each output a
              JSON header [name, dtype, shape] plus a newline, then its little-endian raw bytes.
              Two hosts report the same digest iff they produced bit-identical outputs.
  host        machine, system, cpu_count, and the 1-minute load average before and after the
              timed runs (load_1m_before/after; null where the platform has none).

Expected errors (missing file, not a model, bad --inputs) print one line
`ort_runner: error: ...` on stderr and exit 2.
"""

import argparse
import hashlib
import json
import os
import platform
import sys
import time
import zipfile

try:
    import numpy as np
    import onnxruntime as ort
except ImportError as _exc:  # a device without the runtime: main() reports it in one line
    np = ort = None
    _IMPORT_ERROR = _exc

SCHEMA = "edgecompress.runner/1"
PROG = "ort_runner"
OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}
# Small ids fit any vocabulary of 100+ tokens (trimmed vocabularies and test models too) and stay clear
# of the first special tokens; latency does not depend on which ids are looked up.
SYNTHETIC_ID_RANGE = (5, 100)


class RunnerError(Exception):
    """An expected failure the caller can fix: reported as one stderr line with exit 2, no traceback."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """Usage errors follow the same one-line contract as every other expected error."""
        self.exit(2, "%s: error: %s\n" % (PROG, message))


def _int_at_least(minimum):
    """An argparse type for counts, so nonsense like `--runs 0` fails before any model is loaded."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError("expected an integer, got %r" % text) from None
        if value < minimum:
            raise argparse.ArgumentTypeError("expected an integer >= %d, got %d" % (minimum, value))
        return value

    return parse


def parse_args(argv):
    """Every option has a default, so a bare `python3 ort_runner.py MODEL` works on a device."""
    parser = _Parser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("model", help="model file (.onnx or .ort)")
    parser.add_argument("--threads", type=_int_at_least(1), default=1, help="intra-op threads (default 1)")
    parser.add_argument("--runs", type=_int_at_least(1), default=100, help="timed runs (default 100)")
    parser.add_argument("--warmup", type=_int_at_least(0), default=10, help="untimed warm-up runs (default 10)")
    parser.add_argument("--inputs", help=".npz whose keys are the model's input names")
    parser.add_argument(
        "--seq-len",
        type=_int_at_least(1),
        default=128,
        help="sequence length for synthetic inputs' dynamic sequence axis (default 128)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for synthetic inputs (default 0)")
    parser.add_argument("--save-outputs", help="write the first timed run's outputs to this .npz")
    parser.add_argument(
        "--optimization",
        choices=sorted(OPTIMIZATION_LEVELS),
        default="all",
        help="onnxruntime graph optimization level (default all)",
    )
    parser.add_argument(
        "--keep-samples",
        action="store_true",
        help="also report every timed run as latency_samples_ms (for pooling across runs)",
    )
    return parser.parse_args(argv)


def open_session(path, threads, optimization):
    """Create a single-stream CPU session; returns (session, load_ms). ORT detects .ort files itself."""
    if not os.path.isfile(path):
        raise RunnerError("no such model file: %s" % path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization])
    options.log_severity_level = 4  # only fatal: we report errors ourselves in one line, and callers show stderr
    start = time.perf_counter()
    try:
        session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises several unrelated types for unreadable models
        raise RunnerError("cannot load %s as an ONNX or ORT model: %s" % (path, exc)) from exc
    return session, (time.perf_counter() - start) * 1000.0


def model_dtype(meta):
    """The numpy dtype name of a model input, or a clear error for types we cannot feed."""
    if meta.type not in ORT_DTYPES:
        raise RunnerError("input %r has unsupported type %s" % (meta.name, meta.type))
    return ORT_DTYPES[meta.type]


def load_inputs(path, metas):
    """Read feeds from an .npz whose keys must be exactly the model's input names, with matching dtypes."""
    try:
        archive = np.load(path, allow_pickle=False)
        if not hasattr(archive, "files"):
            raise ValueError("it holds a single array, not arrays keyed by input name")
        with archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise RunnerError("cannot read inputs %s as .npz: %s" % (path, exc)) from exc
    expected = [meta.name for meta in metas]
    missing = [name for name in expected if name not in arrays]
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        raise RunnerError(
            "inputs %s: keys %s do not match model inputs %s (missing %s, unexpected %s)"
            % (path, sorted(arrays), expected, missing, extra)
        )
    for meta in metas:
        dtype = model_dtype(meta)
        if arrays[meta.name].dtype.name != dtype:
            raise RunnerError(
                "inputs %s: %r has dtype %s, model expects %s" % (path, meta.name, arrays[meta.name].dtype.name, dtype)
            )
    return arrays


def concrete_shape(dims, seq_len):
    """Fill dynamic dims: a dim named like a sequence (or, unnamed, axis 1) gets seq_len, others 1 (batch)."""
    shape = []
    for axis, dim in enumerate(dims):
        if isinstance(dim, int) and dim > 0:
            shape.append(dim)
            continue
        name = str(dim or "").lower()
        is_seq = any(key in name for key in ("seq", "len", "token")) or (axis == 1 and "batch" not in name)
        shape.append(seq_len if is_seq else 1)
    return shape


def synthesize(meta, seq_len, rng):
    """A deterministic, realistic feed for one input, chosen by its name and dtype (BERT conventions)."""
    dtype = model_dtype(meta)
    shape = concrete_shape(meta.shape, seq_len)
    name = meta.name.lower()
    if "mask" in name or dtype == "bool":
        return np.ones(shape, dtype=dtype)
    if "token_type" in name or "segment" in name:
        return np.zeros(shape, dtype=dtype)
    if dtype.startswith("float"):
        return rng.standard_normal(shape).astype(dtype)
    if "position" in name:  # ids in SYNTHETIC_ID_RANGE would overflow a 512-row position table
        return np.broadcast_to(np.arange(shape[-1]), shape).astype(dtype)
    return rng.integers(SYNTHETIC_ID_RANGE[0], SYNTHETIC_ID_RANGE[1], size=shape).astype(dtype)


def build_feeds(args, metas):
    """Returns (feeds, source): from --inputs if given, else synthesized from the model's metadata."""
    if args.inputs:
        return load_inputs(args.inputs, metas), "file"
    rng = np.random.default_rng(args.seed)
    return {meta.name: synthesize(meta, args.seq_len, rng) for meta in metas}, "synthetic"


def time_runs(session, feeds, warmup, runs):
    """Returns (per-run latencies in ms, outputs of the first timed run by name)."""
    names = [meta.name for meta in session.get_outputs()]
    first = None
    latencies = []
    try:
        for _ in range(warmup):
            session.run(None, feeds)
        for _ in range(runs):
            start = time.perf_counter()
            outputs = session.run(None, feeds)
            latencies.append((time.perf_counter() - start) * 1000.0)
            if first is None:
                first = outputs
    except Exception as exc:  # shape/type mismatches in user-supplied inputs surface here
        raise RunnerError("inference failed: %s" % exc) from exc
    return latencies, {name: np.asarray(value) for name, value in zip(names, first)}


def nearest_rank(sorted_values, percent):
    """Nearest-rank percentile: the value at rank ceil(percent/100 * n) (1-based) of the sorted list.

    No interpolation, so the figure is always one real run. Integer arithmetic avoids float
    round-up (0.9 * 100 == 90.00000000000001 would pick rank 91 of 100).
    """
    rank = max(1, (percent * len(sorted_values) + 99) // 100)
    return sorted_values[rank - 1]


def latency_summary(latencies):
    """p10/p25/p50/p75/p90/p99 (nearest rank), mean, min, max, and the spread in ms; 4 decimals is 0.1 us,
    below timer noise. Spread: iqr = p75 - p25, and mad = the median absolute deviation from p50 (nearest
    rank too), both robust to the odd run a scheduler hiccup slows down."""
    ordered = sorted(latencies)
    summary = {"p%d" % p: nearest_rank(ordered, p) for p in (10, 25, 50, 75, 90, 99)}
    summary.update(mean=sum(ordered) / len(ordered), min=ordered[0], max=ordered[-1])
    summary["iqr"] = summary["p75"] - summary["p25"]
    summary["mad"] = nearest_rank(sorted(abs(value - summary["p50"]) for value in ordered), 50)
    return {key: round(value, 4) for key, value in summary.items()}


def output_digest(outputs):
    """sha256 over outputs in name order: JSON [name, dtype, shape] + newline, then little-endian bytes."""
    digest = hashlib.sha256()
    for name in sorted(outputs):
        array = outputs[name]
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)  # same digest on big-endian hosts
        digest.update(json.dumps([name, array.dtype.name, list(array.shape)]).encode("utf-8") + b"\n")
        digest.update(array.tobytes())
    return "sha256:" + digest.hexdigest()


def load_average():
    """The 1-minute load average (runnable tasks, averaged by the kernel), or None where the platform has none:
    read before and after the timed runs, so a reader can tell a busy host from a slow model."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def peak_rss_mb():
    """Peak RSS in MiB: /proc VmHWM (Linux, Android), else ru_maxrss (KiB on Linux, bytes on macOS/iOS).

    VmHWM first because Linux carries ru_maxrss across exec: a runner started by a parent that had grown large
    (an export holding its models) would report the parent's peak as its own; VmHWM starts afresh with the new
    program's memory."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024.0, 1)  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):  # no `resource` on Windows and some embedded Pythons
        return None
    if peak > 0:
        scale = 1024.0 * 1024.0 if sys.platform in ("darwin", "ios") else 1024.0
        return round(peak / scale, 1)
    return None


def resident_mb():
    """Resident set size now, in MiB, from /proc (Linux, Android); elsewhere the peak so far (ru_maxrss), which
    before the model loads is the interpreter and imports too; None where neither exists."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024.0, 1)  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    return peak_rss_mb()


def describe_arrays(arrays, source=None):
    """The {name: {shape, dtype[, source]}} blocks of the result, in the model's order."""
    described = {}
    for name, array in arrays.items():
        described[name] = {"shape": [int(d) for d in array.shape], "dtype": array.dtype.name}
        if source is not None:
            described[name]["source"] = source
    return described


def save_outputs(path, outputs):
    """Write to exactly `path` (np.savez would append .npz to other names)."""
    try:
        with open(path, "wb") as handle:
            np.savez(handle, **outputs)
    except OSError as exc:
        raise RunnerError("cannot write outputs to %s: %s" % (path, exc)) from exc


def run(args):
    """Load, feed, time and summarize one model; returns the JSON-ready result."""
    baseline = resident_mb()
    session, load_ms = open_session(args.model, args.threads, args.optimization)
    metas = session.get_inputs()
    feeds, source = build_feeds(args, metas)
    load_before = load_average()
    latencies, outputs = time_runs(session, feeds, args.warmup, args.runs)
    if args.save_outputs:
        save_outputs(args.save_outputs, outputs)
    result = {
        "schema": SCHEMA,
        "runner": PROG,
        "runtime": "onnxruntime",
        "runtime_version": ort.__version__,
        "artifact": os.path.basename(args.model),
        "artifact_bytes": os.path.getsize(args.model),
        "threads": args.threads,
        "runs": args.runs,
        "warmup": args.warmup,
        "optimization": args.optimization,
        "inputs": describe_arrays({meta.name: feeds[meta.name] for meta in metas}, source),
        "load_ms": round(load_ms, 4),
        "latency_ms": latency_summary(latencies),
        "peak_rss_mb": peak_rss_mb(),
        "baseline_rss_mb": baseline,
        "outputs": describe_arrays(outputs),
        "output_digest": output_digest(outputs),
        "host": {
            "machine": platform.machine(),
            "system": platform.system(),
            "cpu_count": os.cpu_count(),
            "load_1m_before": load_before,
            "load_1m_after": load_average(),
        },
        "python": platform.python_version(),
    }
    if args.keep_samples:
        result["latency_samples_ms"] = [round(ms, 4) for ms in latencies]
    return result


def main(argv=None):
    """Exit 0 with one JSON line on stdout, or exit 2 with one error line on stderr."""
    args = parse_args(argv)
    try:
        if ort is None:
            raise RunnerError("cannot import numpy/onnxruntime (%s); install them with pip" % _IMPORT_ERROR)
        result = run(args)
    except RunnerError as exc:
        sys.stderr.write("%s: error: %s\n" % (PROG, " ".join(str(exc).split())))
        return 2
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
