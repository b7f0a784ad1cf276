"""The predictor's bar features: definitions against pandas, the live path against the vectorised
one, no lookahead, edge cases, scaling and prompt text."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.features import (
    FEATURE_NAMES,
    N_FEATURES,
    WARMUP_BARS,
    FeatureScaler,
    IncrementalFeatures,
    compute_features,
    format_features,
)

HOUR = 3_600_000
DAY = 24 * HOUR


def random_bars(n: int, seed: int, *, start_ms: int = 1_600_000_000_000, step_ms: int = HOUR) -> dict:
    """A random walk with fat-tailed returns, a 30-bar stretch without volume and a 120-bar flat
    stretch (high == low == close), so the zero-volume and zero-std branches are exercised."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.standard_t(3, n) * 0.01))
    open_ = np.concatenate([[close[0]], close[:-1]])
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.004, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.004, n)))
    volume = rng.lognormal(3.0, 1.0, n)
    volume[rng.random(n) < 0.05] = 0.0
    if n > 600:
        volume[300:330] = 0.0
        open_[400:520] = high[400:520] = low[400:520] = close[400:520] = close[399]
    ts = start_ms + np.arange(n, dtype=np.int64) * step_ms
    return {"ts": ts, "open": open_, "high": high, "low": low, "close": close, "volume": volume}


def vectorised(bars: dict, timeframe_ms: int = HOUR) -> np.ndarray:
    return compute_features(bars["ts"], bars["open"], bars["high"], bars["low"], bars["close"],
                            bars["volume"], timeframe_ms)


def incremental(bars: dict, timeframe_ms: int = HOUR) -> list[np.ndarray | None]:
    live = IncrementalFeatures(timeframe_ms)
    columns = [bars[k].tolist() for k in ("ts", "open", "high", "low", "close", "volume")]
    return [live.update(*row) for row in zip(*columns)]


def assert_paths_agree(bars: dict) -> None:
    expected = vectorised(bars)
    rows = incremental(bars)
    assert all(row is None for row in rows[:WARMUP_BARS])
    assert np.isnan(expected[:WARMUP_BARS]).all()
    live = np.array(rows[WARMUP_BARS:])
    # Bit-identical on x86-64 (both paths share every formula and add in the same order); the
    # tolerance only leaves room for a libm whose log/sin differ between array lengths.
    np.testing.assert_allclose(live, expected[WARMUP_BARS:], rtol=1e-12, atol=1e-15)


def test_shape_names_and_warm_up():
    features = vectorised(random_bars(2_000, seed=1))
    assert len(FEATURE_NAMES) == N_FEATURES == 16 and len(set(FEATURE_NAMES)) == 16
    assert features.shape == (2_000, 16) and features.dtype == np.float64
    assert np.isnan(features[:WARMUP_BARS]).all()
    assert np.isfinite(features[WARMUP_BARS:]).all()
    assert compute_features([], [], [], [], [], [], HOUR).shape == (0, 16)


def test_incremental_equals_vectorised_on_random_bars():
    assert_paths_agree(random_bars(3_000, seed=2))


def test_incremental_equals_vectorised_on_real_bars(shared_data):
    path = shared_data / "ohlcv" / "crypto" / "binance_BTCUSDT_1h.csv"
    frame = pd.read_csv(path, nrows=8_000)  # includes the exchange's zero-volume outage bars
    assert (frame["volume"] == 0).sum() > 20
    bars = {"ts": frame["timestamp"].to_numpy(np.int64),
            **{k: frame[k].to_numpy(np.float64) for k in ("open", "high", "low", "close", "volume")}}
    assert_paths_agree(bars)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(WARMUP_BARS + 1, 400), data=st.data())
def test_bars_after_t_never_change_features_up_to_t(seed, n, data):
    bars = random_bars(n, seed)
    t = data.draw(st.integers(WARMUP_BARS - 5, n - 2), label="t")
    other = random_bars(n, seed + 1)
    changed = {k: np.concatenate([bars[k][:t + 1], other[k][t + 1:]]) for k in bars if k != "ts"}
    changed["ts"] = bars["ts"]
    np.testing.assert_array_equal(vectorised(changed)[:t + 1], vectorised(bars)[:t + 1])


def test_definitions_match_pandas_reference():
    bars = random_bars(1_500, seed=3)
    got = pd.DataFrame(vectorised(bars), columns=FEATURE_NAMES)
    c, h, lo, v = (pd.Series(bars[k]) for k in ("close", "high", "low", "volume"))
    prev = c.shift(1).fillna(c.iloc[0])
    log_ret = np.log(c / prev)

    def ema(x, alpha):
        return x.ewm(alpha=alpha, adjust=False).mean()

    gain, loss = ema((c - prev).clip(lower=0), 1 / 14), ema((prev - c).clip(lower=0), 1 / 14)
    true_range = pd.concat([h - lo, (h - prev).abs(), (lo - prev).abs()], axis=1).max(axis=1)
    macd = ema(c, 2 / 13) - ema(c, 2 / 27)
    volume_mean = v.rolling(20).mean()
    typical = (h + lo + c) / 3
    vwap = ((typical * v).rolling(20).sum() / v.rolling(20).sum()).where(volume_mean > 0,
                                                                        typical.rolling(20).mean())
    std20, std100 = c.rolling(20).std(ddof=0), c.rolling(100).std(ddof=0)
    flat20, flat100 = std20 <= 1e-10 * c, std100 <= 1e-10 * c
    reference = {
        "ret1": log_ret, "ret5": np.log(c / c.shift(5)), "ret20": np.log(c / c.shift(20)),
        "vol_ratio": (v / volume_mean).where(volume_mean > 0, 1.0),
        "rvol20": log_ret.rolling(20).std(ddof=0), "rsi14": gain / (gain + loss),
        "macd_hist": (macd - ema(macd, 0.2)) / c,
        "bb_pos": ((c - c.rolling(20).mean()) / (2 * std20)).where(~flat20, 0.0),
        "atr_ratio": ema(true_range, 1 / 14) / c, "vwap_dist": c / vwap - 1, "range": (h - lo) / c,
        "close_pos": ((c - lo) / (h - lo)).where(h > lo, 0.5),
        "z100": ((c - c.rolling(100).mean()) / std100).where(~flat100, 0.0),
        "dist_high20": c / h.rolling(20).max() - 1,
    }
    for name, expected in reference.items():
        # atol: where a value is ~0 (vwap_dist on the flat stretch) the two sum orders leave ~1e-16
        np.testing.assert_allclose(got[name][WARMUP_BARS:], expected[WARMUP_BARS:], rtol=1e-9, atol=1e-12,
                                   err_msg=name)


def test_flat_market_without_volume_is_neutral():
    n = WARMUP_BARS + 5
    flat = np.full(n, 50.0)
    row = compute_features(np.arange(n) * DAY, flat, flat, flat, flat, np.zeros(n), DAY)[-1]
    expected = dict.fromkeys(FEATURE_NAMES, 0.0) | {"vol_ratio": 1.0, "rsi14": 0.5, "close_pos": 0.5}
    expected["dow"] = row[FEATURE_NAMES.index("dow")]  # calendar, not market
    np.testing.assert_array_equal(row, [expected[name] for name in FEATURE_NAMES])


@pytest.mark.parametrize(("timeframe_ms", "tod", "dow"), [
    (HOUR, 1.0, math.cos(-math.pi / 7)),   # a Saturday 06:00 bar: sin(pi/2); Saturday is near the weekend peak
    (DAY, 0.0, math.cos(-math.pi / 7)),    # no time of day for daily bars
    (7 * DAY, 0.0, 0.0),                   # nor day of week for weekly ones
])
def test_calendar_features(timeframe_ms, tod, dow):
    last = int(datetime(2024, 1, 6, 6, tzinfo=UTC).timestamp() * 1000)  # Saturday
    n = WARMUP_BARS + 1
    ts = last - np.arange(n)[::-1] * timeframe_ms
    prices = np.linspace(100.0, 110.0, n)
    row = compute_features(ts, prices, prices * 1.01, prices * 0.99, prices, np.ones(n), timeframe_ms)[-1]
    assert row[FEATURE_NAMES.index("tod")] == pytest.approx(tod, abs=1e-12)
    assert row[FEATURE_NAMES.index("dow")] == pytest.approx(dow, abs=1e-12)


def test_bad_input_is_refused():
    ok = np.ones(5)
    with pytest.raises(ValueError, match="one length"):
        compute_features(np.arange(5), ok, ok, ok, np.ones(4), ok, HOUR)
    with pytest.raises(ValueError, match="positive"):
        compute_features(np.arange(5), ok, ok, np.array([1, 1, 0, 1, 1.0]), ok, ok, HOUR)
    with pytest.raises(ValueError, match="timeframe"):
        IncrementalFeatures(0)
    live = IncrementalFeatures(HOUR)
    live.update(HOUR, 1.0, 1.0, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="after the previous"):
        live.update(HOUR, 1.0, 1.0, 1.0, 1.0, 1.0)


def test_scaler_is_robust_and_round_trips_through_json():
    rng = np.random.default_rng(4)
    train = rng.normal(3.0, 2.0, size=(20_000, 16))
    train[:, 5] = 7.0  # constant: scale falls back to 1
    train[200:210, 0] = 1e6  # outliers move neither the median nor the IQR, and are clipped
    train[:WARMUP_BARS, 1] = np.nan  # warm-up rows are dropped
    scaler = FeatureScaler.fit(train)
    scaled = scaler.transform(train[WARMUP_BARS:])
    assert np.median(scaled, axis=0) == pytest.approx(np.zeros(16), abs=0.02)
    assert scaled[:, 2].std() == pytest.approx(1.0, abs=0.03)  # IQR / 1.349 is the normal std
    assert scaler.scale[5] == 1.0 and (scaled[:, 5] == 0.0).all()
    assert np.abs(scaled).max() == scaler.clip == 5.0
    assert np.isnan(scaler.transform(train[:1])).any()
    restored = FeatureScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert restored == scaler
    np.testing.assert_array_equal(restored.transform(train[-5:]), scaled[-5:])
    with pytest.raises(ValueError, match="features per row"):
        scaler.transform(np.zeros(15))
    with pytest.raises(ValueError, match="no complete rows"):
        FeatureScaler.fit(np.full((3, 16), np.nan))


def test_format_features_is_compact():
    values = np.zeros(16)
    values[:3] = [0.0021, -0.01349, -0.0001]
    text = format_features(values)
    assert text.startswith("ret1=0.002 ret5=-0.013 ret20=0.000 vol_ratio=0.000")
    assert text.count("=") == 16 and "-0.000" not in text
    assert format_features([1.23456, float("nan")], names=("a", "b"), digits=2) == "a=1.23 b=nan"
    with pytest.raises(ValueError, match="names"):
        format_features([1.0], names=("a", "b"))
