"""The architecture seam: the registry, the BERT family's parts, and refusals before any work."""

from __future__ import annotations

import pytest
import torch

from edgecompress.architectures import architecture_for, architecture_of, architectures
from edgecompress.errors import UserError
from edgecompress.intake.model import load_bundle


def test_the_registry_holds_bert_and_refuses_an_unknown_family_listing_the_known_ones():
    assert architectures()["bert"].class_prefix == "Bert"
    with pytest.raises(UserError) as caught:
        architecture_for("gpt2", where="config.json")
    assert "unsupported model family 'gpt2'" in str(caught.value)
    assert all(name in str(caught.value) for name in architectures())


def test_bert_parts_are_found_through_the_seam(tiny_checkpoint):
    bundle = load_bundle(tiny_checkpoint)
    family = architecture_of(bundle.module)
    hf = bundle.module.hf_model
    layers = family.layers(hf)
    assert layers is hf.bert.encoder.layer and bundle.architecture is family
    parts = family.attention(layers[0])
    assert parts.query is hf.bert.encoder.layer[0].attention.self.query
    assert parts.head_size * bundle.num_heads == bundle.hidden_size
    assert family.ffn(layers[0]) == (layers[0].intermediate.dense, layers[0].output.dense)
    assert family.word_embeddings(hf) is hf.bert.embeddings.word_embeddings
    assert bundle.input_names == ("input_ids", "attention_mask", "token_type_ids")


def test_set_layers_and_word_embeddings_replace_the_modules_the_model_runs(tiny_checkpoint):
    bundle = load_bundle(tiny_checkpoint)
    family, hf = bundle.architecture, bundle.module.hf_model
    family.set_layers(hf, torch.nn.ModuleList([family.layers(hf)[0]]))
    assert len(hf.bert.encoder.layer) == 1
    table = torch.nn.Embedding(7, bundle.hidden_size)
    family.set_word_embeddings(hf, table)
    assert hf.bert.embeddings.word_embeddings is table


def test_derived_buffers_are_rebuilt_when_the_checkpoint_leaves_them_out(tiny_checkpoint):
    hf = load_bundle(tiny_checkpoint).module.hf_model
    assert torch.equal(hf.bert.embeddings.position_ids[0, :5], torch.arange(5))
    assert not hf.bert.embeddings.token_type_ids.any()


def test_a_recipe_pass_the_family_cannot_take_is_refused_before_any_work(tiny_checkpoint):
    from edgecompress.architectures.bert import Bert
    from edgecompress.pipeline import check_passes_apply
    from edgecompress.recipe import load_recipe

    class SharedLayers(Bert):  # a family whose layers share weights, as ALBERT's do
        not_applicable = {"prune_schedule": "its one shared layer serves every depth"}

    bundle = load_bundle(tiny_checkpoint)
    recipe = load_recipe("pruned")
    check_passes_apply(recipe, bundle)  # BERT takes every pass
    bundle.architecture = SharedLayers()
    with pytest.raises(UserError) as caught:
        check_passes_apply(recipe, bundle)
    assert "pass 'prune_schedule' of recipe 'pruned' does not apply to BERT" in str(caught.value)
    assert "its one shared layer serves every depth" in str(caught.value)
