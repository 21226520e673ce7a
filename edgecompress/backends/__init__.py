"""Backends turn the final rewritten ONNX graph into one runtime's artifacts; one `Backend` per runtime.

A backend is one folder (`ort/`, `tflite/`) whose `__init__` registers a `Backend` object: the artifact
kinds it writes and their file suffixes, the runner script in `runtimes/` that times its files, the
executor verification runs every file through, the auditor that reads ops back from a file, the exact
writer (if any) and the minimum runtime version an app needs. Device profiles, the measure stage, the
manifest and the CLI read these facts from here instead of keeping their own lists.

All artifacts of one export come from the same graph, so every runtime ships the same model.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecompress.errors import InternalError

if TYPE_CHECKING:
    import numpy as np
    import onnx


@dataclass(frozen=True)
class Artifact:
    kind: str  # the profile's artifact name: onnx, ort, tflite
    path: Path
    runtime: str  # which runtime executes it; selects its Backend
    extra_files: tuple[Path, ...] = ()  # shipped beside it (e.g. required_operators.config)
    notes: tuple[str, ...] = ()  # what the backend chose for this file and why, for the report


# (final ONNX model, output folder, wanted artifact kinds, length buckets) -> artifacts written. With several
# buckets the model's sequence axis is symbolic and each backend serves the buckets its own way.
Emitter = Callable[["onnx.ModelProto", Path, tuple[str, ...], tuple[int, ...]], list[Artifact]]
# (artifact path, feeds, output name, threads, progress) -> outputs array: verification runs every
# artifact file through the executor of its runtime.
Executor = Callable[..., "np.ndarray"]
# (final ONNX model, output folder, buckets) -> the artifact again, computing the same integers as ONNX Runtime
# where the default file takes the runtime's own (finer) rounding; written when the default file misses
# the cross-runtime check (LiteRT's per-row int8, tflite/ops/dynamic_int8.py).
ExactWriter = Callable[["onnx.ModelProto", Path, tuple[int, ...]], Artifact]
# artifact path -> {"op_histogram", "float_ops", "method", ...} read from the file itself.
Auditor = Callable[[Path], dict]
# (artifact kind, ai.onnx opset of the graph) -> {package: version, "why": reason} for the manifest.
MinimumVersion = Callable[[str, "int | None"], dict[str, Any]]


@dataclass(frozen=True)
class NativeBenchmark:
    """A runtime's native benchmark program (LiteRT `benchmark_model`, ONNX Runtime `onnxruntime_perf_test`):
    how to call it on a device and how to read its output into the runner's JSON contract."""

    program: str  # its usual name, for messages and the CLI option (--benchmark-model / --perf-test)
    option: str  # the CLI option that gives its path on the host
    # (request, device folder) -> (argument list after the program, {file name in the folder: bytes to push})
    command: Callable[..., tuple[list[str], dict[str, bytes]]]
    # (stdout + stderr text, request) -> the runner's JSON contract; figures it cannot give are None
    parse: Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class Backend:
    runtime: str  # names the runtime in reports and manifests: onnxruntime, litert
    suffixes: Mapping[str, str]  # artifact kind -> file suffix, in the order the backend writes them
    runner: str  # the standalone runner script in runtimes/ that times this runtime's files
    emit: Emitter
    execute: Executor
    minimum_version: MinimumVersion
    # None: the runtime cannot list a file's ops, so its artifacts are audited from the ONNX graph.
    audit: Auditor | None = None
    exact_writer: ExactWriter | None = None
    # How a file serves one length bucket of a bucketed export: the runner's --signature for that length
    # (LiteRT: one signature per bucket); None: feeds cut to the length run as they are (a dynamic axis).
    bucket_signature: Callable[[int], str] | None = None
    # A bucketed export's file keeps a free (symbolic) sequence axis: the app runs each text at its own length,
    # with no padding at all, so verification runs every text at its own length and timing follows suit.
    serves_any_length: bool = False
    # What a remote machine's python3 must import to run `runner` (the ssh transport names them when missing).
    pip_packages: tuple[str, ...] = ()
    # The runtime's own benchmark program, run where there is no Python (adb phones); None: there is none.
    native_benchmark: NativeBenchmark | None = None

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.suffixes)


def served_lengths(artifact: Artifact, lengths, *, step: int = 1):
    """The lengths `artifact` runs the texts of `lengths` (a TextLengths) at: each text's own length (rounded up
    to `step`) for a runtime that serves any length, else the profile's buckets."""
    if len(lengths.buckets) > 1 and backend_for(artifact.runtime).serves_any_length:
        return lengths.at_own_length(step)
    return lengths


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Make a backend known; each backend package's `__init__` calls this once."""
    if backend.runtime in _BACKENDS:
        raise InternalError(f"backend {backend.runtime!r} registered twice")
    taken = {kind for known in _BACKENDS.values() for kind in known.kinds} & set(backend.kinds)
    if taken:
        raise InternalError(f"artifact kind(s) {sorted(taken)} of {backend.runtime!r} already belong to a backend")
    _BACKENDS[backend.runtime] = backend
    return backend


def backends() -> dict[str, Backend]:
    """Every backend, by runtime name, in folder order (ort before tflite) whatever was imported first: no
    hand-kept list. Each backend package names its object `BACKEND`."""
    found = {}
    for module in pkgutil.iter_modules(__path__, __name__ + "."):
        backend = importlib.import_module(module.name).BACKEND
        found[backend.runtime] = backend
    return found


def backend_for(runtime: str) -> Backend:
    known = backends()
    if runtime not in known:
        raise InternalError(f"no backend registered for runtime {runtime!r}; known: {sorted(known)}")
    return known[runtime]


def backend_for_runner(runner: str) -> Backend:
    """The backend whose runner script is `runner` (ort_runner, litert_runner)."""
    found = next((b for b in backends().values() if b.runner == runner), None)
    if found is None:
        raise InternalError(f"no backend has the runner {runner!r}")
    return found


def backend_for_suffix(suffix: str) -> Backend | None:
    """The backend whose artifacts carry this file suffix (case-insensitive), or None."""
    suffix = suffix.lower()
    return next((b for b in backends().values() if suffix in b.suffixes.values()), None)


def artifact_kinds() -> tuple[str, ...]:
    """Every artifact kind a device profile may ask for, in backend order."""
    return tuple(kind for backend in backends().values() for kind in backend.kinds)


def artifact_suffixes() -> tuple[str, ...]:
    """Every artifact file suffix the runners can time, sorted."""
    return tuple(sorted({s for backend in backends().values() for s in backend.suffixes.values()}))


def emit_all(model, out_dir: Path, wanted: tuple[str, ...], buckets: tuple[int, ...] = ()) -> list[Artifact]:
    """Run every backend that produces one of the wanted kinds; unknown kinds are an internal error."""
    known = artifact_kinds()
    missing = sorted(set(wanted) - set(known))
    if missing:
        raise InternalError(f"no backend writes artifact kind(s) {missing}; known: {sorted(known)}")
    artifacts: list[Artifact] = []
    for backend in backends().values():
        asked = tuple(kind for kind in wanted if kind in backend.kinds)
        if asked:
            artifacts.extend(backend.emit(model, out_dir, asked, buckets))
    return sorted(artifacts, key=lambda a: wanted.index(a.kind))  # the profile's order, not registration's
