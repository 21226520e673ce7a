"""The pytest plugin (entry point `pytest11`): where `edgecompress.testing.assert_latency` measures.

pytest --edgecompress-target ssh://pi@board --edgecompress-ssh-config ~/.ssh/board.conf
pytest --edgecompress-target adb:R58M123 --edgecompress-benchmark-model out/android_arm64/benchmark_model
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecompress import testing


def pytest_addoption(parser) -> None:
    group = parser.getgroup("edgecompress", "on-device latency tests (edgecompress.testing.assert_latency)")
    group.addoption(
        "--edgecompress-target",
        default="host",
        metavar="TARGET",
        help="where assert_latency measures: host (default), ssh://user@host[:port] or adb[:SERIAL]",
    )
    group.addoption("--edgecompress-ssh-config", metavar="PATH", help="ssh_config file for an ssh target")
    group.addoption("--edgecompress-remote-python", metavar="PATH", help="Python on an ssh target (default python3)")
    group.addoption("--edgecompress-benchmark-model", metavar="PATH", help="LiteRT's benchmark_model for an adb target")
    group.addoption(
        "--edgecompress-perf-test", metavar="PATH", help="ONNX Runtime's onnxruntime_perf_test for an adb target"
    )


def pytest_configure(config) -> None:
    from edgecompress.errors import UserError
    from edgecompress.measure.transports import TargetOptions, parse_target

    def path(option: str) -> Path | None:
        value = config.getoption(option)
        return Path(value) if value else None

    programs = {
        runtime: program
        for runtime, program in (
            ("litert", path("edgecompress_benchmark_model")),
            ("onnxruntime", path("edgecompress_perf_test")),
        )
        if program
    }
    options = TargetOptions(
        ssh_config=path("edgecompress_ssh_config"),
        remote_python=config.getoption("edgecompress_remote_python"),
        programs=programs,
    )
    target = config.getoption("edgecompress_target")
    try:
        parse_target(target, options)  # a malformed target stops the session at once, not in every test
    except UserError as exc:
        raise pytest.UsageError(f"--edgecompress-target: {exc}") from None
    testing.configure(target, options)


def pytest_report_header(config) -> str:
    return f"edgecompress: assert_latency measures on {config.getoption('edgecompress_target')}"
