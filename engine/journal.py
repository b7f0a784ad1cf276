"""The journal: where the event loop reports what happened, for a durable record.

The loop calls these methods as events occur; ``checkpoint`` marks a safe point at which buffered
records may be written in one transaction (every few thousand events in a backtest, after every
event in the paper and live daemons). The store implements it (``engine.store.journal``); ``None``
means no record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from engine.domain import (
    Fill,
    FundingPayment,
    News,
    Order,
    OrderAccepted,
    OrderCancelled,
    OrderExpired,
    Rejection,
)
from engine.history import BarHistory
from engine.portfolio import Portfolio


class LoopState(Protocol):
    """What a checkpoint reads of the running loop."""

    portfolio: Portfolio
    histories: Mapping[str, BarHistory]
    bars_seen: int

    @property
    def time(self) -> int:
        """The time of the event being handled."""

    def equity_since(self, start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


class Journal(Protocol):
    def order_submitted(self, order: Order) -> None: ...

    def order_event(self, event: OrderAccepted | OrderCancelled | OrderExpired) -> None:
        """An order was accepted, cancelled or expired (fills and rejections have their own methods)."""

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

    def checkpoint(self, state: LoopState) -> None:
        """Write what is buffered; equity points since the last checkpoint are
        ``state.equity_since(n)``, positions are ``state.portfolio.positions``."""
