"""report.html: one self-contained page people look at, written beside report.json by every export.

No network: the plots are inlined as PNG data URIs (and written beside the page as PNG and SVG, for CI
artifacts), no scripts, no external styles. Sections: the verdict, the accuracy-vs-latency Pareto plot (one
point per artifact of a normal export, one per candidate of a search), the search's candidate table, the budget
table, the per-op latency breakdown, the pass table, and how every figure was obtained.
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any

from edgecompress.report.plots import Limits, Point, draw_ops, draw_pareto

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.4em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
.ok { color: #1e7a3e; } .miss { color: #b3261e; font-weight: bold; } .muted { color: #666; }
img { max-width: 100%; border: 1px solid #ddd; }
"""


def artifact_points(report: dict[str, Any]) -> list[Point]:
    """A normal export's points: one per artifact, at the latency its budget bounds."""
    points = []
    for a in report["artifacts"]:
        latency = _verdict(a, "p90 latency")
        if a.get("accuracy") is None or latency is None:
            continue
        points.append(
            Point(
                a["file"],
                a["accuracy"]["value"],
                latency["value"],
                latency["how"],
                a["size"]["value"] / 1e6,
                all(v["passed"] for v in a["verdicts"]),
                chosen=True,
            )
        )
    return points


def limits_of(report: dict[str, Any]) -> Limits:
    """The latency budget, and the lowest accuracy the accuracy budget allows (from a verdict: floor =
    accuracy + (drop - allowed drop) / 100)."""
    floor = None
    for a in report["artifacts"]:
        drop = _verdict(a, "accuracy drop")
        if drop is not None and a.get("accuracy") is not None:
            floor = a["accuracy"]["value"] + (drop["value"] - drop["limit"]) / 100
            break
    return Limits(report["device"]["budgets"]["latency_p90_ms"], floor)


def _verdict(artifact: dict[str, Any], prefix: str) -> dict[str, Any] | None:
    return next((v for v in artifact["verdicts"] if v["budget"].startswith(prefix)), None)


def write_html(
    folder: Path,
    report: dict[str, Any],
    *,
    points: list[Point] | None = None,
    limits: Limits | None = None,
    search_rows: list[dict[str, Any]] | None = None,
) -> Path:
    """report.html plus pareto.{png,svg} and (with a per-op breakdown in the report) ops.{png,svg}."""
    points = points if points is not None else artifact_points(report)
    limits = limits or limits_of(report)
    parts = [_head(report)]
    if points:
        draw_pareto(points, limits, folder)
        parts.append(_figure("Accuracy vs latency", folder / "pareto.png", "Pareto plot of accuracy against latency"))
    else:
        parts.append("<p class='muted'>No accuracy figures (unlabelled data): no Pareto plot.</p>")
    if search_rows is not None:
        parts.append(_search_table(search_rows))
    parts.append(_budget_table(report))
    parts.append(_ops_section(report, folder))
    if report.get("early_exit"):
        parts.append(_early_exit_section(report["early_exit"]))
    parts.append(_pass_table(report))
    parts.append(_notes(report))
    page = f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{escape(_title(report))}</title>"
    page += f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    path = folder / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _title(report: dict[str, Any]) -> str:
    return f"edgecompress report: {report['model']['name']} on {report['device']['display_name']}"


def _head(report: dict[str, Any]) -> str:
    verdict = "all budgets met" if report["passed"] else "BUDGET EXCEEDED"
    css = "ok" if report["passed"] else "miss"
    return (
        f"<h1>{escape(_title(report))}</h1><p>Verdict: <span class='{css}'>{verdict}</span>. Recipe "
        f"<code>{escape(report['recipe']['name'])}</code>: {escape(report['recipe']['description'])}</p>"
        "<p class='muted'>Every figure says how it was obtained: <em>measured</em> (by running the artifact; "
        "where and how named), <em>estimated</em> (the model named beside it) or <em>static</em> (from the "
        "file alone).</p>"
    )


def _figure(title: str, png: Path, alt: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (
        f"<h2>{escape(title)}</h2><img alt='{escape(alt)}' src='data:image/png;base64,{data}'>"
        f"<p class='muted'>Also as {png.name} and {png.with_suffix('.svg').name} beside this page.</p>"
    )


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Cells are already escaped HTML."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _pct(figure: dict[str, Any] | None) -> str:
    return "n/a" if figure is None else f"{100 * figure['value']:.2f}% <span class='muted'>({figure['how']})</span>"


def _search_table(rows: list[dict[str, Any]]) -> str:
    cells = []
    for r in rows:
        latency = r.get("latency_ms")
        budgets = "-" if r["status"] != "ran" else ("<span class='ok'>all met</span>" if r["passed"] else "missed")
        cells.append(
            [
                f"<b>{escape(r['name'])}</b><br><span class='muted'>{escape(r['what'])}</span>",
                escape(r["status"]),
                _pct(r.get("accuracy")),
                _pct(r.get("agreement")),
                "-" if r.get("size_mb") is None else f"{r['size_mb']:.2f}",
                "-" if not latency else f"{latency['value']:.3g} <span class='muted'>({latency['how']})</span>",
                "-" if r.get("host_p90_ms") is None else f"{r['host_p90_ms']:.3g}",
                budgets,
                escape(r["reason"]),
            ]
        )
    header = ["candidate", "status", "accuracy", "agreement with original", "size MB", "p90 ms (budget)"]
    header += ["host p90 ms (measured)", "budgets", "why"]
    return (
        "<h2>Candidates</h2><p class='muted'>Every candidate of the search, run or skipped, with its figures read "
        "from its own export's report.json (the worst of its artifacts for each figure) and why it lost.</p>"
        + _table(header, cells)
    )


def _budget_table(report: dict[str, Any]) -> str:
    rows = []
    for a in report["artifacts"]:
        for v in a["verdicts"]:
            status = "<span class='ok'>ok</span>" if v["passed"] else "<span class='miss'>exceeded</span>"
            rows.append(
                [
                    escape(a["file"]),
                    escape(v["budget"]),
                    f"{v['value']:.4g} {escape(v['unit'])}",
                    f"{v['limit']:.4g} {escape(v['unit'])}",
                    escape(v["how"]),
                    status,
                ]
            )
    return "<h2>Budgets</h2>" + _table(["artifact", "budget", "value", "limit", "how", "verdict"], rows)


def _ops_section(report: dict[str, Any], folder: Path) -> str:
    breakdown = report.get("op_latency")
    if not breakdown:
        return "<h2>Latency per op type</h2><p class='muted'>Not available for this export.</p>"
    draw_ops(breakdown, folder)
    estimated = breakdown["estimated"]
    measured = breakdown.get("measured")
    rows = [
        [
            escape(op),
            f"{ms:.3g}",
            "-" if not measured or op not in measured["ms"] else f"{measured['ms'][op]:.3g}",
        ]
        for op, ms in estimated["ms"].items()
    ]
    methods = f"<p class='muted'>Estimated: {escape(estimated['method'])}.<br>Measured: " + (
        escape(measured["method"]) if measured else "not measured (--no-measure, or no .onnx artifact)"
    )
    return (
        _figure("Latency per op type", folder / "ops.png", "latency per op type")
        + methods
        + "</p>"
        + _table(["op type", "estimated ms (device)", "measured ms (this host)"], rows)
    )


def _early_exit_section(early_exit: dict[str, Any]) -> str:
    from edgecompress.exits.ship import sweep_table, title

    header, rows, how = sweep_table(early_exit)
    notes = "".join(f"<li>{escape(sentence)}</li>" for sentence in how)
    table = _table(header, [[escape(cell) for cell in row] for row in rows])
    return f"<h2>{escape(title(early_exit))}</h2><ul class='muted'>{notes}</ul>{table}"


def _pass_table(report: dict[str, Any]) -> str:
    rows = [
        [
            escape(p["stage"]),
            escape(p["name"]),
            "yes" if p["fired"] else "no",
            escape("; ".join(p["notes"])),
            f"{p['seconds']:.2f}",
        ]
        for p in report["passes"]
    ]
    return "<h2>Passes</h2>" + _table(["stage", "pass", "fired", "notes", "seconds"], rows)


def _notes(report: dict[str, Any]) -> str:
    lines = [f"<li>parity and accuracy: {escape(report['reference']['method'])}</li>"]
    for a in report["artifacts"][:1]:
        lines.append(f"<li>device latency: {escape(a['device_latency']['method'])}</li>")
        lines.append(f"<li>memory: {escape(a['memory']['method'])}</li>")
    lines += [f"<li>{escape(note)}</li>" for note in report.get("notes", [])]
    return "<h2>Methods and notes</h2><ul>" + "".join(lines) + "</ul>"
