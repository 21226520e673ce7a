"""The output folder's safety: checked before any work, filled in a staging folder beside it, swapped in
whole, so readers only ever see the old folder or the complete new one.

A failed run removes its staging folder (and an output root it created and left empty); a full disk is
the user's to fix, named in one line; staging folders of processes that died (SIGKILL) are removed by
the next export into the same root.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

from edgecompress.errors import UserError

# Errors of a disk that cannot take the export: the user frees space or picks another -o.
_FULL_DISK = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_STAGING = re.compile(r"^\..+\.partial-(\d+)$")


def check_output(out_root: Path, name: str) -> None:
    """Refuse an unusable -o before any work: a file in the way, or a DIR/<device> this tool did not write."""
    existing = next((p for p in (out_root, *out_root.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        reason = "File exists" if existing == out_root else f"{existing} is a file"
        raise UserError(f"cannot create the output folder ({reason})", where=str(out_root))
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise UserError("cannot create the output folder (Permission denied)", where=str(out_root))
    final = out_root / name
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise UserError(
            "a file is in the way of the output folder",
            where=str(final),
            expected="a folder an earlier export wrote, or nothing",
            hint="move the file away or pass another -o",
        )
    if final.is_dir() and any(final.iterdir()) and not (final / "manifest.json").is_file():
        raise UserError(
            "the output folder holds files that no export wrote (no manifest.json)",
            where=str(final),
            expected="a folder an earlier export wrote, or nothing",
            hint="move the files away or pass another -o; an export replaces the whole folder",
        )


def staging_dir(out_root: Path, name: str) -> tuple[Path, list[Path]]:
    """A fresh `.<name>.partial-<pid>` beside the output, and the folders made for it (to remove on failure)."""
    created = [p for p in (out_root, *out_root.parents) if not p.exists()]
    try:
        out_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output folder ({exc.strerror})", where=str(out_root)) from None
    remove_stale_staging(out_root)
    staging = out_root / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging, created


def remove_stale_staging(out_root: Path) -> list[str]:
    """Remove staging folders whose process is gone (a SIGKILLed export cannot clean up after itself)."""
    removed = []
    for path in out_root.iterdir():
        match = _STAGING.match(path.name)
        if match and path.is_dir() and not _alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return True
    return True


def abandon(staging: Path, created: list[Path], exc: BaseException, out_root: Path) -> None:
    """After a failed run: remove staging and the empty folders made for it; a full disk becomes one line."""
    shutil.rmtree(staging, ignore_errors=True)
    for folder in created:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            break
    if isinstance(exc, OSError) and exc.errno in _FULL_DISK:
        raise UserError(
            f"no space left while writing the export ({exc.strerror})",
            where=str(out_root),
            hint="free space there or pass another -o; nothing was written and any previous output is intact",
        ) from None


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
