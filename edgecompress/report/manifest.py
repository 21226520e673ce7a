"""Assemble the report (figures with their provenance, budget verdicts) and the app-facing package.

The manifest is what a mobile build reads: how to call the model (input/output names, dtypes, shapes),
how to tokenize, which files to ship with their sha256, which runtime versions load them, and whether
the budgets were met.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
from pathlib import Path

import numpy as np

from edgecompress import __version__
from edgecompress.backends import backend_for
from edgecompress.report.budgets import MB, accuracy_verdict, latency_verdict, memory_verdict, size_verdict
from edgecompress.measure.float_twin import slower_note
from edgecompress.report.document import ESTIMATED, MEASURED, STATIC, ArtifactReport, Figure, Report

_DTYPES = {1: "float32", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 3: "int8", 2: "uint8"}


def build_report(run) -> Report:
    """Figures and verdicts for every artifact of a finished `pipeline.Run`."""
    from edgecompress.measure.runner import describe

    bundle, profile, recipe, dataset = run.bundle, run.profile, run.recipe, run.dataset
    labels, original = run.labels, run.original
    estimates = device_estimates(run.graph, profile)
    threads = profile.runtime.threads
    reference_accuracy = float(np.mean(original.argmax(-1) == labels)) if labels is not None else None
    reports = []
    speeds = run.speed_vs_float or [None] * len(run.artifacts)
    crosses = run.cross_runtime or [None] * len(run.artifacts)
    for artifact, (parity, outputs), runner_result, audit, speed, cross in zip(
            run.artifacts, run.checks, run.measured, run.audits, speeds, crosses):
        accuracy = agreement = None
        runs_on = f"{artifact.runtime} on host running {artifact.path.name}"
        if labels is not None:
            accuracy = Figure(float(np.mean(outputs.argmax(-1) == labels)), "fraction", MEASURED,
                              f"{runs_on}, {len(labels)} labelled texts")
        if parity.prediction_agreement is not None:
            agreement = Figure(float(np.mean(outputs.argmax(-1) == original.argmax(-1))), "fraction", MEASURED,
                               "same predicted label as the uncompressed torch model")
        host = None
        if runner_result:
            host = {"p50_ms": runner_result["latency_ms"]["p50"], "p90_ms": runner_result["latency_ms"]["p90"],
                    "p99_ms": runner_result["latency_ms"]["p99"], "threads": runner_result["threads"],
                    "peak_rss_mb": runner_result["peak_rss_mb"], "output_digest": runner_result["output_digest"],
                    "how": MEASURED, "method": describe(runner_result)}
        size = artifact.path.stat().st_size
        item = ArtifactReport(
            kind=artifact.kind, file=artifact.path.name, runtime=artifact.runtime,
            size=Figure(size, "bytes", STATIC, "file size on disk"),
            op_histogram=audit["op_histogram"], float_ops=audit["float_ops"], audit_method=audit["method"],
            parity={**_parity_dict(parity), "how": MEASURED, "method": f"{runs_on} vs the reference"},
            accuracy=accuracy, agreement=agreement, host_latency=host,
            device_latency=estimates["latency"], memory=estimates["memory"], delegation=audit.get("delegation"),
            float_ops_inside=audit.get("float_ops_inside"), speed_vs_float=speed, parity_vs_onnxruntime=cross)
        item.verdicts = [size_verdict(profile.budgets, size), memory_verdict(profile.budgets, estimates["memory"]),
                         latency_verdict(profile.budgets, estimates["latency"])]
        if accuracy is not None:
            item.verdicts.append(accuracy_verdict(profile.budgets, reference_accuracy, accuracy.value,
                                                  variant=recipe.name))
        reports.append(item)
    notes = list(run.notes) + estimates["notes"]
    notes += [slower_note(a.file, a.speed_vs_float) for a in reports if a.speed_vs_float and a.speed_vs_float["slower"]]
    if threads > 2:
        notes.append(f"the device estimate assumes {threads} threads, as the profile asks")
    return Report(
        tool={"edgecompress": __version__, **_versions()},
        model={"name": Path(bundle.source).name, "source": str(bundle.source), "task": bundle.kind,
               "labels": bundle.labels, "config": {k: bundle.config.get(k) for k in
                                                   ("num_hidden_layers", "hidden_size", "num_attention_heads",
                                                    "intermediate_size", "vocab_size")}},
        device=profile.to_dict() | {"display_name": profile.display_name},
        recipe={"name": recipe.name, "description": recipe.description},
        data={"source": str(dataset.path), "texts": len(dataset), "labelled": labels is not None,
              "seq_len": profile.runtime.seq_len,
              "reference_accuracy": reference_accuracy},
        stages=[], passes=[_record_dict(r) for r in run.pass_records],
        reference={"kind": "torch eager" if bundle.module is not None else "input ONNX file in onnxruntime",
                   "method": (f"each artifact run on all {len(dataset)} texts of {dataset.path.name}, padded to "
                              f"seq_len {profile.runtime.seq_len}, compared with the "
                              f"{'torch eager' if bundle.module is not None else 'original ONNX'} model")},
        artifacts=reports, notes=notes)


def artifact_audit(artifact, graph) -> dict:
    """Ops and float ops read from the artifact where its runtime can list them, else from the ONNX graph."""
    from edgecompress.onnx_facts import infer_shapes, op_histogram

    audit = backend_for(artifact.runtime).audit
    if audit is not None:
        return audit(artifact.path)
    return {"op_histogram": op_histogram(graph), "float_ops": float_op_types(graph, infer_shapes(graph)),
            "method": "static: from model.onnx, the graph this artifact was written from"}


def device_estimates(graph, profile) -> dict:
    """Static memory and the roofline latency estimate on the profile's hardware, from the final graph."""
    from edgecompress.measure.estimate import estimate_latency, estimate_memory
    from edgecompress.onnx_facts import infer_shapes

    fixed = _fixed_copy(graph, profile)
    shapes = infer_shapes(fixed)
    memory = estimate_memory(fixed, shapes=shapes)
    threads = profile.runtime.threads
    latency = estimate_latency(
        fixed, peak_fp32_ops_per_s=profile.peak_ops_per_second("fp32", threads),
        peak_int8_ops_per_s=profile.peak_ops_per_second("int8", threads),
        bandwidth_bytes_per_s=profile.memory.bandwidth_gbps * 1e9, shapes=shapes)
    where = (f"on {profile.display_name} with {threads} threads (peaks from the profile: fp32 "
             f"{profile.peak_ops_per_second('fp32', threads) / 1e9:.0f} GFLOP/s, int8 "
             f"{profile.peak_ops_per_second('int8', threads) / 1e9:.0f} GOP/s, "
             f"{profile.memory.bandwidth_gbps:g} GB/s)")
    return {
        "memory": Figure(memory.total_bytes / MB, "MB", ESTIMATED,
                         f"{memory.method}; weights {memory.weight_bytes / MB:.1f} MB, activations "
                         f"{memory.peak_activation_bytes / MB:.2f} MB at {memory.peak_node_op_type}"),
        "latency": Figure(latency.total_ms, "ms", ESTIMATED, f"{latency.method} {where}"),
        "notes": [],
    }


def _fixed_copy(graph, profile):
    """Estimates need fixed shapes; for a dynamic-shape artifact, estimate at the profile's seq_len."""
    import onnx

    from edgecompress.graph.fix_shapes import FixShapes
    from edgecompress.passes import PassContext

    copy = onnx.ModelProto()
    copy.CopyFrom(graph)
    if not any(d.HasField("dim_param") for i in copy.graph.input for d in i.type.tensor_type.shape.dim):
        return copy
    context = PassContext(seq_len=profile.runtime.seq_len, batch=profile.runtime.batch, dynamic_shapes=False)
    return FixShapes().run(copy, context).model


def float_op_types(model, shapes) -> list[str]:
    """Op types that compute in float (the ONNX Runtime audit's definition), from the graph and its shapes."""
    from edgecompress.backends.ort.audit import computes_in_float, graph_nodes

    types = {name: elem_type for name, (_, elem_type) in shapes.items()}
    return sorted({n.label for n in graph_nodes(model) if computes_in_float(n, types)})


def write_package(folder: Path, run, report: Report) -> None:
    copied = _copy_tokenizer(run.bundle, folder)
    if run.bundle.labels:
        (folder / "labels.txt").write_text("\n".join(run.bundle.labels) + "\n", encoding="utf-8")
    manifest = build_manifest(folder, run.bundle, run.profile, run.graph, run.artifacts, report, copied,
                              quantization=quantization_mode(run.pass_records))
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _copy_tokenizer(bundle, folder: Path) -> list[str]:
    names = []
    for name in bundle.tokenizer_settings.files:
        shutil.copyfile(bundle.tokenizer_dir / name, folder / name)
        names.append(name)
    return names


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


def build_manifest(folder: Path, bundle, profile, graph, artifacts, report: Report, tokenizer_files, *,
                   quantization: str = "none") -> dict:
    settings = bundle.tokenizer_settings
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name not in ("manifest.json",))
    opset = next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "schema": "edgecompress.manifest/1",
        "model": {"name": report.model["name"], "task": bundle.kind, "labels": bundle.labels,
                  "output": bundle.output_name},
        "device": profile.name,
        "inputs": [_value_spec(v) for v in graph.graph.input],
        "outputs": [_value_spec(v) for v in graph.graph.output if v.name == bundle.output_name],
        "tokenizer": {"files": tokenizer_files, "lowercase": settings.lowercase,
                      "max_length": profile.runtime.seq_len, "padding": "max_length", "truncation": True,
                      "pad_token_id": settings.pad_token_id,
                      "token_type_ids": "zeros" if "token_type_ids" in bundle.input_names else "not used"},
        "quantization": quantization,
        "artifacts": [{"kind": a.kind, "file": a.path.name, "runtime": a.runtime,
                       "runtime_minimum_version": backend_for(a.runtime).minimum_version(a.kind, opset),
                       "extra_files": [p.name for p in a.extra_files]} for a in artifacts],
        "files": [{"path": p.name, "bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in files],
        "graph": {"opset": opset, "ir_version": graph.ir_version,
                  "contrib_ops": sorted({n.op_type for n in graph.graph.node if n.domain == "com.microsoft"})},
        "budgets": profile.to_dict()["budgets"],
        "verdicts": {a.file: [v.__dict__ for v in a.verdicts] for a in report.artifacts},
        "passed": report.passed,
    }


def _value_spec(value) -> dict:
    tensor = value.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim]
    return {"name": value.name, "dtype": _DTYPES.get(tensor.elem_type, str(tensor.elem_type)), "shape": shape}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _parity_dict(parity) -> dict:
    return {k: v for k, v in parity.__dict__.items()}


def _record_dict(record) -> dict:
    return dict(record.__dict__)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version()}
