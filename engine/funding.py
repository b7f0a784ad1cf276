"""Funding as a source of events: where perpetual funding payments come from in each mode.

The event loop asks its funding source, per bar of a perpetual, for the payments due on the position
held: first those up to the bar's open, before the broker fills anything (after a hole in the data
they fell while the old position was held), then the rest up to its close, after the fills; the portfolio applies what it returns and the journal
records it. Backtests and the paper daemon simulate the payments from rates
(``SimulatedFunding``); live trading takes the exchange's own reports (``ReportedFunding``, fed by
the live broker from the exchange's funding history), so funding is never counted twice.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Protocol

from engine.costs import FundingModel, next_funding_time
from engine.domain import Bar, FundingPayment


class FundingSource(Protocol):
    def due(self, bar: Bar, quantity: float, until: int | None = None) -> list[FundingPayment]:
        """Payments settled on ``bar.symbol`` up to the bar's close (or up to ``until``), ``quantity``
        being the position held then."""


class SimulatedFunding:
    """Settles every funding instant in (previous close, this close] at the model's rate: position
    value x rate, the mark being the close when the instant is the bar's close, else the bar's
    open (the last price known then). Nothing is due while flat."""

    def __init__(self, rates: FundingModel) -> None:
        self._rates = rates
        self._next: dict[str, int] = {}

    def due(self, bar: Bar, quantity: float, until: int | None = None) -> list[FundingPayment]:
        symbol = bar.symbol
        end = bar.ts_event if until is None else until
        due = self._next.get(symbol)
        if due is None:
            due = next_funding_time(bar.ts_open)
        if due > end:
            self._next[symbol] = due
            return []
        out = []
        while due <= end:
            if quantity != 0.0:
                mark = bar.close if due == bar.ts_event else bar.open
                rate = self._rates.rate(symbol, due)
                out.append(FundingPayment(symbol, due, rate, mark, quantity, quantity * mark * rate))
            due = next_funding_time(due)
        self._next[symbol] = due
        return out

    def resume_after(self, symbol: str, ts_ms: int) -> None:
        """After a restart: the instants up to ``ts_ms`` were settled already."""
        self._next[symbol] = next_funding_time(ts_ms)


class ReportedFunding:
    """Payments the exchange reported (a live broker ``report``s them as it ingests them); each
    reaches the portfolio once, at the first bar of its symbol closing at or after it."""

    def __init__(self) -> None:
        self._pending: dict[str, deque[FundingPayment]] = {}

    def report(self, payments: Iterable[FundingPayment]) -> None:
        for p in sorted(payments, key=lambda p: p.ts_event):
            self._pending.setdefault(p.symbol, deque()).append(p)

    def earliest_pending(self, symbol: str) -> int | None:
        """The time of the oldest payment reported and not applied yet (a restart must read it again)."""
        queue = self._pending.get(symbol)
        return queue[0].ts_event if queue else None

    def pending_amount(self, symbol: str) -> float:
        """What the reported payments not applied yet add up to (already taken by the exchange)."""
        return sum(p.amount for p in self._pending.get(symbol, ()))

    def due(self, bar: Bar, quantity: float, until: int | None = None) -> list[FundingPayment]:
        queue = self._pending.get(bar.symbol)
        end = bar.ts_event if until is None else until
        out = []
        while queue and queue[0].ts_event <= end:
            out.append(queue.popleft())
        return out


class NoFunding:
    """Spot-only runs: nothing is ever due."""

    def due(self, bar: Bar, quantity: float, until: int | None = None) -> list[FundingPayment]:
        return []
