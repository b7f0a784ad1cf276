"""The run store: migrations without drift, what a backtest records (matching its JSON summary to
the last bit), batches that keep every foreign key, and the order life cycle."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from engine.backtest import run_backtest
from engine.cli import main
from engine.domain import News
from engine.feeds.sample import SampleMarketConfig, generate_sample_market
from engine.series import BarSeries
from engine.store.db import current_revision, head_revision, open_store
from engine.store.journal import start_run
from engine.store.models import Base
from engine.store.queries import find_run, load_run
from strategies.sma_cross import SmaCross
from tests.helpers import Scripted, candles, instrument

ROOT = Path(__file__).resolve().parents[1]


def backtest_json(capsys, monkeypatch, tmp_path: Path, *args: str) -> tuple[dict, Path]:
    """Run ``python -m engine backtest --json`` recording into a fresh store under ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "store.db"
    assert main(["backtest", "--json", "--no-progress", "--config", str(ROOT / "config.toml"),
                 "--set", f"store.url=sqlite:///{db}", *args]) == 0
    return json.loads(capsys.readouterr().out), db


def assert_store_matches_summary(db: Path, summary: dict) -> None:
    con = sqlite3.connect(db)
    (run_pk, status, bars, final_equity, stored), = con.execute(
        "SELECT pk, status, bars, final_equity, summary FROM runs WHERE run_id = ?", (summary["run_id"],))
    assert status == "completed" and bars == summary["bars"] and final_equity == summary["final_equity"]
    assert json.loads(stored) == json.loads(json.dumps(summary))
    orders = con.execute("SELECT count(*) FROM orders WHERE run_pk = ?", (run_pk,)).fetchone()[0]
    rejected = con.execute("SELECT count(*) FROM orders WHERE run_pk = ? AND status = 'rejected'", (run_pk,)).fetchone()[0]
    assert (orders, rejected) == (summary["orders"], summary["rejected_orders"])
    fills = con.execute("SELECT fee, spread_cost, slippage_cost FROM fills WHERE run_pk = ? ORDER BY id", (run_pk,)).fetchall()
    assert len(fills) == summary["fills"]
    fees = spread = slippage = 0.0
    for fee, sp, sl in fills:  # summed in fill order, as the portfolio does: equal to the last bit
        fees, spread, slippage = fees + fee, spread + sp, slippage + sl
    assert (fees, spread, slippage) == (summary["fees"], summary["spread"], summary["slippage"])
    funding = sum(r[0] for r in con.execute("SELECT amount FROM funding_payments WHERE run_pk = ? ORDER BY id", (run_pk,)))
    assert funding == summary["funding"]
    equity = con.execute("SELECT ts_event, equity FROM equity WHERE run_pk = ? ORDER BY ts_event", (run_pk,)).fetchall()
    assert len(equity) == summary["bars"]  # one symbol: a point per bar
    assert equity[-1][1] == summary["final_equity"]
    news = con.execute("SELECT count(*) FROM news_items WHERE run_pk = ?", (run_pk,)).fetchone()[0]
    assert news == summary["news"]
    assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    con.close()


def test_migrations_build_the_models_schema_without_drift(tmp_path):
    store = open_store(tmp_path / "empty.db")
    with store.read() as conn:
        assert current_revision(conn) == head_revision()
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    store.close()
    open_store(tmp_path / "empty.db").close()  # reopening at head changes nothing


def test_backtest_records_exactly_what_its_summary_says(capsys, monkeypatch, tmp_path):
    summary, db = backtest_json(capsys, monkeypatch, tmp_path)
    assert summary["database"] == str(db) and summary["fills"] > 100 and summary["news"] > 0
    assert_store_matches_summary(db, summary)
    con = sqlite3.connect(db)
    code, fingerprint, config = con.execute("SELECT code_version, data_fingerprint, config FROM runs").fetchone()
    assert code and len(fingerprint) == 64 and json.loads(config)["strategies"]["sma_cross"]["fast"] == 10
    # every order was submitted, then filled: its history says so, in order
    (first,) = con.execute("SELECT client_order_id FROM orders ORDER BY ts_init LIMIT 1").fetchone()
    history = con.execute("SELECT status FROM order_events WHERE client_order_id = ? ORDER BY id",
                          (first,)).fetchall()
    assert history == [("submitted",), ("accepted",), ("filled",)]


def test_same_data_same_fingerprint_and_store_disabled(capsys, monkeypatch, tmp_path):
    first, db = backtest_json(capsys, monkeypatch, tmp_path, "--set", "strategies.sma_cross.fast=5")
    second, _ = backtest_json(capsys, monkeypatch, tmp_path, "--set", "costs.slippage_bps=9")
    prints = sqlite3.connect(db).execute("SELECT DISTINCT data_fingerprint FROM runs").fetchall()
    assert len(prints) == 1 and first["run_id"] != second["run_id"]
    before = db.read_bytes()
    off, _ = backtest_json(capsys, monkeypatch, tmp_path, "--set", "store.enabled=false")
    assert off["database"] is None and db.read_bytes() == before


@pytest.mark.slow
def test_real_btc_run_is_recorded_exactly(capsys, monkeypatch, tmp_path, shared_data):
    bars = shared_data / "ohlcv" / "crypto" / "binance_BTCUSDT_1h.csv"
    summary, db = backtest_json(capsys, monkeypatch, tmp_path, "--data", str(bars))
    assert summary["bars"] > 30_000 and summary["fills"] > 0
    assert_store_matches_summary(db, summary)


def test_rejections_are_recorded_with_their_reason(capsys, monkeypatch, tmp_path):
    summary, db = backtest_json(capsys, monkeypatch, tmp_path, "--set", "instrument.min_notional=1000000")
    assert summary["fills"] == 0 and summary["rejected_orders"] == summary["orders"] > 0
    assert_store_matches_summary(db, summary)
    con = sqlite3.connect(db)
    reasons = [r for (r,) in con.execute("SELECT reject_reason FROM orders")]
    assert len(reasons) == summary["orders"] and all("is below the minimum 1e+06" in r for r in reasons)
    assert con.execute("SELECT DISTINCT status FROM order_events ORDER BY 1").fetchall() == [("rejected",), ("submitted",)]


def _two_symbol_market(n: int) -> tuple[list[BarSeries], dict]:
    market = generate_sample_market(SampleMarketConfig(bars=n, headlines_per_day=0))
    a = market.bars
    b = BarSeries.from_arrays("OTHER/USDT", a.timeframe_ms, a.ts_open, a.open * 2, a.high * 2, a.low * 2,
                              a.close * 2, a.volume, source="test")
    return [a, b], {a.symbol: instrument(a.symbol), b.symbol: instrument(b.symbol)}


def test_batches_hold_back_the_point_other_symbols_may_still_change(tmp_path):
    """Two symbols closing at every instant, and one headline first, so the 20,000-event checkpoint
    falls between the two bars of one instant: the stored curve must still be the final one."""
    series, instruments = _two_symbol_market(12_000)
    news = [News(int(series[0].ts_open[0]), "first", series[0].symbol, "test")]
    store = open_store(tmp_path / "two.db")
    journal = start_run(store, run_id="two-symbols", mode="backtest", strategy="sma_cross",
                        symbols=[s.symbol for s in series], timeframe_ms=series[0].timeframe_ms, starting_cash=10_000.0,
                        config={}, timeframes={s.symbol: s.timeframe_ms for s in series})
    result = run_backtest(SmaCross(SmaCross.Params()), series, instruments, news=news, journal=journal,
                          run_id="two-symbols")
    journal.finish(result.summary())
    assert journal.batches >= 3
    data = load_run(store, find_run(store, "two-symbols"))
    assert np.array_equal(data.equity_ts, result.equity_ts) and np.array_equal(data.equity, result.equity)
    assert np.array_equal(data.gross_exposure, result.gross_exposure)
    for s in series:
        ts, closes = data.prices[s.symbol]
        assert np.array_equal(ts, s.ts_close) and np.array_equal(closes, s.close)
    assert len(data.fills) == len(result.fills) and data.fills == list(result.fills)
    assert {p["symbol"]: p["quantity"] for p in data.positions} == {
        s: p.quantity for s, p in result_positions(result, series).items()}
    store.close()


def result_positions(result, series) -> dict:
    from engine.portfolio import Portfolio

    portfolio = Portfolio(result.starting_cash)
    for fill in result.fills:
        portfolio.apply_fill(fill)
    return {s.symbol: portfolio.position(s.symbol) for s in series}


def test_order_life_cycle_cancel_fill_and_records_for_the_llm_strategy(tmp_path):
    bars = candles([(100, 101, 99, 100)] * 6 + [(100, 100, 80, 85)] * 4)
    strategy = Scripted({
        0: lambda ctx: ctx.limit("TEST", 1.0, 50.0, tag="far below"),
        1: lambda ctx: ctx.limit("TEST", 1.0, 90.0, tag="fills on the drop"),
        3: lambda ctx: ctx.cancel(ctx.open_orders("TEST")[0].client_order_id),
    })
    store = open_store(tmp_path / "life.db")
    journal = start_run(store, run_id="life", mode="backtest", strategy="scripted", symbols=["TEST"],
                        timeframe_ms=bars.timeframe_ms, starting_cash=10_000.0, config={},
                        timeframes={"TEST": bars.timeframe_ms})
    journal.signal(int(bars.ts_close[0]), "TEST", 0.012, confidence=0.7,
                   components={"news": 0.02, "regression": 0.004, "headlines": 3}, model="smollm2+lora")
    journal.prediction(int(bars.ts_close[0]), "TEST", "sentiment", probabilities={"bearish": 0.1, "neutral": 0.2,
                       "bullish": 0.7}, confidence=0.7, input_text="[synthetic] good news")
    result = run_backtest(strategy, [bars], {"TEST": instrument()}, journal=journal, run_id="life")
    journal.finish(result.summary())
    con = sqlite3.connect(tmp_path / "life.db")
    rows = dict(con.execute("SELECT tag, status FROM orders").fetchall())
    assert rows == {"far below": "cancelled", "fills on the drop": "filled"}
    assert con.execute("SELECT filled_quantity FROM orders WHERE tag = 'fills on the drop'").fetchone() == (1.0,)
    history = con.execute("SELECT o.tag, e.status FROM order_events e JOIN orders o USING (run_pk, client_order_id) "
                          "ORDER BY e.id").fetchall()
    assert history == [("far below", "submitted"), ("far below", "accepted"), ("fills on the drop", "submitted"),
                       ("fills on the drop", "accepted"), ("far below", "cancelled"), ("fills on the drop", "filled")]
    (components,) = con.execute("SELECT components FROM signals").fetchone()
    assert json.loads(components)["headlines"] == 3
    (probabilities,) = con.execute("SELECT probabilities FROM predictions").fetchone()
    assert json.loads(probabilities)["bullish"] == 0.7
    con.close()
    store.close()
