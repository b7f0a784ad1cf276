"""Candle-table fill scenarios: a few hand-written bars, the orders placed, the exact fills expected.

Bars are hourly from 2024-01-01 00:00 UTC; an action at index i runs at bar i's close.
"""

from __future__ import annotations

import pytest

from engine.costs import ConstantFunding, CostModels, FixedBps
from engine.domain import ContractType, Liquidity, News, Side
from engine.timeutil import MS_PER_DAY, MS_PER_HOUR
from tests.helpers import T0, instrument, run

FLAT = (100.0, 101.0, 99.0, 100.0)

# (name, bars, {bar index: action}, costs, expected fills as (bar index filled, side, qty, price, liquidity))
SCENARIOS = [
    ("market buy fills at next open",
     [FLAT, (102, 103, 101, 102), FLAT], {0: lambda c: c.market("TEST", 1)}, None,
     [(1, Side.BUY, 1, 102.0, Liquidity.TAKER)]),
    ("market buy pays half-spread and slippage on the open",
     [FLAT, (102, 103, 101, 102), FLAT], {0: lambda c: c.market("TEST", 2)},
     CostModels(spread=FixedBps(5), slippage=FixedBps(10)),
     [(1, Side.BUY, 2, 102.0 * 1.0015, Liquidity.TAKER)]),
    ("market sell receives open minus spread and slippage",
     [FLAT, FLAT, (98, 99, 97, 98)], {0: lambda c: c.market("TEST", 1), 1: lambda c: c.market("TEST", -1)},
     CostModels(spread=FixedBps(5), slippage=FixedBps(10)),
     [(1, Side.BUY, 1, 100.0 * 1.0015, Liquidity.TAKER), (2, Side.SELL, 1, 98.0 * 0.9985, Liquidity.TAKER)]),
    ("limit buy touched by the low fills at the limit as maker",
     [FLAT, (100, 100.5, 98.0, 99.5)], {0: lambda c: c.limit("TEST", 1, 98.5)},
     CostModels(spread=FixedBps(5), slippage=FixedBps(10)),
     [(1, Side.BUY, 1, 98.5, Liquidity.MAKER)]),
    ("limit buy with the open gapped through fills at the open",
     [FLAT, (97.0, 98.0, 96.0, 97.5)], {0: lambda c: c.limit("TEST", 1, 98.5)}, None,
     [(1, Side.BUY, 1, 97.0, Liquidity.MAKER)]),
    ("limit buy rests until a later bar reaches it",
     [FLAT, FLAT, FLAT, (99.0, 99.5, 97.0, 98.0)], {0: lambda c: c.limit("TEST", 1, 98.0)}, None,
     [(3, Side.BUY, 1, 98.0, Liquidity.MAKER)]),
    ("limit buy never reached never fills",
     [FLAT, FLAT, FLAT], {0: lambda c: c.limit("TEST", 1, 90.0)}, None, []),
    ("limit sell reached by the high fills at the limit",
     [FLAT, FLAT, (100.0, 103.0, 99.5, 102.0)],
     {0: lambda c: c.market("TEST", 1), 1: lambda c: c.limit("TEST", -1, 102.5)}, None,
     [(1, Side.BUY, 1, 100.0, Liquidity.TAKER), (2, Side.SELL, 1, 102.5, Liquidity.MAKER)]),
    ("stop buy triggered by the high fills at the stop plus slippage as taker",
     [FLAT, (100.0, 104.0, 99.0, 103.0)], {0: lambda c: c.stop("TEST", 1, 102.0)},
     CostModels(slippage=FixedBps(10)),
     [(1, Side.BUY, 1, 102.0 * 1.001, Liquidity.TAKER)]),
    ("stop buy with the open gapped above fills at the open",
     [FLAT, (105.0, 106.0, 104.0, 105.5)], {0: lambda c: c.stop("TEST", 1, 102.0)}, None,
     [(1, Side.BUY, 1, 105.0, Liquidity.TAKER)]),
    ("stop sell triggered by the low fills at the stop minus slippage",
     [FLAT, FLAT, (100.0, 100.5, 95.0, 96.0)],
     {0: lambda c: c.market("TEST", 1), 1: lambda c: c.stop("TEST", -1, 97.0)}, CostModels(slippage=FixedBps(10)),
     [(1, Side.BUY, 1, 100.0 * 1.001, Liquidity.TAKER), (2, Side.SELL, 1, 97.0 * 0.999, Liquidity.TAKER)]),
    ("stop not reached does not fill",
     [FLAT, FLAT], {0: lambda c: c.stop("TEST", 1, 110.0)}, None, []),
]


@pytest.mark.parametrize(("name", "rows", "actions", "costs", "expected"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_fill_scenarios(name, rows, actions, costs, expected):
    result, _ = run(rows, actions, costs=costs)
    got = [((f.ts_event - T0) // MS_PER_HOUR, f.side, f.quantity, f.price, f.liquidity) for f in result.fills]
    assert len(got) == len(expected), got
    for (bar_i, side, qty, price, liq), (e_bar, e_side, e_qty, e_price, e_liq) in zip(got, expected):
        # A fill at the open is stamped with the open time (= previous close); inside the bar, its close.
        assert bar_i in (e_bar, e_bar + 1)
        assert (side, qty, liq) == (e_side, e_qty, e_liq)
        assert price == pytest.approx(e_price, rel=1e-12)


def test_fill_timestamps_open_versus_intrabar():
    result, _ = run([FLAT, FLAT, (100, 100.5, 97, 98)],
                    {0: lambda c: c.market("TEST", 1), 1: lambda c: c.limit("TEST", 1, 98.0)})
    market, limit = result.fills
    assert market.ts_event == T0 + 1 * MS_PER_HOUR  # bar 1 opens at 01:00
    assert limit.ts_event == T0 + 3 * MS_PER_HOUR  # inside bar 2: known by its close at 03:00


def test_fees_maker_versus_taker_and_cost_ledgers():
    inst = instrument(maker=0.0002, taker=0.00055)
    costs = CostModels(spread=FixedBps(1), slippage=FixedBps(2))
    result, _ = run([FLAT, FLAT, (100, 100.5, 97, 98)],
                    {0: lambda c: c.market("TEST", 10), 1: lambda c: c.limit("TEST", -10, 100.4)}, inst=inst, costs=costs)
    buy, sell = result.fills
    assert buy.fee == pytest.approx(10 * 100 * 1.0003 * 0.00055)
    assert buy.spread_cost == pytest.approx(10 * 100 * 0.0001)
    assert buy.slippage_cost == pytest.approx(10 * 100 * 0.0002)
    assert sell.fee == pytest.approx(10 * 100.4 * 0.0002) and sell.spread_cost == sell.slippage_cost == 0
    led = result.ledgers
    assert led.fees == pytest.approx(buy.fee + sell.fee)
    assert (led.spread, led.slippage) == (pytest.approx(0.1), pytest.approx(0.2))
    # Flat at the end: equity = start + gross P&L at reference prices - every cost.
    assert result.final_equity == pytest.approx(10_000 + 10 * (100.4 - 100.0) - led.total)


def test_close_fill_mode_fills_at_the_deciding_close():
    result, _ = run([(100, 101, 99, 100.5), (102, 103, 101, 102)], {0: lambda c: c.market("TEST", 1)}, fill_mode="close")
    (fill,) = result.fills
    assert fill.price == 100.5 and fill.ts_event == T0 + MS_PER_HOUR


def test_order_decided_mid_bar_waits_for_the_next_open():
    """A headline at 01:30 makes the strategy buy; bar 1 (01:00-02:00) had opened already, so the
    order fills at bar 2's open (02:00), never at a price from before the decision."""
    news = [News(T0 + 90 * 60_000, "headline", "TEST")]
    result, _ = run([FLAT, (100, 101, 99, 100), (103, 104, 102, 103)], news=news,
                    on_news=lambda c: c.market("TEST", 1))
    (fill,) = result.fills
    assert fill.price == 103 and fill.ts_event == T0 + 2 * MS_PER_HOUR


def test_news_at_a_bar_close_comes_before_that_bar():
    close_1 = T0 + 2 * MS_PER_HOUR
    news = [News(close_1, "at the close", "TEST"), News(close_1 + 1, "just after", "TEST")]
    _, strategy = run([FLAT, FLAT, FLAT], news=news)
    kinds = [(k, t) for k, t in strategy.seen if k in ("bar", "news")]
    assert kinds == [("bar", T0 + MS_PER_HOUR), ("news", close_1), ("bar", close_1), ("news", close_1 + 1),
                     ("bar", T0 + 3 * MS_PER_HOUR)]


def test_insufficient_cash_is_rejected_at_fill_time_with_reason():
    result, strategy = run([FLAT, (120, 121, 119, 120)], {0: lambda c: c.market("TEST", 90)}, cash=10_000)
    assert result.fills == () and len(result.rejections) == 1
    assert "insufficient cash" in result.rejections[0].reason
    assert ("rejected", result.rejections[0]) in strategy.seen


def test_spot_cannot_short():
    result, _ = run([FLAT, FLAT], {0: lambda c: c.market("TEST", -1)})
    assert "cannot be shorted" in result.rejections[0].reason and result.fills == ()


def test_minimum_notional_and_lot_rounding_are_rejections_not_resizes():
    inst = instrument(min_notional=5.0, lot_step=0.01)
    result, _ = run([FLAT, FLAT], {0: lambda c: (c.market("TEST", 0.04), c.market("TEST", 0.004), c.market("TEST", 0.057))},
                    inst=inst)
    reasons = [r.reason for r in result.rejections]
    assert any("below the minimum 5" in r for r in reasons) and any("rounds to 0" in r for r in reasons)
    assert [f.quantity for f in result.fills] == [0.05]  # 0.057 rounded down to the lot step
    assert len(result.orders) == 3


def test_target_percent_and_close():
    result, _ = run([FLAT, FLAT, FLAT, FLAT],
                    {0: lambda c: c.target_percent("TEST", 0.5), 2: lambda c: c.close("TEST")})
    buy, sell = result.fills
    assert buy.quantity == pytest.approx(50.0) and sell.quantity == pytest.approx(50.0) and sell.side is Side.SELL


def test_perpetual_short_with_leverage_and_margin_rejection():
    perp = instrument(contract=ContractType.LINEAR_PERP, leverage=2.0)
    result, _ = run([FLAT, FLAT, FLAT], {0: lambda c: c.market("TEST", -150), 1: lambda c: c.market("TEST", -100)},
                    inst=perp)
    assert [f.signed_quantity for f in result.fills] == [-150]
    assert "insufficient margin" in result.rejections[0].reason


def test_funding_settles_at_8h_marks_and_longs_pay_positive_rates():
    perp = instrument(contract=ContractType.LINEAR_PERP, leverage=1.0)
    rows = [(100.0 + i, 101.0 + i, 99.0 + i, 100.5 + i) for i in range(12)]  # 00:00 .. 12:00
    result, _ = run(rows, {0: lambda c: c.market("TEST", 2)}, inst=perp, costs=CostModels(funding=ConstantFunding(0.001)))
    (payment,) = result.funding_payments
    assert payment.ts_event == T0 + 8 * MS_PER_HOUR
    assert payment.mark_price == 107.5  # close of the bar that closes at 08:00
    assert payment.amount == pytest.approx(2 * 107.5 * 0.001)
    assert result.ledgers.funding == pytest.approx(payment.amount)


def test_shorts_receive_funding_and_intrabar_settlement_uses_the_open():
    perp = instrument(contract=ContractType.LINEAR_PERP)
    rows = [(100, 101, 99, 100), (110, 111, 109, 110), (120, 121, 119, 120)]
    result, _ = run(rows, {0: lambda c: c.market("TEST", -1)}, inst=perp, timeframe_ms=MS_PER_DAY,
                    costs=CostModels(funding=ConstantFunding(0.001)))
    hours = [(p.ts_event - T0) // MS_PER_HOUR for p in result.funding_payments]
    # The short fills at day 1's open (24:00). Funding at that same instant was settled first, on the
    # flat position, so the first payment is at 32:00. Inside a daily bar the mark is its open; at its
    # close, the close.
    assert hours == [32, 40, 48, 56, 64, 72]
    assert [p.mark_price for p in result.funding_payments] == [110, 110, 110, 120, 120, 120]
    assert all(p.amount == pytest.approx(-p.mark_price * 0.001) for p in result.funding_payments)
    assert result.ledgers.funding == pytest.approx(-(3 * 110 + 3 * 120) * 0.001)


def test_closing_a_position_summed_from_fills_leaves_no_dust():
    # 77.601457 + 52.828056 sums to 130.42951299999999: a fixed 1e-9-step tolerance rounded the
    # close down to 130.429512 and left one lot behind for ever (the strategy then "closed" every bar)
    inst = instrument(lot_step=0.000001)
    assert inst.round_quantity(77.601457 + 52.828056) == 130.429513
    assert inst.round_quantity(130.4295129) == 130.429512  # a real fraction of a step still rounds down
    result, _ = run([FLAT, FLAT, FLAT, FLAT], {0: lambda c: c.market("TEST", 77.601457), 1: lambda c: c.market("TEST", 52.828056),
                                               2: lambda c: c.close("TEST")}, inst=inst, cash=1e9)
    assert [f.quantity for f in result.fills] == [77.601457, 52.828056, 130.429513]
    assert result.fills[-1].side is Side.SELL
