"""Alembic environment of the run store.

Run programmatically by ``engine.store.db.migrate`` (no alembic.ini): the caller passes an open
connection in ``config.attributes["connection"]``, already inside its write transaction, so an
upgrade is all-or-nothing. From a shell, for a new revision after changing ``models.py``::

    .venv/bin/python -c "from engine.store.db import alembic_config, parse_url; from alembic import command; \\
        command.revision(alembic_config(parse_url('logs/engine.db')), 'what changed', autogenerate=True)"
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from engine.store.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(**kwargs) -> None:
    context.configure(target_metadata=target_metadata, render_as_batch=True, compare_type=True, **kwargs)


def run_migrations_offline() -> None:
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        _configure(connection=conn)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
