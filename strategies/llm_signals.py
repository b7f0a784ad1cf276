"""Where the LLM strategy's signals come from: one interface (``SignalSource``), two implementations
from the model (and ``OracleSignals``, the sample market's true tones: an upper bound, ``--oracle`` only).

A source answers two questions while the event loop runs, for one symbol:

- ``on_news(news)``: the headline's classification, a ``models.aggregation.ScoredHeadline``
  (publish time, calibrated bearish / neutral / bullish probabilities, confidence = the largest
  probability). From its publish time on, the headline counts in every later signal.
- ``on_bar(bar)``: the ``BarPrediction`` at the bar's close: the regressor's mean and log-variance
  of the log return over its horizon (the strategy's holding time) divided by realised volatility
  (see ``models.training.regressor_trainer``), the bar's realised volatility, the aggregated
  ``models.aggregation.Signal`` of that regression and of the headlines published up to the close
  (within ``AggregationConfig.news_lookback_ms``, none later), the news score and the calibrated
  forecast (``SignalModel.calibration``, ``models.calibration``). ``None`` while the features warm up
  (their first ``models.features.WARMUP_BARS`` bars).

``PrecomputedSignals`` computes everything before the loop, in batches: the features of the whole
history (``compute_features``; row t uses bars up to t only), the regressions of the traded bars and
the classes of all headlines, each through the ``PredictionCache`` when one is given, so a rerun
computes nothing. During the loop it only looks answers up. ``OnlineSignals`` computes them as
the events arrive, as the paper and live daemons will: ``IncrementalFeatures`` bar by bar, one
regression per bar, one classification per headline in ``on_news``.

Given the same predictor and inputs, the two give bit-identical answers when
``SignalModel.batch_size`` is 1 (each prompt alone through the model): ``tests/test_llm_sources.py``
runs a history both ways and compares every decision. With larger batches the precomputed path
pads prompts of different lengths together, which changes float rounding (~1e-7) and so, in rare
edge cases, a decision; use them where speed matters more than that identity (a GPU).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from engine.domain import Bar, News
from engine.series import BarSeries
from models.aggregation import (
    AggregationConfig,
    Component,
    ScoredHeadline,
    Signal,
    aggregate,
    news_component,
    news_score,
    regression_component,
)
from models.calibration import Calibration
from models.features import FEATURE_NAMES, FeatureScaler, IncrementalFeatures, compute_features
from models.prompts import headline_text, regression_text

RVOL_WINDOW = 20
"""Bars in the ``rvol20`` feature: the regressor must normalise its target by the same window."""
_RVOL = FEATURE_NAMES.index("rvol20")
_SAMPLE_STD = math.sqrt(RVOL_WINDOW / (RVOL_WINDOW - 1))  # rvol20 is a population std; the target's is ddof=1
_CHUNK = 32  # prompts per predictor call in the precomputation (the unit of progress reports)

Progress = Callable[[str, int, int], None]
"""Called as ``progress(what, done, total)`` while a source computes predictions."""


@dataclass(frozen=True, slots=True)
class BarPrediction:
    """The predictor's view at one bar close ``ts``: ``mean`` and ``log_variance`` of the
    regressor's target (the log return over its horizon, the strategy's ``holding_bars``, divided by
    ``volatility``, the realised volatility of the last 20 log returns, as the regressor's target was
    normalised), the aggregated ``signal`` (it sizes the position and is recorded), ``news_score``
    (``models.aggregation.news_score`` of the headlines known at the close) and ``expected_z``: the
    CALIBRATED forecast of that vol-normalised return (``models.calibration.Calibration.z``), which
    the cost gate uses (expected move = expected_z x volatility). ``expected_z`` None: no
    calibration was given, and the regression mean stands for it as it is. ``inputs``: every
    component computed at the close, by name, including those the calibration left out of
    ``signal`` (for records and reports)."""

    ts: int
    mean: float
    log_variance: float
    volatility: float
    signal: Signal
    news_score: float = 0.0
    expected_z: float | None = None
    inputs: Mapping[str, Component] | None = None  # None: those of ``signal``

    @property
    def std(self) -> float:
        """Predicted standard deviation of the volatility-normalised return."""
        return math.exp(0.5 * self.log_variance)

    @property
    def z(self) -> float:
        """The forecast the strategy trades: ``expected_z``, or the regression mean without a calibration."""
        return self.mean if self.expected_z is None else self.expected_z


class SignalSource(Protocol):
    """What ``strategies.llm_signal.LlmSignal`` asks for; see the module docstring."""

    symbol: str
    timeframe_ms: int
    aggregation: AggregationConfig
    regressor_model: str  # identities of the two adapters, for the records
    sentiment_model: str

    def on_news(self, news: News) -> ScoredHeadline: ...

    def on_bar(self, bar: Bar) -> BarPrediction | None: ...


@dataclass(frozen=True)
class SignalModel:
    """The trained predictor and how to prompt it: everything both sources share.

    ``predictor`` is a ``models.predictor.Predictor`` holding both adapters; ``scaler``,
    ``feature_digits`` and ``window`` are the regressor checkpoint's (its inputs must be built as in
    training): ``window`` > 0 for a regressor with a numeric encoder (``models.encoder``), which reads
    the scaled features of the last ``window`` bars; 0 for one that reads prompt texts, written with
    ``feature_digits`` decimals and naming ``asset`` and ``timeframe``. ``cache`` is an optional
    ``models.cache.PredictionCache``; ``batch_size`` is the number of inputs per forward pass (see the
    module docstring for when the two sources agree bit for bit)."""

    predictor: Any
    scaler: FeatureScaler
    aggregation: AggregationConfig
    asset: str
    timeframe: str
    timeframe_ms: int
    feature_digits: int = 2
    batch_size: int = 1
    cache: Any = None
    calibration: Calibration | None = None  # the fitted expected move (strategies.llm_prepare fits it)
    window: int = 0  # > 0: the regressor's numeric-encoder window in bars; 0: it reads prompt texts
    window_batch_size: int = 16  # windows per forward pass, always this many (padded): alone = in a batch, to rounding

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.window < 0 or self.window_batch_size < 1:
            raise ValueError(f"window must be >= 0 and window_batch_size >= 1, got {self.window}, "
                             f"{self.window_batch_size}")

    @property
    def regressor_model(self) -> str:
        return self.predictor.fingerprint("regressor")

    @property
    def sentiment_model(self) -> str:
        """"" when the predictor has no sentiment adapter (a run without headlines)."""
        return self.predictor.fingerprint("sentiment") if "sentiment" in self.predictor.heads else ""

    @property
    def rows_needed(self) -> int:
        """Feature rows (bars) one regression reads: the encoder's window, or the bar itself."""
        return max(1, self.window)

    def regression_ready(self, features: np.ndarray) -> np.ndarray:
        """Per row of raw ``features`` (bars, 16): whether a regression can be made at that bar."""
        if self.window:
            from models.encoder import window_ready  # torch, on use

            return window_ready(features, self.window)
        return np.isfinite(np.asarray(features, dtype=np.float64)).all(axis=1)

    def regress(self, features: np.ndarray, index: Sequence[int], cache: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(mean, log-variance) at the bars ``index`` of raw feature rows ``features`` (bars, 16),
        each from rows up to its own bar only: the ONE place where the regressor is called (the
        precomputed and online sources and the calibration all go through it)."""
        features = np.asarray(features, dtype=np.float64)
        index = list(index)
        if not self.window:
            texts = [regression_text(self.asset, self.timeframe, row, self.feature_digits)
                     for row in self.scaler.transform(features[index])] if index else []
            mean, std = self.predictor.predict_regression(texts, batch_size=self.batch_size, cache=cache)
            return mean, 2.0 * np.log(std)
        from models.encoder import feature_windows  # torch, on use

        windows = self.scaler.transform(feature_windows(features, index, self.window))  # elementwise: = scaling rows first
        out = np.full((len(index), 2), np.nan)
        keys = [f"window:{self.window_batch_size}:{hashlib.sha256(w.tobytes()).hexdigest()}" for w in windows]
        todo = list(range(len(index)))
        if cache is not None and keys:
            found = cache.get_many(self.regressor_model, keys)
            for i, value in enumerate(found):
                if value is not None:
                    out[i] = value
            todo = [i for i, value in enumerate(found) if value is None]
        if todo:
            mean, std = self.predictor.predict_regression_windows(windows[todo], batch_size=self.window_batch_size)
            out[todo, 0], out[todo, 1] = mean, 2.0 * np.log(std)
            if cache is not None:
                cache.put_many(self.regressor_model, [keys[i] for i in todo], out[todo])
        return out[:, 0], out[:, 1]

    def classify(self, headlines: Sequence[str], cache: Any = None) -> np.ndarray:
        """Calibrated class probabilities (n, 3) per headline."""
        return self.predictor.predict_sentiment([headline_text(h) for h in headlines], batch_size=self.batch_size,
                                                cache=cache)

    def signal(self, ts: int, mean: float, log_variance: float, volatility: float,
               headlines: Iterable[ScoredHeadline]) -> BarPrediction:
        return bar_prediction(self.aggregation, ts, mean, log_variance, volatility, headlines, self.calibration)


def bar_prediction(aggregation: AggregationConfig, ts: int, mean: float, log_variance: float, volatility: float,
                   headlines: Iterable[ScoredHeadline], calibration: Calibration | None = None, *,
                   regression: bool = True) -> BarPrediction:
    """The prediction at the bar close ``ts`` with its signal aggregated from the regression and
    ``headlines``, its news score and, given a ``calibration``, the calibrated forecast.
    ``regression=False`` leaves the regression out of the signal (the oracle has none).

    With a calibration, the signal (which sizes the position) holds only the components whose
    coefficient it kept: a regression found not significant before the cut moves neither the
    expected move nor the size. Otherwise its confidence would still enter the signal's mean
    confidence and shrink every position the news opens (by about 40% on the sample market, where
    the regression's confidence is ~0.1 and the news' ~0.5)."""
    a = aggregation
    news = news_component(headlines, ts, a.news_half_life_ms, a.news_lookback_ms, a.news_weight_half)
    score = news_score(news)
    z = None if calibration is None else calibration.z(mean if regression else 0.0, score)
    inputs = {"news": news}
    if regression:
        inputs = {"regression": regression_component(mean, log_variance, a.regression_scale, a.variance_ref), **inputs}
    kept = inputs if calibration is None else {
        name: c for name, c in inputs.items() if getattr(calibration, name).kept}
    signal = aggregate(kept.get("regression"), kept.get("news"), a.weights(), a.threshold)
    return BarPrediction(ts, mean, log_variance, volatility, signal, score, z, inputs)


def score_headline(publish_ms: int, probabilities: np.ndarray) -> ScoredHeadline:
    """A classified headline; its confidence is the calibrated probability of its likeliest class."""
    probs = tuple(float(p) for p in probabilities)
    return ScoredHeadline(int(publish_ms), probs, max(probs))


def volatility_of(features: np.ndarray) -> float:
    """The realised volatility (a sample std, as the regressor's target uses) of a feature row."""
    return float(features[_RVOL]) * _SAMPLE_STD


_volatility = volatility_of


@dataclass(frozen=True, slots=True)
class SourceIdentity:
    """The ``SignalSource`` identity attributes: what a source predicts for and with which models."""

    symbol: str
    timeframe_ms: int
    aggregation: AggregationConfig
    regressor_model: str
    sentiment_model: str
    calibration: Calibration | None = None

    @classmethod
    def of(cls, model: SignalModel, symbol: str) -> SourceIdentity:
        return cls(symbol, model.timeframe_ms, model.aggregation, model.regressor_model, model.sentiment_model,
                   model.calibration)


class _Source:
    """The ``SignalSource`` identity attributes, shared by every source."""

    def __init__(self, identity: SourceIdentity) -> None:
        self.identity = identity
        self.symbol = identity.symbol
        self.timeframe_ms = identity.timeframe_ms
        self.aggregation = identity.aggregation
        self.regressor_model = identity.regressor_model
        self.sentiment_model = identity.sentiment_model
        self.calibration = identity.calibration
        self.signal_source = "model"  # "oracle" for OracleSignals: the records say which


class PrecomputedSignals(_Source):
    """Answers computed before the loop (``compute``), looked up during it."""

    def __init__(self, identity: SourceIdentity, rows: dict[int, tuple[float, float, float] | None],
                 headlines: Sequence[ScoredHeadline], classes: dict[str, tuple[float, ...]],
                 stats: dict[str, int]) -> None:
        super().__init__(identity)
        self._rows = rows  # bar close -> (mean, log-variance, volatility); None during warm-up
        self._headlines = list(headlines)  # sorted by publish time
        self._times = [h.publish_ms for h in self._headlines]
        self._classes = classes  # headline text -> probabilities
        self.stats = stats  # what was predicted and how much came from the cache
        self._regression = True  # False: the signal has no regression component (the oracle)

    @classmethod
    def compute(cls, model: SignalModel, bars: BarSeries, news: Sequence[News], *, start_ms: int,
                progress: Progress | None = None) -> PrecomputedSignals:
        """Predictions for the bars of ``bars`` that open at or after ``start_ms`` (the earlier bars
        only feed the features), and classes for every headline in ``news`` (give those published
        up to the look-back before ``start_ms`` as well: they still count in the first signals)."""
        features = compute_features(bars.ts_open, bars.open, bars.high, bars.low, bars.close, bars.volume,
                                    bars.timeframe_ms)
        first = int(np.searchsorted(bars.ts_open, start_ms, side="left"))
        closes = bars.ts_close.tolist()
        usable = model.regression_ready(features)
        ready = [i for i in range(first, len(bars)) if usable[i]]
        rows: dict[int, tuple[float, float, float] | None] = dict.fromkeys(closes[first:])
        cache = model.cache
        hits = cache.hits if cache is not None else 0
        for a in range(0, len(ready), _CHUNK):
            mean, log_variance = model.regress(features, ready[a:a + _CHUNK], cache)
            for i, m, v in zip(ready[a:a + _CHUNK], mean.tolist(), log_variance.tolist()):
                rows[closes[i]] = (m, v, _volatility(features[i]))
            if progress is not None:
                progress("bars", min(a + _CHUNK, len(ready)), len(ready))
        regression_hits = (cache.hits - hits) if cache is not None else 0
        ordered = sorted(news, key=lambda n: n.ts_event)
        unique = list(dict.fromkeys(n.headline for n in ordered))
        classes: dict[str, tuple[float, ...]] = {}
        hits = cache.hits if cache is not None else 0
        for a in range(0, len(unique), _CHUNK):
            chunk = unique[a:a + _CHUNK]
            for text, probs in zip(chunk, model.classify(chunk, cache)):
                classes[text] = tuple(float(p) for p in probs)
            if progress is not None:
                progress("headlines", min(a + _CHUNK, len(unique)), len(unique))
        headlines = [score_headline(n.ts_event, np.array(classes[n.headline])) for n in ordered]
        stats = {"bars": len(ready), "headlines": len(ordered), "distinct_headlines": len(unique),
                 "regression_cached": regression_hits,
                 "sentiment_cached": (cache.hits - hits) if cache is not None else 0}
        return cls(SourceIdentity.of(model, bars.symbol), rows, headlines, classes, stats)

    def regression_means(self) -> dict[int, float]:
        """Bar close -> the predicted mean of the next bar's volatility-normalised log return (bars past warm-up)."""
        return {ts: row[0] for ts, row in self._rows.items() if row is not None}

    def without_news(self) -> PrecomputedSignals:
        """The same regressions with no headlines: the signal is the regression alone (the
        no-news variant of an evaluation; nothing is recomputed)."""
        identity = dataclasses.replace(self.identity, sentiment_model="")
        return PrecomputedSignals(identity, self._rows, [], {}, {**self.stats, "headlines": 0, "distinct_headlines": 0})

    def with_calibration(self, calibration: Calibration | None) -> PrecomputedSignals:
        """The same answers with another calibration of the expected move (nothing is recomputed)."""
        other = type(self).__new__(type(self))
        other.__dict__.update(self.__dict__)
        _Source.__init__(other, dataclasses.replace(self.identity, calibration=calibration))
        other.signal_source = self.signal_source
        return other

    def rows(self) -> dict[int, tuple[float, float, float] | None]:
        """Bar close -> (mean, log-variance, volatility); None during the features' warm-up."""
        return dict(self._rows)

    def headlines(self) -> list[ScoredHeadline]:
        """Every classified headline, in publish order."""
        return list(self._headlines)

    def on_news(self, news: News) -> ScoredHeadline:
        probs = self._classes.get(news.headline)
        if probs is None:
            raise LookupError(f"headline {news.headline[:60]!r} was not among the precomputed ones; "
                              "compute the source with every headline the backtest delivers")
        return score_headline(news.ts_event, np.array(probs))

    def on_bar(self, bar: Bar) -> BarPrediction | None:
        ts = bar.ts_event
        if ts not in self._rows:
            raise LookupError(f"no precomputed prediction for the {bar.symbol} bar closing at {ts}; the source "
                              "covers the bars it was computed for (PrecomputedSignals.compute start_ms)")
        row = self._rows[ts]
        if row is None:
            return None
        lookback = self.aggregation.news_lookback_ms
        lo, hi = bisect.bisect_left(self._times, ts - lookback), bisect.bisect_right(self._times, ts)
        return bar_prediction(self.aggregation, ts, *row, self._headlines[lo:hi], self.calibration,
                              regression=self._regression)


class OnlineSignals(_Source):
    """Answers computed as events arrive. Call ``warm_up`` with the history before the first
    traded bar: the features start where the precomputed ones start, and recent headlines count."""

    def __init__(self, model: SignalModel, symbol: str) -> None:
        super().__init__(SourceIdentity.of(model, symbol))
        self._model = model
        self._features = IncrementalFeatures(model.timeframe_ms)
        self._rows: deque[np.ndarray] = deque(maxlen=model.rows_needed)  # the latest feature rows
        self._headlines: deque[ScoredHeadline] = deque()  # in arrival order (time order), pruned past the look-back

    def warm_up(self, bars: BarSeries, news: Sequence[News] = ()) -> None:
        """Feed bars (features only, no predictions) and classify headlines that precede trading."""
        for bar in zip(bars.ts_open.tolist(), bars.open.tolist(), bars.high.tolist(), bars.low.tolist(),
                       bars.close.tolist(), bars.volume.tolist()):
            self._add(self._features.update(*bar))
        for item in sorted(news, key=lambda n: n.ts_event):
            self.on_news(item)

    def _add(self, row: np.ndarray | None) -> None:
        """Keep the bar's feature row (NaN during the warm-up) for the encoder's window."""
        self._rows.append(np.full(len(FEATURE_NAMES), np.nan) if row is None else row)

    def on_news(self, news: News) -> ScoredHeadline:
        scored = score_headline(news.ts_event, self._model.classify([news.headline], self._model.cache)[0])
        self._headlines.append(scored)
        return scored

    def on_bar(self, bar: Bar) -> BarPrediction | None:
        row = self._features.update(bar.ts_open, bar.open, bar.high, bar.low, bar.close, bar.volume)
        self._add(row)
        if row is None or not np.isfinite(row).all():
            return None
        recent = np.array(self._rows)
        if not self._model.regression_ready(recent)[-1]:
            return None
        ts = bar.ts_event
        oldest = ts - self.aggregation.news_lookback_ms
        while self._headlines and self._headlines[0].publish_ms < oldest:
            self._headlines.popleft()
        mean, log_variance = self._model.regress(recent, [len(recent) - 1], self._model.cache)
        known = [h for h in self._headlines if h.publish_ms <= ts]
        return self._model.signal(ts, float(mean[0]), float(log_variance[0]), _volatility(row), known)


RIDGE_PENALTIES = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)


def ridge_signals(bars: BarSeries, aggregation: AggregationConfig, *, train_end_ms: int, start_ms: int,
                  penalties: Sequence[float] = RIDGE_PENALTIES, validation_fraction: float = 0.2,
                  horizon: int = 1) -> PrecomputedSignals:
    """The same strategy's signals from ridge regression on the same sixteen features instead of
    the LLM, with no headlines: the baseline that shows whether the LLM adds anything.

    Fitted on the samples of the bars that close before ``train_end_ms`` whose target (the log
    return to the close ``horizon`` bars later over the realised volatility, as the LLM regressor's:
    pass the strategy's ``holding_bars``) is known before it too; the penalty is the one with the
    lowest MSE on the last ``validation_fraction`` of them (the ``horizon - 1`` samples before them,
    whose targets overlap theirs, left out of that fit), then refitted on all. The predicted variance is the
    training residuals' (one value: ridge has no per-sample uncertainty). Predictions for the bars
    opening at or after ``start_ms``, as ``PrecomputedSignals.compute`` makes them."""
    from models.datasets import regression_samples
    from models.training.evaluation import fit_ridge, predict_ridge

    features = compute_features(bars.ts_open, bars.open, bars.high, bars.low, bars.close, bars.volume,
                                bars.timeframe_ms)
    train_bars = int(np.searchsorted(bars.ts_close, train_end_ms, side="right"))  # bars closed by the cut
    samples = regression_samples(features[:train_bars], bars.close[:train_bars], vol_window=RVOL_WINDOW,
                                 horizon=horizon)
    n = len(samples)
    n_val = max(1, round(validation_fraction * n))
    fit_end = n - n_val - (horizon - 1)  # purged: no fitted target overlaps a validation one
    if fit_end < 2 * len(FEATURE_NAMES):
        raise ValueError(f"ridge baseline: {n} training samples before the cut; need at least "
                         f"{2 * len(FEATURE_NAMES) + n_val + horizon - 1} to fit 16 features")
    scaler = FeatureScaler.fit(samples.features[:fit_end])
    x, y = scaler.transform(samples.features), samples.targets
    scored = [(float(np.mean((predict_ridge(fit_ridge(x[:fit_end], y[:fit_end], p), x[-n_val:]) - y[-n_val:]) ** 2)),
               p) for p in penalties]
    penalty = min(scored)[1]
    coef = fit_ridge(x, y, penalty)
    log_variance = float(np.log(max(np.var(y - predict_ridge(coef, x)), 1e-12)))
    first = int(np.searchsorted(bars.ts_open, start_ms, side="left"))
    closes = bars.ts_close.tolist()
    rows: dict[int, tuple[float, float, float] | None] = dict.fromkeys(closes[first:])
    ready = [i for i in range(first, len(bars)) if np.isfinite(features[i]).all()]
    if ready:
        means = predict_ridge(coef, scaler.transform(features[ready]))
        for i, m in zip(ready, means.tolist()):
            rows[closes[i]] = (m, log_variance, _volatility(features[i]))
    identity = SourceIdentity(bars.symbol, bars.timeframe_ms, aggregation,
                              f"ridge(penalty={penalty:g}, n={n}, horizon={horizon})", "")
    stats = {"bars": len(ready), "headlines": 0, "distinct_headlines": 0, "regression_cached": 0,
             "sentiment_cached": 0, "train_samples": n}
    return PrecomputedSignals(identity, rows, [], {}, stats)


ORACLE_NOTE = "ORACLE: knows the true tones; an upper bound, not a strategy"


class OracleSignals(PrecomputedSignals):
    """The best the ``llm_signal`` strategy can do on the SYNTHETIC sample market: a source that
    knows every headline's true tone (``engine.feeds.sample.SampleMarket.tones``) and classifies it
    with probability 1, and has no regression (its mean is 0 and it is left out of the signal). It
    is an upper bound for the LLM's sentiment half, NEVER a strategy: it reads the answer the
    market was generated from, so it exists only on the sample and only behind ``--oracle``."""

    @classmethod
    def build(cls, bars: BarSeries, news: Sequence[News], tones: Sequence[int], aggregation: AggregationConfig, *,
              start_ms: int, calibration: Calibration | None = None) -> OracleSignals:
        """The answers for the bars of ``bars`` opening at or after ``start_ms`` (the earlier ones
        feed the volatility), for the headlines ``news`` with their true ``tones`` (-1, 0, +1)."""
        if len(news) != len(tones):
            raise ValueError(f"one tone per headline: {len(news)} headlines, {len(tones)} tones")
        features = compute_features(bars.ts_open, bars.open, bars.high, bars.low, bars.close, bars.volume,
                                    bars.timeframe_ms)
        first = int(np.searchsorted(bars.ts_open, start_ms, side="left"))
        closes = bars.ts_close.tolist()
        rows: dict[int, tuple[float, float, float] | None] = dict.fromkeys(closes[first:])
        for i in range(first, len(bars)):
            if np.isfinite(features[i]).all():
                rows[closes[i]] = (0.0, 0.0, _volatility(features[i]))
        one_hot = {-1: (1.0, 0.0, 0.0), 0: (0.0, 1.0, 0.0), 1: (0.0, 0.0, 1.0)}
        pairs = sorted(zip(news, tones), key=lambda p: p[0].ts_event)
        classes: dict[str, tuple[float, ...]] = {}
        for item, tone in pairs:
            if tone not in one_hot:
                raise ValueError(f"a tone is -1, 0 or +1, got {tone!r}")
            if classes.setdefault(item.headline, one_hot[tone]) != one_hot[tone]:
                raise ValueError(f"headline {item.headline[:60]!r} has two different tones")
        headlines = [score_headline(item.ts_event, np.array(one_hot[tone])) for item, tone in pairs]
        identity = SourceIdentity(bars.symbol, bars.timeframe_ms, aggregation, "oracle:none", "oracle:true-tones",
                                  calibration)
        stats = {"bars": sum(r is not None for r in rows.values()), "headlines": len(pairs),
                 "distinct_headlines": len(classes), "regression_cached": 0, "sentiment_cached": 0}
        source = cls(identity, rows, headlines, classes, stats)
        source._regression = False
        source.signal_source = "oracle"
        return source
