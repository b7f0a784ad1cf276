"""The store's schema: SQLAlchemy 2.0 typed ORM classes, one per table.

These rows are the durable record, not the domain model: ``engine.domain`` values are converted
to and from them in ``engine.store.convert``. Every instant is integer UTC epoch milliseconds, as in
the core (``ts_*`` columns: market time; ``*_ms`` columns of ``runs``: wall-clock time).

A run has an integer key (``runs.pk``) that every other table references (``run_pk``), and the
text id people see (``runs.run_id``, the ``run_id`` of the JSON summary). Orders are keyed by
(run, client order id), which is what fills and status events point at, so a batch of records can
be written without first reading back generated keys. Deleting a run deletes everything of it.

Changing this file means adding a migration under ``migrations/versions``; ``tests/test_store.py``
fails on any drift between these classes and the migrated schema.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Integer keys: 64-bit on PostgreSQL, SQLite's INTEGER (the 64-bit rowid alias, which is what makes
# them autoincrement there; BIGINT would not be).
Key = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {  # deterministic constraint names, so migrations can refer to them on every backend
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


def _run_fk() -> Any:
    return ForeignKey("runs.pk", ondelete="CASCADE")


class Run(Base):
    """One backtest, paper session or live session."""

    __tablename__ = "runs"

    pk: Mapped[int] = mapped_column(Key, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64), unique=True)
    mode: Mapped[str] = mapped_column(String(16))  # backtest, paper, live
    # running, completed, failed, interrupted. A "running" run whose process is gone is shown as
    # "incomplete" (see engine.store.queries.effective_status); the row itself is never rewritten.
    status: Mapped[str] = mapped_column(String(16))
    strategy: Mapped[str] = mapped_column(String(64))
    symbols: Mapped[list[Any]]
    timeframe_ms: Mapped[int | None] = mapped_column(BigInteger)
    starting_cash: Mapped[float] = mapped_column(Float)
    data_label: Mapped[str] = mapped_column(Text, default="")  # a path, or synthetic:seed=N
    data_fingerprint: Mapped[str] = mapped_column(String(64), default="")  # sha256 of the bars and headlines
    code_version: Mapped[str] = mapped_column(String(128), default="")  # git describe, else the package version
    config: Mapped[dict[str, Any]]  # the full checked configuration
    started_ms: Mapped[int] = mapped_column(BigInteger)
    finished_ms: Mapped[int | None] = mapped_column(BigInteger)
    # Liveness of a "running" run: the writer's host and pid, and the wall time of its last write.
    host: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int | None] = mapped_column(Integer)
    heartbeat_ms: Mapped[int | None] = mapped_column(BigInteger)
    bars: Mapped[int] = mapped_column(BigInteger, default=0)  # processed so far (final once completed)
    error: Mapped[str | None] = mapped_column(Text)
    # Figures of the finished run (null while running): the JSON summary and its headline numbers.
    final_equity: Mapped[float | None] = mapped_column(Float)
    total_return: Mapped[float | None] = mapped_column(Float)
    summary: Mapped[dict[str, Any] | None]

    __table_args__ = (Index(None, "started_ms"),)


class OrderRow(Base):
    """An order as submitted, with its current status; its history is in ``order_events``."""

    __tablename__ = "orders"

    run_pk: Mapped[int] = mapped_column(Key, _run_fk(), primary_key=True)
    client_order_id: Mapped[str] = mapped_column(String(96), primary_key=True)
    exchange_order_id: Mapped[str | None] = mapped_column(String(96))
    symbol: Mapped[str] = mapped_column(String(64))
    side: Mapped[str] = mapped_column(String(4))  # buy, sell
    type: Mapped[str] = mapped_column(String(16))  # market, limit, stop
    quantity: Mapped[float] = mapped_column(Float)
    limit_price: Mapped[float | None] = mapped_column(Float)
    stop_price: Mapped[float | None] = mapped_column(Float)
    tag: Mapped[str] = mapped_column(String(255), default="")
    ts_init: Mapped[int] = mapped_column(BigInteger)  # decision time
    # intent, accepted (working), partially_filled, filled, cancelled, rejected, expired, ...: engine.domain.OrderStatus
    status: Mapped[str] = mapped_column(String(16))
    reject_reason: Mapped[str | None] = mapped_column(Text)
    filled_quantity: Mapped[float] = mapped_column(Float, default=0.0)
    ts_updated: Mapped[int] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # live: how many times it was sent (one client id)
    sent_ms: Mapped[int | None] = mapped_column(BigInteger)  # live: when it was last sent; None = never

    __table_args__ = (Index(None, "run_pk", "ts_init"),)


class OrderEvent(Base):
    """Status history: submitted, then filled, cancelled, rejected or expired, each with its time."""

    __tablename__ = "order_events"

    id: Mapped[int] = mapped_column(Key, primary_key=True, autoincrement=True)
    run_pk: Mapped[int] = mapped_column(Key)
    client_order_id: Mapped[str] = mapped_column(String(96))
    ts_event: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)  # the reject reason, the fill price

    __table_args__ = (
        ForeignKeyConstraint(["run_pk", "client_order_id"], ["orders.run_pk", "orders.client_order_id"],
                             ondelete="CASCADE"),
        Index(None, "run_pk", "client_order_id"),
    )


class FillRow(Base):
    """An execution, with what it cost: fee (and its currency), liquidity, spread and slippage."""

    __tablename__ = "fills"

    id: Mapped[int] = mapped_column(Key, primary_key=True, autoincrement=True)
    run_pk: Mapped[int] = mapped_column(Key)
    seq: Mapped[int | None] = mapped_column(BigInteger)  # order among the run's fills and funding payments
    client_order_id: Mapped[str] = mapped_column(String(96))
    symbol: Mapped[str] = mapped_column(String(64))
    side: Mapped[str] = mapped_column(String(4))
    order_type: Mapped[str] = mapped_column(String(16))
    quantity: Mapped[float] = mapped_column(Float)
    price: Mapped[float] = mapped_column(Float)  # what was paid
    reference_price: Mapped[float] = mapped_column(Float)  # before spread and slippage
    fee: Mapped[float] = mapped_column(Float)
    fee_currency: Mapped[str] = mapped_column(String(16))
    liquidity: Mapped[str] = mapped_column(String(8))  # maker, taker
    spread_cost: Mapped[float] = mapped_column(Float)
    slippage_cost: Mapped[float] = mapped_column(Float)
    ts_event: Mapped[int] = mapped_column(BigInteger)
    trade_id: Mapped[str | None] = mapped_column(String(96))  # live: the exchange's execution id (unique)

    __table_args__ = (
        ForeignKeyConstraint(["run_pk", "client_order_id"], ["orders.run_pk", "orders.client_order_id"],
                             ondelete="CASCADE"),
        Index(None, "run_pk", "ts_event"),
        Index(None, "run_pk", "client_order_id"),
        Index(None, "run_pk", "trade_id", unique=True),
    )


class FundingRow(Base):
    """Perpetual funding settled on a position (amount > 0: the account paid)."""

    __tablename__ = "funding_payments"

    id: Mapped[int] = mapped_column(Key, primary_key=True, autoincrement=True)
    run_pk: Mapped[int] = mapped_column(Key, _run_fk())
    seq: Mapped[int | None] = mapped_column(BigInteger)  # order among the run's fills and funding payments
    symbol: Mapped[str] = mapped_column(String(64))
    ts_event: Mapped[int] = mapped_column(BigInteger)
    rate: Mapped[float] = mapped_column(Float)
    mark_price: Mapped[float] = mapped_column(Float)
    position_quantity: Mapped[float] = mapped_column(Float)
    amount: Mapped[float] = mapped_column(Float)
    trade_id: Mapped[str | None] = mapped_column(String(96))  # live: the exchange's id of the settlement (unique)

    __table_args__ = (Index(None, "run_pk", "ts_event"), Index(None, "run_pk", "trade_id", unique=True))


class PositionSnapshot(Base):
    """A position at a checkpoint where it changed since the previous snapshot, and at the end."""

    __tablename__ = "position_snapshots"

    id: Mapped[int] = mapped_column(Key, primary_key=True, autoincrement=True)
    run_pk: Mapped[int] = mapped_column(Key, _run_fk())
    ts_event: Mapped[int] = mapped_column(BigInteger)
    symbol: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[float] = mapped_column(Float)
    average_price: Mapped[float] = mapped_column(Float)
    last_price: Mapped[float] = mapped_column(Float)
    realized_pnl: Mapped[float] = mapped_column(Float)
    unrealized_pnl: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index(None, "run_pk", "ts_event"),)


class EquityPoint(Base):
    """The equity curve: one point per distinct bar-close time. Clustered on its key (SQLite
    WITHOUT ROWID: one B-tree instead of a table plus an index), which makes the bulk inserts of
    a row per bar about a quarter faster."""

    __tablename__ = "equity"
    __table_args__ = {"sqlite_with_rowid": False}

    run_pk: Mapped[int] = mapped_column(Key, _run_fk(), primary_key=True)
    ts_event: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    equity: Mapped[float] = mapped_column(Float)
    gross_exposure: Mapped[float] = mapped_column(Float)


class PriceChunk(Base):
    """Every bar's close per symbol (what positions were marked at; the reports' price chart and
    buy-and-hold line, as reports read the store and never the data files), one row per symbol
    and checkpoint: ``count`` close times and closes as little-endian int64 / float64 arrays.

    Packed rather than a row per bar: the bars are the run's input, identified by
    ``runs.data_fingerprint``, and a second million-row table per million bars would double the
    cost of recording. ``engine.store.queries`` unpacks them."""

    __tablename__ = "price_chunks"

    id: Mapped[int] = mapped_column(Key, primary_key=True, autoincrement=True)
    run_pk: Mapped[int] = mapped_column(Key, _run_fk())
    symbol: Mapped[str] = mapped_column(String(64))
    ts_first: Mapped[int] = mapped_column(BigInteger)
    ts_last: Mapped[int] = mapped_column(BigInteger)
    count: Mapped[int] = mapped_column(Integer)
    ts_event: Mapped[bytes] = mapped_column(LargeBinary)  # '<i8' bar close times
    close: Mapped[bytes] = mapped_column(LargeBinary)  # '<f8' closes

    __table_args__ = (Index(None, "run_pk", "symbol", "ts_first"),)


class NewsRow(Base):
    """A headline the strategy was shown, at its publish time."""

    __tablename__ = "news_items"

    id: Mapped[int] = mapped_column(Key, primary_key=True, autoincrement=True)
    run_pk: Mapped[int] = mapped_column(Key, _run_fk())
    ts_event: Mapped[int] = mapped_column(BigInteger)
    symbol: Mapped[str | None] = mapped_column(String(64))
    headline: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(255), default="")

    __table_args__ = (Index(None, "run_pk", "ts_event"),)


class PredictionRow(Base):
    """One model output: a regression (value = predicted return, uncertainty = its standard
    deviation) or a sentiment classification (probabilities per class), with its confidence."""

    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(Key, primary_key=True, autoincrement=True)
    run_pk: Mapped[int] = mapped_column(Key, _run_fk())
    ts_event: Mapped[int] = mapped_column(BigInteger)  # when the prediction was made (its inputs end here)
    symbol: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))  # regression, sentiment
    model: Mapped[str] = mapped_column(String(255), default="")  # backbone + adapter
    horizon_ms: Mapped[int | None] = mapped_column(BigInteger)
    value: Mapped[float | None] = mapped_column(Float)
    uncertainty: Mapped[float | None] = mapped_column(Float)
    probabilities: Mapped[dict[str, Any] | None]
    confidence: Mapped[float | None] = mapped_column(Float)
    input_text: Mapped[str | None] = mapped_column(Text)  # the headline, for sentiment

    __table_args__ = (Index(None, "run_pk", "ts_event"),)


class SignalRow(Base):
    """An aggregated signal a strategy acted on, with the components it was built from."""

    __tablename__ = "signals"

    id: Mapped[int] = mapped_column(Key, primary_key=True, autoincrement=True)
    run_pk: Mapped[int] = mapped_column(Key, _run_fk())
    ts_event: Mapped[int] = mapped_column(BigInteger)
    symbol: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    confidence: Mapped[float | None] = mapped_column(Float)
    components: Mapped[dict[str, Any]]
    model: Mapped[str] = mapped_column(String(255), default="")

    __table_args__ = (Index(None, "run_pk", "ts_event"),)


class DaemonRow(Base):
    """A paper or live run's daemon: what it is (``key``: mode, strategy, account, symbols, bar
    length and a digest of the settings, so the same ``paper start`` finds its run again), its
    lease (one process at a time: host, pid, a token and a heartbeat), where its warm-up starts
    and its first live bar, and the controls ``paper stop`` / ``paper halt`` set."""

    __tablename__ = "daemons"

    run_pk: Mapped[int] = mapped_column(Key, _run_fk(), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), index=True)
    state: Mapped[str] = mapped_column(String(16))  # starting, waiting, running, halted, stopped, finished, failed
    note: Mapped[str] = mapped_column(Text, default="")  # what it is doing or waiting for, in words
    lease_host: Mapped[str] = mapped_column(String(255), default="")
    lease_pid: Mapped[int | None] = mapped_column(Integer)
    lease_token: Mapped[str] = mapped_column(String(32), default="")
    heartbeat_ms: Mapped[int | None] = mapped_column(BigInteger)
    warmup_from_ms: Mapped[int | None] = mapped_column(BigInteger)  # first warm-up bar's open
    first_bar_ms: Mapped[int | None] = mapped_column(BigInteger)  # first live bar's open
    last_bar_ms: Mapped[int | None] = mapped_column(BigInteger)  # close of the last bar decided
    missing_bars: Mapped[int] = mapped_column(Integer, default=0)
    halted: Mapped[int] = mapped_column(Integer, default=0)
    halt_reason: Mapped[str] = mapped_column(Text, default="")
    flatten_requested: Mapped[int] = mapped_column(Integer, default=0)
    stop_requested: Mapped[int] = mapped_column(Integer, default=0)
    format_version: Mapped[int] = mapped_column(Integer, default=1)  # of what the daemon records
    latency: Mapped[dict[str, Any] | None]  # bar close -> decision recorded: last, p50, p99 (ms)
    # Live: the venue (demo, testnet, mainnet), the account's balances when the run began, the last
    # reconciliation's time and the executions read up to (``engine.daemon.reconcile``).
    live: Mapped[dict[str, Any] | None]


class ReconciliationRow(Base):
    """One difference a live reconciliation found between the store and the exchange, and what it
    did about it (``LIVE.md``): an order brought up to date, an execution or a funding payment
    ingested, an order or a position nobody here made, a balance that does not add up."""

    __tablename__ = "reconciliations"

    id: Mapped[int] = mapped_column(Key, primary_key=True, autoincrement=True)
    run_pk: Mapped[int] = mapped_column(Key, _run_fk())
    ts_ms: Mapped[int] = mapped_column(BigInteger)  # wall time of the reconciliation
    kind: Mapped[str] = mapped_column(String(32))
    symbol: Mapped[str] = mapped_column(String(64), default="")
    client_order_id: Mapped[str] = mapped_column(String(96), default="")
    action: Mapped[str] = mapped_column(String(16))  # updated, ingested, adopted, halted, ignored
    detail: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (Index(None, "run_pk", "id"),)


TABLES = Base.metadata.tables
