"""Pass: one transformation, its options as dataclass fields, registered by decorator.

A pass has a contract, `requires -> run -> ensures`. `requires` rejects a model the pass cannot take
(with a reason); `run` returns the new model plus notes; `ensures` checks what the pass promises.
The runner `apply_pass` times the pass and names it in any error, so a pass never has to.

Torch passes (stage "compress") take and return a ModelBundle; graph passes (stage "graph") take and
return an `onnx.ModelProto`. Recipes, not passes, decide the order.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import pkgutil
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from edgecompress.errors import EdgecompressError, InternalError, UserError

log = logging.getLogger(__name__)

STAGES = ("compress", "graph")


@dataclass
class PassContext:
    """What a pass may know about the export beyond the model itself."""

    seq_len: int | None
    batch: int
    dynamic_shapes: bool
    num_heads: int | None = None
    hidden_size: int | None = None
    num_layers: int | None = None
    input_names: tuple[str, ...] = ()
    # Tokenized calibration texts ({input name: int64 [rows, seq_len]}) from --calibration or --data;
    # None when neither was given. Passes that need data raise UserError naming both options.
    calibration: dict[str, Any] | None = None
    # Labelled training texts from --train-data (a TextDataset), for passes that learn or score by
    # gradient (pruning importance, recovery fine-tuning); None when not given. Never the eval data.
    train_data: Any = None
    # The artifact kinds the device profile wants (onnx, ort, tflite), for passes whose output only some
    # runtimes can run; empty when unknown (a pass applied outside an export).
    artifacts: tuple[str, ...] = ()


@dataclass
class PassResult:
    model: Any
    notes: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    fired: bool = True
    # True when the pass changes the model's numbers on purpose (quantization, pruning): the artifact
    # is then verified by agreement with the reference instead of a tight tolerance.
    lossy: bool = False


@dataclass
class PassRecord:
    """What the report says about one applied pass."""

    name: str
    stage: str
    options: dict[str, Any]
    fired: bool
    notes: list[str]
    stats: dict[str, Any]
    seconds: float
    lossy: bool = False


class PassSkipped(Exception):
    """Raised by `requires` when a pass does not apply; the reason goes into the notes."""


@dataclass(frozen=True)
class Pass:
    name: ClassVar[str] = ""
    stage: ClassVar[str] = ""

    def requires(self, model: Any, ctx: PassContext) -> None:
        """Raise PassSkipped(reason) when this model is not for this pass."""

    def run(self, model: Any, ctx: PassContext) -> PassResult:
        raise NotImplementedError

    def ensures(self, before: Any, result: PassResult, ctx: PassContext) -> None:
        """Raise InternalError when the pass broke its promise."""

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_REGISTRY: dict[str, dict[str, type[Pass]]] = {stage: {} for stage in STAGES}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass known to recipes under `cls.name`."""
    if cls.stage not in STAGES:
        raise InternalError(f"pass {cls.__name__} has stage {cls.stage!r}; expected one of {STAGES}")
    if not cls.name or cls.name in _REGISTRY[cls.stage]:
        raise InternalError(f"pass {cls.__name__} needs a unique name, got {cls.name!r}")
    _REGISTRY[cls.stage][cls.name] = cls
    return cls


def _import_pass_modules() -> None:
    """Import every module of the pass packages so their decorators run (no hand-kept list)."""
    from edgecompress import compress, graph

    for package in (compress, graph):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(module.name)


def registry(stage: str) -> dict[str, type[Pass]]:
    _import_pass_modules()
    return _REGISTRY[stage]


def make_pass(stage: str, name: str, options: dict[str, Any], where: str) -> Pass:
    """Build a pass from recipe data, rejecting unknown names and options with the known ones."""
    known = registry(stage)
    if name not in known:
        raise UserError(f"unknown {stage} pass '{name}'", where=where,
                        hint=f"Known: {', '.join(sorted(known)) or '(none)'}")
    cls = known[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise UserError(f"unknown option '{unknown[0]}' for pass '{name}'", where=where,
                        hint=f"Known: {', '.join(sorted(fields)) or '(none)'}")
    for key, value in options.items():
        _check_option_type(name, key, value, fields[key], where)
    return cls(**options)


def _check_option_type(pass_name: str, key: str, value: Any, f: dataclasses.Field, where: str) -> None:
    default = f.default if f.default is not dataclasses.MISSING else None
    if default is None or isinstance(value, type(default)):
        return
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return
    raise UserError(f"option '{key}' of pass '{pass_name}' has the wrong type", where=where,
                    expected=f"{type(default).__name__} like {default!r}, got {value!r}")


def apply_pass(p: Pass, model: Any, ctx: PassContext) -> tuple[Any, PassRecord]:
    """Run one pass under its contract; the record carries notes and time for the report."""
    start = time.perf_counter()
    try:
        p.requires(model, ctx)
    except PassSkipped as skipped:
        log.info("pass %s skipped: %s", p.name, skipped)
        record = PassRecord(p.name, p.stage, p.options(), False, [f"skipped: {skipped}"], {},
                            time.perf_counter() - start)
        return model, record
    except EdgecompressError:
        raise
    except Exception as exc:  # a precondition that cannot even be checked is our bug, named by pass
        raise InternalError(f"pass '{p.name}' could not check its preconditions: {type(exc).__name__}: "
                            f"{exc}") from exc
    try:
        result = p.run(model, ctx)
        p.ensures(model, result, ctx)
    except EdgecompressError:
        raise
    except Exception as exc:  # a library failing inside a pass is our bug, named by pass
        raise InternalError(f"pass '{p.name}' failed: {type(exc).__name__}: {exc}") from exc
    record = PassRecord(p.name, p.stage, p.options(), result.fired, result.notes, result.stats,
                        time.perf_counter() - start, lossy=result.lossy and result.fired)
    return result.model, record
