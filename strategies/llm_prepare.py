"""The LLM strategy's preparation (its ``Strategy.prepare`` hook): split the data, fine-tune (or reuse) the predictor, predict, and
return a plan that trades only the later part.

Out of sample by construction. The bars are cut at ``llm.train_fraction``: the regressor adapter is
fine-tuned on the bars before the cut (``models.training.regressor_trainer``, which splits them
again in time for its own validation) and the sentiment adapter on the headlines published before
the cut, labelled with the sample market's known tones (``models.datasets.sample_headlines``).
Only the bars from the cut on are traded and only their headlines are delivered; the earlier bars
still feed the features (100 bars of look-back) and headlines within the aggregation's look-back
before the cut still count in the first signals, as they would live. No label or price of the
traded part reaches training.

Checkpoints live in ``llm.cache_dir/checkpoints/<task>-<key>``, the key a hash of the training data's
fingerprint, the training config and the backbone's fingerprint: an identical second run reuses
them, and its predictions come from the ``PredictionCache`` (``llm.cache_dir/predictions.sqlite``),
so it recomputes nothing. The trainers write checkpoints atomically (temporary folder, then
rename), so a killed run leaves none half-written. ``llm.regressor_checkpoint`` /
``llm.sentiment_checkpoint`` name a checkpoint to use instead (e.g. one from ``python -m engine
train``); then nothing is trained.

torch and transformers are imported here, on use; the engine's other paths never load them.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.config import Config
from engine.domain import News
from engine.errors import ConfigError, DataError
from engine.series import BarSeries
from engine.timeutil import iso
from models.settings import MEMORY_SETTINGS
from strategies.llm_settings import LlmSettings, llm_settings

if TYPE_CHECKING:
    from engine.plan import BacktestPlan

log = logging.getLogger("engine.llm")
Say = Callable[[str], None]


@dataclass(frozen=True)
class MarketSplit:
    """The bars and headlines on each side of the cut at ``trade_start_ms`` (the first traded bar's open)."""

    history: BarSeries  # every bar: features are computed over all of it
    train: BarSeries
    trade: BarSeries
    train_news: list[News]  # published before the cut
    trade_news: list[News]  # published at or after the cut: what the backtest delivers
    context_news: list[News]  # before the cut, within the aggregation look-back: they count in the first signals
    trade_start_ms: int


def split_market(series: BarSeries, news: Sequence[News], train_fraction: float, lookback_ms: int) -> MarketSplit:
    cut = round(train_fraction * len(series))
    if cut < 2 or len(series) - cut < 2:
        raise ConfigError(f"llm.train_fraction = {train_fraction:g} leaves {cut} bars to train on and "
                          f"{len(series) - cut} to trade (of {len(series)}); both need more")
    start = int(series.ts_open[cut])
    ordered = sorted(news, key=lambda n: n.ts_event)
    return MarketSplit(
        history=series, train=series.between(None, start), trade=series.between(start, None),
        train_news=[n for n in ordered if n.ts_event < start], trade_news=[n for n in ordered if n.ts_event >= start],
        context_news=[n for n in ordered if start - lookback_ms <= n.ts_event < start], trade_start_ms=start)


@dataclass
class LlmSetup:
    """A trained predictor ready to predict one market: what ``setup_llm`` returns."""

    split: MarketSplit
    model: Any  # strategies.llm_signals.SignalModel
    params: Any  # the checked [strategies.llm_signal] table
    backbone: Any  # models.backbone.Backbone; its model now carries this setup's adapters (peft wraps it in place)
    checkpoints: dict[str, dict[str, Any]]
    seconds: dict[str, float]
    reporter: _Reporter
    strategy: Any = None  # the strategy class the signals are for (strategies.llm_signal.LlmSignal)
    calibration: dict[str, Any] | None = None  # what ``calibrate`` fitted and chose, for the summary

    def precompute(self, start_ms: int | None = None, news: Sequence[News] | None = None,
                   bars: BarSeries | None = None) -> Any:
        """``PrecomputedSignals`` for the bars of ``bars`` (default: the whole history) opening at or
        after ``start_ms`` (default: the traded part), classifying ``news`` (default: the traded
        part's and the context headlines)."""
        from strategies.llm_signals import PrecomputedSignals

        split, report = self.split, self.reporter
        start_ms = split.trade_start_ms if start_ms is None else start_ms
        news = split.context_news + split.trade_news if news is None else list(news)
        history = split.history if bars is None else bars
        count = int(len(history) - np.searchsorted(history.ts_open, start_ms, side="left"))
        started = time.perf_counter()
        report.say(f"predicting {count:,} bars and {len(news):,} headlines (batch size {self.model.batch_size}; "
                   "cached answers are reused)")
        source = PrecomputedSignals.compute(self.model, history, news, start_ms=start_ms,
                                            progress=report.progress)
        elapsed = round(time.perf_counter() - started, 2)
        self.seconds["predict"] = round(self.seconds.get("predict", 0.0) + elapsed, 2)
        stats = source.stats
        report.say(f"predictions ready in {elapsed:.1f} s ({stats['regression_cached']} of {stats['bars']} "
                   f"regressions and {stats['sentiment_cached']} of {stats['distinct_headlines']} distinct headlines "
                   "from the cache)")
        return source


def prepare_llm_backtest(plan: BacktestPlan, *, progress: bool = False, say: Say | None = None,
                         online: bool = False) -> BacktestPlan:
    """The plan of an ``llm_signal`` backtest: checkpoints trained or reused, predictions made,
    the series cut to the traded part. ``say`` receives one line per stage (progress). ``online``
    (a daemon): the online signal source whatever ``llm.signal_source`` says."""
    with translated_errors(plan.config):
        setup = setup_llm(plan, progress=progress, say=say)
        source = "online" if online else llm_settings(plan.config).signal_source
        make_strategy, predictions = _strategy_factory(setup, source)
    plan = llm_plan(plan, setup, make_strategy, predictions)
    plan.extra["signal_source"] = source
    return plan


def prepare_oracle_backtest(plan: BacktestPlan, *, say: Say | None = None) -> BacktestPlan:
    """``backtest --strategy llm_signal --oracle``: the same strategy, split, calibration and
    threshold search as ``prepare_llm_backtest``, with the ``OracleSignals`` of the sample market's
    TRUE headline tones instead of a trained predictor (no backbone, no training): the best this
    strategy can do there, an upper bound, labelled as such in the summary and the records.
    Refused on any market other than the synthetic sample."""
    from engine.feeds.sample import generate_sample_market
    from strategies.llm_signals import ORACLE_NOTE, OracleSignals

    config = plan.config
    if not plan.data_label.startswith("synthetic:") or config.data.news or config.data.bars:
        raise ConfigError(f"--oracle knows the true headline tones, which only the synthetic sample market has; "
                          f"this run's market is {plan.data_label!r}{' with ' + config.data.news if config.data.news else ''}"
                          " (drop --data/--news/--source to run it on the sample)")
    llm = llm_settings(config)
    report = _Reporter(False, say)
    if len(plan.series) != 1:
        raise ConfigError("strategies.llm_signal trades one series at a time")
    probe = plan.make_strategy()
    strategy, params = type(probe), probe.params
    strategy.check_instruments(params, plan.instruments.values())
    split = split_market(plan.series[0], plan.news, llm.train_fraction, llm.aggregation.news_lookback_ms)
    market = generate_sample_market(config.sample)
    truth = {(n.ts_event, n.headline): tone for n, tone in zip(market.news, market.tones)}

    def tones(news: Sequence[News]) -> list[int]:
        return [truth[(n.ts_event, n.headline)] for n in news]

    report.say(f"{ORACLE_NOTE}: no model, each headline classified as its true tone with probability 1")
    window_start, why = _calibration_window(split, llm.calibration.bars, None)
    why = f"(the last {int(len(split.train) - np.searchsorted(split.train.ts_open, window_start)):,} before the cut)"
    pre = OracleSignals.build(split.train, split.train_news, tones(split.train_news), llm.aggregation,
                              start_ms=window_start)
    calibration, params, record = calibrate(plan, split, pre, params, strategy, llm, report, window_start)
    record["window"]["chosen_because"] = why
    traded = split.context_news + split.trade_news
    source = OracleSignals.build(split.history, traded, tones(traded), llm.aggregation,
                                 start_ms=split.trade_start_ms, calibration=calibration)
    trade = split.trade
    extra = {
        "train_period": _period(split.train, split.train_news, split.train.ts_open[0], split.trade_start_ms),
        "trade_period": _period(trade, split.trade_news, split.trade_start_ms, trade.ts_close[-1]),
        "checkpoints": {}, "signal_source": "oracle", "oracle": ORACLE_NOTE, "predictions": dict(source.stats),
        "calibration": record,
    }
    symbol = trade.symbol
    notes = [*plan.notes, f"llm: {ORACLE_NOTE}",
             f"llm: trading {iso(split.trade_start_ms)} .. {iso(int(trade.ts_close[-1]))} only; the calibration "
             "and threshold were fitted on the data before it"]
    return dataclasses.replace(plan, series=[trade], news=split.trade_news,
                               make_strategy=lambda: strategy(params, {symbol: source}), notes=notes,
                               extra={**plan.extra, **extra})


def llm_plan(plan: BacktestPlan, setup: LlmSetup, make_strategy: Callable[[], Any],
             predictions: dict[str, Any]) -> BacktestPlan:
    """``plan`` cut to ``setup``'s traded part, with ``make_strategy`` and the LLM summary keys."""
    split, llm = setup.split, llm_settings(plan.config)
    trade = split.trade
    extra = {
        "train_period": _period(split.train, split.train_news, split.train.ts_open[0], split.trade_start_ms),
        "trade_period": _period(trade, split.trade_news, split.trade_start_ms, trade.ts_close[-1]),
        "checkpoints": setup.checkpoints,
        "backbone": {"source": llm.backbone, "precision": llm.precision, "fingerprint": setup.backbone.fingerprint},
        "signal_source": llm.signal_source,
        "predictions": predictions,
        "llm_seconds": setup.seconds,
        "calibration": setup.calibration,
    }
    notes = [*plan.notes, f"llm: trading {iso(split.trade_start_ms)} .. {iso(int(trade.ts_close[-1]))} only; "
                          f"the adapters were trained on the data before it"]
    return dataclasses.replace(plan, series=[trade], news=split.trade_news, make_strategy=make_strategy,
                               notes=notes, extra={**plan.extra, **extra})


@contextmanager
def translated_errors(config: Config) -> Iterator[None]:
    """The predictor's errors as the engine's: a ConfigError or DataError that names the setting."""
    from models.datasets import DatasetError
    from models.settings import BackboneError, missing_llm_module
    from models.training.checkpoint import CheckpointError

    if (missing := missing_llm_module()) is not None:
        raise ConfigError(f"strategies.llm_signal needs the llm extra ({missing} is missing): pip install -e '.[llm]'")
    try:
        yield
    except BackboneError as exc:
        raise ConfigError(f"llm.backbone = {llm_settings(config).backbone!r}: {exc}") from exc
    except CheckpointError as exc:
        raise ConfigError(f"llm: {exc}") from exc
    except DatasetError as exc:
        raise DataError(f"llm: {exc}") from exc


def setup_llm(plan: BacktestPlan, *, progress: bool = False, say: Say | None = None) -> LlmSetup:
    """Cut ``plan``'s series at ``llm.train_fraction``, then train (or reuse) both adapters on the
    part before the cut, on a freshly loaded backbone.

    Each trainer loads the backbone it trains on and lets it go; the strategy's own is loaded only
    after both (checkpoints are named by ``backbone_fingerprint``, read without the weights), so no
    two copies of the weights are held at once."""
    from models.backbone import backbone_fingerprint, load_backbone
    from models.training.loop import return_freed_memory

    config = plan.config
    llm = llm_settings(config)
    report = _Reporter(progress, say)
    if len(plan.series) != 1:
        raise ConfigError("strategies.llm_signal trades one series at a time")
    probe = plan.make_strategy()  # the LLM strategy, its [strategies.<name>] table checked
    strategy, params = type(probe), probe.params
    strategy.check_instruments(params, plan.instruments.values())  # before minutes of training, not after
    if not llm.regressor_checkpoint and llm.regressor.horizon != params.holding_bars:
        raise ConfigError(f"llm.regressor.horizon = {llm.regressor.horizon} but strategies.llm_signal.holding_bars = "
                          f"{params.holding_bars}: the regressor forecasts {llm.regressor.horizon} bars ahead (llm."
                          "regressor.horizon) and the expected move is over the holding time; set them equal")
    split = split_market(plan.series[0], plan.news, llm.train_fraction, llm.aggregation.news_lookback_ms)
    report.say(f"training part: {len(split.train):,} bars {iso(int(split.train.ts_open[0]))} .. "
               f"{iso(split.trade_start_ms)} and {len(split.train_news):,} headlines; traded part: {len(split.trade):,} "
               f"bars {iso(split.trade_start_ms)} .. {iso(int(split.trade.ts_close[-1]))} (out of sample)")
    seconds: dict[str, float] = {}
    fingerprint = backbone_fingerprint(llm.backbone_config)
    checkpoints: dict[str, dict[str, Any]] = {}
    regressor = _regressor_checkpoint(config, split, fingerprint, progress, report, checkpoints)
    return_freed_memory()  # the regressor trainer's backbone and activations
    sentiment = _sentiment_checkpoint(config, split, plan, fingerprint, progress, report, checkpoints)
    return_freed_memory()
    for task, info in checkpoints.items():
        seconds[f"train_{task}"] = info["seconds"]
    started = time.perf_counter()
    report.say(f"loading the backbone ({llm.backbone}, {llm.precision})")
    backbone = load_backbone(llm.backbone_config)
    seconds["backbone"] = round(time.perf_counter() - started, 2)
    if backbone.fingerprint != fingerprint:
        raise ConfigError(f"llm.backbone {llm.backbone!r} changed while the adapters trained (fingerprint "
                          f"{fingerprint[:12]} became {backbone.fingerprint[:12]}); run again")
    model = _signal_model(llm, backbone, regressor, sentiment, split, params.holding_bars)
    checkpoints["regressor"]["scaler"] = ("checkpoint" if llm.scaler == "checkpoint" else
                                          f"market: refitted on the {len(split.train):,} bars before the cut")
    setup = LlmSetup(split, model, params, backbone, checkpoints, seconds, report, strategy)
    started = time.perf_counter()
    window_start, why = _calibration_window(split, llm.calibration.bars, _unseen_from(regressor))
    window_bars = int(len(split.train) - np.searchsorted(split.train.ts_open, window_start, side="left"))
    report.say(f"calibrating the expected move before the cut: {window_bars:,} bars {why}")
    pre = setup.precompute(start_ms=window_start, news=split.train_news, bars=split.train)
    calibration, setup.params, setup.calibration = calibrate(plan, split, pre, params, strategy, llm, report,
                                                             window_start)
    setup.calibration["window"]["chosen_because"] = why
    setup.model = dataclasses.replace(model, calibration=calibration)
    seconds["calibrate"] = round(time.perf_counter() - started, 2)
    return setup


def _unseen_from(regressor: Any) -> int | None:
    """The open time of the regressor's first validation sample: it trained on none from there on."""
    value = (getattr(regressor, "data_fingerprint", None) or {}).get("val_first_bar_ms")
    return int(value) if isinstance(value, int | float) else None


def _calibration_window(split: MarketSplit, bars: int, unseen_ms: int | None) -> tuple[int, str]:
    """(first bar open, why) of the bars before the cut that calibrate the regression and choose the
    threshold: the most recent ``bars`` (0: all) of those the regressor did not train on."""
    train = split.train
    first = 0 if bars == 0 else max(0, len(train) - bars)
    start = int(train.ts_open[first])
    if unseen_ms is None:
        return start, (f"(the last {len(train) - first:,} before the cut; the regressor's split is not known, so "
                       "they may include bars it trained on)")
    if unseen_ms >= split.trade_start_ms:
        raise ConfigError(f"llm: the regressor's validation split starts at {iso(unseen_ms)}, after this run's cut "
                          f"{iso(split.trade_start_ms)}: it may have trained on the bars this run trades (or on "
                          "the same days of another market), so nothing before the cut is known to be unseen by it; "
                          "train it on this run (llm.regressor_checkpoint = \"\") or on bars before the cut")
    if unseen_ms <= int(train.ts_open[0]):  # a checkpoint trained on earlier bars (of this market or another)
        return start, (f"(the last {len(train) - first:,} before the cut; the regressor trained only on bars before "
                       f"{iso(unseen_ms)}, none of them)")
    if unseen_ms > start:
        return unseen_ms, f"(from {iso(unseen_ms)}, the regressor's validation tail: it trained on none of them)"
    return start, f"(the last {len(train) - first:,} before the cut, all after the regressor's training split)"


def calibrate(plan: BacktestPlan, split: MarketSplit, pre: Any, params: Any, strategy: Any, llm: LlmSettings,
              report: _Reporter, window_start_ms: int) -> tuple[Any, Any, dict[str, Any]]:
    """Fit the expected move and choose the enter threshold, from data before the cut only.

    ``pre`` is a ``PrecomputedSignals`` (or the oracle) over ``split.train``: regressions for the
    bars of the calibration window (those opening at or after ``window_start_ms``), every training
    headline classified. The news coefficient is
    fitted on every training bar past the features' warm-up, the regression coefficient on the
    window (``models.calibration.fit_calibration``); then each of
    ``llm.calibration.enter_thresholds`` is backtested on the window's bars with the run's costs and
    the calibrated move, and the best after-cost return is kept (ties, or none positive: the highest
    threshold, i.e. trade less). Returns (the calibration, the params with that threshold, the record)."""
    from models.aggregation import news_component, news_score
    from models.calibration import fit_calibration, forward_targets
    from models.features import compute_features
    from strategies.llm_signals import volatility_of

    settings, aggregation, horizon = llm.calibration, pre.aggregation, params.holding_bars
    train = split.train
    closes = train.ts_close.tolist()
    rows = pre.rows()
    headlines = pre.headlines()
    times = [h.publish_ms for h in headlines]
    n = len(train)
    reg, news, sigma = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    features = compute_features(train.ts_open, train.open, train.high, train.low, train.close, train.volume,
                                train.timeframe_ms)
    for i in range(n):
        if not np.isfinite(features[i]).all():
            continue
        ts = closes[i]
        sigma[i] = volatility_of(features[i])
        lo, hi = bisect.bisect_left(times, ts - aggregation.news_lookback_ms), bisect.bisect_right(times, ts)
        news[i] = news_score(news_component(headlines[lo:hi], ts, aggregation.news_half_life_ms,
                                            aggregation.news_lookback_ms, aggregation.news_weight_half))
        row = rows.get(ts)
        if row is not None and pre.signal_source != "oracle":
            reg[i] = row[0]
    target = forward_targets(train.close, sigma, horizon)  # the last `horizon` bars: NaN (their close is past the cut)
    calibration = fit_calibration(reg, news, target, horizon=horizon, min_t=settings.min_t)
    report.say("calibration: " + "; ".join(c.note + f" (estimate {c.estimate:.3g}, s.e. {c.std_error:.3g})"
                                           for c in (calibration.news, calibration.regression)))

    window = train.between(window_start_ms, None)
    window_news = [item for item in split.train_news if item.ts_event >= int(window.ts_open[0])]
    source = pre.with_calibration(calibration)
    tried: dict[str, float] = {}
    chosen, origin = params.enter_threshold, "config (strategies.llm_signal.enter_threshold)"
    candidates = [t for t in sorted(set(settings.enter_thresholds)) if t > params.exit_threshold]
    if candidates:
        symbol = train.symbol
        for threshold in candidates:
            trial = dataclasses.replace(params, enter_threshold=threshold)
            sub = dataclasses.replace(plan, series=[window], news=window_news,
                                      make_strategy=lambda trial=trial: strategy(trial, {symbol: source}))
            tried[f"{threshold:g}"] = float(sub.run().summary()["total_return"])
        best = max(tried.values())
        if best > 0 and list(tried.values()).count(best) == 1:
            chosen = float(next(t for t in candidates if tried[f"{t:g}"] == best))
            origin = "validation: the best after-cost return before the cut"
        else:
            chosen = float(candidates[-1])
            origin = ("validation: no threshold made money before the cut, so the highest (trade least)"
                      if best <= 0 else "validation: a tie, so the highest (trade least)")
        report.say(f"enter threshold {chosen:g} ({origin}); after-cost returns on {len(window):,} bars before the cut: "
                   + ", ".join(f"{k}: {100 * v:+.2f}%" for k, v in tried.items()))
    record = {**calibration.to_dict(),
              "window": {"start": iso(int(window.ts_open[0])), "end": iso(split.trade_start_ms), "bars": len(window)},
              "enter_threshold": {"chosen": chosen, "from": origin, "after_cost_returns": tried}}
    return calibration, dataclasses.replace(params, enter_threshold=chosen), record


def _signal_model(llm: LlmSettings, backbone: Any, regressor: Any, sentiment: Any, split: MarketSplit,
                  holding_bars: int) -> Any:
    """One predictor with both adapters, fed as the regressor was trained (prompt texts, or the
    encoder's windows of scaled features; ``llm.scaler = "market"``: scaled as this market's bars
    before the cut were)."""
    from models.cache import PredictionCache
    from models.features import FeatureScaler, compute_features
    from models.predictor import Predictor
    from models.training.checkpoint import load_into
    from strategies.llm_signals import RVOL_WINDOW, SignalModel

    predictor = Predictor(backbone)
    load_into(predictor, regressor)
    if sentiment is not None:
        load_into(predictor, sentiment)
    trained = regressor.config["config"]
    if trained.get("vol_window") != RVOL_WINDOW:
        raise ConfigError(f"{regressor.folder}: strategies.llm_signal reads the regressor's target scale from the "
                          f"rvol20 feature, so it needs a regressor trained with vol_window = {RVOL_WINDOW} (this one: "
                          f"{trained.get('vol_window')})")
    if trained.get("horizon") != holding_bars:
        how = (f"train it with `python -m engine train regressor --horizon {holding_bars}`" if llm.regressor_checkpoint
               else "set llm.regressor.horizon = holding_bars")
        raise ConfigError(f"{regressor.folder}: the regressor forecasts {trained.get('horizon')} bars ahead "
                          f"but strategies.llm_signal.holding_bars = {holding_bars}: the expected move is over the "
                          f"holding time, so {how}")
    if regressor.scaler is None:
        raise ConfigError(f"{regressor.folder}: the regressor checkpoint has no feature_scaler.json (incomplete)")
    scaler = FeatureScaler.from_dict(regressor.scaler)
    if llm.scaler == "market":
        train = split.train
        features = compute_features(train.ts_open, train.open, train.high, train.low, train.close, train.volume,
                                    train.timeframe_ms)
        scaler = FeatureScaler.fit(features, names=scaler.names, clip=scaler.clip)
    trade = split.trade
    return SignalModel(predictor=predictor, scaler=scaler,
                       aggregation=llm.aggregation, asset=trade.symbol, timeframe=trade.timeframe,
                       timeframe_ms=trade.timeframe_ms, feature_digits=int(trained["feature_digits"]),
                       batch_size=llm.batch_size, cache=PredictionCache(Path(llm.cache_dir) / "predictions.sqlite"),
                       window=int(trained.get("window", 0)) if trained.get("input", "text") == "encoder" else 0,
                       window_batch_size=llm.window_batch_size)


def _strategy_factory(setup: LlmSetup, signal_source: str) -> tuple[Callable[[], Any], dict[str, Any]]:
    """(a factory of strategies with their signal source, what was predicted). Precomputed: every
    prediction now, through the cache; online: a fresh source per strategy, warmed up on the
    training part, computing every answer during the loop (no cache), as live."""
    from strategies.llm_signals import OnlineSignals

    split, params = setup.split, setup.params
    trade, symbol = split.trade, split.trade.symbol
    if signal_source == "online":
        setup.reporter.say(f"online signals: one prediction per bar and per headline during the loop "
                           f"({len(trade):,} bars)")
        live = dataclasses.replace(setup.model, cache=None)

        def make_online() -> Any:
            online = OnlineSignals(live, symbol)
            online.warm_up(split.train, split.context_news)
            return setup.strategy(params, {symbol: online})

        return make_online, {}
    source = setup.precompute()
    return (lambda: setup.strategy(params, {symbol: source})), dict(source.stats)


# -- checkpoints ---------------------------------------------------------------------------------
def _result_settings(training: Any) -> dict[str, Any]:
    """The training settings that decide what a checkpoint holds: all but the memory policy
    (``optim.recompute``, ``optim.activation_budget_mb``), which changes memory and time, never the
    weights (so changing it reuses the checkpoint)."""
    settings = training.to_dict()
    settings["optim"] = {k: v for k, v in settings["optim"].items() if k not in MEMORY_SETTINGS}
    return settings


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _bars_fingerprint(series: BarSeries) -> str:
    digest = hashlib.sha256(f"{series.symbol}|{series.timeframe_ms}|{len(series)}|".encode())
    for name in ("ts_open", "open", "high", "low", "close", "volume"):
        digest.update(getattr(series, name).tobytes())
    return digest.hexdigest()


def _regressor_checkpoint(config: Config, split: MarketSplit, backbone_fingerprint: str, progress: bool,
                          report: _Reporter, out: dict[str, dict[str, Any]]) -> Any:
    from models.datasets import DatasetError
    from models.training.checkpoint import read_checkpoint
    from models.training.regressor_trainer import BarArrays, RegressorTrainer

    llm = llm_settings(config)
    if llm.regressor_checkpoint:
        return _given("regressor", llm.regressor_checkpoint, out)
    training = llm.training("regressor")
    train = split.train
    samples = training.max_train_samples or len(train)
    folder = Path(llm.cache_dir) / "checkpoints" / (
        "regressor-" + _key("regressor", _bars_fingerprint(train), _result_settings(training), backbone_fingerprint))
    if (folder / "config.json").is_file():
        report.say(f"reusing the regressor trained earlier on these bars with these settings ({folder})")
        out["regressor"] = {"folder": str(folder), "trained": False, "seconds": 0.0}
        return read_checkpoint(folder, "regressor")
    steps = training.optim.total_steps(min(samples, len(train)))
    report.say(f"fine-tuning the regressor on up to {samples} samples of the training bars "
               f"(about {steps} steps; validation on {training.max_val_samples or 'all'})")
    bars = BarArrays(train.symbol, train.timeframe, train.timeframe_ms, train.ts_open, train.open, train.high,
                     train.low, train.close, train.volume, source=train.source)
    started = time.perf_counter()
    try:
        metrics = RegressorTrainer(training, progress=progress).train(
            bars, folder, describe={"period": [iso(int(train.ts_open[0])), iso(split.trade_start_ms)]})
    except DatasetError as exc:
        raise DataError(f"llm: cannot train the regressor on the {len(train):,} bars before the cut: {exc}; give it "
                        "more bars (sample.bars or --data) or a larger llm.train_fraction") from exc
    elapsed = round(time.perf_counter() - started, 2)
    report.say(f"regressor trained in {elapsed:.0f} s: {_validation(metrics, ('nll', 'hit_rate', 'ic'))}")
    out["regressor"] = {"folder": str(folder), "trained": True, "seconds": elapsed,
                        "train_samples": metrics["train_samples"], "validation": _finite(metrics["validation"])}
    return read_checkpoint(folder, "regressor")


def _sentiment_checkpoint(config: Config, split: MarketSplit, plan: BacktestPlan, backbone_fingerprint: str,
                          progress: bool, report: _Reporter, out: dict[str, dict[str, Any]]) -> Any:
    from models.training.checkpoint import read_checkpoint
    from models.training.sentiment_trainer import SentimentTrainer, prepare_sentiment_data

    llm = llm_settings(config)
    if llm.sentiment_checkpoint:
        return _given("sentiment", llm.sentiment_checkpoint, out)
    if not split.train_news and not split.trade_news:
        report.say("no headlines in this run: the signal is the regression alone")
        return None
    data = _labelled_headlines(plan, split.train_news)
    training = llm.training("sentiment")
    folder = Path(llm.cache_dir) / "checkpoints" / (
        "sentiment-" + _key("sentiment", data.fingerprint(), _result_settings(training), backbone_fingerprint))
    if (folder / "config.json").is_file():
        report.say(f"reusing the sentiment adapter trained earlier on these headlines with these settings ({folder})")
        out["sentiment"] = {"folder": str(folder), "trained": False, "seconds": 0.0}
        return read_checkpoint(folder, "sentiment")
    try:
        prepared = prepare_sentiment_data(data, training)
    except ValueError as exc:
        raise DataError(f"llm: cannot split the {len(data)} training headlines for the sentiment adapter: {exc}; "
                        "give it more (sample.bars, sample.headlines_per_day) or a larger llm.train_fraction") from exc
    report.say(f"fine-tuning the sentiment adapter on {len(prepared.train)} of the {len(data)} training headlines "
               f"(about {training.optim.total_steps(len(prepared.train))} steps; validation on {len(prepared.val)})")
    started = time.perf_counter()
    metrics = SentimentTrainer(training, progress=progress).train(
        prepared, folder, describe={"format": "sample", "period_end": iso(split.trade_start_ms)})
    elapsed = round(time.perf_counter() - started, 2)
    report.say(f"sentiment adapter trained in {elapsed:.0f} s: {_validation(metrics, ('accuracy', 'macro_f1'))}")
    out["sentiment"] = {"folder": str(folder), "trained": True, "seconds": elapsed,
                        "train_samples": metrics["train_samples"], "validation": _finite(metrics["validation"])}
    return read_checkpoint(folder, "sentiment")


def _given(task: str, folder: str, out: dict[str, dict[str, Any]]) -> Any:
    from models.training.checkpoint import CheckpointError, read_checkpoint

    try:
        checkpoint = read_checkpoint(folder, task)
    except CheckpointError as exc:
        raise ConfigError(f"llm.{task}_checkpoint = {folder!r}: {exc}. Train one with `python -m engine train {task} "
                          f"--out {folder}`, or set llm.{task}_checkpoint = \"\" to train on this run's data") from None
    out[task] = {"folder": folder, "trained": False, "seconds": 0.0, "given": True}
    return checkpoint


def _labelled_headlines(plan: BacktestPlan, news: Sequence[News]) -> Any:
    """The training headlines with their tones: known for the synthetic sample market only."""
    from engine.feeds.sample import generate_sample_market
    from models.datasets import sample_headlines

    config = plan.config
    if not plan.data_label.startswith("synthetic:") or config.data.news:
        raise ConfigError("llm: the sentiment adapter trains on labelled headlines, and only the synthetic sample "
                          "market's are labelled; for these headlines set llm.sentiment_checkpoint to a checkpoint "
                          "from `python -m engine train sentiment --data LABELLED.csv`")
    market = generate_sample_market(config.sample)
    tones = {(n.ts_event, n.headline): tone for n, tone in zip(market.news, market.tones)}
    return sample_headlines([(n.headline, tones[(n.ts_event, n.headline)]) for n in news])


# -- reporting -----------------------------------------------------------------------------------
def _period(series: BarSeries, news: Sequence[News], start_ms: Any, end_ms: Any) -> dict[str, Any]:
    return {"start": iso(int(start_ms)), "end": iso(int(end_ms)), "bars": len(series), "headlines": len(news)}


def _finite(metrics: dict[str, Any]) -> dict[str, float | None]:
    """The numeric metrics, NaN and infinities as None (the summary is strict JSON)."""
    return {k: float(v) if math.isfinite(v) else None for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def _validation(metrics: dict[str, Any], keys: Sequence[str]) -> str:
    values = metrics.get("validation", {})
    return ", ".join(f"validation {k} {values[k]:.3f}" for k in keys if isinstance(values.get(k), float))


class _Reporter:
    """Stage lines (to ``say`` and the log) and prediction progress: a tqdm bar when ``progress``,
    else a line every 30 seconds."""

    def __init__(self, bars: bool, say: Say | None) -> None:
        self._bars = bars
        self._say = say
        self._tqdm: Any = None
        self._what = ""
        self._last = 0.0

    def say(self, message: str) -> None:
        log.info(message)
        if self._say is not None:
            self._say(f"llm: {message}")

    def progress(self, what: str, done: int, total: int) -> None:
        if self._bars:
            if self._tqdm is None or self._what != what:
                self._close()
                from tqdm import tqdm

                self._tqdm, self._what = tqdm(total=total, desc=f"predicting {what}", unit=what[:-1] or what,
                                              file=sys.stderr, leave=False), what
            self._tqdm.update(done - self._tqdm.n)
            if done >= total:
                self._close()
        elif done >= total or time.monotonic() - self._last >= 30.0:
            self._last = time.monotonic()
            self.say(f"predicted {done:,} of {total:,} {what}")

    def _close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
