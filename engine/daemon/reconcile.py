"""Reconciliation: bringing the store and the exchange into agreement (``LIVE.md``), before the first
order after every start and periodically after. For live trading the exchange is the source of
truth; every difference found is recorded in the store (``reconciliations``) with what was done.

1. Orders not final in the store are looked up by client id and brought up to date (the broker's
   ``sync``); an intent that was never sent and is older than ``live.stale_intent_fraction`` of a bar
   is dropped (the decision was for a market that has moved on).
2. Executions and funding since the last one recorded (minus a margin) are ingested, unique by
   execution id. Executions of orders nobody here made are external: adopted as reconciliation
   fills carrying the exchange's execution id (``live.adopt``), else the run halts.
3. Open orders carrying this run's prefix that the store does not know mean a second instance or a
   lost write: halt. Orders without it are external: halt, unless ``live.external_orders = "ignore"``.
4. The position (linear) or coin balance (spot, above what the account held when the run began)
   against the portfolio rebuilt from the stored fills; a difference above half a lot step halts,
   or with ``live.adopt`` becomes a reconciliation fill at the last price. The quote balance against
   the one the stored fills, fees and funding imply: a difference halts (it cannot be adopted).
5. A second reconciliation in a row finds nothing and writes nothing.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.brokers.bybit import BybitBroker, execution_fill
from engine.config import LiveConfig
from engine.domain import Fill, Liquidity, Order, OrderAccepted, OrderStatus, OrderType, Side
from engine.kernel import Kernel


@dataclass
class Outcome:
    complete: bool  # every read answered (else nothing may be sent yet)
    differences: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, action, detail)
    halt: str = ""  # why the run must halt ("" = it may trade)
    trouble: str = ""


class Reconciler:
    def __init__(self, broker: BybitBroker, kernel: Kernel, journal: Any, config: LiveConfig, *,
                 baseline: dict[str, float], starting_cash: float, tag: str, timeframe_ms: int,
                 on_problem: Callable[[str, str], None]) -> None:
        self.broker = broker
        self.kernel = kernel
        self.journal = journal
        self.config = config
        self.baseline = baseline
        self.starting_cash = starting_cash
        self.tag = tag
        self.timeframe_ms = timeframe_ms
        self.on_problem = on_problem
        self._reported: set[tuple[str, str]] = set()  # (kind, what) already recorded in this process

    def run(self, *, startup: bool) -> Outcome:
        broker, now = self.broker, self.kernel.clock.now()
        out = Outcome(complete=True)
        before = {coid: lo.status for coid, lo in broker.orders.items()}
        if startup:
            self._drop_stale_intents(now, out)
        broker.sync(may_send=False)  # nothing is sent before the whole exchange has been read
        if broker.trouble:
            return Outcome(complete=False, trouble=broker.trouble, differences=out.differences)
        for coid, status in before.items():
            live = broker.orders.get(coid)
            after = live.status if live is not None else self.kernel.loop.book.get(coid).status  # type: ignore[union-attr]
            if after is not status:
                self._record(out, "order_updated", "updated", f"{status.value} -> {after.value}", client_order_id=coid,
                             symbol=(live.order.symbol if live else ""))
        try:
            self._strangers(out)
            self._open_orders(out)
            self._positions(out)
            if not out.halt:  # a balance cannot be judged beside an unexplained position
                self._balance(out)
        except Exception as exc:  # noqa: BLE001 - a read that failed: incomplete, retried at the next step
            return Outcome(complete=False, trouble=broker.describe(exc), differences=out.differences, halt=out.halt)
        self.kernel.loop.deliver()
        if out.halt:
            self.on_problem("", out.halt)
        return out

    # -- the steps -----------------------------------------------------------------------------
    def _drop_stale_intents(self, now: int, out: Outcome) -> None:
        limit = self.config.stale_intent_fraction * self.timeframe_ms
        for live in list(self.broker.orders.values()):
            if live.status is OrderStatus.INTENT and now - live.order.ts_init > limit:
                reason = (f"never sent: found at restart {(now - live.order.ts_init) / 1000:.0f} s after it was decided "
                          "(the market has moved on); dropped")
                self.broker.drop(live.order.client_order_id, reason)
                self._record(out, "intent_dropped", "dropped", reason, client_order_id=live.order.client_order_id,
                             symbol=live.order.symbol)

    def _strangers(self, out: Outcome) -> None:
        broker = self.broker
        for exec_id, row in sorted(broker.strangers.items(), key=lambda kv: int(kv[1].get("execTime") or 0)):
            coid = str(row.get("orderLinkId") or "")
            symbol = self._symbol_of(row)
            what = (f"execution {exec_id}: {row.get('side')} {row.get('execQty')} {row.get('symbol')} @ "
                    f"{row.get('execPrice')} of order {row.get('orderId')} ({coid or 'no client id'})")
            if coid.startswith(self.tag + "-"):
                self._halt(out, "unknown_own_execution", f"{what} carries this run's prefix but the store has no such "
                           "order working: a second instance, or a lost write", symbol=symbol)
                continue
            if not self.config.adopt:
                self._halt(out, "external_execution", f"{what} was made by someone else on this account (set "
                           "live.adopt = true to record such trades and carry on)", symbol=symbol)
                continue
            order = self._adopted_order(symbol, Side.BUY if row.get("side") == "Buy" else Side.SELL,
                                        float(row["execQty"]), f"x{exec_id}")
            fill, coin_fee = execution_fill(order, row, self.kernel.ctx.instruments[symbol])
            self._apply(order, fill)
            if coin_fee:
                broker.fee_in_coin(symbol, row, coin_fee)
            broker.seen.add(exec_id)
            del broker.strangers[exec_id]
            self._record(out, "external_execution", "adopted", what, symbol=symbol)

    def _open_orders(self, out: Outcome) -> None:
        broker = self.broker
        for symbol in self.kernel.ctx.instruments:
            for row in broker.account.open_orders(symbol):
                coid = str(row.get("orderLinkId") or "")
                if coid in broker.orders:
                    continue
                what = (f"open order {row.get('orderId')} ({coid or 'no client id'}): {row.get('side')} {row.get('qty')} "
                        f"{row.get('orderType')} @ {row.get('price')}")
                if coid.startswith(self.tag + "-"):
                    self._halt(out, "unknown_own_order", f"{what} carries this run's prefix but the store does not "
                               "know it: a second instance, or a lost write", symbol=symbol)
                elif self.config.external_orders == "ignore":
                    self._record(out, "external_order", "ignored", what, symbol=symbol)
                else:
                    self._halt(out, "external_order", f"{what} was placed by someone else (live.external_orders = "
                               "\"ignore\" lets the run trade beside it)", symbol=symbol)

    def _positions(self, out: Outcome) -> None:
        broker, portfolio, ctx = self.broker, self.kernel.portfolio, self.kernel.ctx
        for symbol, inst in ctx.instruments.items():
            held, _ = broker.account.position(symbol)
            if not inst.can_short:
                held -= self.baseline.get(broker.account.market(symbol).base, 0.0)  # coins held before the run
            ours = portfolio.quantity(symbol)
            diff = held - ours
            if abs(diff) <= inst.lot_step / 2:
                continue
            what = f"{symbol}: the exchange holds {held:g}, the store's fills make {ours:g} (difference {diff:+g})"
            if not self.config.adopt:
                self._halt(out, "position_mismatch", what + " (live.adopt = true records the difference as a "
                           "reconciliation fill)", symbol=symbol)
                continue
            price = ctx.last_price(symbol) if ctx.bars_seen(symbol) else 0.0
            now = self.kernel.clock.now()
            key = hashlib.sha256(f"{symbol}:{held!r}:{ours!r}:{now}".encode()).hexdigest()[:12]
            order = self._adopted_order(symbol, Side.of(diff), abs(diff), f"p{key}")
            self._apply(order, Fill(client_order_id=order.client_order_id, symbol=symbol, side=order.side,
                                    quantity=abs(diff), price=price, reference_price=price, fee=0.0,
                                    liquidity=Liquidity.TAKER, spread_cost=0.0, slippage_cost=0.0, ts_event=now,
                                    fee_currency=inst.quote_currency, trade_id=f"recon-{key}"))
            if not inst.can_short:  # coins that came from elsewhere: the quote balance never paid for them
                self.baseline[self._quote()] = self.baseline.get(self._quote(), 0.0) + diff * price
            self._record(out, "position_adopted", "adopted", what + f"; booked at {price:g}", symbol=symbol)

    def expected_quote(self) -> float:
        """The quote balance the stored fills, fees and funding imply: what the account held when the
        run began, plus the cash the portfolio gained, plus the entry value of perpetual positions
        (the exchange takes only realised P&L, fees and funding from the balance), less funding
        already taken and not yet applied here."""
        portfolio, broker = self.kernel.portfolio, self.broker
        out = self.baseline.get(self._quote(), 0.0) + portfolio.cash - self.starting_cash
        for symbol, inst in self.kernel.ctx.instruments.items():
            if inst.can_short:
                pos = portfolio.positions.get(symbol)
                if pos is not None:
                    out += pos.quantity * pos.average_price
                out -= broker.funding.pending_amount(symbol)
        return out

    def _balance(self, out: Outcome) -> None:
        quote = self._quote()
        wallet = self.broker.account.balances().get(quote, 0.0)
        expected = self.expected_quote()
        if not math.isclose(wallet, expected, abs_tol=max(0.01, 1e-7 * abs(wallet)), rel_tol=0.0):
            self._halt(out, "balance_mismatch", f"{quote} balance {wallet:,.6f} on the exchange, {expected:,.6f} "
                       f"from the stored fills, fees and funding (difference {wallet - expected:+,.6f}): a transfer, "
                       "a trade or a fee nobody here recorded; trade on a sub-account of its own")

    # -- helpers -------------------------------------------------------------------------------
    def _adopted_order(self, symbol: str, side: Side, quantity: float, key: str) -> Order:
        coid = f"recon-{key}"[:96]
        order = Order(client_order_id=coid, symbol=symbol, side=side, type=OrderType.MARKET, quantity=quantity,
                      ts_init=self.kernel.clock.now(), tag="reconciliation")
        self.kernel.loop.on_order(order)
        return order

    def _apply(self, order: Order, fill: Fill) -> None:
        loop = self.kernel.loop
        loop.on_broker_event(OrderAccepted(order.client_order_id, order.symbol, fill.ts_event))
        loop.on_broker_event(fill)

    def _quote(self) -> str:
        return next(iter(self.kernel.ctx.instruments.values())).quote_currency

    def _symbol_of(self, row: dict[str, Any]) -> str:
        for symbol in self.kernel.ctx.instruments:
            if self.broker.account.market(symbol).id == row.get("symbol"):
                return symbol
        return str(row.get("symbol") or "")

    def _halt(self, out: Outcome, kind: str, detail: str, *, symbol: str = "") -> None:
        out.halt = out.halt or detail
        self._record(out, kind, "halted", detail, symbol=symbol)

    def _record(self, out: Outcome, kind: str, action: str, detail: str, *, symbol: str = "",
                client_order_id: str = "") -> None:
        out.differences.append((kind, action, detail))
        if (kind, detail) in self._reported and action in ("halted", "ignored"):
            return  # already recorded by this process: a second pass writes nothing
        self._reported.add((kind, detail))
        self.journal.reconciliation(kind, action, detail, symbol=symbol, client_order_id=client_order_id)
