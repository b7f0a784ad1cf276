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

ROOT = Path(__file__).resolve().parents[1]


def files(db: Path) -> dict[str, bytes]:
    """The database and its WAL/shared-memory files, byte for byte."""
    return {p.name: p.read_bytes() for p in sorted(db.parent.glob(db.name + "*"))}


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def backtest(capsys, db: Path, *args: str) -> tuple[int, str, str]:
    return cli(capsys, "backtest", "--json", "--no-progress", "--config", str(ROOT / "config.toml"),
               "--set", f"store.url=sqlite:///{db}", "--set", "logging.file=''", *args)


@pytest.fixture
def store_with_a_run(capsys, monkeypatch, tmp_path) -> tuple[Path, str]:
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "runs.db"
    code, out, _ = backtest(capsys, db, "--set", "sample.bars=300")
    assert code == 0
    return db, json.loads(out)["run_id"]


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


def test_locked_store_is_reported_after_the_busy_timeout(capsys, store_with_a_run):
    db, run_id = store_with_a_run
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
    con = sqlite3.connect(db)
    con.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    con.commit()
    con.close()
    before = files(db)
    for args in (("runs", "--db", str(db)), ("report", "--latest", "--db", str(db))):
        code, _, err = cli(capsys, *args)
        assert code == 1 and "schema revision '9999_from_the_future'" in err and "newer version" in err
    code, _, err = backtest(capsys, db)
    assert code == 1 and "Upgrade the engine" in err
    assert files(db) == before


def test_missing_run_id_lists_the_latest_runs_and_writes_nothing(capsys, store_with_a_run, tmp_path):
    db, run_id = store_with_a_run
    reports = tmp_path / "reports"
    before = files(db)
    code, out, err = cli(capsys, "report", "20990101T000000-nope", "--db", str(db),
                         "--set", f"store.reports_dir='{reports}'")
    assert code == 2 and out == ""
    assert "no run '20990101T000000-nope'" in err and run_id in err and "python -m engine runs" in err
    code, _, err = cli(capsys, "report", "--compare", run_id, "nope", "--db", str(db))
    assert code == 2 and "no run 'nope'" in err
    assert not reports.exists() and files(db) == before


def test_report_of_a_store_that_does_not_exist_creates_nothing(capsys, tmp_path):
    db = tmp_path / "absent.db"
    code, _, err = cli(capsys, "runs", "--db", str(db))
    assert code == 1 and "no store at" in err and "run a backtest first" in err
    assert not db.exists()


def test_report_needs_exactly_one_choice(capsys, store_with_a_run):
    db, run_id = store_with_a_run
    code, _, err = cli(capsys, "report", run_id, "--latest", "--db", str(db))
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
def test_killed_backtest_leaves_a_consistent_store_that_can_be_reported(capsys, tmp_path):
    db = tmp_path / "killed.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "backtest", "--json", "--no-progress", "--config", str(ROOT / "config.toml"),
         "--set", "sample.bars=2000000", "--set", "sample.headlines_per_day=0",
         "--set", f"store.url=sqlite:///{db}", "--set", f"logging.file='{tmp_path / 'engine.log'}'"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        fills = 0
        deadline = time.monotonic() + 60
        while fills < 100:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the run recorded no fills within a minute"
            time.sleep(0.05)
            if db.exists():
                try:
                    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
                    fills = con.execute("SELECT count(*) FROM fills").fetchone()[0]
                    con.close()
                except sqlite3.OperationalError:  # the schema is not there yet
                    fills = 0
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    orphans = con.execute("SELECT count(*) FROM fills f LEFT JOIN orders o USING (run_pk, client_order_id) "
                          "WHERE o.client_order_id IS NULL").fetchone()[0]
    assert orphans == 0
    (run_id, status, bars), = con.execute("SELECT run_id, status, bars FROM runs").fetchall()
    assert status == "running" and 0 < bars < 2_000_000
    (points, last), = con.execute("SELECT count(*), max(ts_event) FROM equity").fetchall()
    assert 0 < points <= bars
    filled = con.execute("SELECT count(*) FROM orders WHERE status = 'filled'").fetchone()[0]
    assert filled == con.execute("SELECT count(*) FROM fills").fetchone()[0]
    con.close()

    code, out, _ = cli(capsys, "runs", "--db", str(db), "--json")
    assert code == 0 and json.loads(out)[0]["status"] == "incomplete"
    code, out, err = cli(capsys, "report", run_id, "--db", str(db), "--out", str(tmp_path / "report"), "--json")
    assert code == 0, err
    page = Path(json.loads(out)["html"]).read_text()
    assert "did not finish" in page and "incomplete" in page
    store = open_store(db, create=False)
    store.close()
