"""``SqlJournal``: the event loop's journal (``engine.journal.Journal``) backed by the store.

Events are buffered in memory as plain row dicts and written at each checkpoint in ONE
transaction, orders before the fills and status events that point at them, so a crash at any
instant leaves either the whole batch or none of it, and every recorded fill has its order. Large
tables are written with one ``executemany`` per table (Core ``insert()`` of a list of rows), never
an ORM object per row: the backtest loop checkpoints every 20,000 events.

What each checkpoint writes: new orders (with their status so far), status changes of orders
written earlier, order status events, fills, funding payments, headlines, signals and predictions,
equity points, each bar's close per symbol (packed per checkpoint), position snapshots of the symbols whose position
changed, and the run's heartbeat (wall time, pid, bars so far). The newest equity point is held
back until the next checkpoint, because the loop may still overwrite it when several symbols close
at the same instant; ``finish`` writes it, with final position snapshots and the run's figures.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from functools import lru_cache
from itertools import chain
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Dialect, Float, Table, bindparam, func, insert, select, update

from engine.domain import (
    Fill,
    FundingPayment,
    News,
    Order,
    OrderAccepted,
    OrderAmbiguous,
    OrderCancelled,
    OrderCancelPending,
    OrderExpired,
    OrderSending,
    OrderStatus,
    OrderUnknown,
    Rejection,
)
from engine.errors import OperationalError
from engine.store.convert import fill_row, funding_row, news_row, order_row
from engine.store.db import Store
from engine.store.models import (
    EquityPoint,
    FillRow,
    FundingRow,
    NewsRow,
    OrderEvent,
    OrderRow,
    PositionSnapshot,
    PredictionRow,
    PriceChunk,
    ReconciliationRow,
    Run,
    SignalRow,
)

if TYPE_CHECKING:
    from engine.journal import LoopState

log = logging.getLogger(__name__)

_TERMINAL = frozenset(s.value for s in OrderStatus if s.is_terminal)
_EVENT_STATUS = {OrderAccepted: OrderStatus.ACCEPTED.value, OrderCancelled: OrderStatus.CANCELLED.value,
                 OrderExpired: OrderStatus.EXPIRED.value, OrderSending: OrderStatus.SENDING.value,
                 OrderAmbiguous: OrderStatus.AMBIGUOUS.value, OrderUnknown: OrderStatus.UNKNOWN.value,
                 OrderCancelPending: OrderStatus.CANCEL_PENDING.value}
_FILLED_TOLERANCE = 1e-9  # relative: an order whose fills sum to its quantity within this is filled


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def start_run(store: Store, *, run_id: str, mode: str, strategy: str, symbols: list[str], timeframe_ms: int | None,
              starting_cash: float, config: Mapping[str, Any], data_label: str = "", data_fingerprint: str = "",
              code_version: str = "", timeframes: Mapping[str, int] | None = None,
              also: Callable[[Connection, int], None] | None = None) -> SqlJournal:
    """Create the run's row (status "running", with this process's host and pid) and return its
    journal; ``also(conn, run_pk)`` writes more in the same transaction (a daemon's row)."""
    started = now_ms()
    row = {
        "run_id": run_id, "mode": mode, "status": "running", "strategy": strategy, "symbols": list(symbols),
        "timeframe_ms": timeframe_ms, "starting_cash": starting_cash, "data_label": data_label,
        "data_fingerprint": data_fingerprint, "code_version": code_version, "config": dict(config),
        "started_ms": started, "finished_ms": None, "host": socket.gethostname(), "pid": os.getpid(),
        "heartbeat_ms": started, "bars": 0, "error": None, "final_equity": None, "total_return": None,
        "summary": None,
    }
    with store.write() as conn:
        run_pk = conn.execute(insert(Run).returning(Run.pk), row).scalar_one()
        if also is not None:
            also(conn, run_pk)
    return SqlJournal(store, run_pk, run_id, timeframes=timeframes or {})


def resume_run(store: Store, run_pk: int, run_id: str, *, timeframes: Mapping[str, int],
               history_counts: Mapping[str, int]) -> SqlJournal:
    """The journal of a run an earlier process recorded, carrying on where its last checkpoint
    ended: orders not final yet are updated in place, fills and funding continue its sequence, bar
    closes already held (``history_counts`` bars per symbol, the warm-up's) are not written again.
    Marks the run "running" under this process."""
    journal = SqlJournal(store, run_pk, run_id, timeframes=timeframes)
    with store.write() as conn:
        for row in conn.execute(select(OrderRow.__table__).where(
                OrderRow.run_pk == run_pk, OrderRow.status.not_in(_TERMINAL))).mappings():
            journal._working[row["client_order_id"]] = {k: row[k] for k in _WORKING_KEYS}
        seqs = [conn.scalar(select(func.max(t.seq)).where(t.run_pk == run_pk)) for t in (FillRow, FundingRow)]
        journal._seq = max([s for s in seqs if s is not None], default=0)
        last = select(PositionSnapshot.__table__).where(PositionSnapshot.run_pk == run_pk).order_by(
            PositionSnapshot.id)
        for row in conn.execute(last).mappings():
            journal._snapshot_state[row["symbol"]] = (row["quantity"], row["average_price"], row["realized_pnl"],
                                                      row["ts_event"], row["last_price"])
        conn.execute(update(Run).where(Run.pk == run_pk).values(
            status="running", finished_ms=None, error=None, host=socket.gethostname(), pid=os.getpid(),
            heartbeat_ms=now_ms()))
    journal._prices_written = dict(history_counts)
    return journal


_WORKING_KEYS = ("status", "reject_reason", "filled_quantity", "ts_updated", "quantity", "exchange_order_id",
                 "attempts", "sent_ms")


class SqlJournal:
    """Buffers what the loop reports and writes it in one transaction per checkpoint."""

    def __init__(self, store: Store, run_pk: int, run_id: str, *, timeframes: Mapping[str, int]) -> None:
        self.store = store
        self.run_pk = run_pk
        self.run_id = run_id
        self._timeframes = dict(timeframes)  # symbol -> bar length, to stamp closes at the close time
        self._new_orders: dict[str, dict[str, Any]] = {}  # not written yet, with their status so far
        self._working: dict[str, dict[str, Any]] = {}  # written and not final: their current rows
        self._dirty: set[str] = set()  # working orders changed since they were written
        self._events: list[dict[str, Any]] = []
        self._reconciliations: list[dict[str, Any]] = []  # live: differences found between store and exchange
        self._fills: list[dict[str, Any]] = []
        self._funding: list[dict[str, Any]] = []
        self._news: list[dict[str, Any]] = []
        self._signals: list[dict[str, Any]] = []
        self._predictions: list[dict[str, Any]] = []
        self._equity_written = 0  # equity points written (the loop's index)
        self._prices_written: dict[str, int] = {}  # bars written per symbol (the series' row)
        self._snapshot_state: dict[str, tuple[float, ...]] = {}  # (quantity, average, realised, ts, last)
        self._pending_prices: dict[str, int] = {}  # bars per symbol once the batch being written commits
        self._loop: LoopState | None = None
        self._seq = 0  # order of fills and funding payments in the run: the portfolio replays them so
        self.batches = 0
        # Called inside each checkpoint's transaction, after its rows and before the commit: a daemon
        # writes its heartbeat there and checks it still holds the lease (raising rolls it all back).
        self.before_commit: Callable[[Connection], None] | None = None
        # A backtest holds the newest equity point back (other symbols may still close at that
        # instant); a daemon checkpoints once every bar of an instant is in and turns this off.
        self.hold_last_equity = True

    def skip_prices(self, counts: Mapping[str, int]) -> None:
        """The first ``counts[symbol]`` bars of each history are not the run's (a daemon's warm-up)."""
        self._prices_written.update(counts)

    def set_status(self, status: str) -> None:
        """Set the run's status (a daemon that stopped and may resume: "stopped")."""
        with self.store.write() as conn:
            conn.execute(update(Run).where(Run.pk == self.run_pk).values(status=status, finished_ms=now_ms(),
                                                                          heartbeat_ms=now_ms()))

    # -- the Journal protocol ------------------------------------------------------------------
    def order_submitted(self, order: Order) -> None:
        self._new_orders[order.client_order_id] = order_row(self.run_pk, order, OrderStatus.INTENT.value)
        self._events.append({"run_pk": self.run_pk, "client_order_id": order.client_order_id,
                             "ts_event": order.ts_init, "status": "submitted", "detail": None})

    def order_event(self, event: Any) -> None:
        """Accepted, cancelled, expired, or a live order's step (sending, ambiguous, unknown,
        cancel pending); the exchange's order id, the send attempts and the last send time go on the
        order's row."""
        kind = type(event)
        row = self._change(event.client_order_id, event.ts_event, _EVENT_STATUS[kind],
                           getattr(event, "reason", None) or getattr(event, "exchange_order_id", None)
                           or (f"attempt {event.attempt}" if kind is OrderSending else None))
        if kind is OrderSending:
            row["attempts"], row["sent_ms"] = event.attempt, event.ts_event
        elif kind is OrderAccepted and event.exchange_order_id:
            row["exchange_order_id"] = event.exchange_order_id

    def fill(self, fill: Fill) -> None:
        row = self._order(fill.client_order_id, "a fill")
        self._seq += 1
        self._fills.append(fill_row(self.run_pk, fill, self._seq))
        row["filled_quantity"] += fill.quantity
        done = row["filled_quantity"] >= row["quantity"] * (1.0 - _FILLED_TOLERANCE)
        status = OrderStatus.FILLED.value if done else OrderStatus.PARTIALLY_FILLED.value
        self._change(fill.client_order_id, fill.ts_event, status, f"{fill.quantity:g} @ {fill.price:g}")

    def rejection(self, rejection: Rejection) -> None:
        self._change(rejection.client_order_id, rejection.ts_event, "rejected", rejection.reason,
                     reject_reason=rejection.reason)

    def funding(self, payment: FundingPayment) -> None:
        self._seq += 1
        self._funding.append(funding_row(self.run_pk, payment, self._seq))

    def news(self, news: News) -> None:
        self._news.append(news_row(self.run_pk, news))

    def reconciliation(self, kind: str, action: str, detail: str, *, symbol: str = "", client_order_id: str = "",
                       ts_ms: int | None = None) -> None:
        """A difference a live reconciliation found and what it did (written with the next checkpoint)."""
        self._reconciliations.append({"run_pk": self.run_pk, "ts_ms": now_ms() if ts_ms is None else ts_ms,
                                      "kind": kind, "symbol": symbol, "client_order_id": client_order_id,
                                      "action": action, "detail": detail[:4000]})

    def checkpoint(self, state: LoopState) -> None:
        self._loop = state
        self._flush(state, final=False)

    # -- records for the LLM strategy (the predictor's outputs) --------------------------------
    def signal(self, ts_event: int, symbol: str, value: float, *, confidence: float | None = None,
               components: Mapping[str, Any] | None = None, model: str = "") -> None:
        self._signals.append({"run_pk": self.run_pk, "ts_event": ts_event, "symbol": symbol, "value": value,
                              "confidence": confidence, "components": dict(components or {}), "model": model})

    def prediction(self, ts_event: int, symbol: str, kind: str, *, value: float | None = None,
                   uncertainty: float | None = None, probabilities: Mapping[str, float] | None = None,
                   confidence: float | None = None, model: str = "", horizon_ms: int | None = None,
                   input_text: str | None = None) -> None:
        self._predictions.append({
            "run_pk": self.run_pk, "ts_event": ts_event, "symbol": symbol, "kind": kind, "model": model,
            "horizon_ms": horizon_ms, "value": value, "uncertainty": uncertainty,
            "probabilities": dict(probabilities) if probabilities is not None else None,
            "confidence": confidence, "input_text": input_text,
        })

    # -- end of the run ------------------------------------------------------------------------
    def finish(self, summary: Mapping[str, Any]) -> None:
        """Write what is left and mark the run completed with its figures, in one transaction."""
        run_values = {"status": "completed", "finished_ms": now_ms(), "summary": dict(summary),
                      "final_equity": summary.get("final_equity"), "total_return": summary.get("total_return"),
                      "error": None}
        self._flush(self._loop, final=True, run_values=run_values)

    def fail(self, error: BaseException | str, status: str = "failed") -> None:
        """Record what was buffered and mark the run failed (or interrupted). Never raises: the
        caller is already handling the error that stopped the run."""
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        run_values = {"status": status, "finished_ms": now_ms(), "error": text[:4000]}
        try:
            self._flush(self._loop, final=True, run_values=run_values)
        except Exception:  # the store itself may be what failed; at least try to set the status
            log.exception("run %s: could not record the buffered events", self.run_id)
            try:
                with self.store.write() as conn:
                    conn.execute(update(Run).where(Run.pk == self.run_pk).values(**run_values))
            except Exception:
                log.exception("run %s: could not mark the run %s", self.run_id, status)

    # -- internals -----------------------------------------------------------------------------
    def _order(self, client_order_id: str, what: str) -> dict[str, Any]:
        """The current row of an order that is not final yet (marked for rewriting if it was written)."""
        row = self._new_orders.get(client_order_id)
        if row is None:
            row = self._working.get(client_order_id)
            if row is None:  # every order is journalled before its outcome, and final orders get no events
                raise OperationalError(f"run {self.run_id}: {what} for order {client_order_id}, which was never "
                                       "submitted or is already final")
            self._dirty.add(client_order_id)
        return row

    def _change(self, client_order_id: str, ts: int, status: str, detail: str | None, *,
                reject_reason: str | None = None, event: str | None = None) -> dict[str, Any]:
        row = self._order(client_order_id, event or status)
        self._events.append({"run_pk": self.run_pk, "client_order_id": client_order_id, "ts_event": ts,
                             "status": event or status, "detail": detail})
        row["status"] = status
        row["ts_updated"] = ts
        if reject_reason is not None:
            row["reject_reason"] = reject_reason
        return row

    def _flush(self, loop: LoopState | None, *, final: bool, run_values: dict[str, Any] | None = None) -> None:
        equity, prices, snapshots = self._curves(loop, final)
        updates = [{"b_coid": coid, "b_status": row["status"], "b_reason": row["reject_reason"],
                    "b_filled": row["filled_quantity"], "b_ts": row["ts_updated"],
                    "b_xid": row["exchange_order_id"], "b_attempts": row["attempts"], "b_sent": row["sent_ms"]}
                   for coid, row in self._working.items() if coid in self._dirty]
        run_values = dict(run_values or {})
        run_values["heartbeat_ms"] = now_ms()
        if loop is not None:
            run_values["bars"] = loop.bars_seen
        with self.store.write() as conn:
            _insert(conn, OrderRow.__table__, list(self._new_orders.values()))
            if updates:
                conn.execute(
                    update(OrderRow).where(OrderRow.run_pk == self.run_pk,
                                           OrderRow.client_order_id == bindparam("b_coid"))
                    .values(status=bindparam("b_status"), reject_reason=bindparam("b_reason"),
                            filled_quantity=bindparam("b_filled"), ts_updated=bindparam("b_ts"),
                            exchange_order_id=bindparam("b_xid"), attempts=bindparam("b_attempts"),
                            sent_ms=bindparam("b_sent")),
                    updates)
            for table, rows in ((OrderEvent, self._events), (FillRow, self._fills), (FundingRow, self._funding),
                                (NewsRow, self._news), (SignalRow, self._signals),
                                (PredictionRow, self._predictions), (PositionSnapshot, snapshots),
                                (PriceChunk, prices), (ReconciliationRow, self._reconciliations)):
                _insert(conn, table.__table__, rows)
            _insert_flat(conn, EquityPoint.__table__, EQUITY_COLUMNS, equity)
            conn.execute(update(Run).where(Run.pk == self.run_pk).values(**run_values))
            if self.before_commit is not None:
                self.before_commit(conn)
        # Committed: advance past what was written.
        self.batches += 1
        for coid, row in self._new_orders.items():
            if row["status"] not in _TERMINAL:
                self._working[coid] = row
        for coid in self._dirty:
            if self._working[coid]["status"] in _TERMINAL:
                del self._working[coid]
        self._new_orders, self._dirty = {}, set()
        for buffer in (self._events, self._fills, self._funding, self._news, self._signals, self._predictions,
                       self._reconciliations):
            buffer.clear()
        self._equity_written += len(equity) // len(EQUITY_COLUMNS)
        for row in snapshots:
            self._snapshot_state[row["symbol"]] = (row["quantity"], row["average_price"], row["realized_pnl"],
                                                   row["ts_event"], row["last_price"])
        for symbol, count in self._pending_prices.items():
            self._prices_written[symbol] = count

    def _curves(self, loop: LoopState | None, final: bool
                ) -> tuple[list[Any], list[dict[str, Any]], list[dict[str, Any]]]:
        """Equity points (one flat list of values, row after row, in ``EQUITY_COLUMNS`` order),
        packed bar closes and position snapshots due in this batch."""
        self._pending_prices = {}
        if loop is None:
            return [], [], []
        run_pk = self.run_pk
        ts, eq, gross = loop.equity_since(self._equity_written)
        if not final and self.hold_last_equity and len(ts):  # the newest point may still change (other symbols closing then)
            ts, eq, gross = ts[:-1], eq[:-1], gross[:-1]
        equity: list[Any] = [run_pk] * (4 * len(ts))  # flat, row after row: EQUITY_COLUMNS
        equity[1::4], equity[2::4], equity[3::4] = ts.tolist(), eq.tolist(), gross.tolist()
        prices: list[dict[str, Any]] = []
        for symbol, history in loop.histories.items():
            done = self._prices_written.get(symbol, 0)
            closes = history.since(done, "close")
            if not len(closes):
                continue
            stamp = history.since(done, "ts_open") + self._timeframes.get(symbol, history.timeframe_ms)
            prices.append({"run_pk": run_pk, "symbol": symbol, "ts_first": int(stamp[0]),
                           "ts_last": int(stamp[-1]), "count": len(stamp),
                           "ts_event": stamp.astype("<i8").tobytes(), "close": closes.astype("<f8").tobytes()})
            self._pending_prices[symbol] = done + len(closes)
        snapshots = []
        ts_now = loop.time
        for symbol, pos in loop.portfolio.positions.items():
            state = (pos.quantity, pos.average_price, pos.realized_pnl)
            last = self._snapshot_state.get(symbol, (0.0, 0.0, 0.0, None, None))
            if state != last[:3] or (final and (ts_now, pos.last_price) != last[3:]):
                snapshots.append({"run_pk": run_pk, "ts_event": ts_now, "symbol": symbol, "quantity": pos.quantity,
                                  "average_price": pos.average_price, "last_price": pos.last_price,
                                  "realized_pnl": pos.realized_pnl, "unrealized_pnl": pos.unrealized_pnl})
        return equity, prices, snapshots


def _insert(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Many rows (dicts with the same keys, in the same order) in one ``executemany``."""
    if rows:
        columns = tuple(rows[0])
        _insert_tuples(conn, table, columns, list(map(itemgetter(*columns), rows)) if len(columns) > 1
                       else [(r[columns[0]],) for r in rows])


EQUITY_COLUMNS = ("run_pk", "ts_event", "equity", "gross_exposure")


@lru_cache(maxsize=64)
def _insert_sql(table: Table, columns: tuple[str, ...], dialect: Dialect) -> str | None:
    """The driver-level INSERT of ``columns``, or None where the driver takes named parameters or a
    column's type converts values on the way in (JSON). Floats need no conversion: the journal's
    values already are Python floats, which is all SQLAlchemy's float processor ensures."""
    if not dialect.positional:
        return None
    for name in columns:
        column_type = table.c[name].type
        if column_type.bind_processor(dialect) is not None and not isinstance(column_type, Float):
            return None
    compiled = insert(table).compile(dialect=dialect, column_keys=list(columns))
    if tuple(compiled.positiontup or ()) != columns:
        return None
    return str(compiled)


def _insert_tuples(conn: Connection, table: Table, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    if rows:
        _insert_flat(conn, table, columns, list(chain.from_iterable(rows)))


def _insert_flat(conn: Connection, table: Table, columns: tuple[str, ...], flat: list[Any]) -> None:
    """Rows given as one flat list of values (row after row) straight to the driver: the equity
    table gets a row per bar, where SQLAlchemy's per-row parameter processing would cost more than
    the insert itself, and SQLite takes many rows per INSERT statement (~2.4x faster than one).
    Other drivers, and tables with JSON columns, get the same rows through Core."""
    width = len(columns)
    if not flat:
        return
    sql = _insert_sql(table, columns, conn.dialect)
    if sql is None:
        conn.execute(insert(table), [dict(zip(columns, flat[i:i + width])) for i in range(0, len(flat), width)])
        return
    rest = 0
    if conn.dialect.name == "sqlite":
        per = max(1, _SQLITE_MAX_PARAMS // width)
        size = per * width
        rest = len(flat) - len(flat) % size
        if rest:
            conn.exec_driver_sql(_multi_row(sql, per), [tuple(flat[i:i + size]) for i in range(0, rest, size)])
    if rest < len(flat):
        conn.exec_driver_sql(sql, [tuple(flat[i:i + width]) for i in range(rest, len(flat), width)])


_SQLITE_MAX_PARAMS = 999  # the lowest limit of any SQLite build (3.32+ allow 32,766)


@lru_cache(maxsize=64)
def _multi_row(sql: str, rows: int) -> str:
    head, _, group = sql.rpartition(" VALUES ")
    return f"{head} VALUES {', '.join([group] * rows)}"
