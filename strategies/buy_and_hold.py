"""Buy at the first bar close and hold: the baseline every strategy must beat after costs.

The order is sized at the close and fills at the next open; when the open gaps up by more than
the cash left over (1 - ``fraction``), the broker rejects it for insufficient cash, and the
strategy tries again at the next close, so it is never left in cash for the whole run."""

from __future__ import annotations

from dataclasses import dataclass

from strategies.base import Strategy


class BuyAndHold(Strategy):
    name = "buy_and_hold"

    @dataclass(frozen=True)
    class Params:
        fraction: float = 0.99  # of equity per symbol, split evenly; kept under 1 so fees fit in cash

        def __post_init__(self) -> None:
            if not 0 < self.fraction <= 1:
                raise ValueError("fraction must be in (0, 1]")

    def on_bar(self, ctx, bar) -> None:
        if ctx.position(bar.symbol) == 0 and not ctx.open_orders(bar.symbol):  # not bought yet, or rejected
            ctx.target_percent(bar.symbol, self.params.fraction / len(ctx.symbols))
