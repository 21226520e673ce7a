"""The ONNX Runtime backend: `model.onnx`, `model.ort` (mobile format) and `required_operators.config`.

`artifact.py` writes and runs the files, `audit.py` reads their ops back (ORT format and ONNX alike).
"""

from edgecompress.backends import Backend, NativeBenchmark, register_backend
from edgecompress.backends.ort import artifact, audit, perf_test

BACKEND = register_backend(
    Backend(
        runtime="onnxruntime",
        suffixes={"onnx": ".onnx", "ort": ".ort"},
        runner="ort_runner",
        emit=artifact.emit_ort,
        execute=artifact.run_ort_artifact,
        native_benchmark=NativeBenchmark(perf_test.PROGRAM, "--perf-test", perf_test.command, perf_test.parse),
        pip_packages=("numpy", "onnxruntime"),
        minimum_version=artifact.minimum_version,
        audit=audit.audit_for_report,
        serves_any_length=True,  # fused kernels take any length: measured faster than a bucket's padding
    )
)
