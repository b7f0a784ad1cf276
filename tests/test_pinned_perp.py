"""Two whole backtests of a linear perpetual pinned to figures from an independent calculation.

``reference`` below is a plain re-implementation of the README's rules ("Semantics (pinned by
tests)") over a hand-made bar table; it shares no code with the engine. Each test checks the engine
against it fill by fill, payment by payment and bar by bar, and pins the headline figures as
literals so that a change in the reference itself is noticed too.

- A run with shorts, leverage 3, two margin rejections, a gap through a stop, a gap through a
  resting limit and funding that changes sign.
- A run across a hole in the data (``data.gap_policy = "keep"``: the bars as they are), with a market
  order decided before the hole and funding instants inside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from engine.backtest import run_backtest
from engine.costs import CostModels, FixedBps, FundingSeries
from engine.domain import ContractType
from engine.feeds.quality import apply_gap_policy, check_bars
from engine.series import BarSeries
from engine.timeutil import MS_PER_HOUR
from tests.helpers import T0, Scripted, instrument

FUNDING_MS = 8 * MS_PER_HOUR  # 00:00, 08:00 and 16:00 UTC


# -- the independent calculation ------------------------------------------------------------------
@dataclass
class Reference:
    fills: list[tuple[int, int, float, float, float]] = field(default_factory=list)  # order, ts, ref, price, fee
    rejected: list[int] = field(default_factory=list)  # order numbers (submission order)
    funding: list[tuple[int, float, float, float]] = field(default_factory=list)  # ts, quantity, mark, amount
    equity: list[float] = field(default_factory=list)  # at each bar's close
    open_at_end: list[int] = field(default_factory=list)
    cash: float = 0.0
    quantity: float = 0.0
    fees: float = 0.0


def reference(ts_open, rows, tf, script, *, cash, leverage, maker, taker, bps, rate) -> Reference:
    """``script[i]``: orders decided at bar i's close, each ``(kind, signed quantity, level)``."""
    out = Reference(cash=cash)
    pending: list[tuple[int, str, float, float | None]] = []
    made = 0
    last_close = None
    for t, (o, h, low, c), i in zip(ts_open, rows, range(len(rows)), strict=True):
        # Funding instants since the last close that are not after this bar's open are owed on the
        # position held then, before anything fills at this open; the rest at this close.
        after = t if last_close is None else last_close
        instants = [s for s in range((after // FUNDING_MS + 1) * FUNDING_MS, t + tf + 1, FUNDING_MS)]
        for s in [s for s in instants if s <= t]:
            _pay(out, s, o, rate(s))
        keep = []
        for number, kind, q, level in pending:
            buy = q > 0
            if kind == "market":
                ref = o
            elif kind == "limit":
                through = o <= level if buy else o >= level
                ref = o if through else (level if (low <= level if buy else h >= level) else None)
            else:  # stop
                through = o >= level if buy else o <= level
                ref = o if through else (level if (h >= level if buy else low <= level) else None)
            if ref is None:
                keep.append((number, kind, q, level))
                continue
            price = ref if kind == "limit" else ref * (1 + (1 if buy else -1) * bps)
            fee = abs(q) * price * (maker if kind == "limit" else taker)
            held, new = out.quantity, out.quantity + q
            shrinks = abs(new) <= abs(held) and (new == 0 or (new > 0) == (held > 0))
            balance = out.cash - q * price - fee + new * price
            if not shrinks and balance < abs(new * price) / leverage:
                out.rejected.append(number)
                continue
            out.cash -= q * price + fee
            out.fees += fee
            out.quantity = new
            out.fills.append((number, t if ref == o else t + tf, ref, price, fee))
        pending = keep
        for s in [s for s in instants if s > t]:
            _pay(out, s, o if s < t + tf else c, rate(s))
        out.equity.append(out.cash + out.quantity * c)
        for kind, q, level in script.get(i, ()):
            pending.append((made, kind, q, level))
            made += 1
        last_close = t + tf
    out.open_at_end = [p[0] for p in pending]
    return out


def _pay(out: Reference, ts: int, mark: float, rate: float) -> None:
    if out.quantity != 0.0:
        amount = out.quantity * mark * rate  # longs pay a positive rate, shorts receive it
        out.cash -= amount
        out.funding.append((ts, out.quantity, mark, amount))


# -- running the engine on the same table ---------------------------------------------------------
class Recorder(Scripted):
    def on_stop(self, ctx) -> None:
        self.open_at_end = [o.client_order_id for o in ctx.open_orders()]


def _orders(script):
    def place(specs):
        def act(ctx):
            for kind, q, level in specs:
                if kind == "market":
                    ctx.market("PERP", q)
                elif kind == "limit":
                    ctx.limit("PERP", q, level)
                else:
                    ctx.stop("PERP", q, level)
        return act
    return {i: place(specs) for i, specs in script.items()}


def engine_run(ts_open, rows, tf, script, *, cash, leverage, maker, taker, bps, rates):
    inst = instrument("PERP", contract=ContractType.LINEAR_PERP, maker=maker, taker=taker, leverage=leverage)
    series = BarSeries.from_arrays("PERP", tf, ts_open, *zip(*rows, strict=True), [1.0] * len(rows), source="test")
    costs = CostModels(spread=FixedBps(bps[0]), slippage=FixedBps(bps[1]), funding=FundingSeries(*zip(*rates)))
    strategy = Recorder(_orders(script))
    result = run_backtest(strategy, [series], {"PERP": inst}, starting_cash=cash, costs=costs,
                          check_invariants=True)
    return result, strategy, series


def rate_of(rates):
    """The rate at an instant: the latest recorded at or before it (0 before the first)."""
    def rate(ts: int) -> float:
        known = [r for t, r in rates if t <= ts]
        return known[-1] if known else 0.0
    return rate


def assert_engine_matches(result, strategy, ref: Reference, ts_open) -> None:
    number = {o.client_order_id: k for k, o in enumerate(result.orders)}
    got = [(number[f.client_order_id], f.ts_event, f.reference_price, f.price, f.fee) for f in result.fills]
    assert [g[:2] for g in got] == [r[:2] for r in ref.fills]
    for g, r in zip(got, ref.fills, strict=True):
        assert g[2:] == pytest.approx(r[2:], rel=1e-12, abs=1e-12)
    assert [number[r.client_order_id] for r in result.rejections] == ref.rejected
    assert all("insufficient margin" in r.reason for r in result.rejections)
    assert [number[c] for c in strategy.open_at_end] == ref.open_at_end
    paid = [(p.ts_event, p.position_quantity, p.mark_price, p.amount) for p in result.funding_payments]
    assert [p[0] for p in paid] == [r[0] for r in ref.funding]
    for p, r in zip(paid, ref.funding, strict=True):
        assert p[1:] == pytest.approx(r[1:], rel=1e-12, abs=1e-12)
    assert list(result.equity_ts) == [int(t) + result.timeframe_ms for t in ts_open]
    assert list(result.equity) == pytest.approx(ref.equity, rel=1e-12)
    assert result.ledgers.fees == pytest.approx(ref.fees, rel=1e-12)
    assert result.ledgers.funding == pytest.approx(sum(r[3] for r in ref.funding), rel=1e-12)
    assert result.final_equity == pytest.approx(ref.equity[-1], rel=1e-12)


# -- 1. shorts, leverage, margin rejections and funding over a whole run --------------------------
H4 = 4 * MS_PER_HOUR
PERP_BARS = [  # 4-hour bars from Monday 2024-01-01 00:00 UTC; funding at every other close
    (100.0, 101.0, 99.0, 100.5), (100.5, 102.0, 100.0, 101.5), (101.5, 102.5, 100.8, 101.0),
    (101.0, 101.2, 99.5, 99.8), (99.8, 100.0, 98.6, 98.9), (98.9, 99.2, 97.9, 98.2),
    (98.2, 98.5, 97.4, 97.6), (97.6, 97.8, 96.5, 96.9), (96.9, 97.5, 96.2, 97.3),
    (97.3, 98.8, 97.1, 98.5), (98.6, 99.4, 98.1, 99.0), (99.0, 100.2, 98.8, 100.0),
    (100.4, 101.0, 99.9, 100.7), (100.7, 101.3, 100.2, 101.1), (101.1, 101.6, 100.5, 100.9),
    (100.9, 101.0, 99.8, 100.1), (98.9, 99.3, 98.0, 98.4), (98.4, 98.9, 97.8, 98.0),
    (98.1, 98.3, 96.9, 97.2), (97.2, 97.5, 95.8, 96.0), (96.0, 96.4, 94.9, 95.3),
    (95.3, 96.8, 95.0, 96.5), (97.9, 98.4, 97.6, 98.1), (98.1, 98.6, 97.5, 97.8),
    (97.8, 98.0, 96.6, 96.9), (96.9, 97.2, 95.5, 95.9), (95.9, 96.3, 95.2, 96.0),
    (96.0, 96.5, 95.6, 96.2), (96.2, 96.9, 96.0, 96.7), (96.7, 97.1, 96.3, 97.0),
]
PERP_SCRIPT = {
    1: [("market", -30.0, None)],        # 0: open a short
    5: [("limit", 30.0, 97.0)],          # 1: cover it when the low reaches 97 (bar 7)
    9: [("market", 250.0, None)],        # 2: a leveraged long, ~24,650 notional on ~10,100 equity
    11: [("market", 100.0, None)],       # 3: 350 long needs more margin than the account has: rejected
    13: [("stop", -250.0, 99.5)],        # 4: protective stop; bar 16 gaps down through it: fills at its open
    17: [("market", -400.0, None),       # 5: a short of 400 (~39,000 notional): rejected for margin
         ("market", -200.0, None)],      # 6: a short of 200: taken
    21: [("limit", -50.0, 97.5)],        # 7: add to the short above the market; bar 22 gaps up through it
    25: [("market", 250.0, None)],       # 8: close the short
    27: [("limit", 10.0, 90.0)],         # 9: never reached: still open at the end
}
PERP_RATES = [(T0, 0.0001), (T0 + 48 * MS_PER_HOUR, -0.0002), (T0 + 80 * MS_PER_HOUR, 0.0003)]
PERP_COSTS = dict(cash=10_000.0, leverage=3.0, maker=0.0002, taker=0.00055)


def test_perpetual_shorts_leverage_margin_and_funding_match_the_reference():
    ts_open = [T0 + i * H4 for i in range(len(PERP_BARS))]
    ref = reference(ts_open, PERP_BARS, H4, PERP_SCRIPT, bps=(2 + 3) / 10_000, rate=rate_of(PERP_RATES),
                    **PERP_COSTS)
    result, strategy, _ = engine_run(ts_open, PERP_BARS, H4, PERP_SCRIPT, bps=(2.0, 3.0), rates=PERP_RATES,
                                     **PERP_COSTS)
    assert_engine_matches(result, strategy, ref, ts_open)

    # The reference's own figures, pinned (a slip in the reference shows here too).
    assert [r[:3] for r in ref.fills] == [
        (0, T0 + 8 * MS_PER_HOUR, 101.5), (1, T0 + 32 * MS_PER_HOUR, 97.0), (2, T0 + 40 * MS_PER_HOUR, 98.6),
        (4, T0 + 64 * MS_PER_HOUR, 98.9), (6, T0 + 72 * MS_PER_HOUR, 98.1), (7, T0 + 88 * MS_PER_HOUR, 97.9),
        (8, T0 + 104 * MS_PER_HOUR, 95.9)]
    assert ref.rejected == [3, 5] and ref.open_at_end == [9]
    assert len(ref.funding) == PINNED_PERP["payments"]
    assert ref.fees == pytest.approx(PINNED_PERP["fees"], abs=1e-9)
    assert sum(r[3] for r in ref.funding) == pytest.approx(PINNED_PERP["funding"], abs=1e-9)
    assert ref.equity[-1] == pytest.approx(PINNED_PERP["final_equity"], abs=1e-9)


# -- 2. orders and funding across a hole in the data (gap_policy = "keep") -----------------------
H1 = MS_PER_HOUR
HOLE_HOURS = [*range(0, 12), *range(26, 42)]  # nothing opens 12:00 to 25:00: 16:00 and 24:00 fall inside
HOLE_BARS = [
    (50.0, 50.4, 49.8, 50.2), (50.2, 50.5, 50.0, 50.3), (50.3, 50.6, 50.1, 50.5), (50.5, 50.9, 50.4, 50.8),
    (50.8, 51.0, 50.5, 50.6), (50.6, 50.8, 50.2, 50.4), (50.4, 50.7, 50.3, 50.6), (50.6, 51.2, 50.5, 51.0),
    (51.0, 51.3, 50.8, 51.1), (51.1, 51.4, 50.9, 51.3), (51.3, 51.5, 51.0, 51.2), (51.2, 51.6, 51.1, 51.5),
    # after the hole: opens far from the last close
    (53.0, 53.4, 52.6, 52.8), (52.8, 53.0, 52.2, 52.4), (52.4, 52.7, 52.0, 52.1), (52.1, 52.3, 51.6, 51.8),
    (51.8, 52.0, 51.4, 51.5), (51.5, 51.9, 51.3, 51.7), (51.7, 51.8, 51.0, 51.2), (51.2, 51.5, 50.9, 51.4),
    (51.4, 51.6, 51.1, 51.3), (51.3, 51.4, 50.8, 50.9), (50.9, 51.2, 50.7, 51.1), (51.1, 51.3, 50.9, 51.0),
    (51.0, 51.1, 50.5, 50.6), (50.6, 50.9, 50.4, 50.8), (50.8, 51.0, 50.6, 50.7), (50.7, 50.8, 50.2, 50.3),
]
HOLE_SCRIPTS = {
    # A resting limit decided before the hole and reached inside the second bar after it: nothing
    # fills on the first bar after the hole, where 16:00 and 24:00 are settled on the long held.
    "limit across the hole": {
        4: [("market", 80.0, None)],        # 0: long from 05:00's open
        11: [("limit", 50.0, 52.3)],        # 1: decided at 12:00; 27:00's bar (low 52.2) reaches it
        20: [("stop", -180.0, 50.9)],       # 2: 35:00's low (50.8) reaches it: closes the long, goes short
    },
    # A market order decided before the hole fills at the first open after it (26:00); the 16:00
    # and 24:00 payments are owed on the long held at those instants, not on the short taken later.
    "market across the hole": {
        4: [("market", 80.0, None)],        # 0: long from 05:00's open
        11: [("market", -200.0, None),      # 1: decided at 12:00, before the hole: fills at 26:00's open
             ("limit", 50.0, 52.5)],        # 2: a resting buy, reached inside the second bar after the hole
        20: [("stop", 120.0, 51.2)],        # 3: 35:00's open (51.3) is through it: covers, goes long
    },
}
HOLE_RATES = [(T0, 0.0004), (T0 + 16 * MS_PER_HOUR, -0.0003), (T0 + 24 * MS_PER_HOUR, 0.0005)]
HOLE_COSTS = dict(cash=10_000.0, leverage=2.0, maker=0.0002, taker=0.00055)
PINNED_HOLE = {
    "limit across the hole": {
        "fills": [(0, 5, 50.6), (1, 28, 52.3), (2, 36, 50.9)],
        "funding": [(8, 80.0, 51.0), (16, 80.0, 53.0), (24, 80.0, 53.0), (32, 130.0, 51.7), (40, -50.0, 50.8)],
        "fees": 7.78765619, "final_equity": 9967.67884381},
    "market across the hole": {
        "fills": [(0, 5, 50.6), (1, 26, 53.0), (2, 28, 52.5), (3, 35, 51.3)],
        "funding": [(8, 80.0, 51.0), (16, 80.0, 53.0), (24, 80.0, 53.0), (32, -70.0, 51.7), (40, 50.0, 50.8)],
        "fees": 11.96713466, "final_equity": 10265.85116534},
}


@pytest.mark.parametrize("case", [
    "limit across the hole",
    "market across the hole",  # funding in the hole is charged on the position held through it, not the next one
])
def test_orders_and_funding_across_a_hole_in_the_data_match_the_reference(case):
    script = HOLE_SCRIPTS[case]
    ts_open = [T0 + h * H1 for h in HOLE_HOURS]
    series = BarSeries.from_arrays("PERP", H1, ts_open, *zip(*HOLE_BARS, strict=True), [1.0] * len(HOLE_BARS))
    report = check_bars(series, "24/7")
    kept, note = apply_gap_policy(series, "keep", report)
    assert len(report.gaps) == 1 and note is None and np.array_equal(kept.ts_open, series.ts_open)

    ref = reference(ts_open, HOLE_BARS, H1, script, bps=(1 + 2) / 10_000, rate=rate_of(HOLE_RATES), **HOLE_COSTS)
    pinned = PINNED_HOLE[case]
    # The reference's own figures, pinned: (order, hour, reference price) of each fill, (hour,
    # position, mark) of each payment; 16:00 and 24:00 are marked at 26:00's open (53.0).
    assert [(n, (ts - T0) // H1, price) for n, ts, price, _, _ in ref.fills] == pinned["fills"]
    assert [((ts - T0) // H1, q, mark) for ts, q, mark, _ in ref.funding] == pinned["funding"]
    assert ref.fees == pytest.approx(pinned["fees"], abs=1e-9)
    assert ref.equity[-1] == pytest.approx(pinned["final_equity"], abs=1e-9)

    result, strategy, _ = engine_run(list(kept.ts_open), HOLE_BARS, H1, script, bps=(1.0, 2.0),
                                     rates=HOLE_RATES, **HOLE_COSTS)
    assert_engine_matches(result, strategy, ref, ts_open)


PINNED_PERP = {"payments": 9, "fees": 54.369589625, "funding": -41.7315, "final_equity": 10689.354410375}
