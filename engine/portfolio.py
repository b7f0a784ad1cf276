"""Portfolio accounting: cash, positions and the cost ledgers.

One model for spot and linear perpetuals: a fill moves cash by ``-signed_quantity * price - fee``
and a position is worth ``quantity * last_price`` (negative when short), so

    equity = cash + Σ quantity · last_price

holds for both. Margin limits for perpetuals are a constraint checked before a fill, not a
different bookkeeping. Profit and loss are measured against *reference* prices (before spread and
slippage), which keeps the costs visible as their own ledgers:

    realised + unrealised − (fees + spread + slippage + funding) = equity − starting equity

Cash moves only through ``apply_fill`` and ``apply_funding``.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.domain import Fill, FundingPayment
from engine.errors import OperationalError

_DUST = 1e-12  # relative size below which a position counts as flat


class Position:
    """Mutable state of one symbol's position (the portfolio owns it; strategies read it)."""

    __slots__ = ("symbol", "quantity", "average_price", "last_price", "realized_pnl")

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.quantity = 0.0
        self.average_price = 0.0  # reference-price average entry of the open quantity
        self.last_price = 0.0
        self.realized_pnl = 0.0

    @property
    def value(self) -> float:
        return self.quantity * self.last_price

    @property
    def unrealized_pnl(self) -> float:
        return self.quantity * (self.last_price - self.average_price)

    def __repr__(self) -> str:
        return f"Position({self.symbol}, qty={self.quantity}, avg={self.average_price}, last={self.last_price})"


@dataclass(frozen=True, slots=True)
class Ledgers:
    """Cumulative costs in quote currency (positive = paid)."""

    fees: float
    spread: float
    slippage: float
    funding: float

    @property
    def total(self) -> float:
        return self.fees + self.spread + self.slippage + self.funding

    def as_dict(self) -> dict[str, float]:
        return {"fees": self.fees, "spread": self.spread, "slippage": self.slippage, "funding": self.funding}


class Portfolio:
    def __init__(self, starting_cash: float) -> None:
        if not starting_cash > 0:
            raise OperationalError(f"starting cash must be positive, got {starting_cash}")
        self.starting_cash = float(starting_cash)
        self.cash = float(starting_cash)
        self.positions: dict[str, Position] = {}
        self.fees = 0.0
        self.spread = 0.0
        self.slippage = 0.0
        self.funding = 0.0

    # -- reading -------------------------------------------------------------------------------
    def position(self, symbol: str) -> Position:
        pos = self.positions.get(symbol)
        if pos is None:
            pos = self.positions[symbol] = Position(symbol)
        return pos

    def quantity(self, symbol: str) -> float:
        pos = self.positions.get(symbol)
        return pos.quantity if pos is not None else 0.0

    @property
    def equity(self) -> float:
        return self.cash + sum(p.quantity * p.last_price for p in self.positions.values())

    @property
    def gross_exposure(self) -> float:
        return sum(abs(p.quantity * p.last_price) for p in self.positions.values())

    @property
    def realized_pnl(self) -> float:
        return sum(p.realized_pnl for p in self.positions.values())

    @property
    def unrealized_pnl(self) -> float:
        return sum(p.unrealized_pnl for p in self.positions.values())

    @property
    def ledgers(self) -> Ledgers:
        return Ledgers(self.fees, self.spread, self.slippage, self.funding)

    # -- changing ------------------------------------------------------------------------------
    def mark(self, symbol: str, price: float) -> None:
        self.position(symbol).last_price = price

    def apply_fill(self, fill: Fill) -> None:
        pos = self.position(fill.symbol)
        delta = fill.signed_quantity
        ref = fill.reference_price
        old = pos.quantity
        new = old + delta
        if old == 0.0 or (old > 0) == (delta > 0):  # opening or adding
            pos.average_price = (pos.average_price * abs(old) + ref * abs(delta)) / abs(new)
        else:  # reducing, closing or flipping
            closed = min(abs(delta), abs(old))
            pos.realized_pnl += closed * (ref - pos.average_price) * (1.0 if old > 0 else -1.0)
            if abs(new) <= _DUST * max(abs(old), abs(delta)):
                new = 0.0
                pos.average_price = 0.0
            elif (new > 0) != (old > 0):  # flipped: the remainder opened at the reference price
                pos.average_price = ref
        pos.quantity = new
        self.cash -= delta * fill.price + fill.fee
        self.fees += fill.fee
        self.spread += fill.spread_cost
        self.slippage += fill.slippage_cost

    def apply_funding(self, payment: FundingPayment) -> None:
        self.cash -= payment.amount
        self.funding += payment.amount

    # -- checking ------------------------------------------------------------------------------
    def check_invariants(self, tolerance: float = 1e-7) -> None:
        """Raise if the accounting identity of the module docstring does not hold."""
        scale = max(self.starting_cash, abs(self.equity), 1.0)
        explained = self.realized_pnl + self.unrealized_pnl - self.ledgers.total
        actual = self.equity - self.starting_cash
        if abs(explained - actual) > tolerance * scale:
            raise OperationalError(
                f"accounting invariant broken: realised {self.realized_pnl} + unrealised {self.unrealized_pnl}"
                f" - costs {self.ledgers.total} = {explained}, but equity - start = {actual}"
            )
