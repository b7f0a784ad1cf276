"""The broker protocol shared by the simulated, paper and live brokers.

Submit an order (with a client order id that is unique and stable across retries); the broker
answers through events it hands to ``emit``: a ``Rejection`` with a reason, or zero or more
``Fill``s. The portfolio applies fills; the broker never touches cash itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from engine.domain import Bar, Fill, Order, Rejection

BrokerEvent = Fill | Rejection
EmitFn = Callable[[BrokerEvent], None]


class Broker(Protocol):
    def submit(self, order: Order) -> None:
        """Accept the order for execution; outcomes arrive as events."""

    def cancel(self, client_order_id: str) -> bool:
        """Cancel an open order; ``False`` if it is not open (already filled, unknown)."""

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        """Orders accepted and not yet filled, cancelled or rejected."""

    def on_bar(self, bar: Bar) -> None:
        """A bar closed: a simulated broker fills what the bar's prices reach; a live broker may
        use it as its cue to poll the exchange."""
