"""The one-way trip: intake -> compress -> lower -> rewrite -> emit -> verify -> measure -> check -> package.

The pipeline owns the output folder: everything is written into a staging folder beside it and swapped
in at the end, so a failed or interrupted export never leaves a half-written folder and never destroys
the previous good one. Library code never prints: progress goes to the `Progress` sink the caller gives.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import __version__
from .data import tokenize
from .errors import UserError, VerificationError
from .passes import PassContext, PassRecord, apply_pass

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
class _Run:
    """State handed from stage to stage within one export."""

    request: ExportRequest
    progress: Progress
    stage_times: list[dict[str, Any]] = field(default_factory=list)
    pass_records: list[PassRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

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
    from .devices import get_profile
    from .recipe import load_recipe

    run = _Run(request, progress or Progress())
    with run.stage("intake", str(request.model)) as summary:
        profile = get_profile(request.device)
        recipe = load_recipe(request.recipe or profile.recipe)
        bundle = _intake(request)
        summary.append(f"{bundle.kind}, recipe {recipe.name}")
    with run.stage("data") as summary:
        dataset, feeds, labels = _prepare_data(bundle, request.data, profile.runtime.seq_len)
        summary.append(f"{len(dataset)} texts, seq_len {profile.runtime.seq_len}")
    context = _pass_context(bundle, profile)
    context.calibration = _calibration_feeds(bundle, request, feeds, profile.runtime.seq_len)
    context.train_data = _train_data(bundle, request)
    with run.stage("compress") as summary:
        original = _reference(bundle, feeds, run)
        original_tokenizer = bundle.tokenizer
        bundle = _apply_stage(recipe.compress, bundle, context, run)
        if bundle.tokenizer is not original_tokenizer:  # e.g. a trimmed vocabulary: the app sees new ids
            feeds = tokenize(bundle.tokenizer, dataset.texts, seq_len=profile.runtime.seq_len,
                             input_names=bundle.input_names)
        reference = original if not any(r.fired for r in run.pass_records) else _reference(bundle, feeds, run)
        summary.append(f"{len(recipe.compress)} passes")
    with run.stage("lower") as summary:
        graph = _lower(bundle, feeds, reference)
        summary.append(f"{len(graph.graph.node)} nodes")
    with run.stage("rewrite") as summary:
        graph = _apply_stage(recipe.graph, graph, context, run)
        summary.append(f"{len(graph.graph.node)} nodes after {len(recipe.graph)} passes")
    staging = _staging_dir(request.out_root, profile.name)
    try:
        report = _finish(run, bundle, profile, recipe, dataset, feeds, labels, original, reference, graph, staging)
        out_dir = request.out_root / profile.name
        _commit(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(out_dir, report)


def _finish(run, bundle, profile, recipe, dataset, feeds, labels, original, reference, graph, staging):
    from . import package
    from .backends import emit_all

    with run.stage("emit", ", ".join(profile.artifacts)) as summary:
        artifacts = emit_all(graph, staging, profile.artifacts)
        summary.append(", ".join(a.path.name for a in artifacts))
    with run.stage("verify", f"{len(dataset)} texts") as summary:
        checks = _verify(run, bundle, artifacts, feeds, reference)
        summary.append(", ".join(f"{a.path.name} max|diff| {c.max_abs_diff:.1e}" for a, (c, _) in zip(artifacts, checks)))
    with run.stage("measure") as summary:
        measured = _measure(run, artifacts, feeds, profile)
        summary.append(", ".join(f"{a.path.name} p50 {m['latency_ms']['p50']:.2f} ms"
                                 for a, m in zip(artifacts, measured) if m))
    with run.stage("check") as summary:
        report = package.build_report(run, bundle, profile, recipe, dataset, labels, original, reference,
                                      graph, artifacts, checks, measured, feeds)
        summary.append("all budgets met" if report.passed else f"{len(report.misses())} budget(s) exceeded")
    with run.stage("package") as summary:
        package.write_package(staging, bundle, profile, graph, artifacts, report)
        summary.append(str(run.request.out_root / profile.name))
    report.stages = run.stage_times
    report.write(staging)
    return report


def _intake(request: ExportRequest):
    from .model import load_bundle

    return load_bundle(request.model, tokenizer_dir=request.tokenizer)


def _prepare_data(bundle, data_path: Path | None, seq_len: int):
    from .data import TextDataset, label_ids, load_dataset, tokenize
    from .model import CLASSIFICATION
    from .samples import SAMPLE_TEXTS

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
                       input_names=bundle.input_names)


def _train_data(bundle, request: ExportRequest):
    from .data import load_dataset
    from .model import CLASSIFICATION

    if request.train_data is None:
        return None
    return load_dataset(request.train_data, require_labels=bundle.kind == CLASSIFICATION)


def _calibration_feeds(bundle, request: ExportRequest, feeds, seq_len: int):
    from .data import load_dataset, tokenize

    if request.calibration is not None:
        texts = load_dataset(request.calibration, require_labels=False).texts
        return tokenize(bundle.tokenizer, texts, seq_len=seq_len, input_names=bundle.input_names)
    return feeds if request.data is not None else None


def _reference(bundle, feeds, run: _Run) -> np.ndarray:
    from .evaluate import reference_outputs

    return reference_outputs(bundle, feeds, progress=run.ticker("reference"))


def _apply_stage(passes, model, context: PassContext, run: _Run):
    for p in passes:
        model, record = apply_pass(p, model, context)
        run.pass_records.append(record)
    return model


# Lowering is checked on this many texts before any rewrite, so an exporter bug is named as such.
LOWERING_CHECK_ROWS = 32


def _lower(bundle, feeds, reference: np.ndarray):
    import onnx

    from .evaluate import FLOAT_PARITY_ATOL, compare, ort_session, run_session
    from .graph.export import export_onnx
    from .model import CLASSIFICATION

    if bundle.module is None:
        graph = onnx.ModelProto()
        graph.CopyFrom(bundle.onnx_model)
        return graph
    graph = export_onnx(bundle, feeds)
    rows = {name: values[:LOWERING_CHECK_ROWS] for name, values in feeds.items()}
    session = ort_session(graph.SerializeToString(), threads=2, optimize=False)
    outputs = run_session(session, rows, output_name=bundle.output_name, batch_size=8)
    parity = compare(reference[:LOWERING_CHECK_ROWS], outputs, classification=bundle.kind == CLASSIFICATION)
    if not parity.passed:
        raise VerificationError(f"lowering to ONNX changed the model: max |diff| {parity.max_abs_diff:.3g} "
                                f"> {FLOAT_PARITY_ATOL} on {parity.examples} texts (this is a bug; please report it)")
    return graph


def _verify(run: _Run, bundle, artifacts, feeds, reference: np.ndarray):
    """Every artifact file is run on every text and must match the reference before anything ships.

    Returns (parity, outputs) per artifact; the outputs feed accuracy and agreement in the report.
    """
    from .evaluate import artifact_outputs, compare
    from .model import CLASSIFICATION

    lossy = any(r.lossy for r in run.pass_records if r.stage == "graph")
    checks = []
    for artifact in artifacts:
        outputs = artifact_outputs(artifact, feeds, output_name=bundle.output_name,
                                   progress=run.ticker(f"verify {artifact.path.name}"))
        parity = compare(reference, outputs, classification=bundle.kind == CLASSIFICATION, lossy=lossy)
        if not parity.passed:
            raise VerificationError(
                f"{artifact.path.name} does not match the reference model: max |diff| {parity.max_abs_diff:.3g} "
                f"(tolerance {parity.tolerance}), prediction agreement {parity.prediction_agreement}, "
                f"min cosine {parity.min_cosine}; nothing was written")
        checks.append((parity, outputs))
    return checks


def _measure(run: _Run, artifacts, feeds, profile) -> list[dict | None]:
    from .measure import RUNNERS, run_runner

    if not run.request.measure:
        return [None for _ in artifacts]
    threads = min(profile.runtime.threads, os.cpu_count() or 1)
    if threads < profile.runtime.threads:
        run.notes.append(f"host has {os.cpu_count()} cores: host latency measured with {threads} threads, "
                         f"not the profile's {profile.runtime.threads}")
    first_row = {name: values[:1] for name, values in feeds.items()}
    results = []
    for artifact in artifacts:
        results.append(run_runner(artifact.path, runner=RUNNERS[artifact.runtime], threads=threads,
                                  runs=run.request.runs, warmup=run.request.warmup, inputs=first_row))
    return results


def _staging_dir(out_root: Path, name: str) -> Path:
    try:
        out_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output folder ({exc.strerror})", where=str(out_root)) from None
    staging = out_root / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def _commit(staging: Path, final: Path) -> None:
    """Swap the finished staging folder in; the old output is removed only after the new one is in place.

    Any interruption between the two renames (Ctrl-C included) puts the old output back.
    """
    backup = final.parent / f".{final.name}.old-{os.getpid()}"
    try:
        if final.exists():
            final.rename(backup)
        staging.rename(final)
    except BaseException:
        if backup.exists() and not final.exists():
            backup.rename(final)
        raise
    shutil.rmtree(backup, ignore_errors=True)


__all__ = ["ExportRequest", "ExportResult", "Progress", "run_export", "__version__"]
