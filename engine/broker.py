"""The broker protocol shared by the simulated, paper and live brokers.

Submit an order (with a client order id that is unique and stable across retries); the broker
answers through events it hands to ``emit``, in the order they happened: ``OrderAccepted``, then
zero or more ``Fill``s (a fill short of the order's quantity leaves it partially filled), and a
final ``OrderCancelled``, ``OrderExpired`` or ``Rejection``, unless the fills complete it. The
portfolio applies fills; the broker never touches cash itself. The event loop keeps each order's
state (``engine.orders.OrderBook``) and refuses an event that its state machine does not allow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from engine.domain import Bar, Order, OrderEvent

BrokerEvent = OrderEvent
EmitFn = Callable[[OrderEvent], None]


class Broker(Protocol):
    def submit(self, order: Order) -> None:
        """Take the order for execution; outcomes arrive as events."""

    def cancel(self, client_order_id: str) -> bool:
        """Ask to cancel an open order; ``False`` if it is not open (already filled, unknown). The
        ``OrderCancelled`` event follows (at once in simulation, when the venue confirms live)."""

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        """Orders accepted and not yet filled, cancelled, expired or rejected."""

    def on_bar(self, bar: Bar) -> None:
        """A bar closed: a simulated broker fills what the bar's prices reach; a live broker may
        use it as its cue to poll the exchange."""
