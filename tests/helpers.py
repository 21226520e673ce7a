"""Helpers shared by test files (fixtures live in conftest.py): `from helpers import pass_context`."""

from __future__ import annotations

from typing import Any

from edgecompress.passes import PassContext

# The float graph stage of the `default` recipe without its attention requirement and mask-value pass, appended
# to a test recipe's [[compress]] passes: a tiny or pruned model need not fuse attention for these tests.
FLOAT_GRAPH_STAGE = """
[[graph]]
pass = "remove_training_nodes"
[[graph]]
pass = "fuse_transformer"
[[graph]]
pass = "fix_shapes"
[[graph]]
pass = "fold_constants"
"""


def pass_context(bundle: Any = None, *, seq_len: int | None = 16, **fields: Any) -> PassContext:
    """A PassContext for tiny models: fixed shapes, batch 1, seq_len 16 unless given.

    With a bundle, the model's facts come from it (heads, width, layers, input names, its task); `fields` set or
    override any PassContext field (`calibration=`, `train_data=`, `dynamic_shapes=True`, ...). The context
    is frozen: derive a variant with `dataclasses.replace(context, field=value)`.
    """
    values: dict[str, Any] = {"seq_len": seq_len, "batch": 1, "dynamic_shapes": False}
    if bundle is not None:
        values.update(
            num_heads=bundle.num_heads,
            hidden_size=bundle.hidden_size,
            num_layers=bundle.num_layers,
            input_names=bundle.input_names,
            task=bundle.task,
        )
    return PassContext(**{**values, **fields})


def ort_logits(graph, feeds: dict, names, *, optimize: bool, batch: int | None = None):
    """The "logits" of an ONNX graph on one ONNX Runtime thread, `batch` rows per run (all at once by default);
    `optimize=False` runs the graph as written (no load-time fusions)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rows = len(feeds["input_ids"])
    step = batch or rows
    return np.concatenate(
        [session.run(["logits"], {n: feeds[n][i : i + step] for n in names})[0] for i in range(0, rows, step)]
    )


def torch_logits(module, feeds: dict, names):
    """A torch module's output on `feeds`, its inputs in the order of `names`, as numpy."""
    import torch

    return module(*(torch.from_numpy(feeds[name]) for name in names)).detach().numpy()
