"""The adb transport: an Android phone has no Python, so the runtime's own native benchmark program runs there.

    check   the program given on the host exists and is an ELF executable (before touching any device)
    device  `adb devices`: exactly one, or the one SERIAL names; its ABI must match the program's
    push    program, artifact and input files to a fresh /data/local/tmp/edgecompress.<random>
    run     `timeout T ./program ...` there; its output is parsed by the backend (NativeBenchmark.parse)
    clean   rm -rf the folder: always, on failure and on Ctrl-C too

The result follows the runner's JSON contract; what the program does not give (the outputs digest, p90 from
benchmark_model) is null or derived, and `latency_derived` says which.
"""

from __future__ import annotations

import logging
import secrets
import shlex
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from edgecompress.backends import NativeBenchmark, backend_for_runner
from edgecompress.errors import UserError
from edgecompress.measure.runner import SCHEMA, RunRequest
from edgecompress.measure.transports._commands import (
    CLIENT_GRACE_S,
    TIMED_OUT_STATUSES,
    ClientTimeout,
    last_line,
    run_client,
)

log = logging.getLogger(__name__)

DEVICE_ROOT = "/data/local/tmp"
ADB_TIMEOUT_S = 60.0
ELF_MAGIC = b"\x7fELF"
# ELF e_machine -> Android ABI name (getprop ro.product.cpu.abilist)
ELF_ABIS = {183: "arm64-v8a", 40: "armeabi-v7a", 62: "x86_64", 3: "x86"}
DISK_FULL_MARKERS = ("No space left on device", "Disk quota exceeded")


def program_abi(path: Path, option: str) -> str:
    """The Android ABI a benchmark program was built for, read from its ELF header; a missing file or one that
    is not an ELF executable is the user's error."""
    if not path.exists():
        raise UserError("benchmark program does not exist", where=str(path), hint=f"give its path with {option}")
    if not path.is_file():
        raise UserError("benchmark program is not a file", where=str(path), hint=f"give its path with {option}")
    header = path.read_bytes()[:20]
    if len(header) < 20 or not header.startswith(ELF_MAGIC):
        raise UserError(
            "benchmark program is not an executable (no ELF header)",
            where=str(path),
            expected="the runtime's benchmark binary built for Android",
        )
    machine = int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")
    return ELF_ABIS.get(machine, f"ELF machine {machine}")


def parse_devices(listing: str) -> dict[str, str]:
    """`adb devices` output -> {serial: state} (device, unauthorized, offline, ...)."""
    devices = {}
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith(("List of devices", "*")):
            devices[parts[0]] = parts[1]
    return devices


def choose_device(devices: dict[str, str], serial: str | None, where: str) -> str:
    """The one device to use; none, several without a serial, an unknown serial or an unusable state is the
    user's error."""
    if serial is None:
        if not devices:
            raise UserError("no device", where=where, hint="connect a phone with USB debugging on (adb devices)")
        if len(devices) > 1:
            raise UserError(
                f"{len(devices)} devices attached and no serial given ({', '.join(sorted(devices))})",
                where=where,
                expected="adb:SERIAL",
            )
        serial = next(iter(devices))
    if serial not in devices:
        known = ", ".join(sorted(devices)) or "none"
        raise UserError(f"no device with serial {serial!r} (attached: {known})", where=where)
    if devices[serial] != "device":
        raise UserError(
            f"device {serial} is {devices[serial]}", where=where, hint="unlock it and accept the USB debugging prompt"
        )
    return serial


class AdbTransport:
    def __init__(self, serial: str | None, *, programs: Mapping[str, Path], adb: str = "adb"):
        self.serial = serial
        self.name = f"adb:{serial}" if serial else "adb"
        self.programs = programs
        self.adb = adb

    def measure(self, request: RunRequest, progress: Callable[[str], None] | None = None) -> dict:
        say = progress or (lambda line: None)
        backend = backend_for_runner(request.runner)
        bench = backend.native_benchmark
        if bench is None:
            raise UserError(f"{backend.runtime} has no native benchmark program to run on a phone", where=self.name)
        program = self._program(backend.runtime, bench)
        abi = program_abi(program, bench.option)
        serial = choose_device(self._devices(), self.serial, self.name)
        self._check_abi(serial, abi, program)
        folder = f"{DEVICE_ROOT}/edgecompress.{secrets.token_hex(6)}"
        try:
            say(f"{self.name}: pushing {program.name} and {request.artifact.name}")
            args, files = bench.command(request, folder)
            self._push(serial, folder, [program, request.artifact], files)
            say(f"{self.name}: running {bench.program} ({request.runs} runs)")
            output = self._run(serial, folder, program.name, args, request)
        finally:
            self._remove(serial, folder)
        return self._result(bench, backend.runtime, output, request, serial, abi)

    # ---- steps ----------------------------------------------------------------------------------------------

    def _program(self, runtime: str, bench: NativeBenchmark) -> Path:
        program = self.programs.get(runtime)
        if program is None:
            raise UserError(
                f"no {bench.program} given for {runtime} artifacts",
                where=self.name,
                hint=f"phones have no Python: build the runtime's {bench.program} for the phone's ABI and give "
                f"its path with {bench.option}",
            )
        return Path(program)

    def _devices(self) -> dict[str, str]:
        proc = self._adb(["devices"])
        if proc.returncode != 0:
            raise UserError(f"adb cannot list devices: {last_line(proc.stderr + proc.stdout)}", where=self.name)
        return parse_devices(proc.stdout)

    def _check_abi(self, serial: str, abi: str, program: Path) -> None:
        listing = self._shell(serial, "getprop ro.product.cpu.abilist").stdout.strip()
        abis = [a.strip() for a in listing.split(",") if a.strip()]
        if abis and abi not in abis:
            raise UserError(
                f"benchmark program is built for {abi}, the device runs {', '.join(abis)}",
                where=str(program),
                expected=f"a build for {abis[0]}",
            )

    def _push(self, serial: str, folder: str, paths: list[Path], files: dict[str, bytes]) -> None:
        self._checked(serial, self._shell(serial, f"mkdir -p {shlex.quote(folder)}"), "cannot create a folder")
        with tempfile.TemporaryDirectory(prefix="edgecompress-adb-") as tmp:
            for name, data in files.items():
                local = Path(tmp) / name
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_bytes(data)
                paths.append(local)
            for path in paths:
                relative = path.relative_to(tmp) if str(path).startswith(tmp) else Path(path.name)
                target = f"{folder}/{relative}"
                if relative.parent != Path("."):
                    self._shell(serial, f"mkdir -p {shlex.quote(f'{folder}/{relative.parent}')}")
                self._checked(serial, self._adb(["-s", serial, "push", str(path), target]), "push failed")

    def _run(self, serial: str, folder: str, program: str, args: list[str], request: RunRequest) -> str:
        bound = f"{request.timeout_s:g}"
        command = (
            f"cd {shlex.quote(folder)} && chmod 755 {shlex.quote(program)} && "
            f"timeout {bound} ./{shlex.quote(program)} {shlex.join(args)} 2>&1"
        )
        proc = self._shell(serial, command, timeout_s=request.timeout_s + CLIENT_GRACE_S)
        if proc.returncode in TIMED_OUT_STATUSES:
            raise UserError(
                f"the run exceeded its time bound of {bound} s and was stopped",
                where=f"{self.name} ({request.artifact.name})",
                hint="use fewer --runs, or a longer bound",
            )
        if "Exec format error" in proc.stdout or "not executable" in proc.stdout:
            raise UserError(f"the device cannot execute {program}: {last_line(proc.stdout)}", where=self.name)
        if proc.returncode != 0:
            raise UserError(f"{program} failed (exit {proc.returncode}): {last_line(proc.stdout)}", where=self.name)
        return proc.stdout

    def _remove(self, serial: str, folder: str) -> None:
        """Never raises: it runs while another error may be on its way to the user."""
        try:
            proc = self._shell(serial, f"rm -rf {shlex.quote(folder)}")
        except UserError as exc:
            log.warning("%s: could not remove %s: %s", self.name, folder, exc)
            return
        if proc.returncode != 0:
            log.warning("%s: could not remove %s: %s", self.name, folder, last_line(proc.stdout + proc.stderr))

    def _result(self, bench: NativeBenchmark, runtime: str, output: str, request, serial: str, abi: str) -> dict:
        parsed = bench.parse(output, request)
        model = self._shell(serial, "getprop ro.product.model").stdout.strip()
        return {
            "schema": SCHEMA,
            "runner": bench.program,
            "program": bench.program,
            "runtime": runtime,
            "runtime_version": "as built into the program",
            "artifact": request.artifact.name,
            "artifact_bytes": request.artifact.stat().st_size,
            "threads": request.threads,
            "warmup": request.warmup,
            "signature": request.signature,
            "inputs": "the request's inputs" if request.inputs else f"generated by {bench.program}",
            "outputs": None,
            "output_digest": None,  # the programs do not hand outputs back
            "host": {"machine": abi, "system": "Android", "model": model, "serial": serial},
            "measured_on": self.name,
            **parsed,
        }

    # ---- the client -----------------------------------------------------------------------------------------

    def _shell(self, serial: str, command: str, timeout_s: float = ADB_TIMEOUT_S):
        return self._adb(["-s", serial, "shell", command], timeout_s=timeout_s)

    def _adb(self, args: list[str], timeout_s: float = ADB_TIMEOUT_S):
        try:
            return run_client([self.adb, *args], timeout_s=timeout_s, where=self.name)
        except ClientTimeout as exc:
            raise UserError(f"adb did not answer: {exc}", where=self.name, hint="reconnect the device") from None

    def _checked(self, serial: str, proc, what: str) -> None:
        text = proc.stdout + proc.stderr
        if proc.returncode == 0:
            return
        if any(marker in text for marker in DISK_FULL_MARKERS):
            raise UserError("device storage full", where=f"{self.name} ({serial})", hint=f"free space in {DEVICE_ROOT}")
        raise UserError(f"{what}: {last_line(text)}", where=f"{self.name} ({serial})")
