"""Risk checks: what an order must satisfy before it goes to a broker, and what a fill needs in
cash or margin at the moment it executes, and the run's risk limits (``RiskLimits``, ``[risk]``).
Each check returns ``None`` or a reason a person can act on; the caller turns a reason into a
``Rejection`` event. Nothing is silently resized."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping

from engine.config import RiskConfig
from engine.domain import Instrument, Order
from engine.portfolio import Portfolio
from engine.timeutil import MS_PER_DAY, MS_PER_MINUTE

_DUST = 1e-9


def check_new_order(instrument: Instrument, requested: float, quantity: float, price: float | None) -> str | None:
    """``requested`` is the strategy's absolute quantity, ``quantity`` the same rounded to the lot
    step; ``price`` is the limit/stop price or the last close, for the notional check."""
    sym = instrument.symbol
    if not math.isfinite(requested) or requested <= 0:
        return f"{sym}: order quantity must be a positive finite number, got {requested}"
    if quantity <= 0:
        return f"{sym}: quantity {requested:g} rounds to 0 at lot step {instrument.lot_step:g}"
    if quantity < instrument.min_quantity:
        return f"{sym}: quantity {quantity:g} is below the minimum {instrument.min_quantity:g}"
    if price is not None:
        if not math.isfinite(price) or price <= 0:
            return f"{sym}: order price must be a positive finite number, got {price}"
        if quantity * price < instrument.min_notional:
            return (f"{sym}: notional {quantity * price:.2f} ({quantity:g} x {price:g}) is below the minimum"
                    f" {instrument.min_notional:g} {instrument.quote_currency}")
    return None


def check_fill(portfolio: Portfolio, instruments: Mapping[str, Instrument], instrument: Instrument,
               signed_quantity: float, price: float, fee: float) -> str | None:
    """Can the account take this fill at ``price``? Fills that only shrink a position always pass.

    Spot: the position may not go below zero and cash may not go below zero.
    Linear perpetuals: after the fill, the margin balance (cash plus perpetual position values)
    must cover the initial margin of every perpetual position, ``|notional| / max_leverage``.
    """
    sym = instrument.symbol
    held = portfolio.quantity(sym)
    after = held + signed_quantity
    if abs(after) <= abs(held) and (after == 0 or (after > 0) == (held > 0)):
        return None  # reduces or closes: always allowed
    if not instrument.can_short and after < -_DUST * max(abs(signed_quantity), 1.0):
        return f"{sym}: spot instruments cannot be shorted (selling {abs(signed_quantity):g} while holding {held:g})"
    cash_after = portfolio.cash - signed_quantity * price - fee
    margin_balance, required = cash_after, 0.0
    perp_quantities = {other: (pos.quantity, pos.last_price) for other, pos in portfolio.positions.items()}
    if instrument.can_short:
        perp_quantities[sym] = (after, price)
    for other, (qty, mark) in perp_quantities.items():
        inst = instruments[other]
        if inst.can_short:
            margin_balance += qty * mark
            required += abs(qty * mark) / inst.max_leverage
    if margin_balance >= required - _DUST:
        return None
    if required == 0.0:
        return (f"{sym}: insufficient cash: buying {signed_quantity:g} at {price:.2f} costs"
                f" {signed_quantity * price:.2f} + fee {fee:.2f}, cash is {portfolio.cash:.2f}")
    return (f"{sym}: insufficient margin: after the fill the positions need {required:.2f} of initial margin"
            f" but the margin balance would be {margin_balance:.2f}")


HaltCallback = Callable[[str | None], None]
"""Told the new value of ``RiskLimits.halted`` whenever it changes: the reason, or ``None`` once cleared."""


class RiskLimits:
    """The limits of ``[risk]`` for one run, the same object in backtests, paper and live. Pure state
    and arithmetic: no I/O, no clock of its own (every time is the event time the caller passes).

    ``check`` runs on every order after ``check_new_order``; ``mark`` runs at each bar close (the
    loop calls it, before the strategy decides, only when a daily-loss limit is set). Semantics:

    * An order that only reduces or closes a position (the opposite side, no larger than the
      position together with the open orders on its side) always passes: a kill switch must never
      stop you from getting flat. It still counts as sent for ``max_orders_per_minute``.
    * Any other order is rejected, and new orders are **halted**, when it would breach
      ``max_order_notional`` (its quantity x its limit/stop price or the last close),
      ``max_position_notional`` (|position + open orders of its side + the order| x that price) or
      ``max_orders_per_minute`` (it would be more than that many orders sent in the trailing 60 s of
      event time). A size breach halts too, not only rejects: a strategy that sized wrongly once
      will do it again on the next bar, and a person should look before it trades on.
    * ``max_daily_loss`` (a fraction) and ``max_daily_loss_abs`` (quote currency) halt once the
      equity marked at a close is that far below the day's starting equity: the equity marked at
      the last close before the UTC day's first event.
    * While halted, every order that would grow |position| is rejected with ``"risk halt: <reason>"``.
      Orders already working are left as they are (cancelling them is the host's or a person's call).
    * A halt lasts until ``clear()``: in paper and live a person clears it. A backtest has no
      person, so ``clear_next_day=True`` (what the backtest passes) clears it when the next UTC day
      begins (seen at that day's first close with a daily-loss limit, else at its first order).

    ``halted`` is the reason (``None`` when trading), ``halted_at`` its event time, ``halts`` every
    (time, reason) of the run; ``on_halt`` (settable at any time) hears each change of ``halted``.
    A restarted daemon can seed the day's starting equity from its store with ``start_day``.
    """

    def __init__(self, config: RiskConfig, *, clear_next_day: bool = False, currency: str = "",
                 on_halt: HaltCallback | None = None) -> None:
        self.config = config
        self.clear_next_day = clear_next_day
        self.currency = currency  # the quote currency, for messages ("" = unnamed)
        self.on_halt = on_halt
        self.halted: str | None = None
        self.halted_at: int | None = None
        self.halts: list[tuple[int, str]] = []
        self.watches_loss = config.loss_limited  # only then must every close be marked
        self.day_start_ms: int | None = None  # 00:00 UTC of the day being measured
        self.day_start_equity: float | None = None
        self._next_day_ms = -1  # the first event at or after this instant starts a new day
        self._loss_floor = -math.inf
        self._last_equity: float | None = None  # as marked at the last close
        self._sent: deque[int] = deque()  # event times of orders sent, trailing 60 s (only with a rate limit)

    # -- state ---------------------------------------------------------------------------------
    def start_day(self, now_ms: int, equity: float) -> None:
        """Measure the UTC day of ``now_ms`` from ``equity`` (the kernel calls this when it is
        assembled; a restarted daemon may call it again with the day's start from its store)."""
        self.day_start_ms = now_ms - now_ms % MS_PER_DAY
        self.day_start_equity = equity
        self._next_day_ms = self.day_start_ms + MS_PER_DAY
        self._last_equity = equity
        # The equity at or below which the day's loss reaches a limit: ``mark`` compares only this.
        config, floors = self.config, [-math.inf]
        if config.max_daily_loss and equity > 0:
            floors.append(equity * (1.0 - config.max_daily_loss))
        if config.max_daily_loss_abs:
            floors.append(equity - config.max_daily_loss_abs)
        self._loss_floor = max(floors)

    def halt(self, now_ms: int, reason: str) -> None:
        """Halt new orders that would grow a position (a no-op while already halted)."""
        if self.halted is not None:
            return
        self.halted, self.halted_at = reason, now_ms
        self.halts.append((now_ms, reason))
        if self.on_halt is not None:
            self.on_halt(reason)

    def clear(self) -> None:
        """Lift the halt (a person's decision in paper and live)."""
        if self.halted is None:
            return
        self.halted = self.halted_at = None
        if self.on_halt is not None:
            self.on_halt(None)

    def _new_day(self, now_ms: int, equity: float) -> None:
        self.start_day(now_ms, equity)
        if self.clear_next_day:
            self.clear()

    # -- events --------------------------------------------------------------------------------
    def mark(self, ts: int, equity: float) -> None:
        """The equity marked at a bar close ``ts``: starts a new day, checks the daily-loss limits."""
        if ts >= self._next_day_ms:
            self._new_day(ts, self._last_equity if self._last_equity is not None else equity)
        self._last_equity = equity
        if equity <= self._loss_floor and self.halted is None:
            reason = self._loss_breach(equity)
            if reason is not None:
                self.halt(ts, reason)

    def check(self, instrument: Instrument, signed_quantity: float, price: float | None, portfolio: Portfolio,
              open_orders: Iterable[Order], now_ms: int) -> str | None:
        """``None`` if the order (``signed_quantity`` already rounded, ``price`` its limit/stop price
        or the last close, ``None`` before the first bar) may go to the broker, which then counts it
        as sent; else the reason it is rejected. ``open_orders``: the symbol's working orders, each
        counted with its whole quantity (what is left of it, for a broker that reports partial fills)."""
        if now_ms >= self._next_day_ms:
            last = self._last_equity
            self._new_day(now_ms, last if self.watches_loss and last is not None else portfolio.equity)
        sym = instrument.symbol
        held = portfolio.quantity(sym)
        buying = signed_quantity > 0
        same_side = sum(o.quantity for o in open_orders if o.symbol == sym and (o.side > 0) == buying)
        if held != 0.0 and (held > 0) != buying and abs(signed_quantity) + same_side <= abs(held) * (1 + 1e-9):
            self._count(now_ms)  # reduces or closes: always allowed
            return None
        if self.halted is not None:
            return f"risk halt: {self.halted}"
        if price is None and self.config.size_limited:  # rejected, but nothing breached: no halt
            key = "max_order_notional" if self.config.max_order_notional else "max_position_notional"
            return f"risk.{key}: {sym} has no price yet to value the order (no bar has closed)"
        reason = self._rate_breach(now_ms) or self._size_breach(instrument, signed_quantity, price, held, same_side)
        if reason is not None:
            self.halt(now_ms, reason)
            return reason
        self._count(now_ms)
        return None

    # -- the limits ----------------------------------------------------------------------------
    def _count(self, now_ms: int) -> None:
        if self.config.max_orders_per_minute:
            self._recent(now_ms).append(now_ms)

    def _recent(self, now_ms: int) -> deque[int]:
        """The times of the orders sent in the 60 s up to ``now_ms`` (older ones dropped)."""
        sent = self._sent
        while sent and sent[0] <= now_ms - MS_PER_MINUTE:
            sent.popleft()
        return sent

    def _rate_breach(self, now_ms: int) -> str | None:
        limit = self.config.max_orders_per_minute
        if not limit:
            return None
        sent = self._recent(now_ms)
        if len(sent) < limit:
            return None
        return (f"risk.max_orders_per_minute: this would be order {len(sent) + 1} sent in the last 60 s of event "
                f"time, over the limit {limit}")

    def _size_breach(self, instrument: Instrument, signed_quantity: float, price: float | None, held: float,
                     same_side: float) -> str | None:
        config = self.config
        if not config.size_limited or price is None:
            return None
        sym, ccy = instrument.symbol, instrument.quote_currency
        limit = config.max_order_notional
        notional = abs(signed_quantity) * price
        if limit and notional > limit:
            return (f"risk.max_order_notional: order notional {_money(notional, ccy)} ({sym} {abs(signed_quantity):g} x "
                    f"{price:,.2f}) exceeds the limit {limit:,.2f}")
        limit = config.max_position_notional
        after = held + math.copysign(same_side, signed_quantity) + signed_quantity
        if limit and abs(after) * price > limit:
            return (f"risk.max_position_notional: position notional {_money(abs(after) * price, ccy)} if the order "
                    f"filled ({sym} {after:g} x {price:,.2f}, open orders included) exceeds the limit {limit:,.2f}")
        return None

    def _loss_breach(self, equity: float) -> str | None:
        start = self.day_start_equity
        if start is None:
            return None
        loss, config = start - equity, self.config
        if loss <= 0:
            return None
        limit = config.max_daily_loss
        if limit and start > 0 and loss >= limit * start:
            return (f"risk.max_daily_loss: equity {_money(equity, self.currency)} is {loss:,.2f} ({loss / start:.2%}) "
                    f"below the day's start {start:,.2f}, at or over the limit {limit:.2%}")
        limit = config.max_daily_loss_abs
        if limit and loss >= limit:
            return (f"risk.max_daily_loss_abs: equity {_money(equity, self.currency)} is {loss:,.2f} below the day's "
                    f"start {start:,.2f}, at or over the limit {limit:,.2f}")
        return None


def _money(value: float, currency: str) -> str:
    return f"{value:,.2f} {currency}" if currency else f"{value:,.2f}"
