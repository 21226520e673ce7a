"""`edgecompress check`: re-check an export's artifacts against another device's budgets.

Nothing is re-run on the host: size is static, memory and latency are re-estimated for the new
device from the shipped `model.onnx`, accuracy is carried over from the export's measured report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from edgecompress.errors import UserError
from edgecompress.report.budgets import accuracy_verdict, latency_verdict, memory_verdict, size_verdict
from edgecompress.report.document import Verdict


@dataclass
class Recheck:
    device: str
    folder: Path
    verdicts: dict[str, list[Verdict]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(v.passed for vs in self.verdicts.values() for v in vs)

    def lines(self) -> list[str]:
        lines = [v.line(self.device, name) for name, vs in self.verdicts.items() for v in vs]
        lines += [f"note: {note}" for note in self.notes]
        lines.append("all budgets met" if self.passed else "BUDGET EXCEEDED")
        return lines

    def to_dict(self) -> dict:
        return {
            "device": self.device,
            "folder": str(self.folder),
            "passed": self.passed,
            "notes": self.notes,
            "verdicts": {name: [v.__dict__ for v in vs] for name, vs in self.verdicts.items()},
        }


def recheck(folder: Path, device: str) -> Recheck:

    from edgecompress.devices import get_profile
    from edgecompress.report.build import device_estimates

    manifest, report = _read_export(folder)
    _check_hashes(folder, manifest)
    profile = get_profile(device)
    graph = _load_graph(folder / "model.onnx")
    result = Recheck(device=profile.name, folder=folder)
    _check_shapes(manifest, profile, result)
    estimates = device_estimates(graph, profile)
    accuracies = {a["file"]: a.get("accuracy") for a in report.get("artifacts", [])}
    reference_accuracy = report.get("data", {}).get("reference_accuracy")
    for artifact in manifest["artifacts"]:
        path = folder / artifact["file"]
        if not path.is_file():
            raise UserError(f"artifact '{artifact['file']}' named in manifest.json is missing", where=str(folder))
        verdicts = [
            size_verdict(profile.budgets, path.stat().st_size),
            memory_verdict(profile.budgets, estimates["memory"]),
            latency_verdict(profile.budgets, estimates["latency"]),
        ]
        accuracy = accuracies.get(artifact["file"])
        if accuracy and reference_accuracy is not None:
            verdicts.append(accuracy_verdict(profile.budgets, reference_accuracy, accuracy["value"]))
        result.verdicts[artifact["file"]] = verdicts
    missing = sorted(set(profile.artifacts) - {a["kind"] for a in manifest["artifacts"]})
    if missing:
        result.notes.append(f"{profile.name} wants artifact kinds {missing} that this export does not have")
    return result


def _read_export(folder: Path) -> tuple[dict, dict]:
    needed = ("manifest.json", "report.json", "model.onnx")
    absent = [name for name in needed if not (folder / name).is_file()]
    if absent:
        raise UserError(
            f"not an edgecompress export: {', '.join(absent)} missing",
            where=str(folder),
            hint="pass the folder `edgecompress export` wrote, e.g. dist/pixel7",
        )
    manifest, report = (_read_json(folder / name) for name in ("manifest.json", "report.json"))
    _expect(manifest, "manifest.json", folder, {"inputs": list, "artifacts": list, "files": list})
    _expect(report, "report.json", folder, {"artifacts": list, "data": dict})
    checks: tuple[tuple[str, dict, str, dict[str, type]], ...] = (
        ("manifest.json", manifest, "inputs", {"shape": list}),
        ("manifest.json", manifest, "artifacts", {"file": str, "kind": str}),
        ("manifest.json", manifest, "files", {"path": str, "sha256": str}),
        ("report.json", report, "artifacts", {"file": str}),
    )
    for name, doc, entries, keys in checks:
        for index, entry in enumerate(doc[entries]):
            _expect(entry, f"{name} {entries}[{index}]", folder, keys)
    return manifest, report


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(
            f"corrupt export metadata: {path.name} is not valid JSON ({exc})",
            where=str(path.parent),
            hint="re-export; an export writes it whole or not at all",
        ) from None


def _expect(doc, what: str, folder: Path, fields: dict[str, type]) -> None:
    """`doc` is an object with each field of the type an export writes; else one line naming the field."""
    if not isinstance(doc, dict):
        raise UserError(
            f"corrupt export metadata: {what} is a {type(doc).__name__}, not an object",
            where=str(folder),
            hint="re-export; an export writes it whole or not at all",
        )
    for key, kind in fields.items():
        if not isinstance(doc.get(key), kind):
            found = "missing" if key not in doc else f"a {type(doc[key]).__name__}"
            raise UserError(
                f"corrupt export metadata: field '{key}' of {what} is {found}",
                where=str(folder),
                expected=f"a {kind.__name__}",
                hint="re-export; an export writes it whole or not at all",
            )


def _check_hashes(folder: Path, manifest: dict) -> None:
    """Every file the manifest lists must be there, byte for byte: a changed file is not what was verified."""
    from edgecompress.report.manifest import file_sha256

    for entry in manifest["files"]:
        name = entry["path"]
        path = folder / name
        if Path(name).name != name or not path.is_file():
            raise UserError(
                f"file '{name}' listed in manifest.json is missing",
                where=str(folder),
                hint="re-export; nothing in this folder can be trusted to be what was verified",
            )
        if file_sha256(path) != entry["sha256"]:
            raise UserError(
                f"file '{name}' was modified after export: its sha256 differs from manifest.json",
                where=str(folder),
                hint="re-export; the shipped file must be the one that was verified",
            )


def _load_graph(path: Path):
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.load(str(path))
    except (DecodeError, ValueError, OSError) as exc:
        raise UserError(
            f"model.onnx is not a readable ONNX model ({type(exc).__name__})",
            where=str(path.parent),
            hint="re-export; the file is truncated or damaged",
        ) from None


def _check_shapes(manifest: dict, profile, result: Recheck) -> None:
    """An artifact fixed to one seq_len cannot serve a device that needs another."""
    shapes = [spec["shape"] for spec in manifest["inputs"]]
    fixed = {shape[1] for shape in shapes if len(shape) > 1 and isinstance(shape[1], int)}
    if fixed and profile.runtime.seq_len not in fixed:
        result.verdicts["inputs"] = [
            Verdict("fixed seq_len", profile.runtime.seq_len, min(fixed), "tokens", "static", False, must_equal=True)
        ]
        result.notes.append(
            f"artifacts are fixed to seq_len {sorted(fixed)}, {profile.name} wants "
            f"{profile.runtime.seq_len}: re-export with --device {profile.name}"
        )
