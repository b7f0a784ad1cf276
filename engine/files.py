"""Writing a file so that a crash leaves its old content or its new content, never half of either.

The bytes go to a temporary file with a unique name beside the target (so two writers of the same
file never share a temporary), are flushed to disk (``fsync``), and the temporary is renamed over
the target; the folder is then synced so the rename itself survives a power cut. On any error the
temporary is removed and the target is as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, blob: bytes) -> None:
    """Replace ``path`` by ``blob`` atomically and durably (see the module docstring)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_folder(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))


def _sync_folder(folder: Path) -> None:
    """fsync a folder so a rename in it is on disk (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
