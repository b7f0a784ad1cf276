"""Cost models: small pluggable pieces with one method each.

Fees, spread, slippage and funding are kept apart so a report can say how much of the gross return
each one ate. A taker fill pays the half-spread and the slippage on top of its reference price;
a maker (resting limit) fill pays neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from engine.domain import Instrument, Liquidity
from engine.timeutil import MS_PER_HOUR

FUNDING_INTERVAL_MS = 8 * MS_PER_HOUR  # Bybit settles at 00:00, 08:00 and 16:00 UTC


class FeeModel(Protocol):
    def fee(self, instrument: Instrument, notional: float, liquidity: Liquidity) -> float: ...


class PriceImpactModel(Protocol):
    """Fraction of the reference price a taker pays on top of it (spread or slippage)."""

    def fraction(self, instrument: Instrument, quantity: float, reference_price: float) -> float: ...


class FundingModel(Protocol):
    def rate(self, symbol: str, ts: int) -> float: ...


@dataclass(frozen=True, slots=True)
class InstrumentFees:
    """Percentage fees from the instrument's maker/taker rates (Bybit VIP0 by default)."""

    def fee(self, instrument: Instrument, notional: float, liquidity: Liquidity) -> float:
        rate = instrument.maker_fee if liquidity is Liquidity.MAKER else instrument.taker_fee
        return abs(notional) * rate


@dataclass(frozen=True, slots=True)
class FixedBps:
    """A constant number of basis points (used for both the half-spread and slippage)."""

    bps: float = 0.0

    def fraction(self, instrument: Instrument, quantity: float, reference_price: float) -> float:
        return self.bps / 10_000.0


@dataclass(frozen=True, slots=True)
class ConstantFunding:
    """The same funding rate at every settlement (e.g. 0.0001 = 0.01% per 8 hours)."""

    rate_per_interval: float = 0.0

    def rate(self, symbol: str, ts: int) -> float:
        return self.rate_per_interval


class FundingSeries:
    """Funding rates recorded at settlement times; the rate at ``ts`` is the latest one at or
    before it (a step function). Before the first record the rate is ``default``."""

    def __init__(self, ts: Sequence[int], rates: Sequence[float], default: float = 0.0) -> None:
        order = np.argsort(np.asarray(ts, dtype=np.int64), kind="stable")
        self._ts = np.asarray(ts, dtype=np.int64)[order]
        self._rates = np.asarray(rates, dtype=np.float64)[order]
        if len(self._ts) != len(self._rates):
            raise ValueError("funding series: ts and rates differ in length")
        self._default = default

    @property
    def last_ts(self) -> int | None:
        """The newest settlement recorded, or None."""
        return int(self._ts[-1]) if len(self._ts) else None

    def rate(self, symbol: str, ts: int) -> float:
        i = int(np.searchsorted(self._ts, ts, side="right")) - 1
        return float(self._rates[i]) if i >= 0 else self._default


@dataclass(frozen=True, slots=True)
class CostModels:
    """The cost models a simulated broker uses, bundled."""

    fees: FeeModel = InstrumentFees()
    spread: PriceImpactModel = FixedBps(0.0)
    slippage: PriceImpactModel = FixedBps(0.0)
    funding: FundingModel = ConstantFunding(0.0)


def next_funding_time(after_ms: int) -> int:
    """The first settlement instant strictly after ``after_ms``."""
    return (after_ms // FUNDING_INTERVAL_MS + 1) * FUNDING_INTERVAL_MS
