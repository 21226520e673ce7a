"""The one-way trip: intake -> compress -> lower -> rewrite -> emit -> verify -> measure -> check -> package.

The pipeline owns the output folder: everything is written into a staging folder beside it and swapped
in at the end, so a failed or interrupted export never leaves a half-written folder and never destroys
the previous good one. Library code never prints: progress goes to the `Progress` sink the caller gives.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgecompress import __version__
from edgecompress.intake.data import tokenize
from edgecompress.atomic import abandon, check_output, staging_dir, swap_in
from edgecompress.errors import UserError, VerificationError
from edgecompress.passes import PassContext, PassRecord, apply_pass

log = logging.getLogger(__name__)

STAGES = ("intake", "data", "compress", "lower", "rewrite", "emit", "verify", "measure", "check", "package")


class Progress:
    """A sink for progress; the default one is silent. The CLI subclasses it to draw on stderr."""

    def stage_started(self, index: int, total: int, name: str, detail: str) -> None: ...

    def stage_finished(self, name: str, seconds: float, summary: str) -> None: ...

    def advanced(self, name: str, done: int, total: int) -> None: ...


@dataclass
class ExportRequest:
    model: Path
    device: str
    out_root: Path
    data: Path | None = None
    calibration: Path | None = None  # unlabelled texts for passes that calibrate; default: --data
    train_data: Path | None = None  # labelled texts for passes that train or score by gradient
    recipe: str | None = None
    quantize: str | None = None  # a recipe.QUANTIZE_MODES key; None: as the recipe or the profile says
    tokenizer: Path | None = None
    runs: int = 50
    warmup: int = 5
    measure: bool = True


@dataclass
class ExportResult:
    out_dir: Path
    report: Any

    @property
    def exit_code(self) -> int:
        return 0 if self.report.passed else 3


@dataclass
class Run:
    """One export's state, filled in stage by stage and read by the report."""

    request: ExportRequest
    progress: Progress
    stage_times: list[dict[str, Any]] = field(default_factory=list)
    pass_records: list[PassRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile: Any = None
    recipe: Any = None
    bundle: Any = None
    dataset: Any = None
    feeds: dict[str, np.ndarray] | None = None  # eval texts tokenized as the shipped tokenizer does
    labels: np.ndarray | None = None
    original: np.ndarray | None = None  # outputs of the model as given, before compression
    reference: np.ndarray | None = None  # outputs of the model the graph was lowered from
    graph: Any = None  # the final rewritten ONNX model
    artifacts: list = field(default_factory=list)
    checks: list = field(default_factory=list)  # (Parity, outputs) per artifact
    measured: list = field(default_factory=list)  # runner result (or None) per artifact
    audits: list = field(default_factory=list)  # op audit (histogram, float ops) per artifact
    float_twin: Any = None  # the graph without its quantization (see float_twin.py); None if not quantized
    speed_vs_float: list = field(default_factory=list)  # float_twin.compare_speed (or None) per artifact
    cross_runtime: list = field(default_factory=list)  # parity with the ONNX Runtime artifact, per artifact

    @contextmanager
    def stage(self, name: str, detail: str = ""):
        index = STAGES.index(name) + 1
        self.progress.stage_started(index, len(STAGES), name, detail)
        start = time.perf_counter()
        summary: list[str] = []
        yield summary
        seconds = time.perf_counter() - start
        self.stage_times.append({"name": name, "seconds": seconds})
        self.progress.stage_finished(name, seconds, "; ".join(summary))

    def ticker(self, name: str) -> Callable[[int, int], None]:
        return lambda done, total: self.progress.advanced(name, done, total)


def run_export(request: ExportRequest, progress: Progress | None = None) -> ExportResult:
    from edgecompress.devices import get_profile
    from edgecompress.recipe import choose_recipe

    run = Run(request, progress or Progress())
    with run.stage("intake", str(request.model)) as summary:
        run.profile = get_profile(request.device)
        check_output(request.out_root, run.profile.name)  # before any work, not after it
        run.recipe = choose_recipe(request.recipe, request.quantize, run.profile)
        run.bundle = _intake(request)
        summary.append(f"{run.bundle.kind}, recipe {run.recipe.name}")
    seq_len = run.profile.runtime.seq_len
    with run.stage("data") as summary:
        run.dataset, run.feeds, run.labels = _prepare_data(run.bundle, request.data, seq_len)
        summary.append(f"{len(run.dataset)} texts, seq_len {seq_len}")
    context = _pass_context(run.bundle, run.profile)
    context.calibration = _calibration_feeds(run.bundle, request, run.feeds, seq_len)
    context.train_data = _train_data(run.bundle, request)
    with run.stage("compress") as summary:
        tokenizer = run.bundle.tokenizer
        _compress(run, context)
        if run.bundle.tokenizer is not tokenizer:  # e.g. a trimmed vocabulary: graph passes calibrate on new ids
            context.calibration = _calibration_feeds(run.bundle, request, run.feeds, seq_len)
        summary.append(f"{len(run.recipe.compress)} passes")
    with run.stage("lower") as summary:
        run.graph = _lower(run.bundle, run.feeds, run.reference)
        summary.append(f"{len(run.graph.graph.node)} nodes")
    with run.stage("rewrite") as summary:
        _rewrite(run, context)
        summary.append(f"{len(run.graph.graph.node)} nodes after {len(run.recipe.graph)} passes")
    staging, created = staging_dir(request.out_root, run.profile.name)
    try:
        report = _finish(run, staging)
        out_dir = request.out_root / run.profile.name
        swap_in(staging, out_dir)
    except BaseException as exc:
        abandon(staging, created, exc, request.out_root)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(out_dir, report)


def _compress(run: Run, context: PassContext) -> None:
    """Torch passes; the reference for parity becomes the compressed model, accuracy stays against the original."""
    run.original = _reference(run.bundle, run.feeds, run)
    original_tokenizer = run.bundle.tokenizer
    run.bundle = _apply_stage(run.recipe.compress, run.bundle, context, run)
    if run.bundle.tokenizer is not original_tokenizer:  # e.g. a trimmed vocabulary: the app sees new ids
        run.feeds = tokenize(run.bundle.tokenizer, run.dataset.texts, seq_len=run.profile.runtime.seq_len,
                             input_names=run.bundle.input_names)
    fired = any(r.fired for r in run.pass_records)
    run.reference = _reference(run.bundle, run.feeds, run) if fired else run.original


def _finish(run: Run, staging: Path):
    from edgecompress.report import manifest as package
    from edgecompress.backends import emit_all

    with run.stage("emit", ", ".join(run.profile.artifacts)) as summary:
        run.artifacts = emit_all(run.graph, staging, run.profile.artifacts)
        summary.append(", ".join(a.path.name for a in run.artifacts))
    with run.stage("verify", f"{len(run.dataset)} texts") as summary:
        run.audits = [package.artifact_audit(a, run.graph) for a in run.artifacts]
        _check_integer_only(run)
        run.checks = _verify(run)
        summary.append(", ".join(f"{a.path.name} max|diff| {c.max_abs_diff:.1e}"
                                 for a, (c, _) in zip(run.artifacts, run.checks)))
    with run.stage("measure") as summary:
        run.measured = _measure(run)
        run.speed_vs_float = _measure_float_twin(run)
        summary.append(", ".join(f"{a.path.name} p50 {m['latency_ms']['p50']:.2f} ms"
                                 for a, m in zip(run.artifacts, run.measured) if m))
    with run.stage("check") as summary:
        report = package.build_report(run)
        summary.append("all budgets met" if report.passed else f"{len(report.misses())} budget(s) exceeded")
    with run.stage("package") as summary:
        package.write_package(staging, run, report)
        summary.append(str(run.request.out_root / run.profile.name))
    report.stages = run.stage_times
    report.write(staging)
    return report


def _intake(request: ExportRequest):
    from edgecompress.intake.model import load_bundle

    return load_bundle(request.model, tokenizer_dir=request.tokenizer)


def _prepare_data(bundle, data_path: Path | None, seq_len: int):
    from edgecompress.intake.data import TextDataset, label_ids, load_dataset, tokenize
    from edgecompress.intake.model import CLASSIFICATION
    from edgecompress.intake.samples import SAMPLE_TEXTS

    max_length = bundle.tokenizer_settings.max_length
    if seq_len > max_length:
        raise UserError(f"device seq_len {seq_len} exceeds the model's maximum length {max_length}",
                        hint="pick a device profile with a smaller seq_len")
    labelled = bundle.kind == CLASSIFICATION and bundle.labels is not None
    if data_path is None:
        dataset = TextDataset(path=Path("<built-in samples>"), texts=list(SAMPLE_TEXTS), labels=None)
    else:
        dataset = load_dataset(data_path, require_labels=labelled)
    labels = label_ids(dataset, bundle.labels) if labelled and dataset.labels is not None else None
    feeds = tokenize(bundle.tokenizer, dataset.texts, seq_len=seq_len, input_names=bundle.input_names)
    return dataset, feeds, labels


def _pass_context(bundle, profile) -> PassContext:
    runtime = profile.runtime
    return PassContext(seq_len=runtime.seq_len, batch=runtime.batch, dynamic_shapes=runtime.dynamic_shapes,
                       num_heads=bundle.num_heads, hidden_size=bundle.hidden_size, num_layers=bundle.num_layers,
                       input_names=bundle.input_names, artifacts=tuple(profile.artifacts))


def _train_data(bundle, request: ExportRequest):
    from edgecompress.intake.data import load_dataset
    from edgecompress.intake.model import CLASSIFICATION

    if request.train_data is None:
        return None
    return load_dataset(request.train_data, require_labels=bundle.kind == CLASSIFICATION)


def _calibration_feeds(bundle, request: ExportRequest, feeds, seq_len: int):
    from edgecompress.intake.data import load_dataset, tokenize

    if request.calibration is not None:
        texts = load_dataset(request.calibration, require_labels=False).texts
        return tokenize(bundle.tokenizer, texts, seq_len=seq_len, input_names=bundle.input_names)
    return feeds if request.data is not None else None


def _reference(bundle, feeds, run: Run) -> np.ndarray:
    from edgecompress.verify.evaluate import reference_outputs

    return reference_outputs(bundle, feeds, progress=run.ticker("reference"))


def _apply_stage(passes, model, context: PassContext, run: Run):
    for p in passes:
        model, record = apply_pass(p, model, context)
        run.pass_records.append(record)
    return model


def _rewrite(run: Run, context: PassContext) -> None:
    from edgecompress.rewrite import rewrite_with_twin

    rewrite = rewrite_with_twin(run.recipe.graph, run.graph, context)
    run.graph, run.float_twin = rewrite.graph, rewrite.float_twin
    run.pass_records.extend(rewrite.records)


# Lowering is checked on this many texts before any rewrite, so an exporter bug is named as such.
LOWERING_CHECK_ROWS = 32


def _lower(bundle, feeds, reference: np.ndarray):
    import onnx

    from edgecompress.verify.evaluate import compare, ort_session, run_session
    from edgecompress.lower import export_onnx
    from edgecompress.intake.model import CLASSIFICATION

    if bundle.module is None:
        graph = onnx.ModelProto()
        graph.CopyFrom(bundle.onnx_model)
        return graph
    graph = export_onnx(bundle, feeds)
    rows = {name: values[:LOWERING_CHECK_ROWS] for name, values in feeds.items()}
    session = ort_session(graph.SerializeToString(), threads=2, optimize=False)
    outputs = run_session(session, rows, output_name=bundle.output_name, batch_size=8)
    parity = compare(reference[:LOWERING_CHECK_ROWS], outputs, classification=bundle.kind == CLASSIFICATION,
                     atol=parity_atol(bundle))
    if not parity.passed:
        raise VerificationError(f"lowering to ONNX changed the model: max |diff| {parity.max_abs_diff:.3g} "
                                f"> {parity.tolerance} on {parity.examples} texts (this is a bug; please report it)")
    return graph


def parity_atol(bundle) -> float:
    """Float models match to FLOAT_PARITY_ATOL; a torch module that is not float states its own tolerance
    as `parity_atol` (an integer-only model: one least-significant bit of its output scale)."""
    from edgecompress.verify.evaluate import FLOAT_PARITY_ATOL

    return float(getattr(bundle.module, "parity_atol", FLOAT_PARITY_ATOL))


def _verify(run: Run):
    """Every artifact file is run on every text and must match the reference before anything ships.

    Returns (parity, outputs) per artifact; the outputs feed accuracy and agreement in the report.
    """
    from edgecompress.intake.model import CLASSIFICATION

    lossy = any(r.lossy for r in run.pass_records if r.stage == "graph")
    classification = run.bundle.kind == CLASSIFICATION
    checks = []
    for artifact in run.artifacts:
        parity, outputs = _against_reference(run, artifact, f"verify {artifact.path.name}", lossy=lossy,
                                             classification=classification)
        if not parity.passed:
            raise VerificationError(
                f"{artifact.path.name} does not match the reference model: max |diff| {parity.max_abs_diff:.3g} "
                f"(tolerance {parity.tolerance}), prediction agreement {parity.prediction_agreement}, "
                f"min cosine {parity.min_cosine}; nothing was written")
        checks.append((parity, outputs))
    run.cross_runtime = _cross_check(run, checks, lossy=lossy, classification=classification)
    return checks


def _against_reference(run: Run, artifact, label: str, *, lossy: bool, classification: bool):
    """(parity with the reference model, outputs) of one artifact file run on every text."""
    from edgecompress.verify.evaluate import artifact_outputs, compare

    outputs = artifact_outputs(artifact, run.feeds, output_name=run.bundle.output_name, progress=run.ticker(label))
    return compare(run.reference, outputs, classification=classification, lossy=lossy,
                   atol=parity_atol(run.bundle)), outputs


def _against_runtime(run: Run, ort_outputs, outputs, *, lossy: bool, classification: bool):
    from edgecompress.verify.evaluate import compare_runtimes

    return compare_runtimes(ort_outputs, outputs, classification=classification, lossy=lossy,
                            atol=parity_atol(run.bundle))


def _cross_check(run: Run, checks, *, lossy: bool, classification: bool) -> list[dict | None]:
    """Each non-ONNX-Runtime artifact against the ONNX Runtime one of the same export (or the final graph
    run in ONNX Runtime when the profile ships none): one export must be one model on every runtime."""
    from edgecompress.verify.evaluate import ort_session, run_session

    others = [i for i, a in enumerate(run.artifacts) if a.runtime != "onnxruntime"]
    if not others:
        return [None] * len(run.artifacts)
    ort_outputs = next((outputs for a, (_, outputs) in zip(run.artifacts, checks) if a.runtime == "onnxruntime"),
                       None)
    source = "the ONNX Runtime artifact"
    if ort_outputs is None:
        session = ort_session(run.graph.SerializeToString(), threads=2, optimize=True)
        ort_outputs = run_session(session, run.feeds, output_name=run.bundle.output_name, batch_size=1)
        source = "the final ONNX graph in ONNX Runtime"
    results: list[dict | None] = [None] * len(run.artifacts)
    for i in others:
        parity = _against_runtime(run, ort_outputs, checks[i][1], lossy=lossy, classification=classification)
        if not parity.passed:
            parity = _write_exact(run, i, checks, ort_outputs, parity, lossy=lossy, classification=classification)
        if not parity.passed:
            artifact = run.artifacts[i]
            raise VerificationError(
                f"{artifact.path.name} does not compute what {source} computes: max |diff| "
                f"{parity.max_abs_diff:.3g}, same prediction on {parity.prediction_agreement}, min cosine "
                f"{parity.min_cosine}; nothing was written")
        results[i] = {**dataclasses.asdict(parity), "against": source, "how": "measured"}
    return results


def _write_exact(run: Run, i: int, checks, ort_outputs, missed, *, lossy: bool, classification: bool):
    """Write artifact `i` again with its runtime's exact writer (ONNX Runtime's integers) when it has one,
    check it like the first, and say so in the report; returns the new cross-runtime parity (or `missed`)."""
    from edgecompress.report import manifest as package
    from edgecompress.backends import backend_for

    first = run.artifacts[i]
    write = backend_for(first.runtime).exact_writer
    if write is None:
        return missed
    artifact = write(run.graph, first.path.parent)
    reference, outputs = _against_reference(run, artifact, f"verify {artifact.path.name} (exact)", lossy=lossy,
                                            classification=classification)
    if not reference.passed:
        return missed
    run.artifacts[i], checks[i] = artifact, (reference, outputs)
    run.audits[i] = package.artifact_audit(artifact, run.graph)
    parity = _against_runtime(run, ort_outputs, outputs, lossy=lossy, classification=classification)
    run.notes.append(f"{artifact.path.name}: with the runtime's own int8 rounding it missed the check against "
                     f"the ONNX Runtime artifact ({_agreement(missed)}); written again on ONNX Runtime's int8 "
                     f"grids, which is slower ({_agreement(parity)})")
    return parity


def _agreement(parity) -> str:
    if parity.prediction_agreement is not None:
        return f"same prediction on {parity.prediction_agreement:.2%} of texts"
    return f"max |diff| {parity.max_abs_diff:.3g}"


def _check_integer_only(run: Run) -> None:
    """An integer-only model may compute in float only at its boundary: the audit of each file decides."""
    if not getattr(run.bundle.module, "integer_only", False):
        return
    for artifact, audit in zip(run.artifacts, run.audits):
        inside = audit.get("float_ops_inside")
        if inside is None:
            raise VerificationError(f"{artifact.path.name}: the {artifact.runtime} audit cannot tell float ops "
                                    f"inside the model, so an integer-only export cannot be proven; nothing "
                                    f"was written")
        if inside:
            raise VerificationError(f"{artifact.path.name} is not integer-only: {len(inside)} node(s) compute in "
                                    f"float between integer ops ({', '.join(inside[:5])}); nothing was written")


def _measure(run: Run) -> list[dict | None]:
    if not run.request.measure:
        return [None for _ in run.artifacts]
    threads = _host_threads(run.profile)
    if threads < run.profile.runtime.threads:
        run.notes.append(f"host has {os.cpu_count()} cores: host latency measured with {threads} threads, "
                         f"not the profile's {run.profile.runtime.threads}")
    return [_time_artifact(run, artifact, threads) for artifact in run.artifacts]


def _measure_float_twin(run: Run) -> list[dict | None]:
    """Time the float twin of a quantized export with the same runner, to flag a quantization that slows."""
    from edgecompress.measure.float_twin import compare_speed, measure_twin

    if run.float_twin is None or not run.request.measure:
        return [None for _ in run.artifacts]
    threads = _host_threads(run.profile)
    twin = measure_twin(run.float_twin, tuple(a.kind for a in run.artifacts),
                        lambda artifact: _time_artifact(run, artifact, threads), scratch_root=run.request.out_root)
    return [compare_speed(m, twin[a.kind], threads) if a.kind in twin else None
            for a, m in zip(run.artifacts, run.measured)]


def _host_threads(profile) -> int:
    return min(profile.runtime.threads, os.cpu_count() or 1)


def _time_artifact(run: Run, artifact, threads: int) -> dict:
    """The artifact in its runtime's standalone runner, on the first eval text, as the report quotes it."""
    from edgecompress.backends import backend_for
    from edgecompress.measure.runner import run_runner

    first_row = {name: values[:1] for name, values in run.feeds.items()}
    return run_runner(artifact.path, runner=backend_for(artifact.runtime).runner, threads=threads, runs=run.request.runs,
                      warmup=run.request.warmup, inputs=first_row)


__all__ = ["ExportRequest", "ExportResult", "Progress", "run_export", "__version__"]
