"""Shared fixtures. Real data lives in ../shared/data (non-commercial sets are read, never copied)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data; tests that need it skip with the reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA} (it sits next to the project checkout)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def isolated_store(tmp_path_factory, monkeypatch):
    """Command-line runs inside tests record into a temporary database and log into a temporary
    file, never into the checkout's logs/engine.db and logs/engine.log. A test's own
    ``--set store.url=...`` or ``--set logging.file=...`` still wins (it comes later). Commands run
    in a subprocess set both themselves."""
    import engine.cli as cli

    folder = tmp_path_factory.mktemp("store")
    database, log_file = folder / "engine.db", folder / "engine.log"
    original = cli._config

    def config(args, flags=()):
        args.overrides = [f'store.url="sqlite:///{database}"', f'logging.file="{log_file}"', *args.overrides]
        return original(args, flags)

    monkeypatch.setattr(cli, "_config", config)
    return database


# -- the store's back-ends (tests/stores.py) ---------------------------------------------------------
@pytest.fixture(params=[pytest.param(name, marks=getattr(pytest.mark, name)) for name in ("sqlite", "postgresql")])
def backend(request, tmp_path):
    """The store's back-end of this case: SQLite, or PostgreSQL when ENGINE_TEST_PG_URL names a server
    (skipped with the reason otherwise). ``backend.new()`` gives a fresh, empty store."""
    from tests.stores import backend as make

    yield from make(request, tmp_path)


@pytest.fixture
def store_target(backend):
    """One fresh store on this case's back-end (its ``url``, and ``rows``/``one`` to read it with SQL)."""
    return backend.new()
