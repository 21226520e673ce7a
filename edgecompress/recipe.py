"""A Recipe is data: the ordered passes of each stage, read from TOML and validated against the registry."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from edgecompress.errors import UserError
from edgecompress.passes import STAGES, Pass, make_pass
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
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"invalid TOML ({exc})", where=str(path)) from None
    unknown = sorted(set(data) - {"description", *STAGES})
    if unknown:
        raise UserError(f"unknown key '{unknown[0]}'", where=str(path),
                        hint=f"Known: description, {', '.join(STAGES)}")
    stages = {stage: _stage_passes(data.get(stage, []), stage, path) for stage in STAGES}
    return Recipe(name=path.stem, description=str(data.get("description", "")), **stages)


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
        raise UserError(f"unknown quantization mode '{mode}'", where=where,
                        hint=f"Known: {', '.join(QUANTIZE_MODES)}")
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
    return Recipe(name=name, description=description, compress=compress, graph=source.graph)


def choose_recipe(recipe: str | None, quantize: str | None, profile) -> Recipe:
    """What an export runs: --recipe as written; --quantize applied to --recipe or the profile's recipe;
    with neither, the profile's recipe quantized as the profile says."""
    if quantize is not None:
        return with_quantization(load_recipe(recipe or profile.recipe), quantize)
    if recipe is not None:
        return load_recipe(recipe)
    return with_quantization(load_recipe(profile.recipe), profile.quantize)
