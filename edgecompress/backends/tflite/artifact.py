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


def emit_tflite(model, out_dir: Path, kinds: tuple[str, ...], buckets: tuple[int, ...] = ()) -> list[Artifact]:
    return [_write_tflite(model, out_dir, buckets, exact_dynamic_int8=False)]


def emit_exact_tflite(model, out_dir: Path, buckets: tuple[int, ...] = ()) -> Artifact:
    """Every run-time int8 activation on ONNX Runtime's per-tensor grid (guard columns on every hybrid
    FULLY_CONNECTED): the same integers as the ONNX Runtime file, at 10-17% more time on the MiniLM teacher."""
    return _write_tflite(model, out_dir, buckets, exact_dynamic_int8=True)


def _write_tflite(model, out_dir: Path, buckets: tuple[int, ...], *, exact_dynamic_int8: bool) -> Artifact:
    """One fixed-shape graph: one subgraph. Several length buckets: the graph's symbolic sequence axis fixed to
    each (rewrite.specialize), one signature per bucket over one stored set of weights (buckets.py)."""
    from edgecompress.backends.tflite.buckets import lower_to_tflite_buckets
    from edgecompress.backends.tflite.lowering import lower_to_tflite

    path = out_dir / TFLITE_NAME
    if len(buckets) > 1:
        from edgecompress.rewrite import specialize

        graphs = {length: specialize(model, length) for length in buckets}
        path.write_bytes(lower_to_tflite_buckets(graphs, exact_dynamic_int8=exact_dynamic_int8))
    else:
        path.write_bytes(lower_to_tflite(model, exact_dynamic_int8=exact_dynamic_int8))
    return Artifact("tflite", path, RUNTIME)


def bucket_signature(length: int) -> str:
    """The signature a bucketed file serves `length`-token inputs with (imports the writer side only when asked)."""
    from edgecompress.backends.tflite.buckets import signature_key

    return signature_key(length)


def run_tflite_artifact(
    path: Path,
    feeds,
    *,
    output_name: str,
    threads: int = 2,
    progress=None,
    signature: str | None = None,
    length: int | None = None,
) -> np.ndarray:
    """Run the `.tflite` file in LiteRT on all rows, in batches of the model's fixed batch (the last padded).

    Without `signature` the primary subgraph runs (`invoke()`, what an app without signatures gets); with it,
    that signature's runner (e.g. "seq_16" of a bucketed file), fed by its input names. `length` names the
    signature of that length bucket (the executor contract every backend shares).
    """
    if length is not None:
        signature = bucket_signature(length)
    interpreter = load_interpreter(path, threads=threads)
    if signature is not None:
        return _run_signature(interpreter, path, feeds, output_name, signature, progress)
    inputs = interpreter.get_input_details()
    output = _output_detail(interpreter, output_name, path)
    batch = int(inputs[0]["shape"][0])
    rows = len(next(iter(feeds.values())))
    outputs = []
    for start in range(0, rows, batch):
        real = min(batch, rows - start)
        for detail in inputs:
            chunk = _pad_rows(feeds[detail["name"]][start : start + batch], batch)
            interpreter.set_tensor(detail["index"], chunk.astype(detail["dtype"], copy=False))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(output["index"])[:real].copy())
        if progress:
            progress(start + real, rows)
    return np.concatenate(outputs).astype(np.float32)


def _run_signature(interpreter, path: Path, feeds, output_name: str, key: str, progress) -> np.ndarray:
    runner = signature_runner(interpreter, key, path)
    inputs = runner.get_input_details()  # signature input name -> tensor details
    if output_name not in runner.get_output_details():
        raise InternalError(
            f"{Path(path).name} signature '{key}' has no output '{output_name}' "
            f"(outputs: {sorted(runner.get_output_details())})"
        )
    batch = int(next(iter(inputs.values()))["shape"][0])
    rows = len(next(iter(feeds.values())))
    outputs = []
    for start in range(0, rows, batch):
        real = min(batch, rows - start)
        chunk = {
            name: _pad_rows(feeds[name][start : start + batch], batch).astype(detail["dtype"], copy=False)
            for name, detail in inputs.items()
        }
        outputs.append(runner(**chunk)[output_name][:real].copy())
        if progress:
            progress(start + real, rows)
    return np.concatenate(outputs).astype(np.float32)


def signature_runner(interpreter, key: str, path: Path | str):
    """LiteRT's runner for signature `key`; a key the file does not have names the ones it has."""
    keys = list(interpreter.get_signature_list())
    if key not in keys:
        raise InternalError(f"{Path(path).name} has no signature '{key}' (signatures: {', '.join(keys) or 'none'})")
    return interpreter.get_signature_runner(key)


def load_interpreter(path: Path | str, *, threads: int, delegate: bool = True):
    """An allocated LiteRT interpreter; `delegate=False` runs LiteRT's own kernels without XNNPACK.

    LiteRT's C++ side logs to the process's stderr ("Created TensorFlow Lite XNNPACK delegate"); that
    is captured and logged here, so it cannot break the CLI's progress lines.
    """
    api = litert("interpreter")
    resolver = api.OpResolverType.AUTO if delegate else api.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        with _native_stderr() as lines:
            interpreter = api.Interpreter(
                model_path=str(path), num_threads=threads, experimental_op_resolver_type=resolver
            )
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
    return {
        "ai-edge-litert": litert_version(),
        "why": "the LiteRT release this file was verified with; builtin op versions are written as 1 "
        "(BROADCAST_TO 2), so older runtimes fail at load rather than compute differently",
    }


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

DELEGATION_METHOD = (
    "static, from LiteRT {version} on the host: the nodes inside each XNNPACK DELEGATE node, "
    "found by walking back from the partition's outputs to its inputs in the interpreter with "
    "the default delegate applied (op resolver AUTO), against the node list without it "
    "(BUILTIN_WITHOUT_DEFAULT_DELEGATES); XNNPACK takes nodes by op type and parameters, not "
    "by host CPU, so the split holds on Arm phones"
)


@dataclass(frozen=True)
class SignatureAudit:
    """One signature's subgraph: its size and where LiteRT runs it."""

    key: str
    subgraph: int
    nodes: int
    delegated_nodes: int
    partitions: int
    own_weight_bytes: int  # constant bytes no other subgraph reads (a bucket's position rows, shape vectors)


@dataclass(frozen=True)
class TFLiteAudit:
    """What a `.tflite` contains and where LiteRT runs it; the op figures are the primary subgraph's."""

    op_histogram: dict[str, int]  # builtin -> nodes
    float_ops: list[str]  # builtins computing in float: a float32 result and no int8/uint8 operand
    # "<builtin> <first output>" of each float-computing node between two integer ones (see `float_nodes_inside`)
    float_ops_inside: list[str]
    nodes: int
    delegated_nodes: int  # nodes XNNPACK runs
    partitions: int  # XNNPACK subgraphs; each boundary costs a hand-over between kernels
    left_to_litert: dict[str, int]  # builtin -> nodes LiteRT's own kernels run
    method: str
    signatures: tuple[SignatureAudit, ...] = ()  # in subgraph order; several in a bucketed file
    shared_weight_bytes: int = 0  # constant bytes read by more than one subgraph


def audit_for_report(path: Path) -> dict:
    """The audit as report fields: histogram and float ops from the file, plus XNNPACK delegation; a file with
    several signatures adds each one's figures and the weight bytes they share (one signature: as before)."""
    from edgecompress.backends.tflite.writer import describe_weight_storage, weight_storage

    audit = audit_tflite(path)
    storage = weight_storage(Path(path).read_bytes())  # e.g. 4-bit blocks stored as INT8 say so here
    fields = {
        "op_histogram": audit.op_histogram,
        "float_ops": audit.float_ops,
        "float_ops_inside": audit.float_ops_inside,
        "weight_storage": storage,
        "method": f"{audit.method}; {describe_weight_storage(storage)} (read from the file)",
        "delegation": {
            "nodes": audit.nodes,
            "delegated_nodes": audit.delegated_nodes,
            "partitions": audit.partitions,
            "left_to_litert": audit.left_to_litert,
        },
    }
    if len(audit.signatures) > 1:
        fields["signatures"] = {
            sig.key: {
                "subgraph": sig.subgraph,
                "nodes": sig.nodes,
                "delegated_nodes": sig.delegated_nodes,
                "partitions": sig.partitions,
                "own_weight_bytes": sig.own_weight_bytes,
            }
            for sig in audit.signatures
        }
        fields["shared_weight_bytes"] = audit.shared_weight_bytes
    return fields


def audit_tflite(path: Path | str) -> TFLiteAudit:
    """Op histogram, float ops and XNNPACK delegation of a `.tflite` file, from LiteRT itself; every other
    signature's subgraph is audited alone (`writer.subgraph_alone`), since LiteRT lists subgraph 0 only."""
    from edgecompress.backends.tflite.writer import weight_sharing

    plain, delegates, taken = _delegation(path)
    data = Path(path).read_bytes()
    sharing = weight_sharing(data)
    signatures = []
    for key, subgraph in _signature_subgraphs(data):
        nodes, partitions, delegated = len(plain), len(delegates), len(taken)
        if subgraph != 0:
            nodes, partitions, delegated = _other_subgraph(data, subgraph)
        signatures.append(SignatureAudit(key, subgraph, nodes, delegated, partitions, sharing["own"][subgraph]))
    return TFLiteAudit(
        op_histogram=dict(sorted(Counter(op["op_name"] for op in plain).items())),
        float_ops=sorted({op["op_name"] for op in plain if _computes_in_float(op)}),
        float_ops_inside=float_nodes_inside(plain),
        nodes=len(plain),
        delegated_nodes=len(taken),
        partitions=len(delegates),
        left_to_litert=dict(sorted(Counter(op["op_name"] for op in plain if op["index"] not in taken).items())),
        method=DELEGATION_METHOD.format(version=litert_version()),
        signatures=tuple(signatures),
        shared_weight_bytes=sharing["shared"],
    )


def _delegation(path: Path | str) -> tuple[list[dict], list[dict], set[int]]:
    """Subgraph 0's nodes without delegation, the XNNPACK DELEGATE nodes, and the node indices they took."""
    plain = load_interpreter(path, threads=1, delegate=False)._get_ops_details()
    delegated = load_interpreter(path, threads=1, delegate=True)._get_ops_details()
    delegates = [op for op in delegated[len(plain) :] if op["op_name"] == "DELEGATE"]
    return plain, delegates, _delegated_nodes(delegated[: len(plain)], delegates)


def _other_subgraph(data: bytes, subgraph: int) -> tuple[int, int, int]:
    """(nodes, partitions, delegated nodes) of a non-primary subgraph, audited as a file of its own."""
    from edgecompress.backends.tflite.writer import subgraph_alone

    with tempfile.TemporaryDirectory() as folder:
        alone = Path(folder) / f"subgraph{subgraph}.tflite"
        alone.write_bytes(subgraph_alone(data, subgraph))
        plain, delegates, taken = _delegation(alone)
    return len(plain), len(delegates), len(taken)


def _signature_subgraphs(data: bytes) -> list[tuple[str, int]]:
    """(signature key, subgraph index) of each SignatureDef in the file, in subgraph order."""
    from edgecompress.backends.tflite.writer import schema

    model = schema().Model.GetRootAs(data)
    pairs = [
        (model.SignatureDefs(i).SignatureKey().decode(), model.SignatureDefs(i).SubgraphIndex())
        for i in range(model.SignatureDefsLength())
    ]
    return sorted(pairs, key=lambda pair: pair[1])


def _computes_in_float(op: dict) -> bool:
    """A float result from float operands only: DEQUANTIZE and hybrid int8 FULLY_CONNECTED do not count."""
    return any(t is np.float32 for t in op["result_types"]) and not any(
        t in (np.int8, np.uint8) for t in op["operand_types"]
    )


# Conversions at the boundary of an integer model (the ONNX Runtime audit's Cast and DequantizeLinear)
_CONVERSIONS = {"CAST", "DEQUANTIZE", "QUANTIZE"}
_INTEGER_RESULTS = (np.int8, np.uint8, np.int16, np.int32)  # int64: token ids, masks and shapes in float models


def float_nodes_inside(nodes: list[dict]) -> list[str]:
    """Float-computing nodes with an integer-computing node both upstream and downstream of them, as the ONNX
    Runtime audit (`backends/ort/audit.py`) defines them: an integer-only model may compute in float only at its
    boundary. `nodes` are LiteRT's op details without delegation; each is named by its builtin and first output."""
    from edgecompress.backends.ort.audit import reachable

    producer = {int(t): op["index"] for op in nodes for t in op["outputs"]}
    by_index = {op["index"]: op for op in nodes}
    consumers: dict[int, list[int]] = {}
    for op in nodes:
        for t in op["inputs"]:
            if int(t) in producer:
                consumers.setdefault(producer[int(t)], []).append(op["index"])
    integer = {op["index"] for op in nodes if any(t in _INTEGER_RESULTS for t in op["result_types"])}
    after = reachable(integer, lambda i: consumers.get(i, []))
    before = reachable(integer, lambda i: [producer[int(t)] for t in by_index[i]["inputs"] if int(t) in producer])
    return [
        f"{op['op_name']} {op['outputs'][0]}"
        for op in nodes
        if op["index"] in after
        and op["index"] in before
        and op["op_name"] not in _CONVERSIONS
        and _computes_in_float(op)
    ]


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
            pending += [
                producer[int(t)]
                for t in by_index[index]["inputs"]
                if int(t) >= 0 and int(t) not in boundary and int(t) in producer
            ]
    return taken
