"""Cross-check a backtest against backtrader: the SAME strategy object decides in both engines, while
execution and accounting on the backtrader side are backtrader's own.

A ``bt.Strategy`` host (``_Host``) runs a fresh instance of the plan's strategy. It calls the
strategy's hooks with a real ``StrategyContext`` whose portfolio view (``_Account``) reads cash,
equity and position from backtrader's broker, and whose broker (``_Relay``) turns our orders into
``buy``/``sell`` calls with the quantity our context computed. Fills come back from backtrader's
notifications and are compared with ours trade by trade.

Mapping (the supported subset): percentage fees at the taker rate (``CommInfoBase`` COMM_PERC), our
half-spread + slippage as ``set_slippage_perc`` applied at the open too (``slip_open``) and not capped
by the bar range (``slip_out``), cash checked at execution only (``set_checksubmit(False)``; backtrader
refuses a fill that leaves cash below zero with status Margin, as ``engine.risk.check_fill`` does for
spot). Headlines are replayed at the same point of the event order as ours, and orders decided on a
headline are handed to backtrader one bar later so that they first meet the same bar as ours.
What backtrader cannot model is named in ``unsupported`` instead of being claimed as agreement.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import backtrader as bt
import numpy as np
import pandas as pd

from engine.backtest import BacktestResult
from engine.clock import SimulatedClock
from engine.context import StrategyContext
from engine.costs import FixedBps, InstrumentFees
from engine.domain import (
    Bar,
    ContractType,
    Fill,
    Liquidity,
    Order,
    OrderAccepted,
    OrderCancelled,
    OrderEvent,
    OrderType,
    Rejection,
    Side,
)
from engine.history import BarHistory
from engine.loop import strategy_hook
from engine.plan import BacktestPlan
from engine.timeutil import iso

CENT = 0.005  # "to the cent": largest final-equity difference still called agreement
REL_TOL = 1e-9  # relative tolerance on each trade's quantity and price
MAX_MISMATCHES = 5


@dataclass(frozen=True)
class CrosscheckReport:
    """Outcome of one cross-check; ``as_dict`` is what ``--crosscheck backtrader --json`` prints."""

    verdict: str  # one line for people
    agree: bool  # every trade and rejection count matches, equity within a cent, nothing unsupported
    final_equity_ours: float
    final_equity_backtrader: float | None  # None when backtrader was not run
    equity_difference: float | None  # ours - backtrader
    trades_ours: int
    trades_backtrader: int
    rejections_ours: int
    rejections_backtrader: int
    first_mismatches: tuple[str, ...]
    unsupported: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["first_mismatches"], out["unsupported"] = list(self.first_mismatches), list(self.unsupported)
        return out


class _PercentFee(bt.CommInfoBase):
    """A fee that is a fraction of the traded notional, on a cash (stock-like) account."""

    params = (("commtype", bt.CommInfoBase.COMM_PERC), ("percabs", True), ("stocklike", True))


class _Account:
    """The part of ``Portfolio`` a strategy reads through its context, answered by backtrader."""

    def __init__(self, host: _Host, starting_cash: float) -> None:
        self._host, self.starting_cash = host, starting_cash

    @property
    def cash(self) -> float:
        return float(self._host.broker.getcash())

    @property
    def equity(self) -> float:
        return float(self._host.broker.getvalue())

    def quantity(self, symbol: str) -> float:
        return float(self._host.getposition(self._host.data).size)


class _Relay:
    """The ``Broker`` protocol for the context: forwards our orders to backtrader.

    An order is first eligible on the first bar that opens at or after its decision time (ours);
    backtrader fills an order on the bar after the one it was placed on, so an order decided on a
    headline inside bar ``k`` is held back and placed during bar ``k``'s ``next``."""

    def __init__(self, host: _Host) -> None:
        self._host = host
        self.open: dict[str, Order] = {}  # every order accepted and not done, in submission order
        self.sent: dict[int, Order] = {}  # backtrader order ref -> ours
        self._bt: dict[str, bt.Order] = {}
        self._held: dict[int, list[Order]] = {}  # bar index in whose next() to place them -> orders

    def submit(self, order: Order) -> None:
        self.open[order.client_order_id] = order
        self._host.notices.append(OrderAccepted(order.client_order_id, order.symbol, order.ts_init))
        if order.type is OrderType.LIMIT and self._host.limit_problem:
            self._host.unsupported.add(f"limit orders with {self._host.limit_problem}")
        place_on = int(np.searchsorted(self._host.bars.ts_open, order.ts_init, side="left")) - 1
        now = len(self._host.data) - 1
        if place_on < now or (place_on == now and now < 0):
            self._host.unsupported.add("orders decided before the first bar opens (backtrader fills them a bar late)")
            place_on = max(now, 0)
        if place_on == now:
            self._place(order)
        else:
            self._held.setdefault(place_on, []).append(order)

    def release(self, bar_index: int) -> None:
        for order in self._held.pop(bar_index, ()):
            self._place(order)

    def _place(self, order: Order) -> None:
        host = self._host
        kind = {OrderType.MARKET: bt.Order.Market, OrderType.LIMIT: bt.Order.Limit, OrderType.STOP: bt.Order.Stop}
        price = order.limit_price if order.type is OrderType.LIMIT else order.stop_price
        place = host.buy if order.side is Side.BUY else host.sell
        placed = place(data=host.data, size=order.quantity, price=price, exectype=kind[order.type])
        self.sent[placed.ref] = order
        self._bt[order.client_order_id] = placed

    def done(self, order: Order) -> None:
        self.open.pop(order.client_order_id, None)
        self._bt.pop(order.client_order_id, None)

    def cancel(self, client_order_id: str) -> bool:
        order = self.open.get(client_order_id)
        if order is None:
            return False
        placed = self._bt.get(client_order_id)
        if placed is not None and not self._host.broker.cancel(placed):
            return False
        for held in self._held.values():
            if order in held:
                held.remove(order)
        self.done(order)
        self._host.notices.append(OrderCancelled(client_order_id, order.symbol, self._host.ctx.time))
        return True

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        return [o for o in self.open.values() if symbol is None or o.symbol == symbol]

    def on_bar(self, bar: Bar) -> None:
        """Nothing to do: backtrader's broker fills the orders before the host's ``next``."""


class _Host(bt.Strategy):
    """Hosts one of our strategies inside backtrader and records backtrader's fills as ``Fill``s."""

    params = (("plan", None), ("run_id", "crosscheck"), ("perc", 0.0))

    def __init__(self) -> None:
        plan: BacktestPlan = self.p.plan
        self.bars = plan.series[0]
        self.symbol = self.bars.symbol
        self.instrument = inst = plan.instruments[self.symbol]
        self.costs = plan.costs
        self.coc = plan.config.run.fill_mode == "close"
        self.ts_open, self.ts_close = self.bars.ts_open.tolist(), self.bars.ts_close.tolist()
        slips = f"spread + slippage {self.p.perc:g} (backtrader slips limit fills at a gap open)"
        self.limit_problem = " and ".join(
            ["maker and taker fees differ"] * (inst.maker_fee != inst.taker_fee) + [slips] * bool(self.p.perc))
        self.news = sorted(plan.news, key=lambda n: n.ts_event)
        self.news_next = 0
        self.strategy = plan.make_strategy()
        self.fills: list[Fill] = []
        self.rejections: list[Rejection] = []
        self.unsupported: set[str] = set()
        self.notices: list[OrderEvent] = []
        self.relay = _Relay(self)
        self.history = BarHistory.of_series(self.bars)
        self.ctx = StrategyContext(
            run_id=self.p.run_id, portfolio=_Account(self, plan.config.run.starting_cash),  # type: ignore[arg-type]
            broker=self.relay, instruments=plan.instruments, histories={self.symbol: self.history},
            emit=self._emit, costs=plan.costs, clock=SimulatedClock(int(self.bars.ts_open[0])),
            on_order=lambda order: None)  # compared, not journaled

    # -- strategy hooks, in the order of engine.loop ----------------------------------------------
    def start(self) -> None:
        self.ctx.time = self.ts_open[0]
        self.strategy.on_start(self.ctx)
        self._deliver()

    def next(self) -> None:
        i = len(self.data) - 1
        if i == 0:
            self._headlines_until(self.ts_close[0])
        self.relay.release(i)
        ctx = self.ctx
        d = self.data
        bar = Bar(self.symbol, self.ts_open[i], self.ts_close[i], d.open[0], d.high[0], d.low[0], d.close[0],
                  d.volume[0])
        ctx.time = self.ts_close[i]
        self.history.append(bar)
        self._deliver()
        self.strategy.on_bar(ctx, bar)
        self._deliver()
        self._headlines_until(self.ts_close[i + 1] if i + 1 < len(self.ts_close) else math.inf)

    def stop(self) -> None:
        self.strategy.on_stop(self.ctx)
        self._deliver()

    def _headlines_until(self, limit: float) -> None:
        """Headlines published up to ``limit`` (the next bar's close), as ours sees them."""
        while self.news_next < len(self.news) and self.news[self.news_next].ts_event <= limit:
            item = self.news[self.news_next]
            self.news_next += 1
            self.ctx.time = item.ts_event
            self.strategy.on_news(self.ctx, item)
            self._deliver()

    def _emit(self, event: OrderEvent) -> None:
        if type(event) is Rejection:
            self.rejections.append(event)
        self.notices.append(event)

    def _deliver(self) -> None:
        while self.notices:
            event = self.notices.pop(0)
            strategy_hook(self.strategy, event)(self.ctx, event)

    # -- backtrader's notifications -----------------------------------------------------------------
    def notify_order(self, order: bt.Order) -> None:
        ours = self.relay.sent.get(order.ref)
        if ours is None:
            return
        for bit in order.executed.iterpending():
            self.fills.append(fill := self._fill(ours, bit.size, bit.price, bit.comm))
            self.notices.append(fill)
        if order.status == bt.Order.Margin:
            reason = f"{self.symbol}: backtrader refused the fill (Margin: cash would go below zero)"
            self._emit(Rejection(ours.client_order_id, self.symbol, reason, self.ts_close[len(self.data) - 1]))
        if not order.alive():
            self.relay.done(ours)
        if self.instrument.contract is ContractType.SPOT and self.getposition(self.data).size < 0:
            self.unsupported.add("spot short sales (backtrader's stock-like broker allows them; ours rejects them)")

    def _fill(self, order: Order, size: float, price: float, fee: float) -> Fill:
        """Our ``Fill`` for a backtrader execution, stamped by our rule: the bar's open time when it
        filled at the open, else the bar's close time."""
        coc = self.coc and order.type is OrderType.MARKET
        i = len(self.data) - 1 - coc  # cheat-on-close fills belong to the bar the order was placed on
        s = self.bars
        opening, closing = float(s.open[i]), float(s.close[i])
        if order.type is OrderType.MARKET:
            reference = closing if coc else opening
        else:
            level = order.limit_price if order.type is OrderType.LIMIT else order.stop_price
            assert level is not None
            # A buy limit or a sell stop is through at the open when the open is at or below it.
            at_or_below = (order.side is Side.BUY) == (order.type is OrderType.LIMIT)
            gapped = opening <= level if at_or_below else opening >= level
            reference = opening if gapped else level
        taker = order.type is not OrderType.LIMIT
        qty = abs(size)
        spread_f = self.costs.spread.fraction(self.instrument, qty, reference) if taker else 0.0
        slip_f = self.costs.slippage.fraction(self.instrument, qty, reference) if taker else 0.0
        ts = self.ts_close[i] if coc or reference != opening else self.ts_open[i]
        return Fill(client_order_id=order.client_order_id, symbol=self.symbol, side=order.side, quantity=qty,
                    price=price, reference_price=reference, fee=fee,
                    liquidity=Liquidity.TAKER if taker else Liquidity.MAKER, spread_cost=qty * reference * spread_f,
                    slippage_cost=qty * reference * slip_f, ts_event=ts, order_type=order.type,
                    fee_currency=self.instrument.quote_currency)


def _static_unsupported(plan: BacktestPlan, ours: BacktestResult) -> list[str]:
    """What takes a run outside the subset backtrader can reproduce, known before running it."""
    reasons = []
    if len(plan.series) != 1:
        reasons.append(f"{len(plan.series)} symbols (the cross-check runs one)")
    if plan.config.run.fill_mode == "close":
        reasons.append("fill_mode close (backtrader's cheat-on-close executes in the next bar's cycle: "
                       "cash check, position and on_fill come a bar later than ours)")
    if any(r.reason.startswith("risk") for r in ours.rejections):
        reasons.append("orders rejected by the risk limits ([risk]; backtrader has none)")
    if not isinstance(plan.costs.fees, InstrumentFees):
        reasons.append(f"fee model {type(plan.costs.fees).__name__} (only percentage fees map)")
    for name in ("spread", "slippage"):
        if not isinstance(getattr(plan.costs, name), FixedBps):
            reasons.append(f"{name} model {type(getattr(plan.costs, name)).__name__} (only fixed bps maps)")
    if any(p.amount for p in ours.funding_payments):
        paid = sum(p.amount for p in ours.funding_payments)
        reasons.append(f"perpetual funding ({len(ours.funding_payments)} settlements, {paid:.2f} paid by ours)")
    leveraged = [s for s, inst in plan.instruments.items() if inst.max_leverage != 1]
    if leveraged:
        reasons.append(f"leverage on {', '.join(leveraged)} (backtrader checks cash, not our margin)")
    return reasons


def _run_backtrader(plan: BacktestPlan, run_id: str) -> _Host:
    """Run a fresh instance of the plan's strategy through backtrader; the host holds the results."""
    s = plan.series[0]
    inst = plan.instruments[s.symbol]
    # Our taker price is reference * (1 + side * (spread_f + slip_f)); backtrader's is price * (1 ± perc).
    perc = getattr(plan.costs.spread, "bps", 0.0) / 10_000.0 + getattr(plan.costs.slippage, "bps", 0.0) / 10_000.0
    frame = pd.DataFrame({"open": s.open, "high": s.high, "low": s.low, "close": s.close, "volume": s.volume},
                         index=pd.to_datetime(s.ts_open, unit="ms"))
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(bt.feeds.PandasData(dataname=frame, openinterest=None), name=s.symbol)
    cerebro.broker.setcash(plan.config.run.starting_cash)
    cerebro.broker.set_checksubmit(False)
    cerebro.broker.addcommissioninfo(_PercentFee(commission=inst.taker_fee))
    cerebro.broker.set_slippage_perc(perc, slip_open=True, slip_limit=False, slip_match=True, slip_out=True)
    cerebro.broker.set_coc(plan.config.run.fill_mode == "close")
    cerebro.addstrategy(_Host, plan=plan, run_id=f"{run_id}-bt", perc=perc)
    return cerebro.run(maxcpus=1)[0]


def _describe(fill: Fill | None) -> str:
    if fill is None:
        return "no trade"
    return f"{iso(fill.ts_event)} {fill.side.name} {fill.quantity:.8g} @ {fill.price:.10g}"


def _mismatches(ours: tuple[Fill, ...], theirs: list[Fill]) -> tuple[int, list[str]]:
    """How many trades differ in sequence, and the first ``MAX_MISMATCHES`` of them described."""
    count, described = 0, []
    for k in range(max(len(ours), len(theirs))):
        a = ours[k] if k < len(ours) else None
        b = theirs[k] if k < len(theirs) else None
        if a is None or b is None or (a.ts_event, a.side) != (b.ts_event, b.side) or not (
                math.isclose(a.quantity, b.quantity, rel_tol=REL_TOL) and math.isclose(a.price, b.price, rel_tol=REL_TOL)):
            count += 1
            if len(described) < MAX_MISMATCHES:
                described.append(f"trade {k + 1}: ours {_describe(a)} vs backtrader {_describe(b)}")
    return count, described


def crosscheck_backtrader(plan: BacktestPlan, ours: BacktestResult) -> CrosscheckReport:
    """Rerun ``plan`` through backtrader with a fresh strategy and compare it with ``ours``."""
    unsupported = _static_unsupported(plan, ours)
    if len(plan.series) != 1:  # the host runs one data feed
        return CrosscheckReport(f"NOT RUN ({'; '.join(unsupported)})", False, ours.final_equity, None, None,
                                len(ours.fills), 0, len(ours.rejections), 0, (), tuple(unsupported))
    host = _run_backtrader(plan, ours.run_id)
    unsupported += sorted(host.unsupported)
    theirs = float(host.broker.getvalue())
    difference = ours.final_equity - theirs
    count, described = _mismatches(ours.fills, host.fills)
    same_rejections = len(ours.rejections) == len(host.rejections)
    matches = count == 0 and same_rejections and abs(difference) < CENT
    trades = f"{len(ours.fills)} trade{'' if len(ours.fills) == 1 else 's'}"
    equity = f"final equity {ours.final_equity:.2f} vs {theirs:.2f}"
    if matches and not unsupported:
        verdict = f"agree to the cent: {trades}, {equity}"
    else:
        problems = []
        if count:
            problems.append(f"{count} of {max(len(ours.fills), len(host.fills))} trades differ, first {described[0]}")
        if not same_rejections:
            problems.append(f"rejected orders {len(ours.rejections)} vs {len(host.rejections)}")
        if count == 0:
            problems.append(f"all {trades} match")
        label = f"UNSUPPORTED ({'; '.join(unsupported)})" if unsupported else "DIFFER"
        verdict = f"{label}: {'; '.join(problems)}; {equity} (difference {difference:+.6f})"
    return CrosscheckReport(
        verdict=verdict, agree=matches and not unsupported, final_equity_ours=ours.final_equity,
        final_equity_backtrader=theirs, equity_difference=difference, trades_ours=len(ours.fills),
        trades_backtrader=len(host.fills), rejections_ours=len(ours.rejections),
        rejections_backtrader=len(host.rejections), first_mismatches=tuple(described),
        unsupported=tuple(unsupported))
