"""The event loop: hands bars and headlines to one strategy in time order, routes broker events to
the portfolio, settles funding and records equity.

The same ``EventLoop`` serves backtests (``engine.backtest`` feeds it a merged history) and the
paper and live daemons (which feed it events as they arrive). Per bar, in this order:

1. the broker fills what the bar reaches (orders decided before the bar opened);
2. perpetual funding is settled for every settlement instant up to the bar's close;
3. positions are marked at the close;
4. fill and rejection notices go to the strategy (``on_fill``, ``on_order_rejected``);
5. the strategy's ``on_bar`` runs, then any notices it caused;
6. equity (cash + position values) is recorded at the bar's close time.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from engine.broker import Broker, BrokerEvent
from engine.context import StrategyContext
from engine.costs import FundingModel, next_funding_time
from engine.domain import Bar, Fill, FundingPayment, Instrument, News, Order, Rejection
from engine.journal import Journal
from engine.portfolio import Portfolio


class EventLoop:
    def __init__(self, portfolio: Portfolio, instruments: Mapping[str, Instrument], funding: FundingModel,
                 *, check_invariants: bool = False, journal: Journal | None = None) -> None:
        self.portfolio = portfolio
        self.instruments = instruments
        self._funding = funding
        self._check = check_invariants
        self.journal = journal
        self._notices: deque[BrokerEvent] = deque()
        self._next_funding: dict[str, int] = {}
        self._perpetuals = frozenset(s for s, inst in instruments.items() if inst.pays_funding)
        self.orders: list[Order] = []
        self.fills: list[Fill] = []
        self.rejections: list[Rejection] = []
        self.funding_payments: list[FundingPayment] = []
        self.bars_seen = 0
        self.news_seen = 0
        # Equity curve: one point per distinct bar-close time, in compact typed arrays.
        self._eq_ts = array("q")
        self._eq = array("d")
        self._eq_gross = array("d")
        self._last_ts = -1
        self._positions = portfolio.positions  # the portfolio's own dict: read on every bar
        self.strategy: Any = None
        self.ctx: StrategyContext | None = None
        self.broker: Broker | None = None

    def bind(self, strategy: Any, ctx: StrategyContext, broker: Broker) -> None:
        self.strategy, self.ctx, self.broker = strategy, ctx, broker
        # Bound once: process_bar runs a million times in a long backtest.
        self._broker_on_bar = broker.on_bar
        self._strategy_on_bar = strategy.on_bar
        self._index = ctx.index

    # -- order and broker events ---------------------------------------------------------------
    def on_order(self, order: Order) -> None:
        """Called by the context for every order a strategy makes, before its outcome."""
        self.orders.append(order)
        if self.journal is not None:
            self.journal.order_submitted(order)

    def on_cancel(self, client_order_id: str, ts: int) -> None:
        if self.journal is not None:
            self.journal.order_cancelled(client_order_id, ts)

    def on_broker_event(self, event: BrokerEvent) -> None:
        """Called by the broker and the context. Fills are applied at once (so the next fill's
        cash check sees them); the strategy hears of them after the current step."""
        if type(event) is Fill:
            self.portfolio.apply_fill(event)
            self.fills.append(event)
            if self.journal is not None:
                self.journal.fill(event)
        else:
            self.rejections.append(event)
            if self.journal is not None:
                self.journal.rejection(event)
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
        if self.journal is not None:
            self.journal.news(news)
        self.strategy.on_news(ctx, news)
        if self._notices:
            self._notify()

    def process_bar(self, bar: Bar, row: int) -> None:
        """``row`` is the bar's index in its series (what ``ctx.history`` may read up to)."""
        ctx = self.ctx
        symbol, _, ts, _, _, _, close, _ = bar
        ctx.time = ts
        self.bars_seen += 1
        self._broker_on_bar(bar)
        if symbol in self._perpetuals:
            self._settle_funding(bar)
        positions = self._positions
        pos = positions.get(symbol) or self.portfolio.position(symbol)
        pos.last_price = close
        self._index[symbol] = row
        if self._notices:
            self._notify()
        self._strategy_on_bar(ctx, bar)
        if self._notices:
            self._notify()
        # Record equity at this close (inline: this runs once per bar).
        value = gross = 0.0
        for p in positions.values():
            v = p.quantity * p.last_price
            value += v
            gross += v if v >= 0.0 else -v
        equity = self.portfolio.cash + value
        if ts == self._last_ts:  # several symbols closed at this instant: keep the last state
            self._eq[-1] = equity
            self._eq_gross[-1] = gross
        else:
            self._last_ts = ts
            self._eq_ts.append(ts)
            self._eq.append(equity)
            self._eq_gross.append(gross)
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
                if self.journal is not None:
                    self.journal.funding(payment)
            due = next_funding_time(due)
        self._next_funding[symbol] = due

    def checkpoint(self) -> None:
        """A safe point to persist what the journal buffered."""
        if self.journal is not None:
            self.journal.checkpoint(self)

    def equity_since(self, start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(close times, equity, gross exposure) of the points recorded from index ``start`` on.
        The last point may still change while bars of other symbols close at the same instant."""
        return (np.array(self._eq_ts[start:], dtype=np.int64), np.array(self._eq[start:], dtype=np.float64),
                np.array(self._eq_gross[start:], dtype=np.float64))

    def equity_curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(close times, equity, gross exposure) recorded so far."""
        return (np.array(self._eq_ts, dtype=np.int64), np.array(self._eq, dtype=np.float64),
                np.array(self._eq_gross, dtype=np.float64))
