"""The strategy base class: override the hooks you need; the engine calls them in time order.

Hooks are named for what happened. ``ctx`` (``engine.context.StrategyContext``) gives the
portfolio, history up to now and the order methods. The same class runs in backtests, the paper
daemon and live trading.

Parameters: a strategy declares a frozen dataclass ``Params``; ``config.toml``'s
``[strategies.<name>]`` table is checked against it (unknown keys are refused).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from engine.context import StrategyContext
    from engine.domain import Bar, Fill, News, OrderAccepted, OrderCancelled, OrderExpired, Rejection
    from engine.plan import BacktestPlan


class Strategy:
    name: ClassVar[str] = "strategy"
    sections: ClassVar[tuple[str, ...]] = ()  # config sections of its own, beside [strategies.<name>]
    has_oracle: ClassVar[bool] = False  # prepare(oracle=True) exists: `backtest --oracle`, an upper bound

    @dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()

    def on_start(self, ctx: StrategyContext) -> None:
        """Before the first event."""

    def on_bar(self, ctx: StrategyContext, bar: Bar) -> None:
        """A bar closed; ``ctx.history`` now includes it."""

    def on_news(self, ctx: StrategyContext, news: News) -> None:
        """A headline was published."""

    def on_fill(self, ctx: StrategyContext, fill: Fill) -> None:
        """One of this strategy's orders (partly) filled."""

    def on_order_rejected(self, ctx: StrategyContext, rejection: Rejection) -> None:
        """An order was refused; ``rejection.reason`` says why."""

    def on_order_accepted(self, ctx: StrategyContext, event: OrderAccepted) -> None:
        """The broker took an order and it is working."""

    def on_order_cancelled(self, ctx: StrategyContext, event: OrderCancelled) -> None:
        """An order was cancelled (by ``ctx.cancel`` or from the exchange's side)."""

    def on_order_expired(self, ctx: StrategyContext, event: OrderExpired) -> None:
        """A good-till-date order reached its ``expire_ms``."""

    def on_timer(self, ctx: StrategyContext, name: str) -> None:
        """A timer set with ``ctx.set_timer(name, at_ms)`` is due; ``ctx.time`` is its instant."""

    def on_stop(self, ctx: StrategyContext) -> None:
        """After the last event."""

    @classmethod
    def prepare(cls, plan: BacktestPlan, *, progress: bool = False, say: Callable[[str], None] | None = None,
                online: bool = False) -> BacktestPlan:
        """Work a strategy needs before it can trade ``plan`` (the LLM strategy trains or loads its
        adapters and may cut the plan to the part it has not trained on); the plan to run. None by
        default. ``say`` receives one line per stage. ``online``: the plan's bars arrive one at a
        time (the paper and live daemons), so nothing may be computed ahead of them."""
        return plan

    def summary(self) -> dict[str, Any]:
        """Figures this strategy adds to the run's JSON summary, read after ``on_stop``; none by default."""
        return {}
