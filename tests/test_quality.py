"""Data quality: gaps under the 24/7 and exchange calendars, zero-volume stretches, duplicates,
suspicious prices (outliers, spikes, stale stretches) on made-up and real bars, and the gap policy
(keep, ffill, refuse) and quality policy (warn, refuse), also through a backtest's config and the CLI."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from engine.errors import DataError
from engine.feeds.quality import apply_gap_policy, check_bars, dedupe_rows, find_gaps, guess_calendar
from engine.series import BarSeries
from engine.timeutil import MS_PER_DAY, MS_PER_HOUR, parse_instant

H, D = MS_PER_HOUR, MS_PER_DAY


def series(ts, *, tf=H, volume=None, symbol="X"):
    ts = np.asarray(ts, dtype=np.int64)
    close = 100 + np.arange(len(ts), dtype=float)
    return BarSeries.from_arrays(symbol, tf, ts, close - 0.5, close + 1, close - 1, close,
                                 np.ones(len(ts)) if volume is None else volume)


def days(*dates):
    return [parse_instant(d) for d in dates]


def test_24_7_gaps_count_missing_bars():
    t0 = parse_instant("2024-01-01")
    report = check_bars(series([t0, t0 + H, t0 + 4 * H, t0 + 5 * H, t0 + 7 * H]), "24/7")
    assert [(g.after, g.before, g.missing) for g in report.gaps] == [(t0 + H, t0 + 4 * H, 2), (t0 + 5 * H, t0 + 7 * H, 1)]
    assert report.missing_bars == 3 and "2 gaps (3 missing bars" in report.summary()
    assert "stamped at bar open, UTC" in report.summary()


def test_exchange_daily_weekends_and_single_holidays_are_not_gaps():
    # Fri 2024-01-12, (Mon 15th MLK holiday), Tue 16th, Wed 17th, then nothing until Tue 23rd
    ts = days("2024-01-11", "2024-01-12", "2024-01-16", "2024-01-17", "2024-01-23")
    gaps = find_gaps(np.array(ts), D, "exchange")
    assert [(g.after, g.before, g.missing) for g in gaps] == [(ts[3], ts[4], 3)]  # Thu 18, Fri 19, Mon 22
    assert len(find_gaps(np.array(ts), D, "24/7")) == 2


def test_exchange_intraday_nights_are_not_gaps_but_holes_inside_a_day_are():
    day1 = parse_instant("2024-01-02T14:30")
    day2 = parse_instant("2024-01-03T14:30")
    ts = [day1, day1 + H, day1 + 2 * H, day2, day2 + 3 * H]
    gaps = find_gaps(np.array(ts), H, "exchange")
    assert [(g.after, g.missing) for g in gaps] == [(day2, 2)]


def test_calendar_is_guessed_from_weekend_bars():
    weekdays = [d for d in range(parse_instant("2024-01-01"), parse_instant("2024-02-01"), D)
                if (d // D + 3) % 7 < 5]
    assert guess_calendar(series(weekdays, tf=D)) == "exchange"
    assert guess_calendar(series(range(parse_instant("2024-01-01"), parse_instant("2024-02-01"), D), tf=D)) == "24/7"
    assert guess_calendar(series(weekdays[:5], tf=D)) == "24/7"  # too short to tell


def test_zero_volume_stretches_of_three_or_more():
    t0 = parse_instant("2024-01-01")
    volume = np.array([1, 0, 0, 1, 0, 0, 0, 0, 1, 0], float)
    report = check_bars(series([t0 + i * H for i in range(10)], volume=volume), "24/7")
    assert [(s.first, s.bars) for s in report.zero_volume] == [(t0 + 4 * H, 4)]
    assert "1 zero-volume stretches" in report.summary()
    flat = check_bars(series([t0 + i * H for i in range(5)], volume=np.zeros(5)), "24/7")
    assert "volume is zero throughout" in flat.summary()


def test_dedupe_rows_keeps_the_latest_and_counts():
    frame = pd.DataFrame({"timestamp": [3, 1, 2, 1, 3], "close": [30.0, 10.0, 20.0, 10.0, 31.0]})
    kept, identical, conflicts = dedupe_rows(frame)
    assert kept["timestamp"].tolist() == [1, 2, 3] and kept["close"].tolist() == [10.0, 20.0, 31.0]
    assert (identical, conflicts) == (1, 1)


def gappy():
    t0 = parse_instant("2024-01-01")
    return series([t0, t0 + H, t0 + 4 * H, t0 + 5 * H]), t0


def test_gap_policy_keep_changes_nothing():
    s, _ = gappy()
    out, note = apply_gap_policy(s, "keep", check_bars(s, "24/7"))
    assert out is s and note is None


def test_gap_policy_ffill_inserts_flat_bars_at_the_previous_close():
    s, t0 = gappy()
    out, note = apply_gap_policy(s, "ffill", check_bars(s, "24/7"))
    assert out.ts_open.tolist() == [t0 + i * H for i in range(6)]
    prev_close = s.close[1]
    for i in (2, 3):
        assert (out.open[i], out.high[i], out.low[i], out.close[i], out.volume[i]) == (prev_close,) * 4 + (0.0,)
    assert out.close[4] == s.close[2] and "inserted 2 flat bars" in note
    assert check_bars(out, "24/7").gaps == ()


def test_gap_policy_ffill_on_exchange_daily_fills_weekdays_only():
    ts = days("2024-01-05", "2024-01-11")  # Fri, then Thu: Mon-Wed missing
    s = series(ts, tf=D)
    out, _ = apply_gap_policy(s, "ffill", check_bars(s, "exchange"))
    assert out.ts_open.tolist() == days("2024-01-05", "2024-01-08", "2024-01-09", "2024-01-10", "2024-01-11")


def test_gap_policy_refuse_lists_the_gaps_and_the_way_out():
    s, _ = gappy()
    with pytest.raises(DataError, match=r"1 gaps \(2 missing bars: 2024-01-01T01:00:00Z -> 2024-01-01T04:00:00Z.*"
                                        r"data.gap_policy = 'refuse'.*'ffill'"):
        apply_gap_policy(s, "refuse", check_bars(s, "24/7"))


def test_backtest_on_a_csv_reports_quality_and_applies_the_policy(tmp_path, monkeypatch):
    from engine.config import load_config
    from engine.session import prepare_backtest

    t0 = parse_instant("2024-01-01")
    rows = [t0 + i * H for i in range(60) if i not in (20, 21)]
    pd.DataFrame({"timestamp": rows, "open": 100.0, "high": 101.0, "low": 99.0, "close": 100.5, "volume": 1.0}).to_csv(
        tmp_path / "bars.csv", index=False)
    plan = prepare_backtest(load_config(None, [f'data.bars="{tmp_path / "bars.csv"}"', 'data.gap_policy="ffill"']))
    assert len(plan.series[0]) == 60
    assert any("1 gaps (2 missing bars" in n for n in plan.notes) and any("inserted 2 flat bars" in n for n in plan.notes)
    with pytest.raises(DataError, match="gap_policy = 'refuse'"):
        prepare_backtest(load_config(None, [f'data.bars="{tmp_path / "bars.csv"}"', 'data.gap_policy="refuse"']))


# ---------------------------------------------------------------- suspicious prices


def walk(n: int = 300, *, sd: float = 0.01, seed: int = 3, tf: int = H, volume: float = 1.0) -> tuple[np.ndarray, ...]:
    """ts, open, high, low, close, volume of a seeded random walk (log returns of ``sd``)."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, sd, n)))
    open_ = np.concatenate(([100.0], close[:-1]))
    ts = parse_instant("2024-01-01") + tf * np.arange(n, dtype=np.int64)
    return (ts, open_, np.maximum(open_, close) * 1.001, np.minimum(open_, close) * 0.999, close,
            np.full(n, volume))


def bars(columns: tuple[np.ndarray, ...], tf: int = H) -> BarSeries:
    ts, o, h, lo, c, v = columns
    return BarSeries.from_arrays("X", tf, ts, o, h, lo, c, v)


def scaled(columns: tuple[np.ndarray, ...], rows: slice, factor: float) -> tuple[np.ndarray, ...]:
    """``columns`` with every price of ``rows`` multiplied by ``factor``."""
    out = [c.copy() for c in columns]
    for prices in out[1:5]:
        prices[rows] *= factor
    return tuple(out)


def test_a_1000x_price_for_one_bar_is_a_spike_with_its_time():
    columns = walk()
    report = check_bars(bars(scaled(columns, slice(120, 121), 1000.0)), "24/7")
    (spike,) = report.spikes
    assert (spike.first, spike.last, spike.bars) == (columns[0][120], columns[0][120], 1)
    assert spike.factor == pytest.approx(1000 * columns[4][120] / columns[4][119])
    assert report.outliers == () and report.suspect and not report.clean
    assert "1 spikes out and back (2024-01-06T00:00:00Z (x" in report.summary()
    assert check_bars(bars(columns), "24/7").suspect is False  # the same walk without it


def test_a_spike_of_three_bars_and_a_halving_on_daily_bars_are_flagged():
    columns = walk(tf=D, sd=0.03)
    (spike,) = check_bars(bars(scaled(columns, slice(50, 53), 20.0), D), "24/7").spikes
    assert (spike.first, spike.last, spike.bars) == (columns[0][50], columns[0][52], 3)
    assert len(check_bars(bars(scaled(columns, slice(50, 51), 0.5), D), "24/7").spikes) == 1


def test_a_jump_that_stays_is_an_outlier_not_a_spike():
    columns = walk()
    report = check_bars(bars(scaled(columns, slice(200, None), 1000.0)), "24/7")
    (outlier,) = report.outliers
    assert outlier.ts == columns[0][200] and outlier.close / outlier.previous == pytest.approx(
        1000 * columns[4][200] / columns[4][199])
    assert report.spikes == () and "1 outlier bar returns (beyond 50 robust sd) (2024-01-09T08:00:00Z close" in report.summary()


def test_real_looking_crashes_are_not_flagged():
    # hourly bars (0.3% a bar): a -18% hour that stays (COVID, 2020-03-12) is 67 robust sd, and a
    # -10% hour straight back (BTC on 2017-09-05) 35 sd each way, but neither is a +50% / -33% move
    hourly = scaled(scaled(walk(sd=0.003), slice(100, None), 0.82), slice(200, 201), 0.9)
    report = check_bars(bars(hourly), "24/7")
    assert report.outliers == () and report.spikes == ()
    daily = walk(tf=D, sd=0.025)  # daily: -40% (BTC on 2020-03-12) is about 20 robust sd
    report = check_bars(bars(scaled(daily, slice(100, None), 0.6), D), "24/7")
    assert report.outliers == () and report.spikes == ()


def test_stale_stretches_of_identical_ohlc_while_volume_trades():
    ts, o, h, lo, c, v = walk(60)
    for start, length in ((10, 6), (30, 4)):  # 6 bars repeat bar 10; 4 bars are too few
        for prices in (o, h, lo, c):
            prices[start + 1:start + length] = prices[start]
    o[40:50], h[40:50], lo[40:50], c[40:50], v[40:50] = c[39], c[39], c[39], c[39], 0.0  # an outage
    report = check_bars(BarSeries.from_arrays("X", H, ts, o, h, lo, c, v), "24/7")
    assert [(s.first, s.last, s.bars) for s in report.stale] == [(ts[10], ts[15], 6)]
    assert [(s.first, s.bars) for s in report.zero_volume] == [(ts[40], 10)]
    assert "1 stale stretches of 5+ bars with identical OHLC (2024-01-01T10:00:00Z .. 2024-01-01T15:00:00Z (6 bars))" \
        in report.summary()
    no_volume = check_bars(BarSeries.from_arrays("X", H, ts, o, h, lo, c, np.zeros(60)), "24/7")
    assert [s.bars for s in no_volume.stale] == [6, 10]  # no volume anywhere: prices are all there is


@pytest.mark.parametrize("relative", ["ohlcv/crypto/binance_BTCUSDT_1h.csv", "ohlcv/crypto/binance_BTCUSDT_1d.csv",
                                      "ohlcv/crypto/binance_ETHUSDT_1h.csv.gz"])
def test_real_binance_files_have_no_suspicious_prices(shared_data, relative):
    from engine.feeds.bar_files import load_bars

    report = check_bars(load_bars(shared_data / relative).series)
    # BTC/ETH 1h hold the COVID crash (-18% in an hour), 1d its -40% day, and 15 flat zero-volume outages
    assert (report.outliers, report.spikes, report.stale) == ((), (), ()) and not report.suspect
    assert "outlier" not in report.summary() and "spike" not in report.summary()


def spiked_csv(tmp_path) -> tuple[str, str]:
    """A bar file with one 1000x bar; its path and that bar's time."""
    columns = scaled(walk(), slice(120, 121), 1000.0)
    pd.DataFrame(dict(zip(("timestamp", "open", "high", "low", "close", "volume"), columns))).to_csv(
        tmp_path / "bars.csv", index=False)
    return str(tmp_path / "bars.csv"), "2024-01-06T00:00:00Z"


def test_quality_policy_warn_runs_with_a_note_and_refuse_stops_naming_file_time_and_problem(tmp_path):
    from engine.config import load_config
    from engine.session import prepare_backtest

    path, when = spiked_csv(tmp_path)
    plan = prepare_backtest(load_config(None, [f'data.bars="{path}"']))  # warn is the default
    assert len(plan.series[0]) == 300
    assert any(f"1 spikes out and back ({when} (x" in n for n in plan.notes)
    assert any(n.startswith("data: WARNING bars.csv: the backtest runs on suspicious prices (1 spikes") for n in plan.notes)
    with pytest.raises(DataError, match=rf"^bars\.csv: 1 spikes out and back \({when} \(x.*quality_policy = 'refuse'"):
        prepare_backtest(load_config(None, [f'data.bars="{path}"', 'data.quality_policy="refuse"']))


def test_quality_policy_refuse_through_the_cli_and_a_bad_value(tmp_path, capsys):
    from engine.cli import main

    path, when = spiked_csv(tmp_path)
    assert main(["backtest", "--data", path, "--no-progress", "--set", 'data.quality_policy="refuse"']) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: bars.csv: 1 spikes out and back ({when} (x") and "Traceback" not in err
    assert main(["backtest", "--data", path, "--set", 'data.quality_policy="strict"']) == 2
    assert "expected one of 'warn', 'refuse'" in capsys.readouterr().err


def test_data_show_lists_the_suspicious_prices_of_a_cached_table(tmp_path, capsys):
    import json

    from engine.cli import main
    from engine.feeds.cache import CacheKey, MarketCache

    ts, o, h, lo, c, v = scaled(walk(), slice(120, 121), 1000.0)
    frame = pd.DataFrame({"timestamp": ts, "open": o, "high": h, "low": lo, "close": c, "volume": v})
    MarketCache(tmp_path).write(CacheKey("bybit", "BTC/USDT", "bars", "1h"), frame, [(int(ts[0]), int(ts[-1]) + H)])
    assert main(["data", "show", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "outliers/spikes  stale" in out and re.search(r"bars-1h .* 300 +0 \(0\) +0 +0/1 +0\n", out)
    assert "suspicious prices in bybit BTC/USDT bars-1h: 1 spikes out and back (2024-01-06T00:00:00Z (x" in out
    assert main(["data", "show", "--cache-dir", str(tmp_path), "--json"]) == 0
    (table,) = json.loads(capsys.readouterr().out)["tables"]
    assert (table["outliers"], table["spikes"], table["stale_stretches"]) == (0, 1, 0)
