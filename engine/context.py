"""What a strategy sees and can do: the portfolio, the history so far, timers and order methods.

The same context class serves backtests, the paper daemon and live trading; only the clock and the
broker behind it change. Quantities are signed: positive buys, negative sells. Every order gets a
client order id from ``engine.order_ids`` (deterministic per decision, unique across restarts).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from engine.broker import Broker, BrokerEvent
from engine.clock import Clock, TimerCallback
from engine.costs import CostModels
from engine.domain import Instrument, Order, OrderType, Rejection, Side
from engine.history import BarHistory
from engine.journal import Journal
from engine.order_ids import OrderIds
from engine.portfolio import Portfolio
from engine.risk import RiskLimits, check_new_order


class StrategyContext:
    def __init__(self, *, run_id: str, portfolio: Portfolio, broker: Broker, instruments: Mapping[str, Instrument],
                 histories: Mapping[str, BarHistory], emit: Callable[[BrokerEvent], None],
                 on_order: Callable[[Order], None], clock: Clock, on_timer: TimerCallback | None = None,
                 costs: CostModels | None = None, journal: Journal | None = None,
                 order_ids: OrderIds | None = None, risk: RiskLimits | None = None) -> None:
        self.run_id = run_id
        self.portfolio = portfolio
        self.instruments = instruments
        # The run's fee, spread, slippage and funding models, for strategies that weigh an expected
        # move against what a trade costs; None where the host has none.
        self.costs = costs
        self.clock = clock
        # The run's risk limits ([risk]), checked on every order after the instrument's rules; None:
        # no limits. A host hears of halts through ``risk.on_halt``.
        self.risk = risk
        self._journal = journal
        self._broker = broker
        self._histories = histories
        self._emit = emit
        self._on_order = on_order
        self._on_timer = on_timer
        self._ids = order_ids if order_ids is not None else OrderIds(run_id)
        self.time = 0  # epoch ms of the event being handled: an order's decision time
        # False while the host lets the strategy see events without trading on them (a daemon's late
        # bar, a halt): order methods then return None and send nothing; ``withheld`` counts them.
        self.trading = True
        self.withheld = 0

    # -- reading -------------------------------------------------------------------------------
    @property
    def symbols(self) -> list[str]:
        return list(self._histories)

    @property
    def equity(self) -> float:
        return self.portfolio.equity

    def now(self) -> int:
        """The clock's time: the event's time in a backtest, the exchange's time in a daemon."""
        return self.clock.now()

    def position(self, symbol: str) -> float:
        """Signed quantity held."""
        return self.portfolio.quantity(symbol)

    def last_price(self, symbol: str) -> float:
        """The close of the last bar of ``symbol`` (``LookupError`` before the first)."""
        return self._histories[symbol].last("close")

    def bars_seen(self, symbol: str) -> int:
        """How many bars of ``symbol`` have closed so far, this one included."""
        return self._histories[symbol].count

    def history(self, symbol: str, field: str = "close", n: int | None = None) -> np.ndarray:
        """The last ``n`` values (all held if ``None``) of ``field`` up to the current bar, inclusive.
        A read-only view: nothing after the current bar is reachable."""
        return self._histories[symbol].view(field, n)

    def set_timer(self, name: str, at_ms: int) -> None:
        """Call the strategy's ``on_timer(ctx, name)`` once the clock reaches ``at_ms``."""
        if self._on_timer is None:
            raise RuntimeError("this host runs no timers")
        self.clock.set_timer(name, at_ms, self._on_timer)

    def cancel_timer(self, name: str) -> bool:
        return self.clock.cancel_timer(name)

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        return self._broker.open_orders(symbol)

    # -- recording -----------------------------------------------------------------------------
    def record_signal(self, symbol: str, value: float, *, confidence: float | None = None,
                      components: Mapping[str, Any] | None = None, model: str = "") -> None:
        """Record a signal this strategy acted on, stamped with the current event time, in the run's
        store (``components``: JSON-ready values that explain it). A no-op when nothing is recorded."""
        if self._journal is not None:
            self._journal.signal(self.time, symbol, value, confidence=confidence, components=components, model=model)

    def record_prediction(self, symbol: str, kind: str, *, value: float | None = None,
                          uncertainty: float | None = None, probabilities: Mapping[str, float] | None = None,
                          confidence: float | None = None, model: str = "", horizon_ms: int | None = None,
                          input_text: str | None = None) -> None:
        """Record one model output (``kind``: "regression" or "sentiment"), stamped with the current
        event time (its inputs end there), in the run's store. A no-op when nothing is recorded."""
        if self._journal is not None:
            self._journal.prediction(self.time, symbol, kind, value=value, uncertainty=uncertainty,
                                     probabilities=probabilities, confidence=confidence, model=model,
                                     horizon_ms=horizon_ms, input_text=input_text)

    # -- ordering ------------------------------------------------------------------------------
    def market(self, symbol: str, quantity: float, tag: str = "") -> Order | None:
        return self._submit(symbol, quantity, OrderType.MARKET, None, tag)

    def limit(self, symbol: str, quantity: float, price: float, tag: str = "",
              expire_ms: int | None = None) -> Order | None:
        """A resting limit order, good till cancelled or, with ``expire_ms``, till that instant."""
        return self._submit(symbol, quantity, OrderType.LIMIT, price, tag, expire_ms)

    def stop(self, symbol: str, quantity: float, price: float, tag: str = "",
             expire_ms: int | None = None) -> Order | None:
        return self._submit(symbol, quantity, OrderType.STOP, price, tag, expire_ms)

    def target_quantity(self, symbol: str, target: float, tag: str = "") -> Order | None:
        """Trade (at market) the difference between ``target`` and the position plus open market
        orders. Returns ``None`` when the difference rounds to nothing."""
        pending = sum(o.signed_quantity for o in self._broker.open_orders(symbol) if o.type is OrderType.MARKET)
        delta = target - self.position(symbol) - pending
        inst = self.instruments[symbol]
        if inst.round_quantity(abs(delta)) == 0.0:
            return None
        return self.market(symbol, delta, tag)

    def target_percent(self, symbol: str, fraction: float, tag: str = "") -> Order | None:
        """Hold ``fraction`` of equity in ``symbol`` (negative = short), sized at the last close."""
        if not math.isfinite(fraction):
            raise ValueError(f"target_percent: fraction must be finite, got {fraction}")
        return self.target_quantity(symbol, self.equity * fraction / self.last_price(symbol), tag)

    def close(self, symbol: str, tag: str = "") -> Order | None:
        return self.target_quantity(symbol, 0.0, tag)

    def cancel(self, client_order_id: str) -> bool:
        """Ask to cancel an open order (``on_order_cancelled`` follows); ``False`` if it is not open."""
        return self._broker.cancel(client_order_id)

    def _submit(self, symbol: str, quantity: float, type_: OrderType, price: float | None, tag: str,
                expire_ms: int | None = None) -> Order | None:
        inst = self.instruments.get(symbol)
        if inst is None:
            raise KeyError(f"unknown symbol {symbol!r}; this run trades {', '.join(self.instruments)}")
        if not self.trading:
            self.withheld += 1
            return None
        order_id = self._ids.next(self.time)
        requested = abs(quantity) if math.isfinite(quantity) else quantity
        rounded = inst.round_quantity(requested) if math.isfinite(requested) and requested > 0 else 0.0
        if price is not None and math.isfinite(price) and price > 0:
            price = inst.round_price(price)
        history = self._histories[symbol]
        notional_price = price if price is not None else (history.last("close") if len(history) else None)
        reason = check_new_order(inst, requested, rounded, notional_price)
        if reason is None and self.risk is not None:
            reason = self.risk.check(inst, rounded if quantity > 0 else -rounded, notional_price, self.portfolio,
                                     self._broker.open_orders(symbol), self.time)
        order = Order(
            client_order_id=order_id, symbol=symbol, side=Side.of(quantity), type=type_, quantity=rounded,
            ts_init=self.time, limit_price=price if type_ is OrderType.LIMIT else None,
            stop_price=price if type_ is OrderType.STOP else None, tag=tag, expire_ms=expire_ms,
        )
        self._on_order(order)  # recorded before its outcome, whatever that is
        if reason is not None:
            self._emit(Rejection(order_id, symbol, reason, self.time))
            return None
        self._broker.submit(order)
        return order
