"""A daemon's row in the store (``daemons``): finding a run again by its key, the lease that keeps
one process per run, the heartbeat, and the controls ``paper stop`` / ``paper halt`` set.

The lease is a compare-and-set on ``lease_token``: a process takes it when nobody holds it, when
its holder's pid is gone (same host), or when the holder's heartbeat is older than ``stale_ms``
(another host). Every checkpoint of the holder rewrites its heartbeat inside the checkpoint's own
transaction, conditioned on the token (``fence``): a process that lost its lease (paused for
minutes, then woke up after another took over) fails that update and its whole batch rolls back,
so two processes can never both write a run.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from engine.errors import EngineError
from engine.store.db import Store
from engine.store.models import DaemonRow, Run
from engine.store.queries import _pid_alive

FORMAT_VERSION = 1  # what this code records for a daemon; a newer one in the store is refused
DAEMONS = DaemonRow.__table__


class LeaseHeld(EngineError):
    """Another live process runs this daemon."""


class LeaseLost(EngineError):
    """This process no longer holds the lease (another took over)."""


@dataclass(frozen=True)
class DaemonInfo:
    run_pk: int
    run_id: str
    run_status: str
    key: str
    state: str
    note: str
    lease_host: str
    lease_pid: int | None
    heartbeat_ms: int | None
    warmup_from_ms: int | None
    first_bar_ms: int | None
    last_bar_ms: int | None
    missing_bars: int
    halted: bool
    halt_reason: str
    flatten_requested: bool
    stop_requested: bool
    format_version: int
    latency: dict[str, Any] | None
    live: dict[str, Any] | None = None  # live runs: venue, starting balances, reconciliation progress

    def holder_alive(self, now_ms: int, stale_ms: int) -> bool:
        """Whether the process named in the lease may still be running this daemon."""
        if self.lease_pid is None or self.state in ("stopped", "finished", "failed"):
            return False
        if self.lease_host == socket.gethostname():
            return self.lease_pid == os.getpid() or _pid_alive(self.lease_pid)
        return self.heartbeat_ms is not None and now_ms - self.heartbeat_ms <= stale_ms


def _info(row: Any) -> DaemonInfo:
    return DaemonInfo(
        run_pk=row.run_pk, run_id=row.run_id, run_status=row.status, key=row.key, state=row.state, note=row.note,
        lease_host=row.lease_host, lease_pid=row.lease_pid, heartbeat_ms=row.heartbeat_ms,
        warmup_from_ms=row.warmup_from_ms, first_bar_ms=row.first_bar_ms, last_bar_ms=row.last_bar_ms,
        missing_bars=row.missing_bars, halted=bool(row.halted), halt_reason=row.halt_reason,
        flatten_requested=bool(row.flatten_requested), stop_requested=bool(row.stop_requested),
        format_version=row.format_version, latency=row.latency, live=row.live)


def _select() -> Any:
    return select(DAEMONS, Run.run_id, Run.status).join(Run, Run.pk == DaemonRow.run_pk)


def find_daemon(store: Store, *, key: str | None = None, run_id: str | None = None,
                mode: str | None = None) -> DaemonInfo | None:
    """The newest daemon with ``key`` (or of run ``run_id``, or the newest of ``mode``), or None."""
    stmt = _select()
    if key is not None:
        stmt = stmt.where(DaemonRow.key == key)
    if run_id is not None:
        stmt = stmt.where(Run.run_id == run_id)
    if mode is not None:
        stmt = stmt.where(Run.mode == mode)
    with store.read() as conn:
        row = conn.execute(stmt.order_by(Run.started_ms.desc(), Run.pk.desc()).limit(1)).first()
    return _info(row) if row is not None else None


def daemon_row(key: str, *, warmup_from_ms: int | None, first_bar_ms: int | None) -> dict[str, Any]:
    return {"key": key, "state": "starting", "note": "", "lease_host": "", "lease_pid": None, "lease_token": "",
            "heartbeat_ms": None, "warmup_from_ms": warmup_from_ms, "first_bar_ms": first_bar_ms,
            "last_bar_ms": None, "missing_bars": 0, "halted": 0, "halt_reason": "", "flatten_requested": 0,
            "stop_requested": 0, "format_version": FORMAT_VERSION, "latency": None, "live": None}


def insert_daemon(conn: Connection, run_pk: int, row: dict[str, Any]) -> None:
    conn.execute(insert(DaemonRow), {**row, "run_pk": run_pk})


def acquire_lease(store: Store, run_pk: int, *, now_ms: int, stale_ms: int) -> str:
    """Take the daemon's lease for this process; its token. ``LeaseHeld`` names the live holder."""
    with store.write() as conn:
        row = conn.execute(_select().where(DaemonRow.run_pk == run_pk)).first()
        if row is None:
            raise EngineError(f"run pk {run_pk} has no daemon row")
        info = _info(row)
        if info.format_version > FORMAT_VERSION:
            raise EngineError(f"run {info.run_id} was recorded by a newer version of the daemon (format "
                              f"{info.format_version}, this code knows {FORMAT_VERSION}); update the code, or start "
                              "a fresh run with --new. Nothing was changed.")
        if info.holder_alive(now_ms, stale_ms) and info.lease_pid != os.getpid():
            age = "" if info.heartbeat_ms is None else f", last heartbeat {(now_ms - info.heartbeat_ms) / 1000:.0f} s ago"
            raise LeaseHeld(f"run {info.run_id} is already running (pid {info.lease_pid} on {info.lease_host}{age}); "
                            "`python -m engine paper status` (or `live status`) shows it, `stop` stops it")
        token = secrets.token_hex(8)
        done = conn.execute(update(DaemonRow).where(DaemonRow.run_pk == run_pk,
                                                    DaemonRow.lease_token == row.lease_token)
                            .values(lease_token=token, lease_host=socket.gethostname(), lease_pid=os.getpid(),
                                    heartbeat_ms=now_ms, state="starting", stop_requested=0,
                                    note="starting")).rowcount
        if done != 1:
            raise LeaseHeld(f"run {info.run_id}: another process took the lease at the same moment")
    return token


@lru_cache(maxsize=32)
def _fenced_update(columns: tuple[str, ...]) -> Any:
    """One statement per set of columns, built once: a daemon runs it at every checkpoint."""
    return (update(DaemonRow).where(DaemonRow.run_pk == bindparam("f_pk"), DaemonRow.lease_token == bindparam("f_token"))
            .values({c: bindparam(f"v_{c}") for c in columns}))


def fence(conn: Connection, run_pk: int, token: str, values: dict[str, Any]) -> None:
    """Write ``values`` (heartbeat, state, ...) if this process still holds the lease, else ``LeaseLost``."""
    columns = tuple(sorted(values))
    params = {f"v_{c}": values[c] for c in columns}
    done = conn.execute(_fenced_update(columns), {"f_pk": run_pk, "f_token": token, **params}).rowcount
    if done != 1:
        raise LeaseLost("another process took over this run's lease; this one stops without writing")


def update_daemon(store: Store, run_pk: int, token: str, values: dict[str, Any]) -> None:
    with store.write() as conn:
        fence(conn, run_pk, token, values)


def set_controls(store: Store, run_pk: int, **values: Any) -> None:
    """What ``paper stop`` / ``paper halt`` ask of a daemon (read at its next tick); the verbs below
    are what the command line and the dashboard write."""
    with store.write() as conn:
        conn.execute(update(DaemonRow).where(DaemonRow.run_pk == run_pk).values(**values))


def request_halt(store: Store, run_pk: int, reason: str, *, flatten: bool = False) -> None:
    """Halt: from its next step the daemon sends nothing new (``flatten``: it also cancels its open
    orders and closes its positions). Kept until ``clear_halt``; a stopped run resumes halted."""
    set_controls(store, run_pk, halted=1, halt_reason=reason, flatten_requested=int(flatten))


def clear_halt(store: Store, run_pk: int) -> None:
    """Lift a halt (a person's or a risk limit's): the daemon trades again from its next step."""
    set_controls(store, run_pk, halted=0, halt_reason="", flatten_requested=0)


def request_stop(store: Store, run_pk: int) -> None:
    """Ask the daemon to finish its current step, record "stopped" and exit (read at its next tick)."""
    set_controls(store, run_pk, stop_requested=1)


_CONTROLS = select(DaemonRow.halted, DaemonRow.halt_reason, DaemonRow.flatten_requested,
                   DaemonRow.stop_requested).where(DaemonRow.run_pk == bindparam("pk"))


def read_controls(store: Store, run_pk: int) -> dict[str, Any]:
    with store.read() as conn:
        row = conn.execute(_CONTROLS, {"pk": run_pk}).first()
    if row is None:
        return {}
    return {"halted": bool(row.halted), "halt_reason": row.halt_reason,
            "flatten_requested": bool(row.flatten_requested), "stop_requested": bool(row.stop_requested)}
