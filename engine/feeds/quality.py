"""Data quality of bar histories: gaps, duplicate bars, zero-volume stretches, suspicious prices, and
the gap and quality policies.

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

*Suspicious prices* are judged against the series' own close-to-close log returns, on a robust scale
(1.4826 x their median absolute deviation, "robust sd", which one bad tick cannot inflate):

- an *outlier* is a bar whose return is more than ``OUTLIER_SDS`` robust sd from the median AND at
  least ``MIN_JUMP`` (+50% / -33%). Both are needed: on daily bars a real crash is a big move but
  fewer than 25 robust sd (BTC on 2020-03-12: -40%, 23 sd), on hourly bars it can be 45 sd but is a
  move of -18%;
- a *spike* is a jump out and a jump back (each ``SPIKE_SDS`` robust sd and ``MIN_JUMP``) within
  ``SPIKE_BARS`` bars that ends within ``SPIKE_REVERT`` of the jump from where it started: a price
  that is 1000x for one bar and comes back is a bad tick, not a market;
- a *stale stretch* is ``MIN_STALE_RUN`` or more consecutive bars with identical open, high, low and
  close while volume is traded: a feed that stopped updating. Identical bars without any volume are
  an exchange outage and are reported as zero-volume stretches instead.

The quality policy (``data.quality_policy``) is ``warn`` (run, with a note listing them) or
``refuse`` (stop with the file, the bar times and the problem).
"""

from __future__ import annotations

import math
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
QUALITY_POLICIES = ("warn", "refuse")
MIN_ZERO_RUN = 3  # consecutive zero-volume bars reported as a stretch
OUTLIER_SDS = 50.0  # a bar return this many robust sd from the median (and MIN_JUMP) is an outlier
MIN_JUMP = math.log(1.5)  # log return of an outlier or of each jump of a spike: at least +50% / -33%
SPIKE_SDS = 10.0  # each jump of a spike, out and back, is at least this many robust sd
SPIKE_BARS = 3  # the jump back comes within this many bars of the jump out
SPIKE_REVERT = 0.25  # and ends within this share of the jump out from the price before it
MIN_STALE_RUN = 5  # consecutive bars with identical OHLC (and volume traded) reported as stale
MIN_RETURNS = 10  # fewer returns than this are too few to judge outliers by
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
    """Consecutive zero-volume bars, or consecutive bars with identical prices (stale)."""

    first: int  # open time of the first
    last: int  # open time of the last
    bars: int

    def __str__(self) -> str:
        return f"{iso(self.first)} .. {iso(self.last)} ({self.bars} bars)"


@dataclass(frozen=True, slots=True)
class Outlier:
    """A bar whose close-to-close return is far outside the series' own returns."""

    ts: int  # open time of the bar
    previous: float  # close of the bar before it
    close: float
    sds: float  # distance of its log return from the median, in robust sd

    def __str__(self) -> str:
        return f"{iso(self.ts)} close {self.previous:g} -> {self.close:g} ({self.close / self.previous - 1:+.1%}, {self.sds:.0f} robust sd)"


@dataclass(frozen=True, slots=True)
class Spike:
    """Bars whose price jumped away and came straight back."""

    first: int  # open time of the first bar away
    last: int  # open time of the last bar away (the next one is back)
    bars: int
    factor: float  # close of the first bar away / close of the bar before it

    def __str__(self) -> str:
        span = iso(self.first) if self.bars == 1 else f"{iso(self.first)} .. {iso(self.last)}"
        return f"{span} (x{self.factor:.4g} for {self.bars} bar{'s' if self.bars > 1 else ''}, then back)"


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
    outliers: tuple[Outlier, ...] = ()  # single-bar jumps (those of a spike are in spikes)
    spikes: tuple[Spike, ...] = ()
    stale: tuple[Stretch, ...] = ()

    @property
    def missing_bars(self) -> int:
        return sum(g.missing for g in self.gaps)

    @property
    def suspect(self) -> bool:
        """Outliers, spikes or stale stretches: what ``data.quality_policy`` acts on."""
        return bool(self.outliers or self.spikes or self.stale)

    @property
    def clean(self) -> bool:
        return not (self.gaps or self.zero_volume or self.duplicates or self.conflicts or self.suspect)

    def suspect_parts(self) -> list[str]:
        """The suspicious prices found, one phrase per kind with the first few listed."""
        parts = []
        for items, what in ((self.outliers, f"outlier bar returns (beyond {OUTLIER_SDS:g} robust sd)"),
                            (self.spikes, "spikes out and back"),
                            (self.stale, f"stale stretches of {MIN_STALE_RUN}+ bars with identical OHLC")):
            if items:
                listed = "; ".join(map(str, items[:_LISTED])) + (" ..." if len(items) > _LISTED else "")
                parts.append(f"{len(items)} {what} ({listed})")
        return parts

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
        parts += self.suspect_parts()
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
            "outliers": [str(o) for o in self.outliers[:50]], "spikes": [str(x) for x in self.spikes[:50]],
            "stale_stretches": [str(x) for x in self.stale[:50]],
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
    """Gaps, zero-volume stretches and suspicious prices of ``series`` (``calendar=None`` guesses it);
    the duplicate counts come from whoever merged the raw rows (a ``BarSeries`` cannot hold duplicates)."""
    calendar = calendar or guess_calendar(series)
    if calendar not in CALENDARS:
        raise ValueError(f"unknown calendar {calendar!r}: expected one of {', '.join(CALENDARS)}")
    n = len(series)
    outliers, spikes = price_outliers(series)
    return QualityReport(
        symbol=series.symbol, timeframe_ms=series.timeframe_ms, calendar=calendar, bars=n,
        first=int(series.ts_open[0]) if n else None, last=int(series.ts_open[-1]) if n else None,
        gaps=tuple(find_gaps(series.ts_open, series.timeframe_ms, calendar)),
        zero_volume=tuple(zero_volume_stretches(series, min_zero_run)),
        duplicates=duplicates, conflicts=conflicts, outliers=tuple(outliers), spikes=tuple(spikes),
        stale=tuple(stale_stretches(series)),
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


def robust_sds(returns: np.ndarray) -> np.ndarray:
    """Each return's distance from the median in robust sd (1.4826 x the median absolute deviation;
    the mean absolute deviation x 1.2533 when most returns are zero; all zeros for a flat price)."""
    deviation = returns - np.median(returns)
    scale = 1.4826 * float(np.median(np.abs(deviation)))
    if scale == 0:
        scale = 1.2533 * float(np.mean(np.abs(deviation)))
    return deviation / scale if scale > 0 else np.zeros_like(returns)


def price_outliers(series: BarSeries) -> tuple[list[Outlier], list[Spike]]:
    """Single-bar outliers and spikes out and back of the close (see the module docstring)."""
    close, ts = series.close, series.ts_open
    if len(close) <= MIN_RETURNS:
        return [], []
    returns = np.diff(np.log(close))  # returns[i]: bar i + 1 against bar i
    sds = robust_sds(returns)
    big = np.abs(returns) >= MIN_JUMP
    spikes, in_spike = [], np.zeros(len(returns), bool)
    jumps = np.flatnonzero(big & (np.abs(sds) > SPIKE_SDS))
    for i in jumps:
        if in_spike[i]:
            continue
        for j in jumps[(jumps > i) & (jumps <= i + SPIKE_BARS)]:
            if returns[j] * returns[i] < 0 and abs(returns[i:j + 1].sum()) <= SPIKE_REVERT * abs(returns[i]):
                spikes.append(Spike(int(ts[i + 1]), int(ts[j]), int(j - i), float(close[i + 1] / close[i])))
                in_spike[i:j + 1] = True
                break
    rows = np.flatnonzero(big & (np.abs(sds) > OUTLIER_SDS) & ~in_spike)
    outliers = [Outlier(int(ts[i + 1]), float(close[i]), float(close[i + 1]), float(abs(sds[i]))) for i in rows]
    return outliers, spikes


def stale_stretches(series: BarSeries, min_run: int = MIN_STALE_RUN) -> list[Stretch]:
    """Runs of at least ``min_run`` consecutive bars with identical open, high, low and close. A run
    whose repeated bars have no volume at all is an outage, left to ``zero_volume_stretches`` (unless
    the series has no volume anywhere: then prices are all there is to judge by)."""
    o, h, lo, c, v = series.open, series.high, series.low, series.close, series.volume
    repeats = (o[1:] == o[:-1]) & (h[1:] == h[:-1]) & (lo[1:] == lo[:-1]) & (c[1:] == c[:-1])
    edges = np.flatnonzero(np.diff(np.concatenate(([False], repeats, [False])).astype(np.int8)))
    starts, ends = edges[::2], edges[1::2]  # run = bars [start, end]: bars start+1..end repeat bar start
    traded = bool(np.any(v > 0))
    return [Stretch(int(series.ts_open[s]), int(series.ts_open[e]), int(e - s + 1))
            for s, e in zip(starts, ends) if e - s + 1 >= min_run and (not traded or np.any(v[s + 1:e + 1] > 0))]


def apply_quality_policy(policy: str, report: QualityReport, source: str) -> str | None:
    """A warning note (``warn``) or a ``DataError`` (``refuse``) when ``report`` found suspicious
    prices; ``source`` names the file (or market) in the message. ``None`` when there are none."""
    if policy not in QUALITY_POLICIES:
        raise ValueError(f"unknown quality policy {policy!r}: expected one of {', '.join(QUALITY_POLICIES)}")
    if not report.suspect:
        return None
    if policy == "refuse":
        raise DataError(f"{source}: {'; '.join(report.suspect_parts())}, and data.quality_policy = 'refuse'. "
                        "Correct or remove those bars, or set data.quality_policy = 'warn' to run on them")
    counts = ", ".join(f"{len(items)} {what}" for items, what in (
        (report.outliers, "outlier bar returns"), (report.spikes, "spikes"), (report.stale, "stale stretches")) if items)
    return (f"WARNING {source}: the backtest runs on suspicious prices ({counts}, listed above) because "
            "data.quality_policy = 'warn'; 'refuse' stops on them")


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
