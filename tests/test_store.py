"""The run store: migrations without drift, what a backtest records (matching its JSON summary to
the last bit), batches that keep every foreign key, and the order life cycle."""

from __future__ import annotations

import json
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
from engine.store.db import _scripts, alembic_config, current_revision, head_revision, open_store, parse_url
from engine.store.journal import start_run
from engine.store.models import Base
from engine.store.queries import find_run, load_run
from strategies.sma_cross import SmaCross
from tests.helpers import Scripted, candles, instrument
from tests.stores import StoreTarget, as_json

ROOT = Path(__file__).resolve().parents[1]


def backtest_json(capsys, monkeypatch, tmp_path: Path, target: StoreTarget, *args: str) -> dict:
    """Run ``python -m engine backtest --json`` recording into ``target``."""
    monkeypatch.chdir(tmp_path)
    assert main(["backtest", "--json", "--no-progress", "--config", str(ROOT / "config.toml"),
                 "--set", target.setting, *args]) == 0
    return json.loads(capsys.readouterr().out)


def assert_store_matches_summary(db: StoreTarget, summary: dict) -> None:
    run_pk, status, bars, final_equity, stored = db.one(
        "SELECT pk, status, bars, final_equity, summary FROM runs WHERE run_id = :id", id=summary["run_id"])
    assert status == "completed" and bars == summary["bars"] and final_equity == summary["final_equity"]
    assert as_json(stored) == json.loads(json.dumps(summary))
    orders = db.one("SELECT count(*) FROM orders WHERE run_pk = :pk", pk=run_pk)
    rejected = db.one("SELECT count(*) FROM orders WHERE run_pk = :pk AND status = 'rejected'", pk=run_pk)
    assert (orders, rejected) == (summary["orders"], summary["rejected_orders"])
    fills = db.rows("SELECT fee, spread_cost, slippage_cost FROM fills WHERE run_pk = :pk ORDER BY id", pk=run_pk)
    assert len(fills) == summary["fills"]
    fees = spread = slippage = 0.0
    for fee, sp, sl in fills:  # summed in fill order, as the portfolio does: equal to the last bit
        fees, spread, slippage = fees + fee, spread + sp, slippage + sl
    assert (fees, spread, slippage) == (summary["fees"], summary["spread"], summary["slippage"])
    funding = sum(r[0] for r in db.rows("SELECT amount FROM funding_payments WHERE run_pk = :pk ORDER BY id", pk=run_pk))
    assert funding == summary["funding"]
    equity = db.rows("SELECT ts_event, equity FROM equity WHERE run_pk = :pk ORDER BY ts_event", pk=run_pk)
    assert len(equity) == summary["bars"]  # one symbol: a point per bar
    assert equity[-1][1] == summary["final_equity"]
    assert db.one("SELECT count(*) FROM news_items WHERE run_pk = :pk", pk=run_pk) == summary["news"]
    assert db.foreign_key_violations() == []


def assert_at_head_without_drift(url: str) -> None:
    store = open_store(url)
    with store.read() as conn:
        assert current_revision(conn) == head_revision()
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        if store.url.get_backend_name() == "sqlite":
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    store.close()


def test_migrations_build_the_models_schema_without_drift(store_target):
    assert_at_head_without_drift(store_target.url)
    assert_at_head_without_drift(store_target.url)  # reopening at head changes nothing


REVISIONS = [s.revision for s in reversed(list(_scripts().walk_revisions()))]  # oldest first


@pytest.mark.parametrize("revision", REVISIONS[:-1])
def test_a_store_at_each_earlier_revision_is_upgraded_to_head_keeping_its_runs(backend, revision):
    """A store written by an older version (schema at ``revision``, one run in it) opens at head,
    the run still there, and the schema equal to a fresh one's."""
    from alembic import command
    from sqlalchemy import create_engine, text

    target = backend.new(f"at-{revision}.db")
    engine = create_engine(parse_url(target.url))
    with engine.begin() as conn:
        cfg = alembic_config(parse_url(target.url))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        conn.execute(text("INSERT INTO runs (run_id, mode, status, strategy, symbols, timeframe_ms, starting_cash, "
                          "data_label, data_fingerprint, code_version, config, started_ms, host, bars) VALUES "
                          "('old-run', 'backtest', 'completed', 'sma_cross', '[\"BTC/USDT\"]', 3600000, 10000.0, "
                          "'', '', '', '{}', 1, '', 7)"))
    engine.dispose()
    assert target.one("SELECT version_num FROM alembic_version") == revision
    assert_at_head_without_drift(target.url)
    assert target.rows("SELECT run_id, bars FROM runs") == [("old-run", 7)]


def test_backtest_records_exactly_what_its_summary_says(capsys, monkeypatch, tmp_path, store_target):
    db = store_target
    summary = backtest_json(capsys, monkeypatch, tmp_path, db)
    expected = str(db.path) if db.sqlite else parse_url(db.url).render_as_string(hide_password=True)
    assert summary["database"] == expected and summary["fills"] > 100 and summary["news"] > 0
    assert_store_matches_summary(db, summary)
    code, fingerprint, config = db.one("SELECT code_version, data_fingerprint, config FROM runs")
    assert code and len(fingerprint) == 64 and as_json(config)["strategies"]["sma_cross"]["fast"] == 10
    # every order was submitted, then filled: its history says so, in order
    first = db.one("SELECT client_order_id FROM orders ORDER BY ts_init, client_order_id LIMIT 1")
    history = db.rows("SELECT status FROM order_events WHERE client_order_id = :c ORDER BY id", c=first)
    assert history == [("submitted",), ("accepted",), ("filled",)]


def test_same_data_same_fingerprint_and_store_disabled(capsys, monkeypatch, tmp_path, store_target):
    db = store_target
    first = backtest_json(capsys, monkeypatch, tmp_path, db, "--set", "strategies.sma_cross.fast=5")
    second = backtest_json(capsys, monkeypatch, tmp_path, db, "--set", "costs.slippage_bps=9")
    prints = db.rows("SELECT DISTINCT data_fingerprint FROM runs")
    assert len(prints) == 1 and first["run_id"] != second["run_id"]
    before = db.path.read_bytes() if db.sqlite else db.rows("SELECT run_id, bars FROM runs ORDER BY pk")
    off = backtest_json(capsys, monkeypatch, tmp_path, db, "--set", "store.enabled=false")
    after = db.path.read_bytes() if db.sqlite else db.rows("SELECT run_id, bars FROM runs ORDER BY pk")
    assert off["database"] is None and after == before


@pytest.mark.slow
def test_real_btc_run_is_recorded_exactly(capsys, monkeypatch, tmp_path, shared_data, store_target):
    bars = shared_data / "ohlcv" / "crypto" / "binance_BTCUSDT_1h.csv"
    summary = backtest_json(capsys, monkeypatch, tmp_path, store_target, "--data", str(bars))
    assert summary["bars"] > 30_000 and summary["fills"] > 0
    assert_store_matches_summary(store_target, summary)


def test_rejections_are_recorded_with_their_reason(capsys, monkeypatch, tmp_path, store_target):
    db = store_target
    summary = backtest_json(capsys, monkeypatch, tmp_path, db, "--set", "instrument.min_notional=1000000")
    assert summary["fills"] == 0 and summary["rejected_orders"] == summary["orders"] > 0
    assert_store_matches_summary(db, summary)
    reasons = [r for (r,) in db.rows("SELECT reject_reason FROM orders")]
    assert len(reasons) == summary["orders"] and all("is below the minimum 1e+06" in r for r in reasons)
    assert db.rows("SELECT DISTINCT status FROM order_events ORDER BY 1") == [("rejected",), ("submitted",)]


def _two_symbol_market(n: int) -> tuple[list[BarSeries], dict]:
    market = generate_sample_market(SampleMarketConfig(bars=n, headlines_per_day=0))
    a = market.bars
    b = BarSeries.from_arrays("OTHER/USDT", a.timeframe_ms, a.ts_open, a.open * 2, a.high * 2, a.low * 2,
                              a.close * 2, a.volume, source="test")
    return [a, b], {a.symbol: instrument(a.symbol), b.symbol: instrument(b.symbol)}


def test_batches_hold_back_the_point_other_symbols_may_still_change(store_target):
    """Two symbols closing at every instant, and one headline first, so the 20,000-event checkpoint
    falls between the two bars of one instant: the stored curve must still be the final one."""
    series, instruments = _two_symbol_market(12_000)
    news = [News(int(series[0].ts_open[0]), "first", series[0].symbol, "test")]
    store = open_store(store_target.url)
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


def test_the_signal_components_are_read_from_inputs_and_from_older_records(store_target):
    """``llm_signal`` records every component under "inputs", also one the calibration left out of
    the signal; runs recorded before that hold them only in the signal. ``load_run`` reads both."""
    bars = candles([(100, 101, 99, 100)] * 3)
    store = open_store(store_target.url)
    journal = start_run(store, run_id="inputs", mode="backtest", strategy="llm_signal", symbols=["TEST"],
                        timeframe_ms=bars.timeframe_ms, starting_cash=10_000.0, config={},
                        timeframes={"TEST": bars.timeframe_ms})
    news = {"score": 0.8, "confidence": 0.5, "weight": 1.0, "count": 2}
    new = {"signal": {"direction": 1, "components": {"news": news}},
           "inputs": {"regression": {"score": -0.25, "confidence": 0.1, "weight": 1.0, "count": 1}, "news": news}}
    old = {"signal": {"direction": 1, "components": {"regression": {"score": 0.125}, "news": {**news, "count": 0}}}}
    for ts, components in zip(bars.ts_close[:2].tolist(), (new, old)):
        journal.signal(int(ts), "TEST", 0.4, confidence=0.5, components=components, model="m")
    journal.finish(run_backtest(SmaCross(), [bars], {"TEST": instrument()}, journal=journal, run_id="inputs").summary())
    signals = load_run(store, find_run(store, "inputs")).signals
    store.close()
    assert signals.regression.tolist() == [-0.25, 0.125]
    assert signals.news[0] == 0.8 and np.isnan(signals.news[1])  # no headline counted in the older one


def test_order_life_cycle_cancel_fill_and_records_for_the_llm_strategy(store_target):
    bars = candles([(100, 101, 99, 100)] * 6 + [(100, 100, 80, 85)] * 4)
    strategy = Scripted({
        0: lambda ctx: ctx.limit("TEST", 1.0, 50.0, tag="far below"),
        1: lambda ctx: ctx.limit("TEST", 1.0, 90.0, tag="fills on the drop"),
        3: lambda ctx: ctx.cancel(ctx.open_orders("TEST")[0].client_order_id),
    })
    store = open_store(store_target.url)
    journal = start_run(store, run_id="life", mode="backtest", strategy="scripted", symbols=["TEST"],
                        timeframe_ms=bars.timeframe_ms, starting_cash=10_000.0, config={},
                        timeframes={"TEST": bars.timeframe_ms})
    journal.signal(int(bars.ts_close[0]), "TEST", 0.012, confidence=0.7,
                   components={"news": 0.02, "regression": 0.004, "headlines": 3}, model="smollm2+lora")
    journal.prediction(int(bars.ts_close[0]), "TEST", "sentiment", probabilities={"bearish": 0.1, "neutral": 0.2,
                       "bullish": 0.7}, confidence=0.7, input_text="[synthetic] good news")
    result = run_backtest(strategy, [bars], {"TEST": instrument()}, journal=journal, run_id="life")
    journal.finish(result.summary())
    db = store_target
    rows = dict(db.rows("SELECT tag, status FROM orders"))
    assert rows == {"far below": "cancelled", "fills on the drop": "filled"}
    assert db.rows("SELECT filled_quantity FROM orders WHERE tag = 'fills on the drop'") == [(1.0,)]
    history = db.rows("SELECT o.tag, e.status FROM order_events e JOIN orders o USING (run_pk, client_order_id) "
                      "ORDER BY e.id")
    assert history == [("far below", "submitted"), ("far below", "accepted"), ("fills on the drop", "submitted"),
                       ("fills on the drop", "accepted"), ("far below", "cancelled"), ("fills on the drop", "filled")]
    assert as_json(db.one("SELECT components FROM signals"))["headlines"] == 3
    assert as_json(db.one("SELECT probabilities FROM predictions"))["bullish"] == 0.7
    store.close()
