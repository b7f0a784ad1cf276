"""What a strategy sees and can do: the portfolio, recent history, and order methods.

The same context class serves backtests, the paper daemon and live trading; only the broker behind
it changes. Quantities are signed: positive buys, negative sells.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from engine.broker import Broker, BrokerEvent
from engine.costs import CostModels
from engine.domain import Instrument, Order, OrderType, Rejection, Side
from engine.feeds.series import BarSeries
from engine.journal import Journal
from engine.portfolio import Portfolio
from engine.risk import check_new_order


class StrategyContext:
    def __init__(self, *, run_id: str, portfolio: Portfolio, broker: Broker, instruments: Mapping[str, Instrument],
                 series: Mapping[str, BarSeries], emit: Callable[[BrokerEvent], None],
                 on_order: Callable[[Order], None], on_cancel: Callable[[str, int], None],
                 costs: CostModels | None = None, journal: Journal | None = None) -> None:
        self.run_id = run_id
        self.portfolio = portfolio
        self.instruments = instruments
        # The run's spread, slippage and funding models (fees come from the instrument), for strategies
        # that weigh an expected move against what a trade costs; None where the host has none.
        self.costs = costs
        self._journal = journal
        self._broker = broker
        self._series = series
        self._emit = emit
        self._on_order = on_order
        self._on_cancel = on_cancel
        self._order_seq = 0
        self.time = 0  # epoch ms of the event being handled
        self.index: dict[str, int] = dict.fromkeys(series, -1)  # last bar seen per symbol

    # -- reading -------------------------------------------------------------------------------
    @property
    def symbols(self) -> list[str]:
        return list(self._series)

    @property
    def equity(self) -> float:
        return self.portfolio.equity

    def position(self, symbol: str) -> float:
        """Signed quantity held."""
        return self.portfolio.quantity(symbol)

    def last_price(self, symbol: str) -> float:
        i = self.index[symbol]
        if i < 0:
            raise LookupError(f"no bar of {symbol} has closed yet")
        return float(self._series[symbol].close[i])

    def history(self, symbol: str, field: str = "close", n: int | None = None) -> np.ndarray:
        """The last ``n`` values (all if ``None``) of ``field`` up to the current bar, inclusive.
        A read-only view: nothing after the current bar is reachable."""
        series = self._series[symbol]
        if field not in ("ts_open", "open", "high", "low", "close", "volume"):
            raise ValueError(f"unknown bar field {field!r}")
        end = self.index[symbol] + 1
        start = 0 if n is None else max(0, end - n)
        view = getattr(series, field)[start:end]
        view.flags.writeable = False
        return view

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

    def limit(self, symbol: str, quantity: float, price: float, tag: str = "") -> Order | None:
        return self._submit(symbol, quantity, OrderType.LIMIT, price, tag)

    def stop(self, symbol: str, quantity: float, price: float, tag: str = "") -> Order | None:
        return self._submit(symbol, quantity, OrderType.STOP, price, tag)

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
        cancelled = self._broker.cancel(client_order_id)
        if cancelled:
            self._on_cancel(client_order_id, self.time)
        return cancelled

    def _submit(self, symbol: str, quantity: float, type_: OrderType, price: float | None, tag: str) -> Order | None:
        inst = self.instruments.get(symbol)
        if inst is None:
            raise KeyError(f"unknown symbol {symbol!r}; this run trades {', '.join(self.instruments)}")
        self._order_seq += 1
        order_id = f"{self.run_id}-{self._order_seq}"
        requested = abs(quantity) if math.isfinite(quantity) else quantity
        rounded = inst.round_quantity(requested) if math.isfinite(requested) and requested > 0 else 0.0
        if price is not None and math.isfinite(price) and price > 0:
            price = inst.round_price(price)
        notional_price = price if price is not None else (self.last_price(symbol) if self.index[symbol] >= 0 else None)
        reason = check_new_order(inst, requested, rounded, notional_price)
        order = Order(
            client_order_id=order_id, symbol=symbol, side=Side.of(quantity), type=type_, quantity=rounded,
            ts_init=self.time, limit_price=price if type_ is OrderType.LIMIT else None,
            stop_price=price if type_ is OrderType.STOP else None, tag=tag,
        )
        self._on_order(order)  # recorded before its outcome, whatever that is
        if reason is not None:
            self._emit(Rejection(order_id, symbol, reason, self.time))
            return None
        self._broker.submit(order)
        return order
