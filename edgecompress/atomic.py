"""Swap a finished folder into place so readers only ever see the old one or the complete new one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def swap_in(staging: Path, final: Path) -> None:
    """Replace `final` by `staging`; the old folder is removed only once the new one is in place.

    Any interruption between the two renames (Ctrl-C included) puts the old folder back.
    """
    backup = final.parent / f".{final.name}.old-{os.getpid()}"
    try:
        if final.exists():
            final.rename(backup)
        staging.rename(final)
    except BaseException:
        if backup.exists() and not final.exists():
            backup.rename(final)
        raise
    shutil.rmtree(backup, ignore_errors=True)
