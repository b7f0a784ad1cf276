"""Where independent pieces of research run: one after another in this process (the default), or on
Ray, on this machine's cores or on a cluster.

A sweep's points, a walk-forward's folds and the evaluation's markets are independent of one
another, so ``Executor.map`` runs a function over them and returns the results in the order of the
inputs, whatever order they finish in. Each piece records its own runs into the store named by its
config; on Ray every worker writes into that same store (SQLite serialises the writers with its
busy timeout; PostgreSQL is the store for a cluster, where the workers share no disk).

Serial and Ray give the same results piece for piece: each piece is a pure function of its input
(its config and data), with no state carried from one piece to the next.

Ray is an optional extra (``pip install -e '.[ray]'``). ``--executor ray`` starts a local Ray with
``--workers`` CPUs (default: all of them), or joins the cluster at ``--ray-address``
(``ray start --head`` on one machine, ``ray start --address HEAD:6379`` on the others). Each piece
asks for one CPU. Workers start in this process's working directory, so relative paths in the config
(data files, ``logs/``, checkpoints) mean the same thing there; on a cluster they must exist on every
machine, or be absolute paths on a shared disk.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

from engine.errors import ConfigError, EngineError

T = TypeVar("T")
R = TypeVar("R")

EXECUTORS = ("serial", "ray")
Say = Callable[[str], None]


class Executor(Protocol):
    name: str

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, labels: Sequence[str] | None = None,
            say: Say | None = None, each: Callable[[int, R], None] | None = None, cpus: int = 1) -> list[R]:
        """``[fn(x) for x in items]``, in the order of ``items``; as each one finishes, ``say`` hears of it
        (with its label) and ``each`` gets its index and result. ``cpus``: the cores (and math-library
        threads) each piece gets on Ray."""
        ...


class SerialExecutor:
    """Every piece in this process, in order: the default, and the reference Ray is checked against."""

    name = "serial"

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, labels: Sequence[str] | None = None,
            say: Say | None = None, each: Callable[[int, R], None] | None = None, cpus: int = 1) -> list[R]:
        out = []
        started = time.perf_counter()
        for k, item in enumerate(items):
            out.append(fn(item))
            if each is not None:
                each(k, out[-1])
            if say is not None:
                say(_done_line(k + 1, len(items), labels[k] if labels else None, started))
        return out


class RayExecutor:
    """Every piece as a Ray task of one CPU; results gathered in input order.

    A piece that raises an ``EngineError`` (a bad config value, a broken data file) fails the whole map
    with that same error, as in a serial run; the other pieces are cancelled."""

    name = "ray"

    def __init__(self, ray: Any) -> None:
        self._ray = ray

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, labels: Sequence[str] | None = None,
            say: Say | None = None, each: Callable[[int, R], None] | None = None, cpus: int = 1) -> list[R]:
        ray = self._ray
        remote = ray.remote(num_cpus=cpus, max_retries=0)(_call_in_driver_cwd)
        cwd = os.getcwd()
        pending = {remote.remote(fn, item, cwd, cpus): k for k, item in enumerate(items)}
        results: dict[int, Any] = {}
        started = time.perf_counter()
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    k = pending.pop(ref)
                    results[k] = self._get(ref)
                    if each is not None:
                        each(k, results[k])
                    if say is not None:
                        say(_done_line(len(results), len(items), labels[k] if labels else None, started))
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return [results[k] for k in range(len(items))]

    def _get(self, ref: Any) -> Any:
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, EngineError | KeyboardInterrupt):
                raise cause from None  # the piece's own error, as a serial run would raise it
            raise


def _call_in_driver_cwd(fn: Callable[[Any], Any], item: Any, cwd: str, threads: int) -> Any:
    """Run on a Ray worker: in the driver's working directory where this machine has it, with
    ``threads`` math-library threads (torch's too: Ray's workers are reused, torch may be loaded)."""
    if os.path.isdir(cwd) and os.getcwd() != cwd:
        os.chdir(cwd)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return fn(item)


def torch_threads() -> int:
    """The threads torch computes with in this process: what a piece that trains or predicts must get on
    Ray to give bit-for-bit the results of the serial run (a matrix product's sums are split, and so
    rounded, by thread)."""
    try:
        import torch
    except ImportError:
        return 1
    return int(torch.get_num_threads())


def _done_line(done: int, n: int, label: str | None, started: float) -> str:
    return f"[{done}/{n}] done{': ' + label if label else ''} ({time.perf_counter() - started:.1f} s)"


@contextmanager
def executor(name: str = "serial", *, address: str | None = None, workers: int | None = None,
             say: Say | None = None) -> Iterator[Executor]:
    """The executor called ``name``; a local Ray started here is shut down when the block ends."""
    if name == "serial":
        if address or workers:
            raise ConfigError("--ray-address and --workers are for --executor ray")
        yield SerialExecutor()
        return
    if name != "ray":
        raise ConfigError(f"unknown executor {name!r}; choose one of: {', '.join(EXECUTORS)}")
    ray = import_ray()
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1 (got {workers})")
    started_here = not ray.is_initialized()
    if started_here:
        try:
            if address:
                ray.init(address=address, log_to_driver=True, include_dashboard=False)
            else:
                ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False, log_to_driver=True,
                         object_store_memory=_object_store_bytes())
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise EngineError(f"could not start {where}: {exc}") from None
    if say is not None:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        say(f"ray: {'cluster ' + address if address else 'local'}, {cpus} CPUs")
    try:
        yield RayExecutor(ray)
    finally:
        if started_here:
            ray.shutdown()


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray, an optional extra: pip install -e '.[ray]' "
                          f"(into {sys.prefix})") from None
    return ray


def _object_store_bytes() -> int:
    """A small object store: pieces pass configs and summaries, not data (Ray's default takes 30% of RAM)."""
    return 256 * 1024 * 1024
