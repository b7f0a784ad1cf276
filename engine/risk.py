"""Risk checks: what an order must satisfy before it goes to a broker, and what a fill needs in
cash or margin at the moment it executes. Each check returns ``None`` or a reason a person can act
on; the caller turns a reason into a ``Rejection`` event. Nothing is silently resized."""

from __future__ import annotations

import math
from collections.abc import Mapping

from engine.domain import Instrument
from engine.portfolio import Portfolio

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
