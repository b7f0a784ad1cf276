"""The synthetic sample market: determinism, well-formed bars and news, and a real, causal tone effect."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.feeds.sample import (
    BEARISH,
    BULLISH,
    NAME,
    NEUTRAL,
    PREFIX,
    SampleMarket,
    SampleMarketConfig,
    generate_sample_market,
)
from engine.timeutil import MS_PER_DAY, MS_PER_HOUR, parse_instant

QUIET = SampleMarketConfig(volatility=1e-5)  # noise far below the tone effect


@pytest.fixture(scope="module")
def market() -> SampleMarket:
    return generate_sample_market()


def _log_returns(m: SampleMarket) -> np.ndarray:
    return np.log(m.bars.close / m.bars.open)


def _window_returns(m: SampleMarket, width: int, before: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per headline, the summed log return of the ``width`` bars opening at or after its publication
    (``before=False``) or of the ``width`` bars opening before it (``before=True``; these include the
    bar in progress at publication, which closes at or after it, so the check is stricter than
    "bars closing before"). Headlines whose window falls off either end are dropped.
    Returns (window sums, tones)."""
    cumulative = np.concatenate(([0.0], np.cumsum(_log_returns(m))))
    times = np.array([n.ts_event for n in m.news], dtype=np.int64)
    first = np.searchsorted(m.bars.ts_open, times, side="left")
    lo, hi = (first - width, first) if before else (first, first + width)
    keep = (lo >= 0) & (hi <= len(m.bars))
    return cumulative[hi[keep]] - cumulative[lo[keep]], np.array(m.tones)[keep]


def _tolerance(config: SampleMarketConfig, n_bull: int, n_bear: int) -> float:
    """Five standard errors of (mean bullish window - mean bearish window), from the model itself.

    A window sum is the headline's own effect plus independent, zero-mean terms: noise with variance
    ``E * volatility**2``, and overlapping effects of other headlines. A headline starting ``d`` bars
    away overlaps ``(E - |d|) / E`` of its effect; with ``rho`` headlines per bar, a share ``1 - neutral``
    of them signed, those add variance ``rho * (1 - neutral) * tone_effect**2 * sum_d ((E - |d|) / E)**2``.
    """
    e = config.effect_bars
    rho = config.headlines_per_day * MS_PER_HOUR / MS_PER_DAY  # the configs here are hourly
    overlap = sum(((e - abs(d)) / e) ** 2 for d in range(-e + 1, e))
    var = e * config.volatility**2 + rho * (1 - config.neutral_share) * config.tone_effect**2 * overlap
    return 5.0 * math.sqrt(var * (1 / n_bull + 1 / n_bear))


def _difference(m: SampleMarket, config: SampleMarketConfig, before: bool) -> tuple[float, float]:
    """(mean bullish - mean bearish window return, its tolerance) over ``config.effect_bars`` bars."""
    sums, tones = _window_returns(m, config.effect_bars, before)
    bull, bear = sums[tones == 1], sums[tones == -1]
    return float(bull.mean() - bear.mean()), _tolerance(config, len(bull), len(bear))


def test_same_seed_is_byte_identical_and_another_seed_differs(market: SampleMarket) -> None:
    again = generate_sample_market(SampleMarketConfig())
    for field in ("ts_open", "open", "high", "low", "close", "volume"):
        assert getattr(market.bars, field).tobytes() == getattr(again.bars, field).tobytes()
    assert market.news == again.news and market.tones == again.tones
    other = generate_sample_market(SampleMarketConfig(seed=8))
    assert not np.array_equal(market.bars.close, other.bars.close)
    assert [n.headline for n in market.news] != [n.headline for n in other.news]
    assert market.bars.source == "synthetic:seed=7" and other.bars.source == "synthetic:seed=8"


def test_ohlc_is_consistent_and_positive(market: SampleMarket) -> None:
    b = market.bars
    assert len(b) == 6000 and b.symbol == "SYN/USDT"
    assert np.all(b.low <= np.minimum(b.open, b.close))
    assert np.all(np.maximum(b.open, b.close) <= b.high)
    assert np.all(b.low > 0) and np.all(b.volume > 0)
    assert b.open[0] == 100.0
    np.testing.assert_array_equal(b.open[1:], b.close[:-1])  # each bar opens at the previous close


def test_timestamps_start_at_start_and_step_by_the_timeframe(market: SampleMarket) -> None:
    b = market.bars
    assert b.ts_open[0] == parse_instant("2024-01-01")
    assert b.timeframe == "1h"
    assert np.all(np.diff(b.ts_open) == MS_PER_HOUR)
    four_hourly = generate_sample_market(SampleMarketConfig(timeframe="4h", bars=50)).bars
    assert np.all(np.diff(four_hourly.ts_open) == 4 * MS_PER_HOUR)


def test_news_is_sorted_inside_the_range_and_partly_at_bar_closes(market: SampleMarket) -> None:
    times = np.array([n.ts_event for n in market.news])
    assert 700 < len(times) < 1300  # Poisson mean 4/day over 250 days = 1000
    assert np.all(np.diff(times) >= 0)
    assert times[0] >= market.bars.ts_open[0] and times[-1] <= market.bars.ts_close[-1]
    at_close = np.isin(times, market.bars.ts_close).sum()
    assert at_close >= 0.04 * len(times)
    assert np.any(times % MS_PER_HOUR != 0)  # the rest fall at arbitrary milliseconds
    assert all(n.symbol == "SYN/USDT" and n.source == "synthetic" for n in market.news)
    assert len(market.tones) == len(market.news)


def test_every_headline_is_labelled_and_matches_its_tone(market: SampleMarket) -> None:
    texts = {
        tone: {PREFIX + t.format(name=NAME, ticker="SYN") for t in templates}
        for tone, templates in ((1, BULLISH), (-1, BEARISH), (0, NEUTRAL))
    }
    assert not (texts[1] & texts[-1] or texts[1] & texts[0] or texts[-1] & texts[0])
    assert all(len(t) >= 20 for t in texts.values())
    for news, tone in zip(market.news, market.tones):
        assert news.headline.startswith("[synthetic] ")
        assert news.headline in texts[tone]
    shares = np.bincount(np.array(market.tones) + 1) / len(market.tones)
    assert shares[1] == pytest.approx(0.4, abs=0.06)  # neutral_share
    assert shares[0] == pytest.approx(shares[2], abs=0.06)


def test_effect_is_exactly_the_documented_kernel() -> None:
    """Same seed, effect on minus effect off leaves exactly the kernel: tau * effect / E on each of
    the E bars opening at or after publication (computed here one headline at a time)."""
    on = generate_sample_market(QUIET)
    off = generate_sample_market(SampleMarketConfig(volatility=1e-5, tone_effect=0.0))
    assert on.news == off.news
    e, n = QUIET.effect_bars, QUIET.bars
    expected = np.zeros(n)
    for news, tone in zip(on.news, on.tones):
        opens_after = np.flatnonzero(on.bars.ts_open >= news.ts_event)[:e]
        expected[opens_after] += tone * QUIET.tone_effect / e
    np.testing.assert_allclose(_log_returns(on) - _log_returns(off), expected, atol=1e-12)


def test_bullish_minus_bearish_forward_return_is_twice_the_effect() -> None:
    m = generate_sample_market(QUIET)
    diff, tol = _difference(m, QUIET, before=False)
    # Seen with seed 7: diff = 0.00788, tolerance = 0.00106 (standard error ~0.00021).
    assert diff == pytest.approx(2 * QUIET.tone_effect, abs=tol)
    assert tol < 0.5 * QUIET.tone_effect  # sharp enough to tell the effect from nothing


def test_no_lookahead_returns_before_publication_do_not_depend_on_tone() -> None:
    m = generate_sample_market(QUIET)
    diff, tol = _difference(m, QUIET, before=True)
    # Seen with seed 7: diff = 0.00004 against a tolerance of 0.00106.
    assert abs(diff) < tol


def test_effect_sign_survives_default_noise(market: SampleMarket) -> None:
    # Seen with the defaults (seed 7, volatility 0.006, 6000 bars, 305 bullish / 279 bearish):
    # forward diff = +0.0079 (standard error ~0.0013, expected 0.008); backward diff = +0.0018.
    diff, _ = _difference(market, SampleMarketConfig(), before=False)
    assert diff > 0.004


def test_volume_is_higher_while_news_is_running(market: SampleMarket) -> None:
    times = np.array([n.ts_event for n in market.news])
    first = np.searchsorted(market.bars.ts_open, times, side="left")
    busy = np.zeros(len(market.bars), dtype=bool)
    for offset in range(SampleMarketConfig().effect_bars):
        busy[first[first + offset < len(busy)] + offset] = True
    assert market.bars.volume[busy].mean() > 1.2 * market.bars.volume[~busy].mean()


def test_generation_with_the_defaults_gives_bars_and_news() -> None:
    """Its speed is printed by benchmarks/bench_loading.py."""
    market = generate_sample_market()
    assert len(market.bars) == SampleMarketConfig().bars and len(market.news) > 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("bars", 0), ("bars", -5), ("bars", 2.5), ("effect_bars", 0),
        ("start_price", 0.0), ("start_price", -1.0), ("volatility", 0.0), ("volatility", float("nan")),
        ("drift", float("inf")), ("headlines_per_day", -1.0), ("tone_effect", -0.1),
        ("neutral_share", 1.5), ("neutral_share", -0.1),
        ("timeframe", "1x"), ("timeframe", "0h"), ("start", "not-a-date"), ("symbol", ""),
    ],
)
def test_invalid_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"SampleMarketConfig\.{field}"):
        generate_sample_market(SampleMarketConfig(**{field: value}))


def test_runaway_drift_is_refused() -> None:
    with pytest.raises(ValueError, match="drift"):
        generate_sample_market(SampleMarketConfig(drift=1.0, bars=2000))


def test_without_headlines_the_market_is_pure_noise() -> None:
    m = generate_sample_market(SampleMarketConfig(headlines_per_day=0.0, bars=100))
    assert m.news == () and m.tones == () and len(m.bars) == 100
