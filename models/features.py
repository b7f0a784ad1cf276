"""Sixteen numeric features per bar for the predictor's prompt, from data up to that bar only.

``compute_features`` does a whole history at once; ``IncrementalFeatures`` takes live bars one at a
time. Both run every formula through the same functions below (the live path feeds them one-row
windows and one-step recursions), and each window is summed on its own, strictly left to right,
never as a difference of running sums or with pandas' rolling kernels, whose rounding depends on the
history before the window. So the two paths agree to the last bit when fed the same bars from the
same first bar (tested). Windows count bars, not time: a gap in the data is not seen.

Row t uses bars 0..t only. Every rolling std is the population std (ddof=0) of its window.

==============  ==========================================================================
ret1/5/20       log(close_t / close_{t-k})
vol_ratio       volume / mean volume of the last 20 bars (this one included); 1 if that mean is 0
rvol20          std of the last 20 one-bar log returns
rsi14           Wilder RSI(14) as a fraction, avg_gain / (avg_gain + avg_loss); 0.5 if both are 0
macd_hist       (MACD(12, 26) - its EMA(9) signal) / close
bb_pos          (close - SMA20) / (2 std20)
atr_ratio       Wilder ATR(14) / close
vwap_dist       close / VWAP20 - 1, VWAP of the typical price (h + l + c) / 3 weighted by volume;
                equal weights when the 20 bars have no volume at all (volume-less data)
range           (high - low) / close
close_pos       (close - low) / (high - low); 0.5 when high == low
z100            (close - SMA100) / std100. Over 100 bars, not 20: over 20 it would be 2 x bb_pos
dist_high20     close / max(high of the last 20 bars) - 1
tod             sin(2 pi x fraction of the UTC day at the bar's open); 0 unless timeframe < 1 day
dow             cos(2 pi (weekday - 5.5) / 7) at the bar's open, Monday = 0: +0.90 on Saturday and
                Sunday, -1 on Wednesday (how near the weekend); 0 unless timeframe < 7 days
==============  ==========================================================================

bb_pos and z100 are 0 for a flat window (std <= 1e-10 x |mean|), where rounding noise would
otherwise be divided by itself. EMAs (MACD: alpha = 2 / (n + 1); Wilder: alpha = 1 / n) are seeded
with their first input at row 0, whose previous close is taken to be its own close (first return,
gain and loss 0; first true range high - low). Rows before ``WARMUP_BARS`` = 100 are NaN: the
z-score needs 100 bars, and by then the seed's weight in the slowest EMA, (13/14)^100, is < 1e-3.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

FEATURE_NAMES: tuple[str, ...] = (
    "ret1", "ret5", "ret20", "vol_ratio", "rvol20", "rsi14", "macd_hist", "bb_pos",
    "atr_ratio", "vwap_dist", "range", "close_pos", "z100", "dist_high20", "tod", "dow",
)
N_FEATURES = len(FEATURE_NAMES)
WARMUP_BARS = 100
"""Rows 0..WARMUP_BARS-1 are NaN (``IncrementalFeatures.update`` returns None for those bars)."""

_WINDOW = 20
_LONG_WINDOW = 100
_HISTORY = max(_LONG_WINDOW, _WINDOW + 1)  # bars the live path keeps
_FAST, _SLOW, _SIGNAL, _WILDER = 2 / 13, 2 / 27, 2 / 10, 1 / 14
_FLAT = 1e-10
_DAY_MS = 86_400_000
_WEEK_MS = 7 * _DAY_MS
_CUMSUM_MAX_ROWS = 64  # below this many windows a cumsum is one call; above, column adds are faster


class _EmaState(NamedTuple):
    """Last value of each recursion: all the live path carries from one bar to the next."""

    fast: float
    slow: float
    signal: float
    gain: float
    loss: float
    atr: float


class _Series(NamedTuple):
    """Per-bar inputs of ``_rows``, all ending at the newest bar."""

    ts: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    log_ret: np.ndarray
    typical: np.ndarray
    typical_volume: np.ndarray


def _bar_terms(high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray,
               prev_close: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-bar inputs of the windows and recursions: log return, gain, loss, true range,
    typical price and typical price x volume."""
    change = close - prev_close
    true_range = np.maximum(high - low, np.maximum(np.abs(high - prev_close), np.abs(low - prev_close)))
    typical = (high + low + close) / 3.0
    return (np.log(close / prev_close), np.maximum(change, 0.0), np.maximum(-change, 0.0), true_range,
            typical, typical * volume)


def _smooth(close: np.ndarray, gain: np.ndarray, loss: np.ndarray, true_range: np.ndarray,
            state: _EmaState | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, _EmaState]:
    """The recursive terms of each bar (MACD - signal, Wilder average gain, loss and true range) and
    the state after the last one. Each EMA is y = alpha x + (1 - alpha) y_prev, continuing ``state``
    or seeded with its first input when ``state`` is None. One Python-float loop (an EMA cannot be vectorised exactly);
    the live path runs this same loop for its one bar, so both round alike."""
    fa, sa, ga, wa = _FAST, _SLOW, _SIGNAL, _WILDER
    fk, sk, gk, wk = 1.0 - fa, 1.0 - sa, 1.0 - ga, 1.0 - wa
    bars = zip(close.tolist(), gain.tolist(), loss.tolist(), true_range.tolist())
    if state is None:
        c, avg_gain, avg_loss, atr = next(bars)
        fast = slow = c
        signal = 0.0  # the first MACD, fast - slow
        hist, gains, losses, atrs = [0.0], [avg_gain], [avg_loss], [atr]
    else:
        fast, slow, signal, avg_gain, avg_loss, atr = state
        hist, gains, losses, atrs = [], [], [], []
    for c, g, lo, t in bars:
        fast = fa * c + fk * fast
        slow = sa * c + sk * slow
        macd = fast - slow
        signal = ga * macd + gk * signal
        avg_gain = wa * g + wk * avg_gain
        avg_loss = wa * lo + wk * avg_loss
        atr = wa * t + wk * atr
        hist.append(macd - signal)
        gains.append(avg_gain)
        losses.append(avg_loss)
        atrs.append(atr)
    last = _EmaState(fast, slow, signal, avg_gain, avg_loss, atr)
    return np.array(hist), np.array(gains), np.array(losses), np.array(atrs), last


def _ordered_sum(windows: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    """Row sums of a (rows, w) window matrix, or of squared deviations from ``center`` (one value per
    row), added strictly left to right: a window's sum then does not depend on how many windows are
    summed with it, as numpy's blocked pairwise sum would. Both branches add in the same order."""
    if len(windows) <= _CUMSUM_MAX_ROWS:
        terms = windows if center is None else np.square(windows - center[:, None])
        return np.cumsum(terms, axis=1)[:, -1]
    columns = (windows[:, k] if center is None else np.square(windows[:, k] - center)
               for k in range(windows.shape[1]))
    total = next(columns).copy()
    for column in columns:
        total += column
    return total


def _mean_std(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std (ddof=0) of each window."""
    width = windows.shape[1]
    mean = _ordered_sum(windows) / width
    return mean, np.sqrt(_ordered_sum(windows, mean) / width)


def _divide(num: np.ndarray, den: np.ndarray, where: np.ndarray, fallback: float) -> np.ndarray:
    """num / den where ``where`` holds, ``fallback`` elsewhere, without dividing by zero."""
    return np.divide(num, den, out=np.full(num.shape, fallback), where=where)


def _calendar(ts: np.ndarray, timeframe_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """tod and dow of bars opening at ``ts`` (see the module table); zeros where not meaningful."""
    zeros = np.zeros(len(ts))
    tod = np.sin(2.0 * math.pi * ((ts % _DAY_MS) / _DAY_MS)) if timeframe_ms < _DAY_MS else zeros
    weekday = (ts // _DAY_MS + 3) % 7  # 1970-01-01 was a Thursday
    dow = np.cos(2.0 * math.pi * ((weekday - 5.5) / 7.0)) if timeframe_ms < _WEEK_MS else zeros
    return tod, dow


def _rows(m: int, timeframe_ms: int, s: _Series, hist: np.ndarray, avg_gain: np.ndarray,
          avg_loss: np.ndarray, atr: np.ndarray) -> np.ndarray:
    """The 16 features of the newest ``m`` bars. ``s`` holds at least m + 99 bars (m + 20 for the
    lagged close); the recursive terms at least m, all ending at the newest bar."""
    n = len(s.close)

    def tail(x: np.ndarray) -> np.ndarray:
        return x[len(x) - m:]

    def windows(x: np.ndarray, width: int) -> np.ndarray:
        last = x[len(x) - m - width + 1:]
        return last[None, :] if m == 1 else sliding_window_view(last, width)  # the same one window

    close, high, low, volume = tail(s.close), tail(s.high), tail(s.low), tail(s.volume)
    out = np.empty((m, N_FEATURES))
    out[:, 0] = tail(s.log_ret)
    out[:, 1] = np.log(close / s.close[n - m - 5:n - 5])
    out[:, 2] = np.log(close / s.close[n - m - 20:n - 20])
    volume_sum = _ordered_sum(windows(s.volume, _WINDOW))
    has_volume = volume_sum > 0.0
    out[:, 3] = _divide(volume, volume_sum / _WINDOW, has_volume, 1.0)
    out[:, 4] = _mean_std(windows(s.log_ret, _WINDOW))[1]
    gain, loss = tail(avg_gain), tail(avg_loss)
    out[:, 5] = _divide(gain, gain + loss, gain + loss > 0.0, 0.5)
    out[:, 6] = tail(hist) / close
    mean, std = _mean_std(windows(s.close, _WINDOW))
    out[:, 7] = _divide(close - mean, 2.0 * std, std > _FLAT * np.abs(mean), 0.0)
    out[:, 8] = tail(atr) / close
    equal_weight = _ordered_sum(windows(s.typical, _WINDOW)) / _WINDOW
    vwap = np.where(has_volume, _divide(_ordered_sum(windows(s.typical_volume, _WINDOW)), volume_sum,
                                        has_volume, 0.0), equal_weight)
    out[:, 9] = close / vwap - 1.0
    out[:, 10] = (high - low) / close
    out[:, 11] = _divide(close - low, high - low, high > low, 0.5)
    mean, std = _mean_std(windows(s.close, _LONG_WINDOW))
    out[:, 12] = _divide(close - mean, std, std > _FLAT * np.abs(mean), 0.0)
    out[:, 13] = close / windows(s.high, _WINDOW).max(axis=1) - 1.0
    out[:, 14], out[:, 15] = _calendar(tail(s.ts), timeframe_ms)
    return out


def _check_timeframe(timeframe_ms: int) -> int:
    if int(timeframe_ms) <= 0:
        raise ValueError(f"timeframe_ms must be positive, got {timeframe_ms}")
    return int(timeframe_ms)


def compute_features(ts_open_ms: Any, open: Any, high: Any, low: Any, close: Any, volume: Any,
                     timeframe_ms: int) -> np.ndarray:
    """Features of every bar, shape (n, 16) float64 in ``FEATURE_NAMES`` order; rows before
    ``WARMUP_BARS`` are NaN and row t depends on bars 0..t only. Bars are ascending by open time
    (epoch ms) with positive prices. ``open`` is accepted for a uniform OHLCV signature; no feature
    uses it."""
    timeframe_ms = _check_timeframe(timeframe_ms)
    ts = np.asarray(ts_open_ms, dtype=np.int64)
    o, h, lo, c, v = (np.asarray(a, dtype=np.float64) for a in (open, high, low, close, volume))
    n = len(ts)
    if any(a.ndim != 1 or len(a) != n for a in (ts, o, h, lo, c, v)):
        raise ValueError("ts_open_ms, open, high, low, close and volume must be 1-D and of one length")
    if not np.all(lo > 0.0):
        raise ValueError("prices must be positive (a low is zero, negative or NaN)")
    out = np.full((n, N_FEATURES), np.nan)
    if n <= WARMUP_BARS:
        return out
    prev_close = np.concatenate([c[:1], c[:-1]])
    log_ret, gain, loss, true_range, typical, typical_volume = _bar_terms(h, lo, c, v, prev_close)
    hist, avg_gain, avg_loss, atr, _ = _smooth(c, gain, loss, true_range, None)
    series = _Series(ts, h, lo, c, v, log_ret, typical, typical_volume)
    out[WARMUP_BARS:] = _rows(n - WARMUP_BARS, timeframe_ms, series, hist, avg_gain, avg_loss, atr)
    return out


class IncrementalFeatures:
    """Live features, one bar at a time, equal to ``compute_features`` over the same bars from the same
    first bar. Keeps the last 100 bars and six running EMA values, nothing more. Feed it enough
    history before trading: like the EMAs it is built on, it depends on where it started."""

    def __init__(self, timeframe_ms: int) -> None:
        self.timeframe_ms = _check_timeframe(timeframe_ms)
        self._bars: tuple[deque[Any], ...] = tuple(deque(maxlen=_HISTORY) for _ in _Series._fields)
        self._state: _EmaState | None = None
        self._count = 0

    def update(self, ts_open_ms: int, o: float, h: float, l: float,  # noqa: E741 (l: the OHLCV low)
               c: float, v: float) -> np.ndarray | None:
        """Add the bar that opened at ``ts_open_ms`` (after the previous one) and return its 16
        features, or None while fewer than ``WARMUP_BARS`` + 1 bars have been seen. ``o`` is taken
        for the OHLCV signature; no feature uses it."""
        ts_deque, close_deque = self._bars[0], self._bars[3]
        if ts_deque and ts_open_ms <= ts_deque[-1]:
            raise ValueError(f"bar at {ts_open_ms} does not come after the previous one at {ts_deque[-1]}")
        if not l > 0.0:
            raise ValueError(f"prices must be positive, got low={l}")
        high, low, close, volume = (np.array([x], dtype=np.float64) for x in (h, l, c, v))
        prev_close = np.array([close_deque[-1] if close_deque else c], dtype=np.float64)
        log_ret, gain, loss, true_range, typical, typical_volume = _bar_terms(high, low, close, volume,
                                                                              prev_close)
        hist, avg_gain, avg_loss, atr, self._state = _smooth(close, gain, loss, true_range, self._state)
        row = (ts_open_ms, h, l, c, v, log_ret[0], typical[0], typical_volume[0])
        for buffer, value in zip(self._bars, row):
            buffer.append(value)
        self._count += 1
        if self._count <= WARMUP_BARS:
            return None
        series = _Series(np.array(ts_deque, dtype=np.int64),
                         *(np.array(b, dtype=np.float64) for b in self._bars[1:]))
        return _rows(1, self.timeframe_ms, series, hist, avg_gain, avg_loss, atr)[0]


@dataclass(frozen=True)
class FeatureScaler:
    """Robust scaling fitted on a training slice: (x - median) / (IQR / 1.349), clipped to +-clip.

    IQR / 1.349 is the std of a normal distribution with that IQR, so scaled values read like
    z-scores, while fat tails (returns, volume spikes) neither inflate the scale nor, once clipped,
    dominate a prompt. A column with zero IQR on the slice (a calendar column of daily bars) is
    scaled by its std, or by 1 when that is 0 too. NaN stays NaN."""

    center: tuple[float, ...]
    scale: tuple[float, ...]
    names: tuple[str, ...] = FEATURE_NAMES
    clip: float = 5.0

    def __post_init__(self) -> None:
        if not len(self.center) == len(self.scale) == len(self.names):
            raise ValueError("center, scale and names must have one length")
        if not all(math.isfinite(x) and x > 0.0 for x in self.scale) or not self.clip > 0.0:
            raise ValueError("scales and clip must be positive and finite")

    @classmethod
    def fit(cls, features: np.ndarray, names: Sequence[str] = FEATURE_NAMES, clip: float = 5.0) -> FeatureScaler:
        """Fit on the rows of ``features`` (n, len(names)) that have no NaN (warm-up rows drop out)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(names):
            raise ValueError(f"features must have shape (n, {len(names)}), got {x.shape}")
        x = x[~np.isnan(x).any(axis=1)]
        if not len(x):
            raise ValueError("no complete rows to fit the scaler on")
        q25, center, q75 = np.percentile(x, [25.0, 50.0, 75.0], axis=0)
        std = x.std(axis=0)
        scale = np.where(q75 > q25, (q75 - q25) / 1.349, np.where(std > 0.0, std, 1.0))
        return cls(tuple(center.tolist()), tuple(scale.tolist()), tuple(names), float(clip))

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Scaled copy of ``features``, one row (k,) or many (n, k)."""
        x = np.asarray(features, dtype=np.float64)
        if x.shape[-1:] != (len(self.names),):
            raise ValueError(f"expected {len(self.names)} features per row, got shape {x.shape}")
        return np.clip((x - np.array(self.center)) / np.array(self.scale), -self.clip, self.clip)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, saved beside a checkpoint."""
        return {"names": list(self.names), "center": list(self.center), "scale": list(self.scale),
                "clip": self.clip}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureScaler:
        """The scaler ``to_dict`` wrote."""
        return cls(tuple(map(float, data["center"])), tuple(map(float, data["scale"])),
                   tuple(map(str, data["names"])), float(data["clip"]))


def format_features(values: Sequence[float] | np.ndarray, names: Sequence[str] = FEATURE_NAMES,
                    digits: int = 3) -> str:
    """Compact ``name=value`` text for a prompt, with ``digits`` decimals, e.g. "ret1=0.002 ret5=-0.013".
    Fixed decimals suit scaled features (``FeatureScaler``), which all share one unit."""
    if len(values) != len(names):
        raise ValueError(f"{len(values)} values for {len(names)} names")
    parts = []
    for name, value in zip(names, values):
        text = f"{float(value):.{digits}f}"
        if text.startswith("-") and float(text) == 0.0:
            text = text[1:]  # "-0.000" reads as a signal it is not
        parts.append(f"{name}={text}")
    return " ".join(parts)
