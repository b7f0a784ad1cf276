"""The life of every order of a run, in one place: its status, what has filled, and the checks
that each broker event is one its state machine allows (``engine.domain.orders``).

The event loop feeds it every order the strategy makes and every event the broker reports; it
refuses an impossible sequence (a fill after a cancel, a second acceptance) with
``InvalidTransition`` instead of letting the books drift. ``OrderBook.restore`` rebuilds it from
recorded orders on a restart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from engine.domain import (
    Fill,
    Order,
    OrderAccepted,
    OrderAmbiguous,
    OrderCancelled,
    OrderCancelPending,
    OrderEvent,
    OrderExpired,
    OrderSending,
    OrderStatus,
    OrderUnknown,
    Rejection,
)
from engine.domain.orders import advance, after_fill


@dataclass(slots=True)
class OrderState:
    order: Order
    status: OrderStatus = OrderStatus.INTENT
    filled: float = 0.0
    ts_updated: int = 0


_STATUS_OF = {OrderAccepted: OrderStatus.ACCEPTED, OrderCancelled: OrderStatus.CANCELLED,
              OrderExpired: OrderStatus.EXPIRED, Rejection: OrderStatus.REJECTED,
              OrderSending: OrderStatus.SENDING, OrderAmbiguous: OrderStatus.AMBIGUOUS,
              OrderUnknown: OrderStatus.UNKNOWN, OrderCancelPending: OrderStatus.CANCEL_PENDING}


class OrderBook:
    def __init__(self) -> None:
        self._orders: dict[str, OrderState] = {}

    def add(self, order: Order) -> OrderState:
        if order.client_order_id in self._orders:
            raise ValueError(f"client order id {order.client_order_id} is used twice")
        state = self._orders[order.client_order_id] = OrderState(order, ts_updated=order.ts_init)
        return state

    def apply(self, event: OrderEvent) -> OrderState:
        """Move the event's order to its next status (or raise ``InvalidTransition``)."""
        coid = event.client_order_id
        state = self._orders.get(coid)
        if state is None:
            raise KeyError(f"a broker event for order {coid}, which this run never made")
        if type(event) is Fill:
            state.filled += event.quantity
            state.status = after_fill(state.status, state.filled, state.order.quantity, coid)
        else:
            state.status = advance(state.status, _STATUS_OF[type(event)], coid)
        state.ts_updated = event.ts_event
        return state

    def get(self, client_order_id: str) -> OrderState | None:
        return self._orders.get(client_order_id)

    def ids(self) -> set[str]:
        return set(self._orders)

    def open(self) -> list[OrderState]:
        return [s for s in self._orders.values() if not s.status.is_terminal]

    def __len__(self) -> int:
        return len(self._orders)

    @classmethod
    def restore(cls, states: Iterable[OrderState]) -> OrderBook:
        book = cls()
        for state in states:
            book._orders[state.order.client_order_id] = state
        return book
