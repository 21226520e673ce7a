"""Where things live: packaged assets (runners, device profiles, recipes) and the local cache."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path


def package_dir(subpackage: str) -> Path:
    """A packaged folder such as `runtimes` or `device_profiles`, in a checkout or an installed wheel."""
    return Path(str(resources.files(f"edgecompress.{subpackage}")))


def runtimes_dir() -> Path:
    return package_dir("runtimes")


def device_profiles_dir() -> Path:
    return package_dir("device_profiles")


def recipes_dir() -> Path:
    return package_dir("recipes")


def cache_dir() -> Path:
    """Downloads, example data and the example teacher; `EDGECOMPRESS_CACHE` overrides the default."""
    root = os.environ.get("EDGECOMPRESS_CACHE") or Path.home() / ".cache" / "edgecompress"
    return Path(root)
