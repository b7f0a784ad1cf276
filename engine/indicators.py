"""Incremental indicators: fed one value per bar, so the backtest and the live daemon compute them
the same way and nothing can read ahead."""

from __future__ import annotations

import math
from collections import deque


class SMA:
    """Simple moving average of the last ``period`` values; ``None`` until it has that many.

    The window sum is taken with ``math.fsum`` (correctly rounded), so the value does not drift
    over a million bars and equals backtrader's ``SMA`` exactly."""

    __slots__ = ("period", "_window", "value")

    def __init__(self, period: int) -> None:
        if period < 1:
            raise ValueError(f"SMA period must be >= 1, got {period}")
        self.period = period
        self._window: deque[float] = deque(maxlen=period)
        self.value: float | None = None

    def update(self, x: float) -> float | None:
        window = self._window
        window.append(x)
        if len(window) == self.period:
            self.value = math.fsum(window) / self.period
        return self.value
