"""Initial schema: runs, orders and their status history, fills, funding, position snapshots,
equity, bar closes, headlines seen, predictions and signals.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # as engine.store.models.Key at this revision


def _run_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["run_pk"], ["runs.pk"], name=op.f(f"fk_{table}_run_pk_runs"), ondelete="CASCADE")


def _order_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["run_pk", "client_order_id"], ["orders.run_pk", "orders.client_order_id"],
                                   name=op.f(f"fk_{table}_run_pk_client_order_id_orders"), ondelete="CASCADE")


def _id() -> sa.Column:
    return sa.Column("id", KEY, autoincrement=True, nullable=False)


def _index(table: str, *columns: str) -> None:
    op.create_index(op.f(f"ix_{table}_{'_'.join(columns)}"), table, list(columns), unique=False)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("pk", KEY, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("strategy", sa.String(64), nullable=False),
        sa.Column("symbols", sa.JSON(), nullable=False),
        sa.Column("timeframe_ms", sa.BigInteger(), nullable=True),
        sa.Column("starting_cash", sa.Float(), nullable=False),
        sa.Column("data_label", sa.Text(), nullable=False),
        sa.Column("data_fingerprint", sa.String(64), nullable=False),
        sa.Column("code_version", sa.String(128), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("started_ms", sa.BigInteger(), nullable=False),
        sa.Column("finished_ms", sa.BigInteger(), nullable=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("heartbeat_ms", sa.BigInteger(), nullable=True),
        sa.Column("bars", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("final_equity", sa.Float(), nullable=True),
        sa.Column("total_return", sa.Float(), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_runs")),
        sa.UniqueConstraint("run_id", name=op.f("uq_runs_run_id")),
    )
    _index("runs", "started_ms")

    op.create_table(
        "orders",
        sa.Column("run_pk", KEY, nullable=False),
        sa.Column("client_order_id", sa.String(96), nullable=False),
        sa.Column("exchange_order_id", sa.String(96), nullable=True),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("quantity", sa.Float(), nullable=False),
        sa.Column("limit_price", sa.Float(), nullable=True),
        sa.Column("stop_price", sa.Float(), nullable=True),
        sa.Column("tag", sa.String(255), nullable=False),
        sa.Column("ts_init", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reject_reason", sa.Text(), nullable=True),
        sa.Column("filled_quantity", sa.Float(), nullable=False),
        sa.Column("ts_updated", sa.BigInteger(), nullable=False),
        _run_fk("orders"),
        sa.PrimaryKeyConstraint("run_pk", "client_order_id", name=op.f("pk_orders")),
    )
    _index("orders", "run_pk", "ts_init")

    op.create_table(
        "order_events",
        _id(),
        sa.Column("run_pk", KEY, nullable=False),
        sa.Column("client_order_id", sa.String(96), nullable=False),
        sa.Column("ts_event", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        _order_fk("order_events"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_order_events")),
    )
    _index("order_events", "run_pk", "client_order_id")

    op.create_table(
        "fills",
        _id(),
        sa.Column("run_pk", KEY, nullable=False),
        sa.Column("client_order_id", sa.String(96), nullable=False),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("order_type", sa.String(16), nullable=False),
        sa.Column("quantity", sa.Float(), nullable=False),
        sa.Column("price", sa.Float(), nullable=False),
        sa.Column("reference_price", sa.Float(), nullable=False),
        sa.Column("fee", sa.Float(), nullable=False),
        sa.Column("fee_currency", sa.String(16), nullable=False),
        sa.Column("liquidity", sa.String(8), nullable=False),
        sa.Column("spread_cost", sa.Float(), nullable=False),
        sa.Column("slippage_cost", sa.Float(), nullable=False),
        sa.Column("ts_event", sa.BigInteger(), nullable=False),
        _order_fk("fills"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fills")),
    )
    _index("fills", "run_pk", "ts_event")
    _index("fills", "run_pk", "client_order_id")

    op.create_table(
        "funding_payments",
        _id(),
        sa.Column("run_pk", KEY, nullable=False),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("ts_event", sa.BigInteger(), nullable=False),
        sa.Column("rate", sa.Float(), nullable=False),
        sa.Column("mark_price", sa.Float(), nullable=False),
        sa.Column("position_quantity", sa.Float(), nullable=False),
        sa.Column("amount", sa.Float(), nullable=False),
        _run_fk("funding_payments"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_funding_payments")),
    )
    _index("funding_payments", "run_pk", "ts_event")

    op.create_table(
        "position_snapshots",
        _id(),
        sa.Column("run_pk", KEY, nullable=False),
        sa.Column("ts_event", sa.BigInteger(), nullable=False),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("quantity", sa.Float(), nullable=False),
        sa.Column("average_price", sa.Float(), nullable=False),
        sa.Column("last_price", sa.Float(), nullable=False),
        sa.Column("realized_pnl", sa.Float(), nullable=False),
        sa.Column("unrealized_pnl", sa.Float(), nullable=False),
        _run_fk("position_snapshots"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_position_snapshots")),
    )
    _index("position_snapshots", "run_pk", "ts_event")

    op.create_table(
        "equity",
        sa.Column("run_pk", KEY, nullable=False),
        sa.Column("ts_event", sa.BigInteger(), nullable=False),
        sa.Column("equity", sa.Float(), nullable=False),
        sa.Column("gross_exposure", sa.Float(), nullable=False),
        _run_fk("equity"),
        sa.PrimaryKeyConstraint("run_pk", "ts_event", name=op.f("pk_equity")),
        sqlite_with_rowid=False,
    )

    op.create_table(
        "price_chunks",
        _id(),
        sa.Column("run_pk", KEY, nullable=False),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("ts_first", sa.BigInteger(), nullable=False),
        sa.Column("ts_last", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("ts_event", sa.LargeBinary(), nullable=False),
        sa.Column("close", sa.LargeBinary(), nullable=False),
        _run_fk("price_chunks"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_price_chunks")),
    )
    _index("price_chunks", "run_pk", "symbol", "ts_first")

    op.create_table(
        "news_items",
        _id(),
        sa.Column("run_pk", KEY, nullable=False),
        sa.Column("ts_event", sa.BigInteger(), nullable=False),
        sa.Column("symbol", sa.String(64), nullable=True),
        sa.Column("headline", sa.Text(), nullable=False),
        sa.Column("source", sa.String(255), nullable=False),
        _run_fk("news_items"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_news_items")),
    )
    _index("news_items", "run_pk", "ts_event")

    op.create_table(
        "predictions",
        _id(),
        sa.Column("run_pk", KEY, nullable=False),
        sa.Column("ts_event", sa.BigInteger(), nullable=False),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("horizon_ms", sa.BigInteger(), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("uncertainty", sa.Float(), nullable=True),
        sa.Column("probabilities", sa.JSON(), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("input_text", sa.Text(), nullable=True),
        _run_fk("predictions"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
    )
    _index("predictions", "run_pk", "ts_event")

    op.create_table(
        "signals",
        _id(),
        sa.Column("run_pk", KEY, nullable=False),
        sa.Column("ts_event", sa.BigInteger(), nullable=False),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("components", sa.JSON(), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        _run_fk("signals"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signals")),
    )
    _index("signals", "run_pk", "ts_event")


def downgrade() -> None:
    for table in ("signals", "predictions", "news_items", "price_chunks", "equity", "position_snapshots",
                  "funding_payments", "fills", "order_events", "orders", "runs"):
        op.drop_table(table)
