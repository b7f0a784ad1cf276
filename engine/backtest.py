"""Backtests: merge bar and news history into one time-ordered stream and run it through the
kernel (``engine.kernel``) with the backtest's parts: a simulated clock, histories over the
series, the simulated broker and simulated funding.

Ordering (DESIGN.md): a bar's event time is its close; at equal times news comes before bars, so a
decision at a bar close sees every headline published up to that instant and nothing later. Bars
of several symbols closing together come in the order the series were given.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import islice, repeat
from typing import Any

import numpy as np
from tqdm import tqdm

from engine.brokers.simulated import FillMode, SimulatedBroker
from engine.clock import SimulatedClock
from engine.config import RiskConfig
from engine.costs import CostModels
from engine.domain import Bar, Fill, FundingPayment, Instrument, News, Order, Rejection
from engine.funding import SimulatedFunding
from engine.history import BarHistory
from engine.journal import Journal
from engine.kernel import Kernel, Parts, assemble
from engine.metrics import Metrics, compute_metrics
from engine.portfolio import Ledgers
from engine.risk import RiskLimits
from engine.series import BarSeries
from engine.timeutil import iso

_NEWS, _BAR = 0, 1  # sort priority at equal timestamps


@dataclass(frozen=True)
class BacktestResult:
    run_id: str
    strategy: str
    symbols: tuple[str, ...]
    timeframe_ms: int
    bars: int
    news: int
    orders: tuple[Order, ...]
    fills: tuple[Fill, ...]
    rejections: tuple[Rejection, ...]
    funding_payments: tuple[FundingPayment, ...]
    starting_cash: float
    final_equity: float
    ledgers: Ledgers
    equity_ts: np.ndarray
    equity: np.ndarray
    gross_exposure: np.ndarray
    metrics: Metrics
    elapsed_seconds: float
    fill_mode: str
    extra: dict[str, Any] = field(default_factory=dict)
    risk_halts: tuple[tuple[int, str], ...] = ()  # (event time, reason) of each risk halt

    @property
    def bars_per_second(self) -> float:
        return self.bars / self.elapsed_seconds if self.elapsed_seconds > 0 else float("inf")

    def summary(self) -> dict[str, Any]:
        """The JSON summary printed by ``python -m engine backtest --json``."""
        m = self.metrics.to_dict()
        out: dict[str, Any] = {
            "run_id": self.run_id,
            "strategy": self.strategy,
            "symbols": list(self.symbols),
            "bars": self.bars,
            "news": self.news,
            "orders": len(self.orders),
            "fills": len(self.fills),
            "rejected_orders": len(self.rejections),
            "starting_cash": self.starting_cash,
            "final_equity": self.final_equity,
            "total_return": m["total_return"],
            "sharpe": m["sharpe"],
            "max_drawdown": m["max_drawdown"],
            "fees": self.ledgers.fees,
            "slippage": self.ledgers.slippage,
            "spread": self.ledgers.spread,
            "funding": self.ledgers.funding,
            "buy_and_hold_return": m["buy_and_hold_return"],
            "bars_per_second": round(self.bars_per_second, 1),
            "elapsed_seconds": round(self.elapsed_seconds, 4),
            "fill_mode": self.fill_mode,
            "metrics": m,
        }
        if self.risk_halts:  # only when one happened: a run without limits summarises as it always did
            out["risk_halts"] = [{"time": iso(ts), "reason": reason} for ts, reason in self.risk_halts]
        out.update(self.extra)
        return out


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def merge_order(series: Sequence[BarSeries], news: Sequence[News]) -> tuple[np.ndarray, np.ndarray]:
    """The event stream as two parallel arrays: source (series index, or -1 for news) and row."""
    times = [s.ts_close for s in series] + [np.fromiter((n.ts_event for n in news), np.int64, len(news))]
    prio = [np.full(len(s), _BAR, np.int8) for s in series] + [np.full(len(news), _NEWS, np.int8)]
    source = [np.full(len(s), k, np.int32) for k, s in enumerate(series)] + [np.full(len(news), -1, np.int32)]
    rows = [np.arange(len(s), dtype=np.int64) for s in series] + [np.arange(len(news), dtype=np.int64)]
    t, p, src, r = (np.concatenate(x) for x in (times, prio, source, rows))
    order = np.lexsort((r, src, p, t))  # primary key last: time, then news first, then feed order
    return src[order], r[order]


def event_runs(series: Sequence[BarSeries], news: Sequence[News], max_run: int = 20_000) -> list[tuple[int, int, int]]:
    """The merged stream as runs of consecutive events from one source, ``(source, first row, count)``,
    none longer than ``max_run``. Rows within a run are consecutive, so the loop can walk a run
    without looking anything up per event."""
    src, rows = merge_order(series, news)
    n = len(src)
    if n == 0:
        return []
    breaks = np.flatnonzero(np.diff(src)) + 1
    starts = np.unique(np.concatenate(([0], breaks, np.arange(0, n, max_run))))
    counts = np.diff(np.append(starts, n))
    return list(zip(src[starts].tolist(), rows[starts].tolist(), counts.tolist()))


def iter_bars(series: BarSeries, chunk: int = 65_536) -> Iterator[Bar]:
    """The series as ``Bar`` values, converted a chunk at a time so a million bars never exist
    as Python objects at once."""
    make = partial(tuple.__new__, Bar)  # Bar._make without its Python frame: this runs once per bar
    tf, sym = series.timeframe_ms, series.symbol
    for a in range(0, len(series), chunk):
        b = a + chunk
        ts_open = series.ts_open[a:b]
        yield from map(make, zip(repeat(sym), ts_open.tolist(), (ts_open + tf).tolist(), series.open[a:b].tolist(),
                                 series.high[a:b].tolist(), series.low[a:b].tolist(), series.close[a:b].tolist(),
                                 series.volume[a:b].tolist()))


def buy_and_hold_return(series: Sequence[BarSeries]) -> float | None:
    """Equal-weight price return of holding every symbol from the first close to the last, no costs."""
    rets = [s.close[-1] / s.close[0] - 1.0 for s in series if len(s) > 1]
    return float(np.mean(rets)) if rets else None


def backtest_parts(series: Sequence[BarSeries], instruments: Mapping[str, Instrument], costs: CostModels,
                   fill_mode: FillMode = "next_open") -> Parts:
    """The backtest's parts: time jumps to each event, history grows over the series in memory,
    fills are simulated against the bars and funding from the cost model's rates."""
    if fill_mode not in ("next_open", "close"):
        raise ValueError(f"fill_mode must be 'next_open' or 'close', got {fill_mode!r}")
    start = min((int(s.ts_open[0]) for s in series if len(s)), default=0)
    return Parts(
        clock=SimulatedClock(start), histories={s.symbol: BarHistory.of_series(s) for s in series},
        broker=lambda portfolio, emit, clock: SimulatedBroker(portfolio, instruments, costs, emit=emit,
                                                              fill_mode=fill_mode, clock=clock),
        funding=SimulatedFunding(costs.funding))


def run_backtest(strategy: Any, series: Sequence[BarSeries], instruments: Mapping[str, Instrument], *,
                 news: Sequence[News] = (), starting_cash: float = 10_000.0, costs: CostModels | None = None,
                 fill_mode: FillMode = "next_open", run_id: str | None = None, progress: bool = False,
                 check_invariants: bool = False, journal: Journal | None = None,
                 risk: RiskConfig | None = None) -> BacktestResult:
    """Run ``strategy`` over ``series`` (and ``news``) with a simulated broker, under the limits of
    ``risk`` (a halt lasts to the end of its UTC day: a backtest has no person to clear it)."""
    if not series:
        raise ValueError("a backtest needs at least one bar series")
    symbols = [s.symbol for s in series]
    if len(set(symbols)) != len(symbols):
        raise ValueError(f"each symbol may appear once, got {symbols}")
    missing = [s for s in symbols if s not in instruments]
    if missing:
        raise ValueError(f"no instrument definition for {missing}")
    costs = costs or CostModels()
    run_id = run_id or new_run_id()
    kernel = assemble("backtest", backtest_parts(series, instruments, costs, fill_mode), strategy=strategy,
                      instruments=instruments, costs=costs, starting_cash=starting_cash, run_id=run_id,
                      journal=journal, check_invariants=check_invariants,
                      risk=RiskLimits(risk, clear_next_day=True) if risk is not None and risk.any else None)
    started = time.perf_counter()
    kernel.ctx.time = kernel.clock.now()
    kernel.start()
    drive(kernel, series, news, progress=progress)
    kernel.stop()
    elapsed = time.perf_counter() - started
    return backtest_result(kernel, series, fill_mode=fill_mode, elapsed=elapsed)


def drive(kernel: Kernel, series: Sequence[BarSeries], news: Sequence[News], *, progress: bool = False,
          checkpoint_every: int = 20_000) -> None:
    """Deliver the merged history to ``kernel``, in runs of one source (no per-event look-up), with a
    checkpoint every ``checkpoint_every`` events."""
    news = sorted(news, key=lambda n: n.ts_event)
    runs = event_runs(series, news, max_run=checkpoint_every)
    bar_iters = [iter_bars(s) for s in series]  # a series' bars come in row order, run after run
    process_bar, process_news = kernel.loop.process_bar, kernel.loop.process_news
    total = sum(count for _, _, count in runs)
    since_checkpoint = 0
    with tqdm(total=total, disable=not progress, unit="ev", mininterval=0.5, leave=False) as bar_progress:
        for src, first, count in runs:
            if src < 0:
                for row in range(first, first + count):
                    process_news(news[row])
            else:
                for bar in islice(bar_iters[src], count):
                    process_bar(bar)
            since_checkpoint += count
            if since_checkpoint >= checkpoint_every:
                kernel.checkpoint()
                bar_progress.update(since_checkpoint)
                since_checkpoint = 0


def backtest_result(kernel: Kernel, series: Sequence[BarSeries], *, fill_mode: str, elapsed: float) -> BacktestResult:
    loop, portfolio, strategy = kernel.loop, kernel.portfolio, kernel.strategy
    strategy_summary = getattr(strategy, "summary", None)  # figures the strategy adds (Strategy.summary)
    ts, equity, gross = loop.equity_curve()
    metrics = compute_metrics(ts=ts, equity=equity, gross_exposure=gross, fills=loop.fills,
                              starting_equity=portfolio.starting_cash, costs=portfolio.ledgers.as_dict(),
                              buy_and_hold_return=buy_and_hold_return(series))
    return BacktestResult(
        run_id=kernel.run_id, strategy=getattr(strategy, "name", type(strategy).__name__),
        symbols=tuple(s.symbol for s in series), timeframe_ms=series[0].timeframe_ms, bars=loop.bars_seen,
        news=loop.news_seen, orders=tuple(loop.orders), fills=tuple(loop.fills), rejections=tuple(loop.rejections),
        funding_payments=tuple(loop.funding_payments), starting_cash=portfolio.starting_cash,
        final_equity=float(equity[-1]) if len(equity) else portfolio.starting_cash, ledgers=portfolio.ledgers,
        equity_ts=ts, equity=equity, gross_exposure=gross, metrics=metrics, elapsed_seconds=elapsed,
        fill_mode=fill_mode, extra=dict(strategy_summary()) if strategy_summary is not None else {},
        risk_halts=tuple(kernel.risk.halts) if kernel.risk is not None else (),
    )
