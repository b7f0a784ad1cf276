"""Enumerations shared by every layer."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Side(IntEnum):
    """Order side; the value is the sign of the position change (+1 buys, -1 sells)."""

    BUY = 1
    SELL = -1

    @classmethod
    def of(cls, signed_quantity: float) -> Side:
        return cls.BUY if signed_quantity > 0 else cls.SELL


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"  # stop-market: becomes a market order when the price trades through it


class OrderStatus(StrEnum):
    """Life cycle shared by the simulated, paper and live brokers (``LIVE.md``). The allowed moves
    between them are ``engine.domain.orders.TRANSITIONS``."""

    INTENT = "intent"  # decided and committed, not sent yet
    SENDING = "sending"  # the request may have left the process
    ACCEPTED = "accepted"  # working at the broker
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCEL_PENDING = "cancel_pending"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    EXPIRED = "expired"
    AMBIGUOUS = "ambiguous"  # a submit whose answer was unclear: to be looked up by client id
    UNKNOWN = "unknown"  # still unresolved after the look-up: a person must look

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def is_open(self) -> bool:
        """Working or possibly working at the broker (everything but intents and final states)."""
        return self not in _TERMINAL and self is not OrderStatus.INTENT


_TERMINAL = frozenset({OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.EXPIRED})


class Liquidity(StrEnum):
    MAKER = "maker"
    TAKER = "taker"


class ContractType(StrEnum):
    SPOT = "spot"
    LINEAR_PERP = "linear_perp"  # USDT-margined perpetual swap: shortable, leveraged, pays funding
