"""Pass: one transformation, its options as dataclass fields, registered by decorator.

A pass has a contract, `requires -> run -> ensures`. `requires` rejects a model the pass cannot take
(with a reason); `run` returns the new model plus notes; `ensures` checks what the pass promises.
The runner `apply_pass` times the pass and names it in any error, so a pass never has to.

Torch passes (stage "compress") take and return a ModelBundle; graph passes (stage "graph") take and
return an `onnx.ModelProto`. Recipes, not passes, decide the order; a pass only declares the orders it
cannot work in (`runs_after`, `runs_before`), and `recipe.load_recipe` refuses a recipe that breaks one.

A pass also declares whether it works in place (`in_place`), as onnx-ir's passes do: an in-place pass
edits the model it is given and returns that object; any other pass returns a new object and leaves
its input as it was, so its `ensures` can compare before with after and a caller that keeps the input
(the float twin in rewrite.py) needs no copy. `apply_pass` checks the declaration.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import logging
import pkgutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

from edgecompress.errors import EdgecompressError, InternalError, UserError

log = logging.getLogger(__name__)

STAGES = ("compress", "graph")


@dataclass(frozen=True)
class PassContext:
    """What a pass may know about the export beyond the model itself.

    Frozen: the pipeline builds one for each stage (the graph stage's from the compressed model, once the
    compress stage is done), and passes describe the model they return on the model itself, never here.
    """

    seq_len: int | None
    batch: int
    dynamic_shapes: bool
    num_heads: int | None = None
    hidden_size: int | None = None
    num_layers: int | None = None
    input_names: tuple[str, ...] = ()
    # Tokenized calibration texts ({input name: int64 [rows, seq_len]}): --calibration, else --train-data's texts,
    # else the built-in sentences; never --data, which only scores. None outside an export when not given.
    calibration: dict[str, Any] | None = None
    # Where `calibration` came from: "calibration", "train-data" or "built-in" ("" when unknown: a test's own).
    calibration_source: str = ""
    # Labelled training texts from --train-data (a TextDataset), for passes that learn or score by
    # gradient (pruning importance, recovery fine-tuning); None when not given. Never the eval data.
    train_data: Any = None
    # The artifact kinds the device profile wants (onnx, ort, tflite), for passes whose output only some
    # runtimes can run; empty when unknown (a pass applied outside an export).
    artifacts: tuple[str, ...] = ()
    # Input lengths the artifacts serve (the profile's runtime.buckets, the last one seq_len). With more than
    # one, the graph keeps a symbolic sequence axis (fix_shapes fixes the batch only) and each backend
    # serves the lengths its own way; empty or one length: every shape is fixed to seq_len.
    buckets: tuple[int, ...] = ()
    # The model's encoder family (edgecompress.architectures.Architecture): its fusion settings, its parts.
    # None for an .onnx file or a distilled student that no family describes.
    architecture: Any = None
    # The model's task (edgecompress.tasks.Task): what agreement between two models' outputs means, the bar
    # verification holds a lossy artifact to. Quantization passes judge their trials by it, so that what they
    # accept also passes verification; None outside an export (a test's own context): argmax flips instead.
    task: Any = None

    @property
    def dynamic_sequence(self) -> bool:
        """The graph keeps its sequence axis symbolic: several lengths, or dynamic shapes throughout."""
        return self.dynamic_shapes or len(self.buckets) > 1


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
    # True: `run` edits the model it is given and returns that same object. False: `run` returns a new
    # object and leaves its input unchanged. Every pass states it; None is refused by `register_pass`.
    in_place: ClassVar[bool | None] = None
    # Passes of the same stage that, when a recipe has them, must come earlier (runs_after) or later
    # (runs_before) than this one. A pass the recipe leaves out constrains nothing: a user's .onnx may
    # come fused or with fixed shapes already. Each order is declared once, on the pass whose docstring
    # gives the reason.
    runs_after: ClassVar[tuple[str, ...]] = ()
    runs_before: ClassVar[tuple[str, ...]] = ()
    # Passes this one cannot share a recipe with, in either order, each with the reason (refused at recipe load).
    excludes: ClassVar[Mapping[str, str]] = MappingProxyType({})

    def check_model(self, bundle: Any) -> None:
        """Raise UserError for what the model alone rules out (its family, task, depth), checked at intake
        before any work; `requires` still runs when the pass is reached."""

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
    if not isinstance(cls.in_place, bool):
        raise InternalError(f"pass {cls.__name__} must declare in_place = True or False, got {cls.in_place!r}")
    for order in ("runs_after", "runs_before"):
        names = getattr(cls, order)
        if not isinstance(names, tuple) or not all(isinstance(n, str) for n in names):
            raise InternalError(f"pass {cls.__name__}: {order} must be a tuple of pass names, got {names!r}")
    _REGISTRY[cls.stage][cls.name] = cls
    return cls


def broken_order(passes) -> tuple[int, str] | None:
    """(index, reason) of a declared order one stage's list of passes breaks; None when it breaks none.

    `p.runs_after` names must not appear after p, `p.runs_before` names not before it. Reading down the
    list, the first pass that completes a broken pair decides which is reported; its own declaration
    goes first. The index is that of the pass that declares the order.
    Before -> After: [fix_shapes, trim_gathered_tables, fold_constants] ->
    (1, "pass 'trim_gathered_tables' must come after 'fold_constants'").
    """
    names = [p.name for p in passes]
    for index, p in enumerate(passes):
        for name, why in p.excludes.items():
            if name in names:
                return index, f"pass '{p.name}' cannot be combined with '{name}': {why}"
    # (where the pair is complete, -index of the declaring pass, seen, index, reason)
    broken: list[tuple[int, int, int, int, str]] = []
    for index, p in enumerate(passes):
        for at, name in enumerate(names):
            if at > index and name in p.runs_after:
                broken.append((at, -index, len(broken), index, f"pass '{p.name}' must come after '{name}'"))
            if at < index and name in p.runs_before:
                broken.append((index, -index, len(broken), index, f"pass '{p.name}' must come before '{name}'"))
    return min(broken)[3:] if broken else None


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
        raise UserError(
            f"unknown {stage} pass '{name}'", where=where, hint=f"Known: {', '.join(sorted(known)) or '(none)'}"
        )
    cls = known[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise UserError(
            f"unknown option '{unknown[0]}' for pass '{name}'",
            where=where,
            hint=f"Known: {', '.join(sorted(fields)) or '(none)'}",
        )
    for key, value in options.items():
        _check_option_type(name, key, value, fields[key], where)
    # TOML has arrays, not tuples: a tuple option (frozen dataclasses take no list defaults) takes an array.
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    return cls(**options)


def _check_option_type(pass_name: str, key: str, value: Any, f: dataclasses.Field, where: str) -> None:
    default = f.default if f.default is not dataclasses.MISSING else None
    if default is None or isinstance(value, type(default)):
        return
    if isinstance(default, tuple) and isinstance(value, list):
        return
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return
    raise UserError(
        f"option '{key}' of pass '{pass_name}' has the wrong type",
        where=where,
        expected=f"{type(default).__name__} like {default!r}, got {value!r}",
    )


def apply_pass(p: Pass, model: Any, ctx: PassContext) -> tuple[Any, PassRecord]:
    """Run one pass under its contract; the record carries notes and time for the report."""
    start = time.perf_counter()
    try:
        p.requires(model, ctx)
    except PassSkipped as skipped:
        log.info("pass %s skipped: %s", p.name, skipped)
        record = PassRecord(
            p.name, p.stage, p.options(), False, [f"skipped: {skipped}"], {}, time.perf_counter() - start
        )
        return model, record
    except EdgecompressError:
        raise
    except Exception as exc:  # a precondition that cannot even be checked is our bug, named by pass
        raise InternalError(f"pass '{p.name}' could not check its preconditions: {type(exc).__name__}: {exc}") from exc
    try:
        unchanged = None if p.in_place else _fingerprint(model)
        result = p.run(model, ctx)
        _check_in_place(p, model, result.model, unchanged)
        p.ensures(model, result, ctx)
    except EdgecompressError:
        raise
    except Exception as exc:  # a library failing inside a pass is our bug, named by pass
        raise InternalError(f"pass '{p.name}' failed: {type(exc).__name__}: {exc}") from exc
    record = PassRecord(
        p.name,
        p.stage,
        p.options(),
        result.fired,
        result.notes,
        result.stats,
        time.perf_counter() - start,
        lossy=result.lossy and result.fired,
    )
    return result.model, record


def _check_in_place(p: Pass, model: Any, returned: Any, unchanged: str | None) -> None:
    """The pass kept its `in_place` declaration: the same object back, or a new one and the input intact."""
    if p.in_place and returned is not model:
        raise InternalError(
            f"pass '{p.name}' is declared in place but returned a new model; return the model "
            "it was given, or declare in_place = False"
        )
    if not p.in_place and returned is model:
        raise InternalError(
            f"pass '{p.name}' is declared not in place but returned the model it was given; "
            "return a new one, or declare in_place = True"
        )
    if unchanged is not None and _fingerprint(model) != unchanged:
        raise InternalError(
            f"pass '{p.name}' is declared not in place but changed the model it was given; "
            "work on a copy, or declare in_place = True"
        )


def _fingerprint(model: Any) -> str | None:
    """A cheap digest of an ONNX model: every node, input, output, value_info and opset, the IR version, and
    each initializer's name, type and dims. Weight values are not read (an edit that keeps a weight's shape
    goes unseen): 2 ms on a 69 MB MiniLM, where ByteSize() alone took 320 ms. None for a torch bundle,
    which `_check_in_place` checks by identity only."""
    graph = getattr(model, "graph", None)
    if graph is None or not hasattr(model, "opset_import"):
        return None
    digest = hashlib.blake2b(str(model.ir_version).encode(), digest_size=16)
    for part in (graph.node, graph.input, graph.output, graph.value_info, model.opset_import):
        for item in part:
            digest.update(item.SerializeToString())
    for init in graph.initializer:
        digest.update(f"{init.name}:{init.data_type}:{list(init.dims)};".encode())
    return digest.hexdigest()
