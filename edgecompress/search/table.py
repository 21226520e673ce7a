"""One row per candidate, read from its export's report.json; the winner rule; candidates.json and the table.

Rows hold only what a report.json says (each figure with how it was obtained), so the search does not depend
on how an export computes them. A candidate ships several artifacts (.onnx, .ort, .tflite): its row takes the
worst artifact for every figure, because every one of them ships.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RAN, SKIPPED, FAILED = "ran", "skipped", "failed"

# How each column of a row was obtained (figures given as {value, how, method} say it themselves).
COLUMNS = {
    "accuracy": "measured: the worst artifact's accuracy on the labelled texts of --data, from its report.json",
    "agreement": "measured: the worst artifact's share of --data's texts with the original model's predicted label",
    "size_mb": "static: the largest artifact's file size on disk, in MB of 10^6 bytes",
    "latency_ms": "the figure the p90 latency budget bounds (the device estimate, or a measurement where one was "
    "taken on the device), worst artifact",
    "host_p90_ms": "measured on this host by the standalone runner, worst artifact; null when not measured",
    "budgets": "each budget's worst verdict over the candidate's artifacts, as its report.json gives it",
    "seconds": "wall-clock time of the candidate's export",
}
BUDGET_ORDER = ("accuracy drop", "p90 latency", "peak memory", "artifact size")


@dataclass
class Row:
    name: str
    what: str
    tier: str
    status: str  # RAN, SKIPPED or FAILED
    reason: str = ""  # why skipped or failed; for a run candidate, why it lost (filled once the winner is known)
    seconds: float | None = None
    folder: str | None = None  # the candidate's export (work folder), for a run candidate
    accuracy: dict[str, Any] | None = None  # {value, how, method}
    agreement: dict[str, Any] | None = None  # with the original model on --data: {value, how, method}
    size_mb: float | None = None
    latency_ms: dict[str, Any] | None = None  # the figure the latency budget bounds: {value, how, method}
    host_p90_ms: float | None = None  # measured on this host, when measured
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)  # budget -> worst verdict over artifacts
    passed: bool = False

    @property
    def missed_accuracy(self) -> bool:
        verdict = self.budgets.get("accuracy drop")
        return verdict is not None and not verdict["passed"]

    def misses(self) -> list[str]:
        return [
            f"{name} {v['value']:.4g} {v['unit']} > {v['limit']:.4g} {v['unit']} ({v['how']})"
            for name, v in self.budgets.items()
            if not v["passed"]
        ]


def row_from_report(report: dict[str, Any], name: str, what: str, tier: str, seconds: float, folder: Path) -> Row:
    """A run candidate's row: the worst artifact's figure for each column and each budget."""
    artifacts = report["artifacts"]
    row = Row(name, what, tier, RAN, seconds=round(seconds, 1), folder=str(folder), passed=bool(report["passed"]))
    row.accuracy = _worst_figure([a["accuracy"] for a in artifacts])
    row.agreement = _worst_figure([a["agreement"] for a in artifacts])
    row.size_mb = max(a["size"]["value"] for a in artifacts) / 1e6
    hosts = [a["host_latency"]["p90_ms"] for a in artifacts if a.get("host_latency")]
    row.host_p90_ms = max(hosts) if hosts else None
    for artifact in artifacts:
        for verdict in artifact["verdicts"]:
            key = budget_key(verdict["budget"])
            kept = row.budgets.get(key)
            if kept is None or _worse(verdict, kept):
                row.budgets[key] = {k: verdict[k] for k in ("budget", "value", "limit", "unit", "how", "passed")}
    latency = row.budgets.get("p90 latency")
    if latency is not None:
        row.latency_ms = {"value": latency["value"], "how": latency["how"], "method": latency["budget"]}
    row.budgets = {k: row.budgets[k] for k in BUDGET_ORDER if k in row.budgets}
    return row


def budget_key(label: str) -> str:
    """'accuracy drop of recipe int8 (84.0% -> 83.1%)' -> 'accuracy drop'; 'p90 latency (x)' -> 'p90 latency'."""
    return next((key for key in BUDGET_ORDER if label.startswith(key)), label)


def _worse(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a["passed"] != b["passed"]:
        return not a["passed"]
    return a["value"] > b["value"]


def _worst_figure(figures: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    present = [f for f in figures if f is not None]
    if not present:
        return None
    worst = min(present, key=lambda f: f["value"])
    return {k: worst[k] for k in ("value", "how", "method")}


def rank_key(row: Row) -> tuple[float, float, float]:
    """Most accurate first; ties: smaller, then faster."""
    accuracy = row.accuracy["value"] if row.accuracy else -1.0
    latency = row.latency_ms["value"] if row.latency_ms else float("inf")
    return (-round(accuracy, 9), row.size_mb or float("inf"), latency)


def choose_winner(rows: list[Row]) -> Row | None:
    """The most accurate candidate that meets every budget (ties: smaller, then faster); None when none does."""
    passing = [r for r in rows if r.status == RAN and r.passed]
    return min(passing, key=rank_key) if passing else None


def closest_miss(rows: list[Row]) -> Row | None:
    """With no winner, what still gets written (and exits 3): fewest budgets missed, then by rank."""
    ran = [r for r in rows if r.status == RAN]
    return min(ran, key=lambda r: (len(r.misses()), rank_key(r))) if ran else None


def explain_losses(rows: list[Row], winner: Row | None) -> None:
    """Fill in why each run candidate that is not the winner lost."""
    for row in rows:
        if row.status != RAN or row is winner:
            continue
        if not row.passed:
            row.reason = "misses " + "; ".join(row.misses())
        elif winner is not None:
            row.reason = _lost_to(row, winner)
    if winner is not None:
        winner.reason = "winner: the most accurate candidate that meets every budget"


def _lost_to(row: Row, winner: Row) -> str:
    mine, theirs = rank_key(row), rank_key(winner)
    if mine[0] != theirs[0]:
        return f"meets every budget, less accurate than {winner.name} ({_pct(row.accuracy)} < {_pct(winner.accuracy)})"
    if mine[1] != theirs[1]:
        return f"as accurate as {winner.name}, larger ({row.size_mb:.2f} MB > {winner.size_mb:.2f} MB)"
    return f"as accurate and as large as {winner.name}, slower ({mine[2]:.3g} ms > {theirs[2]:.3g} ms)"


def _pct(figure: dict[str, Any] | None) -> str:
    return "n/a" if figure is None else f"{100 * figure['value']:.2f}%"


def table_lines(rows: list[Row]) -> list[str]:
    """The table for the terminal and report.md: one line per candidate, skipped ones included."""
    header = ("candidate", "status", "accuracy", "agreement", "size MB", "p90 ms", "how", "budgets", "why")
    lines: list[tuple[str, ...]] = [header]
    for r in rows:
        latency = r.latency_ms
        lines.append(
            (
                r.name,
                r.status,
                _pct(r.accuracy),
                _pct(r.agreement),
                f"{r.size_mb:.2f}" if r.size_mb is not None else "-",
                f"{latency['value']:.3g}" if latency else "-",
                latency["how"] if latency else "-",
                ("all met" if r.passed else f"{len(r.misses())} missed") if r.status == RAN else "-",
                r.reason,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return ["  ".join(c.ljust(w) for c, w in zip(line[:-1], widths)) + "  " + line[-1] for line in lines]


def write_candidates_json(path: Path, rows: list[Row], winner: Row | None, context: dict[str, Any]) -> None:
    document = {
        **context,
        "winner": winner.name if winner else None,
        "passed": winner is not None,
        "rule": "the most accurate candidate that meets every budget; ties: smaller, then faster",
        "figures": "each candidate's figures are read from its own export's report.json; for a candidate with "
        "several artifacts the worst artifact's figure is shown, since each of them ships",
        "columns": COLUMNS,
        "candidates": [asdict(r) for r in rows],
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
