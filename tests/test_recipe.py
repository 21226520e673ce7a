"""Recipes are data validated against the pass registry; errors list what is known."""

from __future__ import annotations

import pytest

from edgecompress.errors import UserError
from edgecompress.passes import make_pass, registry
from edgecompress.recipe import known_recipes, load_recipe


def test_default_recipe_orders_fusion_before_fixing_shapes():
    recipe = load_recipe("default")
    names = [p.name for p in recipe.graph]
    assert names == [
        "remove_training_nodes",
        "fuse_transformer",
        "attention_mask_value",
        "fix_shapes",
        "fold_constants",
    ]
    assert recipe.compress == ()


def test_every_packaged_recipe_loads():
    for name in known_recipes():
        assert load_recipe(name).name == name


def test_registry_is_filled_by_decorators_without_a_list():
    assert {"remove_training_nodes", "fuse_transformer", "fix_shapes", "fold_constants"} <= set(registry("graph"))


def test_unknown_recipe_lists_known_ones():
    with pytest.raises(UserError) as err:
        load_recipe("fastest")
    assert str(err.value).startswith("unknown recipe 'fastest'; hint: Known: ")
    assert "default" in str(err.value)


def test_unknown_pass_lists_known_ones(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[[graph]]\npass = "fuse_everything"\n')
    with pytest.raises(UserError) as err:
        load_recipe(str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: graph[0]: unknown graph pass 'fuse_everything'; hint: Known: ")
    assert "fuse_transformer" in message


def test_unknown_option_and_wrong_type(tmp_path):
    with pytest.raises(
        UserError, match="unknown option 'speed' for pass 'fuse_transformer'; hint: Known: require_attention"
    ):
        make_pass("graph", "fuse_transformer", {"speed": 2}, "here")
    with pytest.raises(UserError, match="option 'require_attention' of pass 'fuse_transformer' has the wrong type"):
        make_pass("graph", "fuse_transformer", {"require_attention": "yes"}, "here")


def test_bad_toml_and_unknown_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[graph]\n")
    with pytest.raises(UserError, match="invalid TOML"):
        load_recipe(str(bad))
    odd = tmp_path / "odd.toml"
    odd.write_text('[[rewrite]]\npass = "fix_shapes"\n')
    with pytest.raises(UserError, match="unknown key 'rewrite'"):
        load_recipe(str(odd))


def test_entry_without_pass_name(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("[[graph]]\nrequire_attention = true\n")
    with pytest.raises(UserError, match=r"graph\[0\]: each entry needs a 'pass' name"):
        load_recipe(str(path))


def _profile(quantize: str = "none", recipe: str = "default"):
    from dataclasses import replace

    from edgecompress.devices import get_profile

    return replace(get_profile("pixel7"), quantize=quantize, recipe=recipe)


def test_quantize_replaces_the_graph_stage_and_keeps_the_compress_stage():
    from edgecompress.recipe import choose_recipe

    recipe = choose_recipe("pruned", "int8", _profile())
    assert recipe.name == "pruned+int8"
    assert [p.name for p in recipe.compress] == ["trim_vocab", "prune_schedule"]
    assert recipe.graph == load_recipe("int8").graph


def test_quantize_none_on_a_quantized_recipe_gives_the_float_graph():
    from edgecompress.recipe import choose_recipe

    recipe = choose_recipe("int8", "none", _profile())
    assert recipe.graph == load_recipe("default").graph


def test_the_profile_mode_applies_only_when_neither_recipe_nor_quantize_is_given():
    from edgecompress.recipe import choose_recipe

    profile = _profile(quantize="dynamic-int8")
    assert choose_recipe(None, None, profile).name == "dynamic-int8"
    assert choose_recipe("int4", None, profile).name == "int4"  # an explicit recipe is taken as written
    assert choose_recipe(None, "none", profile).name == "default"


def test_every_quantize_mode_names_a_packaged_recipe():
    from edgecompress.recipe import QUANTIZE_MODES

    assert set(QUANTIZE_MODES.values()) <= set(known_recipes())


def test_unknown_quantize_mode_lists_the_known_ones():
    from edgecompress.recipe import choose_recipe

    with pytest.raises(UserError) as err:
        choose_recipe(None, "int3", _profile())
    assert "unknown quantization mode 'int3'" in str(err.value)
    assert "dynamic-int8, int8" in str(err.value.hint)
