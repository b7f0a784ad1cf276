"""Fills and funding payments carry their order in the run (``seq``), so a portfolio can be rebuilt
from the store by replaying them exactly as the run applied them (``engine.store.restore``).
Rows of runs recorded before this revision have none; they replay in time order.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    for table in ("fills", "funding_payments"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    for table in ("fills", "funding_payments"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("seq")
