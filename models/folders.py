"""Replacing a folder the models own (a checkpoint, a converted backbone) without losing data.

A new folder is written under a scratch name beside its target and swapped in by rename, so a crash
leaves the old folder or the new one, never half of either. A target that exists must be empty or
recognisably ours (``is_ours``): anything else is refused, so ``--out ~/Documents`` or a cache folder
pointed at the wrong place cannot delete a user's files.

Names beside ``<target>`` (all hidden, all carrying the writer's process id)::

    .<name>.<pid>.new-XXXX   the folder being written
    .<name>.<pid>.old        the previous folder during the swap (two renames; between them only this holds it)

``tidy`` runs before each write: a scratch folder whose writer is gone (killed) is removed, and an
``.old`` folder whose writer is gone is put back when the target is missing (the swap was cut between
its renames), otherwise removed.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


class FolderError(ValueError):
    """A folder is not one this code may replace."""


def refuse_unless_replaceable(target: Path, is_ours: Callable[[Path], bool], what: str) -> None:
    """Raise ``FolderError`` unless ``target`` is missing, an empty folder or ``is_ours``; ``what``
    names the kind of folder expected (for the message)."""
    if target.is_symlink():
        raise FolderError(f"{target} is a symbolic link; give the real folder, or a new or empty one, for the {what}")
    if not target.exists():
        return
    if not target.is_dir():
        raise FolderError(f"{target} is a file, not a {what} folder; give a new or empty folder")
    if any(target.iterdir()) and not is_ours(target):
        raise FolderError(f"{target} is not empty and does not hold a {what}; refusing to replace it "
                          f"(its files would be deleted). Give a new or empty folder, or remove it yourself")


def scratch_for(target: Path) -> Path:
    """A new empty scratch folder beside ``target`` (after tidying what a killed writer left)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tidy(target)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.new-", dir=target.parent))


def write(target: Path, fill: Callable[[Path], None], is_ours: Callable[[Path], bool], what: str) -> None:
    """``fill`` a scratch folder beside ``target``, then swap it in (``install``); if anything fails
    the scratch is removed and ``target`` is left as it was."""
    scratch = scratch_for(target)
    try:
        fill(scratch)
        install(scratch, target, is_ours, what)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def install(scratch: Path, target: Path, is_ours: Callable[[Path], bool], what: str) -> None:
    """Swap ``scratch`` in as ``target``; the previous ``target`` (empty or ``is_ours``) is deleted
    only once the new one is in place."""
    refuse_unless_replaceable(target, is_ours, what)
    if not target.exists():
        os.rename(scratch, target)
        return
    old = target.parent / f".{target.name}.{os.getpid()}.old"
    shutil.rmtree(old, ignore_errors=True)
    os.rename(target, old)
    try:
        os.rename(scratch, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def tidy(target: Path) -> None:
    """Remove scratch folders that a killed writer of ``target`` left; restore its previous folder
    if a swap was cut between its two renames."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(\d+)\.(new-.+|old)$")
    if not target.parent.is_dir():
        return
    for path in target.parent.iterdir():
        found = pattern.match(path.name)
        if found is None or not path.is_dir() or _alive(int(found.group(1))):
            continue
        if found.group(2) == "old" and not target.exists():
            os.rename(path, target)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not writing it now: tidy runs before a write starts
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
