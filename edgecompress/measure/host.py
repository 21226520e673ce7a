"""The measure stage on this host: each artifact in its runtime's standalone runner, and the float twin beside it.

Every artifact is timed on the first eval text with the profile's threads (capped at this host's cores), by
the runner script its backend names: the same file that runs on a device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.backends import Artifact, backend_for, served_lengths
from edgecompress.report.document import MEASURED


@dataclass
class HostTiming:
    """What the measure stage hands on: a runner result (or None when not measured) per artifact."""

    results: list[dict | None]  # at the longest length: every text padded to seq_len
    speed_vs_float: list[dict | None]  # float_twin.compare_speed per quantized artifact
    notes: list[str] = field(default_factory=list)
    # Length buckets: {bucket: runner result} per artifact, and the latency over --data's texts each run at
    # its bucket (real_text); empty lists without buckets.
    per_bucket: list[dict[int, dict]] = field(default_factory=list)
    real_text: list[dict] = field(default_factory=list)


# A file that runs each text at its own length is timed at every multiple of this many tokens that a text
# rounds up to, not at every length: at most 7 tokens more than the text has, so the real-text figure leans
# slow, and an export with 128 tokens runs at most 16 timings instead of 128.
OWN_LENGTH_STEP = 8


@dataclass(frozen=True)
class TimingPlan:
    threads: int  # what the runner uses: the profile's threads, capped at this host's cores
    runs: int
    warmup: int
    inputs: dict[str, np.ndarray]  # the first eval text, as the report quotes it
    # How the texts of --data fall into the length buckets (their real length distribution), for a bucketed
    # export; None: every text runs at the longest length.
    lengths: Any = None  # TextLengths | None

    def texts_per_length(self, artifact: Artifact) -> dict[int, int]:
        """How many texts `artifact` runs at each length it is timed at: the buckets, or for a file that runs
        each text at its own length, lengths rounded up to OWN_LENGTH_STEP tokens ({} without buckets)."""
        if self.lengths is None:
            return {}
        return served_lengths(artifact, self.lengths, step=OWN_LENGTH_STEP).per_bucket()


def plan_timing(profile, feeds: dict[str, np.ndarray], *, runs: int, warmup: int, lengths=None) -> TimingPlan:
    """`lengths`: the TextLengths of --data, for a bucketed export (None: every text at the longest length)."""
    bucketed = lengths is not None and len(lengths.buckets) > 1
    return TimingPlan(
        threads=min(profile.runtime.threads, os.cpu_count() or 1),
        runs=runs,
        warmup=warmup,
        inputs={name: values[:1] for name, values in feeds.items()},
        lengths=lengths if bucketed else None,
    )


def measure_on_host(
    artifacts: list[Artifact], float_twin, profile, plan: TimingPlan | None, scratch_root: Path
) -> HostTiming:
    """Time every artifact, and the float twin's artifacts when the export quantized; None: not measured."""
    if plan is None:
        return HostTiming([None] * len(artifacts), [None] * len(artifacts))
    notes = []
    if plan.threads < profile.runtime.threads:
        notes.append(
            f"host has {os.cpu_count()} cores: host latency measured with {plan.threads} threads, "
            f"not the profile's {profile.runtime.threads}"
        )
    bucketed = plan.lengths is not None
    results: list[dict | None] = [time_artifact(a, plan, keep_samples=bucketed) for a in artifacts]
    timing = HostTiming(results, _against_float_twin(artifacts, results, float_twin, plan, scratch_root), notes)
    if bucketed:
        for artifact, result in zip(artifacts, results):
            texts = plan.texts_per_length(artifact)
            per_length = _time_buckets(artifact, plan, texts, result)
            own_length = backend_for(artifact.runtime).serves_any_length
            timing.per_bucket.append(per_length)
            timing.real_text.append(real_text_latency(per_length, texts, own_length=own_length))
    return timing


def _time_buckets(artifact: Artifact, plan: TimingPlan, texts: dict[int, int], longest: dict | None) -> dict[int, dict]:
    """The runner at every length the file runs texts at (`texts`' keys), the first text cut to it (the longest's
    run is `longest`)."""
    lengths = sorted(texts)
    timed = {length: time_artifact(artifact, plan, length=length, keep_samples=True) for length in lengths[:-1]}
    timed[lengths[-1]] = longest or time_artifact(artifact, plan, keep_samples=True)
    return timed


def weighted_percentile(values, weights, q: float) -> float:
    """Nearest rank on weighted values: the smallest value whose cumulative weight reaches q% of the total, so
    the result is a value that occurred (a measured run, or a bucket's estimate)."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(np.asarray(weights, dtype=float)[order])
    index = int(np.searchsorted(cumulative / cumulative[-1], q / 100 - 1e-12))
    return float(np.asarray(values, dtype=float)[order][min(index, len(order) - 1)])


def real_text_latency(
    per_bucket: dict[int, dict], texts_per_bucket: dict[int, int], *, own_length: bool = False
) -> dict[str, Any]:
    """p50/p90 of the latency a text of --data sees, each text at its bucket (`own_length`: at its own length,
    timed at that rounded up to OWN_LENGTH_STEP): the runs of each length pooled, each run weighted by its
    length's share of the texts (nearest rank on the weighted runs)."""
    total = sum(texts_per_bucket.values())
    runs, weights = [], []
    for length, result in per_bucket.items():
        samples = result["latency_samples_ms"]
        runs += samples
        weights += [texts_per_bucket.get(length, 0) / len(samples)] * len(samples)

    def percentile(q: float) -> float:
        return weighted_percentile(runs, weights, q)

    threads = next(iter(per_bucket.values()))["threads"]
    return {
        "p50_ms": percentile(50),
        "p90_ms": percentile(90),
        "texts": total,
        "how": MEASURED,
        "method": (
            f"measured on host, {threads} thread(s): each bucket timed by its runner, the runs pooled "
            f"and weighted by the share of the {total} texts of --data that run at that bucket"
            if not own_length
            else f"measured on host, {threads} thread(s): each text runs at its own length; timed by the "
            f"runner at every multiple of {OWN_LENGTH_STEP} tokens, each text at the first one >= its length "
            f"(at most {OWN_LENGTH_STEP - 1} tokens longer than the text), the runs pooled and weighted by "
            f"the share of the {total} texts of --data at that length"
        ),
    }


def _against_float_twin(
    artifacts: list[Artifact], results: list[dict | None], float_twin, plan: TimingPlan, scratch_root: Path
) -> list[dict | None]:
    """Time the float twin of a quantized export with the same runner, to flag a quantization that slows."""
    from edgecompress.measure.float_twin import compare_speed, measure_twin

    if float_twin is None:
        return [None] * len(artifacts)
    twin = measure_twin(
        float_twin,
        tuple(a.kind for a in artifacts),
        lambda a: time_artifact(a, plan),
        scratch_root=scratch_root,
        buckets=plan.lengths.buckets if plan.lengths is not None else (),
    )
    return [
        compare_speed(m, twin[a.kind], plan.threads) if a.kind in twin and m else None
        for a, m in zip(artifacts, results)
    ]


def time_artifact(
    artifact: Artifact, plan: TimingPlan, *, length: int | None = None, keep_samples: bool = False
) -> dict[str, Any]:
    """The artifact in its runtime's standalone runner, on the first eval text, as the report quotes it;
    with `length`, the text cut to that bucket, run the way the file serves it."""
    from edgecompress.measure.runner import run_runner

    backend = backend_for(artifact.runtime)
    inputs, signature = plan.inputs, None
    if length is not None:
        inputs = {name: values[:, :length] for name, values in plan.inputs.items()}
        signature = backend.bucket_signature(length) if backend.bucket_signature else None
    return run_runner(
        artifact.path,
        runner=backend.runner,
        threads=plan.threads,
        runs=plan.runs,
        warmup=plan.warmup,
        inputs=inputs,
        keep_samples=keep_samples,
        signature=signature,
    )
