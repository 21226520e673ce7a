"""Length-bucketed .tflite files: one signature per bucket (`seq_<n>`) over one stored set of weights.

Each bucket's graph is the same model with its shapes fixed to that length: a small embedding model built
inline (weights dominate its size), and the tiny BERT taken through the default recipe's graph passes at
each length. Every signature runs in LiteRT (default XNNPACK setup) against onnxruntime on its own graph.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecompress.backends.tflite.buckets import lower_to_tflite_buckets, signature_key
from edgecompress.backends.tflite.lowering import lower_to_tflite
from edgecompress.errors import InternalError
from edgecompress.paths import runtimes_dir

from helpers import pass_context

pytest.importorskip("ai_edge_litert")
from edgecompress.backends.tflite.artifact import (  # noqa: E402
    audit_for_report,
    load_interpreter,
    run_tflite_artifact,
)
from edgecompress.backends.tflite.writer import schema, weight_sharing, weight_storage  # noqa: E402

TOLERANCE = 1e-5
BUCKETS = (16, 32, 64, 128)
BERT_BUCKETS = (16, 32, 64)  # the tiny checkpoint has 64 positions
VOCAB, WIDTH = 2000, 64


def embedding_model(length: int) -> onnx.ModelProto:
    """Embedding lookup + projection + masked mean over fixed [1, length] inputs; weights are 0.5 MB."""
    rng = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array(rng.standard_normal((VOCAB, WIDTH)).astype(np.float32), "word_emb"),
        numpy_helper.from_array(rng.standard_normal((WIDTH, 8)).astype(np.float32), "proj"),
        numpy_helper.from_array(np.array([-1], np.int64), "last_axis"),
    ]
    nodes = [
        helper.make_node("Gather", ["word_emb", "input_ids"], ["words"]),
        helper.make_node("MatMul", ["words", "proj"], ["hidden"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "last_axis"], ["mask_3d"]),
        helper.make_node("Mul", ["hidden", "mask_3d"], ["masked"]),
        helper.make_node("ReduceMean", ["masked"], ["pooled"], axes=[1], keepdims=0),
    ]
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, [1, length]) for name in ("input_ids", "attention_mask")
    ]
    outputs = [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, 8])]
    model = helper.make_model(
        helper.make_graph(nodes, "embedding", inputs, outputs, initializers),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 9
    return model


def bert_feeds(length: int, rows: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Texts of different lengths padded to `length`, ids inside the tiny vocabulary."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((rows, length), np.int64)
    for row in range(rows):
        mask[row, : rng.integers(2, length + 1)] = 1
    return {
        "input_ids": rng.integers(5, 100, (rows, length)) * mask,
        "attention_mask": mask,
        "token_type_ids": np.zeros((rows, length), np.int64),
    }


def ort_run(model: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def ort_rows(model: onnx.ModelProto, feeds: dict, output: str = "logits") -> np.ndarray:
    """onnxruntime row by row (the graphs have batch 1)."""
    rows = len(next(iter(feeds.values())))
    return np.concatenate([ort_run(model, {k: v[i : i + 1] for k, v in feeds.items()})[output] for i in range(rows)])


def file_layout(data: bytes) -> tuple[list[tuple[str, int]], list[str], int]:
    """(signature key, subgraph) pairs, subgraph names and the buffer count, read from the flatbuffer."""
    model = schema().Model.GetRootAs(data)
    signatures = [
        (model.SignatureDefs(i).SignatureKey().decode(), model.SignatureDefs(i).SubgraphIndex())
        for i in range(model.SignatureDefsLength())
    ]
    names = [model.Subgraphs(i).Name().decode() for i in range(model.SubgraphsLength())]
    return signatures, names, model.BuffersLength()


def bucket_graphs(checkpoint, recipe: str) -> dict[int, onnx.ModelProto]:
    """The tiny BERT after `recipe`'s graph passes, shapes fixed to each bucket."""
    from edgecompress.intake.data import tokenize
    from edgecompress.intake.model import load_bundle
    from edgecompress.lower import export_onnx
    from edgecompress.recipe import load_recipe
    from edgecompress.rewrite import rewrite_with_twin

    bundle = load_bundle(checkpoint)
    feeds = tokenize(bundle.tokenizer, ["a very good movie"], seq_len=16, input_names=bundle.input_names)
    dynamic = export_onnx(bundle, feeds)
    graphs = {}
    for length in BERT_BUCKETS:
        graph = onnx.ModelProto()
        graph.CopyFrom(dynamic)
        graphs[length] = rewrite_with_twin(load_recipe(recipe).graph, graph, pass_context(bundle, seq_len=length)).graph
    return graphs


@pytest.fixture(scope="module")
def bert_graphs(tiny_checkpoint) -> dict[int, onnx.ModelProto]:
    return bucket_graphs(tiny_checkpoint, "default")


@pytest.fixture(scope="module")
def bert_file(bert_graphs, tmp_path_factory):
    path = tmp_path_factory.mktemp("buckets") / "model.tflite"
    path.write_bytes(lower_to_tflite_buckets(bert_graphs))
    return path


@pytest.fixture(scope="module")
def embedding_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("embedding") / "model.tflite"
    path.write_bytes(lower_to_tflite_buckets({n: embedding_model(n) for n in BUCKETS}))
    return path


# ---- the file ------------------------------------------------------------------------------------------------


def test_one_subgraph_per_bucket_largest_first_each_under_its_signature(bert_file):
    signatures, names, _ = file_layout(bert_file.read_bytes())
    assert signatures == [("seq_64", 0), ("seq_32", 1), ("seq_16", 2)]
    assert names == ["seq_64", "seq_32", "seq_16"]
    interpreter = load_interpreter(bert_file, threads=1)
    assert sorted(interpreter.get_signature_list()) == ["seq_16", "seq_32", "seq_64"]
    # invoke() without a signature runs subgraph 0: the padded full-length model
    assert [list(d["shape"]) for d in interpreter.get_input_details()] == [[1, 64]] * 3


def test_each_signature_computes_what_onnxruntime_computes_on_its_own_graph(bert_graphs, bert_file):
    interpreter = load_interpreter(bert_file, threads=1)
    for length, graph in bert_graphs.items():
        runner = interpreter.get_signature_runner(signature_key(length))
        for seed in range(3):
            feeds = bert_feeds(length, seed=seed)
            got, want = runner(**feeds), ort_run(graph, feeds)
            assert sorted(got) == sorted(want) == ["logits"]
            np.testing.assert_allclose(got["logits"], want["logits"], atol=TOLERANCE, rtol=0)


def test_weights_are_stored_once_so_four_buckets_cost_little_more_than_one(embedding_file):
    single = lower_to_tflite(embedding_model(128))
    data = embedding_file.read_bytes()
    assert len(data) < 1.1 * len(single), (len(data), len(single))
    table_bytes = VOCAB * WIDTH * 4
    model = schema().Model.GetRootAs(data)
    sizes = [model.Buffers(i).DataLength() for i in range(model.BuffersLength())]
    assert sizes.count(table_bytes) == 1  # the table is one buffer, which all four subgraphs read
    sharing = weight_sharing(data)
    assert sharing["shared"] >= table_bytes and len(sharing["own"]) == len(BUCKETS)
    assert sum(sharing["own"]) < 1000  # per bucket: shape vectors only
    # shared bytes are counted once: only each bucket's shape vectors add to the storage
    assert weight_storage(data)["FLOAT32"] == weight_storage(single)["FLOAT32"]
    # buffers: the single file's, plus at most the few length-dependent constants of each other bucket
    assert file_layout(single)[2] <= file_layout(data)[2] <= file_layout(single)[2] + 3 * 2


def test_tiny_bert_buckets_share_every_weight_and_keep_their_own_position_rows(bert_graphs, bert_file):
    sharing = weight_sharing(bert_file.read_bytes())
    weights = sum(t.ByteSize() for t in bert_graphs[64].graph.initializer if len(t.dims) == 2 and t.dims[0] != 64)
    assert sharing["shared"] >= 0.9 * weights
    position_rows = [n * 32 * 4 for n in (64, 32, 16)]  # the first n rows of the position table, per bucket
    assert all(rows <= own < rows + 1024 for rows, own in zip(position_rows, sharing["own"])), sharing["own"]


def test_the_buckets_share_one_table_of_quantization_parameters_per_weight(tiny_checkpoint):
    """Every bucket's tensor of a quantized weight points to the same table, not a copy per subgraph."""
    data = lower_to_tflite_buckets(bucket_graphs(tiny_checkpoint, "dynamic-int8"))
    model = schema().Model.GetRootAs(data)
    tables: dict[int, set[int]] = {}  # weight buffer -> positions of the quantization tables its tensors use
    for index in range(model.SubgraphsLength()):
        graph = model.Subgraphs(index)
        for position in range(graph.TensorsLength()):
            tensor = graph.Tensors(position)
            quantization = tensor.Quantization()
            if tensor.Buffer() and quantization is not None and quantization.ScaleLength() > 1:
                tables.setdefault(tensor.Buffer(), set()).add(quantization._tab.Pos)
    assert tables, "dynamic int8 quantizes the tiny BERT's weights per channel"
    assert all(len(positions) == 1 for positions in tables.values()), tables
    interpreter = load_interpreter_from_bytes(data)  # and LiteRT reads the shared tables
    for length in BERT_BUCKETS:
        logits = interpreter.get_signature_runner(signature_key(length))(**bert_feeds(length))["logits"]
        assert np.isfinite(logits).all()


def load_interpreter_from_bytes(data: bytes):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=data)


def test_a_single_graph_is_written_byte_for_byte_as_before(bert_graphs):
    for model in (bert_graphs[16], embedding_model(16)):
        data = lower_to_tflite_buckets({16: model})
        assert data == lower_to_tflite(model)
        assert file_layout(data)[:2] == ([("serving_default", 0)], ["main"])


def test_buckets_of_different_models_are_refused():
    other = embedding_model(16)
    other.graph.input[1].name = "mask"
    other.graph.node[2].input[0] = "mask"
    with pytest.raises(InternalError, match=r"bucket 32 has inputs/outputs .*'mask'.* bucket 16 has"):
        lower_to_tflite_buckets({16: embedding_model(16), 32: other})
    with pytest.raises(InternalError, match="positive integers"):
        lower_to_tflite_buckets({0: embedding_model(16)})


# ---- running and auditing ------------------------------------------------------------------------------------


def test_the_executor_runs_a_chosen_signature_in_batches(bert_graphs, bert_file):
    feeds = bert_feeds(16, rows=5, seed=3)
    got = run_tflite_artifact(bert_file, feeds, output_name="logits", threads=1, signature="seq_16")
    np.testing.assert_allclose(got, ort_rows(bert_graphs[16], feeds), atol=TOLERANCE, rtol=0)
    padded = bert_feeds(64, rows=2, seed=4)  # no signature: subgraph 0, as today
    got = run_tflite_artifact(bert_file, padded, output_name="logits", threads=1)
    np.testing.assert_allclose(got, ort_rows(bert_graphs[64], padded), atol=TOLERANCE, rtol=0)
    with pytest.raises(InternalError, match=r"has no signature 'seq_8' \(signatures: seq_64, seq_32, seq_16\)"):
        run_tflite_artifact(bert_file, feeds, output_name="logits", signature="seq_8")


def test_the_audit_counts_the_primary_subgraph_and_adds_each_signature(bert_graphs, bert_file, tmp_path):
    report = audit_for_report(bert_file)
    single = tmp_path / "single.tflite"
    single.write_bytes(lower_to_tflite(bert_graphs[64]))
    alone = audit_for_report(single)
    assert set(alone) == {"op_histogram", "float_ops", "float_ops_inside", "weight_storage", "method", "delegation"}
    assert report["op_histogram"] == alone["op_histogram"] and report["delegation"] == alone["delegation"]
    assert list(report["signatures"]) == ["seq_64", "seq_32", "seq_16"]
    for index, figures in enumerate(report["signatures"].values()):
        assert figures["subgraph"] == index
        assert figures["nodes"] == alone["delegation"]["nodes"]  # the same graph at another length
        assert (figures["partitions"], figures["delegated_nodes"]) == (1, alone["delegation"]["delegated_nodes"])
    assert report["shared_weight_bytes"] == weight_sharing(bert_file.read_bytes())["shared"]


# ---- the runner script ---------------------------------------------------------------------------------------


def run_runner(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(runtimes_dir() / "litert_runner.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_runner_times_a_chosen_signature(embedding_file, tmp_path):
    proc = run_runner(embedding_file, "--runs", "3", "--warmup", "1", "--signature", "seq_32")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["signature"] == "seq_32"
    assert result["signatures"] == ["seq_128", "seq_64", "seq_32", "seq_16"]
    assert {name: block["shape"] for name, block in result["inputs"].items()} == {  # synthesized for seq_32
        "input_ids": [1, 32],
        "attention_mask": [1, 32],
    }
    assert result["outputs"] == {"pooled": {"shape": [1, 8], "dtype": "float32"}}
    default = json.loads(run_runner(embedding_file, "--runs", "3", "--warmup", "1").stdout)
    assert default["signature"] is None and default["inputs"]["input_ids"]["shape"] == [1, 128]
    # fed from a file, the saved outputs are the signature's: onnxruntime's on the 32 graph
    feeds = {
        "input_ids": np.random.default_rng(5).integers(0, VOCAB, (1, 32)),
        "attention_mask": np.ones((1, 32), np.int64),
    }
    feeds["attention_mask"][0, 20:] = 0
    np.savez(tmp_path / "in.npz", **feeds)
    proc = run_runner(
        embedding_file,
        "--runs",
        "1",
        "--warmup",
        "0",
        "--signature",
        "seq_32",
        "--inputs",
        tmp_path / "in.npz",
        "--save-outputs",
        tmp_path / "out.npz",
    )
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp_path / "out.npz") as saved:
        np.testing.assert_allclose(saved["pooled"], ort_run(embedding_model(32), feeds)["pooled"], atol=TOLERANCE)


def test_the_runner_rejects_an_unknown_signature_naming_the_known_ones(embedding_file):
    proc = run_runner(embedding_file, "--runs", "1", "--signature", "seq_100")
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (
        "litert_runner: error: unknown signature 'seq_100'; the model has: seq_128, seq_64, seq_32, seq_16\n"
    )
