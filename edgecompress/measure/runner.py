"""Measure an artifact on this host by running the packaged runner script in a subprocess.

The runner is the same file that is pushed to devices, so host and device figures come from
identical code. Running it out of process also keeps our own heavy imports (torch, transformers)
out of its latency and peak-RSS figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.backends import artifact_suffixes, backend_for_suffix, backends
from edgecompress.errors import InternalError, UserError
from edgecompress.paths import runtimes_dir

SCHEMA = "edgecompress.runner/1"
RUNNER_USER_ERROR = 2  # runners exit 2 with one stderr line for a bad model file or bad inputs

_TAIL_CHARS = 2000


def runner_for(artifact: Path) -> str:
    """The runner script name for an artifact file, from the backend owning its suffix; an unknown suffix
    is a user error."""
    backend = backend_for_suffix(Path(artifact).suffix)
    if backend is None:
        raise UserError(
            f"no runner for '{Path(artifact).suffix}' files",
            where=str(artifact),
            expected=f"one of {', '.join(artifact_suffixes())}",
        )
    return backend.runner


def runner_script(runner: str) -> Path:
    """The packaged script for `runner`; a missing one means a broken install or a typo in our code."""
    script = runtimes_dir() / f"{runner}.py"
    if not script.is_file():
        known = sorted(b.runner for b in backends().values())
        raise InternalError(f"runner script {script} does not exist (known runners: {known})")
    return script


@dataclass(frozen=True)
class RunRequest:
    """One runner invocation, independent of where it runs: the local, ssh and adb transports all take it."""

    artifact: Path
    runner: str
    threads: int = 1
    runs: int = 100
    warmup: int = 10
    inputs: dict[str, np.ndarray] | None = None  # keys = model input names; None: the runner synthesizes
    seq_len: int | None = None  # the sequence axis of synthesized inputs
    keep_samples: bool = False
    signature: str | None = None  # the LiteRT signature to run (one per length bucket)
    timeout_s: float = 600

    def runner_args(self, artifact: str, inputs: str | None) -> list[str]:
        """The runner's arguments after its script, with the artifact and the inputs .npz at the paths given
        (local or remote)."""
        args = [artifact, "--threads", str(self.threads), "--runs", str(self.runs), "--warmup", str(self.warmup)]
        if self.signature is not None:
            args += ["--signature", self.signature]
        if self.seq_len is not None:
            args += ["--seq-len", str(self.seq_len)]
        if self.keep_samples:
            args.append("--keep-samples")
        if inputs is not None:
            args += ["--inputs", inputs]
        return args

    def write_inputs(self, folder: Path) -> Path | None:
        """The inputs as an .npz in `folder`, or None when the runner synthesizes them."""
        if self.inputs is None:
            return None
        npz = folder / "inputs.npz"
        arrays: dict[str, Any] = dict(self.inputs)  # numpy's stub would match a key to savez's allow_pickle
        np.savez(npz, **arrays)
        return npz


def run_runner(
    artifact: Path,
    *,
    runner: str = "ort_runner",
    threads: int,
    runs: int,
    warmup: int,
    inputs: dict[str, np.ndarray] | None = None,
    seq_len: int | None = None,
    keep_samples: bool = False,
    signature: str | None = None,
    timeout_s: float = 600,
) -> dict:
    """Run `runner` on `artifact` with this interpreter and return its validated JSON result.

    `inputs` are passed through an .npz (keys = model input names); without them the runner
    synthesizes inputs, with `seq_len` for the sequence axis. `signature`: the LiteRT signature to run
    (one per length bucket), for the LiteRT runner only.
    """
    request = RunRequest(
        Path(artifact), runner, threads, runs, warmup, inputs, seq_len, keep_samples, signature, timeout_s
    )
    return run_here(request)


def run_here(request: RunRequest) -> dict:
    """The request in a subprocess of this interpreter, on this host."""
    runner, artifact = request.runner, request.artifact
    with tempfile.TemporaryDirectory(prefix="edgecompress-measure-") as tmp:
        npz = request.write_inputs(Path(tmp))
        cmd = [
            sys.executable,
            str(runner_script(runner)),
            *request.runner_args(str(artifact), str(npz) if npz else None),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=request.timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise InternalError(
                f"{runner} on {artifact} timed out after {request.timeout_s:g}s: {tail(exc.stderr)}"
            ) from exc
    return _parse_result(proc, runner, artifact)


def _parse_result(proc: subprocess.CompletedProcess, runner: str, artifact: Path) -> dict:
    """Turn the runner's exit status and stdout into a result, or an error carrying its stderr tail."""
    if proc.returncode == RUNNER_USER_ERROR:  # the runner's own one-line verdict on its input
        message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "rejected its input"
        raise UserError(message.removeprefix(f"{runner}: error: "), where=str(artifact))
    if proc.returncode != 0:
        raise InternalError(f"{runner} on {artifact} exited with {proc.returncode}: {tail(proc.stderr)}")
    return parse_json_result(proc.stdout, runner, str(artifact))


def parse_json_result(stdout: str, runner: str, where: str) -> dict:
    """The runner's one JSON object, checked against the contract's schema; anything else is our bug."""
    try:
        result = json.loads(stdout)
    except json.JSONDecodeError as exc:
        raise InternalError(f"{runner} on {where} printed no JSON result: {tail(stdout)}") from exc
    if not isinstance(result, dict) or result.get("schema") != SCHEMA:
        found = result.get("schema") if isinstance(result, dict) else type(result).__name__
        raise InternalError(f"{runner} on {where} returned schema {found!r}, expected {SCHEMA!r}")
    return result


def tail(text: str | bytes | None) -> str:
    """The end of a stream, where the actual error is; TimeoutExpired may hand us bytes or None."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = (text or "").strip()
    return text[-_TAIL_CHARS:] if text else "(no output)"


def _plural(count: int, noun: str) -> str:
    """'1 thread' but '2 threads', so report sentences read naturally."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def describe(result: dict) -> str:
    """How a figure was obtained, for reports: where, runtime and version, threads, runs, by what, statistic.
    A transport names the machine in `measured_on` (absent: this host) and a native benchmark program in
    `program`."""
    where = result.get("measured_on", "host")
    program = f", by {result['program']}" if result.get("program") else ""
    return (
        f"measured on {where} ({result['runtime']} {result['runtime_version']}, "
        f"{_plural(result['threads'], 'thread')}, {_plural(result['runs'], 'run')}{program}, median of runs)"
    )
