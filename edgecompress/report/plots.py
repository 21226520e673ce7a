"""The report's two plots, drawn with matplotlib (Agg: no display needed) and saved as PNG and SVG.

pareto: accuracy against the latency the budget bounds, one point per candidate (or per artifact of one
        export), marker area proportional to file size, the budget lines drawn, the Pareto front joined
ops:    latency per op type, the device estimate and (where measured) this host's profiler side by side
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Marker area in points^2 per MB, with a floor so a tiny file still shows.
AREA_PER_MB, MIN_AREA = 12.0, 30.0
TOP_OPS = 12
# Latencies (and the budget) spanning more than this factor get a log latency axis.
LOG_SPAN = 20.0


@dataclass(frozen=True)
class Point:
    name: str
    accuracy: float  # fraction
    latency_ms: float
    latency_how: str
    size_mb: float
    passed: bool  # meets every budget
    chosen: bool = False  # the winner (or the artifact set that ships)


@dataclass(frozen=True)
class Limits:
    latency_ms: float
    accuracy_floor: float | None  # fraction; None when accuracy is not judged


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_front(points: list[Point]) -> list[Point]:
    """Points no other point beats on both axes (faster and at least as accurate), by latency."""
    front = [
        p
        for p in points
        if not any(
            (q.latency_ms <= p.latency_ms and q.accuracy >= p.accuracy)
            and (q.latency_ms < p.latency_ms or q.accuracy > p.accuracy)
            for q in points
        )
    ]
    return sorted(front, key=lambda p: p.latency_ms)


def draw_pareto(points: list[Point], limits: Limits, folder: Path, stem: str = "pareto") -> list[Path]:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7.5, 4.8), dpi=100)
    for p in points:
        axes.scatter(
            p.latency_ms,
            100 * p.accuracy,
            s=max(MIN_AREA, AREA_PER_MB * p.size_mb),
            c="#2a9d55" if p.passed else "#d1495b",
            marker="*" if p.chosen else "o",
            alpha=0.75,
            edgecolors="black" if p.chosen else "none",
        )
        axes.annotate(p.name, (p.latency_ms, 100 * p.accuracy), fontsize=7, xytext=(4, 4), textcoords="offset points")
    front = pareto_front(points)
    if len(front) > 1:
        axes.plot([p.latency_ms for p in front], [100 * p.accuracy for p in front], "--", c="grey", lw=1)
    axes.axvline(limits.latency_ms, c="#d1495b", lw=1, ls=":", label=f"p90 latency budget {limits.latency_ms:g} ms")
    if limits.accuracy_floor is not None:
        axes.axhline(100 * limits.accuracy_floor, c="#3d5a80", lw=1, ls=":", label="accuracy budget (lowest allowed)")
    latencies = [p.latency_ms for p in points] + [limits.latency_ms]
    if min(latencies) > 0 and max(latencies) / min(latencies) > LOG_SPAN:  # else the points crowd at zero
        axes.set_xscale("log")
    hows = sorted({p.latency_how for p in points})
    axes.set_xlabel(f"p90 latency the budget bounds, ms ({', '.join(hows)})")
    axes.set_ylabel("accuracy on --data, %")
    axes.set_title("accuracy vs latency (marker area: file size; green: meets every budget; star: shipped)", fontsize=9)
    axes.legend(fontsize=7, loc="lower right")
    axes.grid(alpha=0.3)
    return _save(plt, figure, folder, stem)


def draw_ops(breakdown: dict[str, Any], folder: Path, stem: str = "ops") -> list[Path]:
    """Horizontal bars per op type (slowest TOP_OPS by the estimate), estimated and measured side by side."""
    plt = _pyplot()
    estimated = breakdown["estimated"]["ms"]
    measured = (breakdown.get("measured") or {}).get("ms", {})
    ops = list(estimated)[:TOP_OPS]
    ops += [op for op in list(measured)[:TOP_OPS] if op not in ops]
    ops.reverse()  # slowest on top
    figure, axes = plt.subplots(figsize=(7.5, 0.32 * len(ops) + 1.4), dpi=100)
    rows = range(len(ops))
    height = 0.4 if measured else 0.8
    axes.barh(
        [r + (height / 2 if measured else 0) for r in rows],
        [estimated.get(op, 0.0) for op in ops],
        height,
        label="estimated on the device",
        color="#3d5a80",
    )
    if measured:
        axes.barh(
            [r - height / 2 for r in rows],
            [measured.get(op, 0.0) for op in ops],
            height,
            label="measured on this host (onnxruntime profiler)",
            color="#ee964b",
        )
    axes.set_yticks(list(rows), ops, fontsize=7)
    axes.set_xlabel("ms per run")
    axes.set_title("latency per op type", fontsize=9)
    axes.legend(fontsize=7, loc="lower right")
    axes.grid(alpha=0.3, axis="x")
    return _save(plt, figure, folder, stem)


def _save(plt, figure, folder: Path, stem: str) -> list[Path]:
    figure.tight_layout()
    paths = [folder / f"{stem}.png", folder / f"{stem}.svg"]
    for path in paths:
        figure.savefig(path)
    plt.close(figure)
    return paths
