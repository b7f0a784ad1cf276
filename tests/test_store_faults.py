"""Bad stores end with a message that says what to do, and nothing is overwritten: a corrupt file, a
locked database, a schema from a newer version, a missing run id. And a backtest killed mid-run
leaves a consistent store whose run shows as incomplete and can be reported."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli import main
from engine.store.db import open_store
from engine.store.queries import effective_status
from tests.stores import StoreTarget, as_target, sqlite_target

ROOT = Path(__file__).resolve().parents[1]


def files(db: Path) -> dict[str, bytes]:
    """The database and its WAL/shared-memory files, byte for byte."""
    return {p.name: p.read_bytes() for p in sorted(db.parent.glob(db.name + "*"))}


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def snapshot(db: StoreTarget) -> object:
    """Everything a refusal must leave alone: the SQLite files byte for byte; on PostgreSQL the
    schema revision and every run and daemon row."""
    db.dispose()  # our own connections closed first: an open one holds the WAL's shared memory
    if db.sqlite:
        return files(db.path)
    out = {t: db.rows(f"SELECT * FROM {t} ORDER BY 1") for t in ("alembic_version", "runs", "daemons")}
    db.dispose()
    return out


def backtest(capsys, db: Path | StoreTarget, *args: str) -> tuple[int, str, str]:
    return cli(capsys, "backtest", "--json", "--no-progress", "--config", str(ROOT / "config.toml"),
               "--set", as_target(db).setting, "--set", "logging.file=''", *args)


def record_a_run(capsys, monkeypatch, tmp_path, db: StoreTarget) -> tuple[StoreTarget, str]:
    monkeypatch.chdir(tmp_path)
    code, out, _ = backtest(capsys, db, "--set", "sample.bars=300")
    assert code == 0
    return db, json.loads(out)["run_id"]


@pytest.fixture
def store_with_a_run(capsys, monkeypatch, tmp_path, store_target) -> tuple[StoreTarget, str]:
    """A store on this case's back-end holding one finished run."""
    return record_a_run(capsys, monkeypatch, tmp_path, store_target)


@pytest.fixture
def sqlite_store_with_a_run(capsys, monkeypatch, tmp_path) -> tuple[Path, str]:
    db, run_id = record_a_run(capsys, monkeypatch, tmp_path, sqlite_target(tmp_path, "runs.db"))
    return db.path, run_id


def test_corrupt_file_is_refused_and_left_alone(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "corrupt.db"
    db.write_bytes(b"this is not a database\x00\xff" * 200)
    before = files(db)
    for args in (("runs", "--db", str(db)), ("report", "--latest", "--db", str(db))):
        code, out, err = cli(capsys, *args)
        assert code == 1 and out == ""
        assert err.startswith("error: the store ") and "is not a readable SQLite database" in err
        assert "Move it aside" in err
    code, out, err = backtest(capsys, db)
    assert code == 1 and out == "" and "is not a readable SQLite database" in err
    assert files(db) == before


def test_locked_store_is_reported_after_the_busy_timeout(capsys, sqlite_store_with_a_run):
    """SQLite's whole-database write lock; PostgreSQL locks rows (the concurrency test covers both)."""
    db, run_id = sqlite_store_with_a_run
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        before = files(db)
        started = time.perf_counter()
        code, out, err = backtest(capsys, db, "--set", "store.busy_timeout=0.2")
        assert time.perf_counter() - started < 5
        assert code == 1 and out == "" and "is locked by another process" in err and "busy_timeout" in err
        assert files(db) == before
        code, out, _ = cli(capsys, "runs", "--db", str(db))  # readers are never blocked by the writer (WAL)
        assert code == 0 and run_id in out
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_newer_schema_is_refused_without_changing_anything(capsys, store_with_a_run):
    db, _ = store_with_a_run
    db.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    before = snapshot(db)
    for args in (("runs", "--db", db.url), ("report", "--latest", "--db", db.url)):
        code, _, err = cli(capsys, *args)
        assert code == 1 and "schema revision '9999_from_the_future'" in err and "newer version" in err
    code, _, err = backtest(capsys, db)
    assert code == 1 and "Upgrade the engine" in err
    assert snapshot(db) == before


def test_missing_run_id_lists_the_latest_runs_and_writes_nothing(capsys, store_with_a_run, tmp_path):
    db, run_id = store_with_a_run
    reports = tmp_path / "reports"
    before = snapshot(db)
    code, out, err = cli(capsys, "report", "20990101T000000-nope", "--db", db.url,
                         "--set", f"store.reports_dir='{reports}'")
    assert code == 2 and out == ""
    assert "no run '20990101T000000-nope'" in err and run_id in err and "python -m engine runs" in err
    code, _, err = cli(capsys, "report", "--compare", run_id, "nope", "--db", db.url)
    assert code == 2 and "no run 'nope'" in err
    assert not reports.exists() and snapshot(db) == before


def test_report_of_a_store_that_does_not_exist_creates_nothing(capsys, tmp_path):
    db = tmp_path / "absent.db"
    code, _, err = cli(capsys, "runs", "--db", str(db))
    assert code == 1 and "no store at" in err and "run a backtest first" in err
    assert not db.exists()


def test_report_needs_exactly_one_choice(capsys, store_with_a_run):
    db, run_id = store_with_a_run
    code, _, err = cli(capsys, "report", run_id, "--latest", "--db", db.url)
    assert code == 2 and "exactly one of" in err


def test_liveness_of_a_running_run():
    import socket

    here, now = socket.gethostname(), 10_000_000
    assert effective_status("completed", here, 1, now, now) == "completed"
    assert effective_status("running", here, os.getpid(), now, now) == "running"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert effective_status("running", here, dead.pid, now, now) == "incomplete"
    assert effective_status("running", "elsewhere", 1, now - 60_000, now) == "running"
    assert effective_status("running", "elsewhere", 1, now - 3_600_000, now) == "incomplete"


@pytest.mark.slow
def test_killed_backtest_leaves_a_consistent_store_that_can_be_reported(capsys, tmp_path, store_target):
    from sqlalchemy.exc import DBAPIError

    db = store_target
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "backtest", "--json", "--no-progress", "--config", str(ROOT / "config.toml"),
         "--set", "sample.bars=2000000", "--set", "sample.headlines_per_day=0",
         "--set", db.setting, "--set", f"logging.file='{tmp_path / 'engine.log'}'"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        fills = 0
        deadline = time.monotonic() + 60
        while fills < 100:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the run recorded no fills within a minute"
            time.sleep(0.05)
            if db.sqlite and db.path.exists():
                try:
                    con = sqlite3.connect(f"file:{db.path}?mode=ro", uri=True, timeout=1)
                    fills = con.execute("SELECT count(*) FROM fills").fetchone()[0]
                    con.close()
                except sqlite3.OperationalError:  # the schema is not there yet
                    fills = 0
            elif not db.sqlite:
                try:
                    fills = db.one("SELECT count(*) FROM fills")
                except DBAPIError:  # the schema is not there yet
                    fills = 0
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    if db.sqlite:
        assert db.rows("PRAGMA integrity_check") == [("ok",)]
    assert db.foreign_key_violations() == []
    orphans = db.one("SELECT count(*) FROM fills f LEFT JOIN orders o USING (run_pk, client_order_id) "
                     "WHERE o.client_order_id IS NULL")
    assert orphans == 0
    (run_id, status, bars), = db.rows("SELECT run_id, status, bars FROM runs")
    assert status == "running" and 0 < bars < 2_000_000
    (points, last), = db.rows("SELECT count(*), max(ts_event) FROM equity")
    assert 0 < points <= bars
    filled = db.one("SELECT count(*) FROM orders WHERE status = 'filled'")
    assert filled == db.one("SELECT count(*) FROM fills")
    db.dispose()

    code, out, _ = cli(capsys, "runs", "--db", db.url, "--json")
    assert code == 0 and json.loads(out)[0]["status"] == "incomplete"
    code, out, err = cli(capsys, "report", run_id, "--db", db.url, "--out", str(tmp_path / "report"), "--json")
    assert code == 0, err
    page = Path(json.loads(out)["html"]).read_text()
    assert "did not finish" in page and "incomplete" in page
    store = open_store(db.url, create=False)
    store.close()
