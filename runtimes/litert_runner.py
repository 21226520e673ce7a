#!/usr/bin/env python3
"""Time a TFLite (.tflite) model with LiteRT and print one JSON result.

This script is pushed to phones and boards and run there as `python3 litert_runner.py MODEL ...`,
so it depends on the standard library, numpy and one LiteRT interpreter only: `ai_edge_litert`
(runtime "litert") or else `tflite_runtime` (runtime "tflite_runtime"), whichever imports. It keeps to
Python 3.8 syntax and the long-standing `Interpreter` API. The host runs the very same file, and it
takes the same options and prints the same JSON contract as ort_runner.py, so figures compare.

Output (stdout, exactly one JSON object, schema "edgecompress.runner/1"):
  latency_ms  p10/p25/p50/p75/p90/p99 use the nearest-rank method on the sorted timed runs (see
              `nearest_rank`), so every percentile is a latency that was actually measured;
              mean/min/max are over the same runs; iqr (p75 - p25) and mad (median absolute
              deviation from p50) give the spread. Warm-up runs are excluded. A run is
              set inputs + invoke + read outputs, as a session.run() is for onnxruntime.
  load_ms     wall time to create the interpreter and allocate its tensors (this is when
              LiteRT applies the XNNPACK delegate and packs the weights).
  delegate    "xnnpack" (LiteRT's default CPU delegate, what an app gets) or "none"
              (LiteRT's own builtin kernels), chosen with --delegate.
  signature   the signature run, chosen with --signature (e.g. "seq_16" of a file with one
              signature per length bucket), or null: the primary subgraph through invoke(),
              what an app calling run() without a signature gets. Its subgraph is allocated
              on its first (warm-up) run, so load_ms is the same interpreter load either way.
  signatures  the model's signature keys, in file order.
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

Expected errors (missing file, not a model, bad --inputs, unknown --signature) print one line
`litert_runner: error: ...` on stderr and exit 2.
"""

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
import zipfile

try:
    import numpy as np

    try:
        import ai_edge_litert as _litert_package
        from ai_edge_litert import interpreter as litert

        RUNTIME = "litert"
    except ImportError:
        import tflite_runtime as _litert_package
        from tflite_runtime import interpreter as litert

        RUNTIME = "tflite_runtime"
except ImportError as _exc:  # a device without the runtime: main() reports it in one line
    np = litert = None
    _IMPORT_ERROR = _exc

SCHEMA = "edgecompress.runner/1"
PROG = "litert_runner"
DELEGATES = ("xnnpack", "none")
# Small ids fit any vocabulary of 100+ tokens (trimmed vocabularies and test models too) and stay clear
# of the first special tokens; latency does not depend on which ids are looked up (as ort_runner.py).
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
    """Every option has a default, so a bare `python3 litert_runner.py MODEL` works on a device."""
    parser = _Parser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("model", help="model file (.tflite)")
    parser.add_argument("--threads", type=_int_at_least(1), default=1, help="interpreter threads (default 1)")
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
        "--delegate",
        choices=DELEGATES,
        default="xnnpack",
        help="xnnpack: LiteRT's default CPU delegate; none: builtin kernels only (default xnnpack)",
    )
    parser.add_argument(
        "--signature", metavar="KEY", help="run this signature's runner instead of the primary subgraph (e.g. seq_16)"
    )
    parser.add_argument(
        "--keep-samples",
        action="store_true",
        help="also report every timed run as latency_samples_ms (for pooling across runs)",
    )
    return parser.parse_args(argv)


class _NativeStderr:
    """Collects what LiteRT's C++ side writes to file descriptor 2 ("INFO: Created TensorFlow Lite
    XNNPACK delegate for CPU."), so stderr keeps the one-line error contract."""

    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        self.capture = tempfile.TemporaryFile()
        os.dup2(self.capture.fileno(), 2)
        return self

    def __exit__(self, *exc_info):
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.capture.seek(0)
        self.text = " ".join(self.capture.read().decode("utf-8", "replace").split())
        self.capture.close()
        return False


def open_interpreter(path, threads, delegate):
    """Create the interpreter; returns (interpreter, create_ms). Tensors are allocated by `prepare`."""
    if not os.path.isfile(path):
        raise RunnerError("no such model file: %s" % path)
    resolver = (
        litert.OpResolverType.AUTO if delegate == "xnnpack" else litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    native = _NativeStderr()
    start = time.perf_counter()
    try:
        with native:
            interpreter = litert.Interpreter(
                model_path=path, num_threads=threads, experimental_op_resolver_type=resolver
            )
    except Exception as exc:  # LiteRT raises ValueError or RuntimeError for unreadable models
        raise RunnerError("cannot load %s as a TFLite model: %s %s" % (path, exc, native.text)) from exc
    return interpreter, (time.perf_counter() - start) * 1000.0


def prepare(interpreter, shapes):
    """Resize inputs with dynamic dims to the fed shapes, then allocate; returns the time it took in ms."""
    start = time.perf_counter()
    native = _NativeStderr()
    try:
        with native:
            for detail in interpreter.get_input_details():
                if list(detail["shape"]) != list(shapes[detail["name"]]):
                    interpreter.resize_tensor_input(detail["index"], list(shapes[detail["name"]]))
            interpreter.allocate_tensors()
    except Exception as exc:  # a fixed dim fed another size surfaces here
        raise RunnerError(
            "cannot prepare the model for inputs of shapes %s: %s %s" % (shapes, exc, native.text)
        ) from exc
    return (time.perf_counter() - start) * 1000.0


def input_dims(detail):
    """The input's dims with -1 for dynamic ones (the signature), falling back to its current shape."""
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    return [int(d) for d in dims]


def load_inputs(path, details):
    """Read feeds from an .npz whose keys must be exactly the model's input names, with matching dtypes
    and with every fixed dim matching the model."""
    try:
        archive = np.load(path, allow_pickle=False)
        if not hasattr(archive, "files"):
            raise ValueError("it holds a single array, not arrays keyed by input name")
        with archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise RunnerError("cannot read inputs %s as .npz: %s" % (path, exc)) from exc
    expected = [detail["name"] for detail in details]
    missing = [name for name in expected if name not in arrays]
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        raise RunnerError(
            "inputs %s: keys %s do not match model inputs %s (missing %s, unexpected %s)"
            % (path, sorted(arrays), expected, missing, extra)
        )
    for detail in details:
        array, dtype, dims = arrays[detail["name"]], np.dtype(detail["dtype"]).name, input_dims(detail)
        if array.dtype.name != dtype:
            raise RunnerError(
                "inputs %s: %r has dtype %s, model expects %s" % (path, detail["name"], array.dtype.name, dtype)
            )
        if len(array.shape) != len(dims) or any(d not in (-1, s) for d, s in zip(dims, array.shape)):
            raise RunnerError(
                "inputs %s: %r has shape %s, model expects %s (-1: any)"
                % (path, detail["name"], list(array.shape), dims)
            )
    return arrays


def concrete_shape(dims, seq_len):
    """Fill dynamic (-1) dims: axis 1 gets seq_len (the sequence axis of BERT inputs), others 1 (batch)."""
    return [d if d > 0 else (seq_len if axis == 1 else 1) for axis, d in enumerate(dims)]


def synthesize(detail, seq_len, rng):
    """A deterministic, realistic feed for one input, chosen by its name and dtype (BERT conventions)."""
    dtype = np.dtype(detail["dtype"]).name
    shape = concrete_shape(input_dims(detail), seq_len)
    name = detail["name"].lower()
    if "mask" in name or dtype == "bool":
        return np.ones(shape, dtype=dtype)
    if "token_type" in name or "segment" in name:
        return np.zeros(shape, dtype=dtype)
    if dtype.startswith("float"):
        return rng.standard_normal(shape).astype(dtype)
    if "position" in name:  # ids in SYNTHETIC_ID_RANGE would overflow a 512-row position table
        return np.broadcast_to(np.arange(shape[-1]), shape).astype(dtype)
    return rng.integers(SYNTHETIC_ID_RANGE[0], SYNTHETIC_ID_RANGE[1], size=shape).astype(dtype)


def build_feeds(args, details):
    """Returns (feeds, source): from --inputs if given, else synthesized from the model's metadata."""
    if args.inputs:
        return load_inputs(args.inputs, details), "file"
    rng = np.random.default_rng(args.seed)
    return {detail["name"]: synthesize(detail, args.seq_len, rng) for detail in details}, "synthetic"


def signature_keys(interpreter):
    """The model's signature keys in file order; none where the runtime predates signatures."""
    listing = getattr(interpreter, "get_signature_list", None)
    return list(listing()) if listing is not None else []


def check_signature(keys, key):
    """An unknown signature key is the user's error; the message names the known ones."""
    if key not in keys:
        raise RunnerError("unknown signature %r; the model has: %s" % (key, ", ".join(keys) or "no signatures"))


def signature_inputs(runner):
    """The signature's input details as a list, each named by its signature input name."""
    return [dict(detail, name=name) for name, detail in runner.get_input_details().items()]


def time_runs(interpreter, feeds, warmup, runs, runner=None):
    """Returns (per-run latencies in ms, outputs of the first timed run by name). With a signature
    `runner`, a run is one call of it (set inputs + invoke + read outputs of its subgraph)."""
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()

    def run_once():
        if runner is not None:
            return runner(**feeds)
        for detail in inputs:
            interpreter.set_tensor(detail["index"], feeds[detail["name"]])
        interpreter.invoke()
        return {detail["name"]: interpreter.get_tensor(detail["index"]) for detail in outputs}

    first = None
    latencies = []
    try:
        for _ in range(warmup):
            run_once()
        for _ in range(runs):
            start = time.perf_counter()
            result = run_once()
            latencies.append((time.perf_counter() - start) * 1000.0)
            if first is None:
                first = result
    except Exception as exc:  # LiteRT reports kernel failures as RuntimeError
        raise RunnerError("inference failed: %s" % exc) from exc
    return latencies, first


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
    interpreter, create_ms = open_interpreter(args.model, args.threads, args.delegate)
    keys = signature_keys(interpreter)
    runner = None
    if args.signature is None:
        details = interpreter.get_input_details()
        feeds, source = build_feeds(args, details)
        allocate_ms = prepare(interpreter, {name: feed.shape for name, feed in feeds.items()})
    else:
        check_signature(keys, args.signature)
        # the interpreter as it is (a runner holds the interpreter, which then refuses allocate_tensors)
        allocate_ms = prepare(interpreter, {d["name"]: d["shape"] for d in interpreter.get_input_details()})
        runner = interpreter.get_signature_runner(args.signature)
        details = signature_inputs(runner)
        feeds, source = build_feeds(args, details)
    load_before = load_average()
    latencies, outputs = time_runs(interpreter, feeds, args.warmup, args.runs, runner)
    if args.save_outputs:
        save_outputs(args.save_outputs, outputs)
    result = {
        "schema": SCHEMA,
        "runner": PROG,
        "runtime": RUNTIME,
        "runtime_version": getattr(_litert_package, "__version__", "unknown"),
        "artifact": os.path.basename(args.model),
        "artifact_bytes": os.path.getsize(args.model),
        "threads": args.threads,
        "runs": args.runs,
        "warmup": args.warmup,
        "delegate": args.delegate,
        "signature": args.signature,
        "signatures": keys,
        "inputs": describe_arrays({detail["name"]: feeds[detail["name"]] for detail in details}, source),
        "load_ms": round(create_ms + allocate_ms, 4),
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
        if litert is None:
            raise RunnerError(
                "cannot import numpy and ai_edge_litert or tflite_runtime (%s); install one with pip" % _IMPORT_ERROR
            )
        result = run(args)
    except RunnerError as exc:
        sys.stderr.write("%s: error: %s\n" % (PROG, " ".join(str(exc).split())))
        return 2
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
