"""Live feeds for the daemon: closed bars and headlines as they arrive.

Bars come from any market-data source with ``fetch_bars(symbol, timeframe_ms, start, end)`` (the
protocol of ``engine.feeds.market_data.Source``: Bybit through ccxt, yfinance), or from a recorded
file that ``ReplaySource`` serves as an exchange would at the replay clock's time, the still-forming
bar included. Either way ``ClosedBars`` is the one path a bar takes into the daemon (``LIVE.md``,
"Bars in a daemon"):

- a bar is closed only when ``open + timeframe <= now - settle``; the forming bar an exchange
  returns is never decided on;
- bars come in time order, each once: one at or before the last taken is dropped;
- a bar whose open is not the one after the last taken leaves a gap that is counted (``missing``)
  and said in the daemon's status; what arrives later is still taken in order;
- a bar with a non-finite or non-positive price is refused with a message naming it and counted as
  missing, never decided on.

Headlines: ``ReplayNews`` serves a recorded file by publish time; ``LiveNews`` wraps the pollers of
``engine.feeds.live_news``. The daemon persists what they return as it reaches the strategy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from engine.domain import Bar, News
from engine.series import BarSeries
from engine.timeutil import format_timeframe, iso

log = logging.getLogger(__name__)

MAX_PAGES = 1000  # a catch-up longer than this many pages of bars is cut (and said)


class BarSource(Protocol):
    name: str

    def fetch_bars(self, symbol: str, timeframe_ms: int, start: int, end: int) -> Any:
        """Bars opening in ``[start, end)`` (a frame with timestamp/open/high/low/close/volume)."""


class ReplaySource:
    """A recorded series served as a live exchange would serve it at ``now()``: the bars that have
    opened by then, the last one still forming (``LIVE.md``: exchanges return it)."""

    name = "replay"
    calendar = "24/7"  # holes in a recorded file are counted as missing bars

    def __init__(self, series: BarSeries, now: Callable[[], int]) -> None:
        self.series = series
        self._now = now

    def fetch_bars(self, symbol: str, timeframe_ms: int, start: int, end: int) -> dict[str, np.ndarray]:
        s = self.series
        if symbol != s.symbol or timeframe_ms != s.timeframe_ms:
            raise KeyError(f"the replay file holds {s.symbol} {s.timeframe}, not {symbol} {format_timeframe(timeframe_ms)}")
        end = min(end, self._now() + 1)  # nothing has opened after now
        a, b = np.searchsorted(s.ts_open, [start, end], side="left")
        return {"timestamp": s.ts_open[a:b], "open": s.open[a:b], "high": s.high[a:b], "low": s.low[a:b],
                "close": s.close[a:b], "volume": s.volume[a:b]}

    def first_close(self) -> int | None:
        return int(self.series.ts_close[0]) if len(self.series) else None

    def last_close(self) -> int | None:
        return int(self.series.ts_close[-1]) if len(self.series) else None


@dataclass
class PollResult:
    bars: list[Bar] = field(default_factory=list)
    missing: int = 0  # bars that should have come and did not (gaps), or were refused
    refused: list[str] = field(default_factory=list)  # why bars were refused


class ClosedBars:
    """The closed bars of one symbol that the daemon has not taken yet."""

    def __init__(self, source: BarSource, symbol: str, timeframe_ms: int, *, settle_ms: int = 0,
                 last_open: int | None = None, page: int = 1000) -> None:
        self.source = source
        self.symbol = symbol
        self.timeframe_ms = int(timeframe_ms)
        self.settle_ms = int(settle_ms)
        self.last_open = last_open  # the open of the last bar taken
        self.page = page
        self.missing_total = 0
        # A 24/7 market has a bar every interval, so a hole is a missing bar; an exchange's calendar
        # (nights, weekends, holidays: yfinance) has holes by design.
        self.continuous = getattr(source, "calendar", "24/7") == "24/7"

    def latest_closed_open(self, now_ms: int) -> int:
        """The open of the newest bar that is closed at ``now_ms`` by the closed-bar rule."""
        tf = self.timeframe_ms
        return (now_ms - self.settle_ms) // tf * tf - tf

    def due(self, now_ms: int) -> bool:
        """Whether a closed bar the daemon has not taken should exist by now."""
        return self.last_open is None or self.latest_closed_open(now_ms) > self.last_open

    def poll(self, now_ms: int, *, since: int | None = None) -> PollResult:
        """Closed bars after the last taken (or opening at or after ``since`` on the first poll), in order."""
        tf = self.timeframe_ms
        newest = self.latest_closed_open(now_ms)
        start = self.last_open + tf if self.last_open is not None else (since if since is not None else newest)
        out = PollResult()
        pages = 0
        while start <= newest and pages < MAX_PAGES:
            end = min(newest + tf, start + self.page * tf)
            rows = _rows(self.source.fetch_bars(self.symbol, tf, start, end))
            pages += 1
            for ts, o, h, lo, c, v in rows:
                if self.last_open is not None and ts <= self.last_open:
                    continue  # already taken (or out of order): each bar once, in time order
                if ts + tf > now_ms - self.settle_ms:
                    break  # still forming: never decided on
                problem = _bad_prices(o, h, lo, c, v)
                if problem:
                    out.refused.append(f"{self.symbol} bar opening {iso(ts)}: {problem}; not traded")
                    log.warning(out.refused[-1])
                    continue
                expected = self.last_open + tf if self.last_open is not None else ts
                if ts > expected and self.continuous:
                    out.missing += (ts - expected) // tf
                out.bars.append(Bar(self.symbol, ts, ts + tf, o, h, lo, c, v))
                self.last_open = ts
            start = end
        if pages >= MAX_PAGES and start <= newest:
            log.warning("%s: catch-up cut after %d pages; the rest comes with the next polls", self.symbol, pages)
        out.missing += len(out.refused)
        self.missing_total += out.missing
        return out

    def history(self, start: int, end: int) -> BarSeries:
        """The closed bars opening in ``[start, end)`` as a series (the warm-up's input)."""
        tf = self.timeframe_ms
        cols: list[list[float]] = [[] for _ in range(6)]
        a = start
        while a < end:
            b = min(end, a + self.page * tf)
            for row in _rows(self.source.fetch_bars(self.symbol, tf, a, b)):
                if cols[0] and row[0] <= cols[0][-1]:
                    continue
                if _bad_prices(*row[1:]):
                    continue
                for col, value in zip(cols, row):
                    col.append(value)
            a = b
        return BarSeries.from_arrays(self.symbol, tf, np.asarray(cols[0], np.int64), *(np.asarray(c, np.float64)
                                                                                         for c in cols[1:]),
                                     source=getattr(self.source, "name", ""))


def _rows(frame: Any) -> list[tuple[int, float, float, float, float, float]]:
    cols = [frame[k] for k in ("timestamp", "open", "high", "low", "close", "volume")]
    arrays = [np.asarray(c) for c in cols]
    ts = arrays[0].astype(np.int64)
    order = np.argsort(ts, kind="stable")
    return list(zip(ts[order].tolist(), *(a.astype(np.float64)[order].tolist() for a in arrays[1:])))


def _bad_prices(o: float, h: float, lo: float, c: float, v: float) -> str:
    if not all(math.isfinite(x) for x in (o, h, lo, c, v)):
        return "a price or the volume is not a number"
    if min(o, h, lo, c) <= 0:
        return "a price is not positive"
    if h < max(o, c, lo) or lo > min(o, c):
        return f"high {h:g} / low {lo:g} do not bound open {o:g} and close {c:g}"
    return ""


class NewsFeed(Protocol):
    def poll(self, now_ms: int) -> list[News]:
        """Headlines published by ``now_ms`` that were not returned before, in publish order."""


class ReplayNews:
    """Recorded headlines served by publish time."""

    def __init__(self, items: Sequence[News], *, after: int | None = None) -> None:
        self._items = sorted(items, key=lambda n: n.ts_event)
        self._next = 0
        if after is not None:
            self.skip_until(after)

    def skip_until(self, ts_ms: int) -> None:
        """Forget the headlines published at or before ``ts_ms`` (already seen before a restart)."""
        while self._next < len(self._items) and self._items[self._next].ts_event <= ts_ms:
            self._next += 1

    def skip_seen(self, seen: set[tuple[int, str]], until_ms: int) -> None:
        """After a restart: drop what the run already saw (published by ``until_ms``, or recorded)."""
        self._items = [n for n in self._items[self._next:] if n.ts_event > until_ms and (n.ts_event, n.headline) not in seen]
        self._next = 0

    def poll(self, now_ms: int) -> list[News]:
        out = []
        while self._next < len(self._items) and self._items[self._next].ts_event <= now_ms:
            out.append(self._items[self._next])
            self._next += 1
        return out


class LiveNews:
    """The live pollers (``engine.feeds.live_news.NewsHub``): new headlines, de-duplicated, each
    stamped no later than when it was seen (a publish time in the future is not believed)."""

    def __init__(self, hub: Any, *, seen: set[tuple[int, str]] | None = None) -> None:
        self.hub = hub
        self._seen = seen or set()

    def poll(self, now_ms: int) -> list[News]:
        out = []
        for item in self.hub.poll():
            ts = min(item.ts_event, now_ms)
            key = (ts, item.headline)
            if key in self._seen:
                continue
            self._seen.add(key)
            out.append(News(ts, item.headline, item.symbol, item.source))
        return sorted(out, key=lambda n: n.ts_event)


class LiveFundingRates:
    """Perpetual funding rates for the paper daemon, as the exchange publishes them: the history
    fetched at start (``base``), extended from the exchange's funding history whenever a settlement
    falls after the last rate known. If the exchange has not published the rate of an instant yet,
    or cannot be reached, the latest known rate is used and said in the log."""

    def __init__(self, source: Any, symbol: str, base: Any = None, *, default: float = 0.0) -> None:
        self.source = source
        self.symbol = symbol
        self._ts: list[int] = []
        self._rates: list[float] = []
        self._base = base
        self._default = default
        self.fetches = 0

    def _latest(self) -> int:
        if self._ts:
            return self._ts[-1]
        base_last = getattr(self._base, "last_ts", None)
        return base_last if base_last is not None else -1

    def rate(self, symbol: str, ts: int) -> float:
        if ts > self._latest():
            self._refresh(ts)
        i = int(np.searchsorted(np.asarray(self._ts, np.int64), ts, side="right")) - 1
        if i >= 0:
            return self._rates[i]
        return self._base.rate(symbol, ts) if self._base is not None else self._default

    def _refresh(self, ts: int) -> None:
        from engine.errors import TemporaryError

        start = self._latest() + 1 if self._latest() >= 0 else ts - 24 * 3_600_000
        try:
            frame = self.source.fetch_funding(self.symbol, start, ts + 1)
        except TemporaryError as exc:
            log.warning("%s funding rate at %s: the exchange did not answer (%s); using the latest known", self.symbol,
                        iso(ts), exc)
            return
        self.fetches += 1
        for t, r in sorted(zip(np.asarray(frame["timestamp"]).tolist(), np.asarray(frame["fundingRate"]).tolist())):
            if t > self._latest() and math.isfinite(r):
                self._ts.append(int(t))
                self._rates.append(float(r))
        if ts > self._latest():
            log.info("%s funding rate at %s not published yet; using the latest known", self.symbol, iso(ts))
