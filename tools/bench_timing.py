"""Timing shared by the benchmarks: rounds that rotate the order of the files, so load from other processes
hits all of them alike; nearest-rank percentiles; the load average printed beside every table."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np


def timed_rounds(
    calls: dict[str, Callable[[], object]], *, rounds: int, runs: int, warmup: int = 3
) -> dict[str, list[float]]:
    """Milliseconds of every call: each round runs every call `runs` times, the order rotated per round."""
    names = list(calls)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for call in calls.values():
        for _ in range(warmup):
            call()
    for index in range(rounds):
        start = index % len(names)
        for name in names[start:] + names[:start]:
            for _ in range(runs):
                begin = time.perf_counter()
                calls[name]()
                samples[name].append((time.perf_counter() - begin) * 1e3)
    return samples


def weighted_rank(values: list[float], weights: list[float], percent: int) -> float:
    """The smallest value whose cumulative weight reaches `percent`% of the total: a run that happened."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(np.asarray(weights)[order])
    index = int(np.searchsorted(cumulative, percent / 100 * cumulative[-1] * (1 - 1e-12), side="left"))
    return float(np.asarray(values)[order][index])


def p50(values: list[float]) -> float:
    return weighted_rank(values, [1.0] * len(values), 50)


def load_line(before, after) -> str:
    return f"Load average (1, 5, 15 min): {fmt_load(before)} at start, {fmt_load(after)} at end; {os.cpu_count()} CPUs"


def fmt_load(load) -> str:
    return ", ".join(f"{x:.2f}" for x in load)
