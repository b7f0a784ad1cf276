"""Columnar bar history: the form in which feeds hand bars to the event loop.

Bars live as numpy columns rather than as a million objects; the loop makes one ``Bar`` value per
event. Arrays are validated once here so the hot loop never re-checks them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import DataError
from engine.timeutil import format_timeframe, iso

FIELDS = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True, slots=True)
class BarSeries:
    """Bars of one symbol, ascending by open time, one per timestamp.

    ``ts_open`` holds bar open times (epoch ms UTC); a bar's event time is its close,
    ``ts_open + timeframe_ms``. Gaps (missing bars) are allowed; duplicates are not.
    """

    symbol: str
    timeframe_ms: int
    ts_open: np.ndarray  # int64
    open: np.ndarray  # float64, same length for all columns
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        n = len(self.ts_open)
        for name in FIELDS:
            if len(getattr(self, name)) != n:
                raise DataError(f"{self.source or self.symbol}: column {name} has {len(getattr(self, name))} rows, expected {n}")
        if n and np.any(np.diff(self.ts_open) <= 0):
            bad = int(np.argmax(np.diff(self.ts_open) <= 0)) + 1
            raise DataError(
                f"{self.source or self.symbol}: bar {bad} at {iso(int(self.ts_open[bad]))} is not after the bar before it"
                " (timestamps must be strictly ascending with no duplicates)"
            )
        if self.timeframe_ms <= 0:
            raise DataError(f"{self.source or self.symbol}: timeframe must be positive")

    @classmethod
    def from_arrays(cls, symbol: str, timeframe_ms: int, ts_open, open, high, low, close, volume, source: str = "") -> BarSeries:  # noqa: A002
        return cls(
            symbol=symbol,
            timeframe_ms=int(timeframe_ms),
            ts_open=np.ascontiguousarray(ts_open, dtype=np.int64),
            open=np.ascontiguousarray(open, dtype=np.float64),
            high=np.ascontiguousarray(high, dtype=np.float64),
            low=np.ascontiguousarray(low, dtype=np.float64),
            close=np.ascontiguousarray(close, dtype=np.float64),
            volume=np.ascontiguousarray(volume, dtype=np.float64),
            source=source,
        )

    def __len__(self) -> int:
        return len(self.ts_open)

    @property
    def ts_close(self) -> np.ndarray:
        return self.ts_open + self.timeframe_ms

    @property
    def timeframe(self) -> str:
        return format_timeframe(self.timeframe_ms)

    def between(self, start_ms: int | None = None, end_ms: int | None = None) -> BarSeries:
        """Bars whose open time is in ``[start_ms, end_ms)``."""
        lo = 0 if start_ms is None else int(np.searchsorted(self.ts_open, start_ms, side="left"))
        hi = len(self) if end_ms is None else int(np.searchsorted(self.ts_open, end_ms, side="left"))
        return BarSeries.from_arrays(
            self.symbol, self.timeframe_ms, self.ts_open[lo:hi], self.open[lo:hi], self.high[lo:hi],
            self.low[lo:hi], self.close[lo:hi], self.volume[lo:hi], source=self.source,
        )
