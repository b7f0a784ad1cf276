"""The two signal sources agree: a short history run with predictions precomputed in batches
before the loop, and bar by bar online, makes exactly the same decisions (tiny random backbone)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.backtest import iter_bars, run_backtest
from engine.costs import CostModels, FixedBps
from engine.domain import ContractType, News
from engine.feeds.sample import SampleMarketConfig, generate_sample_market
from models.aggregation import AggregationConfig
from models.cache import PredictionCache
from models.calibration import Calibration, Coefficient
from models.features import FeatureScaler, compute_features
from strategies.llm_signal import LlmSignal
from strategies.llm_signals import OnlineSignals, PrecomputedSignals, SignalModel
from tests.helpers import instrument
from tests.llm_helpers import tiny_predictor  # skips this module without the llm extra
from tests.test_llm_signal import RecordingJournal

WARMUP = 140  # bars before the traded part: the features' 100-bar look-back and then some
TRADED = 60
LOOKBACK = AggregationConfig().news_lookback_ms
# A calibration that uses both inputs, so that both paths compute the calibrated forecast the same way.
CALIBRATION = Calibration(Coefficient(0.22, 0.22, 0.05, 4.4, 100, "kept"), Coefficient(3.0, 3.0, 1.0, 3.0, 100, "kept"),
                          horizon=3, min_t=2.0)


@pytest.fixture(scope="module")
def market():
    market = generate_sample_market(SampleMarketConfig(bars=WARMUP + TRADED, headlines_per_day=16))
    bars = market.bars
    start = int(bars.ts_open[WARMUP])
    return {
        "bars": bars, "start": start, "train": bars.between(None, start), "trade": bars.between(start, None),
        "context": [n for n in market.news if start - LOOKBACK <= n.ts_event < start],
        "news": [n for n in market.news if n.ts_event >= start],
    }


@pytest.fixture(scope="module", params=["text", "encoder"])
def model(market, request):
    """The regressor reading prompt texts (one at a time: batch 1), or windows of scaled features
    through a numeric encoder (in fixed-shape batches of 4, which the online path pads its one window to).
    At 4 rows a window's numbers have been bit-identical wherever it sits in the batch on both CPUs this
    suite ran on (AVX-512, AVX2), so the decisions are compared exactly; at 16 rows on two threads they can
    differ at float32 rounding (``tests/test_encoder.py``)."""
    bars = market["train"]
    features = compute_features(bars.ts_open, bars.open, bars.high, bars.low, bars.close, bars.volume,
                                bars.timeframe_ms)
    predictor = tiny_predictor(seed=3)
    window = 0
    if request.param == "encoder":
        from models.settings import EncoderSettings

        window = 8
        predictor.add_numeric_encoder("regressor", EncoderSettings(window=window, virtual_tokens=2, width=16), seed=3)
    return SignalModel(predictor=predictor, scaler=FeatureScaler.fit(features),
                       aggregation=AggregationConfig(news_half_life_ms=2 * 3_600_000), asset=bars.symbol,
                       timeframe=bars.timeframe, timeframe_ms=bars.timeframe_ms, feature_digits=2,
                       calibration=CALIBRATION, window=window, window_batch_size=4)


def backtest(market, source):
    """A perpetual with light costs and thresholds set inside the random model's range of
    calibrated expected move / cost (about 0.5 to 6.5 here), so that its signal opens, resizes and closes."""
    inst = instrument(market["trade"].symbol, contract=ContractType.LINEAR_PERP, taker=0.0002, maker=0.0001,
                      leverage=2)
    params = LlmSignal.Params(enter_threshold=2.2, exit_threshold=1.5, min_change=0.05, full_size_at=0.6,
                              holding_bars=3)
    journal = RecordingJournal()
    result = run_backtest(LlmSignal(params, {inst.symbol: source}), [market["trade"]], {inst.symbol: inst},
                          news=market["news"], costs=CostModels(spread=FixedBps(0.5), slippage=FixedBps(0.5)),
                          journal=journal, check_invariants=True, run_id="same")
    return result, journal


def test_precomputed_and_online_sources_make_identical_decisions(market, model, tmp_path):
    cache = PredictionCache(tmp_path / "predictions.sqlite")
    cached = SignalModel(**{**model.__dict__, "cache": cache})
    precomputed = PrecomputedSignals.compute(cached, market["bars"], market["context"] + market["news"],
                                             start_ms=market["start"])
    assert precomputed.stats["bars"] == TRADED and precomputed.stats["regression_cached"] == 0
    online = OnlineSignals(model, market["trade"].symbol)
    online.warm_up(market["train"], market["context"])

    batch, batch_journal = backtest(market, precomputed)
    live, live_journal = backtest(market, online)
    assert {"open", "resize", "close"} <= set(batch.extra["signal_actions"]), "the comparison needs trades"
    assert len(batch.fills) == len(batch.orders) >= 3
    assert len(batch_journal.signals) == TRADED and any(s["components"]["signal"]["n_headlines"]
                                                        for s in batch_journal.signals)
    assert batch.orders == live.orders  # ids, sides, quantities, times, tags
    assert batch.fills == live.fills
    assert batch_journal.signals == live_journal.signals  # scores, confidences and every component, exactly
    assert batch_journal.predictions == live_journal.predictions
    np.testing.assert_array_equal(batch.equity, live.equity)

    # a rerun reads every answer from the cache, and they are the same answers
    again = PrecomputedSignals.compute(cached, market["bars"], market["context"] + market["news"],
                                       start_ms=market["start"])
    assert again.stats["regression_cached"] == TRADED
    assert again.stats["sentiment_cached"] == again.stats["distinct_headlines"]
    rerun, rerun_journal = backtest(market, again)
    assert rerun.orders == batch.orders and rerun_journal.signals == batch_journal.signals


def test_precomputed_source_refuses_bars_and_headlines_it_was_not_computed_for(market, model):
    source = PrecomputedSignals.compute(model, market["bars"], market["news"][:3], start_ms=market["start"])
    first_traded = next(iter_bars(market["trade"]))
    assert source.on_bar(first_traded) is not None
    with pytest.raises(LookupError, match="no precomputed prediction"):
        source.on_bar(next(iter_bars(market["train"])))
    with pytest.raises(LookupError, match="not among the precomputed"):
        source.on_news(News(market["start"], "[synthetic] an unseen headline", market["trade"].symbol))
