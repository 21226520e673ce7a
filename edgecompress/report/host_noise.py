"""Host latency with its spread and the load it was measured under, and when either makes it unreliable.

A p50 alone cannot tell a slow model from a busy host (issue 17 item 15: one quantized graph measured 55.7 ms
as .onnx and 37.3 ms as .ort in one run on a loaded machine). The runners report the spread of their timed
runs (p10/p25/p75/p90, IQR, median absolute deviation) and the 1-minute load average before and after; the
report shows both and warns when

- the IQR exceeds SPREAD_WARNING_SHARE of the p50: half the runs spread over more than a fifth of the median.
  Measured on the tiny test BERT (seq_len 16, 2 threads, 50 runs, a 2-core host at load 4): the IQR was 8.7%
  (.onnx), 3.5% (.ort) and 0.7% (.tflite) of the p50, so even a busy host stays below 10% on steady work,
  and 20% is about twice the worst of that: the runs themselves were disturbed;
- the load average before the timed runs exceeds the host's cores: on average more tasks were runnable than
  there were cores over the last minute, so the runner's threads waited for a core during at least part of it.
"""

from __future__ import annotations

from typing import Any

SPREAD_WARNING_SHARE = 0.20


def host_latency(result: dict[str, Any], method: str) -> dict[str, Any]:
    """The report's host-latency block from one runner result: percentiles, spread, load, how measured."""
    latency = result["latency_ms"]
    host = result.get("host") or {}
    block = {
        "p50_ms": latency["p50"],
        "p90_ms": latency["p90"],
        "p99_ms": latency["p99"],
        "p10_ms": latency.get("p10"),
        "iqr_ms": latency.get("iqr"),
        "mad_ms": latency.get("mad"),
        "threads": result["threads"],
        "peak_rss_mb": result["peak_rss_mb"],
        "output_digest": result["output_digest"],
        "load_1m_before": host.get("load_1m_before"),
        "load_1m_after": host.get("load_1m_after"),
        "cpu_count": host.get("cpu_count"),
        "how": "measured",
        "method": f"{method}; spread: p10/p90 and IQR (p75 - p25) of the same runs; load: the host's 1-minute "
        f"load average read by the runner before and after its runs",
    }
    block["unreliable"] = unreliable_because(block)
    return block


def unreliable_because(block: dict[str, Any]) -> list[str]:
    """Why this host figure should not be trusted (empty: no reason found)."""
    reasons = []
    iqr, p50 = block.get("iqr_ms"), block["p50_ms"]
    if iqr is not None and p50 > 0 and iqr > SPREAD_WARNING_SHARE * p50:
        reasons.append(
            f"the runs spread widely (IQR {iqr:.3g} ms is {100 * iqr / p50:.0f}% of the p50 "
            f"{p50:.3g} ms; above {100 * SPREAD_WARNING_SHARE:.0f}% the runs were disturbed)"
        )
    load, cores = block.get("load_1m_before"), block.get("cpu_count")
    if load is not None and cores and load > cores:
        reasons.append(
            f"the host was loaded (1-minute load average {load:.2f} on {cores} cores before timing: "
            f"more runnable tasks than cores)"
        )
    return reasons


def host_notes(files_and_blocks: list[tuple[str, dict[str, Any] | None]]) -> list[str]:
    """One warning per artifact whose host latency is unreliable, naming why."""
    return [
        f"warning: host latency of {name} is unreliable: {'; '.join(block['unreliable'])}; measure again "
        f"on a quiet host (`edgecompress bench`) before comparing it"
        for name, block in files_and_blocks
        if block and block["unreliable"]
    ]
