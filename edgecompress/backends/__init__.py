"""Backends turn the final rewritten ONNX graph into one runtime's artifacts, registered by decorator.

All artifacts of one export come from the same graph, so every runtime ships the same model.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgecompress.errors import InternalError


@dataclass(frozen=True)
class Artifact:
    kind: str  # the profile's artifact name: onnx, ort, tflite
    path: Path
    runtime: str  # which runtime executes it; selects the runner in runtimes/
    extra_files: tuple[Path, ...] = ()  # shipped beside it (e.g. required_operators.config)


# A backend: (final ONNX model, output folder, wanted artifact kinds) -> artifacts written.
Emitter = Callable[["onnx.ModelProto", Path, tuple[str, ...]], list[Artifact]]

_BACKENDS: dict[str, tuple[tuple[str, ...], Emitter]] = {}


def register_backend(name: str, kinds: tuple[str, ...]):
    """Decorator: `emit` writes the artifacts of `kinds` it is asked for."""

    def wrap(emit: Emitter) -> Emitter:
        if name in _BACKENDS:
            raise InternalError(f"backend {name!r} registered twice")
        _BACKENDS[name] = (kinds, emit)
        return emit

    return wrap


def _per_runtime(table: dict):
    """A decorator factory filling `table` with one function per runtime name."""

    def register(runtime: str):
        def wrap(function):
            table[runtime] = function
            return function

        return wrap

    return register


# A runtime's executor: (artifact path, feeds, output name, threads, progress) -> outputs array.
# Verification runs every artifact file through the executor of its runtime.
Executor = Callable[..., "np.ndarray"]
_EXECUTORS: dict[str, Executor] = {}
register_executor = _per_runtime(_EXECUTORS)


def executor_for(runtime: str) -> Executor:
    backends()
    if runtime not in _EXECUTORS:
        raise InternalError(f"no executor registered for runtime {runtime!r}; known: {sorted(_EXECUTORS)}")
    return _EXECUTORS[runtime]


# A runtime's exact writer: (final ONNX model, output folder) -> the artifact again, computing the same
# integers as ONNX Runtime where the default file takes the runtime's own (finer) rounding. The export
# writes it when the default file misses the cross-runtime check (LiteRT's per-row int8, tflite_dynamic.py).
ExactWriter = Callable[["onnx.ModelProto", Path], Artifact]
_EXACT_WRITERS: dict[str, ExactWriter] = {}
register_exact_writer = _per_runtime(_EXACT_WRITERS)


def exact_writer_for(runtime: str) -> ExactWriter | None:
    backends()
    return _EXACT_WRITERS.get(runtime)


# A runtime's auditor: artifact path -> {"op_histogram", "float_ops", "method", ...} read from the file
# itself; runtimes without one are audited from the ONNX graph they were written from.
_AUDITORS: dict[str, Callable[[Path], dict]] = {}
register_auditor = _per_runtime(_AUDITORS)


def auditor_for(runtime: str) -> Callable[[Path], dict] | None:
    backends()
    return _AUDITORS.get(runtime)


def backends() -> dict[str, tuple[tuple[str, ...], Emitter]]:
    for module in pkgutil.iter_modules(__path__, __name__ + "."):
        importlib.import_module(module.name)
    return _BACKENDS


def emit_all(model, out_dir: Path, wanted: tuple[str, ...]) -> list[Artifact]:
    """Run every backend that produces one of the wanted kinds; unknown kinds are an internal error."""
    known = {kind for kinds, _ in backends().values() for kind in kinds}
    missing = sorted(set(wanted) - known)
    if missing:
        raise InternalError(f"no backend writes artifact kind(s) {missing}; known: {sorted(known)}")
    artifacts: list[Artifact] = []
    for kinds, emit in backends().values():
        asked = tuple(kind for kind in wanted if kind in kinds)
        if asked:
            artifacts.extend(emit(model, out_dir, asked))
    return sorted(artifacts, key=lambda a: wanted.index(a.kind))  # the profile's order, not registration's
