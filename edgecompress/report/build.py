"""The check stage: figures with their provenance and a verdict per budget, built from the stage results.

Every figure says how it was obtained: measured (runtime, threads, host), estimated (by which model) or
static (from the file alone).
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from edgecompress import __version__
from edgecompress.architectures import Architecture
from edgecompress.intake.data import EvalData, TextLengths
from edgecompress.measure.device import device_latency_block
from edgecompress.measure.float_twin import slower_note
from edgecompress.measure.host import HostTiming, weighted_percentile
from edgecompress.passes import PassRecord
from edgecompress.report.budgets import MB, accuracy_verdict, latency_verdict, memory_verdict, size_verdict
from edgecompress.report.document import ESTIMATED, MEASURED, STATIC, ArtifactReport, Figure, Report
from edgecompress.report.host_noise import host_latency, host_notes
from edgecompress.report.per_class import class_figures, class_loss_notes
from edgecompress.verify.artifacts import Verified


def build_report(
    *,
    profile,
    recipe,
    bundle,
    data: EvalData,
    lengths: TextLengths,
    served: EvalData | None = None,
    original: np.ndarray,
    graph,
    records: list[PassRecord],
    verified: Verified,
    timing: HostTiming,
    tuned_on: str | None = None,
    teacher: dict | None = None,
    device: list[dict] | None = None,
) -> Report:
    """Figures and verdicts for every artifact, from the stage results of one export.

    `bundle` is the model as compressed; `original` the outputs of the model as given, on `data`'s texts
    (accuracy drops are judged against it); `served` the same examples as the compressed model's tokenizer
    feeds them to the artifacts (default: `data`); `lengths` how those texts fall into the length buckets;
    `device` a runner result per artifact measured on the `--on` target, which the latency budget then judges.
    The task (bundle.task) scores outputs against gold; its headline figure is the one budgets judge.
    """
    from edgecompress.intake.model import CLASSIFICATION
    from edgecompress.measure.runner import describe

    served = served or data
    task, dataset = bundle.task, data.dataset
    labels = data.gold if bundle.kind == CLASSIFICATION else None  # class ids: per-class figures, the teacher
    reference_score = task.score(original, dataset, data.encoded)
    estimates = device_estimates(graph, profile)
    bucketed = len(profile.runtime.buckets) > 1
    if bucketed:
        estimates["real_text"] = real_text_estimate(graph, profile, lengths)
    threads = profile.runtime.threads
    reference_accuracy = reference_score.figures[reference_score.headline] if reference_score else None
    reference_classes = (
        class_figures(original.argmax(-1), labels, list(bundle.labels))
        if labels is not None and bundle.labels
        else None
    )
    class_notes: list[str] = []
    reports = []
    for i, (artifact, parity, runner_result, audit, speed, cross) in enumerate(
        zip(
            verified.artifacts,
            verified.parities,
            timing.results,
            verified.audits,
            timing.speed_vs_float,
            verified.cross_runtime,
        )
    ):
        outputs = verified.outputs_as_served(i)  # each text at its bucket, as the app runs it
        accuracy = agreement = None
        runs_on = f"{artifact.runtime} on host running {artifact.path.name}"
        score = task.score(outputs, dataset, served.encoded)
        if score is not None:
            accuracy = Figure(
                score.figures[score.headline],
                "fraction" if score.headline == "accuracy" else score.headline,
                MEASURED,
                f"{runs_on}, {score.examples} labelled examples: {score.method}",
            )
        if parity.prediction_agreement is not None:
            agreement = Figure(
                task.agreement(outputs, original, served.feeds),
                "fraction",
                MEASURED,
                f"{task.agreement_meaning}, against the uncompressed model",
            )
        host = host_latency(runner_result, describe(runner_result)) if runner_result else None
        size = artifact.path.stat().st_size
        item = ArtifactReport(
            kind=artifact.kind,
            file=artifact.path.name,
            runtime=artifact.runtime,
            size=Figure(size, "bytes", STATIC, "file size on disk"),
            op_histogram=audit["op_histogram"],
            float_ops=audit["float_ops"],
            audit_method=audit["method"],
            parity={**_parity_dict(parity), "how": MEASURED, "method": f"{runs_on} vs the reference"},
            accuracy=accuracy,
            agreement=agreement,
            host_latency=host,
            device_latency=estimates["latency"],
            memory=estimates["memory"],
            delegation=audit.get("delegation"),
            float_ops_inside=audit.get("float_ops_inside"),
            speed_vs_float=speed,
            parity_vs_onnxruntime=cross,
            signatures=audit.get("signatures"),
            shared_weight_bytes=audit.get("shared_weight_bytes"),
            scores=score.figures if score is not None else None,
        )
        if reference_classes is not None and labels is not None:
            item.classes = class_figures(outputs.argmax(-1), labels, list(bundle.labels))
            class_notes += class_loss_notes(
                item.file, item.classes, reference_classes, profile.budgets.accuracy_drop_points
            )
        if bucketed:
            _add_bucket_figures(item, i, verified, timing, estimates["real_text"])
        applies_to = profile.budgets.latency_applies_to if bucketed else "longest-bucket"
        bounded = estimates["real_text"] if applies_to == "real-text" else estimates["latency"]
        latency_label = applies_to if bucketed else None
        if device:
            item.device_measured = device_latency_block(device[i])
            where = f"measured on {item.device_measured['measured_on']}"
            bounded, latency_label = (
                _measured_p90(item.device_measured),
                (f"longest-bucket, {where}" if bucketed else where),
            )
        item.verdicts = [
            size_verdict(profile.budgets, size),
            memory_verdict(profile.budgets, estimates["memory"]),
            latency_verdict(profile.budgets, bounded, latency_label),
        ]
        if accuracy is not None and teacher is not None and teacher["accuracy"] is not None:
            item.verdicts.append(
                accuracy_verdict(
                    profile.budgets,
                    teacher["accuracy"],
                    accuracy.value,
                    variant=recipe.name,
                    against=teacher["source"],
                    how=teacher["how"],
                )
            )
        elif accuracy is not None and reference_accuracy is not None:
            item.verdicts.append(
                accuracy_verdict(profile.budgets, reference_accuracy, accuracy.value, variant=recipe.name)
            )
        reports.append(item)
    notes = verified.notes + timing.notes + estimates["notes"] + _length_notes(lengths) + _packing_notes(reports)
    notes += list(dict.fromkeys(note for artifact in verified.artifacts for note in artifact.notes))
    notes += host_notes([(a.file, a.host_latency) for a in reports]) + class_notes
    if teacher is not None and teacher["note"]:
        notes.append(teacher["note"])
    notes += [slower_note(a.file, a.speed_vs_float) for a in reports if a.speed_vs_float and a.speed_vs_float["slower"]]
    if threads > 2:
        notes.append(f"the device estimate assumes {threads} threads, as the profile asks")
    if device:
        notes += _device_notes(device, bucketed and profile.budgets.latency_applies_to == "real-text")
    return Report(
        tool={"edgecompress": __version__, **_versions()},
        model={
            "name": Path(bundle.source).name,
            "source": str(bundle.source),
            "task": bundle.kind,
            "output": {"name": task.output_name, "axes": list(task.output_axes)},
            "labels": bundle.labels,
            "config": (bundle.architecture or Architecture()).dimensions(bundle.config),
        },
        device=profile.to_dict() | {"display_name": profile.display_name},
        recipe={"name": recipe.name, "description": recipe.description},
        data={
            "source": str(dataset.path),
            "texts": len(dataset),
            "labelled": reference_score is not None,
            "seq_len": profile.runtime.seq_len,
            "reference_accuracy": reference_accuracy,
            "reference_scores": reference_score.figures if reference_score else None,
            "headline_score": reference_score.headline if reference_score else None,
            "scores_method": reference_score.method if reference_score else None,
            "agreement_means": task.agreement_meaning,
            "reference_classes": reference_classes,
            "tuned_on": tuned_on,
            "judged_on": _judged_on(dataset, bundle),
            "teacher": teacher,
            "lengths": lengths.summary(),
        },
        stages=[],
        passes=[_record_dict(r) for r in records],
        reference={
            "kind": "torch eager" if bundle.module is not None else "input ONNX file in onnxruntime",
            "method": (
                f"each artifact run on all {len(dataset)} texts of {dataset.path.name}, padded to "
                f"seq_len {profile.runtime.seq_len}, compared with the "
                f"{'torch eager' if bundle.module is not None else 'original ONNX'} model"
            ),
        },
        artifacts=reports,
        notes=notes,
    )


def _measured_p90(block: dict) -> Figure:
    """The device's p90 as the figure the latency budget judges."""
    derived = block["derived"].get("p90")
    how = f"{block['method']}; p90 is {derived}" if derived else f"{block['method']}; p90 of the timed runs"
    return Figure(block["p90_ms"], "ms", MEASURED, how)


def _device_notes(device: list[dict], real_text_budget: bool) -> list[str]:
    """Where the latency verdicts come from, and what the device figures do not say."""
    where = device[0].get("measured_on")
    notes = [
        f"latency budgets are judged on {where}, measured (each artifact's p90 at seq_len); the memory budget "
        f"stays on the static estimate: the peak resident memory measured there is of the whole measuring process "
        f"(interpreter or benchmark program included), shown beside it"
    ]
    if real_text_budget:
        notes.append(
            f"the profile bounds real-text latency; on {where} each artifact was timed at the longest bucket, "
            f"which no text exceeds, so the measured verdict is the stricter one"
        )
    return notes


def _judged_on(dataset, bundle) -> str:
    """What parity was judged on: --data, or (without it) the built-in sentences, and by which rule."""
    from edgecompress.intake.data import BUILTIN_SOURCE
    from edgecompress.verify.evaluate import LOSSY_MIN_AGREEMENT, LOSSY_MIN_COSINE, disagreements_allowed

    if str(dataset.path) != BUILTIN_SOURCE:
        return f"{len(dataset)} texts of --data ({dataset.path.name})"
    rule = (
        f"a quantized or pruned artifact must agree with the reference ({bundle.task.agreement_meaning}) on at "
        f"least {LOSSY_MIN_AGREEMENT:.0%} of them within counting noise ({disagreements_allowed(len(dataset))} "
        f"flips allowed)"
        if bundle.task.parity_measure == "agreement"
        else f"a quantized or pruned artifact must keep cosine >= {LOSSY_MIN_COSINE} with the reference on each"
    )
    return (
        f"no --data: {len(dataset)} built-in sentences (edgecompress/intake/builtin_corpus.py: reviews, chat, "
        f"news, questions; those held out for tuning excluded), enough for the agreement rule to mean something; "
        f"{rule}; a float artifact must match to the parity tolerance; no accuracy without labels"
    )


# Above this share of --data's texts cut at seq_len, the report warns: the figures are for truncated texts.
TRUNCATION_WARNING_SHARE = 0.01


def _length_notes(lengths: TextLengths) -> list[str]:
    share = lengths.truncated / len(lengths.tokens)
    if share <= TRUNCATION_WARNING_SHARE:
        return []
    return [
        f"{lengths.truncated} of {len(lengths.tokens)} texts ({100 * share:.1f}%) are longer than "
        f"{lengths.buckets[-1]} tokens and were truncated to it, in every figure here as in the app "
        f"(longest text: {int(lengths.tokens.max())} tokens)"
    ]


def _packing_notes(reports: list[ArtifactReport]) -> list[str]:
    """What the static memory estimate leaves out of a .tflite with one signature per bucket."""
    return [
        f"{a.file}: LiteRT's XNNPACK delegate packs the shared weights again for each signature it prepares "
        f"(measured on MiniLM: about 41 MB resident per extra bucket in use); the memory estimate counts the "
        f"weights once"
        for a in reports
        if a.signatures
    ]


def _add_bucket_figures(item: ArtifactReport, i: int, verified: Verified, timing: HostTiming, estimate: Figure) -> None:
    """Per-bucket exactness and latency, and the latency over --data's real length distribution."""
    item.bucket_parity = verified.bucket_parity[i]
    item.device_latency_real_text = estimate
    if timing.per_bucket:
        item.host_latency_buckets = {
            str(length): {"p50_ms": r["latency_ms"]["p50"], "p90_ms": r["latency_ms"]["p90"]}
            for length, r in timing.per_bucket[i].items()
        }
        item.host_latency_real_text = timing.real_text[i]


def real_text_estimate(graph, profile, lengths: TextLengths) -> Figure:
    """The estimated p90 latency over --data's texts, each at its bucket: the device latency estimate of every
    bucket's graph, weighted by the texts that run at it."""
    from edgecompress.measure.device_estimate import band_of, latency_on

    counts = lengths.per_bucket()
    per_bucket = {}
    for length in profile.runtime.buckets:
        per_bucket[length] = latency_on(profile, _fixed_copy(graph, profile, seq_len=length)).total_ms
    p90 = weighted_percentile([per_bucket[b] for b in counts], [counts[b] for b in counts], 90)
    texts = sum(counts.values())
    shown = ", ".join(f"{b}: {ms:.3g} ms x {counts[b]}" for b, ms in per_bucket.items())
    band = band_of(profile)
    return Figure(
        p90,
        "ms",
        ESTIMATED,
        f"p90 over the {texts} texts of --data, each at its bucket's device latency estimate (bucket: estimate x "
        f"texts: {shown}); {band.text()}",
        band=_band_dict(band),
    )


def device_estimates(graph, profile) -> dict:
    """Memory and latency estimated on the profile's hardware (calibrated when the profile names a calibration),
    from the graph ONNX Runtime runs for the final graph, each with how it was obtained and its error band."""
    from edgecompress.measure.device_estimate import band_of, latency_on, memory_on
    from edgecompress.measure.estimate import executed_graph

    fixed = _fixed_copy(graph, profile)
    executed = executed_graph(fixed)
    memory = memory_on(profile, fixed, graph=executed)
    latency = latency_on(profile, fixed, graph=executed)
    threads = profile.runtime.threads
    where = (
        f"on {profile.display_name} with {threads} threads (peaks from the profile: fp32 "
        f"{profile.peak_ops_per_second('fp32', threads) / 1e9:.0f} GFLOP/s, int8 "
        f"{profile.peak_ops_per_second('int8', threads) / 1e9:.0f} GOP/s, "
        f"{profile.memory.bandwidth_gbps:g} GB/s)"
        if profile.calibration is None
        else f"on {profile.display_name} with {threads} threads"
    )
    return {
        "memory": Figure(
            memory.total_bytes / MB,
            "MB",
            ESTIMATED,
            f"{memory.method}; weights {memory.weight_bytes / MB:.1f} MB, load spike "
            f"{memory.largest_weight_bytes / MB:.1f} MB or packed copies {memory.prepacked_bytes / MB:.1f} MB, "
            f"activations {memory.peak_activation_bytes / MB:.2f} MB at {memory.peak_node_op_type}, session "
            f"{memory.session_overhead_bytes / MB:.1f} MB",
        ),
        "latency": Figure(
            latency.total_ms, "ms", ESTIMATED, f"{latency.method} {where}", band=_band_dict(band_of(profile))
        ),
        "notes": [],
    }


def _band_dict(band) -> dict:
    """The error band as report data: absolute relative errors (0.1 = 10%), how many checks, and how."""
    known = band.count > 0  # an unknown band is null in report.json, not NaN (not JSON)
    return {
        "median_abs_error": band.median_abs_error if known else None,
        "worst_abs_error": band.worst_abs_error if known else None,
        "checks": band.count,
        "how": band.how,
    }


def _fixed_copy(graph, profile, seq_len: int | None = None):
    """Estimates need fixed shapes; for a dynamic-shape artifact, estimate at the profile's seq_len (or the
    bucket length given)."""
    import onnx

    from edgecompress.graph.fix_shapes import FixShapes
    from edgecompress.passes import PassContext

    copy = onnx.ModelProto()
    copy.CopyFrom(graph)
    if not any(d.HasField("dim_param") for i in copy.graph.input for d in i.type.tensor_type.shape.dim):
        return copy
    context = PassContext(seq_len=seq_len or profile.runtime.seq_len, batch=profile.runtime.batch, dynamic_shapes=False)
    return FixShapes().run(copy, context).model


def _parity_dict(parity) -> dict:
    return {k: v for k, v in parity.__dict__.items()}


def _record_dict(record) -> dict:
    return dict(record.__dict__)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }
