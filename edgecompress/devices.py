"""Device profiles: what a target phone or board can compute, and the budgets an artifact must meet there.

Profiles are TOML files. The shipped ones live in the packaged `device_profiles/` folder; a user can
point at their own file instead. Loading is strict, because a typo in a budget or a feature name must
not silently turn into a passing verdict: every problem is a one-line `UserError` naming the file and
the dotted field.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecompress.backends import artifact_kinds
from edgecompress.errors import UserError
from edgecompress.paths import device_profiles_dir
from edgecompress.recipe import QUANTIZE_MODES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pyproject pulls in tomli on 3.10
    import tomli as tomllib

# Arm features, then x86-64 ones (a host profile: the machine a calibration is checked on).
FEATURES = ("neon", "fp16", "dotprod", "i8mm", "bf16", "sve", "sve2", "sme", "avx2", "fma", "avx512f", "avx512-vnni")
KINDS = ("phone", "board")
OPERATING_SYSTEMS = ("android", "ios", "linux")
_OPS_PER_CYCLE_FIELD = {"fp32": "fp32_flops_per_cycle", "int8": "int8_ops_per_cycle"}


@dataclass(frozen=True)
class Cluster:
    """Identical cores sharing a clock; peak rates are per core."""

    core: str
    count: int
    max_ghz: float
    fp32_flops_per_cycle: float
    int8_ops_per_cycle: float
    source: str
    derivation: str | None = None


@dataclass(frozen=True)
class Soc:
    name: str
    isa: str
    features: tuple[str, ...]
    clusters: tuple[Cluster, ...]
    source: str


@dataclass(frozen=True)
class Memory:
    ram_gb: float
    type: str
    bandwidth_gbps: float
    source: str
    derivation: str | None = None


@dataclass(frozen=True)
class Runtime:
    """How the app runs the model: the artifact is exported for these shapes."""

    threads: int
    seq_len: int  # the longest input, in tokens: longer texts are truncated to it
    batch: int
    dynamic_shapes: bool
    # Input lengths the artifacts serve, ascending, the last one seq_len: a text of n tokens runs at the
    # smallest bucket >= n (LiteRT: one signature per bucket over shared weights; ONNX Runtime: a dynamic
    # sequence axis). One bucket, (seq_len,), is one fixed length.
    buckets: tuple[int, ...] = ()


@dataclass(frozen=True)
class Budgets:
    latency_p90_ms: float
    peak_memory_mb: float
    artifact_size_mb: float
    accuracy_drop_points: float
    # What latency_p90_ms bounds: "real-text", the p90 over --data's texts each run at its bucket, or
    # "longest-bucket", the latency at seq_len (every input padded to the longest length).
    latency_applies_to: str = "longest-bucket"


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    display_name: str
    kind: str
    os: str
    recipe: str
    artifacts: tuple[str, ...]
    soc: Soc
    memory: Memory
    runtime: Runtime
    budgets: Budgets
    quantize: str = "none"  # the default --quantize mode for this device (see recipe.QUANTIZE_MODES)
    # The calibration file (measure/calibration/store.py) that prices this device's latency, resolved against the
    # profile's folder; None: the peak-based estimate.
    calibration: str | None = None

    def peak_ops_per_second(self, dtype: str, threads: int) -> float:
        """Peak rate for `threads` busy threads: the scheduler puts them on the fastest cores, one per core,
        so cores are taken fastest first; threads beyond the core count find no core and add nothing."""
        if dtype not in _OPS_PER_CYCLE_FIELD:
            raise ValueError(f"dtype must be one of {', '.join(_OPS_PER_CYCLE_FIELD)}, got {dtype!r}")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        field = _OPS_PER_CYCLE_FIELD[dtype]
        per_core = sorted(((c.max_ghz * 1e9 * getattr(c, field), c.count) for c in self.soc.clusters), reverse=True)
        total, left = 0.0, threads
        for rate, count in per_core:
            used = min(count, left)
            total += used * rate
            left -= used
        return total

    def to_dict(self) -> dict[str, Any]:
        """The profile as plain JSON-ready data, keyed exactly like the TOML file."""
        return _lists(dataclasses.asdict(self))


def derived_profile_text(
    base: str,
    *,
    name: str,
    seq_len: int | None = None,
    buckets: list[int] | None = None,
    artifacts: list[str] | None = None,
) -> str:
    """A shipped profile's TOML with its name (and, when given, seq_len, buckets and artifacts) replaced: how
    benchmarks and tests make a variant (a shorter seq_len, one artifact) without copying the hardware facts.
    With a new seq_len and no buckets, the variant serves that one length."""
    text = (device_profiles_dir() / f"{base}.toml").read_text(encoding="utf-8")
    text = re.sub(r'^name = ".*"$', f'name = "{name}"', text, count=1, flags=re.M)
    if seq_len is not None:
        text = re.sub(r"^seq_len = \d+$", f"seq_len = {seq_len}", text, count=1, flags=re.M)
        buckets = buckets or [seq_len]
    if buckets is not None:
        text = re.sub(r"^buckets = \[.*\]$", f"buckets = [{', '.join(map(str, buckets))}]", text, count=1, flags=re.M)
    if artifacts is not None:
        listed = ", ".join(f'"{kind}"' for kind in artifacts)
        text = re.sub(r"^artifacts = \[.*\]$", f"artifacts = [{listed}]", text, count=1, flags=re.M)
    return text


def load_profile(path: str | Path) -> DeviceProfile:
    """Read and strictly validate one profile TOML, shipped or the user's own."""
    path = Path(path)
    reader = _Reader(_display_path(path))
    return _build(reader.parse(path), reader, path.stem, path.parent)


def get_profile(name_or_path: str | Path) -> DeviceProfile:
    """A shipped device by name, or a user's own profile when the argument looks like a path
    (ends in `.toml` or contains a path separator)."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.endswith(".toml") or "/" in text or os.sep in text:
        return load_profile(name_or_path)
    path = device_profiles_dir() / f"{text}.toml"
    if not path.is_file():
        raise UserError(
            f"Unknown device '{text}'. Known: {', '.join(_known_names())}",
            hint="to add a device, copy device_profiles/pixel7.toml to my-device.toml, "
            'set name = "my-device", edit the facts and budgets, and pass the file\'s '
            "path instead of a name",
        )
    return load_profile(path)


def list_profiles() -> list[DeviceProfile]:
    """Every shipped profile, sorted by name."""
    return [load_profile(p) for p in sorted(device_profiles_dir().glob("*.toml"))]


def _known_names() -> list[str]:
    return sorted(p.stem for p in device_profiles_dir().glob("*.toml"))


def _display_path(path: Path) -> str:
    """Shipped profiles are named `device_profiles/<file>` as in the repository, so messages read the
    same from a checkout or an installed wheel; a user's file keeps the path they gave."""
    if path.resolve().parent == device_profiles_dir().resolve():
        return f"device_profiles/{path.name}"
    return str(path)


def _lists(value: Any) -> Any:
    """JSON has no tuples: turn them into lists so `to_dict()` equals its own JSON round trip."""
    if isinstance(value, dict):
        return {key: _lists(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(item) for item in value]
    return value


# --- validation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    """What a field must be; `expected` is the phrase shown in error messages."""

    expected: str
    accepts: Callable[[Any], bool]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _one_of(choices: tuple[str, ...]) -> _Rule:
    return _Rule(f"one of {', '.join(choices)}", lambda v: isinstance(v, str) and v in choices)


def _string_list(non_empty: bool) -> _Rule:
    return _Rule(
        "a non-empty list of strings" if non_empty else "a list of strings",
        lambda v: isinstance(v, list) and (len(v) > 0 or not non_empty) and all(isinstance(item, str) for item in v),
    )


_TEXT = _Rule("a non-empty string", lambda v: isinstance(v, str) and v.strip() != "")
_SLUG = _Rule(
    "a lowercase name of letters, digits, '-' and '_'",
    lambda v: isinstance(v, str) and re.fullmatch(r"[a-z0-9][a-z0-9_-]*", v) is not None,
)
_ISA = _Rule(
    'an Arm A-profile ISA such as "armv8.2-a" (or, for a host, an x86-64 level such as "x86-64-v4")',
    lambda v: isinstance(v, str) and re.fullmatch(r"armv[89](\.[0-9])?-a|x86-64(-v[234])?", v) is not None,
)
_POSITIVE = _Rule("a positive number", lambda v: _is_number(v) and math.isfinite(v) and v > 0)
_COUNT = _Rule("a positive integer", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0)
_BOOL = _Rule("true or false", lambda v: isinstance(v, bool))
_TABLE = _Rule("a table", lambda v: isinstance(v, dict))
_TABLES = _Rule(
    "a non-empty array of tables",
    lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(item, dict) for item in v),
)

_TOP_RULES = {
    "name": _SLUG,
    "display_name": _TEXT,
    "kind": _one_of(KINDS),
    "os": _one_of(OPERATING_SYSTEMS),
    "recipe": _SLUG,
    "quantize": _SLUG,
    "calibration": _TEXT,
    "artifacts": _string_list(non_empty=True),
    "soc": _TABLE,
    "memory": _TABLE,
    "runtime": _TABLE,
    "budgets": _TABLE,
}
_SOC_RULES = {
    "name": _TEXT,
    "isa": _ISA,
    "features": _string_list(non_empty=False),
    "source": _TEXT,
    "clusters": _TABLES,
}
_CLUSTER_RULES = {
    "core": _TEXT,
    "count": _COUNT,
    "max_ghz": _POSITIVE,
    "fp32_flops_per_cycle": _POSITIVE,
    "int8_ops_per_cycle": _POSITIVE,
    "source": _TEXT,
    "derivation": _TEXT,
}
_MEMORY_RULES = {"ram_gb": _POSITIVE, "type": _TEXT, "bandwidth_gbps": _POSITIVE, "source": _TEXT, "derivation": _TEXT}
_COUNTS = _Rule(
    "a non-empty list of positive integers",
    lambda v: isinstance(v, list) and len(v) > 0 and all(_COUNT.accepts(item) for item in v),
)
_RUNTIME_RULES = {"threads": _COUNT, "seq_len": _COUNT, "batch": _COUNT, "dynamic_shapes": _BOOL, "buckets": _COUNTS}
LATENCY_APPLIES_TO = ("real-text", "longest-bucket")
_BUDGET_RULES = {
    "latency_p90_ms": _POSITIVE,
    "peak_memory_mb": _POSITIVE,
    "artifact_size_mb": _POSITIVE,
    "accuracy_drop_points": _POSITIVE,
    "latency_applies_to": _one_of(LATENCY_APPLIES_TO),
}
_OPTIONAL = frozenset({"derivation"})


def _show(value: Any) -> str:
    """A value as it would be written in TOML, so the user can find it in the file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    return str(value)


class _Reader:
    """Checks one file's data, raising errors that name the file and the dotted field."""

    def __init__(self, where: str):
        self.where = where

    def error(self, what: str, *, expected: str | None = None, hint: str | None = None) -> UserError:
        return UserError(what, where=self.where, expected=expected, hint=hint)

    def parse(self, path: Path) -> dict[str, Any]:
        """The file's TOML data; unreadable files and syntax errors become user errors (tomllib's
        message carries the line and column)."""
        try:
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise self.error(
                "no such device profile file", hint="pass a known device name or the path of a profile TOML"
            ) from None
        except OSError as exc:
            raise self.error(f"cannot read the device profile: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise self.error("the device profile is not UTF-8 text") from None
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise self.error(f"invalid TOML: {exc}") from None

    def table(
        self, raw: dict[str, Any], prefix: str, rules: dict[str, _Rule], optional: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        """Check a table against its rules. Unknown keys are reported first, since a misspelt key is
        usually why a field then looks missing."""
        for key in raw:
            if key not in rules:
                close = difflib.get_close_matches(key, list(rules), n=1)
                raise self.error(
                    f"unknown field '{_dotted(prefix, key)}'. Known: {', '.join(sorted(rules))}",
                    hint=f"did you mean '{close[0]}'?" if close else None,
                )
        for key, rule in rules.items():
            field = _dotted(prefix, key)
            if key not in raw:
                if key in optional:
                    continue
                raise self.error(f"field '{field}' is missing", expected=rule.expected)
            if not rule.accepts(raw[key]):
                raise self.error(f"field '{field}' must be {rule.expected}, got {_show(raw[key])}")
        return raw

    def choices(self, values: list[str], field: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
        """Every entry from a fixed vocabulary, each once: a typo such as "dotprd" must not silently
        drop a capability."""
        for index, value in enumerate(values):
            if value not in allowed:
                raise self.error(f"field '{field}[{index}]' must be one of {', '.join(allowed)}, got {_show(value)}")
            if value in values[:index]:
                raise self.error(f"field '{field}' lists {_show(value)} more than once")
        return tuple(values)


def _dotted(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _build(raw: dict[str, Any], reader: _Reader, stem: str, folder: Path) -> DeviceProfile:
    """Validate the whole document, then assemble the frozen profile."""
    top = reader.table(raw, "", _TOP_RULES, frozenset({"quantize", "calibration"}))
    if top["name"] != stem:
        raise reader.error(
            f"field 'name' must equal the file name stem {_show(stem)}, got {_show(top['name'])}",
            hint="rename the file or change 'name' so that they match",
        )
    soc = reader.table(top["soc"], "soc", _SOC_RULES)
    clusters = tuple(
        Cluster(**reader.table(cluster, f"soc.clusters[{index}]", _CLUSTER_RULES, _OPTIONAL))
        for index, cluster in enumerate(soc["clusters"])
    )
    artifacts = reader.choices(top["artifacts"], "artifacts", artifact_kinds())
    quantize = top.get("quantize", "none")
    if quantize not in QUANTIZE_MODES:
        raise reader.error(f"field 'quantize' must be one of {', '.join(QUANTIZE_MODES)}, got {_show(quantize)}")
    runtime = _runtime(reader.table(top["runtime"], "runtime", _RUNTIME_RULES, frozenset({"buckets"})), reader)
    if "tflite" in artifacts and runtime.dynamic_shapes:
        raise reader.error(
            "field 'runtime.dynamic_shapes' must be false when 'artifacts' has \"tflite\"",
            hint="LiteRT needs fixed shapes; drop tflite or fix shapes to seq_len",
        )
    return DeviceProfile(
        name=top["name"],
        display_name=top["display_name"],
        kind=top["kind"],
        os=top["os"],
        recipe=top["recipe"],
        quantize=quantize,
        artifacts=artifacts,
        soc=Soc(
            name=soc["name"],
            isa=soc["isa"],
            features=reader.choices(soc["features"], "soc.features", FEATURES),
            clusters=clusters,
            source=soc["source"],
        ),
        memory=Memory(**reader.table(top["memory"], "memory", _MEMORY_RULES, _OPTIONAL)),
        runtime=runtime,
        budgets=Budgets(**reader.table(top["budgets"], "budgets", _BUDGET_RULES, frozenset({"latency_applies_to"}))),
        calibration=_calibration(top.get("calibration"), folder, reader),
    )


def _calibration(written: str | None, folder: Path, reader: _Reader) -> str | None:
    """The named calibration file, resolved against the profile's folder and loaded once here, so a missing or
    broken file is reported when the profile is read, not in the middle of an export."""
    if written is None:
        return None
    from edgecompress.measure.calibration.store import load_calibration

    path = (folder / written).resolve()
    try:
        load_calibration(path)
    except UserError as exc:  # named from the profile: the user may not know which file points there
        raise reader.error(
            f"field 'calibration' = {_show(written)}: {exc.what} ({path})", expected=exc.expected, hint=exc.hint
        ) from None
    return str(path)


def _runtime(raw: dict[str, Any], reader: _Reader) -> Runtime:
    """The runtime table, its buckets checked: ascending, each once, the longest equal to seq_len."""
    buckets = raw.get("buckets", [raw["seq_len"]])
    if sorted(set(buckets)) != buckets:
        raise reader.error(f"field 'runtime.buckets' must be ascending with each length once, got {_show(buckets)}")
    if buckets[-1] != raw["seq_len"]:
        raise reader.error(
            f"field 'runtime.buckets' must end with seq_len {raw['seq_len']}, got {_show(buckets)}",
            hint="seq_len is the longest input; list the shorter lengths before it",
        )
    return Runtime(**{**raw, "buckets": tuple(buckets)})
