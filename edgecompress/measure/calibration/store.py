"""The calibration file (JSON, schema "edgecompress.calibration/1"): what was measured, where, when and how, and
the prices fitted to it. A device profile names it (`calibration = "calibrations/host.json"`, relative to the
profile); the estimator then prices each node with it and states its error band.

    schema, created (UTC, ISO 8601), target (as given to --on), machine {machine, system, cpu_count}
    runtime, runtime_version      the runtime the suite ran on (prices are that runtime's kernels)
    graph                         which graph the work was counted on (runtime_graph.py)
    threads                       calibrated thread counts
    method                        how the suite was measured and fitted, in words
    load_1m                       the target's 1-minute load average before the first and after the last run
    prices {threads: {param: seconds per unit}}     model.py
    parallel_fractions {param: p}                   Amdahl's p per price, from the calibrated thread counts
    benchmarks [{name, work {param: amount}, measured_ms {threads: ms}, fitted_ms {threads: ms},
                 memory_growth_mb}]
    cross_validation {threads: {median_abs_error, worst_abs_error, benchmarks, how}}
    memory (optional)             {session_overhead_mb, per_node_kb, how}: what a session adds besides weights and
                                  activations
    validation (optional)         whole models not in the suite, estimated and measured (tools/bench_calibration.py):
                                  {median_abs_error, worst_abs_error, artifacts, rows, how, date}

Loading is strict: every problem is one UserError naming the file and the field.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgecompress.errors import UserError

SCHEMA = "edgecompress.calibration/1"


@dataclass(frozen=True)
class ErrorBand:
    """How far estimates fell from measurements: absolute relative errors (0.12 = 12%)."""

    median_abs_error: float
    worst_abs_error: float
    count: int
    how: str

    def text(self) -> str:
        if self.count == 0:
            return f"error band: {self.how}"
        return (
            f"error band: median {100 * self.median_abs_error:.0f}%, worst {100 * self.worst_abs_error:.0f}% "
            f"({self.how})"
        )


@dataclass(frozen=True)
class Calibration:
    created: str
    target: str
    machine: dict[str, Any]
    runtime: str
    runtime_version: str
    graph: str
    threads: list[int]
    method: str
    load_1m: list[float | None]
    prices: dict[int, dict[str, float]]
    parallel_fractions: dict[str, float]
    benchmarks: list[dict[str, Any]]
    cross_validation: dict[int, dict[str, Any]]
    validation: dict[str, Any] | None = None
    memory: dict[str, Any] | None = None  # {"session_overhead_mb", "per_node_kb", "how"}
    path: str | None = field(default=None, compare=False)  # where it was loaded from, for messages

    def band(self) -> ErrorBand:
        """Whole models not in the suite when they were checked, else the suite's leave-one-out errors."""
        if self.validation:
            v = self.validation
            return ErrorBand(
                v["median_abs_error"],
                v["worst_abs_error"],
                v["artifacts"],
                f"{v['how']}, {v['date']}",
            )
        folds = [f for f in self.cross_validation.values() if f["benchmarks"]]
        if not folds:
            return ErrorBand(math.nan, math.nan, 0, "unknown: no benchmark of this calibration could be left out")
        return ErrorBand(
            max(f["median_abs_error"] for f in folds),
            max(f["worst_abs_error"] for f in folds),
            sum(f["benchmarks"] for f in folds),
            "leave-one-out over the calibration's own micro-benchmarks, not checked on whole models yet",
        )

    def describe(self) -> str:
        """One phrase for method strings: what calibrated the prices."""
        where = self.path or "calibration"
        return (
            f"calibration {where} ({self.runtime} {self.runtime_version} on {self.target}, "
            f"{self.machine.get('machine', '?')}, threads {', '.join(map(str, self.threads))}, {self.created[:10]})"
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("path")
        data["prices"] = {str(k): v for k, v in self.prices.items()}
        data["cross_validation"] = {str(k): v for k, v in self.cross_validation.items()}
        return {"schema": SCHEMA, **data}


def save_calibration(calibration: Calibration, path: Path) -> None:
    """Written whole to a temporary file first, so an interrupted run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(calibration.to_json(), indent=1) + "\n", encoding="utf-8")
    partial.replace(path)


def load_calibration(path: str | Path) -> Calibration:
    path = Path(path)
    where = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            "no such calibration file",
            where=where,
            hint="run `edgecompress calibrate --on TARGET -o FILE` and name FILE in the profile",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the calibration file: {exc}", where=where) from None
    except json.JSONDecodeError as exc:
        raise UserError(f"the calibration file is not JSON: {exc}", where=where) from None
    return _parse(data, where)


def _parse(data: Any, where: str) -> Calibration:
    def fail(what: str, expected: str | None = None) -> UserError:
        return UserError(what, where=where, expected=expected, hint="write it again with `edgecompress calibrate`")

    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise fail(f"schema is {found!r}", expected=repr(SCHEMA))
    for key, kind in _FIELDS.items():
        if key not in data:
            raise fail(f"field '{key}' is missing")
        if not isinstance(data[key], kind):
            raise fail(f"field '{key}' must be {_KIND_NAMES[kind]}, got {type(data[key]).__name__}")
    threads = data["threads"]
    if not threads or not all(isinstance(t, int) and not isinstance(t, bool) and t > 0 for t in threads):
        raise fail(f"field 'threads' must be a non-empty list of positive integers, got {threads!r}")
    prices = {}
    for count in threads:
        table = data["prices"].get(str(count))
        if not isinstance(table, dict) or not table:
            raise fail(
                f"field 'prices.{count}' is missing or empty", expected="prices for every calibrated thread count"
            )
        for param, value in table.items():
            if not _is_price(value):
                raise fail(f"field 'prices.{count}.{param}' must be a finite number >= 0, got {value!r}")
        prices[count] = {param: float(value) for param, value in table.items()}
    for param, p in data["parallel_fractions"].items():
        if not (_is_price(p) and p <= 1):
            raise fail(f"field 'parallel_fractions.{param}' must be a number in [0, 1], got {p!r}")
    return Calibration(
        created=data["created"],
        target=data["target"],
        machine=data["machine"],
        runtime=data["runtime"],
        runtime_version=data["runtime_version"],
        graph=data["graph"],
        threads=list(threads),
        method=data["method"],
        load_1m=data["load_1m"],
        prices=prices,
        parallel_fractions={k: float(v) for k, v in data["parallel_fractions"].items()},
        benchmarks=data["benchmarks"],
        cross_validation={int(k): v for k, v in data["cross_validation"].items()},
        validation=_validation(data.get("validation"), fail),
        memory=_memory(data.get("memory"), fail),
        path=where,
    )


def _validation(value: Any, fail) -> dict[str, Any] | None:
    if value is None:
        return None
    keys = ("median_abs_error", "worst_abs_error", "artifacts", "how", "date")
    if not isinstance(value, dict) or any(k not in value for k in keys):
        raise fail("field 'validation' must be a table", expected=f"keys {', '.join(keys)}")
    if not all(_is_price(value[k]) for k in keys[:2]):
        raise fail("field 'validation' errors must be numbers >= 0")
    return value


def _memory(value: Any, fail) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not _is_price(value.get("session_overhead_mb")) or "how" not in value:
        raise fail("field 'memory' must be a table with session_overhead_mb (a number >= 0) and how")
    return value


def _is_price(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


_FIELDS: dict[str, type] = {
    "created": str,
    "target": str,
    "machine": dict,
    "runtime": str,
    "runtime_version": str,
    "graph": str,
    "threads": list,
    "method": str,
    "load_1m": list,
    "prices": dict,
    "parallel_fractions": dict,
    "benchmarks": list,
    "cross_validation": dict,
}
_KIND_NAMES: dict[type, str] = {str: "a string", dict: "a table", list: "a list"}
