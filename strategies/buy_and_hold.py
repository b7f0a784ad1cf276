"""Buy at the first bar close and hold: the baseline every strategy must beat after costs."""

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

    def on_start(self, ctx) -> None:
        self._bought: set[str] = set()

    def on_bar(self, ctx, bar) -> None:
        if bar.symbol not in self._bought:
            self._bought.add(bar.symbol)
            ctx.target_percent(bar.symbol, self.params.fraction / len(ctx.symbols))
