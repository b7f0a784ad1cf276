"""The daemons table: a paper or live run's lease, warm-up range and controls (``engine.store.daemons``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "daemons",
        sa.Column("run_pk", KEY, nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("lease_host", sa.String(255), nullable=False),
        sa.Column("lease_pid", sa.Integer(), nullable=True),
        sa.Column("lease_token", sa.String(32), nullable=False),
        sa.Column("heartbeat_ms", sa.BigInteger(), nullable=True),
        sa.Column("warmup_from_ms", sa.BigInteger(), nullable=True),
        sa.Column("first_bar_ms", sa.BigInteger(), nullable=True),
        sa.Column("last_bar_ms", sa.BigInteger(), nullable=True),
        sa.Column("missing_bars", sa.Integer(), nullable=False),
        sa.Column("halted", sa.Integer(), nullable=False),
        sa.Column("halt_reason", sa.Text(), nullable=False),
        sa.Column("flatten_requested", sa.Integer(), nullable=False),
        sa.Column("stop_requested", sa.Integer(), nullable=False),
        sa.Column("format_version", sa.Integer(), nullable=False),
        sa.Column("latency", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["run_pk"], ["runs.pk"], name=op.f("fk_daemons_run_pk_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_pk", name=op.f("pk_daemons")),
    )
    op.create_index(op.f("ix_daemons_key"), "daemons", ["key"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_daemons_key"), table_name="daemons")
    op.drop_table("daemons")
