"""Bar history that grows: what ``ctx.history`` reads, one per symbol.

A strategy sees the bars that have closed so far and nothing later. Every bar reaches the history
by one path, ``append(bar)``, whether it was read from a file or arrived live:

- ``BarHistory.of_series(series)`` (backtests) starts empty over the columns of a whole series that
  is already in memory; ``append`` checks that the bar is the series' next one and moves the end
  forward, so a million-bar backtest copies nothing.
- ``BarHistory(symbol, timeframe_ms, capacity=...)`` (daemons) writes each appended bar into
  columns of bounded size; when they are full the most recent half is copied into new columns
  (amortised O(1); a view taken earlier keeps the values it saw).

Views are read-only and end at the last appended bar. ``count`` is the number of bars appended
ever, and ``since(k)`` returns the columns of the bars appended after the first ``k``: the store
uses it to write each bar's close once.
"""

from __future__ import annotations

import numpy as np

from engine.domain import Bar
from engine.errors import DataError
from engine.series import BarSeries
from engine.timeutil import iso

FIELDS = ("ts_open", "open", "high", "low", "close", "volume")
_INDEX = {name: i for i, name in enumerate(FIELDS)}


class BarHistory:
    __slots__ = ("symbol", "timeframe_ms", "_cols", "_start", "_end", "_filled", "_capacity", "_offset", "_prefilled")

    def __init__(self, symbol: str, timeframe_ms: int, *, capacity: int = 20_000) -> None:
        if capacity < 2:
            raise ValueError(f"history capacity must be >= 2, got {capacity}")
        self.symbol = symbol
        self.timeframe_ms = int(timeframe_ms)
        self._capacity = capacity
        self._cols = [np.empty(capacity, np.int64)] + [np.empty(capacity, np.float64) for _ in FIELDS[1:]]
        self._start = 0  # window in the columns: [start, end)
        self._end = 0
        self._filled = 0  # slots holding bars (prefilled series: all of it)
        self._offset = 0  # bars dropped from the front so far (count = offset + end - start)
        self._prefilled = False

    @classmethod
    def of_series(cls, series: BarSeries) -> BarHistory:
        """An empty history whose appends must follow ``series`` bar by bar (no copy)."""
        history = cls(series.symbol, series.timeframe_ms, capacity=2)
        history._cols = [series.ts_open, series.open, series.high, series.low, series.close, series.volume]
        history._capacity = history._filled = len(series)
        history._prefilled = True
        return history

    # -- growing -------------------------------------------------------------------------------
    def append(self, bar: Bar) -> None:
        end = self._end
        cols = self._cols
        if self._prefilled:  # the driver walks the same series: only the end is checked on this hot path
            if end >= self._filled:
                raise DataError(f"{self.symbol}: bar opening {iso(bar.ts_open)} is past the end of the series "
                                "this history was built on")
            self._end = end + 1
            return
        if end > self._start and bar.ts_open <= cols[0][end - 1]:
            raise DataError(f"{self.symbol}: bar opening {iso(bar.ts_open)} is not after the last bar "
                            f"({iso(int(cols[0][end - 1]))}); bars must arrive in time order without duplicates")
        if end == self._capacity:
            end = self._compact()
            cols = self._cols
        cols[0][end] = bar.ts_open
        cols[1][end] = bar.open
        cols[2][end] = bar.high
        cols[3][end] = bar.low
        cols[4][end] = bar.close
        cols[5][end] = bar.volume
        self._end = self._filled = end + 1

    def _compact(self) -> int:
        keep = self._capacity // 2
        first = self._end - keep
        self._cols = [np.concatenate((c[first:self._end], np.empty(self._capacity - keep, c.dtype))) for c in self._cols]
        self._offset += first - self._start
        self._start, self._end = 0, keep
        return keep

    # -- reading -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._end - self._start

    @property
    def count(self) -> int:
        """Bars appended ever (the ones still held and those dropped from the front)."""
        return self._offset + self._end - self._start

    def last(self, field: str = "close") -> float:
        if self._end == self._start:
            raise LookupError(f"no bar of {self.symbol} has closed yet")
        return float(self._cols[_INDEX[field]][self._end - 1])

    def view(self, field: str = "close", n: int | None = None) -> np.ndarray:
        """The last ``n`` values (all held if ``None``) of ``field``, read-only."""
        i = _INDEX.get(field)
        if i is None:
            raise ValueError(f"unknown bar field {field!r}; fields: {', '.join(FIELDS)}")
        end = self._end
        start = self._start if n is None else max(self._start, end - n)
        out = self._cols[i][start:end]
        out.flags.writeable = False
        return out

    def since(self, k: int, field: str) -> np.ndarray:
        """``field`` of the bars appended after the first ``k`` (read-only)."""
        first = k - self._offset + self._start
        if first < self._start:
            raise LookupError(f"{self.symbol}: bars after the first {k} are no longer held "
                              f"(the history keeps {self._capacity}); read them more often")
        out = self._cols[_INDEX[field]][first:self._end]
        out.flags.writeable = False
        return out

    def to_series(self, source: str = "") -> BarSeries:
        """The bars held, as a ``BarSeries`` (a copy)."""
        s, e = self._start, self._end
        c = self._cols
        return BarSeries.from_arrays(self.symbol, self.timeframe_ms, c[0][s:e].copy(), c[1][s:e].copy(),
                                     c[2][s:e].copy(), c[3][s:e].copy(), c[4][s:e].copy(), c[5][s:e].copy(),
                                     source=source)
