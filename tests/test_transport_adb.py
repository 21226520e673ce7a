"""The adb transport: Debian's real `adb` client with no device attached, the benchmark-program checks on real
files, and the device choice on `adb devices` listings.

No phone is attached here, so what runs on a device (push, run, parse, clean up) is not exercised end to end;
the parsers it feeds are tested in test_native_benchmarks.py. The adb server the client starts listens on a
free port of its own and is stopped after the test, so a developer's own server is left alone.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgecompress.cli import main
from edgecompress.errors import UserError
from edgecompress.measure.transports.adb import choose_device, parse_devices, program_abi

from sshd_server import free_port

HOST_ABI = {"x86_64": "x86_64", "aarch64": "arm64-v8a"}.get(platform.machine())


def ensure_adb() -> None:
    if shutil.which("adb"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("adb is not installed and cannot be: not root or no apt-get (install Debian's adb)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "adb"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            pytest.skip(f"cannot install adb with apt-get: {proc.stderr.strip()[-300:]}")


@pytest.fixture
def own_adb_server(monkeypatch):
    """adb talks to a server on a free port of its own, stopped afterwards."""
    ensure_adb()
    port = free_port()
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(port))
    yield port
    subprocess.run(["adb", "-P", str(port), "kill-server"], capture_output=True, timeout=30)


def bench_on_adb(artifact: Path, *extra) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["bench", str(artifact), "--on", "adb", *map(str, extra)])
    return result.exit_code, result.stderr


def error_line(code: int, stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture
def tflite_file(tmp_path) -> Path:
    path = tmp_path / "model.tflite"
    path.write_bytes(b"not opened before a device is found")
    return path


def test_no_device_is_one_clean_line(own_adb_server, tflite_file):
    code, err = bench_on_adb(tflite_file, "--benchmark-model", shutil.which("true"))
    assert error_line(code, err) == ("error: adb: no device; hint: connect a phone with USB debugging on (adb devices)")


def test_a_serial_that_is_not_attached(own_adb_server, tflite_file):
    result = CliRunner().invoke(
        main, ["bench", str(tflite_file), "--on", "adb:R58M123", "--benchmark-model", shutil.which("true")]
    )
    assert "no device with serial 'R58M123' (attached: none)" in error_line(result.exit_code, result.stderr)


def test_without_a_benchmark_program_it_says_which_option_gives_one(tflite_file):
    code, err = bench_on_adb(tflite_file)
    line = error_line(code, err)
    assert "no benchmark_model given for litert artifacts" in line and "--benchmark-model" in line


def test_a_missing_program(tflite_file, tmp_path):
    code, err = bench_on_adb(tflite_file, "--benchmark-model", tmp_path / "benchmark_model")
    assert "benchmark program does not exist" in error_line(code, err)


def test_a_program_that_is_not_an_executable(tflite_file, tmp_path):
    script = tmp_path / "benchmark_model"
    script.write_text("#!/bin/sh\necho hi\n")
    code, err = bench_on_adb(tflite_file, "--benchmark-model", script)
    assert "benchmark program is not an executable (no ELF header)" in error_line(code, err)


@pytest.mark.skipif(HOST_ABI is None, reason=f"no Android ABI name for {platform.machine()}")
def test_the_abi_is_read_from_a_real_elf_header():
    """This host's own binaries are ELF files for its ABI: a phone (arm64-v8a) would refuse an x86_64 build."""
    assert program_abi(Path(shutil.which("true")), "--benchmark-model") == HOST_ABI


# `adb devices` listings in the format adb prints (adb/client/adb_client.cpp: "List of devices attached", then
# "SERIAL\tSTATE" per device).
SEVERAL = "List of devices attached\nR58M123\tdevice\nemulator-5554\tdevice\n\n"
UNAUTHORIZED = "List of devices attached\nR58M123\tunauthorized\n\n"


def test_several_devices_and_no_serial_is_refused_naming_them():
    with pytest.raises(UserError, match=r"2 devices attached and no serial given \(R58M123, emulator-5554\)"):
        choose_device(parse_devices(SEVERAL), None, "adb")
    assert choose_device(parse_devices(SEVERAL), "emulator-5554", "adb:emulator-5554") == "emulator-5554"


def test_an_unauthorized_device_says_what_to_do():
    with pytest.raises(UserError, match="device R58M123 is unauthorized; hint: unlock it"):
        choose_device(parse_devices(UNAUTHORIZED), None, "adb")
