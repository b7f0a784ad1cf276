"""Accounting invariants (DESIGN.md), checked after every event and over random order sequences:

- equity = cash + Σ position value;
- cash moves only by fills, fees and funding;
- realised + unrealised P&L − costs = equity − starting equity.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.costs import ConstantFunding, CostModels, FixedBps
from engine.domain import ContractType, Fill, FundingPayment, Liquidity, OrderType, Side
from engine.errors import OperationalError
from engine.portfolio import Portfolio
from engine.timeutil import MS_PER_HOUR
from tests.helpers import instrument, run


def _fill(side: Side, qty: float, ref: float, *, fee: float = 0.0, extra: float = 0.0) -> Fill:
    """``extra`` = spread + slippage fraction paid on top of the reference price."""
    price = ref * (1 + side * extra)
    return Fill("o", "X", side, qty, price, ref, fee, Liquidity.TAKER, qty * ref * extra, 0.0, 0, OrderType.MARKET)


def test_portfolio_realised_pnl_partial_close_and_flip():
    p = Portfolio(1000.0)
    p.apply_fill(_fill(Side.BUY, 2, 100.0, fee=0.2))
    p.apply_fill(_fill(Side.BUY, 2, 110.0, fee=0.22))  # average 105
    assert p.positions["X"].average_price == pytest.approx(105.0)
    p.apply_fill(_fill(Side.SELL, 1, 120.0, fee=0.12))
    assert p.positions["X"].realized_pnl == pytest.approx(15.0)
    p.apply_fill(_fill(Side.SELL, 5, 100.0, fee=0.5))  # closes 3 at a loss of 5 each, opens a short of 2
    pos = p.positions["X"]
    assert pos.realized_pnl == pytest.approx(15.0 - 15.0)
    assert (pos.quantity, pos.average_price) == (pytest.approx(-2.0), 100.0)
    p.mark("X", 90.0)
    assert pos.unrealized_pnl == pytest.approx(20.0)
    assert p.equity == pytest.approx(p.cash - 2 * 90.0)
    p.check_invariants()


def test_funding_moves_cash_and_its_ledger_only():
    p = Portfolio(1000.0)
    p.apply_fill(_fill(Side.BUY, 1, 100.0))
    p.mark("X", 100.0)
    p.apply_funding(FundingPayment("X", 0, 0.001, 100.0, 1.0, 0.1))
    assert p.cash == pytest.approx(900.0 - 0.1) and p.funding == pytest.approx(0.1)
    p.check_invariants()


def test_broken_accounting_is_detected():
    p = Portfolio(1000.0)
    p.apply_fill(_fill(Side.BUY, 1, 100.0))
    p.mark("X", 100.0)
    p.cash += 5.0  # cash moved by something other than a fill, fee or funding
    with pytest.raises(OperationalError, match="accounting invariant broken"):
        p.check_invariants()


# -- property-based: random markets and random order sequences ---------------------------------
@st.composite
def markets(draw):
    n = draw(st.integers(3, 40))
    price = draw(st.floats(5, 500))
    rows = []
    for _ in range(n):
        o = price
        c = o * draw(st.floats(0.9, 1.1))
        h = max(o, c) * draw(st.floats(1.0, 1.05))
        low = min(o, c) * draw(st.floats(0.95, 1.0))
        rows.append((o, h, low, c))
        price = c * draw(st.floats(0.97, 1.03))  # gaps between bars
    return rows


ACTION = st.one_of(
    st.tuples(st.just("market"), st.floats(-30, 30)),
    st.tuples(st.just("limit"), st.floats(-30, 30), st.floats(0.9, 1.1)),
    st.tuples(st.just("stop"), st.floats(-30, 30), st.floats(0.9, 1.1)),
    st.tuples(st.just("target_percent"), st.floats(-1.5, 1.5)),
    st.tuples(st.just("close"),),
    st.tuples(st.just("cancel_all"),),
)


def _apply(action):
    def act(ctx):
        kind = action[0]
        last = ctx.last_price("TEST")
        if kind == "market":
            ctx.market("TEST", action[1])
        elif kind == "limit":
            ctx.limit("TEST", action[1], last * action[2])
        elif kind == "stop":
            ctx.stop("TEST", action[1], last * action[2])
        elif kind == "target_percent":
            ctx.target_percent("TEST", action[1])
        elif kind == "close":
            ctx.close("TEST")
        else:
            for order in ctx.open_orders("TEST"):
                ctx.cancel(order.client_order_id)
    return act


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=markets(),
    actions=st.lists(st.one_of(st.none(), ACTION), min_size=40, max_size=40),
    contract=st.sampled_from([ContractType.SPOT, ContractType.LINEAR_PERP]),
    leverage=st.sampled_from([1.0, 3.0]),
    fees=st.tuples(st.floats(0, 0.002), st.floats(0, 0.002)),
    bps=st.tuples(st.floats(0, 20), st.floats(0, 20)),
    funding=st.floats(-0.003, 0.003),
    fill_mode=st.sampled_from(["next_open", "next_open", "close"]),
)
def test_invariants_hold_after_every_event(rows, actions, contract, leverage, fees, bps, funding, fill_mode):
    inst = instrument(contract=contract, maker=fees[0], taker=fees[1],
                      leverage=leverage if contract is ContractType.LINEAR_PERP else 1.0)
    costs = CostModels(spread=FixedBps(bps[0]), slippage=FixedBps(bps[1]), funding=ConstantFunding(funding))
    script = {i: _apply(a) for i, a in enumerate(actions[: len(rows)]) if a is not None}
    # check_invariants=True makes the loop verify the P&L identity after every bar.
    result, _ = run(rows, script, inst=inst, costs=costs, cash=10_000.0, timeframe_ms=4 * MS_PER_HOUR,
                    fill_mode=fill_mode)

    # Cash moves only by fills, fees and funding.
    cash = 10_000.0 - sum(f.signed_quantity * f.price + f.fee for f in result.fills)
    cash -= sum(p.amount for p in result.funding_payments)
    held = sum(f.signed_quantity for f in result.fills)
    last_close = rows[-1][3]
    assert result.final_equity == pytest.approx(cash + held * last_close, rel=1e-9, abs=1e-6)
    # Ledgers are the sums of their parts.
    assert result.ledgers.fees == pytest.approx(sum(f.fee for f in result.fills), abs=1e-9)
    assert result.ledgers.funding == pytest.approx(sum(p.amount for p in result.funding_payments), abs=1e-9)
    # Spot never goes short; every order ends as a fill, a rejection or still open/cancelled.
    if contract is ContractType.SPOT:
        running = 0.0
        for f in result.fills:
            running += f.signed_quantity
            assert running >= -1e-9
    assert len(result.fills) + len(result.rejections) <= len(result.orders)
