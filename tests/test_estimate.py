"""Static estimates on tiny hand-built graphs whose numbers can be worked out by hand."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecompress.errors import UserError
from edgecompress.measure.estimate import estimate_latency, estimate_memory, executed_graph
from edgecompress.onnx_facts import infer_shapes, op_histogram

FLOAT = TensorProto.FLOAT
DEVICE = dict(peak_fp32_ops_per_s=1e9, peak_int8_ops_per_s=4e9, bandwidth_bytes_per_s=1e9)


def make_model(nodes, inputs, outputs, initializers=(), opset=17, contrib=False):
    opsets = [helper.make_opsetid("", opset)]
    if contrib:
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    return model


def weight(name, *shape, dtype=np.float32):
    return numpy_helper.from_array(np.random.default_rng(0).random(shape).astype(dtype), name)


def tensor(name, shape, elem_type=FLOAT):
    return helper.make_tensor_value_info(name, elem_type, shape)


def matmul_model(m=8, k=16, n=32):
    return make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        [tensor("x", [1, m, k])],
        [tensor("y", [1, m, n])],
        [weight("w", k, n)],
    )


def test_matmul_flops_are_exact():
    latency = estimate_latency(matmul_model(), **DEVICE)
    assert latency.total_flops == 2 * 8 * 16 * 32
    assert latency.by_op_type["MatMul"].count == 1
    assert latency.nodes[0].compute_class == "fp32"


def test_infer_shapes_covers_inputs_initializers_and_intermediates():
    shapes = infer_shapes(matmul_model())
    assert shapes["x"] == ((1, 8, 16), FLOAT)
    assert shapes["w"] == ((16, 32), FLOAT)
    assert shapes["y"] == ((1, 8, 32), FLOAT)


def test_weight_bytes_are_initializer_bytes_by_dtype():
    inits = [
        weight("w", 16, 32),
        weight("b", 32, dtype=np.float16),
        numpy_helper.from_array(np.array([1, 8, 32], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Cast", ["b"], ["b32"], to=FLOAT),
        helper.make_node("Add", ["h", "b32"], ["z"]),
        helper.make_node("Reshape", ["z", "shape"], ["y"]),
    ]
    model = make_model(nodes, [tensor("x", [1, 8, 16])], [tensor("y", [1, 8, 32])], inits)
    memory = estimate_memory(model, graph=executed_graph(model, as_written=True))
    expected = sum(numpy_helper.to_array(t).nbytes for t in inits)
    assert memory.weight_bytes == expected
    assert memory.weight_bytes_by_dtype == {"float": 16 * 32 * 4, "int64": 24, "float16": 64}
    assert memory.method.startswith("static, on the graph as written")
    spike_or_run = max(memory.largest_weight_bytes, memory.prepacked_bytes + 3 * memory.peak_activation_bytes)
    parts = memory.weight_bytes + spike_or_run
    assert memory.total_bytes == parts + memory.session_overhead_bytes
    assert memory.largest_weight_bytes == 16 * 32 * 4
    assert memory.prepacked_bytes == int(0.35 * 16 * 32 * 4)  # a float MatMul keeps part of its packed weight


def test_packed_4bit_and_constant_weights_count_their_stored_bytes():
    packed = helper.make_tensor("w4", TensorProto.INT4, [16, 32], np.zeros(16 * 32, np.int8))
    scale = numpy_helper.from_array(np.array(0.5, np.float32), "scale")
    nodes = [
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones((32,), np.float32))),
        helper.make_node("DequantizeLinear", ["w4", "scale"], ["w"]),
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Add", ["h", "c"], ["y"]),
    ]
    model = make_model(nodes, [tensor("x", [1, 16])], [tensor("y", [1, 32])], [packed, scale], opset=21)
    memory = estimate_memory(model, graph=executed_graph(model, as_written=True))
    assert memory.weight_bytes_by_dtype == {"int4": 16 * 32 // 2, "float": 4 + 32 * 4}


@pytest.mark.parametrize(
    "h_is_output, peak, peak_node",
    [
        (False, 64 + 2048, "A"),  # x and h live while A runs; x dies right after
        (True, 2048 + 32 + 1024, "C"),  # h is a graph output, so it stays live through C
    ],
)
def test_liveness_peak_matches_hand_count(h_is_output, peak, peak_node):
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="A"),  # [1,16] -> [1,512]
        helper.make_node("MatMul", ["h", "w2"], ["z"], name="B"),  # [1,512] -> [1,8]
        helper.make_node("MatMul", ["z", "w3"], ["y"], name="C"),
    ]  # [1,8] -> [1,256]
    outputs = [tensor("y", [1, 256])] + ([tensor("h", [1, 512])] if h_is_output else [])
    model = make_model(
        nodes, [tensor("x", [1, 16])], outputs, [weight("w1", 16, 512), weight("w2", 512, 8), weight("w3", 8, 256)]
    )
    memory = estimate_memory(model)
    assert memory.peak_activation_bytes == peak
    assert memory.peak_node == peak_node
    assert memory.peak_node_op_type == "MatMul"


def test_symbolic_dim_raises_user_error_naming_input_and_dim():
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"])], [tensor("x", ["batch", 8])], [tensor("y", ["batch", 8])]
    )
    with pytest.raises(UserError, match=r"'x'.*'batch'.*hint: fix input shapes"):
        estimate_memory(model)


def test_roofline_picks_compute_or_memory_bound():
    compute = matmul_model(m=64, k=256, n=256)  # 2*64*256*256 flops over 393216 bytes
    add = make_model(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [tensor("a", [64, 256]), tensor("b", [64, 256])],
        [tensor("y", [64, 256])],
    )
    params = dict(DEVICE, compute_efficiency=0.5, bandwidth_efficiency=0.5, node_overhead_s=0)

    matmul = estimate_latency(compute, **params).nodes[0]
    assert matmul.bound == "compute"
    assert matmul.ms == pytest.approx(1e3 * 2 * 64 * 256 * 256 / (1e9 * 0.5))

    elementwise = estimate_latency(add, **params)
    assert elementwise.nodes[0].bound == "memory"
    assert elementwise.total_ms == pytest.approx(1e3 * 3 * 64 * 256 * 4 / (1e9 * 0.5))
    assert elementwise.total_flops == 64 * 256


def test_bad_device_numbers_are_user_errors():
    with pytest.raises(UserError, match="compute_efficiency"):
        estimate_latency(matmul_model(), **DEVICE, compute_efficiency=1.5)
    with pytest.raises(UserError, match="bandwidth_bytes_per_s"):
        estimate_latency(matmul_model(), **dict(DEVICE, bandwidth_bytes_per_s=0))


def test_dynamic_int8_matmul_is_int8_class_and_smaller(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_path, int8_path = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(matmul_model(), fp32_path)
    quantize_dynamic(fp32_path, int8_path, weight_type=QuantType.QInt8)

    latency = estimate_latency(int8_path, **DEVICE)
    # ORT fuses DynamicQuantizeLinear + MatMulInteger + scale Mul at load: one node quantizes A and multiplies
    assert [(n.op_type, n.compute_class) for n in latency.nodes] == [("DynamicQuantizeMatMul", "int8")]
    assert latency.nodes[0].flops == 2 * 8 * 16 * 32 + 4 * 8 * 16  # the GEMM + quantizing A
    assert estimate_memory(int8_path).weight_bytes < estimate_memory(fp32_path).weight_bytes


def test_qdq_matmul_is_timed_as_the_fused_int8_kernel_onnxruntime_runs():
    """DQ(x) -> MatMul <- DQ(W): ORT runs one integer kernel on the int8 tensors, not a float matmul plus a
    dequantization of W on every run."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"]),
        helper.make_node("MatMul", ["xd", "wd"], ["y"]),
    ]
    params = [
        numpy_helper.from_array(np.array(0.1, np.float32), "sx"),
        numpy_helper.from_array(np.uint8(128), "zx"),
        numpy_helper.from_array(np.array(0.05, np.float32), "sw"),
        numpy_helper.from_array(np.int8(0), "zw"),
        numpy_helper.from_array(np.ones((16, 32), np.int8), "wq"),
    ]
    model = make_model(nodes, [tensor("x", [8, 16])], [tensor("y", [8, 32])], params)
    latency = estimate_latency(model, **DEVICE)
    assert [(n.op_type, n.compute_class) for n in latency.nodes] == [
        ("QuantizeLinear", "fp32"),
        ("MatMulIntegerToFloat", "int8"),
    ]
    fused = latency.nodes[1]
    assert fused.flops == 2 * 8 * 16 * 32
    # int8 activations and weights in, their two scales and zero points, float out
    assert fused.bytes == 8 * 16 + 16 * 32 + (4 + 1) * 2 + 8 * 32 * 4


def test_contrib_attention_gets_shapes_and_flops():
    batch, seq, hidden, heads = 1, 8, 16, 2
    node = helper.make_node(
        "Attention", ["x", "w", "b", "mask"], ["y"], domain="com.microsoft", num_heads=heads, name="attn"
    )
    model = make_model(
        [node],
        [tensor("x", [batch, seq, hidden]), tensor("mask", [batch, seq], TensorProto.INT32)],
        [tensor("y", [batch, seq, hidden])],
        [weight("w", hidden, 3 * hidden), weight("b", 3 * hidden)],
        contrib=True,
    )
    assert infer_shapes(model)["y"] == ((batch, seq, hidden), FLOAT)
    tokens = batch * seq
    projection = 2 * tokens * hidden * 3 * hidden + tokens * 3 * hidden
    products = 2 * batch * seq * seq * (hidden + hidden)  # QK^T and AV
    softmax = 7 * batch * heads * seq * seq  # scale, mask, 5-op softmax
    latency = estimate_latency(model, **DEVICE)
    assert latency.by_op_type["com.microsoft::Attention"].flops == projection + products + softmax
    assert op_histogram(model) == {"com.microsoft::Attention": 1}


def test_contrib_multi_head_attention_gets_shapes_and_flops():
    """What fuse_transformer's own rule writes for MobileBERT and MPNet: Q, K, V projected outside, an attention
    bias added to the scores."""
    batch, seq, hidden, heads = 1, 8, 16, 2
    node = helper.make_node(
        "MultiHeadAttention", ["q", "k", "v", "", "mask", "bias"], ["y"], domain="com.microsoft", num_heads=heads
    )
    model = make_model(
        [node],
        [tensor(name, [batch, seq, hidden]) for name in "qkv"]
        + [tensor("mask", [batch, seq], TensorProto.INT32), tensor("bias", [batch, heads, seq, seq])],
        [tensor("y", [batch, seq, hidden])],
        contrib=True,
    )
    assert infer_shapes(model)["y"] == ((batch, seq, hidden), FLOAT)
    products = 2 * batch * seq * seq * (hidden + hidden)  # QK^T and AV
    softmax = 8 * batch * heads * seq * seq  # scale, mask, bias, 5-op softmax
    latency = estimate_latency(model, **DEVICE)
    assert latency.by_op_type["com.microsoft::MultiHeadAttention"].flops == products + softmax


def test_op_histogram_is_sorted_by_count():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Gelu", ["b"], ["y"], domain="com.microsoft"),
    ]
    model = make_model(nodes, [tensor("x", [4])], [tensor("y", [4])], contrib=True)
    assert list(op_histogram(model).items()) == [("Relu", 2), ("com.microsoft::Gelu", 1)]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A 2-layer BERT exported at [1, 16] and run through ORT's BERT optimizer."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from onnxruntime.transformers.optimizer import optimize_model

    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    ids = torch.zeros(1, 16, dtype=torch.long)
    folder = tmp_path_factory.mktemp("bert")
    torch.onnx.export(
        model,
        (ids, torch.ones_like(ids)),
        folder / "bert.onnx",
        dynamo=True,
        external_data=False,
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
    )
    optimized = optimize_model(str(folder / "bert.onnx"), model_type="bert", num_heads=2, hidden_size=32)
    optimized.save_model_to_file(str(folder / "bert_opt.onnx"))
    return folder / "bert_opt.onnx"


def test_optimized_bert_flops_match_hand_count(tiny_bert):
    seq, hidden, inter, layers = 16, 32, 64, 2
    matmul_params = layers * (4 * hidden * hidden + 2 * hidden * inter)
    attention = layers * 2 * (2 * seq * seq * hidden)  # QK^T and AV
    hand = 2 * matmul_params * seq + attention

    graph = executed_graph(tiny_bert)
    latency = estimate_latency(tiny_bert, **DEVICE, graph=graph)
    memory = estimate_memory(tiny_bert, graph=graph)
    assert latency.total_flops == pytest.approx(hand, rel=0.2)
    assert latency.total_ms > 0 and memory.peak_activation_bytes > 0
    assert "com.microsoft::SkipLayerNormalization" in op_histogram(tiny_bert)


def test_quantized_bert_is_mostly_int8(tiny_bert, tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    # The optimizer leaves stale value_info that breaks quantize_dynamic's shape inference, and
    # its fused outputs have no inferred type; both are the quantizer's problems, not ours.
    model = onnx.load(tiny_bert)
    del model.graph.value_info[:]
    onnx.save(model, tmp_path / "clean.onnx")
    quantize_dynamic(tmp_path / "clean.onnx", tmp_path / "int8.onnx", extra_options={"DefaultTensorType": FLOAT})

    latency = estimate_latency(tmp_path / "int8.onnx", **DEVICE)
    int8_flops = sum(n.flops for n in latency.nodes if n.compute_class == "int8")
    assert int8_flops > 0.5 * latency.total_flops
    assert estimate_memory(tmp_path / "int8.onnx").weight_bytes < estimate_memory(tiny_bert).weight_bytes


# ---- modelling errors issue 12 named, fixed -------------------------------------------------------------------


def test_embed_layer_norm_is_charged_for_the_rows_it_reads_not_the_whole_table():
    seq, hidden, vocab = 8, 16, 5000
    ints = TensorProto.INT32
    node = helper.make_node(
        "EmbedLayerNormalization",
        ["ids", "types", "words", "positions", "segments", "gamma", "beta"],
        ["y", "mask_index"],
        domain="com.microsoft",
        epsilon=1e-12,
    )
    model = make_model(
        [node],
        [tensor("ids", [1, seq], ints), tensor("types", [1, seq], ints)],
        [tensor("y", [1, seq, hidden]), tensor("mask_index", [1], ints)],
        [weight("words", vocab, hidden), weight("positions", 64, hidden), weight("segments", 2, hidden)]
        + [weight("gamma", hidden), weight("beta", hidden)],
        contrib=True,
    )
    cost = estimate_latency(model, **DEVICE).nodes[0]
    assert cost.flops == 10 * seq * hidden  # per output element, not per table element
    assert cost.bytes < 10 * seq * hidden * 4  # the rows gathered, never the 5000-row table


def conv_model(group: int, channels: int = 8, length: int = 32):
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1], group=group)
    return make_model(
        [node],
        [tensor("x", [1, channels, length])],
        [tensor("y", [1, channels, length])],
        [weight("w", channels, channels // group, 3)],
    )


def test_depthwise_convolutions_are_not_charged_an_im2col_buffer():
    depthwise = estimate_latency(conv_model(group=8), **DEVICE).nodes[0]
    io = (8 * 32 + 8 * 1 * 3 + 8 * 32) * 4
    assert depthwise.bytes == io
    full = estimate_latency(conv_model(group=1), **DEVICE).nodes[0]
    assert full.bytes > (8 * 32 + 8 * 8 * 3 + 8 * 32) * 4  # im2col: the [C x k, positions] patch matrix


def test_a_qdq_convolution_is_timed_as_the_integer_kernel_onnxruntime_runs():
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"]),
        helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1]),
        helper.make_node("QuantizeLinear", ["c", "sx", "zx"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "sx", "zx"], ["y"]),
    ]
    params = [
        numpy_helper.from_array(np.array(0.1, np.float32), "sx"),
        numpy_helper.from_array(np.uint8(128), "zx"),
        numpy_helper.from_array(np.array(0.05, np.float32), "sw"),
        numpy_helper.from_array(np.int8(0), "zw"),
        numpy_helper.from_array(np.ones((8, 8, 3), np.int8), "wq"),
    ]
    model = make_model(nodes, [tensor("x", [1, 8, 32])], [tensor("y", [1, 8, 32])], params)
    convs = [n for n in estimate_latency(model, **DEVICE).nodes if "Conv" in n.op_type]
    assert [(n.op_type, n.compute_class) for n in convs] == [("QLinearConv", "int8")]


def test_4bit_matmuls_are_timed_as_float_math_below_accuracy_level_4():
    """MatMulNBits dequantizes its blocks and multiplies in float unless accuracy_level is 4 (int8 kernels)."""

    def nbits(level: int):
        node = helper.make_node(
            "MatMulNBits",
            ["x", "w4", "s"],
            ["y"],
            domain="com.microsoft",
            K=64,
            N=32,
            bits=4,
            block_size=32,
            accuracy_level=level,
        )
        packed = numpy_helper.from_array(np.zeros((32, 2, 16), np.uint8), "w4")
        scales = numpy_helper.from_array(np.ones(64, np.float32), "s")
        return make_model([node], [tensor("x", [1, 8, 64])], [tensor("y", [1, 8, 32])], [packed, scales], contrib=True)

    assert estimate_latency(nbits(0), **DEVICE).nodes[0].compute_class == "fp32"
    assert estimate_latency(nbits(4), **DEVICE).nodes[0].compute_class == "int8"


def test_nodes_onnxruntime_fuses_away_are_not_charged():
    """MatMul + Add (bias) is one FusedGemm-like node at load for 2-D inputs; a Gelu written out as Erf math is
    one Gelu node: the estimate counts what runs."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["y"]),
    ]
    model = make_model(nodes, [tensor("x", [8, 16])], [tensor("y", [8, 32])], [weight("w", 16, 32), weight("b", 32)])
    latency = estimate_latency(model, **DEVICE)
    assert [n.op_type for n in latency.nodes] == ["Gemm"]
    assert "the graph onnxruntime" in latency.method


def test_static_int8_dequantized_weights_are_not_counted_as_activations():
    """DQ(W) -> MatMul: ORT runs MatMulIntegerToFloat on the int8 weights; the float copy of W never exists."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"]),
        helper.make_node("MatMul", ["xd", "wd"], ["y"]),
    ]
    params = [
        numpy_helper.from_array(np.array(0.1, np.float32), "sx"),
        numpy_helper.from_array(np.uint8(128), "zx"),
        numpy_helper.from_array(np.array(0.05, np.float32), "sw"),
        numpy_helper.from_array(np.int8(0), "zw"),
        numpy_helper.from_array(np.ones((256, 512), np.int8), "wq"),
    ]
    model = make_model(nodes, [tensor("x", [2, 256])], [tensor("y", [2, 512])], params)
    as_written = estimate_memory(model, graph=executed_graph(model, as_written=True))
    assert as_written.peak_activation_bytes >= 256 * 512 * 4  # the written graph's float W
    runtime = estimate_memory(model)
    assert runtime.peak_activation_bytes < 256 * 512  # x, its int8 copy and y only
    assert runtime.weight_bytes_by_dtype.get("int8", 0) >= 256 * 512


def test_the_session_overhead_grows_with_the_nodes():
    from edgecompress.measure.estimate import SessionOverhead

    overhead = SessionOverhead(1000, 10, "test")
    model = matmul_model()
    memory = estimate_memory(model, overhead=overhead, graph=executed_graph(model, as_written=True))
    assert memory.session_overhead_bytes == 1000 + 10 * 1
    assert "test" in memory.method
