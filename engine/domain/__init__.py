"""Pure domain values: no pandas, no torch, no I/O."""

from engine.domain.enums import ContractType, Liquidity, OrderStatus, OrderType, Side
from engine.domain.instrument import DEFAULT_FEES, Instrument
from engine.domain.orders import InvalidTransition
from engine.domain.values import (
    Bar,
    Fill,
    FundingPayment,
    LifecycleEvent,
    News,
    Order,
    OrderAccepted,
    OrderAmbiguous,
    OrderCancelled,
    OrderCancelPending,
    OrderEvent,
    OrderExpired,
    OrderSending,
    OrderUnknown,
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
    "LifecycleEvent",
    "Liquidity",
    "News",
    "Order",
    "OrderAccepted",
    "OrderAmbiguous",
    "OrderCancelPending",
    "OrderCancelled",
    "OrderEvent",
    "OrderExpired",
    "OrderSending",
    "OrderUnknown",
    "OrderStatus",
    "OrderType",
    "Rejection",
    "Side",
]
