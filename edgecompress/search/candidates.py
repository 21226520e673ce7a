"""The candidate ladder, cheap to expensive.

    cheap:    float -> dynamic-int8 -> static int8 (calibrated) ; dynamic-int8 -> int8-int4-mixed -> int4
              each --student: float -> the profile's quantization
    training: pruned at a few sparsities (needs --train-data), lightest first, each quantized as the profile says

Each candidate may name the lighter candidate of its branch (`after`): when that one missed the accuracy budget,
the heavier one cannot win (it only loses more) and is skipped. Length buckets are not a candidate axis: the
shipped profiles serve buckets already, so every candidate has them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHEAP, TRAINING = "cheap", "training"

# (heads removed, FFN neurons removed) per layer, lightest first. The middle one is the packaged `pruned`
# recipe (measured on MiniLM / Rotten Tomatoes: 2.2-2.5x faster at teacher accuracy, tools/bench_prune.py).
SPARSITIES = ((0.25, 0.5), (0.5, 0.75), (0.75, 0.875))


@dataclass(frozen=True)
class Candidate:
    name: str  # unique, used as the work folder's name
    model: Path
    quantize: str  # a recipe.QUANTIZE_MODES key
    tier: str  # CHEAP or TRAINING
    what: str  # one line for people
    recipe: Path | None = None  # a recipe file written for this candidate (pruned variants); None: the profile's
    after: str | None = None  # the lighter candidate of the same branch
    student: bool = False
    # A training candidate's untrained twin: the same pruning without recovery (steps 1, epochs 0) gives the
    # same shapes and ops, so the budgets fixed by shapes (estimated latency and memory, size) are known before
    # minutes of training are spent.
    shapes_probe: Path | None = None


def quantization_ladder(model: Path) -> list[Candidate]:
    """The model as given under each quantization mode, lightest first."""

    def rung(quantize: str, what: str, after: str | None) -> Candidate:
        return Candidate(quantize if quantize != "none" else "float", model, quantize, CHEAP, what, after=after)

    return [
        rung("none", "float, the profile's graph passes", None),
        rung("dynamic-int8", "int8 weights, activations quantized at run time (no calibration)", "float"),
        rung("int8", "static int8: activation ranges calibrated on the tuning texts", "dynamic-int8"),
        rung("int8-int4-mixed", "4-bit weights, 8 bits where the layer's sensitivity asks for it", "dynamic-int8"),
        rung("int4", "4-bit weights in every layer", "int8-int4-mixed"),
    ]


def student_ladder(students: list[Path], profile_quantize: str) -> list[Candidate]:
    """Each distilled student as given, then quantized as the profile says."""
    ladder = []
    for folder in students:
        base = f"student-{folder.name}"
        ladder.append(Candidate(base, folder, "none", CHEAP, f"student {folder}, float", student=True))
        if profile_quantize != "none":
            ladder.append(
                Candidate(
                    f"{base}+{profile_quantize}",
                    folder,
                    profile_quantize,
                    CHEAP,
                    f"student {folder}, {profile_quantize}",
                    after=base,
                    student=True,
                )
            )
    return ladder


def pruning_ladder(model: Path, profile_quantize: str, recipes_folder: Path) -> list[Candidate]:
    """Structured pruning with distillation at each of SPARSITIES, lightest first; writes each recipe file."""
    ladder: list[Candidate] = []
    for heads, ffn in SPARSITIES:
        name = f"pruned-h{round(100 * heads)}-f{round(100 * ffn)}"
        recipe = recipes_folder / f"{name}.toml"
        recipe.write_text(pruned_recipe_text(heads, ffn), encoding="utf-8")
        probe = recipes_folder / f"{name}-untrained.toml"
        probe.write_text(pruned_recipe_text(heads, ffn, steps=1, epochs=0.0), encoding="utf-8")
        label = name if profile_quantize == "none" else f"{name}+{profile_quantize}"
        ladder.append(
            Candidate(
                label,
                model,
                profile_quantize,
                TRAINING,
                f"{100 * heads:.0f}% of heads and {100 * ffn:.1f}% of FFN neurons pruned with distillation, "
                f"then {profile_quantize}",
                recipe=recipe,
                after=ladder[-1].name if ladder else None,
                shapes_probe=probe,
            )
        )
    return ladder


def pruned_recipe_text(heads: float, ffn: float, steps: int = 3, epochs: float = 1.0) -> str:
    """The packaged `pruned` recipe at another sparsity (by default its schedule and recovery unchanged)."""
    return (
        f'description = "Structured pruning: {heads:.0%} of heads, {ffn:.1%} of FFN neurons, {steps} round(s), '
        f'{epochs:g} epoch(s) of distillation after each (written by export --search)"\n'
        'extends = "default"\n\n'
        '[[compress]]\npass = "trim_vocab"\n\n'
        f'[[compress]]\npass = "prune_schedule"\nheads = {heads}\nffn = {ffn}\nsteps = {steps}\nepochs = {epochs}\n'
    )


def plan(model: Path, students: list[Path], profile_quantize: str, prune: bool, work: Path) -> list[Candidate]:
    """Every candidate, cheapest first; pruned ones only when `prune` (--train-data and a torch checkpoint; the
    caller says why not otherwise)."""
    ladder = quantization_ladder(model) + student_ladder(students, profile_quantize)
    if prune:
        recipes = work / "recipes"
        recipes.mkdir(parents=True, exist_ok=True)
        ladder += pruning_ladder(model, profile_quantize, recipes)
    return ladder
