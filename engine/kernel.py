"""One kernel for backtest, paper and live (``DESIGN.md``, "One kernel, three modes").

``assemble`` wires the portfolio, the order book, the event loop, the strategy context, the broker,
the journal and the strategy, once, for every mode. What differs between the modes is plugged in
as ``Parts``:

=========  ==========================  ============================  ==========================
part       backtest                    paper daemon                  live
=========  ==========================  ============================  ==========================
clock      ``SimulatedClock``          ``WallClock`` (exchange)      ``WallClock`` (exchange)
history    ``BarHistory.of_series``    ``BarHistory`` (growing)      ``BarHistory`` (growing)
broker     ``SimulatedBroker``         ``SimulatedBroker``           the exchange's broker
funding    ``SimulatedFunding``        ``SimulatedFunding``          ``ReportedFunding``
=========  ==========================  ============================  ==========================

The bars and headlines come from whoever drives the kernel: ``engine.backtest`` walks a merged
history through ``Kernel.loop``; a daemon calls ``on_bar`` / ``on_news`` as they arrive. On a
restart the kernel takes the portfolio rebuilt from the store and the order ids already used
(``restored``), so nothing is counted twice and no id is handed out again.

The risk limits (``engine.risk.RiskLimits``, ``[risk]``) are one more shared part: the host builds
them (a backtest with ``clear_next_day=True``, a daemon without) and sets ``kernel.risk.on_halt`` to
hear of halts; the context checks every order against them and the loop marks equity for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from engine.broker import Broker, EmitFn
from engine.clock import Clock, SimulatedClock
from engine.context import StrategyContext
from engine.costs import CostModels
from engine.domain import Bar, Instrument, News
from engine.funding import FundingSource, SimulatedFunding
from engine.history import BarHistory
from engine.journal import Journal
from engine.loop import EventLoop
from engine.order_ids import OrderIds
from engine.orders import OrderBook
from engine.portfolio import Portfolio
from engine.risk import RiskLimits

Mode = Literal["backtest", "paper", "live"]
MODES: tuple[Mode, ...] = ("backtest", "paper", "live")

BrokerFactory = Callable[[Portfolio, EmitFn, Clock], Broker]
"""Builds the mode's broker over the kernel's portfolio, event sink and clock."""


@dataclass(frozen=True)
class Parts:
    """What a mode plugs into the kernel."""

    clock: Clock
    histories: Mapping[str, BarHistory]
    broker: BrokerFactory
    funding: FundingSource


@dataclass(frozen=True)
class Restored:
    """State carried over from an earlier process of the same run (read from the store)."""

    portfolio: Portfolio
    order_ids: frozenset[str] = frozenset()
    book: OrderBook | None = None


@dataclass
class Kernel:
    mode: Mode
    run_id: str
    portfolio: Portfolio
    loop: EventLoop
    ctx: StrategyContext
    broker: Broker
    strategy: Any
    clock: Clock
    journal: Journal | None = None
    risk: RiskLimits | None = None  # the same object as ``ctx.risk``

    def start(self) -> None:
        self.loop.start()

    def on_bar(self, bar: Bar) -> None:
        self.loop.process_bar(bar)

    def on_news(self, news: News) -> None:
        self.loop.process_news(news)

    def checkpoint(self) -> None:
        self.loop.checkpoint()

    def stop(self) -> None:
        self.loop.stop()
        self.loop.checkpoint()


def assemble(mode: Mode, parts: Parts, *, strategy: Any, instruments: Mapping[str, Instrument],
             costs: CostModels, starting_cash: float, run_id: str, journal: Journal | None = None,
             restored: Restored | None = None, check_invariants: bool = False,
             risk: RiskLimits | None = None) -> Kernel:
    """The kernel of one run in ``mode`` with ``parts`` plugged in; ``risk``: the run's limits (None: none)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
    if mode == "backtest" and not isinstance(parts.clock, SimulatedClock):
        raise ValueError("a backtest runs on a SimulatedClock: its time jumps from event to event")
    if mode == "live" and isinstance(parts.funding, SimulatedFunding):
        raise ValueError("live trading takes funding from the exchange's reports; simulating it too would "
                         "count every payment twice")
    if risk is not None and risk.clear_next_day and mode != "backtest":
        raise ValueError("only a backtest lifts a risk halt by itself at the next UTC day; in paper and live a "
                         "person clears it (RiskLimits(clear_next_day=False))")
    unknown = [s for s in parts.histories if s not in instruments]
    if unknown:
        raise ValueError(f"no instrument definition for {unknown}")
    portfolio = restored.portfolio if restored is not None else Portfolio(starting_cash)
    if risk is not None:
        risk.start_day(parts.clock.now(), portfolio.equity)
        currencies = {inst.quote_currency for inst in instruments.values()}
        if not risk.currency and len(currencies) == 1:
            risk.currency = currencies.pop()
    book = restored.book if restored is not None and restored.book is not None else OrderBook()
    known: Iterable[str] = restored.order_ids if restored is not None else ()
    loop = EventLoop(portfolio, instruments, parts.funding, parts.histories, clock=parts.clock,
                     check_invariants=check_invariants, journal=journal, book=book, risk=risk)
    broker = parts.broker(portfolio, loop.on_broker_event, parts.clock)
    ctx = StrategyContext(run_id=run_id, portfolio=portfolio, broker=broker, instruments=instruments,
                          histories=parts.histories, emit=loop.on_broker_event, on_order=loop.on_order,
                          clock=parts.clock, on_timer=loop.on_timer, costs=costs, journal=journal,
                          order_ids=OrderIds(run_id, known), risk=risk)
    loop.bind(strategy, ctx, broker)
    return Kernel(mode=mode, run_id=run_id, portfolio=portfolio, loop=loop, ctx=ctx, broker=broker,
                  strategy=strategy, clock=parts.clock, journal=journal, risk=risk)
