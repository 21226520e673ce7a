"""The pipeline's side of early exit: write verified segments, time them, and say what each threshold buys.

Segments are exported from the compressed torch model and run chained on every text of --data, each segment fed
the previous one's own output as the app does: in ONNX Runtime (one `exit_segment_<k>.onnx` per segment, dynamic
batch and sequence axes) checked against the same chain in torch (every exit's logits) and against the whole model
(the last exit); when the profile ships LiteRT, in one `exits.tflite` with a signature `exit_<k>` per segment
(shapes fixed to the profile's seq_len, constant buffers stored once by content) checked against the ONNX Runtime
chain. Nothing is written before both pass. Segments are float: the recipe's graph passes (fusion, quantization)
shape the whole-model artifacts only, and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecompress.exits import HIDDEN_IN, HIDDEN_OUT, LOGITS
from edgecompress.exits.policy import exit_index, threshold_range

SEGMENT_FILE = "exit_segment_{}.onnx"
TFLITE_FILE = "exits.tflite"
ONNXRUNTIME, LITERT = "onnxruntime", "litert"  # as the backends name their runtimes


def signature_key(index: int) -> str:
    return f"exit_{index}"


@dataclass
class ShippedExits:
    files: list[Path]  # the ONNX Runtime segment files
    logits: dict[str, np.ndarray]  # runtime -> [exits, texts, classes], its chain on --data: what the app sees
    parity: dict
    specs: list[dict]  # per segment: file, layer, inputs and outputs (name, dtype, shape)
    samples: list[dict[str, np.ndarray]]  # one text's inputs to each segment, for timing
    tflite: Path | None = None  # one file, a signature per segment
    quantization: str = "none"  # "none" or "dynamic-int8"
    timing: dict[str, list[dict]] = field(default_factory=dict)  # runtime -> the runner's result per segment


# The whole model's quantization modes the segments follow; under any other they stay float (the report says so).
SEGMENT_QUANTIZATION = ("none", "dynamic-int8")


def write_segments(
    bundle,
    feeds: dict[str, np.ndarray],
    reference: np.ndarray,
    folder: Path,
    atol: float,
    *,
    seq_len: int,
    tflite: bool,
    quantization: str = "none",
) -> ShippedExits:
    """Export and verify every segment, then write them into `folder`; returns what the report and manifest need.

    With `quantization` "dynamic-int8" (the whole model's), every segment's weighted nodes go through ONNX
    Runtime's dynamic quantizer, as the whole model's do but without its sensitivity trials, and each exit is held
    to the lossy agreement bar instead of the float tolerance."""
    from edgecompress.exits.segments import check_segments, export_segment, ort_chain, segments, torch_chain
    from edgecompress.report.manifest import value_spec
    from edgecompress.verify.evaluate import ort_session

    parts = segments(bundle)
    first = {name: feeds[name][:1] for name in parts[0].input_names}
    graphs, samples, inputs = [], [], first
    lossy = quantization == "dynamic-int8"
    probe = _probe_inputs(bundle, parts[0].input_names, seq_len)
    for part in parts:  # each segment is traced on the previous segment's real output for the first text
        graph = export_segment(part, inputs)
        samples.append(inputs)
        rewritten = _rewritten(graph, bundle, seq_len, probe)
        if not part.last:
            session = ort_session(graph.SerializeToString(), threads=1, optimize=True)
            inputs = {HIDDEN_IN: session.run([HIDDEN_OUT], inputs)[0], "attention_mask": first["attention_mask"]}
            probe = {HIDDEN_IN: session.run([HIDDEN_OUT], probe)[0], "attention_mask": probe["attention_mask"]}
        graphs.append(_quantized(rewritten) if lossy else rewritten)
    sessions = [ort_session(g.SerializeToString(), threads=2, optimize=True) for g in graphs]
    found = ort_chain(sessions, feeds, parts[0].input_names)
    check = {"task": bundle.task, "feeds": feeds, "lossy": lossy, "atol": atol}
    expected = torch_chain(parts, feeds)
    parity = {ONNXRUNTIME: check_segments(expected, found, reference, **check, what="ONNX Runtime")}
    logits = {ONNXRUNTIME: found}
    tflite_bytes = None
    if tflite:
        tflite_bytes = _tflite_bytes(graphs, seq_len)
        logits[LITERT] = _tflite_chain(tflite_bytes, len(graphs), parts[0].input_names, feeds)
        parity[LITERT] = check_segments(expected, logits[LITERT], reference, **check, what="LiteRT")
        # LiteRT against the ONNX Runtime files, per exit: reported, not a gate (see the module docstring)
        parity[LITERT]["agreement_with_onnxruntime_per_exit"] = [
            float(np.mean(logits[LITERT][k].argmax(-1) == found[k].argmax(-1))) for k in range(len(graphs))
        ]
    files = []
    for k, graph in enumerate(graphs):
        files.append(folder / SEGMENT_FILE.format(k))
        files[-1].write_bytes(graph.SerializeToString())
    if tflite_bytes is not None:
        (folder / TFLITE_FILE).write_bytes(tflite_bytes)
    specs = [
        {
            "file": path.name,
            "layer": k + 1,
            "signature": signature_key(k) if tflite_bytes is not None else None,
            "inputs": [value_spec(v) for v in graph.graph.input],
            "outputs": [value_spec(v) for v in graph.graph.output],
        }
        for k, (path, graph) in enumerate(zip(files, graphs))
    ]
    tflite_path = folder / TFLITE_FILE if tflite_bytes else None
    return ShippedExits(files, logits, parity, specs, samples, tflite_path, quantization if lossy else "none")


# The whole model's float graph passes that apply to one layer, in the default recipe's order: fusion (one fused
# attention per segment, the export fails without it) and the fast mask value of the fused attention.
SEGMENT_GRAPH_PASSES = ("remove_training_nodes", "fuse_transformer", "attention_mask_value")


def _probe_inputs(bundle, input_names, seq_len: int, rows: int = 8) -> dict[str, np.ndarray]:
    """Seeded random token rows, padded after 4 to seq_len / 2 real tokens: what the graph passes check their
    rewrite on (the fast mask value must not move padded rows' outputs), since later segments take hidden states
    no tuning text is given as. Never --data, which only scores."""
    rng = np.random.default_rng(0)
    vocab = int(bundle.config.get("vocab_size") or 100)
    lengths = rng.integers(4, max(seq_len // 2, 5), size=rows)
    mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(5, vocab, size=(rows, seq_len)).astype(np.int64) * mask
    probe = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {name: probe[name] for name in input_names}


def _rewritten(graph, bundle, seq_len: int, probe: dict[str, np.ndarray]):
    """One segment through SEGMENT_GRAPH_PASSES, its axes left dynamic (fix_shapes runs for LiteRT only), checked
    on `probe` (the segment's own inputs)."""
    from edgecompress.passes import PassContext, apply_pass, registry

    context = PassContext(
        seq_len=seq_len,
        batch=1,
        dynamic_shapes=True,
        num_heads=bundle.num_heads,
        hidden_size=bundle.attention_width or bundle.hidden_size,
        num_layers=1,
        input_names=tuple(i.name for i in graph.graph.input),
        architecture=bundle.architecture,
        task=bundle.task,
        calibration=probe,
    )
    for name in SEGMENT_GRAPH_PASSES:
        graph, _ = apply_pass(registry("graph")[name](), graph, context)
    return graph


def _quantized(graph):
    """Dynamic int8 on every weighted node (ONNX Runtime's quantizer, as the whole model's quantize_dynamic), the
    ramps' and the head's dense Gemms first made MatMuls as there (left Gemm, each ramp kept 0.59 MB of float on
    MiniLM)."""
    from edgecompress.graph._quant_common import gemms_as_matmuls
    from edgecompress.graph.quantize_dynamic import QuantizeDynamic, quantize_nodes, weighted_nodes

    graph = gemms_as_matmuls(graph, QuantizeDynamic.gemm_min_weights)
    return quantize_nodes(graph, [node.name for node in weighted_nodes(graph)])


def _tflite_bytes(graphs, seq_len: int) -> bytes:
    """One .tflite, signature `exit_<k>` per segment, each graph's shapes fixed to batch 1 and `seq_len` first
    (LiteRT's lowering takes fixed shapes only), through the same graph passes the whole model's graph uses. Int8
    segments run LiteRT's own per-row activation grid, as the whole model's .tflite does."""
    from edgecompress.backends.tflite.lowering import lower_to_tflite_signatures
    from edgecompress.passes import PassContext, apply_pass, registry

    context = PassContext(seq_len=seq_len, batch=1, dynamic_shapes=False)
    passes = [registry("graph")[name]() for name in ("fix_shapes", "fold_constants")]
    named = []
    for k, graph in enumerate(graphs):
        for p in passes:
            graph, _ = apply_pass(p, graph, context)
        named.append((signature_key(k), graph))
    return lower_to_tflite_signatures(named)


def _tflite_chain(data: bytes, count: int, input_names, feeds) -> np.ndarray:
    """[exits, texts, classes]: the .tflite's signatures chained text by text at batch 1, as the app runs them."""
    import tempfile

    from edgecompress.backends.tflite.artifact import load_interpreter, signature_runner

    rows = len(feeds["attention_mask"])
    with tempfile.TemporaryDirectory(prefix="edgecompress-exits-") as scratch:  # never beside the user's output
        path = Path(scratch) / TFLITE_FILE
        path.write_bytes(data)
        interpreter = load_interpreter(path, threads=2)
        runners = [signature_runner(interpreter, signature_key(k), path) for k in range(count)]
        per_exit: list[list[np.ndarray]] = [[] for _ in range(count)]
        for row in range(rows):
            inputs = {name: feeds[name][row : row + 1] for name in input_names}
            for k, runner in enumerate(runners):
                out = runner(**inputs)
                per_exit[k].append(out[LOGITS].copy())
                if HIDDEN_OUT in out:
                    inputs = {HIDDEN_IN: out[HIDDEN_OUT], "attention_mask": feeds["attention_mask"][row : row + 1]}
    return np.stack([np.concatenate(chunks) for chunks in per_exit]).astype(np.float32)


def measure_segments(shipped: ShippedExits, *, threads: int, runs: int, warmup: int) -> None:
    """Each segment timed by the runners in runtimes/ (own process) on one real text's inputs: the ONNX Runtime
    files, and each signature of the .tflite."""
    from edgecompress.measure.runner import run_runner

    def timed(path: Path, runner: str, sample: dict, signature: str | None = None) -> dict:
        return run_runner(
            path, runner=runner, threads=threads, runs=runs, warmup=warmup, inputs=sample, signature=signature
        )

    shipped.timing[ONNXRUNTIME] = [timed(p, "ort_runner", s) for p, s in zip(shipped.files, shipped.samples)]
    if shipped.tflite is not None:
        shipped.timing[LITERT] = [
            timed(shipped.tflite, "litert_runner", s, signature_key(k)) for k, s in enumerate(shipped.samples)
        ]


def exits_report(
    shipped: ShippedExits,
    exits,
    gold,
    *,
    original: np.ndarray | None = None,
    whole_model_p50: dict[str, float],
    whole_model_quantization: str = "none",
) -> dict:
    """Per threshold and runtime, each runtime's own chain deciding where its texts stop: accuracy on --data
    (labelled), agreement with the whole model (its last exit) and with the model as given, the mean exit layer,
    and the mean latency from the measured per-segment p50s with its speed-up over running every segment. The
    row's top-level figures are ONNX Runtime's; `by_runtime` has every runtime's."""
    from edgecompress.measure.runner import describe

    count = shipped.logits[ONNXRUNTIME].shape[0]
    segment_p50 = {rt: [t["latency_ms"]["p50"] for t in results] for rt, results in shipped.timing.items()}
    cumulative = {rt: np.cumsum(p50) for rt, p50 in segment_p50.items()}
    rows = []
    for threshold in exits.sweep:
        by_runtime = {
            rt: _figures(logits, exits.policy, threshold, gold, original, cumulative.get(rt))
            for rt, logits in shipped.logits.items()
        }
        ort = by_runtime[ONNXRUNTIME]
        rows.append(
            {
                "threshold": threshold,
                "shipped": threshold == exits.threshold,
                **{key: value for key, value in ort.items() if "latency" not in key and "speedup" not in key},
                "mean_latency_ms": {rt: f["mean_latency_ms"] for rt, f in by_runtime.items() if "mean_latency_ms" in f},
                "speedup_vs_all_segments": {
                    rt: f["speedup_vs_all_segments"] for rt, f in by_runtime.items() if "speedup_vs_all_segments" in f
                },
                "by_runtime": by_runtime,
            }
        )
    low, high = threshold_range(exits.policy, count)
    how = {
        rt: f"mean over --data's texts of the summed p50s of the segments each text runs, each segment "
        f"{describe(results[0])} on one real text padded to seq_len; the policy's own softmax is not included"
        for rt, results in shipped.timing.items()
    }
    return {
        "policy": exits.policy,
        "threshold": exits.threshold,
        "threshold_range": [low, high],
        "exits": count,
        "segments": shipped.specs,
        "tflite": shipped.tflite.name if shipped.tflite else None,
        "segment_latency_ms": segment_p50,
        "all_segments_ms": {rt: float(c[-1]) for rt, c in cumulative.items()},
        "whole_model_p50_ms": whole_model_p50,
        "latency_how": how or {"all": "not measured (--no-measure)"},
        "accuracy_how": "measured: each runtime's chain of the shipped segments on every text of --data, each text "
        "stopping where the policy applied to that runtime's logits says (top-level figures: ONNX Runtime's)",
        "parity": shipped.parity,
        "training": exits.training,
        "segment_quantization": shipped.quantization,
        "float_note": _segments_note(shipped.quantization, whole_model_quantization),
        "whole_model_quantization": whole_model_quantization,
        "sweep": rows,
    }


def _figures(logits: np.ndarray, policy: str, threshold: float, gold, original, cumulative) -> dict:
    """One runtime's figures at one threshold, from its own chain's logits [exits, texts, classes]."""
    index = exit_index(logits, policy, threshold)
    preds = logits[index, np.arange(logits.shape[1])].argmax(-1)
    figures = {
        "accuracy": None if gold is None else float(np.mean(preds == gold)),
        "agreement_with_model": float(np.mean(preds == logits[-1].argmax(-1))),
        # with the model as given, before any pass (the float teacher of a quantized export)
        "agreement_with_original": None if original is None else float(np.mean(preds == original.argmax(-1))),
        "mean_exit_layer": float(np.mean(index + 1)),
        "texts_per_exit": np.bincount(index, minlength=len(logits)).tolist(),
    }
    if cumulative is not None:
        mean = float(np.mean(cumulative[index]))
        figures |= {"mean_latency_ms": mean, "speedup_vs_all_segments": float(cumulative[-1] / mean)}
    return figures


def _segments_note(segments: str, whole: str) -> str:
    """What the segments are next to the whole-model artifacts, for the report."""
    if segments == "dynamic-int8":
        how = "dynamic int8 (ONNX Runtime's dynamic quantizer on every weighted node, without the whole model's "
        how += "sensitivity trials), fused"
    else:
        how = "float, fused"
    return (
        f"segments are {how} ({', '.join(SEGMENT_GRAPH_PASSES)}); the whole-model artifacts are {whole}, through "
        "every graph pass of the recipe"
    )


def exits_manifest(report: dict) -> dict:
    """What the app needs to run the segments and stop early."""
    policy, threshold = report["policy"], report["threshold"]
    threshold = int(threshold) if policy == "patience" else threshold  # a count of exits, for the app
    rule = {
        "entropy": "after segment k, p = softmax(logits); stop when -sum(p * ln p) / ln(labels) < threshold",
        "patience": "after segment k, stop when argmax(logits) equals the argmax of each of the previous "
        "`threshold` segments (threshold + 1 exits agreeing in a row)",
    }[policy]
    first = report["segments"][0]
    runtimes = {
        ONNXRUNTIME: {"files": [s["file"] for s in report["segments"]], "shapes": "any batch and length"},
    }
    if report["tflite"]:
        runtimes[LITERT] = {
            "file": report["tflite"],
            "signatures": [s["signature"] for s in report["segments"]],
            "shapes": "batch 1, inputs padded to tokenizer.max_length",
        }
    return {
        "policy": {"kind": policy, "threshold": threshold, "range": report["threshold_range"], "rule": rule},
        "segments": report["segments"],
        "runtimes": runtimes,
        "chain": (
            f"run segment 0 ({first['file']}) on the token inputs; feed each segment's '{HIDDEN_OUT}' to the next "
            f"segment's '{HIDDEN_IN}' with the same attention_mask; after each segment apply the rule to its "
            f"'{LOGITS}'; the last segment is the whole model's head and always stops"
        ),
        "quantization": report["segment_quantization"],
    }


def title(report: dict) -> str:
    return f"Early exit ({report['policy']}, threshold {report['threshold']:g} shipped, {report['exits']} exits)"


def sweep_table(report: dict) -> tuple[list[str], list[list[str]], list[str]]:
    """The report's early-exit figures as a table (header, rows) and the sentences saying how each was obtained;
    report.md and report.html both draw it."""
    runtimes = list(report["sweep"][0]["by_runtime"]) if report["sweep"] else []
    header = ["threshold"]
    for rt in runtimes:
        header += [f"{rt} {what}" for what in ("accuracy", "agreement with the model", "mean exit layer")]
        header += [f"{rt} {what}" for what in ("mean ms", "speed-up") if rt in report["all_segments_ms"]]
    rows = []
    for row in report["sweep"]:
        cells = [f"{row['threshold']:g}" + (" (shipped)" if row["shipped"] else "")]
        for rt in runtimes:
            f = row["by_runtime"][rt]
            cells += [
                "-" if f["accuracy"] is None else f"{f['accuracy']:.2%}",
                f"{f['agreement_with_model']:.2%}",
                f"{f['mean_exit_layer']:.2f}",
            ]
            if "mean_latency_ms" in f:
                cells += [f"{f['mean_latency_ms']:.2f}", f"{f['speedup_vs_all_segments']:.2f}x"]
        rows.append(cells)
    how = [
        f"Accuracy: {report['accuracy_how']}.",
        f"{report['float_note'][0].upper()}{report['float_note'][1:]}.",
        *[f"Latency on {rt}: {text}." for rt, text in report["latency_how"].items()],
        *[
            f"Whole model on {rt} ({report['whole_model_quantization']}, same runner): p50 {ms:.2f} ms; every "
            f"segment run: {report['all_segments_ms'][rt]:.2f} ms."
            for rt, ms in report["whole_model_p50_ms"].items()
            if rt in report["all_segments_ms"]
        ],
    ]
    return header, rows, how


def markdown(report: dict) -> list[str]:
    header, rows, how = sweep_table(report)
    lines = ["", f"## {title(report)}", "", *[f"- {sentence}" for sentence in how], ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in rows]
