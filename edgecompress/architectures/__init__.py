"""The architecture seam: where each encoder family keeps its parts, declared once per family.

Every pass, the intake and the fuser reach model internals through an `Architecture`, never through a
family's attribute names, the way Optimum declares one ONNX config per model type. A family is one file in
this package holding one subclass registered with `@register_architecture`; the registry is filled by
importing every module here (`architectures()`), so adding a family touches no other file.

Paths are dotted attribute paths: `base` from the transformers head model (`BertForSequenceClassification`)
to its encoder model (`BertModel`); `layers` and `word_embeddings` from the encoder model; the attention
and FFN paths from one encoder layer. A bare encoder (`BertModel`, a sentence-transformers folder) is its
own base.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

from edgecompress.errors import UserError

_REGISTRY: dict[str, Architecture] = {}


@dataclass(frozen=True)
class AttentionParts:
    """One layer's attention as the head pruner sees it: Q/K/V producers and the output consumer."""

    query: Any  # torch.nn.Linear
    key: Any
    value: Any
    output: Any
    head_size: int


class Architecture:
    """One encoder family. Subclasses set the class attributes; methods are overridden only where a family's
    modules keep their bookkeeping differently (head counts, shared layers)."""

    model_type: ClassVar[str] = ""  # config.json's model_type
    family: ClassVar[str] = ""  # the name users know it by, for messages and reports
    class_prefix: ClassVar[str] = ""  # transformers class = class_prefix + ("Model" | a task's head suffix)
    config_class: ClassVar[str] = ""  # transformers config class name
    base: ClassVar[str] = ""  # head model -> encoder model attribute ("bert")
    layers_path: ClassVar[str] = "encoder.layer"
    word_embeddings_path: ClassVar[str] = "embeddings.word_embeddings"
    query_path: ClassVar[str] = "attention.self.query"
    key_path: ClassVar[str] = "attention.self.key"
    value_path: ClassVar[str] = "attention.self.value"
    attention_output_path: ClassVar[str] = "attention.output.dense"
    ffn_in_path: ClassVar[str] = "intermediate.dense"
    ffn_out_path: ClassVar[str] = "output.dense"
    # The LayerNorms after attention and after the FFN (a layer's remaining parts, for copying it into a BERT).
    attention_norm_path: ClassVar[str] = "attention.output.LayerNorm"
    ffn_norm_path: ClassVar[str] = "output.LayerNorm"
    # From the encoder model: the embedding parts besides word embeddings ("": the family has none).
    position_embeddings_path: ClassVar[str] = "embeddings.position_embeddings"
    token_type_embeddings_path: ClassVar[str] = "embeddings.token_type_embeddings"
    embeddings_norm_path: ClassVar[str] = "embeddings.LayerNorm"
    # The module holding the head bookkeeping (num_attention_heads, attention_head_size, all_head_size).
    self_attention_path: ClassVar[str] = "attention.self"
    uses_token_type_ids: ClassVar[bool] = True
    # Model arguments that are not inputs but are given as zeros shaped like input_ids, where the model would
    # otherwise derive the same zeros in a way that exports badly (RoBERTa gathers its zero token types
    # from a buffer by position id: a GatherElements no TFLite builtin runs).
    zero_inputs: ClassVar[tuple[str, ...]] = ()
    # ONNX Runtime's transformer optimizer: its model_type for this family, and how many fused attention ops
    # it makes per encoder layer (0: the fuser does not know this family; the export says attention runs
    # unfused and the fusion check expects none).
    ort_model_type: ClassVar[str] = "bert"
    fused_attention_per_layer: ClassVar[int] = 1
    # True: the optimizer has no pattern for this family's attention, and our own rule
    # (graph/attention_to_mha.py) fuses it into MultiHeadAttention; `fused_attention_per_layer` counts those.
    own_attention_fusion: ClassVar[bool] = False
    # Why the fuser leaves (some of) this family's attention unfused, for the report's notes ("" when it fuses
    # every layer): the export names the slow path instead of shipping it silently.
    unfused_attention: ClassVar[str] = ""
    # Compression passes that do not apply to this family, with the reason given to the user.
    not_applicable: ClassVar[Mapping[str, str]] = MappingProxyType({})
    # The config keys that give heads, width and depth (families rename them: DistilBERT n_heads, dim).
    heads_key: ClassVar[str] = "num_attention_heads"
    hidden_key: ClassVar[str] = "hidden_size"
    layers_key: ClassVar[str] = "num_hidden_layers"
    ffn_key: ClassVar[str] = "intermediate_size"
    # The FFN's activation module (from one encoder layer) and the config key naming it: integer-only checks it
    # is the exact GELU that its i-GELU approximates.
    ffn_activation_path: ClassVar[str] = "intermediate.intermediate_act_fn"
    activation_key: ClassVar[str] = "hidden_act"
    # A sequence classifier's head on the first token, from the head model: dense -> activation -> output
    # (BERT's pooler and classifier). Integer-only computes it in integers; the float passes leave it alone.
    head_dense_path: ClassVar[str] = "bert.pooler.dense"
    head_activation: ClassVar[str] = "tanh"
    head_output_path: ClassVar[str] = "classifier"
    # Position ids count the non-pad tokens from pad + 1, pad tokens reading row pad (RoBERTa); else 0..n-1.
    positions_skip_padding: ClassVar[bool] = False
    # Integer-only inference (I-BERT) covers the parts above and BERT's layer layout; families opt in once
    # every module of their classifier has an integer kernel (`not_applicable` may say what is missing).
    integer_only: ClassVar[bool] = False
    # Early exit (exits/) runs the encoder one piece at a time: `embed`, then `run_layer` per layer with an
    # additive mask, then `classify` on the first token. Families opt in once their modules take exactly that
    # (BERT's layout); the segments' parity with the whole model is checked on every export anyway.
    early_exit: ClassVar[bool] = False
    embeddings_path: ClassVar[str] = "embeddings"  # from the encoder model: ids (and token types) -> hidden
    # Progressive token elimination (compress/eliminate_tokens.py) keeps tokens between a layer's attention and its
    # feed-forward: families opt in when, as in BERT's layer code, the encoder hands every layer one additive mask
    # [batch, 1, queries or 1, keys], the module at `attention_block_path` returns (output after its residual and
    # LayerNorm, attention probabilities) under eager attention, and `feed_forward_method` runs the rest.
    attention_block_path: ClassVar[str] = "attention"
    feed_forward_method: ClassVar[str] = "feed_forward_chunk"
    token_elimination: ClassVar[bool] = False

    @property
    def input_names(self) -> tuple[str, ...]:
        names = ("input_ids", "attention_mask")
        return names + ("token_type_ids",) if self.uses_token_type_ids else names

    def zero_inputs_for(self, input_ids) -> dict[str, Any]:
        """The model arguments besides ids and mask, as one text (no pair) gives them: zero token types, for
        the families that take them as an input or are given them (`zero_inputs`)."""
        import torch

        return {name: torch.zeros_like(input_ids) for name in self.input_names[2:] + self.zero_inputs}

    def encoder_model(self, hf_model):
        """The encoder model inside a head model (`model.bert`), or the model itself when bare."""
        return _get(hf_model, self.base) if self.base and hasattr(hf_model, self.base.split(".")[0]) else hf_model

    def layers(self, hf_model):
        """The encoder layers as a ModuleList (the passes slice, reorder and drop them)."""
        return _get(self.encoder_model(hf_model), self.layers_path)

    def set_layers(self, hf_model, layers) -> None:
        parent_path, _, name = self.layers_path.rpartition(".")
        encoder = self.encoder_model(hf_model)
        setattr(_get(encoder, parent_path) if parent_path else encoder, name, layers)

    def word_embeddings(self, hf_model):
        return _get(self.encoder_model(hf_model), self.word_embeddings_path)

    def set_word_embeddings(self, hf_model, embedding) -> None:
        parent_path, _, name = self.word_embeddings_path.rpartition(".")
        setattr(_get(self.encoder_model(hf_model), parent_path), name, embedding)

    def attention(self, layer) -> AttentionParts:
        return AttentionParts(
            query=_get(layer, self.query_path),
            key=_get(layer, self.key_path),
            value=_get(layer, self.value_path),
            output=_get(layer, self.attention_output_path),
            head_size=int(_get(layer, self.self_attention_path).attention_head_size),
        )

    def attention_block(self, layer):
        """One layer's attention with its residual and LayerNorm (see `attention_block_path`)."""
        return _get(layer, self.attention_block_path)

    def attention_probabilities(self, layer, hidden, mask):
        """One layer's attention probabilities [batch, heads, queries, keys] recomputed from its Q and K weights,
        softmax(Q K^T / sqrt(head size) + mask) as eager attention computes them, for a pass that reads them
        beside an attention ONNX Runtime fuses into one op that does not output them. Written so that no node
        equals one of the attention's (Q^T and K^T taken as W hidden^T, the scale folded into W_q): the
        TorchScript exporter would merge equal nodes, and the fuser then delete what this reads."""
        parts = self.attention(layer)
        batch, tokens = hidden.shape[:2]
        heads, size = parts.query.out_features // parts.head_size, parts.head_size
        scale = size**-0.5
        hidden_t = hidden.transpose(1, 2)  # the fuser wants exactly 3 MatMuls reading the layer's input
        query_t = (parts.query.weight * scale) @ hidden_t + (parts.query.bias * scale)[:, None]
        key_t = parts.key.weight @ hidden_t + parts.key.bias[:, None]  # [batch, heads x size, tokens]
        query = query_t.view(batch, heads, size, tokens).transpose(2, 3)
        scores = query @ key_t.view(batch, heads, size, tokens)
        return (scores if mask is None else scores + mask).softmax(dim=-1)

    def feed_forward(self, layer, hidden):
        """One layer's feed-forward with its residual and LayerNorm, on the attention block's output."""
        return getattr(layer, self.feed_forward_method)(hidden)

    def set_head_count(self, layer, count: int) -> None:
        """Record a pruned head count in the layer's attention module, which reshapes by it."""
        attention = _get(layer, self.self_attention_path)
        attention.num_attention_heads = count
        attention.all_head_size = count * attention.attention_head_size

    def attention_width(self, layer) -> int:
        """Width of Q/K/V (heads x head size): ONNX Runtime's fuser's `hidden_size` after pruning."""
        return int(_get(layer, self.self_attention_path).all_head_size)

    def ffn(self, layer) -> tuple[Any, Any]:
        return _get(layer, self.ffn_in_path), _get(layer, self.ffn_out_path)

    # The Linears of one encoder layer that a factorisation may replace, by role (`low_rank`). Q/K/V are not
    # among them: factorised, they no longer match ONNX Runtime's attention fusion.
    LINEAR_ROLES: ClassVar[tuple[str, ...]] = ("ffn_in", "ffn_out", "attention_output")

    def linear(self, layer, role: str):
        return _get(layer, self._linear_path(role))

    def set_linear(self, layer, role: str, module) -> None:
        parent_path, _, name = self._linear_path(role).rpartition(".")
        setattr(_get(layer, parent_path) if parent_path else layer, name, module)

    def _linear_path(self, role: str) -> str:
        paths = {"ffn_in": self.ffn_in_path, "ffn_out": self.ffn_out_path}
        return paths[role] if role in paths else self.attention_output_path

    def encoder_part(self, hf_model, path: str):
        """The module at `path` from the encoder model, or None for a part the family lacks (path "")."""
        return self.encoder_model(hf_model).get_submodule(path) if path else None

    def head(self, hf_model) -> tuple[Any, Any]:
        """A sequence classifier's head Linear layers: the dense one (then `head_activation`) and the output."""
        return _get(hf_model, self.head_dense_path), _get(hf_model, self.head_output_path)

    def refuse(self, pass_name: str) -> str | None:
        """Why `pass_name` does not apply to this family, or None when it does."""
        if pass_name in self.not_applicable:
            return self.not_applicable[pass_name]
        if pass_name == "integer_only" and not self.integer_only:
            return "integer-only inference (I-BERT) has not been opted in for this family's parts"
        if pass_name == "early_exit" and not self.early_exit:
            return (
                "early exit runs the encoder layer by layer (embeddings, layer(hidden, mask), a pooler-style head), "
                "which has not been opted in for this family's modules"
            )
        if pass_name == "eliminate_tokens" and not self.token_elimination:
            return (
                "token elimination has not been opted in for this family (its layers' mask layout and "
                "attention probabilities are not known to fit)"
            )
        return None

    def embed(self, hf_model, input_ids, token_type_ids):
        """The hidden states the first encoder layer reads: embeddings of the ids (and token types)."""
        return self.encoder_model(hf_model).get_submodule(self.embeddings_path)(
            input_ids=input_ids, token_type_ids=token_type_ids
        )

    def run_layer(self, layer, hidden, additive_mask):
        """One encoder layer on [batch, seq, hidden] with a [batch, 1, 1, seq] additive mask (0 or the float
        minimum, as transformers builds it for eager attention)."""
        out = layer(hidden, attention_mask=additive_mask)
        return out[0] if isinstance(out, tuple) else out

    def classify(self, hf_model, hidden):
        """A sequence classifier's logits from the last hidden states: the head on the first token's row."""
        import torch

        dense, output = self.head(hf_model)
        activation = torch.tanh if self.head_activation == "tanh" else torch.nn.functional.gelu
        return output(activation(dense(hidden[:, 0])))

    def position_pad(self, config: Mapping[str, Any]) -> int | None:
        """The pad id when position ids count non-pad tokens (`positions_skip_padding`), None for 0..n-1."""
        return int(config.get("pad_token_id", 1)) if self.positions_skip_padding else None

    def position_offset(self, config: Mapping[str, Any]) -> int:
        """Row of the position table that the first token reads (RoBERTa's positions start past the pad id)."""
        pad = self.position_pad(config)
        return 0 if pad is None else pad + 1

    def max_length(self, config: Mapping[str, Any]) -> int:
        """The longest input in tokens the position table serves."""
        return int(config.get("max_position_embeddings", 512)) - self.position_offset(config)

    def bert_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """This family's config as a BertConfig dict of the same shape (what a BERT student of it starts from):
        BERT's key names, positions from row 0, the model type and head of a BERT classifier."""
        return {
            **config,
            **self.dimensions(config),
            "model_type": "bert",
            "architectures": ["BertForSequenceClassification"],
            "max_position_embeddings": self.max_length(config),
            "type_vocab_size": int(config.get("type_vocab_size", 1)) if self.token_type_embeddings_path else 1,
        }

    def dimensions(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """Depth and widths under BERT's key names (the report's schema), whatever this family calls them."""
        keys = {
            "num_hidden_layers": self.layers_key,
            "hidden_size": self.hidden_key,
            "num_attention_heads": self.heads_key,
            "intermediate_size": self.ffn_key,
            "vocab_size": "vocab_size",
        }
        return {name: config.get(key) for name, key in keys.items()}

    def expected_fused_attention(self, num_layers: int) -> int:
        """How many fused attention ops ONNX Runtime's fuser reliably makes for `num_layers` encoder layers
        (depths, for families that share layer weights); the fusion check fails the export below it."""
        return self.fused_attention_per_layer * num_layers

    def describe(self) -> str:
        return f"{self.family} (model_type '{self.model_type}')"


def register_architecture(cls: type[Architecture]) -> type[Architecture]:
    """Class decorator: one instance per family, keyed by config.json's model_type."""
    if not cls.model_type or cls.model_type in _REGISTRY:
        raise ValueError(f"architecture {cls.__name__}: model_type missing or registered twice")
    _REGISTRY[cls.model_type] = cls()
    return cls


def architectures() -> dict[str, Architecture]:
    """Every registered family, by model_type (importing each module of this package once)."""
    if not _REGISTRY:
        for info in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{info.name}")
    return dict(_REGISTRY)


def architecture_for(model_type: str | None, *, where: str = "") -> Architecture:
    """The family of a config's model_type; an unknown one is a user error listing what is supported."""
    known = architectures()
    if model_type in known:
        return known[str(model_type)]
    raise UserError(
        f"unsupported model family {model_type!r}",
        where=where,
        expected="model_type one of " + ", ".join(sorted(known)),
        hint="convert the model to one of these families, or export it to .onnx and pass the file",
    )


def architecture_of(module) -> Architecture:
    """The family of a torch model as intake built it (a ReferenceModule or a transformers model)."""
    hf_model = getattr(module, "hf_model", module)
    model_type = getattr(getattr(hf_model, "config", None), "model_type", None)
    return architecture_for(model_type)


def _get(root, path: str):
    obj = root
    for part in path.split(".") if path else ():
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj
