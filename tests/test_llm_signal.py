"""The llm_signal strategy's decisions, driven by a scripted signal source (no model, milliseconds):
the cost gate, hysteresis, the caps and the daily loss stop, and what every decision records."""

from __future__ import annotations

import math

import pytest

from engine.backtest import run_backtest
from engine.costs import ConstantFunding, CostModels, FixedBps
from engine.domain import ContractType, Side
from engine.errors import ConfigError
from engine.timeutil import MS_PER_HOUR
from models.aggregation import AggregationConfig, ScoredHeadline, signal_from
from models.calibration import Calibration, Coefficient
from strategies import get_strategy
from strategies.llm_signal import LlmSignal
from strategies.llm_signals import BarPrediction, bar_prediction
from tests.helpers import candles, instrument

VOL = 0.01  # realised volatility the scripted source reports
SPOT_COST = 2 * (0.001 + 0.0001 + 0.0002)  # taker fee, half-spread 1 bp, slippage 2 bp, both ways


class ScriptedSource:
    """A ``SignalSource`` that plays one regression mean per bar (None: still warming up), with
    log-variance 0 and no news, so the signal's score is tanh(2 x mean) and, with no calibration
    (``expected_z`` None), the expected move over the holding time mean x VOL."""

    timeframe_ms = MS_PER_HOUR
    aggregation = AggregationConfig()
    regressor_model = "scripted-regressor"
    sentiment_model = "scripted-sentiment"

    def __init__(self, means, symbol="TEST"):
        self.means = list(means)
        self.symbol = symbol
        self.bars = 0

    def on_news(self, news):
        return ScoredHeadline(news.ts_event, (0.1, 0.2, 0.7), 0.7)

    def on_bar(self, bar):
        mean = self.means[self.bars]
        self.bars += 1
        if mean is None:
            return None
        return BarPrediction(bar.ts_event, mean, 0.0, VOL, signal_from(self.aggregation, bar.ts_event, (mean, 0.0)))


class RecordingJournal:
    """The journal protocol, keeping only what strategies record."""

    def __init__(self):
        self.signals, self.predictions = [], []

    def signal(self, ts_event, symbol, value, **kw):
        self.signals.append({"ts": ts_event, "symbol": symbol, "value": value, **kw})

    def prediction(self, ts_event, symbol, kind, **kw):
        self.predictions.append({"ts": ts_event, "symbol": symbol, "kind": kind, **kw})

    def __getattr__(self, name):  # order_submitted, fill, news, checkpoint, ...: not kept here
        return lambda *args, **kw: None


def mean_for(edge, cost=SPOT_COST):
    """The regression mean (of the return over the holding time / VOL) whose expected move is
    ``edge`` x the round-trip cost."""
    return edge * cost / VOL


def run(means, *, prices=None, inst=None, costs=None, news=(), **params):
    prices = prices or [100.0] * len(means)
    inst = inst or instrument(taker=0.001, maker=0.001)
    params = {"holding_bars": 1, **params}
    strategy = LlmSignal(LlmSignal.Params(**params), {inst.symbol: ScriptedSource(means, inst.symbol)})
    journal = RecordingJournal()
    rows = [(p, p, p, p) for p in prices]
    result = run_backtest(strategy, [candles(rows, symbol=inst.symbol)], {inst.symbol: inst}, news=news,
                          costs=costs or CostModels(spread=FixedBps(1.0), slippage=FixedBps(2.0)),
                          journal=journal, check_invariants=True)
    return result, journal, strategy


def actions(journal):
    return [s["components"]["decision"]["action"] for s in journal.signals]


def test_it_trades_only_when_the_expected_move_beats_the_round_trip_cost():
    below, _, _ = run([mean_for(0.97), None], enter_threshold=1.0)
    assert below.orders == ()
    above, journal, _ = run([mean_for(1.03), None], enter_threshold=1.0)
    assert len(above.orders) == 1 and above.orders[0].side is Side.BUY
    decision = journal.signals[0]["components"]["decision"]
    assert decision["round_trip_cost"] == pytest.approx(SPOT_COST)
    assert decision["expected_move"] == pytest.approx(1.03 * SPOT_COST)
    assert decision["costs"] == pytest.approx({"fees": 0.002, "spread": 0.0002, "slippage": 0.0004, "funding": 0.0})
    # the margin: 1.3 x cost is enough at enter_threshold 1.2, not at the default 1.5
    assert len(run([mean_for(1.3), None], enter_threshold=1.2)[0].orders) == 1
    assert run([mean_for(1.3), None])[0].orders == ()
    # cheaper execution lets the same signal through
    free = CostModels(spread=FixedBps(0.0), slippage=FixedBps(0.0))
    assert len(run([mean_for(0.97), None], enter_threshold=1.0, costs=free)[0].orders) == 1


def test_size_grows_with_strength_times_confidence_up_to_the_cap():
    result, journal, _ = run([mean_for(2.0), None], full_size_at=0.5)
    signal = journal.signals[0]
    strength = math.tanh(2 * mean_for(2.0))
    assert signal["value"] == pytest.approx(strength) and signal["confidence"] == pytest.approx(0.5)
    target = 0.95 * strength * 0.5 / 0.5
    assert signal["components"]["decision"]["target"] == pytest.approx(target)
    assert result.orders[0].quantity == pytest.approx(10_000 * target / 100, abs=1e-4)
    strong, journal, _ = run([3.0, None], max_position=0.5, full_size_at=0.4)  # strength ~1, confidence 0.5: at the cap
    assert journal.signals[0]["components"]["decision"]["target"] == pytest.approx(0.5)
    assert strong.orders[0].quantity == pytest.approx(50.0)


def test_spot_never_shorts_and_a_bearish_signal_only_closes_the_long():
    result, journal, _ = run([-3.0, -3.0, None])
    assert result.orders == () and actions(journal) == ["flat", "flat"]
    result, journal, _ = run([3.0, -3.0, -3.0, None])
    assert [o.side for o in result.orders] == [Side.BUY, Side.SELL]
    assert actions(journal) == ["open", "close", "flat"] and result.fills[-1].quantity == result.fills[0].quantity


def test_perpetuals_short_and_lever_up_to_max_position_times_leverage():
    perp = instrument(contract=ContractType.LINEAR_PERP, taker=0.00055, maker=0.0002, leverage=5)
    result, journal, _ = run([-3.0, 3.0, None], inst=perp, max_position=0.5, leverage=3, full_size_at=0.4)
    assert [d["components"]["decision"]["target"] for d in journal.signals] == pytest.approx([-1.5, 1.5])
    assert actions(journal) == ["open", "flip"]
    assert [(o.side, o.quantity) for o in result.orders] == [(Side.SELL, pytest.approx(150)),
                                                             (Side.BUY, pytest.approx(300, rel=1e-3))]
    with pytest.raises(ConfigError, match="leverage = 3 needs a perpetual"):
        run([3.0], leverage=3)
    with pytest.raises(ConfigError, match="exceeds TEST's max_leverage 5"):
        run([3.0], inst=perp, leverage=6)


def test_funding_over_the_holding_time_counts_against_longs_and_for_shorts():
    perp = instrument(contract=ContractType.LINEAR_PERP, taker=0.0005, maker=0.0002, leverage=2)
    costs = CostModels(funding=ConstantFunding(0.001))  # 0.1% per 8-hour settlement
    fees = 2 * 0.0005
    # 16 hourly bars of holding = 2 settlements: a long pays 0.2%, a short receives it
    long_cost, short_cost = fees + 0.002, fees - 0.002
    edge_move = 1.5 * fees  # beats the fees alone, not fees + funding
    mean = edge_move / VOL  # the forecast is of the return over the 16 bars held
    sized = {"holding_bars": 16, "full_size_at": 0.001, "min_change": 0.0}  # any signal that passes trades in full
    longs, journal, _ = run([mean, None], inst=perp, costs=costs, **sized)
    assert longs.orders == ()
    assert journal.signals[0]["components"]["decision"]["round_trip_cost"] == pytest.approx(long_cost)
    shorts, journal, _ = run([-mean, None], inst=perp, costs=costs, **sized)
    assert [(o.side, o.quantity) for o in shorts.orders] == [(Side.SELL, pytest.approx(95.0))]
    assert journal.signals[0]["components"]["decision"]["costs"]["funding"] == pytest.approx(-0.002)
    assert journal.signals[0]["components"]["decision"]["round_trip_cost"] == pytest.approx(short_cost)


def test_hysteresis_no_churn_on_a_signal_oscillating_inside_the_band():
    band = [mean_for(e) for e in (0.5, 1.4, 0.3, 1.2, 0.45, 1.45)] * 4  # between exit (0.25) and enter (1.5)
    flat, journal, _ = run(band + [None], exit_threshold=0.25)
    assert flat.orders == () and set(actions(journal)) == {"flat"}  # never strong enough to enter
    held, journal, _ = run([mean_for(2.0), *band, mean_for(0.1), None], exit_threshold=0.25)
    assert [o.side for o in held.orders] == [Side.BUY, Side.SELL]  # in once, held through the band, out once
    assert actions(journal) == ["open", *["hold"] * len(band), "close"]
    # strong signals wiggling by less than min_change of equity do not re-trade either
    wiggle = [mean_for(e) for e in (3.0, 3.2, 2.9, 3.1)] * 5
    result, journal, _ = run(wiggle + [None], min_change=0.1)
    targets = [s["components"]["decision"]["target"] for s in journal.signals]
    assert max(targets) - min(targets) < 0.1 and len(result.orders) == 1


def test_max_daily_loss_flattens_until_the_next_utc_day():
    prices = [100.0, 100.0, 90.0] + [90.0] * 30  # bar i closes at (i + 1):00 on 2024-01-01; bar 23 at midnight
    result, journal, _ = run([3.0] * 33, prices=prices, max_daily_loss=0.05)
    assert [(o.side, o.ts_init) for o in result.orders] == [
        (Side.BUY, candles([(1, 1, 1, 1)] * 33).ts_close[0]),
        (Side.SELL, candles([(1, 1, 1, 1)] * 33).ts_close[2]),  # 9.5% of the day's equity lost: out
        (Side.BUY, candles([(1, 1, 1, 1)] * 33).ts_close[23]),  # a new UTC day: back in
    ]
    acts = actions(journal)
    assert acts[2] == "halted" and set(acts[3:23]) == {"halted"} and acts[23] == "open"
    assert journal.signals[2]["components"]["decision"]["halted"] is True


def test_every_decision_records_its_signal_and_the_predictions_behind_it():
    from engine.domain import News
    from tests.helpers import T0

    news = [News(T0 + 30 * 60_000, "Synthcoin wins approval", "TEST")]
    result, journal, strategy = run([None, None, 0.1, 3.0, None], news=news)
    assert [s["ts"] for s in journal.signals] == result.equity_ts[2:4].tolist()  # none while warming up
    assert strategy.summary() == {"signals": 2, "signal_actions": {"flat": 1, "open": 1},
                                  "gate": {"bars": 2, "passed": 1, "share": 0.5, "enter_threshold": 1.5}}
    first = journal.signals[0]
    assert first["model"] == "scripted-regressor+scripted-sentiment"
    assert set(first["components"]) == {"signal", "inputs", "regression", "calibrated", "decision"}
    assert first["components"]["inputs"]["regression"] == first["components"]["signal"]["components"]["regression"]
    assert first["components"]["calibrated"] == {"news_score": pytest.approx(0.0), "expected_z": 0.1,
                                                 "calibrated": False}  # no calibration: the mean as it is
    assert first["components"]["signal"]["components"]["regression"]["score"] == pytest.approx(math.tanh(0.2))
    kinds = [(p["kind"], p["ts"]) for p in journal.predictions]
    assert kinds == [("sentiment", news[0].ts_event), ("regression", result.equity_ts[2]),
                     ("regression", result.equity_ts[3])]
    assert journal.predictions[0]["probabilities"] == {"bearish": 0.1, "neutral": 0.2, "bullish": 0.7}
    assert journal.predictions[0]["input_text"] == "Synthcoin wins approval"


def test_params_are_checked_and_a_source_is_required():
    cls = get_strategy("llm_signal")
    for bad, message in (({"enter_threshold": 0.9}, "enter_threshold must be >= 1"),
                         ({"exit_threshold": 1.5}, "exit_threshold must be in"),
                         ({"max_position": 1.5}, "max_position"), ({"max_daily_loss": 0}, "max_daily_loss")):
        with pytest.raises(ValueError, match=message):
            cls.Params(**bad)
    with pytest.raises(ConfigError, match="no signal source for"):
        run_backtest(cls(), [candles([(1, 1, 1, 1)] * 3)], {"TEST": instrument()})


class CalibratedSource(ScriptedSource):
    """Plays a calibrated forecast ``expected_z`` beside a regression mean that says the opposite."""

    def __init__(self, zs, symbol="TEST"):
        super().__init__([None if z is None else -1.0 for z in zs], symbol)
        self.zs = list(zs)

    def on_bar(self, bar):
        z = self.zs[self.bars]
        prediction = super().on_bar(bar)
        return None if prediction is None else BarPrediction(
            prediction.ts, prediction.mean, 0.0, VOL, prediction.signal, 0.0, z)


def test_the_cost_gate_uses_the_calibrated_forecast_not_the_raw_mean_and_counts_the_bars_that_pass():
    inst = instrument(taker=0.001, maker=0.001)
    zs = [mean_for(1.03), mean_for(0.5), None]
    strategy = LlmSignal(LlmSignal.Params(holding_bars=1, enter_threshold=1.0),
                         {inst.symbol: CalibratedSource(zs, inst.symbol)})
    journal = RecordingJournal()
    result = run_backtest(strategy, [candles([(100.0,) * 4] * 3, symbol=inst.symbol)], {inst.symbol: inst},
                          costs=CostModels(spread=FixedBps(1.0), slippage=FixedBps(2.0)), journal=journal)
    assert [o.side for o in result.orders] == [Side.BUY]  # the raw mean (-1) would have said sell or stay flat
    decisions = [s["components"]["decision"] for s in journal.signals]
    assert decisions[0]["expected_move"] == pytest.approx(1.03 * SPOT_COST)
    assert [d["passes_gate"] for d in decisions] == [True, False]
    assert strategy.summary()["gate"] == {"bars": 2, "passed": 1, "share": 0.5, "enter_threshold": 1.0}


def coefficient(value: float) -> Coefficient:
    return Coefficient(value, value or 0.5, 1.0, value or 0.5, 100, "kept" if value else "shrunk to 0")


def test_a_component_the_calibration_shrank_to_zero_neither_moves_nor_sizes_the_position():
    """The position is sized by the signal of the components the calibration kept: a regression
    shrunk to 0 (its confidence ~0.1 beside the news' ~0.5) no longer halves the news' position."""
    config = AggregationConfig()
    now = 10 * MS_PER_HOUR
    headlines = [ScoredHeadline(now - MS_PER_HOUR, (0.02, 0.03, 0.95), 0.95)]
    mean, log_variance = -0.3, 2.2  # an uncertain regression that disagrees with the news
    news_only = signal_from(config, now, None, headlines)
    both = signal_from(config, now, (mean, log_variance), headlines)
    shrunk = Calibration(coefficient(0.0), coefficient(3.0), horizon=6, min_t=2.0)

    prediction = bar_prediction(config, now, mean, log_variance, VOL, headlines, shrunk)
    assert prediction.signal == news_only and "regression" not in prediction.signal.components
    assert set(prediction.inputs) == {"regression", "news"}  # still computed and recorded
    assert prediction.inputs["regression"] == both.components["regression"]
    assert prediction.z == pytest.approx(3.0 * prediction.news_score) and prediction.news_score > 0.4
    sizing = prediction.signal.strength * prediction.signal.confidence
    assert sizing > 1.5 * both.strength * both.confidence  # what the regression's low confidence used to cost

    kept = bar_prediction(config, now, mean, log_variance, VOL, headlines,
                          Calibration(coefficient(0.5), coefficient(3.0), horizon=6, min_t=2.0))
    assert kept.signal == both and kept.z == pytest.approx(0.5 * mean + 3.0 * kept.news_score)
    no_news = bar_prediction(config, now, mean, log_variance, VOL, headlines,
                             Calibration(coefficient(0.5), coefficient(0.0), horizon=6, min_t=2.0))
    assert no_news.signal == signal_from(config, now, (mean, log_variance), None)
    assert no_news.z == pytest.approx(0.5 * mean)
    uncalibrated = bar_prediction(config, now, mean, log_variance, VOL, headlines)
    assert uncalibrated.signal == both and uncalibrated.expected_z is None


def test_the_strategy_sizes_by_the_kept_components():
    """End to end through the strategy: the same news and regression open a position ~2x larger once
    the calibration has shrunk the regression to 0."""
    config = AggregationConfig()

    class NewsSource(ScriptedSource):
        def __init__(self, calibration, symbol="TEST"):
            super().__init__([None, -0.3, -0.3], symbol)
            self.calibration = calibration

        def on_bar(self, bar):
            mean = self.means[self.bars]
            self.bars += 1
            headlines = [ScoredHeadline(bar.ts_event - MS_PER_HOUR, (0.02, 0.03, 0.95), 0.95)]
            return None if mean is None else bar_prediction(config, bar.ts_event, mean, 2.2, VOL, headlines,
                                                            self.calibration)

    targets = {}
    for name, b_regression in (("shrunk", 0.0), ("kept", 1e-9)):
        inst = instrument(taker=0.001, maker=0.001)
        calibration = Calibration(coefficient(b_regression), coefficient(3.0), horizon=1, min_t=2.0)
        strategy = LlmSignal(LlmSignal.Params(holding_bars=1, enter_threshold=1.0),
                             {inst.symbol: NewsSource(calibration, inst.symbol)})
        journal = RecordingJournal()
        run_backtest(strategy, [candles([(100.0,) * 4] * 3, symbol=inst.symbol)], {inst.symbol: inst},
                     costs=CostModels(spread=FixedBps(1.0), slippage=FixedBps(2.0)), journal=journal)
        decision = journal.signals[0]["components"]["decision"]
        assert decision["action"] == "open" and decision["passes_gate"]
        targets[name] = decision["target"]
        regression = [p for p in journal.predictions if p["kind"] == "regression"]
        assert len(regression) == 2 and regression[0]["value"] == -0.3  # recorded either way
    assert 0 < 1.5 * targets["kept"] < targets["shrunk"] <= 0.95
