"""Signal aggregation: hand-computed cases, bounds and monotonicity as properties, JSON round trip."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.aggregation import (
    HOUR_MS,
    AggregationConfig,
    Component,
    ScoredHeadline,
    Signal,
    aggregate,
    news_component,
    regression_component,
    signal_from,
)

NOW = 1_700_000_000_000
HALF = 6 * HOUR_MS
LOOKBACK = 48 * HOUR_MS


def news(headlines, now=NOW):
    return news_component(headlines, now, half_life_ms=HALF, lookback_ms=LOOKBACK, weight_half=1.0)


def test_regression_component_by_hand():
    c = regression_component(0.5, 0.0, scale=2.0, variance_ref=1.0)  # std 1: z = 0.5
    assert c.score == pytest.approx(math.tanh(1.0))
    assert c.confidence == pytest.approx(0.5)  # variance == reference
    c = regression_component(-0.5, math.log(4.0), scale=2.0, variance_ref=1.0)  # std 2: z = -0.25
    assert c.score == pytest.approx(math.tanh(-0.5))
    assert c.confidence == pytest.approx(1 / (1 + 4))
    assert regression_component(0.0, -1e9).confidence == pytest.approx(1.0)  # clamped, not overflowing
    assert regression_component(3.0, 1e9).score == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ValueError, match="finite"):
        regression_component(float("nan"), 0.0)


def test_one_headline():
    c = news([ScoredHeadline(NOW - HALF, (0.1, 0.2, 0.7), 0.8)])  # one half-life old: w = 0.8 / 2
    assert c.score == pytest.approx(0.6)
    assert c.confidence == pytest.approx(0.4 / 1.4)
    assert c.count == 1


def test_two_headlines_of_different_age_and_confidence():
    fresh_bullish = (NOW, (0.0, 0.0, 1.0), 1.0)                   # w = 1,   p_bull - p_bear = +1
    old_bearish = (NOW - 2 * HALF, (0.9, 0.1, 0.0), 0.8)          # w = 0.2, p_bull - p_bear = -0.9
    c = news([fresh_bullish, old_bearish])
    assert c.score == pytest.approx((1.0 * 1.0 + 0.2 * -0.9) / 1.2)
    assert c.confidence == pytest.approx(1.2 / 2.2)
    assert c.count == 2


def test_future_and_out_of_window_headlines_are_ignored():
    only = (NOW - HOUR_MS, (0.2, 0.3, 0.5), 0.9)
    expected = news([only])
    future = (NOW + 1, (1.0, 0.0, 0.0), 1.0)
    too_old = (NOW - LOOKBACK - 1, (1.0, 0.0, 0.0), 1.0)
    assert news([future, only, too_old]) == expected
    edge = news([(NOW - LOOKBACK, (0.0, 0.0, 1.0), 1.0)])  # exactly at the look-back edge counts
    assert edge.count == 1 and edge.confidence == pytest.approx(2**-8 / (1 + 2**-8))


def test_no_headlines():
    assert news([]) == Component(0.0, 0.0, count=0)
    assert news([(NOW, (0.0, 0.0, 1.0), 0.0)]) == Component(0.0, 0.0, count=1)  # zero confidence


def test_bad_headlines_are_refused():
    with pytest.raises(ValueError, match="sum to 1"):
        news([(NOW, (0.5, 0.5, 0.5), 1.0)])
    with pytest.raises(ValueError, match="confidence"):
        news([(NOW, (0.0, 0.0, 1.0), 1.5)])


def test_regression_only():
    reg = Component(0.4, 0.5, count=1)
    signal = aggregate(reg, None, {"regression": 3.0}, threshold=0.1)
    assert signal.direction == 1 and signal.score == pytest.approx(0.4) == signal.strength
    assert signal.confidence == 0.5
    assert list(signal.components) == ["regression"] and signal.components["regression"].weight == 3.0
    assert signal.n_headlines == 0


def test_disagreeing_components():
    reg, bearish_news = Component(0.8, 0.5, count=1), Component(-0.6, 0.75, count=4)
    signal = aggregate(reg, bearish_news, {"regression": 1.0, "news": 2.0}, threshold=0.1)
    # evidence = 1 * 0.5 + 2 * 0.75 = 2; score = (0.4 - 0.9) / 2; confidence = 2 / 3
    assert signal.score == pytest.approx(-0.25) and signal.strength == pytest.approx(0.25)
    assert signal.confidence == pytest.approx(2 / 3)
    assert signal.direction == -1 and signal.n_headlines == 4
    assert aggregate(reg, bearish_news, {"regression": 1.0, "news": 2.0}, threshold=0.3).direction == 0


def test_empty_news_lowers_confidence_but_missing_news_does_not():
    reg = Component(0.5, 0.8, count=1)
    assert aggregate(reg, news([])).confidence == pytest.approx(0.4)
    assert aggregate(reg, None).confidence == pytest.approx(0.8)
    assert aggregate(None, None) == Signal(0, 0.0, 0.0, 0.0, {})
    with pytest.raises(ValueError, match="no weight"):
        aggregate(reg, None, {"news": 1.0})


def test_signal_from_config():
    config = AggregationConfig(regression_weight=1.0, news_weight=1.0, threshold=0.2)
    signal = signal_from(config, NOW, prediction=(0.5, 0.0), headlines=[(NOW - HALF, (0.1, 0.2, 0.7), 0.8)])
    expected = aggregate(regression_component(0.5, 0.0), news([(NOW - HALF, (0.1, 0.2, 0.7), 0.8)]),
                         config.weights(), 0.2)
    assert signal == expected and signal.n_headlines == 1
    assert set(signal_from(config, NOW, prediction=(0.5, 0.0)).components) == {"regression"}
    with pytest.raises(ValueError, match="news_half_life_ms"):
        AggregationConfig(news_half_life_ms=0)
    with pytest.raises(ValueError, match="threshold"):
        AggregationConfig(threshold=1.5)


def test_json_round_trip():
    signal = signal_from(AggregationConfig(), NOW, (0.3, -0.5), [(NOW - 1, (0.2, 0.2, 0.6), 0.7)])
    text = json.dumps(signal.to_dict())
    assert Signal.from_dict(json.loads(text)) == signal
    assert json.loads(text)["components"]["news"]["count"] == 1
    with pytest.raises(TypeError):
        signal.components["news"] = Component(0.0, 0.0)  # read-only


unit = st.floats(0.0, 1.0)
scores = st.floats(-1.0, 1.0)
headline = st.builds(
    lambda age, a, b, conf: (NOW - age, (min(a, b), abs(a - b), 1.0 - max(a, b)), conf),
    st.integers(-LOOKBACK, 2 * LOOKBACK), unit, unit, unit)


@settings(max_examples=200, deadline=None)
@given(mean=st.floats(-1e6, 1e6), log_variance=st.floats(-1e3, 1e3))
def test_regression_component_is_bounded(mean, log_variance):
    c = regression_component(mean, log_variance)
    assert -1.0 <= c.score <= 1.0 and 0.0 <= c.confidence <= 1.0


@settings(max_examples=100, deadline=None)
@given(mean=st.floats(-10, 10), a=st.floats(-15, 15), b=st.floats(-15, 15))
def test_regression_confidence_falls_as_variance_grows(mean, a, b):
    low, high = sorted((a, b))
    assert regression_component(mean, low).confidence >= regression_component(mean, high).confidence


@settings(max_examples=100, deadline=None)
@given(headlines=st.lists(headline, max_size=12))
def test_news_component_is_bounded(headlines):
    c = news(headlines)
    assert -1.0 <= c.score <= 1.0 and 0.0 <= c.confidence < 1.0
    assert c.count == sum(0 <= NOW - h[0] <= LOOKBACK for h in headlines)


components = st.builds(Component, scores, unit, count=st.integers(0, 50)) | st.none()
weights = st.fixed_dictionaries({"regression": st.floats(0.0, 10.0), "news": st.floats(0.0, 10.0)})


@settings(max_examples=200, deadline=None)
@given(reg=components, nws=components, w=weights, threshold=unit)
def test_signal_is_bounded_and_consistent(reg, nws, w, threshold):
    s = aggregate(reg, nws, w, threshold)
    assert -1.0 <= s.score <= 1.0 and 0.0 <= s.confidence <= 1.0 and s.strength == abs(s.score)
    assert s.direction in (-1, 0, 1) and (s.direction == 0) == (abs(s.score) < threshold or s.score == 0)
    assert len(s.components) == (reg is not None) + (nws is not None)


@settings(max_examples=200, deadline=None)
@given(reg=st.builds(Component, scores, unit), nws=st.builds(Component, scores, unit), w=weights,
       which=st.sampled_from(["regression", "news"]), a=scores, b=scores)
def test_signal_score_is_monotonic_in_each_component_score(reg, nws, w, which, a, b):
    low, high = sorted((a, b))

    def score_with(x):
        parts = {"regression": reg, "news": nws}
        parts[which] = Component(x, parts[which].confidence)
        return aggregate(parts["regression"], parts["news"], w).score

    assert score_with(low) <= score_with(high)


def test_news_score_is_the_news_score_times_its_confidence_and_zero_without_news():
    from models.aggregation import news_score

    assert news_score(None) == 0.0
    one = news_component([(0, (0.0, 0.0, 1.0), 1.0)], now_ms=0)  # one fresh, sure, bullish headline: W = 1
    assert news_score(one) == pytest.approx(1.0 * 0.5)
    two = news_component([(0, (0.0, 0.0, 1.0), 1.0), (0, (0.0, 0.0, 1.0), 1.0)], now_ms=0)
    assert news_score(two) == pytest.approx(2 / 3)  # more agreeing news, a larger score
    mixed = news_component([(0, (0.0, 0.0, 1.0), 1.0), (0, (1.0, 0.0, 0.0), 1.0)], now_ms=0)
    assert news_score(mixed) == 0.0
