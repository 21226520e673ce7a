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
    cmd = [
        sys.executable,
        str(runner_script(runner)),
        str(artifact),
        "--threads",
        str(threads),
        "--runs",
        str(runs),
        "--warmup",
        str(warmup),
    ]
    if signature is not None:
        cmd += ["--signature", signature]
    if seq_len is not None:
        cmd += ["--seq-len", str(seq_len)]
    if keep_samples:
        cmd.append("--keep-samples")
    with tempfile.TemporaryDirectory(prefix="edgecompress-measure-") as tmp:
        if inputs is not None:
            npz = Path(tmp) / "inputs.npz"
            arrays: dict[str, Any] = dict(inputs)  # numpy's stub would match a key to savez's allow_pickle
            np.savez(npz, **arrays)
            cmd += ["--inputs", str(npz)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise InternalError(f"{runner} on {artifact} timed out after {timeout_s:g}s: {_tail(exc.stderr)}") from exc
    return _parse_result(proc, runner, artifact)


def _parse_result(proc: subprocess.CompletedProcess, runner: str, artifact: Path) -> dict:
    """Turn the runner's exit status and stdout into a result, or an error carrying its stderr tail."""
    if proc.returncode == RUNNER_USER_ERROR:  # the runner's own one-line verdict on its input
        message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "rejected its input"
        raise UserError(message.removeprefix(f"{runner}: error: "), where=str(artifact))
    if proc.returncode != 0:
        raise InternalError(f"{runner} on {artifact} exited with {proc.returncode}: {_tail(proc.stderr)}")
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise InternalError(f"{runner} on {artifact} printed no JSON result: {_tail(proc.stdout)}") from exc
    if not isinstance(result, dict) or result.get("schema") != SCHEMA:
        found = result.get("schema") if isinstance(result, dict) else type(result).__name__
        raise InternalError(f"{runner} on {artifact} returned schema {found!r}, expected {SCHEMA!r}")
    return result


def _tail(text: str | bytes | None) -> str:
    """The end of a stream, where the actual error is; TimeoutExpired may hand us bytes or None."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = (text or "").strip()
    return text[-_TAIL_CHARS:] if text else "(no output)"


def _plural(count: int, noun: str) -> str:
    """'1 thread' but '2 threads', so report sentences read naturally."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def describe(result: dict) -> str:
    """How a figure was obtained, for reports: runtime and version, threads, runs, statistic."""
    return (
        f"measured on host ({result['runtime']} {result['runtime_version']}, "
        f"{_plural(result['threads'], 'thread')}, {_plural(result['runs'], 'run')}, median of runs)"
    )
