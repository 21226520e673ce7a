"""ONNX Runtime backend: `model.onnx`, `model.ort` (mobile format) and `required_operators.config`.

The `.ort` file is converted with the Fixed optimization style at level "all" for the ARM target
platform: the optimizations are baked in for the shipped input shapes, and no x86-only kernels
(NCHWc) are chosen, so the same file runs on the host for verification and on the phone. Its
kernel-type table is rewritten in sorted order (canonical.py) so that the same inputs give the same bytes.
The operator config lists exactly the kernels a reduced-size ORT build must keep.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import tempfile
from pathlib import Path

from edgecompress.backends import Artifact
from edgecompress.backends.ort.canonical import make_canonical
from edgecompress.backends.ort.layer_norm import NOTE as LAYER_NORM_NOTE, split_skip_layer_norms
from edgecompress.logs import captured_library_output

# Highest ai.onnx opset each onnxruntime release implements (onnxruntime.ai/docs/reference/compatibility).
_ORT_FOR_OPSET = {15: "1.10", 16: "1.11", 17: "1.13", 18: "1.14", 19: "1.16", 20: "1.17", 21: "1.20"}

ONNX_NAME = "model.onnx"
ORT_NAME = "model.ort"
OPERATORS_CONFIG = "required_operators.config"


def emit_ort(model, out_dir: Path, kinds: tuple[str, ...], buckets: tuple[int, ...] = ()) -> list[Artifact]:
    """`model.onnx` and `model.ort` of the final graph as it is: with several length buckets its sequence axis
    stays symbolic and ONNX Runtime runs each input at its own length (the fused kernels take any length)."""
    import onnx

    model, split = split_skip_layer_norms(copy.deepcopy(model))  # faster on ONNX Runtime, see layer_norm.py
    notes = (LAYER_NORM_NOTE,) if split else ()
    onnx_path = out_dir / ONNX_NAME
    onnx.save_model(model, str(onnx_path))
    artifacts = []
    if "onnx" in kinds:
        artifacts.append(Artifact("onnx", onnx_path, "onnxruntime", notes=notes))
    if "ort" in kinds:
        artifacts.append(dataclasses.replace(_convert_to_ort(onnx_path, out_dir), notes=notes))
    return artifacts


def _convert_to_ort(onnx_path: Path, out_dir: Path) -> Artifact:
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory(dir=out_dir) as scratch:
        scratch_path = Path(scratch)
        source = scratch_path / ONNX_NAME
        shutil.copyfile(onnx_path, source)
        with captured_library_output():  # the converter prints progress; not ours to show
            convert_onnx_models_to_ort(
                source,
                output_dir=scratch_path / "ort",
                optimization_styles=[OptimizationStyle.Fixed],
                target_platform="arm",
            )
        shutil.move(str(scratch_path / "ort" / ORT_NAME), out_dir / ORT_NAME)
        make_canonical(out_dir / ORT_NAME)  # the converter's kernel-type table comes in hash order
        config = (scratch_path / "ort" / "model.required_operators.config").read_text()
    (out_dir / OPERATORS_CONFIG).write_text(_portable_config(config))
    return Artifact("ort", out_dir / ORT_NAME, "onnxruntime", extra_files=(out_dir / OPERATORS_CONFIG,))


def _portable_config(text: str) -> str:
    """The converter names the temp path it read; the shipped file should name the shipped model."""
    lines = [line for line in text.splitlines() if not line.startswith("# - ")]
    body = [line for line in lines if not line.startswith("#")]
    return "\n".join(["# Operators used by model.ort (for a reduced-size ONNX Runtime build)", *body]) + "\n"


def run_ort_artifact(path: Path, feeds, *, output_name: str, threads: int = 2, progress=None, length=None):
    """Run the artifact file itself in ONNX Runtime, in batches its fixed input shape allows (a batch-1 `.onnx`
    whose rows cannot mix: in batches of a copy with a symbolic batch, see batched.py). A bucketed export's graph
    has a symbolic sequence axis, so feeds cut to a bucket's `length` run as they are."""
    from edgecompress.verify.evaluate import ort_session, run_session

    if Path(path).suffix == ".onnx":  # batch-1 file, rows independent: batches of a copy in memory (batched.py)
        from edgecompress.backends.ort.batched import run_batched

        outputs = run_batched(Path(path), feeds, output_name=output_name, threads=threads, progress=progress)
        if outputs is not None:
            return outputs
    session = ort_session(str(path), threads=threads, optimize=True)
    batch = session.get_inputs()[0].shape[0]
    return run_session(
        session,
        feeds,
        output_name=output_name,
        batch_size=batch if isinstance(batch, int) and batch > 0 else 32,
        progress=progress,
    )


def minimum_version(kind: str, opset: int | None) -> dict:
    """The oldest onnxruntime an app can load this artifact with, and why."""
    import onnxruntime

    if kind == "ort":
        return {
            "onnxruntime": onnxruntime.__version__,
            "why": "ORT-format files are read by the onnxruntime release that wrote them or a newer one",
        }
    return {
        "onnxruntime": _ORT_FOR_OPSET.get(opset, onnxruntime.__version__),
        "why": f"first onnxruntime release implementing ai.onnx opset {opset}",
    }
