"""One `.tflite` with a signature per sequence-length bucket, all over one stored set of weights.

Before -> After: {16: g16, 32: g32, 64: g64, 128: g128} (the same model specialised to each length)
-> subgraphs [seq_128, seq_64, seq_32, seq_16], one SignatureDef each, keyed `seq_<n>`, whose inputs and
outputs keep the ONNX names. Constant buffers are shared by content (`writer.serialize_signatures`), so
the file grows by each bucket's operators and tensor headers, not by a copy of the weights; the few
length-dependent constants (a position table trimmed to n rows, shape vectors) are stored per bucket.

The largest bucket is subgraph 0: `Interpreter.invoke()` without a signature runs it, so a caller that
knows nothing of buckets gets the padded full-length model, as from a single-graph file. A single graph
is written by `lower_to_tflite` unchanged (one subgraph, signature "serving_default"), byte for byte.

Measured (LiteRT 2.3.0, host, MiniLM-L6 float, buckets 16/32/64/128): the file grows 0.33%; every
signature's subgraph is delegated to XNNPACK like subgraph 0 and runs as fast as its graph written
alone. Memory is another matter: XNNPACK packs the shared weights once per subgraph at load, so the
resident size after load grows by about 41 MB per extra bucket (124 -> 248 MB for four); without
XNNPACK the four buckets cost what one does.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from edgecompress.backends.tflite.lowering import lower_to_tflite, lower_to_tflite_signatures
from edgecompress.errors import InternalError

SIGNATURE_PREFIX = "seq_"


def signature_key(seq_len: int) -> str:
    """The signature an app runs for inputs padded to `seq_len` tokens: "seq_128"."""
    return f"{SIGNATURE_PREFIX}{seq_len}"


def lower_to_tflite_buckets(graphs: Mapping[int, onnx.ModelProto], *, exact_dynamic_int8: bool = False) -> bytes:
    """The `.tflite` bytes with one signature per bucket (`seq_<n>`), largest bucket first; see the module.

    `graphs` maps each bucket's sequence length to the model with every shape fixed to it; all must have
    the same input and output names. With one graph this is `lower_to_tflite`.
    """
    _check_buckets(graphs)
    if len(graphs) == 1:
        [model] = graphs.values()
        return lower_to_tflite(model, exact_dynamic_int8=exact_dynamic_int8)
    named = [(signature_key(seq_len), graphs[seq_len]) for seq_len in sorted(graphs, reverse=True)]
    return lower_to_tflite_signatures(named, exact_dynamic_int8=exact_dynamic_int8)


def _check_buckets(graphs: Mapping[int, onnx.ModelProto]) -> None:
    """The caller's promise: positive lengths, and every bucket addressed by the same names."""
    if not graphs:
        raise InternalError("lower_to_tflite_buckets got no graphs")
    bad = [n for n in graphs if not isinstance(n, int) or isinstance(n, bool) or n <= 0]
    if bad:
        raise InternalError(f"bucket lengths must be positive integers, got {bad}")
    names = {n: (_names(m.graph.input, m), [v.name for v in m.graph.output]) for n, m in graphs.items()}
    first, *others = sorted(names)
    for n in others:
        if names[n] != names[first]:
            raise InternalError(
                f"bucket {n} has inputs/outputs {names[n]}, bucket {first} has {names[first]}: "
                "every bucket must be the same model"
            )


def _names(values, model: onnx.ModelProto) -> list[str]:
    initializers = {t.name for t in model.graph.initializer}
    return [v.name for v in values if v.name not in initializers]
