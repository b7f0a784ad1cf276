"""Simulated execution against bars (backtests and the paper daemon).

Fill rules (DESIGN.md, pinned by tests/test_fills.py):

- An order is eligible for a bar only if it was created at or before that bar's open, so an order
  decided at bar t's close is first tried on bar t+1 and nothing uses prices from before the
  decision.
- Market: fills at the bar's open plus half-spread and slippage (taker).
- Limit buy at L: at the open if the open is at or below L (gap), else at L if the low reaches L.
  Limit sell mirrors it. Resting limit fills are maker fills: no spread, no slippage, maker fee.
- Stop (stop-market) buy at S: at the open if the open is at or above S (gap), else at S if the
  high reaches S; then like a market order (taker, spread and slippage). Stop sell mirrors it.
- ``fill_mode="close"`` (compatibility only, never the default) fills market orders at the close
  of the bar on which they were decided.
- Orders are tried in submission order; each fill is checked for cash or margin at its price
  (``engine.risk.check_fill``) and rejected with the reason if the account cannot take it.
Orders stay open (good till cancelled) until filled, cancelled or rejected, or until their
``expire_ms``: an order still open at the first bar opening at or after it expires unfilled.

Every order is acknowledged with ``OrderAccepted`` when submitted (nothing can be lost between
the process and a simulated venue); a cancel is confirmed at once with ``OrderCancelled``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from engine.broker import EmitFn
from engine.clock import Clock
from engine.costs import CostModels
from engine.domain import (
    Bar,
    Fill,
    Instrument,
    Liquidity,
    Order,
    OrderAccepted,
    OrderCancelled,
    OrderExpired,
    OrderType,
    Rejection,
    Side,
)
from engine.portfolio import Portfolio
from engine.risk import check_fill

FillMode = Literal["next_open", "close"]


class SimulatedBroker:
    def __init__(self, portfolio: Portfolio, instruments: Mapping[str, Instrument], costs: CostModels,
                 emit: EmitFn, fill_mode: FillMode = "next_open", clock: Clock | None = None) -> None:
        if fill_mode not in ("next_open", "close"):
            raise ValueError(f"fill_mode must be 'next_open' or 'close', got {fill_mode!r}")
        self._portfolio = portfolio
        self._instruments = instruments
        self._costs = costs
        self._emit = emit
        self._clock = clock  # stamps cancels; without one, the last bar's close
        self.fill_mode: FillMode = fill_mode
        self._open: dict[str, list[Order]] = {}
        self._last_bar: dict[str, Bar] = {}

    # -- protocol ------------------------------------------------------------------------------
    def submit(self, order: Order) -> None:
        self._emit(OrderAccepted(order.client_order_id, order.symbol, order.ts_init))
        if self.fill_mode == "close" and order.type is OrderType.MARKET and order.symbol in self._last_bar:
            bar = self._last_bar[order.symbol]
            self._execute(order, bar.close, Liquidity.TAKER, bar.ts_event)
            return
        self._open.setdefault(order.symbol, []).append(order)

    def restore(self, orders: list[Order]) -> None:
        """Orders accepted by an earlier process of the run and still open (read from the store),
        working again in submission order; nothing is emitted: they were acknowledged then."""
        for order in orders:
            self._open.setdefault(order.symbol, []).append(order)

    def cancel(self, client_order_id: str) -> bool:
        for orders in self._open.values():
            for i, order in enumerate(orders):
                if order.client_order_id == client_order_id:
                    del orders[i]
                    self._emit(OrderCancelled(client_order_id, order.symbol, self._now(order.symbol)))
                    return True
        return False

    def _now(self, symbol: str) -> int:
        if self._clock is not None:
            return self._clock.now()
        bar = self._last_bar.get(symbol)
        return bar.ts_event if bar is not None else 0

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        if symbol is not None:
            return list(self._open.get(symbol, ()))
        return [o for orders in self._open.values() for o in orders]

    def on_bar(self, bar: Bar) -> None:
        if self.fill_mode == "close" or self._clock is None:
            self._last_bar[bar.symbol] = bar  # close mode: the close market orders fill at; cancels' time
        orders = self._open.get(bar.symbol)
        if not orders:
            return
        remaining: list[Order] = []
        for order in orders:
            if order.expire_ms is not None and order.expire_ms <= bar.ts_open:
                self._emit(OrderExpired(order.client_order_id, order.symbol, order.expire_ms))
                continue
            if order.ts_init > bar.ts_open:
                remaining.append(order)  # decided after this bar opened: waits for the next one
                continue
            match = _reach(order, bar)
            if match is None:
                remaining.append(order)
            else:
                reference, liquidity = match
                # At the open we know the instant; inside the bar only that it happened by the close.
                self._execute(order, reference, liquidity, bar.ts_open if reference == bar.open else bar.ts_event)
        self._open[bar.symbol] = remaining

    # -- execution -----------------------------------------------------------------------------
    def _execute(self, order: Order, reference: float, liquidity: Liquidity, ts: int) -> None:
        inst = self._instruments[order.symbol]
        qty = order.quantity
        spread_cost = slippage_cost = 0.0
        price = reference
        if liquidity is Liquidity.TAKER:
            spread_f = self._costs.spread.fraction(inst, qty, reference)
            slip_f = self._costs.slippage.fraction(inst, qty, reference)
            price = reference * (1.0 + order.side * (spread_f + slip_f))
            spread_cost = qty * reference * spread_f
            slippage_cost = qty * reference * slip_f
        fee = self._costs.fees.fee(inst, qty * price, liquidity)
        reason = check_fill(self._portfolio, self._instruments, inst, order.signed_quantity, price, fee)
        if reason is not None:
            self._emit(Rejection(order.client_order_id, order.symbol, reason, ts))
            return
        self._emit(Fill(
            client_order_id=order.client_order_id, symbol=order.symbol, side=order.side, quantity=qty,
            price=price, reference_price=reference, fee=fee, liquidity=liquidity, spread_cost=spread_cost,
            slippage_cost=slippage_cost, ts_event=ts, order_type=order.type, fee_currency=inst.quote_currency,
        ))


def _reach(order: Order, bar: Bar) -> tuple[float, Liquidity] | None:
    """The reference price and liquidity at which ``bar`` fills ``order``, or None."""
    if order.type is OrderType.MARKET:
        return bar.open, Liquidity.TAKER
    buy = order.side is Side.BUY
    if order.type is OrderType.LIMIT:
        limit = order.limit_price
        assert limit is not None
        if buy:
            if bar.open <= limit:
                return bar.open, Liquidity.MAKER
            return (limit, Liquidity.MAKER) if bar.low <= limit else None
        if bar.open >= limit:
            return bar.open, Liquidity.MAKER
        return (limit, Liquidity.MAKER) if bar.high >= limit else None
    stop = order.stop_price
    assert stop is not None
    if buy:
        if bar.open >= stop:
            return bar.open, Liquidity.TAKER
        return (stop, Liquidity.TAKER) if bar.high >= stop else None
    if bar.open <= stop:
        return bar.open, Liquidity.TAKER
    return (stop, Liquidity.TAKER) if bar.low <= stop else None
