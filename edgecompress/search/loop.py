"""The search loop: run the ladder, skip what cannot win, ship the winner as a normal export would.

Every candidate is a normal `run_export` into its own folder under a work folder beside the output
(`.<device>-search.partial-<pid>`: the name the atomic writer's stale-staging sweep removes if this process is
killed). The winner's folder is then copied into a staging folder with candidates.json and report.html and
swapped in whole, so a failed or interrupted search never touches a previous good OUTPUT/<device>/.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgecompress.errors import EdgecompressError, InternalError, UserError, VerificationError
from edgecompress.pipeline import ExportRequest, Progress, StageCache, run_export
from edgecompress.report.document import ESTIMATED, STATIC
from edgecompress.search.candidates import CHEAP, TRAINING, Candidate, plan
from edgecompress.search.loyalty import OriginalPredictions
from edgecompress.search.table import (
    FAILED,
    RAN,
    SKIPPED,
    Row,
    choose_winner,
    closest_miss,
    explain_losses,
    row_from_report,
)

log = logging.getLogger(__name__)


class SearchProgress:
    """A sink for the search's own lines (one per candidate, with time left); the default one is silent."""

    def line(self, text: str) -> None: ...


@dataclass
class SearchRequest:
    export: ExportRequest  # what every candidate shares: model, device, data, output root, measurement
    students: list[Path] = field(default_factory=list)


@dataclass
class SearchResult:
    out_dir: Path
    rows: list[Row]
    winner: Row | None  # None: no candidate met every budget (exit 3); the closest miss was written
    shipped: Row

    @property
    def exit_code(self) -> int:
        return 0 if self.winner is not None else 3


def run_search(
    request: SearchRequest, progress: SearchProgress | None = None, export_progress: Progress | None = None
) -> SearchResult:
    from edgecompress.atomic import check_output
    from edgecompress.devices import get_profile

    said = progress or SearchProgress()
    # The quantization rungs lower the same model on the same texts: one compress + lower for all of them.
    base = replace(request.export, stage_cache=StageCache())
    profile = get_profile(base.device)
    check_output(base.out_root, profile.name)
    data = check_search_inputs(request)
    work, created = _work_folder(base.out_root, profile.name)
    try:
        no_training = _why_no_pruning(base)
        candidates = plan(base.model, request.students, profile.quantize, no_training is None, work)
        original = OriginalPredictions(base.model, data, profile.runtime.seq_len)
        rows = _run_ladder(candidates, base, work, said, export_progress, original)
        if no_training is not None:
            rows.append(_no_training_row(no_training))
        winner = choose_winner(rows)
        explain_losses(rows, winner)
        shipped = winner or closest_miss(rows)
        if shipped is None:
            raise _nothing_exported(rows)
        out_dir = _ship(shipped, rows, winner, request, profile, work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        _remove_empty(created)
        raise
    shutil.rmtree(work, ignore_errors=True)
    return SearchResult(out_dir, rows, winner, shipped)


def _work_folder(out_root: Path, device: str) -> tuple[Path, list[Path]]:
    """`.<device>-search.partial-<pid>` beside the output (a name the stale-staging sweep removes if this
    process is killed), and the folders made for it, deepest first."""
    from edgecompress.atomic import remove_stale_staging

    created = [p for p in (out_root, *out_root.parents) if not p.exists()]
    out_root.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out_root)
    work = out_root / f".{device}-search.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    return work, created


def _remove_empty(folders: list[Path]) -> None:
    """After a failed search: the output folders it created, if they are still empty (deepest first)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


def _nothing_exported(rows: list[Row]) -> EdgecompressError:
    """Every candidate failed: a bug if any failure was one (exit 1), else the user's to fix (exit 2)."""
    failures = "; ".join(f"{r.name}: {r.reason}" for r in rows if r.status == FAILED)[:400]
    if "internal error" in failures:
        return InternalError(f"no candidate of the search could be exported: {failures}")
    return UserError("no candidate of the search could be exported", hint=failures or None)


def check_search_inputs(request: SearchRequest) -> Path:
    """Refuse, before any work, what would make the search meaningless: no labelled --data, a bad --student.
    Returns --data."""
    from edgecompress.intake.data import load_dataset

    data = request.export.data
    if data is None:
        raise UserError(
            "--search needs --data: the search ranks candidates by accuracy, which cannot be judged without "
            "labelled texts",
            expected="--data FILE with a text and a label column (CSV/TSV/JSONL)",
            hint="give the labelled texts you would evaluate the model on",
        )
    if load_dataset(data, require_labels=False).labels is None:
        raise UserError(
            "--data has no label column: the search ranks candidates by accuracy, which cannot be judged "
            "without labels",
            where=str(data),
            expected="a label column beside the text column",
        )
    for folder in request.students:
        check_student(folder, request.export.model)
    return data


def check_student(folder: Path, teacher: Path) -> None:
    """A --student must be a folder `edgecompress distill` wrote from this teacher (its training.json says so)."""
    from edgecompress.distill.held_out import checkpoint_digest
    from edgecompress.verify.teacher import student_record

    expected = "a student checkpoint folder written by `edgecompress distill` (config.json, weights, training.json)"
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise UserError("--student is not a checkpoint folder", where=str(folder), expected=expected)
    record = student_record(folder)
    if record is None:
        raise UserError(
            "--student is not a student checkpoint: no training.json naming its teacher",
            where=str(folder),
            expected=expected,
            hint="distill one with `edgecompress distill MODEL --student ... -o DIR`",
        )
    same_path = Path(record["path"]).resolve() == teacher.resolve()
    if not same_path and teacher.is_dir() and record.get("digest") != checkpoint_digest(teacher):
        raise UserError(
            f"--student was distilled from another teacher ({record['path']})",
            where=str(folder),
            expected=f"a student of {teacher}",
            hint="give students distilled from the model being exported",
        )


def _run_ladder(
    candidates: list[Candidate],
    base: ExportRequest,
    work: Path,
    said: SearchProgress,
    export_progress,
    original: OriginalPredictions,
) -> list[Row]:
    rows: dict[str, Row] = {}
    clock = _Clock(candidates)
    for index, candidate in enumerate(candidates, 1):
        why_not = _skip_reason(candidate, rows)
        if why_not:
            rows[candidate.name] = Row(candidate.name, candidate.what, candidate.tier, SKIPPED, reason=why_not)
            clock.skipped(candidate)
            said.line(f"[search {index}/{len(candidates)}] {candidate.name}: skipped ({why_not})")
            continue
        said.line(f"[search {index}/{len(candidates)}] {candidate.name}: {candidate.what}; {clock.left()}")
        probed = _probe_shapes(candidate, base, work, export_progress) if candidate.shapes_probe else None
        if probed is not None:  # the untrained twin already misses a budget training cannot fix
            rows[candidate.name] = probed
            clock.skipped(candidate)
            said.line(f"        {candidate.name}: {probed.status} ({probed.reason})")
            continue
        row = _run_candidate(candidate, base, work, export_progress, original, first=index == 1)
        rows[candidate.name] = row
        clock.ran(candidate, row.seconds or 0.0)
        said.line(f"        {candidate.name}: {row_summary(row)}")
    return list(rows.values())


def _skip_reason(candidate: Candidate, rows: dict[str, Row]) -> str | None:
    """Why `candidate` cannot win, given the rows so far; None: run it."""
    lighter = rows.get(candidate.after) if candidate.after else None
    if lighter is not None and lighter.missed_accuracy:
        drop = lighter.budgets["accuracy drop"]
        return (
            f"the lighter {lighter.name} already misses the accuracy budget (drop {drop['value']:.2f} > "
            f"{drop['limit']:.2f} points); this one compresses harder"
        )
    if lighter is not None and lighter.status == SKIPPED and "accuracy" in lighter.reason:
        return f"the lighter {lighter.name} was skipped: {lighter.reason}"
    if candidate.tier == TRAINING:
        cheap = [r.name for r in rows.values() if r.tier == CHEAP and r.status == RAN and r.passed]
        if cheap:
            return f"training runs only when no cheap candidate meets every budget, and {', '.join(cheap)} already did"
        if lighter is not None and lighter.status == RAN and lighter.passed:
            return (
                f"the lighter {lighter.name} already meets every budget; heavier pruning costs another training "
                "run and keeps less of the model"
            )
    return None


def _probe_shapes(candidate: Candidate, base: ExportRequest, work: Path, export_progress) -> Row | None:
    """Export the candidate's untrained twin (same shapes and ops, no recovery training; not measured on the host):
    a SKIPPED row when it misses a budget that shapes fix, a FAILED row when it cannot be exported, else None.
    A twin that fails verification says nothing of the trained model (its weights are what training changes: an
    untrained pruned int8 model's own-length run once strayed from its padded run), so that is None too."""
    assert candidate.shapes_probe is not None  # only called for candidates that have one
    request = replace(
        base,
        model=candidate.model,
        out_root=work / f"{candidate.name}-untrained",
        recipe=str(candidate.shapes_probe),
        quantize=candidate.quantize,
        measure=False,
    )
    start = time.monotonic()
    try:
        result = run_export(request, export_progress)
    except VerificationError as exc:
        log.info("%s: its untrained twin failed verification (%s); training decides", candidate.name, exc)
        return None
    except EdgecompressError as exc:
        return _failed(candidate, f"{exc} (found on its untrained twin, before training)", start)
    report = json.loads((result.out_dir / "report.json").read_text(encoding="utf-8"))
    probe = row_from_report(report, candidate.name, candidate.what, candidate.tier, time.monotonic() - start, work)
    why = shapes_cannot_meet(probe)
    if why is None:
        return None
    return Row(candidate.name, candidate.what, candidate.tier, SKIPPED, reason=why, seconds=probe.seconds)


def shapes_cannot_meet(probe: Row) -> str | None:
    """Why training cannot help: budgets the untrained twin misses whose figure depends on shapes alone (estimated
    or static, not accuracy); None when none does."""
    missed = [
        f"{name} {v['value']:.4g} {v['unit']} > {v['limit']:.4g} {v['unit']} ({v['how']})"
        for name, v in probe.budgets.items()
        if name != "accuracy drop" and not v["passed"] and v["how"] in (ESTIMATED, STATIC)
    ]
    if not missed:
        return None
    return (
        f"the same pruning without recovery training (same shapes and ops) misses "
        f"{'; '.join(missed)}; training changes weights, not these figures"
    )


def _run_candidate(
    candidate: Candidate,
    base: ExportRequest,
    work: Path,
    export_progress,
    original: OriginalPredictions,
    *,
    first: bool,
) -> Row:
    """One normal export into work/<candidate>/; a candidate that cannot be exported is a failed row, not the end.

    Except the first (the model as given, float): every other candidate is it plus compression, so bad input
    there (a missing model, a seq_len the model cannot take) is the user's to fix, with the export's own line."""
    request = replace(
        base,
        model=candidate.model,
        out_root=work / candidate.name,
        recipe=str(candidate.recipe) if candidate.recipe else None,
        quantize=candidate.quantize,
        tokenizer=None if candidate.student else base.tokenizer,
    )
    start = time.monotonic()
    try:
        result = run_export(request, export_progress)
    except EdgecompressError as exc:
        if first and isinstance(exc, UserError):
            raise
        return _failed(candidate, str(exc), start)
    except Exception as exc:  # a bug in one candidate's export must not cost the user the other candidates
        log.warning("candidate %s: internal error", candidate.name, exc_info=True)
        return _failed(candidate, f"internal error {type(exc).__name__}: {exc} (a bug; please report it)", start)
    report = json.loads((result.out_dir / "report.json").read_text(encoding="utf-8"))
    row = row_from_report(
        report, candidate.name, candidate.what, candidate.tier, time.monotonic() - start, result.out_dir
    )
    if candidate.student:  # its export judged agreement against the student's own float model
        row.agreement = original.agreement(candidate.model, result.out_dir) or _unmeasured(row.agreement)
    return row


def _unmeasured(agreement: dict[str, Any] | None) -> dict[str, Any] | None:
    """Without a .onnx to run, a student's agreement is the one its export measured, and says against what."""
    if agreement is None:
        return None
    return {**agreement, "method": agreement["method"] + " (the student's own float model, not the original)"}


def _failed(candidate: Candidate, message: str, start: float) -> Row:
    brief = " ".join(message.split())[:300]
    return Row(
        candidate.name,
        candidate.what,
        candidate.tier,
        FAILED,
        reason=f"export failed: {brief}",
        seconds=round(time.monotonic() - start, 1),
    )


def _why_no_pruning(base: ExportRequest) -> str | None:
    if base.model.suffix == ".onnx":
        return f"pruning needs the torch checkpoint; {base.model.name} is an ONNX file"
    if base.train_data is None:
        return "needs --train-data (labelled texts to prune and recover on)"
    return None


def _no_training_row(reason: str) -> Row:
    what = "structured pruning with distillation at a few sparsities"
    return Row("pruned", what, TRAINING, SKIPPED, reason=reason)


def row_summary(row: Row) -> str:
    """One line for people: accuracy, size, p90 (how obtained), the verdict, the time it took."""
    if row.status != RAN:
        return row.reason
    accuracy = f"accuracy {100 * row.accuracy['value']:.2f}%" if row.accuracy else "accuracy n/a"
    latency = f", p90 {row.latency_ms['value']:.3g} ms ({row.latency_ms['how']})" if row.latency_ms else ""
    verdict = "meets every budget" if row.passed else "misses " + "; ".join(row.misses())
    return f"{accuracy}, {row.size_mb:.2f} MB{latency}: {verdict} ({row.seconds:.0f} s)"


class _Clock:
    """Time left: the mean time of the candidates run so far in each tier, times the ones still to come.

    Training candidates have no estimate until one has run (a training run costs minutes, an export seconds).
    """

    def __init__(self, candidates: list[Candidate]) -> None:
        self._pending = {tier: sum(c.tier == tier for c in candidates) for tier in (CHEAP, TRAINING)}
        self._spent: dict[str, list[float]] = {CHEAP: [], TRAINING: []}
        self._start = time.monotonic()

    def ran(self, candidate: Candidate, seconds: float) -> None:
        self._pending[candidate.tier] -= 1
        self._spent[candidate.tier].append(seconds)

    def skipped(self, candidate: Candidate) -> None:
        self._pending[candidate.tier] -= 1

    def left(self) -> str:
        elapsed = f"{duration(time.monotonic() - self._start)} elapsed"
        parts = []
        for tier in (CHEAP, TRAINING):
            pending, spent = self._pending[tier], self._spent[tier]
            if pending == 0:
                continue
            if spent:
                mean = sum(spent) / len(spent)
                parts.append(f"about {duration(pending * mean)} left for {pending} {tier} candidate(s)")
            else:
                parts.append(f"{pending} {tier} candidate(s) to go (no estimate until one has run)")
        return f"{elapsed}, " + ", ".join(parts) if parts else elapsed


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def _ship(shipped: Row, rows: list[Row], winner: Row | None, request: SearchRequest, profile, work: Path) -> Path:
    """Copy the shipped candidate's export into OUTPUT/<device>/ atomically, with the search's own files."""
    from edgecompress.atomic import abandon, staging_dir, swap_in
    from edgecompress.search.publish import add_search_files

    out_root = request.export.out_root
    staging, created = staging_dir(out_root, profile.name)
    try:
        assert shipped.folder is not None  # a RAN row always has its folder
        shutil.copytree(shipped.folder, staging, dirs_exist_ok=True)
        add_search_files(staging, rows, winner, shipped, _context(request, profile), profile)
        final = out_root / profile.name
        swap_in(staging, final)
    except BaseException as exc:
        abandon(staging, created, exc, out_root)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _context(request: SearchRequest, profile) -> dict[str, Any]:
    base = request.export

    return {
        "model": str(base.model),
        "device": profile.name,
        "data": str(base.data),
        "train_data": str(base.train_data) if base.train_data else None,
        "students": [str(s) for s in request.students],
        "budgets": {
            "latency_p90_ms": profile.budgets.latency_p90_ms,
            "latency_applies_to": profile.budgets.latency_applies_to,
            "peak_memory_mb": profile.budgets.peak_memory_mb,
            "artifact_size_mb": profile.budgets.artifact_size_mb,
            "accuracy_drop_points": profile.budgets.accuracy_drop_points,
        },
    }
