"""Pure domain values: no pandas, no torch, no I/O."""

from engine.domain.enums import ContractType, Liquidity, OrderStatus, OrderType, Side
from engine.domain.instrument import DEFAULT_FEES, Instrument
from engine.domain.orders import InvalidTransition
from engine.domain.values import (
    Bar,
    Fill,
    FundingPayment,
    News,
    Order,
    OrderAccepted,
    OrderCancelled,
    OrderEvent,
    OrderExpired,
    Rejection,
)

__all__ = [
    "DEFAULT_FEES",
    "Bar",
    "ContractType",
    "Fill",
    "FundingPayment",
    "Instrument",
    "InvalidTransition",
    "Liquidity",
    "News",
    "Order",
    "OrderAccepted",
    "OrderCancelled",
    "OrderEvent",
    "OrderExpired",
    "OrderStatus",
    "OrderType",
    "Rejection",
    "Side",
]
