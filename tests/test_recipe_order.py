"""Recipes are refused, when they load, if they break an order a pass declares; recipes extend base recipes."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from edgecompress.cli import main
from edgecompress.errors import UserError
from edgecompress.passes import STAGES, make_pass, registry
from edgecompress.recipe import QUANTIZE_MODES, known_recipes, load_recipe, with_quantization

from conftest import user_error

FLOAT = [
    ("remove_training_nodes", {}),
    ("fuse_transformer", {"require_attention": True}),
    ("attention_mask_value", {}),
    ("fix_shapes", {}),
    ("fold_constants", {}),
]
INT4 = [
    ("remove_training_nodes", {}),
    ("quantize_int4", {"mixed": False}),
    ("fuse_transformer", {"require_attention": False}),
    ("fix_shapes", {}),
    ("fold_constants", {}),
    ("trim_gathered_tables", {}),
]
# What each packaged recipe loaded to before recipes could extend one another (ea3c973), as written there.
PACKAGED = {
    "default": ([], FLOAT),
    "dynamic-int8": ([], FLOAT + [("cls_row_apart", {}), ("conv1d_as_matmul", {}), ("quantize_dynamic", {})]),
    "int8": ([], FLOAT + [("quantize_static", {"activation_type": "uint8"})]),
    "int8-qat": ([("qat", {"epochs": 1.0})], FLOAT + [("quantize_static", {"activation_type": "uint8"})]),
    "pruned": ([("trim_vocab", {}), ("prune_schedule", {"heads": 0.5, "ffn": 0.75, "steps": 3, "epochs": 1.0})], FLOAT),
    "int4": ([], INT4),
    "int8-int4-mixed": (
        [],
        [
            (name, {"mixed": True, "max_size_ratio": 0.2} if name == "quantize_int4" else options)
            for name, options in INT4
        ],
    ),
    "integer-only": (
        [("integer_only", {"calibration_rows": 256, "percentile": 100.0, "qat_epochs": 0.0})],
        [("fix_shapes", {}), ("fold_constants", {})],
    ),
}


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def graph_recipe(*names: str) -> str:
    return "".join(f'[[graph]]\npass = "{name}"\n' for name in names)


def refusal(path: Path) -> str:
    with pytest.raises(UserError) as err:
        load_recipe(str(path))
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", sorted(PACKAGED))
def test_packaged_recipes_load_to_the_same_passes_as_before_they_extended_each_other(name):
    recipe = load_recipe(name)
    for stage, entries in zip(STAGES, PACKAGED[name]):
        assert recipe.passes(stage) == tuple(make_pass(stage, n, options, "test") for n, options in entries)


def test_every_packaged_recipe_is_listed():
    assert set(known_recipes()) == set(PACKAGED)


def test_a_pass_before_what_it_must_follow_is_refused_with_file_index_and_reason(tmp_path):
    path = write(tmp_path, "r", graph_recipe("fix_shapes", "trim_gathered_tables", "fold_constants"))
    assert refusal(path) == f"{path}: graph[1]: pass 'trim_gathered_tables' must come after 'fold_constants'"


def test_a_pass_after_what_it_must_precede_is_refused(tmp_path):
    path = write(tmp_path, "r", graph_recipe("remove_training_nodes", "fix_shapes", "fuse_transformer"))
    assert refusal(path) == f"{path}: graph[2]: pass 'fuse_transformer' must come before 'fix_shapes'"


def test_compress_orders_are_checked_too(tmp_path):
    path = write(tmp_path, "r", '[[compress]]\npass = "integer_only"\n[[compress]]\npass = "qat"\n')
    assert refusal(path) == f"{path}: compress[0]: pass 'integer_only' must come after 'qat'"


def test_a_pass_the_recipe_leaves_out_constrains_nothing(tmp_path):
    # an .onnx that comes fused and with fixed shapes needs neither fuse_transformer nor fix_shapes
    recipe = load_recipe(str(write(tmp_path, "r", graph_recipe("cls_row_apart", "quantize_dynamic"))))
    assert [p.name for p in recipe.graph] == ["cls_row_apart", "quantize_dynamic"]


def test_export_refuses_a_wrong_order_before_any_work(tmp_path, tiny_checkpoint, tiny_device):
    path = write(tmp_path, "late_fusion", graph_recipe("fix_shapes", "fuse_transformer"))
    result = CliRunner().invoke(
        main,
        [
            "export",
            str(tiny_checkpoint),
            "--device",
            str(tiny_device),
            "--recipe",
            str(path),
            "-o",
            str(tmp_path / "out"),
        ],
    )
    assert (
        user_error(result, tmp_path / "out")
        == f"error: {path}: graph[1]: pass 'fuse_transformer' must come before 'fix_shapes'"
    )


def test_declared_orders_name_passes_of_the_same_stage_and_do_not_contradict():
    for stage in STAGES:
        passes = registry(stage)
        for name, cls in passes.items():
            assert set(cls.runs_after) | set(cls.runs_before) <= set(passes) - {name}, name
            assert not set(cls.runs_after) & set(cls.runs_before), name
            for other in cls.runs_after:  # declared once, on one side
                assert name not in passes[other].runs_before, (name, other)


# ---- extends ---------------------------------------------------------------------------------------------


def test_extends_puts_the_base_passes_first_and_keeps_the_base_description(tmp_path):
    write(
        tmp_path,
        "base",
        'description = "float"\n[[compress]]\npass = "trim_vocab"\n' + graph_recipe("fix_shapes", "fold_constants"),
    )
    child = load_recipe(str(write(tmp_path, "child", 'extends = "base.toml"\n' + graph_recipe("trim_gathered_tables"))))
    assert (child.name, child.description) == ("child", "float")
    assert [p.name for p in child.compress] == ["trim_vocab"]
    assert [p.name for p in child.graph] == ["fix_shapes", "fold_constants", "trim_gathered_tables"]


def test_extends_a_packaged_recipe_by_name(tmp_path):
    path = write(tmp_path, "mine", 'description = "mine"\nextends = "default"\n[[graph]]\npass = "quantize_dynamic"\n')
    recipe = load_recipe(str(path))
    assert recipe.description == "mine"
    assert recipe.graph == load_recipe("default").graph + (make_pass("graph", "quantize_dynamic", {}, "test"),)


def test_an_order_broken_by_the_extending_file_counts_the_base_passes(tmp_path):
    path = write(tmp_path, "mine", 'extends = "default"\n' + graph_recipe("fuse_transformer"))
    assert refusal(path) == (
        f"{path}: graph[5]: pass 'fuse_transformer' must come before 'fix_shapes'; "
        "hint: the index counts the 5 passes of base recipe 'default' first"
    )


def test_extends_cycles_are_refused(tmp_path):
    a = write(tmp_path, "a", 'extends = "b.toml"\n')
    write(tmp_path, "b", 'extends = "a.toml"\n')
    cycle = "recipes extend each other in a cycle: a.toml -> b.toml -> a.toml"
    assert refusal(a) == f"{tmp_path / 'b.toml'}: extends: {cycle}"
    itself = write(tmp_path, "itself", 'extends = "itself.toml"\n')
    assert refusal(itself) == f"{itself}: extends: recipes extend each other in a cycle: itself.toml -> itself.toml"


def test_unknown_bases_are_refused(tmp_path):
    typo = write(tmp_path, "typo", 'extends = "defualt"\n')
    message = refusal(typo)
    assert message.startswith(f"{typo}: extends: unknown base recipe 'defualt'; hint: Known: ")
    assert "default" in message
    missing = write(tmp_path, "missing", 'extends = "nowhere.toml"\n')
    assert refusal(missing) == f"{missing}: extends: base recipe file 'nowhere.toml' does not exist"
    listed = write(tmp_path, "listed", 'extends = ["default", "int8"]\n')
    assert refusal(listed).startswith(f"{listed}: extends: 'extends' is ['default', 'int8']; expected one recipe")


# ---- --quantize ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", sorted(QUANTIZE_MODES))
def test_quantize_splices_valid_orders_into_the_packaged_recipes(mode):
    for name in known_recipes():
        if (name, mode) == ("integer-only", "int8-qat"):  # QAT would fine-tune the converted integer model
            with pytest.raises(UserError, match=r"compress\[0\]: pass 'integer_only' must come after 'qat'"):
                with_quantization(load_recipe(name), mode)
            continue
        recipe = with_quantization(load_recipe(name), mode)
        assert recipe.graph == load_recipe(QUANTIZE_MODES[mode]).graph


def test_quantize_refuses_a_splice_that_breaks_an_order(tmp_path):
    base = load_recipe(str(write(tmp_path, "converted", '[[compress]]\npass = "integer_only"\n')))
    with pytest.raises(UserError) as err:
        with_quantization(base, "int8-qat")
    assert str(err.value) == (
        "recipe 'converted' with --quantize int8-qat: compress[0]: pass 'integer_only' must come after 'qat'"
    )
