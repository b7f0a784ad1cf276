"""The memory allocator of the engine's processes: tcmalloc where it is installed, glibc's otherwise.

A training step allocates and frees hundreds of activation tensors of a few sizes, interleaved with the
ones it keeps for the backward pass. glibc's malloc serves them from one heap and cannot hand the holes
back, so a PhraseBank training process held 2.6 GB of heap to serve 1.5 GB of live tensors (measured
with ``mallinfo2``): 3.9 GB peak RSS. tcmalloc (``libtcmalloc-minimal4``, what PyTorch's CPU tuning
guide recommends) serves the same run in 2.6 GB, and faster (``README.md``, "Memory").

A process cannot change its allocator once it has started, so :func:`use_tcmalloc` re-executes the
command once, with the library in ``LD_PRELOAD``, before anything heavy is imported. It does nothing
where the library is missing, and ``ENGINE_ALLOCATOR=system`` turns it off; ``ENGINE_ALLOCATOR=tcmalloc``
makes a missing library an error. The child's own subprocesses do not inherit the preload.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Callable, Mapping, MutableMapping, Sequence

ENV = "ENGINE_ALLOCATOR"
CHOICES = ("auto", "tcmalloc", "system")
LIBRARY = "tcmalloc_minimal"
INSTALL_HINT = "install it with `apt-get install libtcmalloc-minimal4` (Debian, Ubuntu), or set ENGINE_ALLOCATOR=system"
_MARK = "_ENGINE_ALLOCATOR_PRELOADED"  # set in the re-executed child: never re-execute twice
_QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}  # no "large alloc" lines on stderr


class AllocatorError(RuntimeError):
    """A bad ``ENGINE_ALLOCATOR`` value, or tcmalloc asked for where it cannot be loaded."""


def choice(env: Mapping[str, str]) -> str:
    value = env.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise AllocatorError(f"{ENV}={env.get(ENV)!r} is not one of {', '.join(CHOICES)}")
    return value


def loaded(maps: str = "/proc/self/maps") -> bool:
    """Whether tcmalloc is mapped into this process."""
    try:
        with open(maps) as f:
            return any("libtcmalloc" in line for line in f)
    except OSError:
        return False


def library() -> str | None:
    """tcmalloc's file name as the dynamic loader finds it (``libtcmalloc_minimal.so.4``), or None."""
    return ctypes.util.find_library(LIBRARY)


def preload_env(env: Mapping[str, str], lib: str) -> dict[str, str]:
    """The environment for the re-executed command: ``lib`` first in ``LD_PRELOAD``, the mark set."""
    new = dict(env)
    new["LD_PRELOAD"] = " ".join([lib, *env.get("LD_PRELOAD", "").split()])
    new[_MARK] = env.get("LD_PRELOAD", "")
    for key, value in _QUIET.items():
        new.setdefault(key, value)
    return new


def use_tcmalloc(argv: Sequence[str] | None = None, *, env: MutableMapping[str, str] | None = None,
                 execve: Callable[[str, list[str], dict[str, str]], object] | None = None,
                 is_loaded: Callable[[], bool] = loaded, find: Callable[[], str | None] = library) -> str:
    """Run this command under tcmalloc if it can be: re-execute it once with the library preloaded.

    Returns what this process runs on: ``"tcmalloc"`` or ``"system"`` (it does not return when it
    re-executes). ``argv`` is the interpreter's own command line (default ``sys.orig_argv``)."""
    env = os.environ if env is None else env
    wanted = choice(env)
    if _MARK in env:  # the re-executed child: its subprocesses get the caller's LD_PRELOAD back
        previous = env.pop(_MARK)
        if previous:
            env["LD_PRELOAD"] = previous
        else:
            env.pop("LD_PRELOAD", None)
        if is_loaded():
            return "tcmalloc"
        if wanted == "tcmalloc":
            raise AllocatorError(f"tcmalloc was preloaded but is not in the process; {INSTALL_HINT}")
        return "system"
    if wanted == "system":
        return "system"
    if is_loaded():
        return "tcmalloc"
    lib = find()
    if lib is None:
        if wanted == "tcmalloc":
            raise AllocatorError(f"{ENV}=tcmalloc but lib{LIBRARY} is not installed; {INSTALL_HINT}")
        return "system"
    argv = list(sys.orig_argv if argv is None else argv)
    sys.stdout.flush()
    sys.stderr.flush()
    (execve or os.execve)(sys.executable, argv, preload_env(env, lib))
    return "tcmalloc"  # only reached with a fake execve (tests)


def start() -> str:
    """:func:`use_tcmalloc` for a command's entry point: a bad ``ENGINE_ALLOCATOR`` or a missing
    library that was asked for ends the command with the reason."""
    try:
        return use_tcmalloc()
    except AllocatorError as exc:
        sys.exit(f"error: {exc}")
