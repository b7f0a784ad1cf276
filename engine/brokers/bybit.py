"""The Bybit broker: the broker protocol over a real Bybit account (spot and linear perpetuals),
following ``LIVE.md``'s two rules.

**Write before you send.** ``submit`` only records the order; the daemon commits the intent and
then calls ``send_pending``, which, for every order, commits ``SENDING`` (attempt count, time sent),
sends it with its client order id (the exchange's ``orderLinkId``, unique per decision), commits
``ACCEPTED`` with the exchange's id, and reads the order back (ccxt's create answer carries only the
ids). ``commit`` is the daemon's checkpoint, fenced by its lease: a process that lost the lease
cannot send.

**An unclear answer is never a rejection.** A timeout, a 5xx, a lost connection or a duplicate-id
answer marks the order ``AMBIGUOUS`` and it is looked up by its client id (open orders, then the
order history): found, it is adopted (and checked: a different side, size or type halts); not
found, it is sent again with the same id, so the exchange's uniqueness check makes a second order
impossible. Rate limits back off (1, 2, 4 ... s) and resend with the same id; a clock outside the
receive window re-syncs and resends; an IP ban (HTTP 403) pauses sending. Still unresolved after
``max_attempts`` sends or ``max_lookups`` unanswered look-ups, the order becomes ``UNKNOWN`` and its
symbol halts (``on_problem``). Only definitive answers (insufficient balance, bad quantity or price,
authentication) reject.

**Fills** come from the exchange's executions, one ``Fill`` per execution, unique by its execution
id (``trade_id``), linked to our order by ``orderLinkId``. Executions of orders this run does not
know are kept in ``strangers`` for the reconciliation to judge. **Funding** comes from the
exchange's funding executions into ``ReportedFunding`` (never simulated in live mode). A
cancel commits ``CANCEL_PENDING`` first; the order's final state is read back, since it may have
filled meanwhile.

Exchange trouble during ``sync`` is never raised: ``trouble`` says what went wrong and the next
step tries again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.brokers.bybit_client import BybitAccount, classify, redact
from engine.clock import Clock
from engine.domain import (
    Bar,
    Fill,
    FundingPayment,
    Instrument,
    Liquidity,
    Order,
    OrderAccepted,
    OrderAmbiguous,
    OrderCancelled,
    OrderCancelPending,
    OrderEvent,
    OrderSending,
    OrderStatus,
    OrderType,
    OrderUnknown,
    Rejection,
    Side,
)
from engine.domain.orders import after_fill
from engine.funding import ReportedFunding

log = logging.getLogger("engine.live")

S = OrderStatus
_UNSETTLED = (S.SENDING, S.AMBIGUOUS, S.UNKNOWN)  # sent, fate not known yet
_CLOSED = {"Filled", "Cancelled", "PartiallyFilledCanceled", "Deactivated", "Rejected"}


@dataclass(frozen=True)
class LiveSettings:
    max_attempts: int = 5  # sends of one client id before it is UNKNOWN
    max_lookups: int = 5  # unanswered look-ups of an unsettled order before it is UNKNOWN
    backoff_s: float = 1.0  # first wait after a rate limit; doubles up to backoff_max_s
    backoff_max_s: float = 30.0
    rate_limit_retries: int = 4  # resends after rate limits within one step
    ban_pause_s: float = 600.0  # no request after an IP ban (HTTP 403) for this long
    margin_ms: int = 3_600_000  # executions are re-read from this long before the newest one ingested
    resync_every_ms: int = 3_600_000  # clock sync with the exchange


@dataclass
class LiveOrder:
    """What the broker knows of one order of the run."""

    order: Order
    status: OrderStatus = S.INTENT
    filled: float = 0.0
    exchange_id: str | None = None
    attempts: int = 0
    sent_ms: int | None = None
    lookups: int = 0
    cancel_wanted: bool = False
    cancel_sends: int = 0
    resend: bool = False  # looked up and not found: to be sent again with its id at the next send


class BybitBroker:
    def __init__(self, account: BybitAccount, instruments: Mapping[str, Instrument], emit: Callable[[OrderEvent], None],
                 clock: Clock, *, funding: ReportedFunding, settings: LiveSettings | None = None,
                 start_ms: int = 0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.account = account
        self.instruments = instruments
        self._emit = emit
        self.clock = clock
        self.funding = funding
        self.settings = settings or LiveSettings()
        self._sleep = sleep
        self.orders: dict[str, LiveOrder] = {}
        self.seen: set[str] = set()  # execution ids ingested (fills and funding)
        self.cursor: dict[str, int] = {s: start_ms for s in instruments}  # executions read up to (exchange time)
        self.floor_ms = start_ms  # executions before the run began are not the run's
        self.strangers: dict[str, dict[str, Any]] = {}  # execId -> row of an execution this run did not make
        self.blocked: dict[str, str] = {}  # symbol -> why nothing more is sent for it
        self.trouble = ""  # the last exchange problem, in words ("" when the last step went through)
        self.paused_until = 0
        self._last_sync = -10**18
        # Set by the daemon: its fenced checkpoint, where problems go, and named crash points for tests.
        self.commit: Callable[[], None] = lambda: None
        self.on_problem: Callable[[str, str], None] = lambda symbol, reason: None
        self.crash_point: Callable[[str], None] = lambda name: None
        self.on_order: Callable[[Order], None] = lambda order: None  # records an order the broker books itself

    # -- the broker protocol -------------------------------------------------------------------
    def submit(self, order: Order) -> None:
        """Record the order; it is sent by ``send_pending`` once its intent is committed."""
        self.orders[order.client_order_id] = LiveOrder(order)

    def cancel(self, client_order_id: str) -> bool:
        live = self.orders.get(client_order_id)
        if live is None or live.status.is_terminal:
            return False
        if live.status is S.INTENT:
            self._event(Rejection(client_order_id, live.order.symbol, "cancelled before it was sent", self.clock.now()))
            return True
        live.cancel_wanted = True
        return True

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        return [lo.order for lo in self.orders.values() if not lo.status.is_terminal
                and (symbol is None or lo.order.symbol == symbol)]

    def on_bar(self, bar: Bar) -> None:
        """Nothing: fills come from the exchange (``sync``), not from bars."""

    # -- restart -------------------------------------------------------------------------------
    def restore(self, orders: Iterable[LiveOrder], trade_ids: Iterable[str], cursor: Mapping[str, int]) -> None:
        """The run's orders not final yet, every execution id already recorded, and how far the
        executions were read, from the store (an earlier process of the run)."""
        for live in orders:
            self.orders[live.order.client_order_id] = live
        self.seen.update(trade_ids)
        for symbol, ts in cursor.items():
            self.cursor[symbol] = max(self.cursor.get(symbol, 0), int(ts))

    # -- sending -------------------------------------------------------------------------------
    def pending(self) -> list[LiveOrder]:
        """Intents to send, and unsettled orders the exchange has never heard of (to send again)."""
        return [lo for lo in self.orders.values() if lo.status is S.INTENT or (lo.resend and lo.status is S.AMBIGUOUS)]

    def send_pending(self) -> None:
        """Send every committed intent, and every cancel asked for, in submission order."""
        for live in self.pending():
            symbol = live.order.symbol
            if symbol in self.blocked:
                self._event(Rejection(live.order.client_order_id, symbol, f"not sent: {self.blocked[symbol]}",
                                      self.clock.now()))
                self.commit()
                continue
            if self._paused():
                return
            self._send(live)
        for live in list(self.orders.values()):
            if live.cancel_wanted and live.status.is_open and live.status not in _UNSETTLED \
                    and live.status is not S.CANCEL_PENDING and not self._paused():
                self._send_cancel(live)

    def drop(self, client_order_id: str, reason: str) -> None:
        """Give up an intent that was never sent (a restart found it too old): rejected with ``reason``."""
        live = self.orders[client_order_id]
        assert live.status is S.INTENT, f"{client_order_id} was sent: it cannot be dropped"
        self._event(Rejection(client_order_id, live.order.symbol, reason, self.clock.now()))

    def _paused(self) -> bool:
        if self.paused_until and time.time() * 1000 < self.paused_until:
            self.trouble = "Bybit refused this address (HTTP 403, an IP ban): no request until it lifts"
            return True
        self.paused_until = 0
        return False

    def _send(self, live: LiveOrder) -> None:
        order, s = live.order, self.settings
        coid, symbol = order.client_order_id, order.symbol
        if order.type is OrderType.STOP:
            self._event(Rejection(coid, symbol, "stop orders are not sent live yet (Bybit conditional orders); use "
                                  "a limit or market order", self.clock.now()))
            self.commit()
            return
        waits = 0
        live.resend = False
        while True:
            if live.attempts >= s.max_attempts:
                self._unknown(live, f"sent {live.attempts} times without a clear answer")
                return
            self._event(OrderSending(coid, symbol, self.clock.now(), live.attempts + 1))
            self.commit()  # SENDING is in the store before the request leaves
            self.crash_point("after_sending")
            try:
                exchange_id = self.account.create(order, self.instruments[symbol])
            except Exception as exc:  # noqa: BLE001 - every answer is classified; none is lost
                self.crash_point("after_post")
                meaning, text = classify(exc), self.describe(exc)
                log.warning("order %s: create answered %s (%s)", coid, meaning, text)
                if meaning == "rejected":
                    self._event(Rejection(coid, symbol, f"Bybit rejected it: {text}", self.clock.now()))
                    self.commit()
                    return
                if meaning == "clock":
                    self._sync_time()
                    continue  # the same id again
                if meaning == "rate_limited" and waits < s.rate_limit_retries:
                    self._sleep(min(s.backoff_s * 2 ** waits, s.backoff_max_s))
                    waits += 1
                    continue
                if meaning == "banned":
                    self.paused_until = int(time.time() * 1000 + s.ban_pause_s * 1000)
                    self.on_problem(symbol, f"Bybit banned this address (HTTP 403): {text}")
                self._ambiguous(live, f"{meaning}: {text}")
                if meaning != "banned":
                    self._resolve(live)
                return
            self.crash_point("after_post")
            if not exchange_id:
                self._ambiguous(live, "the answer carried no order id")
                self._resolve(live)
                return
            self._event(OrderAccepted(coid, symbol, self.clock.now(), exchange_id))
            self.commit()
            self._refresh(live)
            return

    def _send_cancel(self, live: LiveOrder) -> None:
        coid, symbol = live.order.client_order_id, live.order.symbol
        if live.status is not S.CANCEL_PENDING:
            self._event(OrderCancelPending(coid, symbol, self.clock.now()))
            self.commit()
        live.cancel_sends += 1
        try:
            self.account.cancel(symbol, coid)
        except Exception as exc:  # noqa: BLE001
            meaning = classify(exc)
            log.warning("cancel %s: %s (%s)", coid, meaning, self.describe(exc))
            if meaning not in ("not_found", "rejected"):
                self.trouble = f"cancel of {coid}: {self.describe(exc)}"
                return  # still pending: the next sync reads its state and asks again if it still works
        self._refresh(live)  # cancelled, or gone because it filled: its final state decides

    # -- learning an order's fate --------------------------------------------------------------
    def _resolve(self, live: LiveOrder, *, may_send: bool = True) -> None:
        """An order whose submit had no clear answer: look it up by client id; adopt it, or send it
        again with the same id when the exchange has never heard of it (at once, or with
        ``may_send`` False at the next ``send_pending``: a reconciliation only reads)."""
        coid, symbol = live.order.client_order_id, live.order.symbol
        try:
            row = self.account.find_order(symbol, coid)
        except Exception as exc:  # noqa: BLE001
            live.lookups += 1
            self.trouble = f"look-up of {coid}: {self.describe(exc)}"
            if live.lookups >= self.settings.max_lookups:
                self._unknown(live, f"{live.lookups} look-ups went unanswered ({self.describe(exc)})")
            return
        if row is None:
            if live.status is S.UNKNOWN:
                return  # a person looks; nothing is sent for it again
            live.resend = True
            if may_send:
                self._send(live)  # never reached the exchange: the same id again
            return
        live.resend = False
        self._adopt(live, row)

    def _adopt(self, live: LiveOrder, row: Mapping[str, Any]) -> None:
        order = live.order
        problems = []
        side = "Buy" if order.side is Side.BUY else "Sell"
        if row.get("side") != side:
            problems.append(f"side {row.get('side')} (ours {side})")
        if str(row.get("orderType", "")).lower() != str(order.type):
            problems.append(f"type {row.get('orderType')} (ours {order.type})")
        qty = float(row.get("qty") or 0.0)
        if abs(qty - order.quantity) > self.instruments[order.symbol].lot_step / 2:
            problems.append(f"quantity {qty:g} (ours {order.quantity:g})")
        if problems:
            self._unknown(live, "the exchange holds an order with this client id but a different " + ", ".join(problems))
            return
        if live.status in (S.INTENT, *_UNSETTLED):
            if live.status is S.UNKNOWN and self.blocked.get(order.symbol, "").startswith(
                    f"order {order.client_order_id} is UNKNOWN"):
                del self.blocked[order.symbol]  # found after all: its symbol may trade again once the halt is lifted
            self._event(OrderAccepted(order.client_order_id, order.symbol, self.clock.now(), str(row.get("orderId"))))
            self.commit()
        live.exchange_id = str(row.get("orderId"))
        self._apply(live, row)

    def _refresh(self, live: LiveOrder) -> None:
        try:
            row = self.account.find_order(live.order.symbol, live.order.client_order_id)
        except Exception as exc:  # noqa: BLE001
            self.trouble = f"reading {live.order.client_order_id}: {self.describe(exc)}"
            return
        if row is not None:
            self._apply(live, row)
        elif live.status not in _UNSETTLED:
            live.lookups += 1  # accepted, then gone from every list: looked up again at the next sync
            if live.lookups >= self.settings.max_lookups:
                self._unknown(live, "accepted by the exchange, then missing from its open orders and its history")

    def _apply(self, live: LiveOrder, row: Mapping[str, Any]) -> None:
        """Bring the order up to the exchange's row: its executions first, then its final state."""
        live.lookups = 0
        status = row.get("orderStatus", "")
        done = float(row.get("cumExecQty") or 0.0)
        step = self.instruments[live.order.symbol].lot_step / 2
        if done > live.filled + step:
            try:
                self._ingest(live.order.symbol)
            except Exception as exc:  # noqa: BLE001 - the next sync ingests them
                self.trouble = f"reading the executions of {live.order.client_order_id}: {self.describe(exc)}"
                return
        if status not in _CLOSED:
            return  # still working (New, PartiallyFilled, Untriggered) or a state not final
        if live.filled + step < done:
            return  # its executions are not visible yet: the next sync ingests them
        coid, symbol = live.order.client_order_id, live.order.symbol
        if status == "Rejected" and live.filled == 0.0:
            self._event(Rejection(coid, symbol, f"Bybit rejected it: {row.get('rejectReason') or 'no reason given'}",
                                  self.clock.now()))
        elif status != "Filled" and not live.status.is_terminal:
            why = "cancelled" if live.cancel_wanted else f"cancelled by the exchange ({status})"
            self._event(OrderCancelled(coid, symbol, self.clock.now(), why))
        self.commit()

    # -- the step ------------------------------------------------------------------------------
    def sync(self, *, may_send: bool = True) -> None:
        """Ingest new executions and funding, bring every working or unsettled order up to date,
        and repeat cancels still wanted (``may_send`` False: read only, as a reconciliation does;
        what must be sent waits for ``send_pending``). Exchange trouble ends the step quietly
        (``trouble``)."""
        if self._paused():
            return
        self.trouble = ""
        now = self.clock.now()
        try:
            if now - self._last_sync >= self.settings.resync_every_ms:
                self._sync_time()
                self._last_sync = now
            for symbol in self.instruments:
                self._ingest(symbol)
                working = [lo for lo in self.orders.values() if lo.order.symbol == symbol
                           and lo.status.is_open]
                if not working:
                    continue
                listed = {r.get("orderLinkId"): r for r in self.account.open_orders(symbol)}
                for live in working:
                    if live.status in (S.SENDING, S.AMBIGUOUS):
                        if live.status is S.SENDING:  # the process stopped between sending and hearing back
                            self._ambiguous(live, "the answer to the send was never recorded")
                        self._resolve(live, may_send=may_send)
                    elif live.status is S.UNKNOWN:
                        self._resolve(live, may_send=False)
                    elif live.order.client_order_id in listed:
                        self._apply(live, listed[live.order.client_order_id])
                        if may_send and live.cancel_wanted and live.status.is_open and (
                                live.status is not S.CANCEL_PENDING or live.cancel_sends < self.settings.max_attempts):
                            self._send_cancel(live)
                    else:
                        self._refresh(live)
        except Exception as exc:  # noqa: BLE001 - reads are retried at the next step
            self.trouble = self.describe(exc)
            log.warning("exchange sync: %s", self.trouble)

    def ingest(self) -> None:
        for symbol in self.instruments:
            self._ingest(symbol)

    def _ingest(self, symbol: str) -> None:
        """Executions of ``symbol`` since the cursor (minus a margin) that are not recorded yet."""
        inst = self.instruments[symbol]
        start = max(self.floor_ms, self.cursor.get(symbol, 0) - self.settings.margin_ms)
        # Up to a day past our clock: the exchange's clock may run ahead of ours (skew; a replay restarted
        # behind the fake it drives), and an execution it already has must not wait for ours to catch up.
        end = self.clock.now() + 86_400_000
        newest = self.cursor.get(symbol, 0)
        rows = sorted(self.account.executions(symbol, start, end), key=lambda r: (int(r.get("execTime") or 0),
                                                                                    str(r.get("execId"))))
        for row in rows:
            exec_id = str(row.get("execId"))
            if exec_id in self.seen:
                continue
            ts = int(row.get("execTime") or 0)
            if row.get("execType") == "Funding":
                self.funding.report([funding_payment(symbol, row)])
                self.seen.add(exec_id)
                newest = max(newest, ts)
                continue
            live = self.orders.get(str(row.get("orderLinkId") or ""))
            if live is None or live.status.is_terminal:
                self.strangers[exec_id] = dict(row)
                continue
            fill, coin_fee = execution_fill(live.order, row, inst)
            self._event(fill)
            if coin_fee:
                self.fee_in_coin(live.order.symbol, row, coin_fee)
            self.seen.add(exec_id)
            newest = max(newest, ts)
        self.cursor[symbol] = newest

    def fee_in_coin(self, symbol: str, row: Mapping[str, Any], quantity: float) -> None:
        """Bybit took a spot buy's fee from the coins bought, so the wallet holds ``quantity`` less
        than was bought. The fill booked that fee's value (at the execution price) as a fee; here
        those coins leave the position, sold at the same price for no fee, on an order of their own
        (``recon-fee-<execId>``), so the portfolio holds exactly what the wallet holds and cash moved
        exactly by what the exchange took."""
        exec_id, ts, price = str(row["execId"]), int(row["execTime"]), float(row["execPrice"])
        coid = f"recon-fee-{exec_id}"[:96]
        order = Order(client_order_id=coid, symbol=symbol, side=Side.SELL, type=OrderType.MARKET, quantity=quantity,
                      ts_init=ts, tag="fee paid in the coin bought")
        self.on_order(order)
        self._emit(OrderAccepted(coid, symbol, ts))
        self._emit(Fill(client_order_id=coid, symbol=symbol, side=Side.SELL, quantity=quantity, price=price,
                        reference_price=price, fee=0.0, liquidity=Liquidity.TAKER, spread_cost=0.0, slippage_cost=0.0,
                        ts_event=ts, fee_currency=self.instruments[symbol].quote_currency, trade_id=coid))
        self.seen.add(coid)

    # -- helpers -------------------------------------------------------------------------------
    def _ambiguous(self, live: LiveOrder, reason: str) -> None:
        self._event(OrderAmbiguous(live.order.client_order_id, live.order.symbol, self.clock.now(), reason[:500]))
        self.commit()

    def _unknown(self, live: LiveOrder, reason: str) -> None:
        symbol = live.order.symbol
        if live.status is not S.UNKNOWN:
            self._event(OrderUnknown(live.order.client_order_id, symbol, self.clock.now(), reason[:500]))
            self.commit()
        why = f"order {live.order.client_order_id} is UNKNOWN: {reason}; a person must look"
        self.blocked[symbol] = why
        self.on_problem(symbol, why)

    def _sync_time(self) -> None:
        try:
            self.account.sync_time()
        except Exception as exc:  # noqa: BLE001
            self.trouble = f"time sync: {self.describe(exc)}"

    def describe(self, exc: BaseException) -> str:
        """An exchange error in words, the keys blanked out."""
        return redact(f"{type(exc).__name__}: {exc}", self.account.credentials)[:600]

    def _event(self, event: OrderEvent) -> None:
        self._emit(event)
        live = self.orders.get(event.client_order_id)
        if live is None:
            return
        kind = type(event)
        if kind is Fill:
            live.filled += event.quantity  # type: ignore[union-attr]
            live.status = after_fill(live.status, live.filled, live.order.quantity, event.client_order_id)
        elif kind is OrderSending:
            live.status, live.attempts, live.sent_ms = S.SENDING, event.attempt, event.ts_event  # type: ignore[union-attr]
        elif kind is OrderAccepted:
            live.status, live.exchange_id = S.ACCEPTED, event.exchange_order_id  # type: ignore[union-attr]
        else:
            live.status = {OrderAmbiguous: S.AMBIGUOUS, OrderUnknown: S.UNKNOWN, OrderCancelPending: S.CANCEL_PENDING,
                           OrderCancelled: S.CANCELLED, Rejection: S.REJECTED}.get(kind, live.status)
        if live.status.is_terminal:
            del self.orders[event.client_order_id]


def execution_fill(order: Order, row: Mapping[str, Any], instrument: Instrument) -> tuple[Fill, float]:
    """A ``Fill`` from one Bybit execution row, and the fee taken in the coin bought (0 when the fee
    was in the quote coin). The exchange's price is what was paid: no separate spread or slippage is
    known live. A fee in another coin (Bybit takes a spot buy's fee from the base coin) is booked at
    its value at the execution price; ``BybitBroker.fee_in_coin`` takes the coins out of the position."""
    qty, price = float(row["execQty"]), float(row["execPrice"])
    fee, coin = float(row.get("execFee") or 0.0), row.get("feeCoin") or instrument.quote_currency
    in_coin = 0.0
    if coin != instrument.quote_currency:
        in_coin, fee, coin = fee, fee * price, instrument.quote_currency
    maker = row.get("isMaker") in (True, "true", "True", 1, "1")
    fill = Fill(client_order_id=order.client_order_id, symbol=order.symbol, side=order.side, quantity=qty,
                price=price, reference_price=price, fee=fee, liquidity=Liquidity.MAKER if maker else Liquidity.TAKER,
                spread_cost=0.0, slippage_cost=0.0, ts_event=int(row["execTime"]), order_type=order.type,
                fee_currency=coin, trade_id=str(row["execId"]))
    return fill, in_coin


def funding_payment(symbol: str, row: Mapping[str, Any]) -> FundingPayment:
    """A ``FundingPayment`` from a Bybit funding execution (``execFee`` > 0: the account paid)."""
    size = float(row.get("execQty") or 0.0)
    signed = -size if row.get("side") == "Sell" else size
    return FundingPayment(symbol=symbol, ts_event=int(row["execTime"]), rate=float(row.get("feeRate") or 0.0),
                          mark_price=float(row.get("execPrice") or 0.0), position_quantity=signed,
                          amount=float(row.get("execFee") or 0.0), trade_id=str(row["execId"]))
