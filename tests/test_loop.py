"""The event loop: merging several feeds and news in time order, history without lookahead."""

from __future__ import annotations

import numpy as np
import pytest

from engine.backtest import event_runs, merge_order, run_backtest
from engine.costs import FundingSeries
from engine.domain import News
from engine.timeutil import MS_PER_HOUR
from strategies.base import Strategy
from strategies.buy_and_hold import BuyAndHold
from tests.helpers import T0, candles, instrument


class Recorder(Strategy):
    name = "recorder"

    def on_start(self, ctx):
        self.events = [("start", ctx.time)]

    def on_bar(self, ctx, bar):
        hist = ctx.history(bar.symbol, "close")
        assert hist[-1] == bar.close and len(hist) == ctx.bars_seen(bar.symbol)
        with pytest.raises(ValueError):
            hist[0] = 1.0  # history is read-only
        self.events.append((bar.symbol, bar.ts_event))

    def on_news(self, ctx, news):
        self.events.append(("news:" + news.headline, news.ts_event))

    def on_stop(self, ctx):
        self.events.append(("stop", ctx.time))


def test_two_symbols_of_different_timeframes_and_news_merge_in_time_order():
    hourly = candles([(10, 11, 9, 10)] * 4, symbol="A")
    two_hourly = candles([(20, 21, 19, 20)] * 2, symbol="B", timeframe_ms=2 * MS_PER_HOUR)
    news = [News(T0 + 2 * MS_PER_HOUR, "at 02:00", None), News(T0 + 30 * 60_000, "at 00:30", "A")]
    strategy = Recorder()
    result = run_backtest(strategy, [hourly, two_hourly], {"A": instrument("A"), "B": instrument("B")}, news=news,
                          check_invariants=True)
    h = MS_PER_HOUR
    assert strategy.events == [
        ("start", T0), ("news:at 00:30", T0 + h // 2), ("A", T0 + h),
        ("news:at 02:00", T0 + 2 * h), ("A", T0 + 2 * h), ("B", T0 + 2 * h),  # news first, then feeds in given order
        ("A", T0 + 3 * h), ("A", T0 + 4 * h), ("B", T0 + 4 * h), ("stop", T0 + 4 * h),
    ]
    assert result.bars == 6 and result.news == 2
    assert result.equity_ts.tolist() == [T0 + k * h for k in (1, 2, 3, 4)]  # one point per distinct close


def test_merge_order_is_stable_for_equal_times():
    a, b = candles([(1, 1, 1, 1)] * 3, symbol="A"), candles([(1, 1, 1, 1)] * 3, symbol="B")
    sources, rows = merge_order([a, b], [])
    assert sources.tolist() == [0, 1, 0, 1, 0, 1] and rows.tolist() == [0, 0, 1, 1, 2, 2]


def test_event_runs_group_consecutive_events_and_cap_their_length():
    a = candles([(1, 1, 1, 1)] * 5, symbol="A")
    news = [News(T0 + 2 * MS_PER_HOUR, "x"), News(T0 + 2 * MS_PER_HOUR + 1, "y")]
    # bar 0 closes 01:00; news "x" at 02:00 precedes bar 1 closing then; "y" comes 1 ms later
    assert event_runs([a], news) == [(0, 0, 1), (-1, 0, 1), (0, 1, 1), (-1, 1, 1), (0, 2, 3)]
    assert event_runs([a], [], max_run=2) == [(0, 0, 2), (0, 2, 2), (0, 4, 1)]


def test_buy_and_hold_splits_equity_across_symbols_and_tracks_the_benchmark():
    a = candles([(10, 10, 10, 10), (10, 12, 10, 12), (12, 15, 12, 15)], symbol="A")
    b = candles([(20, 20, 20, 20), (20, 20, 10, 10), (10, 10, 10, 10)], symbol="B")
    result = run_backtest(BuyAndHold(), [a, b], {"A": instrument("A"), "B": instrument("B")}, starting_cash=1000.0,
                          check_invariants=True)
    qa, qb = (f.quantity for f in result.fills)
    assert qa == pytest.approx(1000 * 0.495 / 10, abs=1e-4) and qb == pytest.approx(1000 * 0.495 / 20, abs=1e-4)
    assert result.metrics.buy_and_hold_return == pytest.approx(np.mean([15 / 10 - 1, 10 / 20 - 1]))
    # Bought at bar 1's open (no costs in this instrument): equity = cash + positions at the last close.
    assert result.final_equity == pytest.approx(1000 - qa * 10 - qb * 20 + qa * 15 + qb * 10)


def test_buy_and_hold_buys_again_after_a_gap_up_left_its_first_order_short_of_cash():
    # sized at bar 0's close (10) with 99% of cash, the order meets bar 1's open at 11: 1,089 > 1,000 cash
    a = candles([(10, 10, 10, 10), (11, 11, 11, 11), (11, 12, 11, 12), (12, 13, 12, 13)], symbol="A")
    result = run_backtest(BuyAndHold(), [a], {"A": instrument("A")}, starting_cash=1000.0, check_invariants=True)
    assert len(result.rejections) == 1 and "insufficient cash" in result.rejections[0].reason
    (fill,) = result.fills  # the second order, sized at bar 1's close (11), fills at bar 2's open
    assert fill.price == 11 and fill.quantity == pytest.approx(990 / 11, abs=1e-4)
    assert len(result.orders) == 2  # and no third: it holds from then on


def test_funding_series_is_a_step_function():
    series = FundingSeries([T0 + 8 * MS_PER_HOUR, T0], [0.0003, 0.0001], default=0.00005)
    assert series.rate("X", T0 - 1) == 0.00005
    assert series.rate("X", T0) == 0.0001
    assert series.rate("X", T0 + 8 * MS_PER_HOUR) == 0.0003
    assert series.rate("X", T0 + 100 * MS_PER_HOUR) == 0.0003


def test_funding_file_loads_bybit_style_history(tmp_path):
    from engine.errors import DataError
    from engine.feeds.funding_files import load_funding

    path = tmp_path / "funding.csv"
    path.write_text("symbol,fundingRate,fundingRateTimestamp\nBTCUSDT,0.0001,1704067200000\nBTCUSDT,-0.0002,1704096000000\n")
    series = load_funding(path)
    assert series.rate("BTCUSDT", 1704067200000 + 1) == 0.0001 and series.rate("BTCUSDT", 1704096000000) == -0.0002
    bad = tmp_path / "bad.csv"
    bad.write_text("time,rate\n2024-01-01,abc\n")
    with pytest.raises(DataError, match="bad.csv: line 2: funding rate 'abc' is not a number"):
        load_funding(bad)
