"""The float twin: the same export without its quantization, measured beside it ("don't ship if slower").

Quantization is meant to make the model faster as well as smaller, but it does not always: int4
MatMulNBits and some QDQ patterns run slower than float on CPUs without the matching kernels. So when a
graph pass quantizes (a lossy pass fires), the rewrite stage also keeps the graph as it was before that
pass, runs the recipe's later non-lossy passes on it (shape fixing, folding), and the measure stage
emits and times that float twin with the same runner, threads and inputs. The report gives both medians
and flags an artifact slower than its twin.

Before -> After (int8 recipe): passes [remove, fuse, fix, fold, quantize_static] -> graph after all five,
twin = graph after the first four. For int4 (quantize first): twin = the lowered graph after [fuse, fix,
fold], i.e. the float recipe.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from edgecompress.report.document import MEASURED

log = logging.getLogger(__name__)

# Host timings on a shared machine move by a few percent between runs: slower by less than this is noise.
SLOWER_MARGIN = 1.05


def measure_twin(
    twin, kinds: tuple[str, ...], measure_one, scratch_root: Path, buckets: tuple[int, ...] = ()
) -> dict[str, dict]:
    """Emit the twin's artifacts into a scratch folder and time each: {artifact kind: runner result}."""
    from edgecompress.backends import emit_all

    with tempfile.TemporaryDirectory(prefix=".float-twin-", dir=scratch_root) as scratch:
        artifacts = emit_all(twin, Path(scratch), kinds, buckets)
        return {a.kind: measure_one(a) for a in artifacts}


def compare_speed(measured: dict, twin_measured: dict, threads: int) -> dict[str, Any]:
    """Host p50 of a quantized artifact against its float twin's, from runs of the same runner."""
    p50, twin_p50 = measured["latency_ms"]["p50"], twin_measured["latency_ms"]["p50"]
    return {
        "p50_ms": p50,
        "float_p50_ms": twin_p50,
        "speedup": twin_p50 / p50,
        "slower": p50 > twin_p50 * SLOWER_MARGIN,
        "how": MEASURED,
        "method": f"same runner, {threads} thread(s), same input, on the host; the float twin is this "
        f"export without its quantization pass; slower means by more than "
        f"{100 * (SLOWER_MARGIN - 1):.0f}% at p50",
    }


def slower_note(file: str, speed: dict) -> str:
    return (
        f"{file} is slower than its float twin on the host: p50 {speed['p50_ms']:.2f} ms vs "
        f"{speed['float_p50_ms']:.2f} ms float ({speed['speedup']:.2f}x); consider shipping the float "
        f"model or another quantization mode"
    )
