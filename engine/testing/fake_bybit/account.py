"""The account: coin balances and one-way linear positions, and how trades and funding move them.

A unified (UTA) account with one wallet per coin. Linear trades are settled in the quote coin:
the position keeps an average entry price, reducing it realises ``closed x (price - entry)`` into
the wallet, and fees and funding are paid from the wallet. Spot trades move the base and the quote
coin; a spot buy's fee is taken from the base coin it receives, a sell's from the quote, as Bybit
does (reported as ``feeCoin``/``cumFeeDetail``).
Amounts are kept to 8 decimals, so balances equal the sums of the strings the fake sends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from engine.testing.fake_bybit.wire import money

DEFAULT_LEVERAGE = 10.0


@dataclass(slots=True)
class Position:
    """A one-way (positionIdx 0) linear position; ``size`` is signed, positive long."""

    symbol: str
    size: float = 0.0
    avg_price: float = 0.0
    leverage: float = DEFAULT_LEVERAGE
    cum_realised: float = 0.0  # realised PnL less fees and funding, since the account opened
    cur_realised: float = 0.0  # the same, since the position was last opened from flat
    created: int = 0
    updated: int = 0

    @property
    def side(self) -> str:
        return "Buy" if self.size > 0 else "Sell" if self.size < 0 else ""

    def initial_margin(self) -> float:
        return abs(self.size) * self.avg_price / self.leverage

    def unrealised(self, mark: float) -> float:
        return self.size * (mark - self.avg_price)


class Account:
    """Wallet balances by coin and linear positions by symbol."""

    def __init__(self, balance: Mapping[str, float]) -> None:
        self.wallet: dict[str, float] = {coin: money(float(amount)) for coin, amount in balance.items()}
        self.realised: dict[str, float] = dict.fromkeys(self.wallet, 0.0)  # cumRealisedPnl per coin
        self.positions: dict[str, Position] = {}

    def balance(self, coin: str) -> float:
        return self.wallet.get(coin, 0.0)

    def position(self, symbol: str) -> Position:
        if symbol not in self.positions:
            self.positions[symbol] = Position(symbol)
        return self.positions[symbol]

    def _pay(self, coin: str, amount: float, *, realised: bool = True) -> None:
        """Add ``amount`` (negative: take it) to the coin's wallet; realised PnL counts it too unless
        it is a spot exchange of one coin for another."""
        self.wallet[coin] = money(self.wallet.get(coin, 0.0) + amount)
        if realised:
            self.realised[coin] = money(self.realised.get(coin, 0.0) + amount)

    def trade_linear(self, symbol: str, settle: str, side: str, qty: float, price: float, fee: float, at: int) -> float:
        """Apply a linear fill; returns the PnL it realised (before the fee)."""
        position = self.position(symbol)
        signed = qty if side == "Buy" else -qty
        realised = 0.0
        if position.size == 0 or (position.size > 0) == (signed > 0):
            if position.size == 0:
                position.created, position.cur_realised = at, 0.0
            total = abs(position.size) + qty
            position.avg_price = (abs(position.size) * position.avg_price + qty * price) / total
            position.size = round(position.size + signed, 10)
        else:
            closed = min(abs(position.size), qty)
            realised = money(closed * (price - position.avg_price) * (1 if position.size > 0 else -1))
            position.size = round(position.size + signed, 10)
            if position.size == 0:
                position.avg_price = 0.0
            elif (position.size > 0) == (signed > 0):  # flipped: the rest opens at the fill price
                position.avg_price, position.created, position.cur_realised = price, at, 0.0
        position.updated = at
        net = money(realised - fee)
        position.cum_realised = money(position.cum_realised + net)
        position.cur_realised = money(position.cur_realised + net)
        self._pay(settle, net)
        return realised

    def trade_spot(self, base: str, quote: str, side: str, qty: float, value: float, fee: float,
                   fee_coin: str | None = None) -> None:
        """Apply a spot fill of ``qty`` base for ``value`` quote; the fee is paid in ``fee_coin`` (a
        buy's in the base coin it receives, as Bybit does; a sell's in the quote)."""
        if side == "Buy":
            self._pay(base, qty, realised=False)
            self._pay(quote, -value, realised=False)
        else:
            self._pay(base, -qty, realised=False)
            self._pay(quote, value, realised=False)
        self._pay(fee_coin or quote, -fee)

    def settle_funding(self, symbol: str, settle: str, mark: float, rate: float, at: int) -> float:
        """Charge the funding of the position at ``at``; returns the fee (positive: the account pays)."""
        position = self.position(symbol)
        fee = money(position.size * mark * rate)
        position.cum_realised = money(position.cum_realised - fee)
        position.cur_realised = money(position.cur_realised - fee)
        position.updated = at
        self._pay(settle, -fee)
        return fee
