"""LiteRT (TFLite) backend: `model.tflite`, written from the same final ONNX graph as `model.onnx`.

Android apps ship LiteRT, and converting from torch a second time would ship a different model, so the
flatbuffer is written directly from the rewritten ONNX graph (`tflite_lower`), builtins only. The file is
verified like every artifact: the `litert` executor runs it with LiteRT's default CPU setup (XNNPACK
delegate on), which is what an app gets from `Interpreter(model, numThreads)`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecompress.backends import Artifact
from edgecompress.backends.tflite.writer import litert
from edgecompress.errors import InternalError

log = logging.getLogger(__name__)

TFLITE_NAME = "model.tflite"
RUNTIME = "litert"


def emit_tflite(model, out_dir: Path, kinds: tuple[str, ...]) -> list[Artifact]:
    return [_write_tflite(model, out_dir, exact_dynamic_int8=False)]


def emit_exact_tflite(model, out_dir: Path) -> Artifact:
    """Every run-time int8 activation on ONNX Runtime's per-tensor grid (guard columns on every hybrid
    FULLY_CONNECTED): the same integers as the ONNX Runtime file, at 10-17% more time on the MiniLM teacher."""
    return _write_tflite(model, out_dir, exact_dynamic_int8=True)


def _write_tflite(model, out_dir: Path, *, exact_dynamic_int8: bool) -> Artifact:
    from edgecompress.backends.tflite.lowering import lower_to_tflite

    path = out_dir / TFLITE_NAME
    path.write_bytes(lower_to_tflite(model, exact_dynamic_int8=exact_dynamic_int8))
    return Artifact("tflite", path, RUNTIME)


def run_tflite_artifact(path: Path, feeds, *, output_name: str, threads: int = 2, progress=None) -> np.ndarray:
    """Run the `.tflite` file in LiteRT on all rows, in batches of the model's fixed batch (the last padded)."""
    interpreter = load_interpreter(path, threads=threads)
    inputs = interpreter.get_input_details()
    output = _output_detail(interpreter, output_name, path)
    batch = int(inputs[0]["shape"][0])
    rows = len(next(iter(feeds.values())))
    outputs = []
    for start in range(0, rows, batch):
        real = min(batch, rows - start)
        for detail in inputs:
            chunk = _pad_rows(feeds[detail["name"]][start:start + batch], batch)
            interpreter.set_tensor(detail["index"], chunk.astype(detail["dtype"], copy=False))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(output["index"])[:real].copy())
        if progress:
            progress(start + real, rows)
    return np.concatenate(outputs).astype(np.float32)


def load_interpreter(path: Path | str, *, threads: int, delegate: bool = True):
    """An allocated LiteRT interpreter; `delegate=False` runs LiteRT's own kernels without XNNPACK.

    LiteRT's C++ side logs to the process's stderr ("Created TensorFlow Lite XNNPACK delegate"); that
    is captured and logged here, so it cannot break the CLI's progress lines.
    """
    api = litert("interpreter")
    resolver = api.OpResolverType.AUTO if delegate else api.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        with _native_stderr() as lines:
            interpreter = api.Interpreter(model_path=str(path), num_threads=threads,
                                          experimental_op_resolver_type=resolver)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        said = f" (LiteRT said: {' '.join(lines)})" if lines else ""
        raise InternalError(f"LiteRT cannot load {Path(path).name}: {exc}{said}") from exc
    for line in lines:
        log.debug("LiteRT: %s", line)
    return interpreter


def litert_version() -> str:
    from importlib.metadata import version

    return version("ai-edge-litert")


def minimum_version(kind: str, opset: int | None) -> dict:
    """The LiteRT release an app needs for this file, and why."""
    return {"ai-edge-litert": litert_version(),
            "why": "the LiteRT release this file was verified with; builtin op versions are written as 1 "
                   "(BROADCAST_TO 2), so older runtimes fail at load rather than compute differently"}


def _output_detail(interpreter, output_name: str, path: Path) -> dict:
    details = {d["name"]: d for d in interpreter.get_output_details()}
    if output_name not in details:
        raise InternalError(f"{Path(path).name} has no output '{output_name}' (outputs: {sorted(details)})")
    return details[output_name]


def _pad_rows(values: np.ndarray, rows: int) -> np.ndarray:
    """Fill a short last batch by repeating its last row; the extra outputs are dropped."""
    return np.pad(values, [(0, rows - len(values))] + [(0, 0)] * (values.ndim - 1), mode="edge")


@contextlib.contextmanager
def _native_stderr():
    """Collect what native code writes to file descriptor 2 during the block."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines.extend(capture.read().decode("utf-8", "replace").splitlines())


# --- audit -------------------------------------------------------------------------------------------

DELEGATION_METHOD = ("static, from LiteRT {version} on the host: the nodes inside each XNNPACK DELEGATE node, "
                     "found by walking back from the partition's outputs to its inputs in the interpreter with "
                     "the default delegate applied (op resolver AUTO), against the node list without it "
                     "(BUILTIN_WITHOUT_DEFAULT_DELEGATES); XNNPACK takes nodes by op type and parameters, not "
                     "by host CPU, so the split holds on Arm phones")


@dataclass(frozen=True)
class TFLiteAudit:
    """What a `.tflite` contains and where LiteRT runs it."""

    op_histogram: dict[str, int]  # builtin -> nodes
    float_ops: list[str]  # builtins computing in float: a float32 result and no int8/uint8 operand
    nodes: int
    delegated_nodes: int  # nodes XNNPACK runs
    partitions: int  # XNNPACK subgraphs; each boundary costs a hand-over between kernels
    left_to_litert: dict[str, int]  # builtin -> nodes LiteRT's own kernels run
    method: str


def audit_for_report(path: Path) -> dict:
    """The audit as report fields: histogram and float ops from the file, plus XNNPACK delegation."""
    from edgecompress.backends.tflite.writer import describe_weight_storage, weight_storage

    audit = audit_tflite(path)
    storage = weight_storage(Path(path).read_bytes())  # e.g. 4-bit blocks stored as INT8 say so here
    return {"op_histogram": audit.op_histogram, "float_ops": audit.float_ops, "weight_storage": storage,
            "method": f"{audit.method}; {describe_weight_storage(storage)} (read from the file)",
            "delegation": {"nodes": audit.nodes, "delegated_nodes": audit.delegated_nodes,
                           "partitions": audit.partitions, "left_to_litert": audit.left_to_litert}}


def audit_tflite(path: Path | str) -> TFLiteAudit:
    """Op histogram, float ops and XNNPACK delegation of a `.tflite` file, from LiteRT itself."""
    plain = load_interpreter(path, threads=1, delegate=False)._get_ops_details()
    delegated = load_interpreter(path, threads=1, delegate=True)._get_ops_details()
    delegates = [op for op in delegated[len(plain):] if op["op_name"] == "DELEGATE"]
    taken = _delegated_nodes(delegated[:len(plain)], delegates)
    return TFLiteAudit(op_histogram=dict(sorted(Counter(op["op_name"] for op in plain).items())),
                       float_ops=sorted({op["op_name"] for op in plain if _computes_in_float(op)}),
                       nodes=len(plain), delegated_nodes=len(taken), partitions=len(delegates),
                       left_to_litert=dict(sorted(Counter(op["op_name"] for op in plain
                                                          if op["index"] not in taken).items())),
                       method=DELEGATION_METHOD.format(version=litert_version()))


def _computes_in_float(op: dict) -> bool:
    """A float result from float operands only: DEQUANTIZE and hybrid int8 FULLY_CONNECTED do not count."""
    return any(t is np.float32 for t in op["result_types"]) and \
        not any(t in (np.int8, np.uint8) for t in op["operand_types"])


def _delegated_nodes(nodes: list[dict], delegates: list[dict]) -> set[int]:
    """A DELEGATE node lists its partition's boundary tensors; the partition is every node reached walking
    back from the producers of its outputs without crossing its inputs."""
    producer = {int(t): op["index"] for op in nodes for t in op["outputs"]}
    by_index = {op["index"]: op for op in nodes}
    taken: set[int] = set()
    for delegate in delegates:
        boundary = {int(t) for t in delegate["inputs"]}
        pending = [producer[int(t)] for t in delegate["outputs"] if int(t) in producer]
        while pending:
            index = pending.pop()
            if index in taken:
                continue
            taken.add(index)
            pending += [producer[int(t)] for t in by_index[index]["inputs"]
                        if int(t) >= 0 and int(t) not in boundary and int(t) in producer]
    return taken
