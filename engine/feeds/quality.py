"""Data quality of bar histories: gaps, duplicate bars and zero-volume stretches, and the gap policy.

Conventions (recorded with every cached file too): times are UTC epoch milliseconds and a bar is
stamped with its OPEN time. A *gap* is a run of bars missing between two bars present, judged by the
market's calendar:

- ``"24/7"`` (crypto): every timeframe step must have a bar.
- ``"exchange"`` (stocks): nights, weekends and single-day holidays are not gaps. Daily bars count
  only weekdays, and a run of two or more missing weekdays is a gap; intraday bars count only holes
  inside one UTC day.

The gap policy of a backtest (``data.gap_policy``) is ``keep`` (run on the bars as they are),
``ffill`` (insert flat bars at the previous close with zero volume) or ``refuse`` (stop with the gaps
listed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from engine.errors import DataError
from engine.series import BarSeries
from engine.timeutil import MS_PER_DAY, format_timeframe, iso

CALENDARS = ("24/7", "exchange")
GAP_POLICIES = ("keep", "ffill", "refuse")
BAR_TIME = "open"  # the convention: a bar's timestamp is its open time (UTC epoch ms)
MIN_ZERO_RUN = 3  # consecutive zero-volume bars reported as a stretch
_LISTED = 5  # gaps / stretches spelled out in a summary


@dataclass(frozen=True, slots=True)
class Gap:
    """Bars missing between the bar opening at ``after`` and the next one, opening at ``before``."""

    after: int
    before: int
    missing: int  # bars the calendar expected in between

    def __str__(self) -> str:
        return f"{iso(self.after)} -> {iso(self.before)} ({self.missing} missing)"


@dataclass(frozen=True, slots=True)
class Stretch:
    """Consecutive zero-volume bars."""

    first: int  # open time of the first
    last: int  # open time of the last
    bars: int

    def __str__(self) -> str:
        return f"{iso(self.first)} .. {iso(self.last)} ({self.bars} bars)"


@dataclass(frozen=True, slots=True)
class QualityReport:
    symbol: str
    timeframe_ms: int
    calendar: str
    bars: int
    first: int | None  # open time of the first bar
    last: int | None
    gaps: tuple[Gap, ...] = ()
    zero_volume: tuple[Stretch, ...] = ()
    duplicates: int = 0  # repeated bars with identical values (removed)
    conflicts: int = 0  # repeated open times with different values (the latest fetched was kept)
    bar_time: str = BAR_TIME

    @property
    def missing_bars(self) -> int:
        return sum(g.missing for g in self.gaps)

    @property
    def clean(self) -> bool:
        return not (self.gaps or self.zero_volume or self.duplicates or self.conflicts)

    def summary(self) -> str:
        """One line for people: what was found, the first few of each."""
        parts = []
        if self.gaps:
            listed = "; ".join(map(str, self.gaps[:_LISTED])) + (" ..." if len(self.gaps) > _LISTED else "")
            parts.append(f"{len(self.gaps)} gaps ({self.missing_bars} missing bars: {listed})")
        else:
            parts.append("no gaps")
        if self.duplicates or self.conflicts:
            parts.append(f"{self.duplicates} duplicate bars removed, {self.conflicts} conflicting (latest kept)")
        if self.zero_volume:
            if len(self.zero_volume) == 1 and self.zero_volume[0].bars == self.bars:
                parts.append("volume is zero throughout (the source has no volume)")
            else:
                listed = "; ".join(map(str, self.zero_volume[:_LISTED]))
                more = " ..." if len(self.zero_volume) > _LISTED else ""
                parts.append(f"{len(self.zero_volume)} zero-volume stretches of {MIN_ZERO_RUN}+ bars ({listed}{more})")
        return (f"quality of {self.symbol} {format_timeframe(self.timeframe_ms)} ({self.bars} bars, {self.calendar} "
                f"calendar, stamped at bar {self.bar_time}, UTC): " + ", ".join(parts))

    def as_dict(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol, "timeframe": format_timeframe(self.timeframe_ms), "calendar": self.calendar,
            "bar_time": self.bar_time, "bars": self.bars,
            "first": iso(self.first) if self.first is not None else None,
            "last": iso(self.last) if self.last is not None else None,
            "gaps": len(self.gaps), "missing_bars": self.missing_bars,
            "gap_list": [{"after": iso(g.after), "before": iso(g.before), "missing": g.missing} for g in self.gaps[:50]],
            "zero_volume_stretches": len(self.zero_volume),
            "duplicates": self.duplicates, "conflicts": self.conflicts,
        }


def guess_calendar(series: BarSeries) -> str:
    """``"exchange"`` for bars of a day or less that never open on a Saturday or Sunday (UTC) over
    at least two weeks; ``"24/7"`` otherwise."""
    ts = series.ts_open
    if len(ts) < 10 or series.timeframe_ms > MS_PER_DAY or ts[-1] - ts[0] < 14 * MS_PER_DAY:
        return "24/7"
    weekday = _weekday(ts)
    return "24/7" if np.any(weekday >= 5) else "exchange"


def check_bars(series: BarSeries, calendar: str | None = None, *, duplicates: int = 0, conflicts: int = 0,
               min_zero_run: int = MIN_ZERO_RUN) -> QualityReport:
    """Gaps and zero-volume stretches of ``series`` (``calendar=None`` guesses it); the duplicate
    counts come from whoever merged the raw rows (a ``BarSeries`` cannot hold duplicates)."""
    calendar = calendar or guess_calendar(series)
    if calendar not in CALENDARS:
        raise ValueError(f"unknown calendar {calendar!r}: expected one of {', '.join(CALENDARS)}")
    n = len(series)
    return QualityReport(
        symbol=series.symbol, timeframe_ms=series.timeframe_ms, calendar=calendar, bars=n,
        first=int(series.ts_open[0]) if n else None, last=int(series.ts_open[-1]) if n else None,
        gaps=tuple(find_gaps(series.ts_open, series.timeframe_ms, calendar)),
        zero_volume=tuple(zero_volume_stretches(series, min_zero_run)),
        duplicates=duplicates, conflicts=conflicts,
    )


def find_gaps(ts: np.ndarray, timeframe_ms: int, calendar: str = "24/7") -> list[Gap]:
    """Gaps between consecutive open times ``ts`` (ascending) under ``calendar``."""
    ts = np.asarray(ts, dtype=np.int64)
    if len(ts) < 2:
        return []
    diff = np.diff(ts)
    if calendar == "exchange" and timeframe_ms == MS_PER_DAY:
        day = ts // MS_PER_DAY
        # weekdays strictly between two bar dates (epoch day 0 was a Thursday)
        between = np.busday_count((day[:-1] + 1).astype("datetime64[D]"), day[1:].astype("datetime64[D]"))
        rows = np.flatnonzero(between >= 2)
        return [Gap(int(ts[i]), int(ts[i + 1]), int(between[i])) for i in rows]
    missing = diff // timeframe_ms - 1
    candidate = missing >= 1
    if calendar == "exchange" and timeframe_ms < MS_PER_DAY:
        candidate &= ts[:-1] // MS_PER_DAY == ts[1:] // MS_PER_DAY
    return [Gap(int(ts[i]), int(ts[i + 1]), int(missing[i])) for i in np.flatnonzero(candidate)]


def zero_volume_stretches(series: BarSeries, min_run: int = MIN_ZERO_RUN) -> list[Stretch]:
    """Runs of at least ``min_run`` consecutive bars with zero volume."""
    zero = np.concatenate(([False], series.volume == 0, [False]))
    edges = np.flatnonzero(np.diff(zero.astype(np.int8)))
    starts, ends = edges[::2], edges[1::2]  # run = [start, end)
    return [Stretch(int(series.ts_open[s]), int(series.ts_open[e - 1]), int(e - s))
            for s, e in zip(starts, ends) if e - s >= min_run]


def dedupe_rows(frame: pd.DataFrame, key: str = "timestamp") -> tuple[pd.DataFrame, int, int]:
    """Sort ``frame`` by ``key`` and drop repeated keys, keeping the LAST row of each (callers append
    newer data after older). Returns the frame, identical repeats and conflicting repeats."""
    repeated = frame.duplicated(subset=[key], keep="last")
    if not repeated.any():
        return frame.sort_values(key, kind="stable").reset_index(drop=True), 0, 0
    identical = int(frame.duplicated(keep="last").sum())
    conflicts = int(repeated.sum()) - identical
    kept = frame[~repeated].sort_values(key, kind="stable").reset_index(drop=True)
    return kept, identical, conflicts


def apply_gap_policy(series: BarSeries, policy: str, report: QualityReport) -> tuple[BarSeries, str | None]:
    """The bars a backtest should run on under ``policy``, and a note saying what was done (if anything)."""
    if policy not in GAP_POLICIES:
        raise ValueError(f"unknown gap policy {policy!r}: expected one of {', '.join(GAP_POLICIES)}")
    if not report.gaps or policy == "keep":
        return series, None
    if policy == "refuse":
        listed = "; ".join(map(str, report.gaps[:_LISTED])) + (" ..." if len(report.gaps) > _LISTED else "")
        raise DataError(
            f"{series.symbol} {series.timeframe}: {len(report.gaps)} gaps ({report.missing_bars} missing bars: {listed}) "
            "and data.gap_policy = 'refuse'. Fetch or supply the missing bars, or set data.gap_policy to 'keep' "
            "(run on the bars as they are) or 'ffill' (flat bars at the previous close, zero volume)"
        )
    return _forward_fill(series, report)


def _forward_fill(series: BarSeries, report: QualityReport) -> tuple[BarSeries, str]:
    tf = series.timeframe_ms
    inserted: list[np.ndarray] = []
    for gap in report.gaps:
        if report.calendar == "exchange" and tf == MS_PER_DAY:
            days = np.arange(gap.after // MS_PER_DAY + 1, gap.before // MS_PER_DAY, dtype=np.int64)
            days = days[np.is_busday(days.astype("datetime64[D]"))]
            inserted.append(days * MS_PER_DAY + gap.after % MS_PER_DAY)
        else:
            inserted.append(np.arange(gap.after + tf, gap.before, tf, dtype=np.int64))
    new_ts = np.concatenate(inserted) if inserted else np.zeros(0, np.int64)
    ts = np.concatenate((series.ts_open, new_ts))
    order = np.argsort(ts, kind="stable")
    is_new = np.concatenate((np.zeros(len(series), bool), np.ones(len(new_ts), bool)))[order]
    # a filled bar repeats the close of the latest real bar before it
    source_row = np.maximum.accumulate(np.where(is_new, -1, np.arange(len(ts))))
    real_index = np.concatenate((np.arange(len(series)), np.zeros(len(new_ts), np.int64)))[order]
    prev_real = real_index[source_row]
    close = series.close[prev_real]

    def column(values: np.ndarray, fill: np.ndarray) -> np.ndarray:
        return np.where(is_new, fill, np.concatenate((values, np.zeros(len(new_ts))))[order])

    filled = BarSeries.from_arrays(
        series.symbol, tf, ts[order], column(series.open, close), column(series.high, close),
        column(series.low, close), column(series.close, close), column(series.volume, np.zeros(len(ts))),
        source=series.source,
    )
    note = (f"gap policy ffill: inserted {len(new_ts)} flat bars (previous close, zero volume) into "
            f"{len(report.gaps)} gaps of {series.symbol} {series.timeframe}")
    return filled, note


def _weekday(ts: np.ndarray) -> np.ndarray:
    """Monday = 0 .. Sunday = 6 of each UTC open time (1970-01-01 was a Thursday)."""
    return (ts // MS_PER_DAY + 3) % 7
