"""Live trading: each order's send attempts, last send time and exchange id; fills and funding
payments unique by the exchange's execution id; the daemon's live state (venue, starting balances,
reconciliation progress); and the reconciliation records ``live status`` shows.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("sent_ms", sa.BigInteger(), nullable=True))
    for table in ("fills", "funding_payments"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("trade_id", sa.String(96), nullable=True))
        op.create_index(op.f(f"ix_{table}_run_pk_trade_id"), table, ["run_pk", "trade_id"], unique=True)
    with op.batch_alter_table("daemons") as batch:
        batch.add_column(sa.Column("live", sa.JSON(), nullable=True))
    op.create_table(
        "reconciliations",
        sa.Column("id", KEY, autoincrement=True, nullable=False),
        sa.Column("run_pk", KEY, nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("client_order_id", sa.String(96), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["run_pk"], ["runs.pk"], name=op.f("fk_reconciliations_run_pk_runs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliations")),
    )
    op.create_index(op.f("ix_reconciliations_run_pk_id"), "reconciliations", ["run_pk", "id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_reconciliations_run_pk_id"), table_name="reconciliations")
    op.drop_table("reconciliations")
    with op.batch_alter_table("daemons") as batch:
        batch.drop_column("live")
    for table in ("fills", "funding_payments"):
        op.drop_index(op.f(f"ix_{table}_run_pk_trade_id"), table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("trade_id")
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("sent_ms")
        batch.drop_column("attempts")
