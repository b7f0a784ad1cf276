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
    """Life cycle shared by the simulated and the live brokers."""

    ACCEPTED = "accepted"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    EXPIRED = "expired"


class Liquidity(StrEnum):
    MAKER = "maker"
    TAKER = "taker"


class ContractType(StrEnum):
    SPOT = "spot"
    LINEAR_PERP = "linear_perp"  # USDT-margined perpetual swap: shortable, leveraged, pays funding
