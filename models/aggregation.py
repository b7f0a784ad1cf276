"""One trading signal from the predictor's two outputs.

The regression head predicts the mean and log-variance of the next-period volatility-normalised
return; the sentiment head gives each headline bearish/neutral/bullish probabilities and a calibrated
confidence. Each becomes a ``Component``: a score in [-1, 1] (which way, how far) and a confidence
in [0, 1] (how much to trust it). ``aggregate`` averages the scores weighted by base weight x
confidence into a ``Signal`` that keeps every component for reports. Plain Python, no engine.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from types import MappingProxyType
from typing import Any, NamedTuple

HOUR_MS = 3_600_000
LOG_VARIANCE_CLAMP = 20.0
"""``log_variance`` is clamped to +-this before use, so exp() stays finite whatever a head emits."""
_PROBABILITY_TOLERANCE = 1e-6


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _unit(value: float, name: str, low: float = 0.0) -> None:
    _require(math.isfinite(value) and low <= value <= 1.0, f"{name} must be in [{low:g}, 1], got {value}")


@dataclass(frozen=True)
class AggregationConfig:
    """Every weight, window and threshold of the aggregation. The defaults are starting points, to
    be tuned on validation data; the news windows suit hourly bars, where the sample market's
    headlines move the price for about six bars.

    - ``regression_weight``, ``news_weight``: base weights of the two components (>= 0).
    - ``regression_scale``: regression score = tanh(scale x mean / std); 2 maps a predicted mean of
      a quarter of its std to about 0.46.
    - ``variance_ref``: predicted variance at which the regression confidence is 0.5. The target is
      volatility-normalised, so 1 means "as uncertain as the usual volatility".
    - ``news_half_life_ms``: a headline's weight halves every half-life of age (6 hours).
    - ``news_lookback_ms``: older headlines do not count (48 hours, where the weight is 2^-8).
    - ``news_weight_half``: total headline weight at which the news confidence is 0.5 (one fresh
      headline of confidence 1 weighs 1).
    - ``threshold``: direction is 0 while |score| is below it.
    """

    regression_weight: float = 1.0
    news_weight: float = 1.0
    regression_scale: float = 2.0
    variance_ref: float = 1.0
    news_half_life_ms: int = 6 * HOUR_MS
    news_lookback_ms: int = 48 * HOUR_MS
    news_weight_half: float = 1.0
    threshold: float = 0.1

    def __post_init__(self) -> None:
        for name in ("regression_weight", "news_weight"):
            _require(getattr(self, name) >= 0.0, f"{name} must be >= 0")
        for name in ("regression_scale", "variance_ref", "news_half_life_ms", "news_weight_half"):
            _require(getattr(self, name) > 0.0, f"{name} must be > 0")
        _require(self.news_lookback_ms >= 0, "news_lookback_ms must be >= 0")
        _require(0.0 <= self.threshold <= 1.0, "threshold must be in [0, 1]")

    def weights(self) -> dict[str, float]:
        """Base weights by component name, as ``aggregate`` takes them."""
        return {"regression": self.regression_weight, "news": self.news_weight}


_DEFAULT = AggregationConfig()


@dataclass(frozen=True)
class Component:
    """One input of the signal: ``score`` in [-1, 1], ``confidence`` in [0, 1], ``weight`` its base
    weight in the aggregation, ``count`` the inputs behind it (headlines; 1 for a regression)."""

    score: float
    confidence: float
    weight: float = 1.0
    count: int = 0

    def __post_init__(self) -> None:
        _unit(self.score, "score", -1.0)
        _unit(self.confidence, "confidence")
        _require(math.isfinite(self.weight) and self.weight >= 0.0, f"weight must be >= 0, got {self.weight}")
        _require(self.count >= 0, f"count must be >= 0, got {self.count}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Component:
        return cls(float(data["score"]), float(data["confidence"]), float(data["weight"]), int(data["count"]))


@dataclass(frozen=True)
class Signal:
    """The combined view at one instant. ``score`` in [-1, 1] is the confidence-weighted mean of the
    component scores, ``strength`` = |score|, ``direction`` its sign (0 below the threshold),
    ``confidence`` in [0, 1] the base-weighted mean of the component confidences. ``components``
    (read-only) holds every component by name; ``n_headlines`` the headlines that counted."""

    direction: int
    strength: float
    confidence: float
    score: float
    components: Mapping[str, Component]
    n_headlines: int = 0

    def __post_init__(self) -> None:
        _require(self.direction in (-1, 0, 1), f"direction must be -1, 0 or 1, got {self.direction}")
        _unit(self.strength, "strength")
        _unit(self.confidence, "confidence")
        _unit(self.score, "score", -1.0)
        _require(self.n_headlines >= 0, f"n_headlines must be >= 0, got {self.n_headlines}")
        object.__setattr__(self, "components", MappingProxyType(dict(self.components)))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (``json.dumps`` takes it as it is)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["components"] = {name: c.to_dict() for name, c in self.components.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signal:
        """The signal ``to_dict`` wrote."""
        components = {name: Component.from_dict(c) for name, c in data["components"].items()}
        return cls(int(data["direction"]), float(data["strength"]), float(data["confidence"]),
                   float(data["score"]), components, int(data["n_headlines"]))


class ScoredHeadline(NamedTuple):
    """A classified headline; a plain (publish_ms, (p_bearish, p_neutral, p_bullish), confidence)
    tuple works as well."""

    publish_ms: int
    probabilities: Sequence[float]
    confidence: float


def regression_component(mean: float, log_variance: float, scale: float = _DEFAULT.regression_scale,
                         variance_ref: float = _DEFAULT.variance_ref) -> Component:
    """Component of a regression prediction (``mean``, ``log_variance`` of the next-period
    volatility-normalised return).

    score = tanh(scale x mean / std), std = exp(log_variance / 2): the prediction's own z-score,
    squashed. confidence = variance_ref / (variance_ref + variance), i.e. the logistic function of
    ln(variance_ref) - log_variance: 0.5 at the reference, towards 1 as the variance shrinks and
    towards 0 as it grows. ``log_variance`` is clamped to +-``LOG_VARIANCE_CLAMP`` first."""
    _require(math.isfinite(mean) and math.isfinite(log_variance), "mean and log_variance must be finite")
    _require(scale > 0.0 and variance_ref > 0.0, "scale and variance_ref must be > 0")
    log_variance = min(max(log_variance, -LOG_VARIANCE_CLAMP), LOG_VARIANCE_CLAMP)
    score = math.tanh(scale * mean / math.exp(0.5 * log_variance))
    confidence = 1.0 / (1.0 + math.exp(log_variance - math.log(variance_ref)))
    return Component(score, confidence, count=1)


def news_component(headlines: Iterable[ScoredHeadline | tuple[int, Sequence[float], float]], now_ms: int,
                   half_life_ms: float = _DEFAULT.news_half_life_ms,
                   lookback_ms: float = _DEFAULT.news_lookback_ms,
                   weight_half: float = _DEFAULT.news_weight_half) -> Component:
    """Component of the headlines known at ``now_ms``.

    Only headlines with now_ms - lookback_ms <= publish_ms <= now_ms count (none from the future).
    Headline i weighs w_i = confidence_i x 2^(-age_i / half_life_ms); the score is the weighted mean
    of p_bullish - p_bearish, and the confidence W / (W + weight_half) with W = sum of w_i: it grows
    with the amount of confident, fresh news and is 0.5 at W = weight_half. No weight gives score 0
    and confidence 0."""
    _require(half_life_ms > 0.0 and weight_half > 0.0 and lookback_ms >= 0.0,
             "half_life_ms and weight_half must be > 0, lookback_ms >= 0")
    total = weighted = 0.0
    count = 0
    for publish_ms, probabilities, confidence in headlines:
        p_bearish, p_neutral, p_bullish = probabilities
        for p in (p_bearish, p_neutral, p_bullish):
            _unit(p, "a class probability")
        _require(abs(p_bearish + p_neutral + p_bullish - 1.0) <= _PROBABILITY_TOLERANCE,
                 f"class probabilities must sum to 1, got {tuple(probabilities)}")
        _unit(confidence, "headline confidence")
        age = now_ms - publish_ms
        if not 0 <= age <= lookback_ms:
            continue
        weight = confidence * 0.5 ** (age / half_life_ms)
        total += weight
        weighted += weight * (p_bullish - p_bearish)
        count += 1
    if total <= 0.0:
        return Component(0.0, 0.0, count=count)
    return Component(min(max(weighted / total, -1.0), 1.0), total / (total + weight_half), count=count)


def news_score(news: Component | None) -> float:
    """The news input of the calibrated expected move (``models.calibration``): the news
    component's score x its confidence, i.e. sum_i w_i (p_bull_i - p_bear_i) / (W + weight_half)
    over the headlines known at the instant (0 without any). Bounded in [-1, 1], zero with nothing
    to say, and growing with the amount of fresh, confident, agreeing news."""
    return 0.0 if news is None else news.score * news.confidence


def aggregate(regression: Component | None, news: Component | None,
              weights: Mapping[str, float] | None = None, threshold: float = _DEFAULT.threshold) -> Signal:
    """Combine the components into a ``Signal``; None leaves a component out.

    With base weights b_i (``weights`` by name, default ``AggregationConfig().weights()``) and
    confidences c_i: score = sum(b_i c_i s_i) / sum(b_i c_i) (0 when that is 0), so a component
    counts in proportion to how sure it is; confidence = sum(b_i c_i) / sum(b_i), so a component
    present but with nothing to say (no headlines) lowers it, while one left out does not.
    Disagreeing components cancel in the score, not in the confidence. direction = sign(score) when
    |score| >= ``threshold``, else 0."""
    weights = _DEFAULT.weights() if weights is None else weights
    _unit(threshold, "threshold")
    for name, component in (("regression", regression), ("news", news)):
        _require(component is None or name in weights, f"no weight given for the {name} component")
    components = {name: replace(c, weight=float(weights[name]))
                  for name, c in (("regression", regression), ("news", news)) if c is not None}
    evidence = sum(c.weight * c.confidence for c in components.values())
    base = sum(c.weight for c in components.values())
    score = sum(c.weight * c.confidence * c.score for c in components.values()) / evidence if evidence else 0.0
    score = min(max(score, -1.0), 1.0)
    direction = 0 if abs(score) < threshold or score == 0.0 else (1 if score > 0.0 else -1)
    confidence = min(evidence / base, 1.0) if base else 0.0
    return Signal(direction, abs(score), confidence, score, components, news.count if news else 0)


def signal_from(config: AggregationConfig, now_ms: int, prediction: tuple[float, float] | None = None,
                headlines: Iterable[ScoredHeadline | tuple[int, Sequence[float], float]] | None = None) -> Signal:
    """The signal at ``now_ms`` from a regression ``prediction`` (mean, log_variance) and the
    classified ``headlines``, with every setting from ``config``. None leaves that component out;
    an empty list of headlines keeps news in, with nothing to say."""
    regression = None if prediction is None else regression_component(
        *prediction, scale=config.regression_scale, variance_ref=config.variance_ref)
    news = None if headlines is None else news_component(
        headlines, now_ms, config.news_half_life_ms, config.news_lookback_ms, config.news_weight_half)
    return aggregate(regression, news, config.weights(), config.threshold)
