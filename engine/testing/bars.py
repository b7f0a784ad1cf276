"""Bars for rehearsals: a seeded random walk a BTC perpetual could have traded, and a CSV writer the
engine's bar loader reads back (for ``live start --replay`` against the fake Bybit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.series import BarSeries
from engine.timeutil import MS_PER_HOUR, parse_instant

START = parse_instant("2024-03-01")


def random_walk(n: int, *, symbol: str = "BTC/USDT:USDT", seed: int = 3, start: int = START,
                price: float = 40_000.0, timeframe_ms: int = MS_PER_HOUR) -> BarSeries:
    """``n`` bars of a seeded random walk (0.4% per bar), prices on a 0.1 tick."""
    rng = np.random.default_rng(seed)
    closes = price * np.exp(np.cumsum(rng.normal(0, 0.004, n)))
    opens = np.concatenate([[price], closes[:-1]])
    wick = np.abs(rng.normal(0, 0.002, n)) * closes
    highs, lows = np.maximum(opens, closes) + wick, np.minimum(opens, closes) - wick
    return BarSeries.from_arrays(symbol, timeframe_ms, [start + i * timeframe_ms for i in range(n)],
                                 np.round(opens, 1), np.round(highs, 1), np.round(lows, 1), np.round(closes, 1),
                                 np.full(n, 10.0), source="random walk")


def write_csv(series: BarSeries, path: Path) -> Path:
    """``series`` as timestamp (epoch ms), open, high, low, close, volume."""
    lines = ["timestamp,open,high,low,close,volume"]
    for i in range(len(series)):
        lines.append(f"{int(series.ts_open[i])},{float(series.open[i])!r},{float(series.high[i])!r},{float(series.low[i])!r},"
                     f"{float(series.close[i])!r},{float(series.volume[i])!r}")
    path.write_text("\n".join(lines) + "\n")
    return path
