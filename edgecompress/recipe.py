"""A Recipe is data: the ordered passes of each stage, read from TOML and validated against the registry.

A recipe may extend another one: `extends = "default"` (a packaged recipe's name, or a path to a .toml
file, relative to the extending file) puts the base's passes first in each stage, then the file's own.
Its description, when it has none, is the base's.

Every stage is checked against the orders its passes declare (`runs_after`, `runs_before` in passes.py)
when the recipe loads, before any work: `my.toml: graph[4]: pass 'trim_gathered_tables' must come after
'fold_constants'`. In an extending recipe the index counts the base's passes first.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from edgecompress.errors import UserError
from edgecompress.passes import STAGES, Pass, broken_order, make_pass
from edgecompress.paths import recipes_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    compress: tuple[Pass, ...]
    graph: tuple[Pass, ...]

    def passes(self, stage: str) -> tuple[Pass, ...]:
        return getattr(self, stage)


# `--quantize` modes, each the packaged recipe whose graph stage (and compress passes, for modes that
# train or convert the torch model) it contributes; "none" is the float graph stage.
QUANTIZE_MODES = {
    "none": "default",
    "dynamic-int8": "dynamic-int8",
    "int8": "int8",
    "int8-qat": "int8-qat",
    "int4": "int4",
    "int8-int4-mixed": "int8-int4-mixed",
    "integer-only": "integer-only",
}


def known_recipes() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.toml"))


def load_recipe(name_or_path: str) -> Recipe:
    """A packaged recipe by name, or a user's TOML file by path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = recipes_dir() / f"{name_or_path}.toml"
        if not path.is_file():
            raise UserError(f"unknown recipe '{name_or_path}'", hint=f"Known: {', '.join(known_recipes())}")
    elif not path.is_file():
        raise UserError("recipe file does not exist", where=str(path))
    return _load(path, ())


def _load(path: Path, extended_by: tuple[Path, ...]) -> Recipe:
    """The recipe in `path`, its base's passes first; `extended_by` are the files that extend it (a cycle)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"invalid TOML ({exc})", where=str(path)) from None
    unknown = sorted(set(data) - {"description", "extends", *STAGES})
    if unknown:
        raise UserError(
            f"unknown key '{unknown[0]}'", where=str(path), hint=f"Known: description, extends, {', '.join(STAGES)}"
        )
    base = _base(data["extends"], path, extended_by) if "extends" in data else None
    stages = {}
    for stage in STAGES:
        inherited = base.passes(stage) if base else ()
        stages[stage] = inherited + _stage_passes(data.get(stage, []), stage, path)
        hint = (
            f"the index counts the {len(inherited)} passes of base recipe '{base.name}' first"
            if base and inherited
            else None
        )
        _check_order(stages[stage], stage, str(path), hint)
    description = data.get("description", base.description if base else "")
    return Recipe(name=path.stem, description=str(description), **stages)


def _base(extends, path: Path, extended_by: tuple[Path, ...]) -> Recipe:
    where = f"{path}: extends"
    if not isinstance(extends, str):
        raise UserError(
            f"'extends' is {extends!r}",
            where=where,
            expected='one recipe: a packaged name like "default", or a path to a .toml file',
        )
    if extends.endswith(".toml"):
        base = path.parent / extends
        if not base.is_file():
            raise UserError(f"base recipe file '{extends}' does not exist", where=where)
    else:
        base = recipes_dir() / f"{extends}.toml"
        if not base.is_file():
            raise UserError(
                f"unknown base recipe '{extends}'", where=where, hint=f"Known: {', '.join(known_recipes())}"
            )
    chain = (*extended_by, path)
    if base.resolve() in {p.resolve() for p in chain}:
        cycle = [p.name for p in chain[[p.resolve() for p in chain].index(base.resolve()) :]] + [base.name]
        raise UserError(f"recipes extend each other in a cycle: {' -> '.join(cycle)}", where=where)
    return _load(base, chain)


def _check_order(passes: tuple[Pass, ...], stage: str, where: str, hint: str | None = None) -> None:
    broken = broken_order(passes)
    if broken is not None:
        index, reason = broken
        raise UserError(reason, where=f"{where}: {stage}[{index}]", hint=hint)


def _stage_passes(entries: list, stage: str, path: Path) -> tuple[Pass, ...]:
    passes = []
    for index, entry in enumerate(entries):
        where = f"{path}: {stage}[{index}]"
        if not isinstance(entry, dict) or "pass" not in entry:
            raise UserError("each entry needs a 'pass' name", where=where)
        options = {k: v for k, v in entry.items() if k != "pass"}
        passes.append(make_pass(stage, entry["pass"], options, where))
    return tuple(passes)


def check_quantize_mode(mode: str, where: str | None = None) -> str:
    if mode not in QUANTIZE_MODES:
        raise UserError(f"unknown quantization mode '{mode}'", where=where, hint=f"Known: {', '.join(QUANTIZE_MODES)}")
    return mode


def with_quantization(base: Recipe, mode: str) -> Recipe:
    """`base` with its graph stage replaced by the quantization mode's, and the mode's torch passes appended.

    Before -> After, e.g. pruned + int8: compress [trim_vocab, prune_schedule] + graph [remove, fuse, fix,
    fold] -> compress [trim_vocab, prune_schedule] + graph [remove, fuse, fix, fold, quantize_static].
    """
    source = load_recipe(QUANTIZE_MODES[check_quantize_mode(mode)])
    compress = base.compress + tuple(p for p in source.compress if p not in base.compress)
    if base.name in ("default", source.name):
        name, description = source.name, source.description
    else:
        name, description = f"{base.name}+{mode}", f"{base.description} Quantization: {source.description}"
    for stage, passes in (("compress", compress), ("graph", source.graph)):
        _check_order(passes, stage, f"recipe '{base.name}' with --quantize {mode}")
    return Recipe(name=name, description=description, compress=compress, graph=source.graph)


def choose_recipe(recipe: str | None, quantize: str | None, profile) -> Recipe:
    """What an export runs: --recipe as written; --quantize applied to --recipe or the profile's recipe;
    with neither, the profile's recipe quantized as the profile says."""
    if quantize is not None:
        return with_quantization(load_recipe(recipe or profile.recipe), quantize)
    if recipe is not None:
        return load_recipe(recipe)
    return with_quantization(load_recipe(profile.recipe), profile.quantize)
