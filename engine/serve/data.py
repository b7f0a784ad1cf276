"""What the dashboard's API answers, read from the store: plain dicts and lists, ready for JSON.

Every figure comes from the store through the readers the HTML report uses (``engine.store.queries``,
``engine.report.stats``), so the dashboard, the report and ``backtest --json`` cannot disagree. A
run's whole record (``load_run``) is kept in a small cache keyed by the version of the run's row:
every write of a run's record (the journal's checkpoints) also sets the row's ``heartbeat_ms`` and
``bars`` in the same transaction, so (status, bars, heartbeat, finished) changes whenever the record
does, and each request reads the row afresh. A page of a running daemon that asks for five views
of one checkpoint loads it once; loads are one at a time, so they never pile up on the store.

Long series (an equity point per bar) are thinned to at most ``max_points`` evenly spaced samples,
the first and the last always kept; the answer says how many points the run has (``points``).
Secrets never leave: a run's configuration goes through ``redact_settings`` (it was redacted when
recorded; runs of older versions may hold a password), and the store is named by ``describe_url``.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from sqlalchemy import func, select

from engine.domain import OrderStatus
from engine.report import stats
from engine.store.daemons import DaemonInfo, find_daemon
from engine.store.db import RunNotFound, Store
from engine.store.models import FillRow, OrderEvent, OrderRow, PredictionRow, ReconciliationRow
from engine.store.queries import RunData, RunInfo, find_run, list_runs, load_run
from engine.store.redact import redact_settings
from engine.timeutil import iso

DAEMON_MODES = ("paper", "live")
TERMINAL_DAEMON = ("stopped", "finished", "failed")
OPEN_STATUSES = [s.value for s in OrderStatus if not s.is_terminal]


class NoDaemon(Exception):
    """The run has no daemon (a backtest), or its daemon cannot do what was asked; the message says why."""


def finite(x: Any) -> float | None:
    """A float for JSON: NaN and infinities become None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def when(ms: int | None) -> str | None:
    return iso(int(ms)) if ms is not None else None


def thin(n: int, max_points: int) -> np.ndarray:
    """Indices of at most ``max_points`` evenly spaced samples of ``n`` points, first and last kept."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))


def floats(values: Iterable[Any]) -> list[float | None]:
    return [finite(v) for v in values]


def ints(values: Iterable[Any]) -> list[int]:
    return [int(v) for v in values]


class Reader:
    """The API's view of one store. Thread-safe: requests are served from a thread pool."""

    def __init__(self, store: Store, *, lease_stale_ms: int, cache_size: int = 4) -> None:
        self.store = store
        self.lease_stale_ms = lease_stale_ms
        self._cache: OrderedDict[tuple[Any, ...], RunData] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()  # the cache
        self._loading = threading.Lock()  # one load_run at a time

    # -- runs ---------------------------------------------------------------------------------------
    def info(self, run_id: str) -> RunInfo:
        """The run ``run_id`` (or a unique prefix); ``RunNotFound`` names the latest runs."""
        return find_run(self.store, run_id)

    def data(self, info: RunInfo) -> RunData:
        """The run's record as ``info`` (just read) describes it: from the cache when it is that version."""
        key = (info.pk, info.stored_status, info.bars, info.heartbeat_ms, info.finished_ms)
        with self._loading:
            with self._lock:
                if key in self._cache:
                    self._cache.move_to_end(key)
                    return self._cache[key]
            data = load_run(self.store, info)
            with self._lock:
                self._cache[key] = data
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return data

    def daemon(self, info: RunInfo) -> DaemonInfo | None:
        if info.mode not in DAEMON_MODES:
            return None
        return find_daemon(self.store, run_id=info.run_id)

    def daemon_state(self, daemon: DaemonInfo, now_ms: int) -> str:
        """The daemon's state as a person should read it: "dead" when it claims to run but its process is gone."""
        if daemon.state in TERMINAL_DAEMON or daemon.holder_alive(now_ms, self.lease_stale_ms):
            return daemon.state
        return "dead"

    def runs(self, limit: int) -> list[dict[str, Any]]:
        from engine.store.journal import now_ms

        now = now_ms()
        out = []
        for r in list_runs(self.store, limit):
            daemon = self.daemon(r)
            out.append({
                "run_id": r.run_id, "mode": r.mode, "status": r.status, "strategy": r.strategy, "symbols": r.symbols,
                "data": r.data_label, "started": when(r.started_ms), "finished": when(r.finished_ms), "bars": r.bars,
                "fills": r.fills, "final_equity": finite(r.final_equity), "total_return": finite(r.total_return),
                "daemon_state": self.daemon_state(daemon, now) if daemon else None,
                "halted": daemon.halted if daemon else None,
            })
        return out

    def summary(self, info: RunInfo) -> dict[str, Any]:
        data = self.data(info)
        metrics = stats.run_metrics(data)
        costs = stats.cost_totals(data)
        equity = float(data.equity[-1]) if len(data.equity) else info.starting_cash
        return {
            "run_id": info.run_id, "mode": info.mode, "status": info.status, "stored_status": info.stored_status,
            "strategy": info.strategy, "symbols": info.symbols, "timeframe_ms": info.timeframe_ms,
            "data": info.data_label, "data_fingerprint": info.data_fingerprint, "code_version": info.code_version,
            "started": when(info.started_ms), "finished": when(info.finished_ms), "bars": info.bars,
            "error": info.error, "starting_cash": info.starting_cash, "final_equity": finite(info.final_equity),
            "equity": finite(equity), "last_equity_at": when(int(data.equity_ts[-1])) if len(data.equity_ts) else None,
            "orders": data.orders, "fills": len(data.fills), "funding_payments": len(data.funding),
            "rejected_orders": data.order_status.get("rejected", 0), "order_status": data.order_status,
            "reject_reasons": [{"reason": r, "orders": n} for r, n in data.reject_reasons], "news": data.news,
            "signals": len(data.signals), "predictions": self._count(PredictionRow, info.pk),
            "costs": costs.as_dict() | {"total": costs.total},
            "metrics": metrics.to_dict() if metrics is not None else None,
            "has_daemon": info.mode in DAEMON_MODES,
            "config": redact_settings(info.config or {}),
            "recorded_summary": redact_settings(info.summary) if info.summary else None,
        }

    def _count(self, table: Any, pk: int) -> int:
        with self.store.read() as conn:
            return int(conn.scalar(select(func.count()).select_from(table).where(table.run_pk == pk)) or 0)

    # -- series ---------------------------------------------------------------------------------------
    def equity(self, info: RunInfo, max_points: int) -> dict[str, Any]:
        """Equity, buy-and-hold (the starting cash held equally in every symbol) and drawdown."""
        data = self.data(info)
        idx = thin(len(data.equity), max_points)
        hold = stats.buy_and_hold_curve(data)
        dd = stats.drawdown(data.equity, info.starting_cash)
        return {"points": len(data.equity), "ts": ints(data.equity_ts[idx]), "equity": floats(data.equity[idx]),
                "buy_hold": floats(hold[idx]) if hold is not None else None, "drawdown": floats(dd[idx]),
                "gross_exposure": floats(data.gross_exposure[idx]), "starting_cash": info.starting_cash}

    def prices(self, info: RunInfo, max_points: int, max_fills: int) -> dict[str, Any]:
        """Each symbol's closes and the fills on it (the latest ``max_fills``), for the price chart."""
        data = self.data(info)
        out = {}
        for symbol, (ts, close) in data.prices.items():
            idx = thin(len(close), max_points)
            fills = [f for f in data.fills if f.symbol == symbol][-max_fills:]
            out[symbol] = {"points": len(close), "ts": ints(ts[idx]), "close": floats(close[idx]),
                           "fills": [{"ts": f.ts_event, "side": "buy" if f.signed_quantity > 0 else "sell",
                                      "price": finite(f.price), "quantity": finite(f.quantity)} for f in fills]}
        return {"symbols": out}

    def signals(self, info: RunInfo, max_points: int, last: int) -> dict[str, Any]:
        """The strategy's recorded signals (the LLM strategy: one per bar close and symbol): a summary,
        the series for a chart, and the latest ``last`` rows."""
        data = self.data(info)
        s = data.signals
        idx = thin(len(s), max_points)
        tail = range(max(0, len(s) - last), len(s))
        return {
            "summary": stats.signal_table(data), "points": len(s),
            "series": {"ts": ints(s.ts[idx]), "symbol": [str(x) for x in s.symbol[idx]], "score": floats(s.score[idx]),
                       "confidence": floats(s.confidence[idx]), "direction": floats(s.direction[idx])},
            "latest": [{"ts": int(s.ts[k]), "time": iso(int(s.ts[k])), "symbol": str(s.symbol[k]),
                        "score": finite(s.score[k]), "confidence": finite(s.confidence[k]),
                        "direction": finite(s.direction[k]), "regression": finite(s.regression[k]),
                        "news": finite(s.news[k]), "action": str(s.action[k]), "expected_move": finite(s.expected_move[k]),
                        "round_trip_cost": finite(s.cost[k])} for k in reversed(tail)],
        }

    def costs(self, info: RunInfo) -> dict[str, Any]:
        """Each cost ledger's total, as a share of the starting cash and of the gross gain or loss."""
        data = self.data(info)
        totals = stats.cost_totals(data)
        metrics = stats.run_metrics(data)
        start = info.starting_cash
        ledgers = [{"ledger": name, "amount": finite(amount), "of_start": finite(amount / start)}
                   for name, amount in totals.as_dict().items()]
        return {"ledgers": ledgers, "total": finite(totals.total), "total_of_start": finite(totals.total / start),
                "gross_return": finite(metrics.gross_return) if metrics else None,
                "total_return": finite(metrics.total_return) if metrics else None,
                "fills": {"maker": sum(f.liquidity.value == "maker" for f in data.fills),
                          "taker": sum(f.liquidity.value == "taker" for f in data.fills)}}

    # -- tables ---------------------------------------------------------------------------------------
    def orders(self, info: RunInfo, *, limit: int, offset: int, status: str | None,
               open_only: bool) -> dict[str, Any]:
        """Orders, newest first, each with its status history (oldest first)."""
        where = [OrderRow.run_pk == info.pk]
        if status is not None:
            where.append(OrderRow.status == status)
        if open_only:
            where.append(OrderRow.status.in_(OPEN_STATUSES))
        with self.store.read() as conn:
            total = int(conn.scalar(select(func.count()).select_from(OrderRow).where(*where)) or 0)
            rows = [dict(r) for r in conn.execute(
                select(OrderRow.__table__).where(*where).order_by(OrderRow.ts_init.desc(),
                                                                  OrderRow.client_order_id.desc())
                .limit(limit).offset(offset)).mappings()]
            ids = [r["client_order_id"] for r in rows]
            events: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
            if ids:
                for e in conn.execute(select(OrderEvent.client_order_id, OrderEvent.ts_event, OrderEvent.status,
                                             OrderEvent.detail)
                                      .where(OrderEvent.run_pk == info.pk, OrderEvent.client_order_id.in_(ids))
                                      .order_by(OrderEvent.ts_event, OrderEvent.id)):
                    events[e.client_order_id].append({"ts": e.ts_event, "time": when(e.ts_event), "status": e.status,
                                                      "detail": e.detail})
        orders = [{
            "client_order_id": r["client_order_id"], "exchange_order_id": r["exchange_order_id"], "symbol": r["symbol"],
            "side": r["side"], "type": r["type"], "quantity": finite(r["quantity"]),
            "limit_price": finite(r["limit_price"]), "stop_price": finite(r["stop_price"]), "tag": r["tag"],
            "status": r["status"], "reject_reason": r["reject_reason"], "filled_quantity": finite(r["filled_quantity"]),
            "ts_init": r["ts_init"], "time": when(r["ts_init"]), "updated": when(r["ts_updated"]),
            "attempts": r["attempts"], "history": events[r["client_order_id"]]} for r in rows]
        return {"total": total, "offset": offset, "orders": orders}

    def fills(self, info: RunInfo, *, limit: int, offset: int) -> dict[str, Any]:
        """Fills, newest first, with what each cost."""
        with self.store.read() as conn:
            total = int(conn.scalar(select(func.count()).select_from(FillRow).where(FillRow.run_pk == info.pk)) or 0)
            rows = conn.execute(select(FillRow.__table__).where(FillRow.run_pk == info.pk)
                                .order_by(FillRow.ts_event.desc(), FillRow.id.desc())
                                .limit(limit).offset(offset)).mappings().all()
        return {"total": total, "offset": offset, "fills": [{
            "ts": r["ts_event"], "time": when(r["ts_event"]), "client_order_id": r["client_order_id"],
            "symbol": r["symbol"], "side": r["side"], "order_type": r["order_type"], "quantity": finite(r["quantity"]),
            "price": finite(r["price"]), "reference_price": finite(r["reference_price"]), "fee": finite(r["fee"]),
            "fee_currency": r["fee_currency"], "liquidity": r["liquidity"], "spread_cost": finite(r["spread_cost"]),
            "slippage_cost": finite(r["slippage_cost"]), "trade_id": r["trade_id"]} for r in rows]}

    def positions(self, info: RunInfo) -> dict[str, Any]:
        """The last position snapshot per symbol (what the run held when it last checkpointed) and the
        orders still open."""
        data = self.data(info)
        positions = [{"symbol": p["symbol"], "quantity": finite(p["quantity"]),
                      "average_price": finite(p["average_price"]), "last_price": finite(p["last_price"]),
                      "realized_pnl": finite(p["realized_pnl"]), "unrealized_pnl": finite(p["unrealized_pnl"]),
                      "ts": p["ts_event"], "time": when(p["ts_event"])} for p in data.positions]
        open_orders = self.orders(info, limit=1000, offset=0, status=None, open_only=True)
        return {"positions": sorted(positions, key=lambda p: p["symbol"]), "open_orders": open_orders["orders"],
                "open_orders_total": open_orders["total"]}

    def predictions(self, info: RunInfo, *, limit: int, offset: int) -> dict[str, Any]:
        """The model's outputs (regression and sentiment), newest first."""
        with self.store.read() as conn:
            total = int(conn.scalar(select(func.count()).select_from(PredictionRow)
                                    .where(PredictionRow.run_pk == info.pk)) or 0)
            rows = conn.execute(select(PredictionRow.__table__).where(PredictionRow.run_pk == info.pk)
                                .order_by(PredictionRow.ts_event.desc(), PredictionRow.id.desc())
                                .limit(limit).offset(offset)).mappings().all()
        return {"total": total, "offset": offset, "predictions": [{
            "ts": r["ts_event"], "time": when(r["ts_event"]), "symbol": r["symbol"], "kind": r["kind"],
            "model": r["model"], "horizon_ms": r["horizon_ms"], "value": finite(r["value"]),
            "uncertainty": finite(r["uncertainty"]), "confidence": finite(r["confidence"]),
            "probabilities": _finite_map(r["probabilities"]), "input_text": r["input_text"]} for r in rows]}

    def reconciliations(self, info: RunInfo, *, limit: int, offset: int) -> dict[str, Any]:
        """What the live reconciliations found and did, newest first."""
        with self.store.read() as conn:
            total = int(conn.scalar(select(func.count()).select_from(ReconciliationRow)
                                    .where(ReconciliationRow.run_pk == info.pk)) or 0)
            rows = conn.execute(select(ReconciliationRow.__table__).where(ReconciliationRow.run_pk == info.pk)
                                .order_by(ReconciliationRow.id.desc()).limit(limit).offset(offset)).mappings().all()
        return {"total": total, "offset": offset, "reconciliations": [{
            "ts": r["ts_ms"], "time": when(r["ts_ms"]), "kind": r["kind"], "symbol": r["symbol"],
            "client_order_id": r["client_order_id"], "action": r["action"], "detail": r["detail"]} for r in rows]}

    # -- daemons --------------------------------------------------------------------------------------
    def require_daemon(self, info: RunInfo) -> DaemonInfo:
        daemon = self.daemon(info)
        if daemon is None:
            what = "a backtest" if info.mode == "backtest" else f"a {info.mode} run without a daemon"
            raise NoDaemon(f"run {info.run_id} is {what}: only paper and live runs have a daemon to "
                           "watch, halt, resume or stop")
        return daemon


def _finite_map(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    return {str(k): finite(v) if isinstance(v, int | float) else v for k, v in value.items()}


__all__ = ["NoDaemon", "Reader", "RunNotFound", "finite", "thin"]
