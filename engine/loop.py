"""The event loop: hands bars, headlines and timers to one strategy in time order, routes broker
events to the order book and the portfolio, takes funding from its source and records equity.

The same ``EventLoop`` serves backtests (``engine.backtest`` feeds it a merged history) and the
paper and live daemons (which feed it events as they arrive); ``engine.kernel`` assembles it. Per
bar, in this order:

1. perpetual funding due before the bar's open (instants in a hole in the data) is settled on the
   position held through the hole;
2. the broker fills what the bar reaches (orders decided before the bar opened), then the funding
   due up to the bar's close is settled;
3. positions are marked at the close and the bar is appended to its symbol's history;
4. order events (accepted, fills, cancels, expiries, rejections) go to the strategy;
5. with a daily-loss limit, the risk limits see the equity marked at the close (and may halt);
   then the strategy's ``on_bar`` runs, then any events it caused;
6. equity (cash + position values) is recorded at the bar's close time.

``ctx.time`` is the time of the event being handled (a bar's close, a headline's publish time, a
timer's instant): what an order's decision time is, in every mode. With a simulated clock the loop
moves the clock to each event first, so timers due by then fire before it.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.broker import Broker, BrokerEvent
from engine.clock import Clock, SimulatedClock
from engine.domain import (
    Bar,
    Fill,
    FundingPayment,
    Instrument,
    News,
    Order,
    OrderAccepted,
    OrderCancelled,
    OrderExpired,
    Rejection,
)
from engine.funding import FundingSource
from engine.history import BarHistory
from engine.journal import Journal
from engine.orders import OrderBook
from engine.portfolio import Portfolio
from engine.risk import RiskLimits

if TYPE_CHECKING:
    from engine.context import StrategyContext

# The strategy hook each order event goes to.
_HOOKS = {Fill: "on_fill", Rejection: "on_order_rejected", OrderAccepted: "on_order_accepted",
          OrderCancelled: "on_order_cancelled", OrderExpired: "on_order_expired"}


def strategy_hook(strategy: Any, event: BrokerEvent) -> Any:
    """The strategy's method for ``event`` (``on_fill``, ``on_order_rejected``, ...)."""
    return getattr(strategy, _HOOKS[type(event)])


class EventLoop:
    def __init__(self, portfolio: Portfolio, instruments: Mapping[str, Instrument], funding: FundingSource,
                 histories: Mapping[str, BarHistory], *, clock: Clock | None = None, check_invariants: bool = False,
                 journal: Journal | None = None, book: OrderBook | None = None,
                 risk: RiskLimits | None = None) -> None:
        self.portfolio = portfolio
        self.instruments = instruments
        self.histories = histories
        self.clock: Clock = clock if clock is not None else SimulatedClock()
        self._advance = getattr(self.clock, "advance_to", None)  # simulated clocks only
        self._funding = funding
        self._check = check_invariants
        self.journal = journal
        self.book = book if book is not None else OrderBook()
        self._notices: deque[BrokerEvent] = deque()
        self._perpetuals = frozenset(s for s, inst in instruments.items() if inst.pays_funding)
        self._funded_to: dict[str, int] = {}  # each perpetual's last close funding was settled to
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
        # Only a daily-loss limit needs the equity at every close; otherwise one None test per bar.
        self._risk_mark = risk.mark if risk is not None and risk.watches_loss else None
        self.strategy: Any = None
        self.ctx: StrategyContext | None = None
        self.broker: Broker | None = None

    def bind(self, strategy: Any, ctx: StrategyContext, broker: Broker) -> None:
        self.strategy, self.ctx, self.broker = strategy, ctx, broker
        # Bound once: process_bar runs a million times in a long backtest.
        self._broker_on_bar = broker.on_bar
        self._strategy_on_bar = strategy.on_bar
        self._append = {symbol: h.append for symbol, h in self.histories.items()}

    @property
    def time(self) -> int:
        """The time of the event being handled."""
        return self.ctx.time if self.ctx is not None else 0

    # -- order and broker events ---------------------------------------------------------------
    def on_order(self, order: Order) -> None:
        """Called by the context for every order a strategy makes, before its outcome."""
        self.book.add(order)
        self.orders.append(order)
        if self.journal is not None:
            self.journal.order_submitted(order)

    def on_broker_event(self, event: BrokerEvent) -> None:
        """Called by the broker and the context. The order book checks the event against the order's
        state; fills are applied at once (so the next fill's cash check sees them); the strategy
        hears of every event after the current step."""
        self.book.apply(event)
        kind = type(event)
        journal = self.journal
        if kind is Fill:
            self.portfolio.apply_fill(event)  # type: ignore[arg-type]
            self.fills.append(event)  # type: ignore[arg-type]
            if journal is not None:
                journal.fill(event)  # type: ignore[arg-type]
        elif kind is Rejection:
            self.rejections.append(event)  # type: ignore[arg-type]
            if journal is not None:
                journal.rejection(event)  # type: ignore[arg-type]
        elif journal is not None:
            journal.order_event(event)  # type: ignore[arg-type]  # accepted, cancelled, expired, a live step
        if kind in _HOOKS:  # a live order's intermediate steps (sending, ambiguous, ...) are the store's alone
            self._notices.append(event)

    def deliver(self) -> None:
        """Hand the strategy the order events a live broker reported between steps (after a send,
        during a reconciliation); in a step they are handed over as it goes."""
        if self._notices:
            self._notify()

    def _notify(self) -> None:
        strategy, ctx = self.strategy, self.ctx
        while self._notices:
            event = self._notices.popleft()
            strategy_hook(strategy, event)(ctx, event)

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self.strategy.on_start(self.ctx)
        self._notify()

    def stop(self) -> None:
        self.strategy.on_stop(self.ctx)
        self._notify()

    # -- events --------------------------------------------------------------------------------
    def on_timer(self, name: str, at_ms: int) -> None:
        """A timer the strategy set (``ctx.set_timer``) is due."""
        ctx = self.ctx
        assert ctx is not None
        ctx.time = at_ms
        self.strategy.on_timer(ctx, name)
        if self._notices:
            self._notify()

    def process_news(self, news: News) -> None:
        ctx: StrategyContext = self.ctx  # type: ignore[assignment]  # bound before the first event
        if self._advance is not None:
            self._advance(news.ts_event)
        ctx.time = news.ts_event
        self.news_seen += 1
        if self.journal is not None:
            self.journal.news(news)
        self.strategy.on_news(ctx, news)
        if self._notices:
            self._notify()

    def process_bar(self, bar: Bar) -> None:
        ctx: StrategyContext = self.ctx  # type: ignore[assignment]  # bound before the first event
        symbol, _, ts, _, _, _, close, _ = bar
        advance = self._advance
        if advance is not None:
            advance(ts)
        ctx.time = ts
        self.bars_seen += 1
        perpetual = symbol in self._perpetuals
        if perpetual and bar.ts_open > self._funded_to.get(symbol, bar.ts_open):
            self._settle_funding(bar, until=bar.ts_open)  # instants in a hole: the position held through it
        self._broker_on_bar(bar)
        positions = self._positions
        if perpetual:
            self._settle_funding(bar)
            self._funded_to[symbol] = bar.ts_event
        pos = positions.get(symbol) or self.portfolio.position(symbol)
        pos.last_price = close
        self._append[symbol](bar)
        if self._notices:
            self._notify()
        mark = self._risk_mark
        if mark is not None:  # the equity at this close, before the decision (inline: once per bar)
            value = 0.0
            for p in positions.values():
                value += p.quantity * p.last_price
            mark(ts, self.portfolio.cash + value)
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

    def _settle_funding(self, bar: Bar, until: int | None = None) -> None:
        for payment in self._funding.due(bar, self.portfolio.quantity(bar.symbol), until):
            self.portfolio.apply_funding(payment)
            self.funding_payments.append(payment)
            if self.journal is not None:
                self.journal.funding(payment)

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
