"""The measure stage on the device `--on` names: each artifact timed there, through its transport.

The device has its own cores, so the runner uses the profile's threads (not capped at this host's). Inputs are
the first eval text padded to seq_len, as the host figure is: the longest bucket, the worst case. A bucketed
.tflite runs the signature of that bucket.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgecompress.backends import Artifact, backend_for
from edgecompress.measure.runner import RunRequest, describe


def measure_on_target(
    artifacts: list[Artifact],
    transport,
    *,
    threads: int,
    seq_len: int,
    bucketed: bool,
    feeds: dict[str, np.ndarray],
    runs: int,
    warmup: int,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    inputs = {name: values[:1] for name, values in feeds.items()}
    results = []
    for artifact in artifacts:
        backend = backend_for(artifact.runtime)
        signature = backend.bucket_signature(seq_len) if bucketed and backend.bucket_signature else None
        request = RunRequest(artifact.path, backend.runner, threads, runs, warmup, inputs=inputs, signature=signature)
        results.append(transport.measure(request, progress))
    return results


def device_latency_block(result: dict) -> dict:
    """The report's measured-on-device block: the percentiles the result has, peak memory, and how."""
    latency = result["latency_ms"]
    return {
        "p50_ms": latency["p50"],
        "p90_ms": latency["p90"],
        "p99_ms": latency["p99"],
        "threads": result["threads"],
        "peak_rss_mb": result.get("peak_rss_mb"),
        "measured_on": result.get("measured_on", "host"),
        "derived": result.get("latency_derived") or {},
        "how": "measured",
        "method": f"{describe(result)}; inputs: the first eval text padded to seq_len"
        + (f", signature {result['signature']}" if result.get("signature") else ""),
    }
