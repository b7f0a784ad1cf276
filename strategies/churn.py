"""Churn: an order on every bar, nothing predictive. For rehearsing a daemon against an exchange
(``live start`` on the fake Bybit) and for the live soak (``benchmarks/soak_live.py``): it makes
the most orders a bar allows, so every path of the broker is taken often.

Flat, it buys ``fraction`` of equity at market (on perpetuals it alternates long and short when
``allow_short``); holding, it closes. Every ``limit_every``-th order (0 = never) is instead a limit
order ``limit_offset`` away from the close, on the passive side, which may rest; one still open at
the next bar is cancelled first, so cancels are exercised too."""

from __future__ import annotations

from dataclasses import dataclass

from engine.domain import OrderType
from strategies.base import Strategy


class Churn(Strategy):
    name = "churn"

    @dataclass(frozen=True)
    class Params:
        fraction: float = 0.1  # of equity per entry
        allow_short: bool = False  # perpetuals: every other entry is a short
        limit_every: int = 0  # every n-th order is a resting limit order (0 = market orders only)
        limit_offset: float = 0.001  # the limit's distance from the close, as a fraction of it

        def __post_init__(self) -> None:
            if not 0 < self.fraction <= 1:
                raise ValueError("fraction must be in (0, 1]")
            if self.limit_every < 0:
                raise ValueError("limit_every must be >= 0")
            if not 0 <= self.limit_offset < 0.5:
                raise ValueError("limit_offset must be in [0, 0.5)")

    def on_start(self, ctx) -> None:
        self._orders = 0
        self._entries = 0

    def on_bar(self, ctx, bar) -> None:
        symbol = bar.symbol
        for order in ctx.open_orders(symbol):
            if order.type is OrderType.LIMIT:
                ctx.cancel(order.client_order_id)
        held = ctx.position(symbol)
        if ctx.instruments[symbol].round_quantity(abs(held)) == 0.0:
            held = 0.0  # dust under one lot step (a spot fee taken in the coin) cannot be sold: flat
        self._orders += 1
        if held == 0:
            self._entries += 1
            short = self.params.allow_short and ctx.instruments[symbol].can_short and self._entries % 2 == 0
            quantity = (-1 if short else 1) * ctx.equity * self.params.fraction / bar.close
        else:
            quantity = -held
        if self.params.limit_every and self._orders % self.params.limit_every == 0:
            price = bar.close * (1 - self.params.limit_offset if quantity > 0 else 1 + self.params.limit_offset)
            ctx.limit(symbol, quantity, price, tag="churn")
        else:
            ctx.market(symbol, quantity, tag="churn")
