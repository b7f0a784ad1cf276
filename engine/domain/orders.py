"""The order state machine: which status may follow which, and the status an event leads to.

Pure functions over ``OrderStatus`` (``LIVE.md``: ``INTENT -> SENDING -> ACCEPTED ->
PARTIALLY_FILLED -> FILLED``, with ``CANCEL_PENDING -> CANCELLED``, ``REJECTED``, ``EXPIRED`` and
``AMBIGUOUS -> UNKNOWN`` for submits whose outcome could not be learnt). A simulated broker skips
``SENDING`` (nothing leaves the process); a fill may arrive before its acknowledgement on a live
venue, so fills are allowed from ``SENDING`` and ``AMBIGUOUS`` too. Final states have no way out.
"""

from __future__ import annotations

from engine.domain.enums import OrderStatus as S

_FILLING = (S.PARTIALLY_FILLED, S.FILLED)
_ENDINGS = (S.CANCELLED, S.REJECTED, S.EXPIRED)

TRANSITIONS: dict[S, frozenset[S]] = {
    S.INTENT: frozenset({S.SENDING, S.ACCEPTED, S.REJECTED, *_FILLING}),
    S.SENDING: frozenset({S.SENDING, S.ACCEPTED, S.AMBIGUOUS, *_FILLING, *_ENDINGS}),
    S.AMBIGUOUS: frozenset({S.SENDING, S.ACCEPTED, S.UNKNOWN, *_FILLING, *_ENDINGS}),
    S.UNKNOWN: frozenset({S.ACCEPTED, *_FILLING, *_ENDINGS}),
    S.ACCEPTED: frozenset({S.CANCEL_PENDING, *_FILLING, *_ENDINGS}),
    S.PARTIALLY_FILLED: frozenset({S.CANCEL_PENDING, *_FILLING, S.CANCELLED, S.EXPIRED, S.REJECTED}),
    S.CANCEL_PENDING: frozenset({S.ACCEPTED, S.PARTIALLY_FILLED, *_FILLING, S.CANCELLED, S.EXPIRED}),
    S.FILLED: frozenset(),
    S.CANCELLED: frozenset(),
    S.REJECTED: frozenset(),
    S.EXPIRED: frozenset(),
}


class InvalidTransition(ValueError):
    """An event that cannot happen to an order in its current state (a broker or engine bug)."""


def advance(current: S, new: S, client_order_id: str = "") -> S:
    """``new`` if an order in ``current`` may move there, else ``InvalidTransition``."""
    if new not in TRANSITIONS[current]:
        raise InvalidTransition(f"order {client_order_id or '?'}: cannot go from {current.value} to {new.value}")
    return new


def after_fill(current: S, filled: float, quantity: float, client_order_id: str = "",
               tolerance: float = 1e-9) -> S:
    """The status once ``filled`` of ``quantity`` has executed (relative ``tolerance``)."""
    done = filled >= quantity * (1.0 - tolerance)
    return advance(current, S.FILLED if done else S.PARTIALLY_FILLED, client_order_id)
