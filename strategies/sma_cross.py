"""Moving-average crossover: long (or short, on perpetuals) while the fast average is above the
slow one. The classic trend baseline."""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import ConfigError
from engine.indicators import SMA
from strategies.base import Strategy


class SmaCross(Strategy):
    name = "sma_cross"

    @dataclass(frozen=True)
    class Params:
        fast: int = 10  # bars in the fast average
        slow: int = 30  # bars in the slow average
        fraction: float = 0.95  # of equity held while in a position; under 1 so a gap up still fits in cash
        allow_short: bool = False  # go short on a cross down (perpetuals only)

        def __post_init__(self) -> None:
            if not 1 <= self.fast < self.slow:
                raise ValueError(f"need 1 <= fast < slow, got fast={self.fast} slow={self.slow}")
            if not 0 < self.fraction <= 1:
                raise ValueError("fraction must be in (0, 1]")

    def on_start(self, ctx) -> None:
        if self.params.allow_short:
            spot = [s for s in ctx.symbols if not ctx.instruments[s].can_short]
            if spot:
                raise ConfigError(f"strategies.sma_cross.allow_short = true needs shortable instruments; {spot} are spot")
        self._fast = {s: SMA(self.params.fast) for s in ctx.symbols}
        self._slow = {s: SMA(self.params.slow) for s in ctx.symbols}
        self._above: dict[str, bool | None] = dict.fromkeys(ctx.symbols)

    def on_bar(self, ctx, bar) -> None:
        symbol = bar.symbol
        fast = self._fast[symbol].update(bar.close)
        slow = self._slow[symbol].update(bar.close)
        if slow is None:
            return
        above = fast > slow
        was = self._above[symbol]
        self._above[symbol] = above
        if was is None or above == was:
            return  # only act on a cross
        weight = self.params.fraction / len(ctx.symbols)
        if above:
            ctx.target_percent(symbol, weight)
        elif self.params.allow_short:
            ctx.target_percent(symbol, -weight)
        else:
            ctx.close(symbol)
