"""report.html (issue 13, item 3): self-contained, its plots load in a real headless browser (Debian's chromium),
no console errors; a normal export draws one Pareto point per artifact and the per-op breakdown.

The browser check copies the page and puts a probe script first in <head>: it records every load error (a
missing image fires one) and, on load, every image's naturalWidth into an attribute that `--dump-dom` prints.
Console messages come out on stderr as `CONSOLE` lines with `--enable-logging=stderr`.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgecompress.cli import main

PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  window.__errors.push(String(e.message || (e.target && (e.target.src || e.target.href)) || 'error'));
}, true);
window.addEventListener('load', function () {
  var widths = Array.prototype.map.call(document.images, function (i) { return i.naturalWidth; });
  document.documentElement.setAttribute('data-probe', JSON.stringify({images: widths, errors: window.__errors}));
});
</script>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("Debian's chromium is not installed (tools/install.sh installs it where apt-get works)")
    return found


def open_in_browser(page: Path) -> dict:
    """{"images": [naturalWidth, ...], "errors": [...], "console": [lines], "dom": str} of `page` in chromium."""
    probe = page.with_name(f".probe-{page.name}")
    probe.write_text(page.read_text(encoding="utf-8").replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    try:
        done = subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
            + ["--enable-logging=stderr", "--v=0", "--dump-dom", probe.resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        probe.unlink()
    match = re.search(r'data-probe="([^"]*)"', done.stdout)
    assert match, (done.returncode, done.stderr[-2000:])
    result = json.loads(html.unescape(match.group(1)))
    result["console"] = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    result["dom"] = done.stdout
    return result


def assert_renders(page: Path) -> dict:
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=['"]?(https?:)?//""", text), "the page must not reach the network"
    seen = open_in_browser(page)
    assert seen["images"] and all(width > 0 for width in seen["images"]), seen["images"]
    assert seen["errors"] == [] and seen["console"] == [], (seen["errors"], seen["console"])
    assert "<h2>Budgets</h2>" in seen["dom"] and "<h2>Passes</h2>" in seen["dom"]
    return seen


def test_the_probe_catches_a_broken_image_and_a_console_error(tmp_path):
    """The check above can fail: a missing image reads 0 wide and fires an error; console.error is seen."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<html><head></head><body><script>console.error('boom')</script><img src='missing.png'></body></html>"
    )
    seen = open_in_browser(page)
    assert seen["images"] == [0]
    assert seen["errors"] and any("boom" in line for line in seen["console"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_checkpoint, tiny_device, tiny_data) -> Path:
    out = tmp_path_factory.mktemp("html") / "dist"
    argv = ["export", str(tiny_checkpoint), "--device", str(tiny_device), "--data", str(tiny_data), "-o", str(out)]
    result = CliRunner().invoke(main, argv + ["--runs", "3"])
    assert result.exit_code == 0, result.output
    return out / "tinyphone"


def test_a_normal_export_writes_report_html_with_its_plots(exported):
    report = json.loads((exported / "report.json").read_text())
    for name in ("report.html", "pareto.png", "pareto.svg", "ops.png", "ops.svg"):
        assert (exported / name).stat().st_size > 0, name
    page = (exported / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # the Pareto plot and the per-op plot, inlined
    for artifact in report["artifacts"]:  # the budget table has every verdict of every artifact
        assert page.count(f"<td>{artifact['file']}</td>") == len(artifact["verdicts"])
    svg = (exported / "pareto.svg").read_text()
    for artifact in report["artifacts"]:  # one labelled point per artifact
        assert artifact["file"] in svg


def test_the_per_op_breakdown_is_estimated_and_measured_with_methods(exported):
    ops = json.loads((exported / "report.json").read_text())["op_latency"]
    assert ops["estimated"]["how"] == "estimated" and ops["measured"]["how"] == "measured"
    assert "profiler on this host (not the device)" in ops["measured"]["method"]
    assert ops["estimated"]["ms"] and all(ms >= 0 for ms in ops["estimated"]["ms"].values())
    # Both name op types alike (no domain prefix): the fused attention of the shipped graph is in both.
    assert ops["estimated"]["ms"]["Attention"] > 0 and ops["measured"]["ms"]["Attention"] > 0


def test_report_html_renders_in_a_headless_browser(exported):
    assert_renders(exported / "report.html")
