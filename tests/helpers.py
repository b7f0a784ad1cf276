"""Small builders for hand-written candle tables and scripted strategies."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Sequence
from pathlib import Path

from engine.backtest import BacktestResult, run_backtest
from engine.costs import CostModels
from engine.domain import ContractType, Instrument, News
from engine.series import BarSeries
from engine.timeutil import MS_PER_HOUR, parse_instant
from strategies.base import Strategy

T0 = parse_instant("2024-01-01")  # a Monday, 00:00 UTC

Action = Callable[..., object]


def candles(rows: Sequence[tuple[float, float, float, float]], *, symbol: str = "TEST",
            timeframe_ms: int = MS_PER_HOUR, start: int = T0) -> BarSeries:
    """Bars from (open, high, low, close) rows, one per timeframe from ``start``."""
    n = len(rows)
    return BarSeries.from_arrays(
        symbol, timeframe_ms, [start + i * timeframe_ms for i in range(n)], [r[0] for r in rows],
        [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows], [1.0] * n, source="test",
    )


def instrument(symbol: str = "TEST", *, contract: ContractType = ContractType.SPOT, maker: float = 0.0,
               taker: float = 0.0, leverage: float = 1.0, **kw: float) -> Instrument:
    return Instrument(symbol, contract=contract, maker_fee=maker, taker_fee=taker, max_leverage=leverage,
                      lot_step=kw.pop("lot_step", 0.0001), tick_size=kw.pop("tick_size", 0.01), **kw)


class Scripted(Strategy):
    """Runs ``actions[i](ctx)`` at the close of bar ``i`` and ``on_news_actions`` on each headline;
    records every callback it receives."""

    name = "scripted"

    def __init__(self, actions: dict[int, Action] | None = None, on_news: Action | None = None) -> None:
        super().__init__()
        self.actions = actions or {}
        self.news_action = on_news
        self.seen: list[tuple[str, object]] = []

    def on_bar(self, ctx, bar) -> None:
        self.seen.append(("bar", bar.ts_event))
        action = self.actions.get(ctx.bars_seen(bar.symbol) - 1)
        if action is not None:
            action(ctx)

    def on_news(self, ctx, news) -> None:
        self.seen.append(("news", news.ts_event))
        if self.news_action is not None:
            self.news_action(ctx)

    def on_fill(self, ctx, fill) -> None:
        self.seen.append(("fill", fill))

    def on_order_rejected(self, ctx, rejection) -> None:
        self.seen.append(("rejected", rejection))


def run(rows, actions=None, *, inst: Instrument | None = None, costs: CostModels | None = None,
        cash: float = 10_000.0, news: Sequence[News] = (), on_news: Action | None = None,
        timeframe_ms: int = MS_PER_HOUR, fill_mode: str = "next_open") -> tuple[BacktestResult, Scripted]:
    inst = inst or instrument()
    strategy = Scripted(actions, on_news)
    series = candles(rows, symbol=inst.symbol, timeframe_ms=timeframe_ms)
    result = run_backtest(strategy, [series], {inst.symbol: inst}, news=news, starting_cash=cash,
                          costs=costs, fill_mode=fill_mode, check_invariants=True)  # type: ignore[arg-type]
    return result, strategy


def write(tmp_path: Path, name: str, text: str) -> Path:
    """Write ``text`` (each line stripped of indentation) as ``tmp_path/name``, gzipped for .gz."""
    body = "\n".join(line.strip() for line in text.strip().splitlines()) + "\n"
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wt") as handle:
            handle.write(body)
    else:
        path.write_text(body)
    return path
