"""What can be traded and the exchange's rules for it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.domain.enums import ContractType

# Bybit VIP0 schedule (see shared BYBIT.md section 7): spot 0.1% / 0.1%, perpetuals 0.055% taker / 0.02% maker.
# (maker, taker) fee rates.
DEFAULT_FEES: dict[ContractType, tuple[float, float]] = {
    ContractType.SPOT: (0.001, 0.001),
    ContractType.LINEAR_PERP: (0.0002, 0.00055),
}


def _decimals(step: float) -> int:
    """Number of decimals that represent multiples of ``step`` exactly enough for rounding."""
    return max(0, -math.floor(math.log10(step) + 1e-9)) + 2


@dataclass(frozen=True, slots=True)
class Instrument:
    symbol: str
    contract: ContractType = ContractType.SPOT
    tick_size: float = 0.01
    lot_step: float = 0.000001
    min_quantity: float = 0.0
    min_notional: float = 0.0
    maker_fee: float = 0.001
    taker_fee: float = 0.001
    max_leverage: float = 1.0
    quote_currency: str = "USDT"

    def __post_init__(self) -> None:
        for name in ("tick_size", "lot_step"):
            if not getattr(self, name) > 0:
                raise ValueError(f"instrument {self.symbol}: {name} must be > 0")
        if self.max_leverage < 1:
            raise ValueError(f"instrument {self.symbol}: max_leverage must be >= 1")
        if self.contract is ContractType.SPOT and self.max_leverage != 1:
            raise ValueError(f"instrument {self.symbol}: spot instruments cannot use leverage")

    @property
    def can_short(self) -> bool:
        return self.contract is ContractType.LINEAR_PERP

    @property
    def pays_funding(self) -> bool:
        return self.contract is ContractType.LINEAR_PERP

    def round_quantity(self, quantity: float) -> float:
        """Round a positive quantity down to the lot step (never up: that could overspend).

        A quantity that is a whole number of steps up to float error (a position summed from fills,
        77.601457 + 52.828056 = 130.42951299999999) keeps its last step: the tolerance is relative,
        since a fixed one is below the rounding error once a quantity holds ~1e7 steps or more."""
        steps = math.floor(quantity / self.lot_step * (1.0 + 1e-12) + 1e-9)
        return round(steps * self.lot_step, _decimals(self.lot_step))

    def round_price(self, price: float) -> float:
        """Round a price to the nearest tick."""
        return round(round(price / self.tick_size) * self.tick_size, _decimals(self.tick_size))
