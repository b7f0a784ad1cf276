"""Trades the fine-tuned LLM predictor's signal, only where the expected move beats the round-trip cost.

At every bar close the strategy asks its ``SignalSource`` (``strategies.llm_signals``) for the
``BarPrediction`` of that close and decides a target position, as a signed fraction of equity:

**Expected move.** The regressor predicts the mean ``m`` and std ``s`` of the log return over
``holding_bars`` bars (its target horizon must equal ``holding_bars``) divided by the realised
volatility ``sigma`` (the last 20 log returns). The source calibrates it with the news
(``models.calibration``, fitted before the cut by ``strategies.llm_prepare``) into
``expected_z = b_r x m + b_n x news_score``, each coefficient 0 unless significant, and::

    expected_move = expected_z x sigma          # the expected log return over the holding time

A source without a calibration gives ``expected_z = m`` (the forecast as it is). The gate uses the
calibrated move; the aggregated ``Signal`` (score, confidence) sizes the position and is recorded. It
holds only the components the calibration kept (``strategies.llm_signals.bar_prediction``), so a
regression found not significant before the cut does not shrink what the news opens.

**Round-trip cost** of a position in direction ``d`` (+1 long, -1 short), as fractions of notional:
``2 x (taker fee + half-spread + slippage)`` from the instrument and the run's cost models
(``ctx.costs``), plus, on perpetuals, ``d x funding rate x settlements expected over holding_bars``
(longs pay a positive rate, shorts receive it).

**Decision** (``p`` = current position value / equity, ``c(d)`` the cost above):

- the daily stop: once equity falls to ``(1 - max_daily_loss)`` x the equity at the first bar close
  of the UTC day, the target is 0 until the next UTC day (checked at bar closes);
- enter: when ``d x expected_move >= enter_threshold x c(d)`` (``d`` = the move's sign), the
  target is ``d x cap x min(1, strength x confidence / full_size_at)``, with ``cap`` =
  ``max_position`` (x ``leverage`` on perpetuals), and 0 for a short on an instrument that cannot
  short (spot): a bearish signal there only closes a long;
- hold: otherwise a position is kept while the move in its favour is at least
  ``exit_threshold x c`` (hysteresis: ``exit_threshold < enter_threshold``), and closed when not;
- an order is sent only when the target differs from ``p`` by at least ``min_change`` of equity,
  or closes the position entirely, so small wiggles of the signal never trade.

Decisions are taken at bar closes. Headlines are classified (and recorded) as they arrive, in
``on_news``, and count from then on; a decision between bars would fill at the same next open as
the decision at the coming close, which sees more. Every decision records its signal and the
components above with ``ctx.record_signal``, and every model output with ``ctx.record_prediction``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.costs import FUNDING_INTERVAL_MS
from engine.domain import Instrument, Liquidity
from engine.errors import ConfigError
from engine.timeutil import MS_PER_DAY
from models.datasets import SENTIMENT_LABELS
from strategies.base import Strategy
from strategies.llm_signals import BarPrediction, SignalSource


@dataclass(frozen=True, slots=True)
class Decision:
    """One bar's decision and what it was computed from (fractions of equity / of notional)."""

    action: str  # open, resize, flip, close, hold, flat, halted
    position: float  # before the decision
    target: float
    trade: bool
    expected_move: float  # log return over the holding time, signed
    expected_z: float  # the calibrated vol-normalised forecast over the holding time behind it
    cost: float  # round-trip cost in the expected move's direction
    costs: Mapping[str, float]  # its parts: fees, spread, slippage, funding
    passes_gate: bool = False  # side x expected_move >= enter_threshold x cost (whatever else held it back)


class LlmSignal(Strategy):
    """Trades the LLM predictor's signal when the expected move beats the round-trip cost."""

    name = "llm_signal"

    @dataclass(frozen=True)
    class Params:
        max_position: float = 0.95  # cap on |position value| / equity (before leverage); under 1 so a gap fits in cash
        leverage: float = 1.0  # perpetuals only: the cap is max_position x leverage (<= the instrument's max_leverage)
        full_size_at: float = 0.5  # strength x confidence at which the position reaches its cap (linear below)
        holding_bars: int = 6  # expected holding time: horizon of the expected move and of the funding cost
        enter_threshold: float = 1.5  # expected move / round-trip cost needed to open, grow or flip (the margin: 50%)
        exit_threshold: float = 0.0  # a position is closed once its expected move / cost falls below this
        min_change: float = 0.1  # re-trade only when the target moves by this fraction of equity (or to flat)
        max_daily_loss: float = 0.05  # of the day's starting equity; once lost, flat until the next UTC day

        def __post_init__(self) -> None:
            if not 0 < self.max_position <= 1:
                raise ValueError(f"max_position must be in (0, 1], got {self.max_position}")
            if not self.leverage >= 1:
                raise ValueError(f"leverage must be >= 1, got {self.leverage}")
            if not self.full_size_at > 0:
                raise ValueError(f"full_size_at must be > 0, got {self.full_size_at}")
            if self.holding_bars < 1:
                raise ValueError(f"holding_bars must be >= 1, got {self.holding_bars}")
            if not self.enter_threshold >= 1:
                raise ValueError(f"enter_threshold must be >= 1 (trade only when the move beats the cost), "
                                 f"got {self.enter_threshold}")
            if not 0 <= self.exit_threshold < self.enter_threshold:
                raise ValueError(f"exit_threshold must be in [0, enter_threshold) for hysteresis, got "
                                 f"{self.exit_threshold} with enter_threshold {self.enter_threshold}")
            if not 0 <= self.min_change <= 1:
                raise ValueError(f"min_change must be in [0, 1], got {self.min_change}")
            if not 0 < self.max_daily_loss <= 1:
                raise ValueError(f"max_daily_loss must be in (0, 1], got {self.max_daily_loss}")

    def __init__(self, params: Any = None, sources: Mapping[str, SignalSource] | None = None) -> None:
        super().__init__(params)
        self.sources = dict(sources or {})
        self.signals_recorded = 0
        self.actions: Counter[str] = Counter()
        self.gate_passed = 0  # decisions whose expected move beat enter_threshold x the round-trip cost

    sections = ("llm",)  # strategies.llm_settings
    has_oracle = True  # OracleSignals: the sample market's true tones (strategies.llm_signals)

    @classmethod
    def prepare(cls, plan: Any, *, progress: bool = False, say: Callable[[str], None] | None = None,
                online: bool = False, oracle: bool = False) -> Any:
        """Train (or reuse) the predictor on the part of the plan before ``llm.train_fraction``, make
        its predictions (``online``: none ahead, each one at its bar or headline) and return the plan
        cut to the rest (``strategies.llm_prepare``). ``oracle`` (``backtest --oracle``): the
        sample market's true tones instead of a model, an upper bound (``OracleSignals``)."""
        if oracle and online:
            raise ConfigError("the oracle signal source knows the sample market's true tones: it is an upper bound "
                              "for backtests (`backtest --oracle`), never for paper or live trading")
        # the oracle needs no model; the llm extra is checked where the predictor is set up (translated_errors)
        from strategies.llm_prepare import prepare_llm_backtest, prepare_oracle_backtest

        if oracle:
            return prepare_oracle_backtest(plan, say=say)
        return prepare_llm_backtest(plan, progress=progress, say=say, online=online)

    # -- hooks ---------------------------------------------------------------------------------
    def on_start(self, ctx) -> None:
        missing = [s for s in ctx.symbols if s not in self.sources]
        if missing:
            raise ConfigError(f"strategies.llm_signal has no signal source for {missing}: run it with "
                              "`python -m engine backtest --strategy llm_signal`, which trains (or reuses) the "
                              "predictor and builds the sources (settings: [llm] in config.toml)")
        if ctx.costs is None:
            raise ConfigError("strategies.llm_signal weighs moves against costs and needs the run's cost models "
                              "(StrategyContext.costs)")
        self.check_instruments(self.params, [ctx.instruments[s] for s in ctx.symbols])
        self._cap = self.params.max_position / len(ctx.symbols)
        self._day = -1
        self._day_start = ctx.equity
        self._halted = False

    @staticmethod
    def check_instruments(params: LlmSignal.Params, instruments: Iterable[Instrument]) -> None:
        """Refuse leverage the instruments cannot take (a ``ConfigError`` naming the setting)."""
        for inst in instruments:
            if params.leverage > 1 and not inst.can_short:
                raise ConfigError(f"strategies.llm_signal.leverage = {params.leverage:g} needs a perpetual; "
                                  f"{inst.symbol} is {inst.contract.value} (set instrument.contract = \"linear_perp\")")
            if params.leverage > inst.max_leverage:
                raise ConfigError(f"strategies.llm_signal.leverage = {params.leverage:g} exceeds {inst.symbol}'s "
                                  f"max_leverage {inst.max_leverage:g} (raise instrument.max_leverage or lower it)")

    def on_news(self, ctx, news) -> None:
        for symbol, source in self.sources.items():
            if news.symbol not in (None, symbol):
                continue
            scored = source.on_news(news)
            ctx.record_prediction(symbol, "sentiment", probabilities=dict(zip(SENTIMENT_LABELS, scored.probabilities)),
                                  confidence=scored.confidence, model=source.sentiment_model,
                                  input_text=news.headline)

    def on_bar(self, ctx, bar) -> None:
        source = self.sources[bar.symbol]
        prediction = source.on_bar(bar)  # every bar, so an online source's features keep up
        self._check_day(ctx)
        if prediction is None:
            return
        symbol = bar.symbol
        regression = (prediction.inputs or prediction.signal.components).get("regression")
        if regression is not None:  # the oracle has none
            ctx.record_prediction(symbol, "regression", value=prediction.mean, uncertainty=prediction.std,
                                  confidence=regression.confidence, model=source.regressor_model,
                                  horizon_ms=source.timeframe_ms * self.params.holding_bars)
        decision = self.decide(ctx, symbol, prediction, source)
        self._record(ctx, symbol, prediction, decision, source)
        if decision.trade:
            ctx.target_percent(symbol, decision.target, tag=f"llm_signal:{decision.action}")

    def summary(self) -> dict[str, Any]:
        bars = self.signals_recorded
        return {"signals": bars, "signal_actions": dict(sorted(self.actions.items())),
                "gate": {"bars": bars, "passed": self.gate_passed, "share": self.gate_passed / bars if bars else None,
                         "enter_threshold": self.params.enter_threshold}}

    # -- the decision --------------------------------------------------------------------------
    def decide(self, ctx, symbol: str, prediction: BarPrediction, source: SignalSource) -> Decision:
        """The target for ``symbol`` at this close (see the module docstring); sends nothing."""
        params = self.params
        signal = prediction.signal
        price = ctx.last_price(symbol)
        equity = ctx.equity
        position = ctx.position(symbol) * price / equity if equity > 0 else 0.0
        inst = ctx.instruments[symbol]
        cap = self._cap * (params.leverage if inst.can_short else 1.0)
        quantity = equity * cap / price  # the largest position: what price-impact models are asked about

        z = prediction.z
        move = z * prediction.volatility
        side = 1 if move > 0 else -1 if move < 0 else 0
        costs = self.round_trip_cost(ctx, symbol, side or 1, source.timeframe_ms, quantity)
        cost = sum(costs.values())
        held = 1 if position > 0 else -1 if position < 0 else 0
        hold_cost = cost if held in (0, side or 1) else sum(  # funding depends on the direction
            self.round_trip_cost(ctx, symbol, held, source.timeframe_ms, quantity).values())

        passes = bool(side) and side * move >= params.enter_threshold * cost
        if self._halted:
            target = 0.0
        elif passes:  # enter, grow, shrink or flip
            size = cap * min(1.0, signal.strength * signal.confidence / params.full_size_at)
            target = side * size if side > 0 or inst.can_short else 0.0
        elif held and held * move >= params.exit_threshold * hold_cost:  # inside the band: keep it
            target = position
        else:
            target = 0.0

        change = target - position
        trade = change != 0.0 and (target == 0.0 or target * position < 0.0 or abs(change) >= params.min_change)
        if self._halted:
            action = "halted"
        elif not trade:
            action = "hold" if position else "flat"
        else:
            action = "open" if not held else "close" if target == 0.0 else "flip" if target * position < 0 else "resize"
        return Decision(action, position, target, trade, move, z, cost, costs, passes)

    def round_trip_cost(self, ctx, symbol: str, side: int, timeframe_ms: int, quantity: float) -> dict[str, float]:
        """Cost of opening and closing a position in direction ``side`` (+1 / -1) held
        ``holding_bars`` bars, as fractions of its notional, by ledger."""
        inst = ctx.instruments[symbol]
        price = ctx.last_price(symbol)
        costs = ctx.costs
        notional = abs(quantity) * price
        # the fee the broker would charge (a market order is a taker fill), as a fraction of the notional
        fee = costs.fees.fee(inst, notional, Liquidity.TAKER) / notional if notional > 0 else inst.taker_fee
        out = {"fees": 2.0 * fee,
               "spread": 2.0 * costs.spread.fraction(inst, quantity, price),
               "slippage": 2.0 * costs.slippage.fraction(inst, quantity, price),
               "funding": 0.0}
        if inst.pays_funding:
            settlements = self.params.holding_bars * timeframe_ms / FUNDING_INTERVAL_MS
            out["funding"] = side * costs.funding.rate(symbol, ctx.time) * settlements
        return out

    # -- bookkeeping ---------------------------------------------------------------------------
    def _check_day(self, ctx) -> None:
        """Start a new UTC day at its first bar close; halt once the day's loss reaches the limit."""
        day = ctx.time // MS_PER_DAY
        if day != self._day:
            self._day, self._day_start, self._halted = day, ctx.equity, False
        elif not self._halted and ctx.equity <= self._day_start * (1.0 - self.params.max_daily_loss):
            self._halted = True

    def _record(self, ctx, symbol: str, prediction: BarPrediction, decision: Decision, source: SignalSource) -> None:
        signal = prediction.signal
        inputs = prediction.inputs or signal.components
        components = {
            "signal": signal.to_dict(),
            "inputs": {name: c.to_dict() for name, c in inputs.items()},  # the calibration may leave some out of signal
            "regression": {"mean": prediction.mean, "std": prediction.std, "volatility": prediction.volatility},
            "calibrated": {"news_score": prediction.news_score, "expected_z": decision.expected_z,
                           "calibrated": prediction.expected_z is not None},
            "decision": {
                "action": decision.action, "position": decision.position, "target": decision.target,
                "traded": decision.trade, "expected_move": decision.expected_move,
                "passes_gate": decision.passes_gate, "round_trip_cost": decision.cost,
                "costs": dict(decision.costs), "holding_bars": self.params.holding_bars,
                "day_start_equity": self._day_start, "halted": self._halted,
            },
        }
        ctx.record_signal(symbol, signal.score, confidence=signal.confidence, components=components,
                          model=f"{source.regressor_model}+{source.sentiment_model}")
        self.signals_recorded += 1
        self.gate_passed += decision.passes_gate
        self.actions[decision.action] += 1
