"""The search's own files in the shipped folder: candidates.json, a "search" section in report.json and
report.md, and report.html with one Pareto point per candidate.

The shipped folder is otherwise the winning candidate's export, byte for byte: its manifest, artifacts and
checksums are untouched (the manifest lists the files the app ships, not the reports).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgecompress.report.html import limits_of, write_html
from edgecompress.report.plots import Limits, Point
from edgecompress.search.table import RAN, Row, table_lines, write_candidates_json


def add_search_files(
    folder: Path, rows: list[Row], winner: Row | None, shipped: Row, context: dict[str, Any], profile
) -> None:
    write_candidates_json(folder / "candidates.json", rows, winner, context)
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    report["search"] = {
        "winner": winner.name if winner else None,
        "shipped": shipped.name,
        "verdict": _verdict(winner, shipped),
        "candidates": [asdict(r) for r in rows],
    }
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    with (folder / "report.md").open("a", encoding="utf-8") as md:
        md.write("\n## Search\n\n" + _verdict(winner, shipped) + "\n\n```\n" + "\n".join(table_lines(rows)) + "\n```\n")
    write_html(
        folder,
        report,
        points=search_points(rows, shipped),
        limits=_limits(rows, report, profile),
        search_rows=report["search"]["candidates"],
    )


def _verdict(winner: Row | None, shipped: Row) -> str:
    if winner is not None:
        return f"Search: {winner.name} is the most accurate candidate that meets every budget; it is what shipped."
    return (
        f"Search: NO candidate meets every budget. Shipped the closest miss, {shipped.name} (fewest budgets "
        "missed, then most accurate), so its figures can be inspected; the export exits 3."
    )


def search_points(rows: list[Row], shipped: Row) -> list[Point]:
    return [
        Point(
            r.name,
            r.accuracy["value"],
            r.latency_ms["value"],
            r.latency_ms["how"],
            r.size_mb or 0.0,
            r.passed,
            r is shipped,
        )
        for r in rows
        if r.status == RAN and r.accuracy is not None and r.latency_ms is not None
    ]


def _limits(rows: list[Row], report: dict[str, Any], profile) -> Limits:
    """The accuracy floor of the original model (a row that is not a student), else the shipped report's."""
    for r in rows:
        drop = r.budgets.get("accuracy drop")
        if r.status == RAN and not r.name.startswith("student-") and drop is not None and r.accuracy is not None:
            floor = r.accuracy["value"] + (drop["value"] - drop["limit"]) / 100
            return Limits(profile.budgets.latency_p90_ms, floor)
    return limits_of(report)
