"""Opening the store: engine creation, SQLite pragmas, migrations to head, and errors a person can act on.

``open_store(url)`` returns a ``Store`` whose schema is at the newest revision this code knows,
upgrading an older database first (Alembic, ``engine/store/migrations``). It refuses, with a
message saying what to do and without writing anything:

- a file that is not a SQLite database, or is corrupt;
- a database locked by another process for longer than the busy timeout;
- a database whose schema revision this code does not know (written by a newer version);
- for reading commands (``create=False``), a SQLite file that does not exist.

SQLite specifics: WAL journal (readers never block the writer), ``synchronous=NORMAL`` (a crash of
the process never loses a committed transaction; only a power cut can lose the last few), foreign
keys enforced, a 64 MiB page cache, the WAL checkpointed into the main file every 64 MiB rather than
every 4 MiB (fewer rewrites of the same pages during a long backtest), and real transactions: pysqlite's implicit transaction handling is switched off and
every transaction starts with ``BEGIN`` (reads) or ``BEGIN IMMEDIATE`` (writes, so a writer takes
its lock up front and waits for it, instead of failing half-way on a lock upgrade).

PostgreSQL specifics: reads run at ``REPEATABLE READ``, so all the statements of one read (a report
loads a dozen tables) see the same committed batches; at the server's default, ``READ COMMITTED``,
each statement saw the commits made since the one before, and a report of a running run could mix
two batches (fills without their orders' new status). A read-only transaction at that level never
waits for a writer and never fails on one. Writes stay at ``READ COMMITTED``.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

from engine.errors import ConfigError, EngineError
from engine.store.redact import display_url

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class StoreError(EngineError):
    """The store cannot be used as it is (corrupt, locked, newer schema); the message says what to do."""


class RunNotFound(StoreError):
    """No run with the requested id."""


def parse_url(text: str) -> URL:
    """A SQLAlchemy URL, or a plain file path (read as a SQLite file). A URL that cannot be read is a
    ``ConfigError`` naming it with its password hidden."""
    if "://" not in text:
        return make_url("sqlite:///" + text)
    try:
        return make_url(text)
    except (sa_exc.ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        reason = str(exc).replace(text, "the URL")
        raise ConfigError(f"store.url = {display_url(text)!r} is not a database URL ({reason}); "
                          "e.g. sqlite:///logs/engine.db or postgresql+psycopg://user@host/db") from None


def sqlite_path(url: URL) -> Path | None:
    """The file of a file-backed SQLite URL, else ``None``."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def describe_url(url: URL) -> str:
    """How a run's JSON summary names its database: the absolute path of a SQLite file, else the
    URL without its password."""
    path = sqlite_path(url)
    return str(path.resolve()) if path is not None else url.render_as_string(hide_password=True)


@dataclass
class Store:
    engine: Engine  # reads (deferred BEGIN on SQLite, REPEATABLE READ on PostgreSQL)
    writer: Engine  # writes (BEGIN IMMEDIATE on SQLite); the same pool
    url: URL

    @property
    def name(self) -> str:
        return describe_url(self.url)

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with translate_errors(self), self.writer.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        with translate_errors(self), self.engine.connect() as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()  # the pool both share


def open_store(url: str | Path | URL, *, create: bool = True, busy_timeout: float = 5.0) -> Store:
    """Open (and, with ``create``, create) the store at ``url`` (a URL, or a SQLite file path) and
    bring its schema to head."""
    url = url if isinstance(url, URL) else parse_url(str(url))
    path = sqlite_path(url)
    if path is not None:
        if not path.exists():
            if not create:
                raise StoreError(f"no store at {path.resolve()}: run a backtest first, or point store.url "
                                 "(--db or --set store.url=...) at an existing database")
            path.parent.mkdir(parents=True, exist_ok=True)
        elif path.is_dir():
            raise StoreError(f"store path {path.resolve()} is a directory; store.url must name a file")
    store = _make_store(url, busy_timeout)
    try:
        migrate(store)
    except BaseException:
        store.close()
        raise
    return store


def _make_store(url: URL, busy_timeout: float) -> Store:
    kwargs: dict[str, Any] = {}
    sqlite = url.get_backend_name() == "sqlite"
    if sqlite:
        # Pooled: closing the last connection to a WAL database checkpoints it, which must not happen
        # after every batch of a backtest. ``Store.close`` disposes of the pool.
        kwargs.update(connect_args={"timeout": busy_timeout})
    try:
        engine = create_engine(url, **kwargs)
    except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ImportError) as exc:
        raise ConfigError(f"store.url {url.render_as_string(hide_password=True)}: {_scrub(str(exc), url)}") from None
    if sqlite:
        _sqlite_events(engine, busy_timeout)
    reader = engine
    if url.get_backend_name() == "postgresql":
        reader = engine.execution_options(isolation_level="REPEATABLE READ")
    return Store(engine=reader, writer=engine.execution_options(store_write=True), url=url)


def _sqlite_events(engine: Engine, busy_timeout: float) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # no implicit transactions: ours start in _begin
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            cur.execute("PRAGMA foreign_keys = ON")
            mode = cur.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "wal":
                cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
            cur.execute("PRAGMA cache_size = -65536")
            cur.execute("PRAGMA wal_autocheckpoint = 16384")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("store_write") else "BEGIN")


# -- errors --------------------------------------------------------------------------------------
@contextlib.contextmanager
def translate_errors(store_or_url: Store | URL) -> Iterator[None]:
    """Turn the driver's corrupt/locked errors into ``StoreError`` messages that say what to do."""
    url = store_or_url.url if isinstance(store_or_url, Store) else store_or_url
    try:
        yield
    except sa_exc.DBAPIError as exc:
        raise _explain(exc, url) from exc
    except sqlite3.DatabaseError as exc:  # raised inside our connect hook, before SQLAlchemy wraps it
        raise _explain(exc, url) from exc


def _scrub(text: str, url: URL) -> str:
    """A driver's message with the URL's password cut out, should the driver have echoed it."""
    return text.replace(url.password, "***") if url.password else text


def _explain(exc: BaseException, url: URL) -> StoreError:
    text = _scrub(str(getattr(exc, "orig", None) or exc).strip(), url)
    where = describe_url(url)
    low = text.lower()
    if "locked" in low or "busy" in low:
        return StoreError(f"the store {where} is locked by another process ({text}); wait for it to finish "
                          "(or raise store.busy_timeout), or record elsewhere with --set store.url=...")
    if "not a database" in low or "malformed" in low or "corrupt" in low or "file is encrypted" in low:
        return StoreError(f"the store {where} is not a readable SQLite database ({text}); it was left untouched. "
                          "Move it aside to start a new store, or point store.url (--set store.url=...) elsewhere")
    if "unable to open" in low or "readonly" in low or "read-only" in low:
        return StoreError(f"cannot write the store {where} ({text}); check the path and its permissions")
    return StoreError(f"store {where}: {text}")


# -- migrations ----------------------------------------------------------------------------------
def alembic_config(url: URL | None = None) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


@lru_cache(maxsize=1)
def _scripts() -> Any:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    return _scripts().get_current_head()


def current_revision(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def _check_known(revision: str | None, store: Store) -> None:
    if revision is None:
        return
    known = {s.revision for s in _scripts().walk_revisions()}
    if revision not in known:
        raise StoreError(
            f"the store {store.name} has schema revision {revision!r}, which this version of the engine does "
            f"not know (its newest is {head_revision()!r}): it was written by a newer version. Upgrade the "
            "engine, or point store.url (--set store.url=...) at another database; nothing was changed")


def migrate(store: Store) -> None:
    """Bring the schema to head: check first in a read transaction, upgrade under a write lock."""
    from alembic import command

    head = head_revision()
    with store.read() as conn:
        current = current_revision(conn)
        if current is None and inspect(conn).get_table_names():
            tables = ", ".join(sorted(inspect(conn).get_table_names())[:5])
            raise StoreError(f"{store.name} holds tables ({tables}) but no schema revision: it is not an "
                             "engine store. Point store.url (--set store.url=...) at another database")
    _check_known(current, store)
    if current == head:
        return
    with store.write() as conn:
        current = current_revision(conn)  # another process may have upgraded it meanwhile
        _check_known(current, store)
        if current != head:
            cfg = alembic_config(store.url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
