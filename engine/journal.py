"""The journal: where the event loop reports what happened, for a durable record.

The loop calls these methods as events occur; ``checkpoint`` marks a safe point at which buffered
records may be written in one transaction (every few thousand events in a backtest, after every
event in the paper and live daemons). The SQLite store implements it; ``None`` means no record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from engine.domain import Fill, FundingPayment, News, Order, Rejection

if TYPE_CHECKING:
    from engine.loop import EventLoop


class Journal(Protocol):
    def order_submitted(self, order: Order) -> None: ...

    def order_cancelled(self, client_order_id: str, ts: int) -> None: ...

    def fill(self, fill: Fill) -> None: ...

    def rejection(self, rejection: Rejection) -> None: ...

    def funding(self, payment: FundingPayment) -> None: ...

    def news(self, news: News) -> None: ...

    def checkpoint(self, loop: EventLoop) -> None:
        """Write what is buffered; equity points since the last checkpoint are
        ``loop.equity_since(n)``, positions are ``loop.portfolio.positions``."""
