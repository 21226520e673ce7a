"""The pipeline's side of early exit: write verified segments, time them, and say what each threshold buys.

Segments are exported from the compressed torch model, run chained in ONNX Runtime on every text of --data (each
segment fed the previous one's own output, as the app does) and checked against the same chain in torch (every
exit's logits) and against the whole model (the last exit) before any file is written. They are float ONNX: the
recipe's graph passes (fusion, quantization) shape the whole-model artifacts only, and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecompress.exits import HIDDEN_IN, HIDDEN_OUT, LOGITS
from edgecompress.exits.policy import exit_index, threshold_range

SEGMENT_FILE = "exit_segment_{}.onnx"


@dataclass
class ShippedExits:
    files: list[Path]
    logits: np.ndarray  # [exits, texts, classes]: ONNX Runtime's chain on --data, what the app would see
    parity: dict
    specs: list[dict]  # per segment: file, inputs and outputs (name, dtype, shape)
    samples: list[dict[str, np.ndarray]]  # one text's inputs to each segment, for timing
    timing: list[dict] | None = None  # the runner's result per segment


def write_segments(bundle, feeds: dict[str, np.ndarray], reference: np.ndarray, folder: Path, atol: float):
    """Export, verify, then write one .onnx per segment into `folder`; returns what the report and manifest need."""
    from edgecompress.exits.segments import check_segments, export_segment, ort_chain, segments, torch_chain
    from edgecompress.report.manifest import value_spec
    from edgecompress.verify.evaluate import ort_session

    parts = segments(bundle)
    first = {name: feeds[name][:1] for name in parts[0].input_names}
    graphs, samples = [], []
    inputs = first
    for part in parts:  # each segment is traced on the previous segment's real output for the first text
        graphs.append(export_segment(part, inputs))
        samples.append(inputs)
        if not part.last:
            hidden = ort_session(graphs[-1].SerializeToString(), threads=1, optimize=True).run([HIDDEN_OUT], inputs)[0]
            inputs = {HIDDEN_IN: hidden, "attention_mask": first["attention_mask"]}
    sessions = [ort_session(g.SerializeToString(), threads=2, optimize=True) for g in graphs]
    expected = torch_chain(parts, feeds)
    found = ort_chain(sessions, feeds, parts[0].input_names)
    parity = check_segments(expected, found, reference, atol, "ONNX Runtime")
    files = []
    for k, graph in enumerate(graphs):
        path = folder / SEGMENT_FILE.format(k)
        path.write_bytes(graph.SerializeToString())
        files.append(path)
    specs = [
        {
            "file": path.name,
            "layer": k + 1,
            "inputs": [value_spec(v) for v in graph.graph.input],
            "outputs": [value_spec(v) for v in graph.graph.output],
        }
        for k, (path, graph) in enumerate(zip(files, graphs))
    ]
    return ShippedExits(files, found, parity, specs, samples)


def measure_segments(shipped: ShippedExits, *, threads: int, runs: int, warmup: int) -> None:
    """Each segment timed by the ONNX Runtime runner in runtimes/ on one real text's inputs (its own process)."""
    from edgecompress.measure.runner import run_runner

    shipped.timing = [
        run_runner(path, runner="ort_runner", threads=threads, runs=runs, warmup=warmup, inputs=sample)
        for path, sample in zip(shipped.files, shipped.samples)
    ]


def exits_report(shipped: ShippedExits, exits, gold, *, whole_model_p50: float | None) -> dict:
    """Per threshold: accuracy on --data (labelled), agreement with the whole model, mean exit layer, mean latency
    from the measured per-segment p50s, and speed-up against running every segment."""
    from edgecompress.measure.runner import describe

    logits, count = shipped.logits, shipped.logits.shape[0]
    segment_p50 = [t["latency_ms"]["p50"] for t in shipped.timing] if shipped.timing else None
    cumulative = np.cumsum(segment_p50) if segment_p50 else None
    full = logits[-1].argmax(-1)
    rows = []
    for threshold in exits.sweep:
        index = exit_index(logits, exits.policy, threshold)
        preds = logits[index, np.arange(logits.shape[1])].argmax(-1)
        row = {
            "threshold": threshold,
            "shipped": threshold == exits.threshold,
            "accuracy": None if gold is None else float(np.mean(preds == gold)),
            "agreement_with_model": float(np.mean(preds == full)),
            "mean_exit_layer": float(np.mean(index + 1)),
            "texts_per_exit": np.bincount(index, minlength=count).tolist(),
        }
        if cumulative is not None:
            mean = float(np.mean(cumulative[index]))
            row |= {"mean_latency_ms": mean, "speedup_vs_all_segments": float(cumulative[-1] / mean)}
        rows.append(row)
    low, high = threshold_range(exits.policy, count)
    return {
        "policy": exits.policy,
        "threshold": exits.threshold,
        "threshold_range": [low, high],
        "exits": count,
        "segments": shipped.specs,
        "segment_latency_ms": segment_p50,
        "all_segments_ms": None if cumulative is None else float(cumulative[-1]),
        "whole_model_p50_ms": whole_model_p50,
        "latency_how": (
            "not measured (--no-measure)"
            if not shipped.timing
            else f"mean over --data's texts of the summed p50s of the segments each text runs, each segment "
            f"{describe(shipped.timing[0])} on one real text at the padded length; the policy's own softmax "
            "(a few microseconds) is not included"
        ),
        "accuracy_how": "measured: ONNX Runtime chain of the shipped segment files on every text of --data, "
        "the exit each text stops at chosen by the policy",
        "parity": shipped.parity,
        "training": exits.training,
        "float_note": "segments are float ONNX: the recipe's graph passes (fusion, quantization) apply to the "
        "whole-model artifacts only",
        "sweep": rows,
    }


def exits_manifest(report: dict) -> dict:
    """What the app needs to run the segments and stop early."""
    policy, threshold = report["policy"], report["threshold"]
    rule = {
        "entropy": "after segment k, p = softmax(logits); stop when -sum(p * ln p) / ln(labels) < threshold",
        "patience": "after segment k, stop when argmax(logits) equals the argmax of each of the previous "
        "`threshold` segments (threshold + 1 exits agreeing in a row)",
    }[policy]
    return {
        "policy": {"kind": policy, "threshold": threshold, "range": report["threshold_range"], "rule": rule},
        "segments": report["segments"],
        "chain": (
            f"run {report['segments'][0]['file']} on the token inputs; feed each segment's '{HIDDEN_OUT}' to the "
            f"next segment's '{HIDDEN_IN}' with the same attention_mask; after each segment apply the rule to its "
            f"'{LOGITS}'; the last segment is the whole model's head and always stops"
        ),
        "float": True,
    }


def markdown(report: dict) -> list[str]:
    lines = [
        "",
        f"## Early exit ({report['policy']}, threshold {report['threshold']:g} shipped, {report['exits']} exits)",
        "",
        f"Accuracy: {report['accuracy_how']}. Latency: {report['latency_how']}. {report['float_note']}.",
        "",
        "| threshold | accuracy | agreement with the model | mean exit layer | mean latency ms | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["sweep"]:
        accuracy = "-" if row["accuracy"] is None else f"{row['accuracy']:.2%}"
        latency = f"{row['mean_latency_ms']:.2f}" if "mean_latency_ms" in row else "-"
        speedup = f"{row['speedup_vs_all_segments']:.2f}x" if "speedup_vs_all_segments" in row else "-"
        mark = " (shipped)" if row["shipped"] else ""
        lines.append(
            f"| {row['threshold']:g}{mark} | {accuracy} | {row['agreement_with_model']:.2%} | "
            f"{row['mean_exit_layer']:.2f} | {latency} | {speedup} |"
        )
    return lines
