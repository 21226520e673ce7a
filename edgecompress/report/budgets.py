"""Budget verdicts: each artifact's figures against the device profile's limits.

Sizes are in MB of 10^6 bytes, as phone storage and app stores count them.
"""

from __future__ import annotations

from edgecompress.report.document import MEASURED, STATIC, Figure, Verdict

MB = 1e6


def size_verdict(budgets, size_bytes: int) -> Verdict:
    return Verdict(
        "artifact size",
        budgets.artifact_size_mb,
        size_bytes / MB,
        "MB",
        STATIC,
        size_bytes / MB <= budgets.artifact_size_mb,
    )


def memory_verdict(budgets, memory: Figure) -> Verdict:
    return Verdict(
        "peak memory", budgets.peak_memory_mb, memory.value, "MB", memory.how, memory.value <= budgets.peak_memory_mb
    )


def latency_verdict(budgets, latency: Figure, applies_to: str | None = None) -> Verdict:
    """`applies_to` names what the bounded figure is for a bucketed export: "real-text" (each text of --data
    at its bucket) or "longest-bucket" (every input padded to seq_len)."""
    label = "p90 latency" if applies_to is None else f"p90 latency ({applies_to})"
    return Verdict(
        label, budgets.latency_p90_ms, latency.value, "ms", latency.how, latency.value <= budgets.latency_p90_ms
    )


def accuracy_verdict(
    budgets,
    reference_accuracy: float,
    artifact_accuracy: float,
    variant: str | None = None,
    against: str = "uncompressed",
    how: str = MEASURED,
) -> Verdict:
    """The accuracy guard: the drop against the uncompressed model (or, for a student, its teacher); the label
    names the variant and both accuracies, so a failed build says which recipe lost what."""
    drop = 100.0 * (reference_accuracy - artifact_accuracy)
    label = (
        f"accuracy drop of recipe {variant} ({100 * reference_accuracy:.2f}% {against} -> "
        f"{100 * artifact_accuracy:.2f}%)"
        if variant
        else "accuracy drop"
        if against == "uncompressed"
        else f"accuracy drop against the {against}"
    )
    return Verdict(
        label, budgets.accuracy_drop_points, drop, "points", how, drop <= budgets.accuracy_drop_points + 1e-9
    )
