"""The one-way trip: intake -> compress -> lower -> rewrite -> emit -> verify -> measure -> check -> package.

Each stage takes what earlier stages returned and returns one typed result; nothing reaches back. The
pass contexts are built here, once per stage (the graph stage's from the compressed model), and passes
never write into them. The report is built from the stage results.

The pipeline owns the output folder: everything is written into a staging folder beside it and swapped
in at the end, so a failed or interrupted export never leaves a half-written folder and never destroys
the previous good one. Library code never prints: progress goes to the `Progress` sink the caller gives.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress import __version__
from edgecompress.atomic import abandon, check_output, staging_dir, swap_in
from edgecompress.errors import UserError
from edgecompress.passes import PassContext, PassRecord, apply_pass

log = logging.getLogger(__name__)

STAGES = ("intake", "data", "compress", "lower", "rewrite", "emit", "verify", "measure", "check", "package")


class Progress:
    """A sink for progress; the default one is silent. The CLI subclasses it to draw on stderr."""

    def stage_started(self, index: int, total: int, name: str, detail: str) -> None: ...

    def stage_finished(self, name: str, seconds: float, summary: str) -> None: ...

    def advanced(self, name: str, done: int, total: int) -> None: ...

    def note(self, line: str) -> None:
        """A line of progress within a stage (a device measurement: connecting, copying, running)."""


@dataclass
class ExportRequest:
    model: Path
    device: str
    out_root: Path
    data: Path | None = None
    calibration: Path | None = None  # unlabelled texts for passes that tune; default: --train-data, else built-in
    train_data: Path | None = None  # labelled texts for passes that train or score by gradient
    recipe: str | None = None
    quantize: str | None = None  # a recipe.QUANTIZE_MODES key; None: as the recipe or the profile says
    tokenizer: Path | None = None
    task: str | None = None  # a tasks name, for an .onnx file without config.json beside it
    runs: int = 50
    warmup: int = 5
    measure: bool = True
    target: str | None = None  # --on: measure on this device too, and judge latency by it (None: host only)
    target_options: Any = None  # measure.transports.TargetOptions

    stage_cache: StageCache | None = None  # shared by exports that repeat compress + lower (export --search)


@dataclass
class StageCache:
    """The compress and lower stages' results, for exports that repeat them: every quantization candidate of a
    search lowers the same model on the same texts, and a pruned candidate trained for one profile is the same
    model for another profile of the same seq_len. Keyed by all those two stages read: model, tokenizer, --data
    and seq_len; with torch passes also each pass's name and options, --train-data and the tuning texts'
    source (what `PassContext` gives compress passes besides shapes; `ctx.artifacts` only refuses work, which is
    then not cached). Each hit gets its own copy of the graph, because graph passes may edit it in place.

    The torch passes' model is also kept apart under a key without --data (passes never see the eval texts):
    a winner re-exported on the test split reuses its trained model and only scores it again."""

    entries: dict[tuple, tuple[Compressed, Any]] = field(default_factory=dict)
    trained: dict[tuple, tuple[Any, tuple[PassRecord, ...]]] = field(default_factory=dict)

    @staticmethod
    def key(request: ExportRequest, recipe, seq_len: int) -> tuple | None:
        key: tuple = (str(request.data), seq_len)
        return key + StageCache.passes_key(request, recipe, seq_len)

    @staticmethod
    def passes_key(request: ExportRequest, recipe, seq_len: int) -> tuple:
        """What the torch passes read: the model, the tokenizer, seq_len, the passes, the training texts."""
        key: tuple = (str(Path(request.model).resolve()), str(request.tokenizer), seq_len)
        if recipe.compress:
            passes = tuple((p.name, json.dumps(p.options(), sort_keys=True, default=str)) for p in recipe.compress)
            key += (str(request.train_data), str(request.calibration), passes)
        return key

    def get_trained(self, request: ExportRequest, recipe, seq_len: int):
        """(model, pass records) the same torch passes made in an earlier export, or None (also without passes)."""
        return self.trained.get(self.passes_key(request, recipe, seq_len)) if recipe.compress else None

    def put_trained(self, request: ExportRequest, recipe, seq_len: int, compressed: Compressed) -> None:
        if recipe.compress:
            self.trained[self.passes_key(request, recipe, seq_len)] = (compressed.bundle, compressed.records)

    def get(self, key: tuple | None):
        from edgecompress.graph._quant_common import copy_model

        if key not in self.entries:
            return None
        compressed, lowered = self.entries[key]
        return compressed, copy_model(lowered)

    def put(self, key: tuple | None, compressed: Compressed, lowered) -> None:
        from edgecompress.graph._quant_common import copy_model

        if key is not None:
            self.entries[key] = (compressed, copy_model(lowered))


@dataclass
class ExportResult:
    out_dir: Path
    report: Any

    @property
    def exit_code(self) -> int:
        return 0 if self.report.passed else 3


@dataclass(frozen=True)
class Compressed:
    """What the compress stage hands on."""

    bundle: Any  # the ModelBundle as compressed
    feeds: dict[str, np.ndarray]  # the eval texts, tokenized as the compressed model's tokenizer does
    alignment: Any  # how those feeds' rows and tokens map back to the examples (tasks.Encoded.alignment)
    original: np.ndarray  # outputs of the model as given, before compression (accuracy is judged against it)
    reference: np.ndarray  # outputs of the model the graph is lowered from (parity is judged against it)
    records: tuple[PassRecord, ...]


@dataclass
class StageClock:
    """Times each stage and reports it to the progress sink; the report lists the times."""

    progress: Progress
    times: list[dict[str, Any]] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str, detail: str = ""):
        self.progress.stage_started(STAGES.index(name) + 1, len(STAGES), name, detail)
        start = time.perf_counter()
        summary: list[str] = []
        yield summary
        seconds = time.perf_counter() - start
        self.times.append({"name": name, "seconds": seconds})
        self.progress.stage_finished(name, seconds, "; ".join(summary))

    def ticker(self, name: str) -> Callable[[int, int], None]:
        return lambda done, total: self.progress.advanced(name, done, total)


def run_export(request: ExportRequest, progress: Progress | None = None) -> ExportResult:
    from edgecompress.devices import get_profile
    from edgecompress.intake.data import load_train_data, prepare_eval_data
    from edgecompress.intake.model import load_bundle
    from edgecompress.lower import lower
    from edgecompress.recipe import choose_recipe
    from edgecompress.rewrite import rewrite_with_twin, with_finishing_passes

    clock = StageClock(progress or Progress())
    with clock.stage("intake", str(request.model)) as summary:
        profile = get_profile(request.device)
        check_output(request.out_root, profile.name)  # before any work, not after it
        _check_target(request)
        recipe = choose_recipe(request.recipe, request.quantize, profile)
        bundle = load_bundle(request.model, tokenizer_dir=request.tokenizer, task_name=request.task)
        check_passes_apply(recipe, bundle)
        family = f"{bundle.architecture.family} " if bundle.architecture else ""
        summary.append(f"{family}{bundle.kind}, recipe {recipe.name}")
    seq_len = profile.runtime.seq_len
    with clock.stage("data") as summary:
        data = prepare_eval_data(bundle, request.data, seq_len)
        summary.append(f"{len(data.dataset)} texts, seq_len {seq_len}")
    train_data = load_train_data(bundle, request.train_data)
    tuning = _tuning_texts(request, train_data)
    calibration = _calibration_feeds(bundle, tuning, seq_len)
    cache = request.stage_cache
    key = cache.key(request, recipe, seq_len) if cache is not None else None
    hit = cache.get(key) if cache is not None else None
    with clock.stage("compress") as summary:
        context = _pass_context(bundle, profile, calibration, train_data, tuning.kind)
        trained = cache.get_trained(request, recipe, seq_len) if cache is not None and not hit else None
        compressed = hit[0] if hit else _compress(recipe.compress, bundle, data, context, clock, trained)
        if cache is not None and not hit:
            cache.put_trained(request, recipe, seq_len, compressed)
        summary.append(f"{len(recipe.compress)} passes{_reuse_note(hit, trained)}")
    with clock.stage("lower") as summary:
        lowered = hit[1] if hit else lower(compressed.bundle, compressed.feeds, compressed.reference)
        summary.append(f"{len(lowered.graph.node)} nodes" + (", reused from an earlier export" if hit else ""))
    if cache is not None and hit is None:
        cache.put(key, compressed, lowered)
    if compressed.bundle.tokenizer is not bundle.tokenizer:  # e.g. a trimmed vocabulary: calibrate on new ids
        calibration = _calibration_feeds(compressed.bundle, tuning, seq_len)
    with clock.stage("rewrite") as summary:
        context = _pass_context(compressed.bundle, profile, calibration, train_data, tuning.kind)
        passes = with_finishing_passes(recipe.graph)
        rewrite = rewrite_with_twin(passes, lowered, context)
        summary.append(f"{len(rewrite.graph.graph.node)} nodes after {len(passes)} passes")
    staging, created = staging_dir(request.out_root, profile.name)
    try:
        report = _finish(request, profile, recipe, data, compressed, rewrite, staging, clock, tuning)
        out_dir = request.out_root / profile.name
        swap_in(staging, out_dir)
    except BaseException as exc:
        abandon(staging, created, exc, request.out_root)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(out_dir, report)


def _reuse_note(hit, trained) -> str:
    if hit:
        return ", their model and reference outputs reused from an earlier export"
    return ", their model reused from an earlier export (scored on these texts)" if trained else ""


def _compress(passes, bundle, data, context: PassContext, clock: StageClock, trained=None) -> Compressed:
    """Torch passes (or their model and records from an earlier export: `trained`); the reference for parity
    becomes the compressed model, accuracy stays against the original."""
    from edgecompress.verify.evaluate import reference_outputs

    original = reference_outputs(bundle, data.feeds, progress=clock.ticker("reference"))
    if trained is not None:
        compressed, records = trained[0], list(trained[1])
    else:
        records = []
        compressed = bundle
        for p in passes:
            compressed, record = apply_pass(p, compressed, context)
            records.append(record)
    encoded = data.encoded
    if compressed.tokenizer is not bundle.tokenizer:  # e.g. a trimmed vocabulary: the app sees new ids
        encoded = compressed.task.encode(
            compressed.tokenizer,
            data.dataset,
            seq_len=next(iter(data.feeds.values())).shape[1],
            input_names=compressed.input_names,
        )
    fired = any(r.fired for r in records)
    feeds = encoded.feeds
    reference = reference_outputs(compressed, feeds, progress=clock.ticker("reference")) if fired else original
    return Compressed(compressed, feeds, encoded.alignment, original, reference, tuple(records))


def _finish(
    request: ExportRequest,
    profile,
    recipe,
    data,
    compressed: Compressed,
    rewrite,
    staging: Path,
    clock: StageClock,
    tuning: TuningTexts,
):
    from edgecompress.backends import emit_all
    from edgecompress.intake.data import TextLengths
    from edgecompress.intake.model import CLASSIFICATION
    from edgecompress.measure.host import measure_on_host, plan_timing
    from edgecompress.report.build import build_report
    from edgecompress.report.html import write_html
    from edgecompress.report.manifest import write_package
    from edgecompress.verify.artifacts import Reference, verify_artifacts
    from edgecompress.verify.evaluate import BUCKET_ATOL, parity_atol
    from edgecompress.verify.teacher import teacher_reference

    bundle, graph = compressed.bundle, rewrite.graph
    buckets = profile.runtime.buckets
    lengths = TextLengths(buckets, bundle.task.token_counts(bundle.tokenizer, data.dataset))
    with clock.stage("emit", ", ".join(profile.artifacts)) as summary:
        artifacts = emit_all(graph, staging, profile.artifacts, buckets)
        summary.append(", ".join(a.path.name for a in artifacts))
    with clock.stage("verify", f"{len(data.dataset)} texts") as summary:
        reference = Reference(
            compressed.reference,
            compressed.feeds,
            bundle.output_name,
            task=bundle.task,
            lossy=any(r.lossy for r in rewrite.records),
            atol=parity_atol(bundle),
            lengths=lengths,
            bucket_atol=BUCKET_ATOL if bundle.parity_atol is None else bundle.parity_atol,
        )
        verified = verify_artifacts(artifacts, graph, reference, integer_only=bundle.integer_only, ticker=clock.ticker)
        exits = _write_exits(bundle, compressed, staging, profile, rewrite.records)
        if exits is not None:
            summary.append(f"{len(exits.files)} early-exit segments")
        summary.append(
            ", ".join(
                f"{a.path.name} max|diff| {p.max_abs_diff:.1e}" for a, p in zip(verified.artifacts, verified.parities)
            )
        )
    with clock.stage("measure") as summary:
        plan = (
            plan_timing(
                profile,
                compressed.feeds,
                runs=request.runs,
                warmup=request.warmup,
                lengths=lengths,
            )
            if request.measure
            else None
        )
        timing = measure_on_host(verified.artifacts, rewrite.float_twin, profile, plan, request.out_root)
        summary.append(
            ", ".join(
                f"{a.path.name} p50 {m['latency_ms']['p50']:.2f} ms"
                for a, m in zip(verified.artifacts, timing.results)
                if m
            )
        )
        if exits is not None and request.measure:
            from edgecompress.exits.ship import measure_segments

            measure_segments(exits, threads=plan.threads if plan else 1, runs=request.runs, warmup=request.warmup)
        device = _measure_on_target(request, profile, verified.artifacts, compressed.feeds, clock)
        if device:
            summary.append(f"on {request.target}: " + ", ".join(f"p50 {r['latency_ms']['p50']:.2f} ms" for r in device))
    with clock.stage("check") as summary:
        report = build_report(
            profile=profile,
            recipe=recipe,
            bundle=bundle,
            data=data,
            served=data._replace(feeds=compressed.feeds, alignment=compressed.alignment),
            lengths=lengths,
            original=compressed.original,
            graph=graph,
            records=[*compressed.records, *rewrite.records],
            verified=verified,
            timing=timing,
            tuned_on=tuning.describe(request.data),
            teacher=teacher_reference(
                bundle, data.dataset, data.gold if bundle.kind == CLASSIFICATION else None, profile.runtime.seq_len
            ),
            device=device,
        )
        report.early_exit = _exits_report(exits, compressed, data, verified.artifacts, timing, rewrite.records)
        summary.append("all budgets met" if report.passed else f"{len(report.misses())} budget(s) exceeded")
    with clock.stage("package") as summary:
        write_package(
            staging,
            bundle=bundle,
            profile=profile,
            graph=graph,
            artifacts=verified.artifacts,
            records=[*compressed.records, *rewrite.records],
            report=report,
        )
        summary.append(str(request.out_root / profile.name))
    report.stages = clock.times
    report.op_latency = _op_latency(graph, profile, verified.artifacts, compressed.feeds, request.measure)
    report.write(staging)
    write_html(staging, report.to_dict())
    return report


def _write_exits(bundle, compressed: Compressed, staging: Path, profile, graph_records):
    """The early-exit segments, verified then written beside the artifacts (None: the model has no ramps); they
    follow the whole model's quantization where they can (ship.SEGMENT_QUANTIZATION), else stay float."""
    if bundle.exits is None:
        return None
    from edgecompress.exits.ship import SEGMENT_QUANTIZATION, write_segments
    from edgecompress.report.manifest import quantization_mode
    from edgecompress.verify.evaluate import parity_atol

    mode = quantization_mode(graph_records)

    return write_segments(
        bundle,
        compressed.feeds,
        compressed.reference,
        staging,
        parity_atol(bundle),
        seq_len=profile.runtime.seq_len,
        tflite="tflite" in profile.artifacts,
        quantization=mode if mode in SEGMENT_QUANTIZATION else "none",
    )


def _exits_report(exits, compressed: Compressed, data, artifacts, timing, graph_records) -> dict | None:
    """Early exit's part of the report, beside the whole-model artifacts' host p50 and quantization (None: no
    ramps)."""
    if exits is None:
        return None
    from edgecompress.exits.ship import exits_report
    from edgecompress.report.manifest import quantization_mode

    whole = {a.runtime: m["latency_ms"]["p50"] for a, m in zip(artifacts, timing.results) if m and a.kind != "ort"}
    return exits_report(
        exits,
        compressed.bundle.exits,
        data.gold,
        original=compressed.original,
        whole_model_p50=whole,
        whole_model_quantization=quantization_mode(graph_records),
    )


def _check_target(request: ExportRequest) -> None:
    """A malformed --on is refused before any work (reaching the device is tried at the measure stage)."""
    from edgecompress.measure.transports import parse_target

    parse_target(request.target, request.target_options)


def _measure_on_target(request: ExportRequest, profile, artifacts, feeds, clock: StageClock) -> list[dict] | None:
    """Each artifact timed on the device --on names (None without --on or with --on host)."""
    from edgecompress.measure.device import measure_on_target
    from edgecompress.measure.transports import parse_target

    transport = parse_target(request.target, request.target_options)
    if transport.name == "host":
        return None
    return measure_on_target(
        artifacts,
        transport,
        threads=profile.runtime.threads,
        seq_len=profile.runtime.seq_len,
        bucketed=len(profile.runtime.buckets) > 1,
        feeds=feeds,
        runs=request.runs,
        warmup=request.warmup,
        progress=clock.progress.note,
    )


def _op_latency(graph, profile, artifacts, feeds, measure: bool) -> dict:
    """Latency per op type for report.html: estimated always; measured on the .onnx when the export measures."""
    from edgecompress.measure.op_breakdown import op_breakdown

    onnx_file = next((a.path for a in artifacts if a.path.suffix == ".onnx"), None)
    first_text = {name: values[:1] for name, values in feeds.items()}
    return op_breakdown(graph, profile, onnx_file if measure else None, first_text)


def check_passes_apply(recipe, bundle) -> None:
    """A recipe pass that does not apply to the model's family is refused before any work, with the reason
    the family gives (its architecture's `not_applicable`)."""
    for step in recipe.compress:
        step.check_model(bundle)
    if bundle.architecture is None:
        return
    for step in (*recipe.compress, *recipe.graph):
        why = bundle.architecture.refuse(step.name)
        if why:
            family = bundle.architecture.describe()
            raise UserError(
                f"pass '{step.name}' of recipe '{recipe.name}' does not apply to {family}: {why}",
                where=str(bundle.source),
                hint="choose another recipe, or drop the pass from yours",
            )


def _pass_context(bundle, profile, calibration, train_data, calibration_source: str) -> PassContext:
    """What the passes of one stage may know: the profile's shapes and the model the stage receives."""
    runtime = profile.runtime
    return PassContext(
        seq_len=runtime.seq_len,
        batch=runtime.batch,
        dynamic_shapes=runtime.dynamic_shapes,
        num_heads=bundle.num_heads,
        hidden_size=bundle.attention_width or bundle.hidden_size,
        num_layers=bundle.num_layers,
        input_names=bundle.input_names,
        calibration=calibration,
        calibration_source=calibration_source,
        train_data=train_data,
        artifacts=tuple(profile.artifacts),
        buckets=runtime.buckets,
        architecture=bundle.architecture,
        task=bundle.task,
    )


@dataclass(frozen=True)
class TuningTexts:
    """The texts passes tune on (activation ranges, sensitivity trials, the mask-value check): never `--data`,
    which only scores (issue 17 item 12: the ops kept float were chosen on the rows that then scored the
    artifact). `--calibration`, else `--train-data`'s texts, else the built-in sentences."""

    texts: list[str]
    kind: str  # "calibration", "train-data" or "built-in", as PassContext.calibration_source
    source: str  # the file, or the built-in corpus

    def describe(self, data: Path | None) -> str:
        what = {
            "calibration": f"--calibration ({self.source})",
            "train-data": f"--train-data ({self.source})",
            "built-in": "the built-in sentences held out for tuning (every fourth; give --calibration for "
            "texts of your own domain)",
        }[self.kind]
        scored = f"--data ({data.name}) only scores" if data is not None else "the other built-in sentences only score"
        return (
            f"activation ranges, quantization sensitivity and the mask-value check ran on {len(self.texts)} "
            f"texts of {what}; the vocabulary trim keeps the tokens of --train-data and --calibration only; "
            f"{scored}"
        )


def _tuning_texts(request: ExportRequest, train_data) -> TuningTexts:
    from edgecompress.intake.builtin_corpus import BUILTIN_TUNING
    from edgecompress.intake.data import BUILTIN_SOURCE, load_dataset

    if request.calibration is not None:
        return TuningTexts(
            load_dataset(request.calibration, require_labels=False).texts, "calibration", str(request.calibration)
        )
    if train_data is not None:
        return TuningTexts(list(train_data.texts), "train-data", str(request.train_data))
    return TuningTexts(list(BUILTIN_TUNING), "built-in", BUILTIN_SOURCE)


def _calibration_feeds(bundle, tuning: TuningTexts, seq_len: int):
    """The tuning texts, encoded as `bundle`'s task feeds the model: pre-split words for a token classifier, each
    text the context of a question for question answering (the rows an app sends, so the quantizers' trials
    judge the task's agreement on rows of its own shape), plain texts otherwise."""
    task = bundle.task
    examples = task.unlabelled(tuning.texts, tuning.source)
    return task.encode(bundle.tokenizer, examples, seq_len=seq_len, input_names=bundle.input_names).feeds


__all__ = ["ExportRequest", "ExportResult", "Progress", "run_export", "__version__"]
