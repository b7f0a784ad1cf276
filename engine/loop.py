"""The event loop: hands bars and headlines to one strategy in time order, routes broker events to
the portfolio, settles funding and records equity.

The same ``EventLoop`` serves backtests (``engine.backtest`` feeds it a merged history) and the
paper and live daemons (which feed it events as they arrive). Per bar, in this order:

1. the broker fills what the bar reaches (orders decided before the bar opened);
2. perpetual funding is settled for every settlement instant up to the bar's close;
3. positions are marked at the close;
4. fill and rejection notices go to the strategy (``on_fill``, ``on_order_rejected``);
5. the strategy's ``on_bar`` runs, then any notices it caused;
6. equity is recorded at the bar's close time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from engine.broker import Broker, BrokerEvent
from engine.context import StrategyContext
from engine.costs import FundingModel, next_funding_time
from engine.domain import Bar, Fill, FundingPayment, Instrument, News, Rejection
from engine.portfolio import Portfolio


class EventLoop:
    def __init__(self, portfolio: Portfolio, instruments: Mapping[str, Instrument], funding: FundingModel,
                 *, check_invariants: bool = False, capacity: int = 1024) -> None:
        self.portfolio = portfolio
        self.instruments = instruments
        self._funding = funding
        self._check = check_invariants
        self._notices: deque[BrokerEvent] = deque()
        self._next_funding: dict[str, int] = {}
        self._perpetuals = frozenset(s for s, inst in instruments.items() if inst.pays_funding)
        self.fills: list[Fill] = []
        self.rejections: list[Rejection] = []
        self.funding_payments: list[FundingPayment] = []
        self.bars_seen = 0
        self.news_seen = 0
        # Equity curve: one point per distinct bar-close time, in growable numpy buffers.
        self._eq_ts = np.empty(capacity, dtype=np.int64)
        self._eq = np.empty(capacity, dtype=np.float64)
        self._eq_gross = np.empty(capacity, dtype=np.float64)
        self._eq_n = 0
        self.strategy: Any = None
        self.ctx: StrategyContext | None = None
        self.broker: Broker | None = None

    def bind(self, strategy: Any, ctx: StrategyContext, broker: Broker) -> None:
        self.strategy, self.ctx, self.broker = strategy, ctx, broker

    # -- broker events -------------------------------------------------------------------------
    def on_broker_event(self, event: BrokerEvent) -> None:
        """Called by the broker and the context. Fills are applied at once (so the next fill's
        cash check sees them); the strategy hears of them after the current step."""
        if type(event) is Fill:
            self.portfolio.apply_fill(event)
            self.fills.append(event)
        else:
            self.rejections.append(event)
        self._notices.append(event)

    def _notify(self) -> None:
        strategy, ctx = self.strategy, self.ctx
        while self._notices:
            event = self._notices.popleft()
            if type(event) is Fill:
                strategy.on_fill(ctx, event)
            else:
                strategy.on_order_rejected(ctx, event)

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self.strategy.on_start(self.ctx)
        self._notify()

    def stop(self) -> None:
        self.strategy.on_stop(self.ctx)
        self._notify()

    # -- events --------------------------------------------------------------------------------
    def process_news(self, news: News) -> None:
        ctx = self.ctx
        ctx.time = news.ts_event
        self.news_seen += 1
        self.strategy.on_news(ctx, news)
        if self._notices:
            self._notify()

    def process_bar(self, bar: Bar, row: int) -> None:
        """``row`` is the bar's index in its series (what ``ctx.history`` may read up to)."""
        ctx = self.ctx
        symbol = bar.symbol
        ctx.time = bar.ts_event
        self.bars_seen += 1
        self.broker.on_bar(bar)
        if symbol in self._perpetuals:
            self._settle_funding(bar)
        self.portfolio.position(symbol).last_price = bar.close
        ctx.index[symbol] = row
        if self._notices:
            self._notify()
        self.strategy.on_bar(ctx, bar)
        if self._notices:
            self._notify()
        self._record(bar.ts_event)
        if self._check:
            self.portfolio.check_invariants()

    def _settle_funding(self, bar: Bar) -> None:
        """Settle every funding instant in (previous close, this close]. The mark price is the close
        when the instant is the bar's close, else the bar's open (the last price known then)."""
        symbol = bar.symbol
        due = self._next_funding.get(symbol)
        if due is None:
            due = self._next_funding[symbol] = next_funding_time(bar.ts_open)
        while due <= bar.ts_event:
            qty = self.portfolio.quantity(symbol)
            if qty != 0.0:
                mark = bar.close if due == bar.ts_event else bar.open
                rate = self._funding.rate(symbol, due)
                payment = FundingPayment(symbol, due, rate, mark, qty, qty * mark * rate)
                self.portfolio.apply_funding(payment)
                self.funding_payments.append(payment)
            due = next_funding_time(due)
        self._next_funding[symbol] = due

    def _record(self, ts: int) -> None:
        n = self._eq_n
        if n and self._eq_ts[n - 1] == ts:
            n -= 1  # several symbols closed at this instant: keep the last state
        elif n == len(self._eq_ts):
            self._eq_ts = np.resize(self._eq_ts, 2 * n)
            self._eq = np.resize(self._eq, 2 * n)
            self._eq_gross = np.resize(self._eq_gross, 2 * n)
        cash = self.portfolio.cash
        value = gross = 0.0
        for pos in self.portfolio.positions.values():
            v = pos.quantity * pos.last_price
            value += v
            gross += abs(v)
        self._eq_ts[n] = ts
        self._eq[n] = cash + value
        self._eq_gross[n] = gross
        self._eq_n = n + 1

    def equity_curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(close times, equity, gross exposure) recorded so far."""
        n = self._eq_n
        return self._eq_ts[:n].copy(), self._eq[:n].copy(), self._eq_gross[:n].copy()
