"""Data quality: gaps under the 24/7 and exchange calendars, zero-volume stretches, duplicates, and
the gap policy (keep, ffill, refuse), also through a backtest's config."""

from __future__ import annotations

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
