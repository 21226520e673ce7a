"""Verification of a batch-1 `.onnx` file in batches, where that cannot change a number.

The shipped ONNX Runtime files fix the batch to 1 (the app runs one text at a time; fix_shapes) and keep a
symbolic sequence axis. Verifying 100,000 texts one call at a time took 10 minutes on the tiny model (issue 17).
Running a copy of the same graph with a symbolic batch axis, held in memory (the file on disk is not changed),
computes each row exactly as the file does when no op mixes rows: measured on the tiny BERT's float graph
(Attention, SkipLayerNormalization, BiasGelu, Gemm), batches of 32 gave bit-identical logits. Timed on 4,000
texts at seq_len 64 (buckets 16/32/64, float, a loaded 2-core host, median of 3): model.onnx 0.58 s -> 0.33 s
(1.8x); the whole verify stage, where .ort and .tflite still run one text at a time, 4.1 s -> 3.0 s (1.4x).

What is not batched:
- graphs with an op whose numbers depend on the other rows of the batch: DynamicQuantizeLinear (and the ops
  that quantize inside, DynamicQuantizeMatMul, DynamicQuantizeLSTM) take one int8 range over the whole tensor,
  so a row's logits would depend on its neighbours (measured: 7e-6 on the tiny dynamic-int8 graph). The
  default dynamic-int8 recipe is such a graph: it is verified one text at a time, as the app runs it;
- `.ort` files (ORT's own format, not rewritable here): one text at a time;
- any copy that does not reproduce the file on the first batch (run both ways; must be identical to
  PROOF_ATOL): the whole run falls back to one text at a time, and the log says so.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

CROSS_ROW_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"})
BATCH = 32
PROOF_ATOL = 1e-6


def batched_copy(path) -> bytes | None:
    """The graph of the `.onnx` at `path` with a symbolic batch axis, serialized; None when it must not batch."""
    import onnx

    model = onnx.load(str(path))
    ops = {node.op_type for node in model.graph.node}
    for function in model.functions:
        ops |= {node.op_type for node in function.node}
    if ops & CROSS_ROW_OPS:
        log.info("%s: not batched for verification (%s mixes rows)", path.name, ", ".join(sorted(ops & CROSS_ROW_OPS)))
        return None
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if not dims or dims[0].dim_value != 1:
            return None
        dims[0].ClearField("dim_value")
        dims[0].dim_param = "batch"
    del model.graph.value_info[:]  # inferred again by ONNX Runtime with the new batch axis
    return model.SerializeToString()


def run_batched(path, feeds, *, output_name: str, threads: int, progress=None) -> np.ndarray | None:
    """Outputs of the `.onnx` at `path` on all rows, in batches of BATCH; None when batching is not safe here."""
    from edgecompress.verify.evaluate import ort_session, run_session

    rows = len(next(iter(feeds.values())))
    if rows <= 1:
        return None
    copy = batched_copy(path)
    if copy is None:
        return None
    try:
        session = ort_session(copy, threads=threads, optimize=True)
        first = {name: values[:BATCH] for name, values in feeds.items()}
        batched = run_session(session, first, output_name=output_name, batch_size=BATCH)
    except Exception as exc:  # e.g. a folded Reshape that bakes the batch of 1 in: run the file as it is
        log.info("%s: not batched for verification (%s)", path.name, exc)
        return None
    single = run_session(
        ort_session(str(path), threads=threads, optimize=True), first, output_name=output_name, batch_size=1
    )
    differs = float(np.max(np.abs(batched - single)))
    if not differs <= PROOF_ATOL:
        log.info(
            "%s: not batched for verification (the batched copy differs by %.3g on the first rows)", path.name, differs
        )
        return None
    return run_session(session, feeds, output_name=output_name, batch_size=BATCH, progress=progress)
