"""Host latency carries its spread and load, and the report warns when either makes it unreliable (issue 17, 15)."""

from __future__ import annotations

from edgecompress.report.document import _host_text
from edgecompress.report.host_noise import host_latency, host_notes


def _result(p50=10.0, iqr=0.5, load=0.3, cores=4):
    return {
        "latency_ms": {
            "p10": p50 - 1,
            "p25": p50 - iqr / 2,
            "p50": p50,
            "p75": p50 + iqr / 2,
            "p90": p50 + 1,
            "p99": p50 + 2,
            "iqr": iqr,
            "mad": iqr / 2,
            "mean": p50,
            "min": p50 - 2,
            "max": p50 + 3,
        },
        "threads": 2,
        "peak_rss_mb": 50.0,
        "output_digest": "sha256:0",
        "host": {"cpu_count": cores, "load_1m_before": load, "load_1m_after": load},
    }


def test_a_steady_run_on_a_quiet_host_is_reliable_and_shows_spread_and_load():
    block = host_latency(_result(), "measured on host")
    assert block["unreliable"] == [] and host_notes([("model.onnx", block)]) == []
    assert block["iqr_ms"] == 0.5 and block["p10_ms"] == 9.0 and block["load_1m_before"] == 0.3
    assert "IQR 0.50" in _host_text(block) and "load 0.30/4 cores" in _host_text(block)


def test_a_wide_spread_is_named_in_a_warning():
    block = host_latency(_result(iqr=2.5), "measured on host")
    notes = host_notes([("model.ort", block)])
    assert len(notes) == 1 and notes[0].startswith("warning: host latency of model.ort is unreliable")
    assert "IQR 2.5 ms is 25% of the p50" in notes[0]
    assert _host_text(block).endswith("**unreliable**")


def test_a_loaded_host_is_named_in_a_warning():
    notes = host_notes([("model.onnx", host_latency(_result(load=5.2, cores=4), "m"))])
    assert len(notes) == 1 and "1-minute load average 5.20 on 4 cores" in notes[0]


def test_results_of_older_runners_without_spread_still_report():
    old = _result()
    old["latency_ms"] = {k: old["latency_ms"][k] for k in ("p50", "p90", "p99")}
    old["host"] = {}
    block = host_latency(old, "m")
    assert block["unreliable"] == [] and "IQR" not in _host_text(block)
