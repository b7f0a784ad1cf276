"""The paper daemon: one path with the backtest, crash safety under kill -9, the lease, status,
stop and halt, and live bars through the real ccxt client against a fake Bybit on 127.0.0.1."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main
from tests.stores import StoreTarget, as_json, as_target

ROOT = Path(__file__).resolve().parents[1]
BTC_1H = "ohlcv/crypto/binance_BTCUSDT_1h.csv"


def first_hours(tmp_path_factory, hours: int) -> Path:
    """The first ``hours`` bars of the recorded BTC file (read from ../shared/data, written to a temp dir)."""
    from tests.conftest import SHARED_DATA

    source = SHARED_DATA / BTC_1H
    if not source.is_file():
        pytest.skip(f"{source} not found (the shared data folder sits next to the checkout)")
    lines = source.read_text().splitlines()[:hours + 1]
    path = tmp_path_factory.mktemp("replay") / "BTCUSDT.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def btc_file(tmp_path_factory) -> Path:
    return first_hours(tmp_path_factory, 1500)


@pytest.fixture(scope="module")
def btc_long(tmp_path_factory) -> Path:
    return first_hours(tmp_path_factory, 12_000)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


Store = Path | StoreTarget  # a SQLite file, or a store on either back-end (tests/stores.py)


def store_arg(db: Store) -> list[str]:
    return ["--set", as_target(db).setting]


def record(db: Store, run_id: str) -> dict[str, list[tuple]]:
    """What a run decided and what happened, from the store, order ids without the run's tag."""
    target = as_target(db)
    try:
        pk = target.one("select pk from runs where run_id = :id", id=run_id)
        def rows(sql: str) -> list[tuple]:
            return target.rows(sql.replace("?", ":pk"), pk=pk)
        out = {
            "orders": rows("select substr(client_order_id, 12), symbol, side, type, quantity, status, "
                           "filled_quantity, ts_init from orders where run_pk = ? order by ts_init, client_order_id"),
            "fills": rows("select substr(client_order_id, 12), seq, side, quantity, price, reference_price, fee, "
                          "liquidity, spread_cost, slippage_cost, ts_event from fills where run_pk = ? order by seq"),
            "equity": rows("select ts_event, equity, gross_exposure from equity where run_pk = ? order by ts_event"),
            "funding": rows("select seq, ts_event, rate, amount from funding_payments where run_pk = ? order by seq"),
            "events": rows("select substr(client_order_id, 12), status, ts_event from order_events where run_pk = ? "
                           "order by ts_event, client_order_id, status"),
        }
    finally:
        target.dispose()
    return out


# -- one path ----------------------------------------------------------------------------------------
def test_a_replay_through_the_daemon_equals_the_backtest(btc_file, store_target, capsys):
    db = store_target
    code, out, err = cli(capsys, "backtest", "--data", str(btc_file), "--strategy", "sma_cross", "--json",
                         *store_arg(db))
    assert code == 0, err
    backtest = json.loads(out)
    code, out, err = cli(capsys, "paper", "start", "--replay", str(btc_file), "--strategy", "sma_cross", "--json",
                         *store_arg(db))
    assert code == 0, err
    paper = json.loads(out)
    assert set(backtest) <= set(paper), set(backtest) - set(paper)
    assert backtest["fills"] > 20  # the comparison means something: the strategy traded
    for key in ("bars", "orders", "fills", "rejected_orders", "final_equity", "fees", "spread", "slippage", "funding",
                "total_return", "buy_and_hold_return", "metrics", "start", "end", "timeframe"):
        assert paper[key] == backtest[key], key
    a, b = record(db, backtest["run_id"]), record(db, paper["run_id"])
    for table in ("orders", "fills", "equity", "funding"):
        assert a[table] == b[table], table
    assert len(a["equity"]) == 1500


# -- crash safety -------------------------------------------------------------------------------------
def paper_process(btc_file: Path, db: Store, *, crash: str = "", new: bool = False) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("ENGINE_CRASH_AT", None)
    if crash:
        env["ENGINE_CRASH_AT"] = crash
    argv = [sys.executable, "-m", "engine", "paper", "start", "--replay", str(btc_file), "--strategy", "sma_cross",
            "--json", *store_arg(db), "--set", 'logging.file=""', *(["--new"] if new else [])]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def uninterrupted(btc_file: Path, db: Store) -> dict[str, list[tuple]]:
    proc = paper_process(btc_file, db)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return record(db, json.loads(out)["run_id"])


def crash_and_resume(btc_file: Path, db: Store, crashes: list[str], random_kills: int, seed: int) -> tuple[dict, int]:
    rng = random.Random(seed)
    killed = 0
    for point in crashes:
        proc = paper_process(btc_file, db, crash=point)
        proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, f"{point}: the crash point was not reached ({proc.returncode})"
        killed += 1
    for _ in range(random_kills):
        before = bars_decided(db)
        proc = paper_process(btc_file, db)
        # A random moment once it is trading again (after its start-up and warm-up replay).
        deadline = time.monotonic() + 60
        while proc.poll() is None and bars_decided(db) <= before and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            killed += 1
            if daemon_state(db) == "finished":  # the kill came after the last commit, as it exited
                return finished_summary(db), killed
            continue
        out, err = proc.communicate()
        assert proc.returncode == 0, err
        return json.loads(out), killed  # it reached the end before the kill came
    proc = paper_process(btc_file, db)  # the same command, to the end
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out), killed


def read_or_none(db: Store, sql: str) -> Any:
    """The first column of ``sql``'s first row, or None while the store or its tables do not exist yet."""
    from sqlalchemy.exc import DBAPIError

    target = as_target(db)
    if not target.exists():
        return None
    try:
        rows = target.rows(sql)
    except DBAPIError:  # the schema is not there yet
        return None
    finally:
        target.dispose()
    return rows[0][0] if rows else None


def bars_decided(db: Store) -> int:
    return read_or_none(db, "select bars from runs") or 0


def finished_summary(db: Store) -> dict:
    return as_json(read_or_none(db, "select summary from runs where status = 'completed'"))


def assert_same_store(db: Store, run_id: str, clean: dict[str, list[tuple]]) -> None:
    got = record(db, run_id)
    for table in ("orders", "fills", "equity", "funding", "events"):
        assert got[table] == clean[table], f"{table}: {len(got[table])} rows vs {len(clean[table])}"
    target = as_target(db)  # one run, every order once, every fill once
    assert target.one("select count(*) from runs") == 1
    assert target.one("select count(*) - count(distinct client_order_id) from orders") == 0
    assert target.one("select state from daemons") == "finished"
    target.dispose()


NAMED = ["intent_committed:3", "fill_committed:5", "mid_checkpoint:300", "bar_processed:500", "mid_checkpoint:2"]


def test_kill_9_at_named_points_and_random_moments_loses_and_doubles_nothing(btc_file, backend):
    clean = uninterrupted(btc_file, backend.new("clean.db"))
    db = backend.new("crashed.db")
    summary, killed = crash_and_resume(btc_file, db, NAMED, random_kills=3, seed=11)
    assert killed >= len(NAMED) + 1
    assert_same_store(db, summary["run_id"], clean)
    assert summary["fills"] == len(clean["fills"]) > 20 and summary["bars"] == 1500


@pytest.mark.slow
def test_kill_9_at_twenty_random_moments(btc_long, tmp_path):
    clean = uninterrupted(btc_long, tmp_path / "clean.db")
    db = tmp_path / "crashed.db"
    summary, killed = crash_and_resume(btc_long, db, NAMED, random_kills=20, seed=2026)
    assert killed >= len(NAMED) + 15
    assert_same_store(db, summary["run_id"], clean)
    assert summary["bars"] == 12_000


# -- lease, status, stop, halt -------------------------------------------------------------------------
def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def daemon_state(db: Store) -> str | None:
    return read_or_none(db, "select state from daemons")


def test_second_start_refused_status_stop_then_resume(btc_file, tmp_path, capsys, store_target):
    db = store_target
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "engine", "paper", "start", "--replay", str(btc_file), "--strategy", "sma_cross",
            "--speed", "50", *store_arg(db), "--set", 'logging.file=""']
    first = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: daemon_state(db) == "running")
        second = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and "already running (pid" in second.stderr, second.stderr
        code, out, err = cli(capsys, "paper", "status", "--json", *store_arg(db))
        status = json.loads(out)
        assert code == 0 and status["state"] == "running" and status["pid"] == first.pid and not status["stale"]
        code, out, _ = cli(capsys, "paper", "status", *store_arg(db))
        assert "heartbeat" in out and "open orders" in out and "today's P&L" in out
        code, out, err = cli(capsys, "paper", "stop", *store_arg(db))
        assert code == 0 and "stopped" in out, err
        first.communicate(timeout=30)
        assert first.returncode == 0
        stopped_at = json.loads(cli(capsys, "paper", "status", "--json", *store_arg(db))[1])
        assert stopped_at["state"] == "stopped" and 0 < stopped_at["bars"] < 1500
        code, out, err = cli(capsys, "report", stopped_at["run_id"], "--json", "--out", str(tmp_path / "report"),
                             *store_arg(db))
        assert code == 0, err
        assert Path(json.loads(out)["html"]).is_file()  # a stopped paper run is reported like a backtest
    finally:
        if first.poll() is None:
            first.kill()
    code, out, err = cli(capsys, "paper", "start", "--replay", str(btc_file), "--strategy", "sma_cross", "--json",
                         *store_arg(db))
    assert code == 0, err
    assert "resuming run" in err and json.loads(out)["bars"] == 1500
    code, out, _ = cli(capsys, "runs", "--json", *store_arg(db))
    runs = json.loads(out)
    assert [(r["mode"], r["status"]) for r in runs] == [("paper", "completed")]


def test_status_of_a_dead_daemon_exits_non_zero(btc_file, tmp_path, capsys):
    db = tmp_path / "dead.db"
    proc = paper_process(btc_file, db, crash="bar_processed:700")
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    code, out, _ = cli(capsys, "paper", "status", "--json", *store_arg(db))
    status = json.loads(out)
    assert code == 1 and status["state"] == "dead" and status["stale"]
    assert status["bars"] == 699  # the 700th bar died before its checkpoint


def test_halt_with_flatten_closes_the_position_and_sends_nothing_more(btc_file, tmp_path, capsys):
    from engine.daemon import commands, specs
    from engine.daemon.runner import Daemon
    from engine.session import load_settings
    from engine.store.daemons import set_controls

    db = tmp_path / "halt.db"
    config = load_settings(ROOT / "config.toml", [f'store.url="sqlite:///{db}"', "run.strategy=\"sma_cross\"",
                                                 f"data.bars={json.dumps(str(btc_file))}", 'data.source="csv"',
                                                 'logging.file=""'])

    class Args:
        replay, warmup = str(btc_file), 0

    spec, time_source = specs.daemon_spec(Args, config, say=print)
    daemon = Daemon(spec)
    daemon.open()
    series = spec.series
    held = None
    for k in range(len(series)):  # step until a position is held
        time_source.ms = int(series.ts_close[k])
        daemon.tick(time_source.ms)
        if daemon.kernel.portfolio.quantity(series.symbol) > 0:
            held = k
            break
    assert held is not None
    set_controls(daemon.store, daemon.run_pk, halted=1, halt_reason="test", flatten_requested=1)
    daemon._controls_read = float("-inf")
    orders_before = len(daemon.kernel.loop.orders)
    for k in range(held + 1, held + 400):
        time_source.ms = int(series.ts_close[k])
        daemon.tick(time_source.ms)
        daemon._controls_read = float("-inf")
    loop = daemon.kernel.loop
    assert len(loop.orders) == orders_before + 1 and loop.orders[-1].tag == "halt:flatten"
    assert daemon.kernel.portfolio.quantity(series.symbol) == 0.0
    assert daemon.kernel.ctx.withheld > 0  # the strategy wanted to trade while halted; nothing was sent
    status = commands.status_of(daemon.store, commands._find(daemon.store, None), config)
    assert status["halted"] and status["positions"] == {}
    daemon.close()


def test_a_newer_daemon_format_in_the_store_is_refused_untouched(btc_file, tmp_path, capsys):
    db = tmp_path / "future.db"
    code, _, err = cli(capsys, "paper", "start", "--replay", str(btc_file), "--strategy", "sma_cross", "--json",
                       "--end", "2017-08-20", *store_arg(db))
    assert code == 0, err
    conn = sqlite3.connect(db)
    conn.execute("update daemons set format_version = 99, state = 'stopped'")
    conn.commit()
    conn.close()
    code, _, err = cli(capsys, "paper", "start", "--replay", str(btc_file), "--strategy", "sma_cross", "--json",
                       "--end", "2017-08-20", *store_arg(db))
    assert code == 1 and "newer version of the daemon" in err
    conn = sqlite3.connect(db)
    assert conn.execute("select format_version, state from daemons").fetchone() == (99, "stopped")
    conn.close()


def test_paper_start_refuses_bad_settings_before_running(capsys):
    code, _, err = cli(capsys, "paper", "start", "--strategy", "sma_cross")
    assert code == 2 and "--source bybit or yfinance" in err
    code, _, err = cli(capsys, "paper", "start", "--source", "bybit", "--strategy", "sma_cross")
    assert code == 2 and "needs --symbol and --timeframe" in err
    code, _, err = cli(capsys, "paper", "start", "--replay", "x.csv", "--data", "y.csv")
    assert code == 2 and "drop --data" in err


def test_a_corrupt_store_is_refused_with_its_name_and_left_as_it_was(btc_file, tmp_path, capsys):
    db = tmp_path / "broken.db"
    db.write_bytes(b"this is not a database" * 100)
    code, _, err = cli(capsys, "paper", "start", "--replay", str(btc_file), "--strategy", "sma_cross",
                       *store_arg(db))
    assert code == 1 and str(db) in err and "not a database" in err.lower(), err
    assert db.read_bytes() == b"this is not a database" * 100


def test_a_risk_limit_breached_in_the_daemon_halts_it_with_the_reason_until_cleared(btc_file, tmp_path, capsys):
    db = tmp_path / "runs.db"
    limit = ["--set", "risk.max_position_notional=3000"]  # sma_cross holds 95% of 10,000: every entry breaches it
    code, out, err = cli(capsys, "paper", "start", "--replay", str(btc_file), "--strategy", "sma_cross", "--json",
                         *limit, *store_arg(db))
    assert code == 0, err
    summary = json.loads(out)
    assert summary["fills"] == 0 and summary["rejected_orders"] >= 1
    assert summary["risk_halts"] and "risk.max_position_notional" in summary["risk_halts"][0]["reason"]
    code, out, _ = cli(capsys, "paper", "status", "--json", *store_arg(db))
    status = json.loads(out)
    assert status["halted"] and status["halt_reason"].startswith("risk limit: ")
    code, out, _ = cli(capsys, "backtest", "--data", str(btc_file), "--strategy", "sma_cross", "--json", *limit,
                       *store_arg(db))
    backtest = json.loads(out)
    assert backtest["risk_halts"][0] == summary["risk_halts"][0]  # the same breach at the same bar as the backtest
