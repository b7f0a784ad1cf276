"""The engine's processes re-execute once under tcmalloc where it is installed (engine/allocator.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engine import allocator

PROBE = ("from engine import allocator; used = allocator.start(); import os; "
         "print(used, allocator.loaded(), os.environ.get('LD_PRELOAD'), os.environ.get('_ENGINE_ALLOCATOR_PRELOADED'))")


class Exec:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], dict[str, str]]] = []

    def __call__(self, path: str, argv: list[str], env: dict[str, str]) -> None:
        self.calls.append((path, argv, env))


def run(env: dict[str, str], *, loaded: bool = False, lib: str | None = "libtcmalloc_minimal.so.4") -> tuple[str, Exec]:
    execve = Exec()
    used = allocator.use_tcmalloc(["python", "-m", "engine", "backtest"], env=env, execve=execve,
                                  is_loaded=lambda: loaded, find=lambda: lib)
    return used, execve


def test_re_executes_the_same_command_with_the_library_preloaded_first() -> None:
    env = {"LD_PRELOAD": "libother.so", "HOME": "/h"}
    _, execve = run(env)
    [(path, argv, new)] = execve.calls
    assert path == sys.executable and argv == ["python", "-m", "engine", "backtest"]
    assert new["LD_PRELOAD"] == "libtcmalloc_minimal.so.4 libother.so"
    assert new["_ENGINE_ALLOCATOR_PRELOADED"] == "libother.so" and new["HOME"] == "/h"
    assert env == {"LD_PRELOAD": "libother.so", "HOME": "/h"}  # the caller's environment is untouched


def test_the_re_executed_child_gives_its_subprocesses_the_callers_preload_back() -> None:
    env = {"LD_PRELOAD": "libtcmalloc_minimal.so.4 libother.so", "_ENGINE_ALLOCATOR_PRELOADED": "libother.so"}
    used, execve = run(env, loaded=True)
    assert (used, execve.calls) == ("tcmalloc", [])
    assert env == {"LD_PRELOAD": "libother.so"}
    env = {"LD_PRELOAD": "libtcmalloc_minimal.so.4", "_ENGINE_ALLOCATOR_PRELOADED": ""}
    assert run(env, loaded=True)[0] == "tcmalloc" and env == {}


def test_a_child_whose_preload_failed_runs_on_glibc_and_never_loops() -> None:
    env = {"LD_PRELOAD": "libtcmalloc_minimal.so.4", "_ENGINE_ALLOCATOR_PRELOADED": ""}
    used, execve = run(env, loaded=False)
    assert (used, execve.calls) == ("system", [])
    env = {"ENGINE_ALLOCATOR": "tcmalloc", "LD_PRELOAD": "x", "_ENGINE_ALLOCATOR_PRELOADED": ""}
    with pytest.raises(allocator.AllocatorError, match="not in the process"):
        run(env, loaded=False)


@pytest.mark.parametrize("env, lib, expected", [
    ({"ENGINE_ALLOCATOR": "system"}, "libtcmalloc_minimal.so.4", "system"),
    ({}, None, "system"),  # not installed: glibc, quietly
])
def test_no_re_execution_when_turned_off_or_missing(env: dict[str, str], lib: str | None, expected: str) -> None:
    used, execve = run(env, lib=lib)
    assert (used, execve.calls) == (expected, [])


def test_already_loaded_is_not_re_executed() -> None:
    used, execve = run({}, loaded=True)
    assert (used, execve.calls) == ("tcmalloc", [])


def test_asking_for_tcmalloc_where_it_is_missing_says_how_to_install_it() -> None:
    with pytest.raises(allocator.AllocatorError, match="apt-get install libtcmalloc-minimal4"):
        run({"ENGINE_ALLOCATOR": "tcmalloc"}, lib=None)


def test_a_bad_setting_names_the_choices() -> None:
    with pytest.raises(allocator.AllocatorError, match="auto, tcmalloc, system"):
        run({"ENGINE_ALLOCATOR": "jemalloc"})


def _probe(**env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ENGINE_ALLOCATOR")} | env
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=full, timeout=60)


def test_a_bad_setting_ends_the_command_with_the_reason() -> None:
    done = _probe(ENGINE_ALLOCATOR="jemalloc")
    assert done.returncode != 0 and "ENGINE_ALLOCATOR='jemalloc' is not one of" in done.stderr


@pytest.mark.skipif(allocator.library() is None,
                    reason="tcmalloc is not installed (apt-get install libtcmalloc-minimal4; `make setup` does it as root)")
def test_a_real_process_runs_under_tcmalloc_and_its_subprocesses_do_not_inherit_it() -> None:
    done = _probe()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["tcmalloc", "True", "None", "None"]
    done = _probe(ENGINE_ALLOCATOR="system")
    assert done.stdout.split() == ["system", "False", "None", "None"]


RELEASE = """
import numpy as np
from engine import allocator
from models.training.loop import return_freed_memory
def rss():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS')) // 1024
base = rss()
blocks = [np.ones(2**18) for _ in range(800)]  # 800 blocks of 2 MB: tcmalloc keeps them once freed
held = rss()
del blocks
kept = rss()
return_freed_memory()
print(allocator.loaded(), held - base, kept - base, rss() - base)
"""


@pytest.mark.skipif(allocator.library() is None, reason="tcmalloc is not installed (apt-get install libtcmalloc-minimal4)")
def test_after_training_the_memory_freed_under_tcmalloc_goes_back_to_the_system() -> None:
    full = {k: v for k, v in os.environ.items() if k != "ENGINE_ALLOCATOR"}
    full["LD_PRELOAD"] = allocator.library() or ""
    full["TCMALLOC_RELEASE_RATE"] = "0"  # tcmalloc keeps what is freed until asked: the call must do it
    done = subprocess.run([sys.executable, "-c", RELEASE], capture_output=True, text=True, env=full, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded, held, kept, after = done.stdout.split()
    assert loaded == "True" and int(held) > 1500 and int(kept) > 1500
    assert int(after) < 200
