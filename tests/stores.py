"""The store's tests run on every back-end: SQLite (a file under the test's tmp_path) and, when a
server is given, PostgreSQL (a fresh database per test, dropped afterwards).

``ENGINE_TEST_PG_URL`` names an admin URL of a PostgreSQL server, e.g.
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``; ``.ci/run`` starts a throw-away server
(``.ci/postgres``) and sets it. Without it, or when the server does not answer, the PostgreSQL cases
skip with the reason. ``StoreTarget`` reads a store back with plain SQL through SQLAlchemy, so that
a test's checks are the same on both back-ends.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL, make_url

PG_ENV = "ENGINE_TEST_PG_URL"
HOW = (f"set {PG_ENV}=postgresql+psycopg://postgres@HOST:PORT/postgres (an admin URL of a PostgreSQL 15 "
       "server), or run .ci/run, which starts PostgreSQL")
BACKENDS = ("sqlite", "postgresql")


@lru_cache(maxsize=1)
def pg_admin() -> tuple[URL | None, str]:
    """The admin URL, or None and why the PostgreSQL cases skip."""
    raw = os.environ.get(PG_ENV, "").strip()
    if not raw:
        return None, f"no PostgreSQL server given: {HOW}"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return None, f"{PG_ENV} is set but psycopg 3 is not installed: pip install 'psycopg[binary]>=3.2' (make setup)"
    url = make_url(raw)
    engine = create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to connect is a reason to skip, given with the driver's words
        first = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        return None, f"the PostgreSQL server at {url.render_as_string(hide_password=True)} does not answer ({first}): {HOW}"
    finally:
        engine.dispose()
    return url, ""


@dataclass
class StoreTarget:
    """One store for one test: its URL (what ``--set store.url=`` and ``open_store`` take) and SQL access."""

    backend: str
    url: str
    path: Path | None = None  # the SQLite file
    _engine: Engine | None = field(default=None, repr=False)

    @property
    def sqlite(self) -> bool:
        return self.backend == "sqlite"

    @property
    def setting(self) -> str:
        """The URL as a quoted TOML setting, for ``--set`` and ``LiveRig(settings=...)``."""
        return f'store.url="{self.url}"'

    def _conn_engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_engine(self.url)
        return self._engine

    def rows(self, sql: str, **params: Any) -> list[tuple]:
        """``sql`` (named ``:parameters``) run in its own read transaction; plain tuples."""
        with self._conn_engine().connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]

    def one(self, sql: str, **params: Any) -> Any:
        (row,) = self.rows(sql, **params)
        return row[0] if len(row) == 1 else row

    def execute(self, sql: str, **params: Any) -> None:
        with self._conn_engine().begin() as conn:
            conn.execute(text(sql), params)

    def exists(self) -> bool:
        """Whether the store has been created (its file, or its schema)."""
        if self.sqlite:
            return self.path is not None and self.path.exists()
        return bool(self.rows("SELECT 1 FROM information_schema.tables WHERE table_name = 'alembic_version'"))

    def foreign_key_violations(self) -> list[tuple]:
        """Rows that break a foreign key: SQLite checks on demand; PostgreSQL refuses them at insert
        time, so there the check is that every foreign key of the models is declared in the database."""
        if self.sqlite:
            return self.rows("PRAGMA foreign_key_check")
        from sqlalchemy import inspect

        from engine.store.models import Base

        with self._conn_engine().connect() as conn:
            insp = inspect(conn)
            declared = {(t, tuple(fk["constrained_columns"])) for t in insp.get_table_names()
                        for fk in insp.get_foreign_keys(t)}
        wanted = {(t.name, tuple(c.parent.name for c in fk.elements)) for t in Base.metadata.sorted_tables
                  for fk in t.foreign_key_constraints}
        assert wanted and wanted <= declared, wanted - declared
        return []

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def as_json(value: Any) -> Any:
    """A JSON column's value: text on SQLite, already decoded on PostgreSQL."""
    return json.loads(value) if isinstance(value, str | bytes) else value


def sqlite_target(tmp_path: Path, name: str = "store.db") -> StoreTarget:
    path = tmp_path / name
    return StoreTarget("sqlite", f"sqlite:///{path}", path=path)


@dataclass
class PgDatabases:
    """Fresh databases on the test server, each dropped when the test ends."""

    admin: URL
    names: list[str] = field(default_factory=list)
    targets: list[StoreTarget] = field(default_factory=list)

    def create(self) -> StoreTarget:
        name = f"engine_test_{uuid.uuid4().hex[:16]}"
        engine = create_engine(self.admin, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        self.names.append(name)
        url = self.admin.set(database=name).render_as_string(hide_password=False)
        target = StoreTarget("postgresql", url)
        self.targets.append(target)
        return target

    def drop_all(self) -> None:
        for target in self.targets:
            target.dispose()
        engine = create_engine(self.admin, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                for name in self.names:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            engine.dispose()


def pg_databases() -> PgDatabases:
    """A ``PgDatabases`` on the test server, or a skip with the reason."""
    admin, why = pg_admin()
    if admin is None:
        pytest.skip(why)
    return PgDatabases(admin)


class Backend:
    """The back-end of one parametrised test: ``new()`` gives it another fresh store."""

    def __init__(self, name: str, tmp_path: Path) -> None:
        self.name, self.tmp_path = name, tmp_path
        self._pg = pg_databases() if name == "postgresql" else None
        self._sqlite: list[StoreTarget] = []

    def new(self, name: str = "store.db") -> StoreTarget:
        if self._pg is not None:
            return self._pg.create()
        target = sqlite_target(self.tmp_path, name)
        self._sqlite.append(target)
        return target

    def close(self) -> None:
        for target in self._sqlite:
            target.dispose()
        if self._pg is not None:
            self._pg.drop_all()


def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Body of the ``backend`` fixture (conftest.py), parametrised over ``BACKENDS``."""
    b = Backend(request.param, tmp_path)
    try:
        yield b
    finally:
        b.close()


def as_target(db: Path | StoreTarget) -> StoreTarget:
    """A test's store given as a SQLite file path, or already as a target."""
    return db if isinstance(db, StoreTarget) else StoreTarget("sqlite", f"sqlite:///{db}", path=Path(db))
