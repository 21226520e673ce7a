"""A float sequence classifier + calibrated ranges -> `IntegerBert`, the integer-only torch module.

Before -> After:
    <Family>ForSequenceClassification (float32, eager attention) of a family that opts in (BERT, DistilBERT,
    RoBERTa, XLM-RoBERTa: `Architecture.integer_only`), its parts found through the architecture seam
 -> IntegerBert: int8 embedding tables (per hidden channel) and weights (per output row), int8
    Linear inputs on per-channel steps folded into the weights, int32 biases, dyadic requantizations,
    i-GELU, i-softmax, i-LayerNorm, i-tanh or ReLU (head); float logits only at the final dequantization.

The module computes with exact int64 arithmetic (see `kernels.TorchOps`) and lowers itself to an ONNX
graph that computes the same integers (`to_onnx`). Anything the integer kernels do not cover is a
UserError naming the module path and type.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from edgecompress.architectures import architecture_of
from edgecompress.compress.integer_only.kernels import (
    TORCH,
    LinearParams,
    gelu_table,
    layernorm_params,
    linear_params,
    quantize_float,
    requantizer,
)
from edgecompress.compress.integer_only.program import (
    GELU_BITS,
    HEAD_ACTIVATIONS,
    HIDDEN_BITS,
    LOGIT_BITS,
    RESIDUAL_BITS,
    RESIDUAL_PART_BITS,
    EmbeddingPlan,
    HeadPlan,
    IntegerPlan,
    LayerPlan,
    integer_forward,
)
from edgecompress.errors import InternalError, UserError


def _step(absmax: float, bits: int) -> float:
    """The scale of a symmetric `bits`-wide integer covering [-absmax, absmax]."""
    return max(absmax, 1e-8) / (2 ** (bits - 1) - 1)


def _np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().double().cpu().numpy()


def check_convertible(model, where: str) -> None:
    """UserError for anything the integer kernels cannot compute, naming the module path and type."""
    family = architecture_of(model)
    expected_class = family.class_prefix + "ForSequenceClassification"
    why = family.refuse("integer_only")
    if why:
        raise UserError(f"integer-only lowering does not apply to {family.describe()}: {why}", where=where)
    if type(model).__name__ != expected_class:
        raise UserError(
            f"integer-only lowering cannot handle a {type(model).__name__}",
            where=where,
            expected=f"a {expected_class} (a classifier checkpoint)",
        )
    _check_activations(model, family, where)
    _check_modules(model, where)
    config = model.config
    for field, found, wanted in (
        ("position_embedding_type", getattr(config, "position_embedding_type", "absolute"), "absolute"),
        ("attention implementation", config._attn_implementation, "eager"),
    ):
        if found != wanted:
            raise UserError(
                f"integer-only lowering cannot handle {field} {found!r}", where=where, expected=repr(wanted)
            )
    for name, parameter in model.named_parameters():
        if not torch.isfinite(parameter).all():
            raise UserError(
                f"weight '{name}' contains NaN or inf",
                where=where,
                hint="the checkpoint is corrupt or diverged in training",
            )


def _check_activations(model, family, where: str) -> None:
    """Every FFN runs the exact GELU (i-GELU approximates erf's), and the head's activation has a kernel."""
    name = getattr(model.config, family.activation_key, None)
    for index, layer in enumerate(family.layers(model)):
        act = layer.get_submodule(family.ffn_activation_path)
        if name != "gelu" or type(act).__name__ != "GELUActivation":
            raise UserError(
                f"integer-only lowering cannot handle activation {name!r} of module "
                f"'{family.base}.{family.layers_path}.{index}.{family.ffn_activation_path}' ({type(act).__name__})",
                where=where,
                expected="'gelu' (I-BERT's i-GELU approximates the exact erf GELU)",
            )
    if family.head_activation not in HEAD_ACTIVATIONS:
        raise InternalError(
            f"{family.describe()} opts into integer-only with head activation {family.head_activation!r}"
        )


def _check_modules(model, where: str) -> None:
    """The model is made of exactly the modules its transformers class builds from its config: the seam's
    parts, which the integer program computes. Anything added or swapped (an adapter, a wrapper) is refused."""
    with torch.device("meta"):  # shapes only, no memory; a copy of the config, which building may annotate
        built = {path: type(module) for path, module in type(model)(copy.deepcopy(model.config)).named_modules()}
    for path, module in model.named_modules():
        if built.get(path) is not type(module):
            raise UserError(
                f"integer-only lowering cannot handle module '{path}' of type {type(module).__name__}",
                where=where,
                expected=f"only the modules a {type(model).__name__} is built of",
            )


def build_plan(model, ranges: dict) -> IntegerPlan:
    """Quantize weights and derive every requantization from the calibrated ranges; the model's parts are
    read through its family's architecture."""
    family = architecture_of(model)
    embeddings = _embedding_plan(model, family, _step(ranges["emb"], HIDDEN_BITS))
    hidden_scale = embeddings.norm.out_scale
    layers = []
    max_len = len(embeddings.position)  # every position reads a row of this table
    for index, layer in enumerate(family.layers(model)):
        layers.append(
            _layer_plan(
                family,
                layer,
                {k.split(".", 1)[1]: v for k, v in ranges.items() if k.startswith(f"layer{index}.")},
                hidden_scale,
                max_len,
            )
        )
        hidden_scale = layers[-1].norm2.out_scale
    head = _head_plan(model, family, ranges, hidden_scale)
    return IntegerPlan(embeddings, layers, head)


def _int8_table(weight: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per hidden channel: BERT's outlier dimensions would otherwise take most of a per-tensor int8 grid
    (measured on MiniLM's word table: SQNR 27 dB per tensor, 39 dB per channel)."""
    weight = weight.detach().double()
    scale = np.maximum(weight.abs().amax(dim=0).numpy(), 1e-8) / 127
    return quantize_float(weight, torch.from_numpy(scale), 8).numpy().astype(np.int8), scale


def _embedding_plan(model, family, out_scale: float) -> EmbeddingPlan:
    word = family.word_embeddings(model).weight
    position = family.encoder_part(model, family.position_embeddings_path).weight
    token_type = family.encoder_part(model, family.token_type_embeddings_path)
    if token_type is not None and not family.uses_token_type_ids:
        # The family's inputs carry no token types, so every token adds type row 0 (RoBERTa): one table fewer.
        position, token_type = position + token_type.weight[0], None
    weights = [word, position] + ([] if token_type is None else [token_type.weight])
    tables = [_int8_table(weight) for weight in weights]
    sum_scale = float(sum(scale.max() * 127 for _, scale in tables)) / (2 ** (RESIDUAL_BITS - 1) - 1)
    norm = family.encoder_part(model, family.embeddings_norm_path)
    return EmbeddingPlan(
        word=tables[0][0],
        position=tables[1][0],
        token_type=tables[2][0] if len(tables) > 2 else None,
        to_sum=tuple(requantizer(scale / sum_scale, INT8, None) for _, scale in tables),
        norm=layernorm_params(_np(norm.weight), _np(norm.bias), out_scale, HIDDEN_BITS),
        position_pad=family.position_pad(model.config.to_dict()),
    )


def _linear(linear, input_scale: float):
    return linear_params(_np(linear.weight), None if linear.bias is None else _np(linear.bias), input_scale)


def smoothed_linears(linears, channel_absmax: np.ndarray):
    """int8 inputs with a per-channel step, folded into the weights (SmoothQuant, Xiao et al. 2023, at
    migration strength 1).

    A few hidden channels of BERT carry values 10-20x the others (measured on MiniLM: FFN input 28.5
    vs a median channel of 1.8), so a per-tensor int8 step leaves the rest a handful of levels.
    Before -> After: y = W x  ->  y = (W diag(t)) x_q with x_q = round(x / t), t_j = max|x_j| / 127;
    the input's integers are then at scale 1 and the weights, quantized per output row, carry the steps.
    Measured on MiniLM layer 0 (output SQNR, per-tensor -> per-channel): FFN in 23.9 -> 35.2 dB,
    FFN out 25.9 -> 39.8 dB, Q/K/V 31.8 -> 37.5 dB (SmoothQuant's 0.5 gave 32.5, 18.5, 34.9).
    """
    step = channel_absmax / 127
    params = [
        linear_params(_np(m.weight) * step[None, :], None if m.bias is None else _np(m.bias), 1.0) for m in linears
    ]
    return params, step


# Bounds on the integers each requantization reads, from the bit widths of the program (`kernels.requantizer`
# makes the multiplier int32 where they allow): int8 values, the 16-bit hidden states.
INT8 = 127
HIDDEN = 2 ** (HIDDEN_BITS - 1) - 1


def _acc_bound(params: LinearParams) -> int:
    """|x W + bias| for int8 x and W over the inner length."""
    return len(params.weight) * INT8 * INT8 + int(np.abs(params.bias).max())


def _layer_plan(family, layer, r: dict, hidden_scale: float, max_len: int) -> LayerPlan:
    attention = family.attention(layer)
    head_size = attention.head_size
    heads = attention.query.out_features // head_size
    (query, key, value), x_attn = smoothed_linears([attention.query, attention.key, attention.value], r["x_attn"])
    s_q, s_k, s_v = (_step(r[name], 8) for name in ("q", "k", "v"))
    (attn_out,), s_ctx = smoothed_linears([attention.output], r["ctx"])
    s_res1, s_h1 = _step(r["res1"], RESIDUAL_BITS), _step(r["h1"], HIDDEN_BITS)
    norm1 = layer.get_submodule(family.attention_norm_path)
    ffn_in, ffn_out_linear = family.ffn(layer)
    (intermediate,), x_ffn = smoothed_linears([ffn_in], r["x_ffn"])
    s_gelu_in = _step(r["gelu_in"], GELU_BITS)
    table, gelu_out_scale = gelu_table(s_gelu_in, GELU_BITS)
    (ffn_out,), s_gelu = smoothed_linears([ffn_out_linear], r["gelu_out"])
    s_res2, s_h2 = _step(r["res2"], RESIDUAL_BITS), _step(r["h2"], HIDDEN_BITS)
    norm2 = layer.get_submodule(family.ffn_norm_path)
    return LayerPlan(
        heads=heads,
        head_size=head_size,
        to_attn_input=requantizer(hidden_scale / x_attn, HIDDEN, 8),
        query=query,
        key=key,
        value=value,
        to_qkv=tuple(
            requantizer(p.acc_scale / step, _acc_bound(p), 8) for p, step in ((query, s_q), (key, s_k), (value, s_v))
        ),
        score_scale=s_q * s_k / math.sqrt(head_size),
        to_context=requantizer(2.0**-8 * s_v / s_ctx, 255 * INT8 * max_len, 8),  # 8-bit probs x int8 V
        attn_out=attn_out,
        attn_residual=(
            requantizer(attn_out.acc_scale / s_res1, _acc_bound(attn_out), RESIDUAL_PART_BITS),
            requantizer(hidden_scale / s_res1, HIDDEN, None),
        ),
        norm1=layernorm_params(_np(norm1.weight), _np(norm1.bias), s_h1, HIDDEN_BITS),
        to_ffn_input=requantizer(s_h1 / x_ffn, HIDDEN, 8),
        intermediate=intermediate,
        to_gelu=requantizer(intermediate.acc_scale / s_gelu_in, _acc_bound(intermediate), GELU_BITS),
        gelu_table=table,
        from_gelu=requantizer(gelu_out_scale / s_gelu, int(np.abs(table).max()), 8),  # the table bounds GELU
        ffn_out=ffn_out,
        ffn_residual=(
            requantizer(ffn_out.acc_scale / s_res2, _acc_bound(ffn_out), RESIDUAL_PART_BITS),
            requantizer(s_h1 / s_res2, HIDDEN, None),
        ),
        norm2=layernorm_params(_np(norm2.weight), _np(norm2.bias), s_h2, HIDDEN_BITS),
    )


def head_input_step(activation: str, ranges: dict) -> float:
    """The step of the head's output layer input: tanh's int8 output at 1/127; ReLU's int8 grid over the
    dense layer's calibrated range (its negative half clamps to 0)."""
    return 1.0 / 127 if activation == "tanh" else _step(ranges["head_act_in"], 8)


def _head_plan(model, family, r: dict, hidden_scale: float) -> HeadPlan:
    dense, output = family.head(model)
    (pooler,), x_pool = smoothed_linears([dense], r["x_pool"])
    activation = family.head_activation
    # tanh reads 16 bits (its curve needs them); ReLU's output is its int8 input, clamped
    act_bits = HIDDEN_BITS if activation == "tanh" else 8
    s_act = _step(r["head_act_in"], HIDDEN_BITS) if activation == "tanh" else head_input_step(activation, r)
    classifier = _linear(output, head_input_step(activation, r))
    s_logits = _step(r["logits"] * 1.25, LOGIT_BITS)  # headroom: the integer model's logits may exceed float's
    return HeadPlan(
        to_pool_input=requantizer(hidden_scale / x_pool, HIDDEN, 8),
        pooler=pooler,
        activation=activation,
        to_activation=requantizer(pooler.acc_scale / s_act, _acc_bound(pooler), act_bits),
        activation_scale=s_act,
        classifier=classifier,
        to_logits=requantizer(classifier.acc_scale / s_logits, _acc_bound(classifier), LOGIT_BITS),
        logit_scale=s_logits,
    )


class IntegerBert(torch.nn.Module):
    """(input_ids, attention_mask[, token_type_ids]) -> float logits [B, labels], integer-only in between
    (the inputs the family takes: I-BERT's method on any family that opts in)."""

    integer_only = True

    def __init__(self, plan: IntegerPlan):
        super().__init__()
        self.plan = plan

    @property
    def parity_atol(self) -> float:
        """One least-significant bit of the logits: the ONNX graph must match the torch module to this."""
        return float(np.float32(self.plan.head.logit_scale))

    @property
    def layer_count(self) -> int:
        return len(self.plan.layers)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        types = None if token_type_ids is None else token_type_ids.long()
        with torch.no_grad():
            return integer_forward(TORCH, self.plan, input_ids.long(), attention_mask.long(), types)

    def to_onnx(self, sample_feeds, *, input_names, output_name):
        from edgecompress.compress.integer_only.lower import lower_plan

        return lower_plan(self.plan, input_names=tuple(input_names), output_name=output_name)


def integer_bert(model, ranges: dict, *, where: str) -> IntegerBert:
    """The integer-only module for a float classifier, from ranges calibrated on it."""
    check_convertible(model, where)
    return IntegerBert(build_plan(model, ranges))
