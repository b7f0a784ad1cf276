"""Pure domain values: no pandas, no torch, no I/O."""

from engine.domain.enums import ContractType, Liquidity, OrderStatus, OrderType, Side
from engine.domain.instrument import DEFAULT_FEES, Instrument
from engine.domain.values import Bar, Fill, FundingPayment, News, Order, Rejection

__all__ = [
    "DEFAULT_FEES",
    "Bar",
    "ContractType",
    "Fill",
    "FundingPayment",
    "Instrument",
    "Liquidity",
    "News",
    "Order",
    "OrderStatus",
    "OrderType",
    "Rejection",
    "Side",
]
