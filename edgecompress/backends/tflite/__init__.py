"""The LiteRT (TFLite) backend: `model.tflite`, written from the same final ONNX graph as `model.onnx`.

- `artifact.py`: writes, runs and audits the file (LiteRT's interpreter, XNNPACK delegation);
- `legalize.py`, `rejoin_row_slices.py`: the graph edits TFLite needs before lowering (not recipe passes);
- `lowering.py`: walks the graph and writes each node through the op registry (`registry.py`, a leaf);
- `buckets.py`: one file, one signature per sequence-length bucket, the weights stored once;
- `ops/`: one file per op family, each registering its lowerings with `@lowers`;
- `writer.py`: the flatbuffer, built with the schema LiteRT ships.
"""

from edgecompress.backends import Backend, NativeBenchmark, register_backend
from edgecompress.backends.tflite import artifact, benchmark_model

BACKEND = register_backend(
    Backend(
        runtime=artifact.RUNTIME,
        suffixes={"tflite": ".tflite"},
        runner="litert_runner",
        emit=artifact.emit_tflite,
        execute=artifact.run_tflite_artifact,
        native_benchmark=NativeBenchmark(
            benchmark_model.PROGRAM, "--benchmark-model", benchmark_model.command, benchmark_model.parse
        ),
        pip_packages=("numpy", "ai-edge-litert"),
        minimum_version=artifact.minimum_version,
        audit=artifact.audit_for_report,
        exact_writer=artifact.emit_exact_tflite,
        bucket_signature=artifact.bucket_signature,
    )
)
