"""The package stage: the app-facing folder beside the artifacts (tokenizer files, labels, manifest).

The manifest is what a mobile build reads: how to call the model (input/output names, dtypes, shapes),
how to tokenize, which files to ship with their sha256, which runtime versions load them, and whether
the budgets were met.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from edgecompress.backends import backend_for
from edgecompress.exits.ship import exits_manifest
from edgecompress.report.document import Report

_DTYPES = {1: "float32", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 3: "int8", 2: "uint8"}


def write_package(folder: Path, *, bundle, profile, graph, artifacts, records, report: Report) -> None:
    copied = _copy_tokenizer(bundle, folder)
    if bundle.labels:
        (folder / "labels.txt").write_text("\n".join(bundle.labels) + "\n", encoding="utf-8")
    manifest = build_manifest(
        folder, bundle, profile, graph, artifacts, report, copied, quantization=quantization_mode(records)
    )
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _copy_tokenizer(bundle, folder: Path) -> list[str]:
    names = []
    for name in bundle.tokenizer_settings.files:
        shutil.copyfile(bundle.tokenizer_dir / name, folder / name)
        names.append(name)
    return names


def length_buckets(profile, artifacts) -> dict:
    """How the app calls the model for a text of n tokens ([CLS] and [SEP] included)."""
    buckets = list(profile.runtime.buckets)
    calls: dict[str, str | dict[str, str]] = {}
    for artifact in artifacts:
        backend = backend_for(artifact.runtime)
        if len(buckets) == 1:
            calls[artifact.path.name] = f"inputs of shape [{profile.runtime.batch}, {buckets[0]}]"
        elif backend.serves_any_length:
            calls[artifact.path.name] = (
                f"inputs of shape [{profile.runtime.batch}, n]: run each text at its own length n, no padding "
                f"(any n up to {buckets[-1]})"
            )
        elif backend.bucket_signature is not None:
            calls[artifact.path.name] = {str(n): f"signature {backend.bucket_signature(n)}" for n in buckets}
        else:
            calls[artifact.path.name] = f"inputs of shape [{profile.runtime.batch}, bucket]"
    return {
        "lengths": buckets,
        "choose": (
            "for a file called per bucket: the smallest bucket >= n; pad the text with pad_token_id "
            "(attention_mask 0) up to it. A file called at its own length takes the text as it is"
        ),
        "long_inputs": {
            "policy": "truncate",
            "max_tokens": buckets[-1],
            "how": f"a text longer than {buckets[-1]} tokens is cut to its first {buckets[-1] - 1} "
            "tokens followed by [SEP], as the tokenizer's truncation does",
        },
        "calls": calls,
    }


def quantization_mode(records) -> str:
    """The `--quantize` mode the applied passes amount to (read by app builds), from what fired, so a
    recipe file that quantizes without a mode is named too."""
    fired = {r.name: r for r in records if r.fired}
    if "integer_only" in fired:
        return "integer-only"
    if "quantize_int4" in fired:
        return "int8-int4-mixed" if fired["quantize_int4"].options.get("mixed") else "int4"
    if "quantize_static" in fired:
        return "int8-qat" if "qat" in fired else "int8"
    if "quantize_dynamic" in fired:
        return "dynamic-int8"
    return "none"


def build_manifest(
    folder: Path, bundle, profile, graph, artifacts, report: Report, tokenizer_files, *, quantization: str = "none"
) -> dict:
    settings = bundle.tokenizer_settings
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name not in ("manifest.json",))
    opset = next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "schema": "edgecompress.manifest/1",
        "model": {
            "name": report.model["name"],
            "task": bundle.kind,
            "labels": bundle.labels,
            "output": bundle.output_name,
            "output_axes": list(bundle.task.output_axes),
            "decode": bundle.task.decoding(),
            "scores": _scores(report),
        },
        "device": profile.name,
        "inputs": [value_spec(v) for v in graph.graph.input],
        "outputs": [value_spec(v) for v in graph.graph.output if v.name == bundle.output_name],
        "tokenizer": {
            "files": tokenizer_files,
            "lowercase": settings.lowercase,
            "max_length": profile.runtime.seq_len,
            "padding": "max_length" if len(profile.runtime.buckets) == 1 else "as length_buckets.calls says per file",
            "truncation": True,
            "pad_token_id": settings.pad_token_id,
            **bundle.task.tokenizer_notes(),
            **({} if "token_type_ids" in bundle.input_names else {"token_type_ids": "not used"}),
        },
        "quantization": quantization,
        "length_buckets": length_buckets(profile, artifacts),
        "artifacts": [
            {
                "kind": a.kind,
                "file": a.path.name,
                "runtime": a.runtime,
                "runtime_minimum_version": backend_for(a.runtime).minimum_version(a.kind, opset),
                "extra_files": [p.name for p in a.extra_files],
            }
            for a in artifacts
        ],
        "files": [{"path": p.name, "bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in files],
        "graph": {
            "opset": opset,
            "ir_version": graph.ir_version,
            "contrib_ops": sorted({n.op_type for n in graph.graph.node if n.domain == "com.microsoft"}),
        },
        "budgets": profile.to_dict()["budgets"],
        "verdicts": {a.file: [v.__dict__ for v in a.verdicts] for a in report.artifacts},
        "passed": report.passed,
        **({"early_exit": exits_manifest(report.early_exit)} if report.early_exit else {}),
    }


def _scores(report: Report) -> dict | None:
    """What the report's score figures are, per task (accuracy, micro F1, entity F1, EM, Pearson...)."""
    if not report.data.get("reference_scores"):
        return None
    return {
        "headline": report.data["headline_score"],
        "method": report.data["scores_method"],
        "uncompressed": report.data["reference_scores"],
        "artifacts": {a.file: a.scores for a in report.artifacts},
    }


def value_spec(value) -> dict:
    tensor = value.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim]
    return {"name": value.name, "dtype": _DTYPES.get(tensor.elem_type, str(tensor.elem_type)), "shape": shape}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
