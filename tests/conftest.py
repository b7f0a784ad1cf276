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
    """Command-line runs inside tests record into a temporary database, never into the checkout's
    logs/engine.db. A test's own ``--set store.url=...`` still wins (it comes later)."""
    import engine.cli as cli

    database = tmp_path_factory.mktemp("store") / "engine.db"
    original = cli._config

    def config(args, flags=()):
        args.overrides = [f'store.url="sqlite:///{database}"', *args.overrides]
        return original(args, flags)

    monkeypatch.setattr(cli, "_config", config)
    return database
