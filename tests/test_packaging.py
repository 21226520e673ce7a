"""runtimes/, device_profiles/ and recipes ship inside the installed package, not only in a checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_carries_runners_profiles_and_recipes(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            "-q",
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("edgecompress-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "edgecompress/runtimes/ort_runner.py" in names
    assert "edgecompress/recipes/default.toml" in names
    for profile in (REPO / "device_profiles").glob("*.toml"):
        assert f"edgecompress/device_profiles/{profile.name}" in names
    # Every module of the source tree ships: a subpackage missing from pyproject's list would install
    # fine in editable mode and break only for users of the wheel.
    for module in (REPO / "edgecompress").rglob("*.py"):
        assert module.relative_to(REPO).as_posix() in names, module


def test_importing_the_package_starts_nothing_heavy():
    code = (
        "import sys, edgecompress, edgecompress.cli; print(sorted(m for m in ('torch', 'onnx', "
        "'onnxruntime', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
