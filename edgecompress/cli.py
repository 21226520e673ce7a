"""Command line: parsing, progress drawing and error -> exit code mapping only.

Exit codes: 0 all budgets met; 3 a budget exceeded (artifacts and report still written);
2 bad input or usage (one line, no traceback); 1 internal error; 130 interrupted; 143 terminated (SIGTERM).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import click

from edgecompress.errors import EdgecompressError, UserError
from edgecompress.logs import show_progress_on_stderr
from edgecompress.tasks import task_names

EXIT_BUDGET = 3


class _StderrProgress:
    """Stage lines on stderr, and progress of long per-text steps with rate and time left: redrawn in place on a
    terminal, one line every LOG_EVERY_S seconds when stderr is a log (CI), so a long run says it is alive."""

    LOG_EVERY_S = 5.0

    def __init__(self, clock=time.monotonic) -> None:
        self._live = sys.stderr.isatty()
        self._last = -1
        self._clock = clock
        self._started: dict[str, tuple[float, int]] = {}  # step name -> (when it started, done then)
        self._seen: dict[str, int] = {}  # step name -> done at its last call
        self._logged = 0.0
        self._last_event = clock()

    def stage_started(self, index: int, total: int, name: str, detail: str) -> None:
        click.echo(f"[{index:2d}/{total}] {name}{': ' + detail if detail else ''} ...", err=True)
        self._logged = self._last_event = self._clock()

    def stage_finished(self, name: str, seconds: float, summary: str) -> None:
        if self._live:
            click.echo("\r\033[K", err=True, nl=False)
        click.echo(f"        {name} done in {seconds:.1f} s{': ' + summary if summary else ''}", err=True)

    def advanced(self, name: str, done: int, total: int) -> None:
        now = self._clock()
        start, done_then = self._started.get(name, (None, 0))
        if start is None or done < self._seen.get(name, 0):  # a new step (or the same name run again): it began
            # It began now if it says 0 done, else when the previous step or the stage last said something.
            start, done_then = (now if done == 0 else self._last_event), 0
            self._started[name] = (start, done_then)
        self._seen[name] = done
        self._last_event = now
        if self._live:
            percent = 100 * done // max(total, 1)
            if percent != self._last:
                self._last = percent
                click.echo(
                    f"\r\033[K        {self._line(name, done, total, now - start, done - done_then)}",
                    err=True,
                    nl=False,
                )
        elif now - self._logged >= self.LOG_EVERY_S:
            self._logged = now
            click.echo(f"        {self._line(name, done, total, now - start, done - done_then)}", err=True)

    def note(self, line: str) -> None:
        click.echo(f"        {line}", err=True)
        self._logged = self._last_event = self._clock()

    @staticmethod
    def _line(name: str, done: int, total: int, elapsed: float, counted: int) -> str:
        line = f"{name}: {done}/{total} ({100 * done // max(total, 1)}%)"
        if elapsed > 0 and counted > 0:
            rate = counted / elapsed
            line += f", {rate:.0f} texts/s, {_duration((total - done) / rate)} left"
        return line


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI runner's or build system's cancel), unwound exactly like Ctrl-C: staging removed,
    the previous output intact."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _run_guarded(action):
    """Run a command body; map our errors to their exit codes with one line and no traceback.

    Interrupted runs exit 128 + the signal number, as a shell reports a process the signal ended:
    130 for SIGINT (Ctrl-C), 143 for SIGTERM, so a CI log tells a user's cancel from the runner's.
    """
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        return action()
    except EdgecompressError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Terminated:
        click.echo("terminated (SIGTERM): nothing was written; any previous output is intact", err=True)
        sys.exit(128 + signal.SIGTERM)
    except KeyboardInterrupt:
        click.echo("interrupted: nothing was written; any previous output is intact", err=True)
        sys.exit(130)
    except Exception as exc:  # anything unforeseen is our bug: one line, the traceback only with -v
        logging.getLogger("edgecompress").info("internal error", exc_info=True)
        brief = " ".join(str(exc).split())[:300]
        click.echo(
            f"error: internal error: {type(exc).__name__}: {brief} (this is a bug in edgecompress; "
            f"please report it with the output of -v)",
            err=True,
        )
        sys.exit(1)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _set_verbose(ctx, param, value: bool) -> None:
    if value:
        logging.getLogger().setLevel(logging.INFO)


def verbose_option(command):
    """`-v` after the subcommand too (`edgecompress export ... -v`), as before it."""
    return click.option(
        "-v", "--verbose", is_flag=True, expose_value=False, callback=_set_verbose, help="Log what each pass does."
    )(command)


@click.group()
@click.version_option(package_name="edgecompress")
@click.option("-v", "--verbose", is_flag=True, help="Log what each pass does.")
def main(verbose: bool) -> None:
    """Compress a BERT-class text model into mobile artifacts proven to fit a named device."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")
    show_progress_on_stderr()


def target_options(command):
    """--on TARGET and what reaching it needs: the same options on `bench` and `export`."""
    options = [
        click.option(
            "--on",
            "target",
            metavar="TARGET",
            help="Measure there: host (default), ssh://user@host[:port] (a Linux board with python3), or "
            "adb[:SERIAL] (an Android phone, through the runtime's own benchmark program).",
        ),
        click.option(
            "--ssh-config",
            type=click.Path(path_type=Path),
            envvar="EDGECOMPRESS_SSH_CONFIG",
            help="ssh_config file for ssh targets (identity, known hosts); default: ~/.ssh/config.",
        ),
        click.option("--remote-python", metavar="PATH", help="Python on an ssh target (default: python3 on its PATH)."),
        click.option(
            "--benchmark-model",
            type=click.Path(path_type=Path),
            envvar="EDGECOMPRESS_BENCHMARK_MODEL",
            help="LiteRT's benchmark_model built for the phone (adb targets, .tflite).",
        ),
        click.option(
            "--perf-test",
            type=click.Path(path_type=Path),
            envvar="EDGECOMPRESS_PERF_TEST",
            help="ONNX Runtime's onnxruntime_perf_test built for the phone (adb targets, .onnx/.ort).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _target_options(ssh_config, remote_python, benchmark_model, perf_test):
    from edgecompress.measure.transports import TargetOptions

    programs = {runtime: path for runtime, path in (("litert", benchmark_model), ("onnxruntime", perf_test)) if path}
    return TargetOptions(ssh_config=ssh_config, remote_python=remote_python, programs=programs)


@main.command()
@verbose_option
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--device", required=True, help="Device profile name (see `edgecompress devices`) or a .toml path.")
@click.option("--data", type=click.Path(path_type=Path), help="Labelled texts (CSV/TSV/JSONL) to verify on.")
@click.option(
    "-o",
    "--output",
    "out_root",
    type=click.Path(path_type=Path),
    default=Path("dist"),
    show_default=True,
    help="Output root; artifacts go to OUTPUT/<device>/.",
)
@click.option(
    "--calibration",
    type=click.Path(path_type=Path),
    help="Unlabelled texts for passes that tune (default: --train-data's texts, else built-in "
    "sentences; never --data, which only scores).",
)
@click.option(
    "--train-data",
    type=click.Path(path_type=Path),
    help="Labelled training texts for passes that train or score by gradient (pruning).",
)
@click.option("--recipe", help="Recipe name or .toml path; default: the device profile's recipe.")
@click.option(
    "--quantize",
    metavar="MODE",
    help="none, dynamic-int8, int8, int8-qat, int4, int8-int4-mixed or integer-only: replaces the "
    "recipe's quantization; default: as --recipe says, else the device profile's mode.",
)
@click.option("--tokenizer", type=click.Path(path_type=Path), help="Tokenizer folder (for .onnx input).")
@click.option(
    "--task",
    type=click.Choice(task_names()),
    help="The model's task, for an .onnx file without its config.json beside it (a checkpoint's head says it).",
)
@click.option("--runs", type=click.IntRange(1), default=50, show_default=True, help="Timed runs on the host.")
@click.option("--no-measure", is_flag=True, help="Skip the host latency measurement.")
@target_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option(
    "--search",
    is_flag=True,
    help="Let the budgets choose: export candidates cheap to expensive (quantization modes, --student "
    "checkpoints, pruning with --train-data) and ship the most accurate one that meets every budget. "
    "Needs labelled --data.",
)
@click.option(
    "--student",
    "students",
    multiple=True,
    type=click.Path(path_type=Path),
    help="With --search: a student checkpoint from `edgecompress distill` to try as a candidate (repeatable).",
)
def export(
    model,
    device,
    data,
    calibration,
    train_data,
    out_root,
    recipe,
    quantize,
    tokenizer,
    task,
    runs,
    no_measure,
    target,
    ssh_config,
    remote_python,
    benchmark_model,
    perf_test,
    as_json,
    search,
    students,
):
    """Export MODEL (a checkpoint folder or .onnx file) for DEVICE, verify, measure and check budgets."""
    from edgecompress.measure.float_twin import slower_note
    from edgecompress.pipeline import ExportRequest, run_export

    request = ExportRequest(
        model=model,
        device=device,
        out_root=out_root,
        data=data,
        calibration=calibration,
        train_data=train_data,
        recipe=recipe,
        quantize=quantize,
        tokenizer=tokenizer,
        task=task,
        runs=runs,
        measure=not no_measure,
        target=target,
        target_options=_target_options(ssh_config, remote_python, benchmark_model, perf_test),
    )
    if search or students:
        _export_search(request, list(students), search, as_json)
    result = _run_guarded(lambda: run_export(request, _StderrProgress()))
    report = result.report
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_summary(result.out_dir, report)
    for miss in report.misses():
        click.echo(f"Budget exceeded: {miss.removeprefix('EXCEEDED: ')}", err=True)
    for artifact in report.artifacts:
        if artifact.speed_vs_float and artifact.speed_vs_float["slower"]:
            click.echo(f"Warning: {slower_note(artifact.file, artifact.speed_vs_float)}", err=True)
    sys.exit(result.exit_code)


def _export_search(request, students: list[Path], search: bool, as_json: bool) -> None:
    """`export --search`: the candidate table on stdout (or candidates.json with --json); exit 0 with a winner,
    3 when no candidate meets every budget (the closest miss is still written)."""
    from edgecompress.search.loop import SearchProgress, SearchRequest, run_search
    from edgecompress.search.table import table_lines

    class Lines(SearchProgress):
        def line(self, text: str) -> None:
            click.echo(text, err=True)

    def run():
        if not search:
            raise UserError("--student is a search candidate", hint="add --search (or export the student itself)")
        if request.recipe is not None or request.quantize is not None:
            flag = "--recipe" if request.recipe is not None else "--quantize"
            raise UserError(f"{flag} and --search both choose the recipe", hint=f"drop {flag}, or drop --search")
        return run_search(SearchRequest(request, students), Lines(), _StderrProgress())

    result = _run_guarded(run)
    if as_json:
        click.echo((result.out_dir / "candidates.json").read_text(encoding="utf-8"), nl=False)
    else:
        for line in table_lines(result.rows):
            click.echo(line)
        click.echo(f"wrote {result.out_dir}/ ({result.shipped.name}; report.html, candidates.json)")
    if result.winner is None:
        click.echo(
            f"Budget exceeded: no candidate meets every budget of {request.device}; wrote the closest miss, "
            f"{result.shipped.name} (see candidates.json)",
            err=True,
        )
    sys.exit(result.exit_code)


def _print_summary(out_dir: Path, report) -> None:
    click.echo(f"wrote {out_dir}/")
    for a in report.artifacts:
        host = a.host_latency
        host_text = f", host p50 {host['p50_ms']:.2f} ms" if host else ""
        acc = ""
        if a.accuracy:
            shown = f"{100 * a.accuracy.value:.2f}%" if a.accuracy.unit == "fraction" else f"{a.accuracy.value:.4f}"
            acc = f", {'accuracy' if a.accuracy.unit == 'fraction' else a.accuracy.unit} {shown}"
        click.echo(
            f"  {a.file}: {a.size.value / 1e6:.2f} MB, max|diff| {a.parity['max_abs_diff']:.1e}{acc}"
            f"{host_text}, {report.device['name']} est. {a.device_latency.value:.3g} ms"
        )
    click.echo("all budgets met" if report.passed else "BUDGET EXCEEDED (see report.md)")


@main.group(invoke_without_command=True)
@verbose_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def devices(ctx, as_json: bool) -> None:
    """List device profiles; `devices show NAME` for one."""
    if ctx.invoked_subcommand:
        return
    from edgecompress.devices import list_profiles

    profiles = _run_guarded(list_profiles)
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in profiles], indent=2))
        return
    rows: list[tuple[str, ...]] = [("name", "device", "soc", "thr", "seq", "p90 ms", "mem MB", "size MB", "artifacts")]
    for p in profiles:
        b = p.budgets
        rows.append(
            (
                p.name,
                p.display_name,
                p.soc.name,
                str(p.runtime.threads),
                str(p.runtime.seq_len),
                f"{b.latency_p90_ms:g}",
                f"{b.peak_memory_mb:g}",
                f"{b.artifact_size_mb:g}",
                ",".join(p.artifacts),
            )
        )
    _print_table(rows)


@devices.command("show")
@verbose_option
@click.argument("name")
def devices_show(name: str) -> None:
    """Show one device profile as JSON."""
    from edgecompress.devices import get_profile

    profile = _run_guarded(lambda: get_profile(name))
    click.echo(json.dumps(profile.to_dict(), indent=2))


@main.command()
@verbose_option
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--device", required=True, help="Device profile to check against.")
@click.option("--json", "as_json", is_flag=True)
def check(folder: Path, device: str, as_json: bool) -> None:
    """Re-check the artifacts in FOLDER (an export's output) against another DEVICE's budgets."""
    from edgecompress.report.recheck import recheck

    verdicts = _run_guarded(lambda: recheck(folder, device))
    if as_json:
        click.echo(json.dumps(verdicts.to_dict(), indent=2))
    else:
        for line in verdicts.lines():
            click.echo(line)
    sys.exit(0 if verdicts.passed else EXIT_BUDGET)


def _say(line: str) -> None:
    click.echo(f"        {line}", err=True)


@main.command()
@verbose_option
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True)
@click.option("--runs", type=click.IntRange(1), default=100, show_default=True)
@click.option("--warmup", type=click.IntRange(0), default=10, show_default=True)
@click.option("--seq-len", type=click.IntRange(1), help="Sequence length for dynamic-shape models.")
@click.option("--signature", metavar="KEY", help="LiteRT signature to run, e.g. seq_16 of a bucketed .tflite.")
@click.option(
    "--timeout", type=click.FloatRange(0, min_open=True), default=600, show_default=True, help="Time bound, s."
)
@target_options
@click.option("--json", "as_json", is_flag=True)
def bench(
    artifact: Path,
    threads: int,
    runs: int,
    warmup: int,
    seq_len,
    signature,
    timeout,
    target,
    ssh_config,
    remote_python,
    benchmark_model,
    perf_test,
    as_json: bool,
) -> None:
    """Measure ARTIFACT through the standalone runner, on this host or on the device --on names."""
    from edgecompress.backends import artifact_suffixes
    from edgecompress.measure.runner import RunRequest, describe, runner_for
    from edgecompress.measure.transports import parse_target

    def measure():
        expected = f"an artifact file ({', '.join(artifact_suffixes())})"
        if artifact.is_dir():
            raise UserError(
                "artifact is a folder, not a file",
                where=str(artifact),
                expected=expected,
                hint=f"pass a file inside it, e.g. {artifact / 'model.onnx'}",
            )
        if not artifact.is_file():
            raise UserError("artifact does not exist", where=str(artifact), expected=expected)
        transport = parse_target(target, _target_options(ssh_config, remote_python, benchmark_model, perf_test))
        request = RunRequest(
            artifact, runner_for(artifact), threads, runs, warmup, seq_len=seq_len, signature=signature
        )
        return transport.measure(replace(request, timeout_s=timeout), progress=_say)

    result = _run_guarded(measure)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    lat = result["latency_ms"]
    peak = f"{result['peak_rss_mb']:.0f} MB" if result.get("peak_rss_mb") is not None else "not reported"
    click.echo(
        f"{result['artifact']}: p50 {lat['p50']:.3f} ms, p90 {lat['p90']:.3f} ms, p99 {lat['p99']:.3f} ms, "
        f"peak RSS {peak}"
    )
    click.echo(describe(result))
    for figure, how in (result.get("latency_derived") or {}).items():
        click.echo(f"{figure}: {how}")


def _thread_counts(ctx, param, value: str) -> list[int]:
    """'1,2' -> [1, 2]: each a positive integer, each once, ascending."""
    try:
        counts = [int(part) for part in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected thread counts like 1,2, got {value!r}") from None
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
        raise click.BadParameter(f"expected distinct positive thread counts like 1,2, got {value!r}")
    return sorted(counts)


@main.command()
@verbose_option
@click.option(
    "--on",
    "target",
    default="host",
    show_default=True,
    metavar="TARGET",
    help="Where to calibrate: "
    "host, ssh://user@host[:port] (a Linux board with python3 and onnxruntime) or adb[:SERIAL].",
)
@click.option(
    "--threads", default="1,2", show_default=True, callback=_thread_counts, help="Thread counts to calibrate."
)
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), required=True, help="Calibration file to write (.json)."
)
@click.option(
    "--suite",
    type=click.Choice(["full", "tiny"]),
    default="full",
    show_default=True,
    help="Micro-benchmark suite: full (about 70 graphs, minutes) or tiny (a few classes, seconds).",
)
@click.option("--rounds", type=click.IntRange(1), default=3, show_default=True, help="Rounds over the suite.")
@click.option("--runs", type=click.IntRange(1), default=30, show_default=True, help="Timed runs per graph and round.")
@click.option("--warmup", type=click.IntRange(0), default=5, show_default=True)
@click.option(
    "--ssh-config",
    type=click.Path(path_type=Path),
    envvar="EDGECOMPRESS_SSH_CONFIG",
    help="ssh_config file for ssh targets (identity, known hosts); default: ~/.ssh/config.",
)
@click.option("--remote-python", metavar="PATH", help="Python on an ssh target (default: python3 on its PATH).")
@click.option(
    "--perf-test",
    type=click.Path(path_type=Path),
    envvar="EDGECOMPRESS_PERF_TEST",
    help="ONNX Runtime's onnxruntime_perf_test built for the phone (adb targets).",
)
def calibrate(target, threads, output, suite, rounds, runs, warmup, ssh_config, remote_python, perf_test) -> None:
    """Time a micro-benchmark suite on TARGET and fit the latency model's per-op-class prices to it.

    The file it writes is named by a device profile (`calibration = "FILE"`, relative to the profile), whose
    latency estimates then use it and state its error band."""
    from edgecompress.measure.calibration.run import calibrate as run_calibration
    from edgecompress.measure.calibration.store import save_calibration
    from edgecompress.measure.transports import parse_target

    def work():
        if output.is_dir():
            raise UserError("output is a folder", where=str(output), expected="a .json file path")
        transport = parse_target(target, _target_options(ssh_config, remote_python, None, perf_test))
        result = run_calibration(
            transport, threads=threads, suite_name=suite, rounds=rounds, runs=runs, warmup=warmup, progress=_say
        )
        save_calibration(result, output)
        return result

    result = _run_guarded(work)
    click.echo(
        f"wrote {output}: {result.runtime} {result.runtime_version} on {result.target}, threads "
        f"{', '.join(map(str, result.threads))}; {result.band().text()}"
    )
    click.echo(f'to use it, add  calibration = "{output.name}"  to a device profile TOML beside it')


@main.command()
@verbose_option
@click.argument("teacher", type=click.Path(path_type=Path))
@click.option(
    "--student",
    type=click.Choice(["bilstm", "cnn", "transformer", "squeezed"]),
    required=True,
    help="Student architecture. squeezed: a narrow BERT whose weights are learned maps of the teacher's "
    "(Weight Squeezing); it ships as a plain BERT.",
)
@click.option(
    "--train-data",
    type=click.Path(path_type=Path),
    required=True,
    help="Labelled training texts (CSV/TSV/JSONL) with the teacher's labels.",
)
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Student checkpoint folder to write (exportable with `edgecompress export`).",
)
@click.option(
    "--augment",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Augmented copies per labelled text (masking, neighbour words, n-grams), labelled by the teacher.",
)
@click.option("--epochs", type=click.IntRange(1), help="Training epochs (default: per student).")
@click.option("--batch-size", type=click.IntRange(1), help="Examples per step and process.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), help="Peak learning rate (default: per student).")
@click.option(
    "--seq-len", type=click.IntRange(1), default=64, show_default=True, help="Token length of the transfer set."
)
@click.option(
    "--student-config",
    type=click.Path(path_type=Path),
    help="JSON object of student hyper-parameters overriding the defaults.",
)
@click.option("--loss", "logit_loss", type=click.Choice(["mse", "kl"]), help="Logit loss (default: per student).")
@click.option("--temperature", type=click.FloatRange(0, min_open=True), help="Softmax temperature of the KL loss.")
@click.option("--hard-weight", type=click.FloatRange(0, 1), help="Share of the hard-label loss.")
@click.option("--hidden-weight", type=click.FloatRange(0), help="Hidden-state loss weight (transformer, squeezed).")
@click.option("--attention-weight", type=click.FloatRange(0), help="Attention loss weight (transformer, squeezed).")
@click.option("--layer-map", help="Teacher layer per student layer, e.g. 2,4,6 (transformer; default evenly spaced).")
@click.option(
    "--transfer-set",
    type=click.Path(path_type=Path),
    help="Reuse the teacher-labelled texts saved in this .npz, or save them there for the next student.",
)
@click.option(
    "--processes",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Training processes (DistributedDataParallel over gloo, launched with torchrun).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--eval-data",
    type=click.Path(path_type=Path),
    help="Labelled held-out texts (not in --train-data): teacher and student accuracy, printed at the end "
    "and recorded for `export`, which judges the student's accuracy drop against the teacher.",
)
def distill(
    teacher,
    student,
    train_data,
    out_dir,
    augment,
    epochs,
    batch_size,
    lr,
    seq_len,
    student_config,
    logit_loss,
    temperature,
    hard_weight,
    hidden_weight,
    attention_weight,
    layer_map,
    transfer_set,
    processes,
    seed,
    eval_data,
):
    """Distill TEACHER (a fine-tuned classifier checkpoint) into a small student checkpoint folder."""
    from edgecompress.distill.run import DistillRequest, distill as run_distill

    logging.getLogger("edgecompress.distill").setLevel(logging.INFO)  # progress, step/total, ETA
    training = {k: v for k, v in dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed).items() if v is not None}
    losses = {
        k: v
        for k, v in dict(
            logit_loss=logit_loss,
            temperature=temperature,
            hard_weight=hard_weight,
            hidden_weight=hidden_weight,
            attention_weight=attention_weight,
        ).items()
        if v is not None
    }
    if layer_map:
        try:
            losses["layer_map"] = tuple(int(part) for part in layer_map.split(","))
        except ValueError:
            raise click.BadParameter(
                f"{layer_map!r} is not a comma-separated list of layer numbers", param_hint="'--layer-map'"
            ) from None
    request = DistillRequest(
        teacher=teacher,
        student=student,
        train_data=train_data,
        out_dir=out_dir,
        augment=augment,
        seq_len=seq_len,
        processes=processes,
        student_config=student_config,
        transfer_set=transfer_set,
        training=training,
        losses=losses,
        eval_data=eval_data,
    )
    written = _run_guarded(lambda: run_distill(request))
    click.echo(f"wrote {written}/")
    click.echo(_held_out_line(written))


def _held_out_line(folder: Path) -> str:
    """Teacher and student accuracy on --eval-data, as distill recorded them (or how to get them)."""
    record = json.loads((folder / "training.json").read_text(encoding="utf-8"))
    teacher, student = record["teacher"]["held_out"], record["student_held_out"]
    if teacher is None or student is None:
        return (
            "held-out accuracy: not measured (give --eval-data FILE, labelled texts not in --train-data; "
            "`export` then judges the student against the teacher on its own --data when the teacher is there)"
        )
    drop = 100 * (teacher["accuracy"] - student["accuracy"])
    return (
        f"held-out accuracy on {Path(teacher['data']).name} ({teacher['texts']} texts, {teacher['seq_len']} "
        f"tokens): teacher {100 * teacher['accuracy']:.2f}%, student {100 * student['accuracy']:.2f}% "
        f"({drop:+.2f} points below the teacher)"
    )


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


if __name__ == "__main__":  # pragma: no cover
    main()
