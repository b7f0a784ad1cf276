"""The journal: where the event loop reports what happened, for a durable record.

The loop calls these methods as events occur; ``checkpoint`` marks a safe point at which buffered
records may be written in one transaction (every few thousand events in a backtest, after every
event in the paper and live daemons). The SQLite store implements it; ``None`` means no record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

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

    def signal(self, ts_event: int, symbol: str, value: float, *, confidence: float | None = None,
               components: Mapping[str, Any] | None = None, model: str = "") -> None:
        """A signal a strategy acted on (``StrategyContext.record_signal``)."""

    def prediction(self, ts_event: int, symbol: str, kind: str, *, value: float | None = None,
                   uncertainty: float | None = None, probabilities: Mapping[str, float] | None = None,
                   confidence: float | None = None, model: str = "", horizon_ms: int | None = None,
                   input_text: str | None = None) -> None:
        """A model output a strategy used (``StrategyContext.record_prediction``)."""

    def checkpoint(self, loop: EventLoop) -> None:
        """Write what is buffered; equity points since the last checkpoint are
        ``loop.equity_since(n)``, positions are ``loop.portfolio.positions``."""
