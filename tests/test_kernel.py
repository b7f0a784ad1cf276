"""The kernel: one assembly for backtest, paper and live (fakes for the clock, the bars and the
broker), the clock and its timers, growing history, the order life cycle, client order ids across
restarts, and a portfolio rebuilt from the store equal to the one that recorded it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine.backtest import backtest_parts, drive, run_backtest
from engine.clock import SimulatedClock, WallClock
from engine.costs import ConstantFunding, CostModels, FixedBps
from engine.domain import (
    Bar,
    ContractType,
    Fill,
    FundingPayment,
    InvalidTransition,
    Liquidity,
    Order,
    OrderAccepted,
    OrderCancelled,
    OrderStatus,
    Side,
)
from engine.domain.orders import advance
from engine.errors import DataError
from engine.feeds.sample import SampleMarketConfig, generate_sample_market
from engine.funding import NoFunding, ReportedFunding, SimulatedFunding
from engine.history import BarHistory
from engine.kernel import Parts, Restored, assemble
from engine.order_ids import MAX_LENGTH, OrderIds, run_tag
from engine.orders import OrderBook
from engine.store.db import open_store
from engine.store.journal import start_run
from engine.store.queries import find_run
from engine.store.restore import restore_portfolio, restored_state
from engine.timeutil import MS_PER_HOUR
from strategies.base import Strategy
from strategies.sma_cross import SmaCross
from tests.helpers import T0, Scripted, candles, instrument

# -- fakes ------------------------------------------------------------------------------------


class FakeBroker:
    """Accepts every order at once and fills market orders at the next bar's open, no costs: the
    stand-in for a venue in the paper and live modes."""

    def __init__(self, portfolio, emit, clock) -> None:
        self.emit, self.clock = emit, clock
        self.submitted: list[Order] = []
        self.working: list[Order] = []

    def submit(self, order: Order) -> None:
        self.submitted.append(order)
        self.working.append(order)
        self.emit(OrderAccepted(order.client_order_id, order.symbol, self.clock.now(), exchange_order_id="x1"))

    def cancel(self, client_order_id: str) -> bool:
        for order in self.working:
            if order.client_order_id == client_order_id:
                self.working.remove(order)
                self.emit(OrderCancelled(client_order_id, order.symbol, self.clock.now()))
                return True
        return False

    def open_orders(self, symbol=None):
        return [o for o in self.working if symbol in (None, o.symbol)]

    def on_bar(self, bar: Bar) -> None:
        for order in [o for o in self.working if o.symbol == bar.symbol]:
            self.working.remove(order)
            self.emit(Fill(order.client_order_id, order.symbol, order.side, order.quantity, bar.open, bar.open, 0.0,
                           Liquidity.TAKER, 0.0, 0.0, bar.ts_open))


def bars(closes, symbol="TEST", start=T0):
    return [Bar(symbol, start + i * MS_PER_HOUR, start + (i + 1) * MS_PER_HOUR, c, c, c, c, 1.0)
            for i, c in enumerate(closes)]


CLOSES = [100, 101, 102, 103, 104, 103, 101, 99, 98, 99, 101, 104, 106, 105, 103, 100]


@pytest.mark.parametrize("mode", ["paper", "live"])
def test_the_daemon_modes_assemble_with_a_wall_clock_growing_history_and_their_broker(mode):
    now = [T0]
    clock = WallClock(source=lambda: now[0])
    history = BarHistory("TEST", MS_PER_HOUR, capacity=8)  # small: it must roll over during the run
    funding = ReportedFunding() if mode == "live" else SimulatedFunding(ConstantFunding(0.0))
    made = []
    parts = Parts(clock=clock, histories={"TEST": history},
                  broker=lambda p, emit, c: made.append(FakeBroker(p, emit, c)) or made[-1], funding=funding)
    kernel = assemble(mode, parts, strategy=SmaCross(SmaCross.Params(fast=2, slow=4)),
                      instruments={"TEST": instrument()}, costs=CostModels(), starting_cash=10_000.0, run_id="r1")
    kernel.start()
    for bar in bars(CLOSES):  # bars as a daemon receives them: one at a time, the clock a little past each close
        now[0] = bar.ts_event + 5_000
        kernel.on_bar(bar)
    kernel.stop()
    broker = made[0]
    assert kernel.broker is broker and len(broker.submitted) >= 2  # crosses up, then down
    assert [o.side for o in broker.submitted[:2]] == [Side.BUY, Side.SELL]
    # decisions are stamped with the bar's close (the event), not the wall clock
    assert all((o.ts_init - T0) % MS_PER_HOUR == 0 for o in broker.submitted)
    fills = kernel.loop.fills
    assert len(fills) == len(broker.submitted) - len(broker.working)
    assert kernel.portfolio.quantity("TEST") == pytest.approx(sum(f.signed_quantity for f in fills))
    assert history.count == len(CLOSES) and len(history) <= 8
    assert history.view("close")[-1] == CLOSES[-1] and kernel.ctx.now() == now[0]
    statuses = {kernel.loop.book.get(o.client_order_id).status for o in broker.submitted}
    assert statuses <= {OrderStatus.FILLED, OrderStatus.ACCEPTED}


def test_backtest_mode_runs_the_same_strategy_through_the_same_assembly():
    series = candles([(c, c, c, c) for c in CLOSES])
    inst = {"TEST": instrument()}
    parts = backtest_parts([series], inst, CostModels())
    kernel = assemble("backtest", parts, strategy=SmaCross(SmaCross.Params(fast=2, slow=4)), instruments=inst,
                      costs=CostModels(), starting_cash=10_000.0, run_id="r1")
    kernel.start()
    drive(kernel, [series], [])
    kernel.stop()
    via_function = run_backtest(SmaCross(SmaCross.Params(fast=2, slow=4)), [series], inst, run_id="r1")
    assert tuple(kernel.loop.fills) == via_function.fills and len(via_function.fills) >= 2


def test_modes_refuse_parts_that_do_not_belong_to_them():
    inst = {"TEST": instrument()}
    wall = Parts(clock=WallClock(), histories={"TEST": BarHistory("TEST", MS_PER_HOUR)},
                 broker=FakeBroker, funding=NoFunding())
    with pytest.raises(ValueError, match="SimulatedClock"):
        assemble("backtest", wall, strategy=Strategy(), instruments=inst, costs=CostModels(), starting_cash=1.0,
                 run_id="r")
    simulated_funding = dataclasses.replace(wall, funding=SimulatedFunding(ConstantFunding(0.0001)))
    with pytest.raises(ValueError, match="twice"):
        assemble("live", simulated_funding, strategy=Strategy(), instruments=inst, costs=CostModels(),
                 starting_cash=1.0, run_id="r")
    with pytest.raises(ValueError, match="unknown mode"):
        assemble("dry", wall, strategy=Strategy(), instruments=inst, costs=CostModels(), starting_cash=1.0,
                 run_id="r")


# -- clock ------------------------------------------------------------------------------------


def test_simulated_clock_fires_timers_in_time_order_before_the_event_that_passes_them():
    clock = SimulatedClock(0)
    fired = []
    clock.set_timer("b", 20, lambda name, at: fired.append((name, at, clock.now())))
    clock.set_timer("a", 10, lambda name, at: fired.append((name, at, clock.now())))
    clock.set_timer("c", 30, lambda name, at: fired.append((name, at, clock.now())))
    clock.set_timer("c", 40, lambda name, at: fired.append((name, at, clock.now())))  # moved
    assert clock.cancel_timer("b") and not clock.cancel_timer("zz")
    clock.advance_to(35)
    assert fired == [("a", 10, 10)] and clock.now() == 35
    clock.advance_to(40)
    assert fired[-1] == ("c", 40, 40)


def test_strategy_timers_fire_in_a_backtest_with_the_time_they_were_due():
    class Timed(Strategy):
        def on_start(self, ctx):
            self.seen = []
            ctx.set_timer("check", T0 + 3 * MS_PER_HOUR + 1)

        def on_timer(self, ctx, name):
            self.seen.append((name, ctx.time, ctx.bars_seen("TEST")))

    strategy = Timed()
    run_backtest(strategy, [candles([(1, 1, 1, 1)] * 6)], {"TEST": instrument()})
    assert strategy.seen == [("check", T0 + 3 * MS_PER_HOUR + 1, 3)]  # after bar 3 closed, before bar 4


def test_wall_clock_is_the_exchange_time_and_fires_what_is_due():
    now = [1_000]
    clock = WallClock(offset_ms=250, source=lambda: now[0])
    assert clock.now() == 1_250
    hits = []
    clock.set_timer("t", 2_000, lambda name, at: hits.append(at))
    assert clock.fire_due() == 0
    now[0] = 1_800
    assert clock.fire_due() == 1 and hits == [2_000]


# -- history ----------------------------------------------------------------------------------


def test_growing_history_rolls_over_keeps_order_and_answers_since():
    h = BarHistory("X", MS_PER_HOUR, capacity=4)
    stream = bars(range(1, 11), symbol="X")
    early = None
    for i, bar in enumerate(stream):
        h.append(bar)
        if i == 2:
            early = h.view("close")
    assert h.count == 10 and len(h) <= 4 and list(h.view("close", 2)) == [9.0, 10.0]
    assert list(early) == [1.0, 2.0, 3.0]  # a view taken earlier keeps what it saw
    assert list(h.since(8, "close")) == [9.0, 10.0]
    with pytest.raises(LookupError, match="no longer held"):
        h.since(1, "close")
    with pytest.raises(DataError, match="not after the last bar"):
        h.append(stream[-1])  # duplicate
    with pytest.raises(ValueError):
        h.view("close")[0] = 5.0


def test_a_history_over_a_series_grows_over_it_and_no_further():
    series = candles([(1, 1, 1, 1)] * 3)
    h = BarHistory.of_series(series)
    assert len(h) == 0
    with pytest.raises(LookupError):
        h.last()
    for bar in bars([1.0, 1.0, 1.0]):
        h.append(bar)
    assert h.count == 3 and list(h.view("ts_open")) == list(series.ts_open)
    with pytest.raises(DataError, match="past the end"):
        h.append(bars([1.0])[0])


# -- order life cycle ------------------------------------------------------------------------


def test_order_state_machine_refuses_impossible_moves():
    assert advance(OrderStatus.INTENT, OrderStatus.ACCEPTED) is OrderStatus.ACCEPTED
    for current, new in [(OrderStatus.CANCELLED, OrderStatus.FILLED), (OrderStatus.FILLED, OrderStatus.CANCELLED),
                         (OrderStatus.REJECTED, OrderStatus.ACCEPTED), (OrderStatus.INTENT, OrderStatus.CANCELLED)]:
        with pytest.raises(InvalidTransition):
            advance(current, new, "abc")
    book = OrderBook()
    order = Order("o1", "TEST", Side.BUY, "market", 2.0, 0)
    book.add(order)
    book.apply(OrderAccepted("o1", "TEST", 1))
    half = Fill("o1", "TEST", Side.BUY, 1.0, 10.0, 10.0, 0.0, Liquidity.TAKER, 0.0, 0.0, 2)
    assert book.apply(half).status is OrderStatus.PARTIALLY_FILLED
    assert book.apply(dataclasses.replace(half, ts_event=3)).status is OrderStatus.FILLED
    with pytest.raises(InvalidTransition):
        book.apply(OrderCancelled("o1", "TEST", 4))


def test_the_simulated_broker_reports_accepted_cancelled_and_expired():
    events = []

    class Resting(Scripted):
        def on_order_accepted(self, ctx, e):
            events.append(("accepted", e.client_order_id))

        def on_order_cancelled(self, ctx, e):
            events.append(("cancelled", e.client_order_id))

        def on_order_expired(self, ctx, e):
            events.append(("expired", e.client_order_id, e.ts_event))

    state = {}

    def place(ctx):
        state["a"] = ctx.limit("TEST", 1, 50.0, tag="cancel me").client_order_id
        state["b"] = ctx.limit("TEST", 1, 50.0, tag="expires", expire_ms=T0 + 4 * MS_PER_HOUR).client_order_id

    strategy = Resting({0: place, 1: lambda ctx: ctx.cancel(state["a"])})
    result = run_backtest(strategy, [candles([(100, 101, 99, 100)] * 8)], {"TEST": instrument()})
    assert events == [("accepted", state["a"]), ("accepted", state["b"]), ("cancelled", state["a"]),
                      ("expired", state["b"], T0 + 4 * MS_PER_HOUR)]
    assert result.fills == ()


# -- client order ids -------------------------------------------------------------------------


def test_client_order_ids_are_deterministic_short_and_unique_per_decision():
    ids = OrderIds("20261202T053700-abc123")
    a, b = ids.next(T0), ids.next(T0)
    c = ids.next(T0 + 1)
    assert a.startswith(run_tag("20261202T053700-abc123") + "-") and a.endswith("-1") and b.endswith("-2")
    assert c.endswith("-1") and len({a, b, c}) == 3
    assert OrderIds("20261202T053700-abc123").next(T0) == a  # the same decision again: the same id
    assert run_tag("run-a") != run_tag("run-b")
    assert max(len(x) for x in (a, b, c)) <= MAX_LENGTH
    assert all(ch.isalnum() or ch == "-" for ch in a)
    longest = OrderIds("x" * 200).next(2**62)  # any run id, any instant within int64
    assert len(longest) <= MAX_LENGTH


def _record(tmp_path, strategy, series, inst, *, costs=None, run_id="run-1"):
    costs = costs or CostModels()
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    journal = start_run(store, run_id=run_id, mode="backtest", strategy="t", symbols=[s.symbol for s in series],
                        timeframe_ms=series[0].timeframe_ms, starting_cash=10_000.0, config={})
    kernel = assemble("backtest", backtest_parts(series, inst, costs), strategy=strategy, instruments=inst,
                      costs=costs, starting_cash=10_000.0, run_id=run_id, journal=journal)
    kernel.start()
    drive(kernel, series, [], checkpoint_every=97)  # many batches: the restore must stitch them together
    kernel.stop()
    journal.finish({"final_equity": kernel.portfolio.equity})
    return store, kernel


def test_a_restarted_context_never_reuses_a_recorded_client_order_id(tmp_path):
    series = candles([(100, 101, 99, 100)] * 6)
    inst = {"TEST": instrument()}
    buy_twice = lambda ctx: (ctx.market("TEST", 1), ctx.market("TEST", 1))  # noqa: E731
    store, first = _record(tmp_path, Scripted({2: buy_twice, 4: buy_twice}), [series], inst)
    recorded = {o.client_order_id for o in first.loop.orders}
    assert len(recorded) == 4
    last_decision = max(o.ts_init for o in first.loop.orders)
    # A context that forgot them would hand out the same ids again for the same instant:
    assert OrderIds("run-1").next(last_decision) in recorded
    restored = restored_state(store, find_run(store, "run-1"))
    assert restored.order_ids == recorded
    again = assemble("paper", Parts(clock=WallClock(), histories={"TEST": BarHistory("TEST", MS_PER_HOUR)},
                                    broker=FakeBroker, funding=NoFunding()),
                     strategy=Strategy(), instruments=inst, costs=CostModels(), starting_cash=10_000.0,
                     run_id="run-1", restored=restored)
    again.ctx.time = last_decision
    for bar in bars([100.0]):
        again.on_bar(bar._replace(ts_open=last_decision, ts_event=last_decision + MS_PER_HOUR))
    again.ctx.time = last_decision  # the same instant as the last recorded decision
    fresh = [again.ctx.market("TEST", 1).client_order_id for _ in range(3)]
    assert not set(fresh) & recorded and len(set(fresh)) == 3
    assert again.loop.book.get(fresh[0]).status is OrderStatus.ACCEPTED
    assert again.loop.book.get(next(iter(recorded))).status is OrderStatus.FILLED  # the old ones, restored


def test_a_portfolio_restored_from_the_store_equals_the_one_that_recorded_it(tmp_path):
    market = generate_sample_market(SampleMarketConfig(bars=1500, seed=3))
    series = market.bars
    inst = {series.symbol: instrument(series.symbol, contract=ContractType.LINEAR_PERP, maker=0.0002,
                                      taker=0.00055, leverage=3.0)}
    costs = CostModels(spread=FixedBps(1.0), slippage=FixedBps(2.0), funding=ConstantFunding(0.0001))
    strategy = SmaCross(SmaCross.Params(fast=5, slow=20, allow_short=True))  # longs, shorts, flips, funding
    store, kernel = _record(tmp_path, strategy, [series], inst, costs=costs)
    recorded = kernel.portfolio
    assert len(kernel.loop.fills) > 20 and len(kernel.loop.funding_payments) > 20
    assert any(f.side is Side.SELL for f in kernel.loop.fills) and recorded.funding != 0.0
    restored = restore_portfolio(store, find_run(store, "run-1"))
    assert restored.cash == recorded.cash  # exact: replayed in the run's own order
    assert restored.ledgers == recorded.ledgers
    assert restored.equity == recorded.equity
    assert set(restored.positions) == set(recorded.positions)
    for symbol, pos in recorded.positions.items():
        got = restored.positions[symbol]
        assert (got.quantity, got.average_price, got.realized_pnl, got.last_price) == \
            (pos.quantity, pos.average_price, pos.realized_pnl, pos.last_price)
    restored.check_invariants()


def test_reported_funding_reaches_the_portfolio_once_at_the_first_bar_after_it():
    source = ReportedFunding()
    p = FundingPayment("TEST", T0 + 30 * 60_000, 0.0001, 100.0, 1.0, 0.01)
    source.report([p])
    b = bars([100.0, 100.0])
    assert source.due(b[0], 1.0) == [p] and source.due(b[1], 1.0) == []


def test_simulated_funding_settles_each_instant_once_and_nothing_while_flat():
    source = SimulatedFunding(ConstantFunding(0.001))
    day = bars([100.0] * 24)
    paid = [p for bar in day for p in source.due(bar, 2.0)]
    assert [p.ts_event - T0 for p in paid] == [8 * MS_PER_HOUR, 16 * MS_PER_HOUR, 24 * MS_PER_HOUR]
    assert np.allclose([p.amount for p in paid], 2.0 * 100.0 * 0.001)
    flat = SimulatedFunding(ConstantFunding(0.001))
    assert [p for bar in day for p in flat.due(bar, 0.0)] == []
    assert Restored(portfolio=None).order_ids == frozenset()  # type: ignore[arg-type]
