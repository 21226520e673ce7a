"""Tasks: one file per task, registered by decorator (see tasks/base.py). This module finds them.

A checkpoint's task follows from its transformers head (`architectures[0]` ends with the task's `head`, or
is the base model) and, for sequence classifiers, from `problem_type` and `num_labels`, as transformers
itself decides which loss to train with.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

from edgecompress.errors import UserError
from edgecompress.tasks.base import Task, registered

BASE_MODEL = "Model"  # the architecture suffix of a model without a head (BertModel)


def _import_task_modules() -> None:
    """Import every module of this package so their decorators run (no hand-kept list)."""
    for module in pkgutil.iter_modules(__path__, __name__ + "."):
        importlib.import_module(module.name)


def task_names() -> tuple[str, ...]:
    _import_task_modules()
    return tuple(registered())


def task_class(name: str) -> type[Task]:
    _import_task_modules()
    if name not in registered():
        raise UserError(f"unknown task '{name}'", expected=f"one of {', '.join(registered())}")
    return registered()[name]


def head_of(architecture: str) -> str | None:
    """The head suffix of a transformers class name: 'BertForTokenClassification' -> 'ForTokenClassification'."""
    if architecture.endswith(BASE_MODEL) and "For" not in architecture:
        return None
    return architecture[architecture.index("For") :] if "For" in architecture else None


def detect_task(config: dict[str, Any], architecture: str, folder: Path | None) -> Task:
    """The task of a checkpoint: the registered task for its head that claims its config."""
    _import_task_modules()
    head = head_of(architecture)
    for cls in registered().values():
        if cls.head == head and cls.claims(config):
            return cls.from_config(config, folder)
    raise UserError(
        f"no task for architecture {architecture!r}",
        where=str(folder) if folder else None,
        expected=f"a head among {', '.join(sorted({c.head or 'the base model' for c in registered().values()}))}",
    )


__all__ = ["Task", "detect_task", "head_of", "task_class", "task_names"]
