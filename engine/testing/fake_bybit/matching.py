"""The matching engine: this account's orders, how they fill against the bars, and their executions.

- A market order fills at once at the current price (the open of the bar containing market time)
  times ``1 +/- half_spread``, as taker. With partial fills on, it may fill only part (a random
  fraction, whole lots, at least one) and the rest is cancelled: ``PartiallyFilledCanceled``, what a
  Bybit market order (an IOC limit with a price cap) does when the book is thin.
- A limit order that is marketable when it arrives fills at once as taker at the bid/ask (PostOnly
  is cancelled instead, IOC/FOK that cannot fill are cancelled). Otherwise it rests, and is matched
  against every base bar that closes after it was placed: it fills when the bar's range reaches it,
  at the limit, or at the bar's open when the bar opened through it, as maker, timed at the bar's
  close (when the bar's range is known). With partial fills on, it may fill in two executions on two
  such bars, ``PartiallyFilled`` in between.
- Funding settles every 8 hours on open linear positions (``Account.settle_funding``) and is
  recorded as an execution of type ``Funding`` with ``execFee`` the fee paid (negative: received).

Execution rows carry ``feeCoin``: the quote coin, except on a spot buy, whose fee Bybit takes from
the coin bought (the base coin; see ``account``). Rejections use Bybit's retCodes (linear / spot): duplicate orderLinkId 110072 / 170141, quantity
below the minimum 110017 / 170136, value below the minimum 110094 / 170140, insufficient balance
110007 / 170131, cancel of an unknown or finished order 110001 / 170213.
"""

from __future__ import annotations

import itertools
import random
import re
import uuid
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from engine.testing.fake_bybit.account import Account
from engine.testing.fake_bybit.instruments import LINEAR, SPOT, Instrument, Instruments
from engine.testing.fake_bybit.market import FUNDING_INTERVAL, Bar, Market
from engine.testing.fake_bybit.wire import BybitError, decimals_of, floor_to, money, num, on_step

OPEN = frozenset({"New", "PartiallyFilled"})
LINK_ID = re.compile(r"^[0-9A-Za-z_-]{1,36}$")
IOC_CAP = 0.03  # a linear market order is an IOC limit this far through the price; Bybit shows it as its price
UNSUPPORTED = ("triggerPrice", "takeProfit", "stopLoss", "orderIv", "slLimitPrice", "tpLimitPrice")
CODES = {  # (linear, spot) retCodes of each rejection
    "duplicate": (110072, 170141), "min_qty": (110017, 170136), "min_value": (110094, 170140),
    "balance": (110007, 170131), "not_found": (110001, 170213), "price": (10001, 170134), "tif": (10001, 170115),
}


def _code(kind: str, instrument_or_category: Instrument | str) -> int:
    category = getattr(instrument_or_category, "category", instrument_or_category)
    return CODES[kind][0 if category == LINEAR else 1]


@dataclass(frozen=True, slots=True)
class Fees:
    linear_taker: float
    linear_maker: float
    spot: float

    def rate(self, category: str, maker: bool) -> float:
        if category == SPOT:
            return self.spot
        return self.linear_maker if maker else self.linear_taker


@dataclass(slots=True)
class Order:
    """One order as the exchange holds it; ``to_bybit`` renders the v5 order object."""

    seq: int
    order_id: str
    link_id: str
    instrument: Instrument
    side: str
    order_type: str
    qty: float  # base quantity; the quote amount when ``market_unit`` is quoteCoin
    price: float  # the limit; a linear market order's IOC cap; 0 for a spot market order
    tif: str
    reduce_only: bool
    market_unit: str  # spot market orders: baseCoin / quoteCoin; "" otherwise
    created: int
    last_price: float  # lastPriceOnCreated
    updated: int = 0
    status: str = "New"
    cum_qty: float = 0.0
    cum_value: float = 0.0
    cum_fee: float = 0.0
    fee_coin: str = ""  # the coin its fees are paid in: the quote, or the base coin of a spot buy
    cancel_type: str = "UNKNOWN"
    reject_reason: str = "EC_NoError"
    split: bool = False  # a partial-fill split already happened (its second execution fills the rest)

    @property
    def category(self) -> str:
        return self.instrument.category

    @property
    def by_quote(self) -> bool:
        return self.market_unit == "quoteCoin"

    @property
    def leaves(self) -> float:
        """Base quantity still to fill (0 once the order is final, and for a quote-amount market order,
        which never rests)."""
        if self.status not in OPEN or self.by_quote:
            return 0.0
        return round(self.qty - self.cum_qty, decimals_of(self.instrument.lot))

    @property
    def is_open(self) -> bool:
        return self.status in OPEN

    def to_bybit(self) -> dict[str, Any]:
        inst = self.instrument
        qty_decimals = 8 if self.by_quote else decimals_of(inst.lot)
        leaves = self.leaves
        row: dict[str, Any] = {
            "orderId": self.order_id, "orderLinkId": self.link_id, "blockTradeId": "", "symbol": inst.symbol,
            "price": num(self.price, decimals_of(inst.tick)), "qty": num(self.qty, qty_decimals), "side": self.side,
            "isLeverage": "" if self.category == LINEAR else "0", "positionIdx": 0, "orderStatus": self.status,
            "createType": "CreateByUser", "cancelType": self.cancel_type, "rejectReason": self.reject_reason,
            "avgPrice": num(self.cum_value / self.cum_qty) if self.cum_qty else "0",
            "leavesQty": num(leaves, qty_decimals), "leavesValue": num(leaves * self.price),
            "cumExecQty": num(self.cum_qty), "cumExecValue": num(self.cum_value), "cumExecFee": num(self.cum_fee),
            "cumFeeDetail": {self.fee_coin or inst.quote: num(self.cum_fee)} if self.cum_qty else {},
            "timeInForce": self.tif, "orderType": self.order_type, "stopOrderType": "", "orderIv": "",
            "marketUnit": self.market_unit, "triggerPrice": "", "takeProfit": "", "stopLoss": "", "tpTriggerBy": "",
            "slTriggerBy": "", "triggerDirection": 0, "triggerBy": "", "lastPriceOnCreated": num(self.last_price),
            "reduceOnly": self.reduce_only, "closeOnTrigger": False, "placeType": "", "smpType": "None",
            "smpGroup": 0, "smpOrderId": "", "tpLimitPrice": "0", "slLimitPrice": "0", "slippageToleranceType": "UNKNOWN",
            "slippageTolerance": "0", "extraFees": "", "createdTime": str(self.created), "updatedTime": str(self.updated),
        }
        if self.category == LINEAR:
            row["tpslMode"] = ""  # present on contract orders only: ccxt tells contract from spot by it
        return row


@dataclass(frozen=True, slots=True)
class Execution:
    seq: int
    category: str
    at: int
    row: dict[str, Any]


def _flag(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


class Matching:
    """Orders, executions and the clock that drives them (``advance``); callers hold the fake's lock."""

    def __init__(self, instruments: Instruments, market: Market, account: Account, *, fees: Fees,
                 half_spread: float, recent_closed_limit: int, now: int) -> None:
        self.instruments, self.market, self.account, self.fees = instruments, market, account, fees
        self.half_spread = half_spread
        self.orders: dict[str, Order] = {}  # by orderId, in arrival order
        self.links: dict[tuple[str, str], str] = {}  # (category, orderLinkId) -> orderId
        self.executions: list[Execution] = []
        self.recent_closed: deque[str] = deque(maxlen=recent_closed_limit)  # what order/realtime still lists
        self.creates: Counter[str] = Counter()  # orderLinkId -> create requests accepted
        self.processed_until = now
        self._seq = itertools.count(1)
        self._partial_probability = 0.0
        self._partial_rng = random.Random(0)

    # -- settings
    def partial_fills(self, probability: float, seed: int) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"partial-fill probability must be between 0 and 1, not {probability}")
        self._partial_probability, self._partial_rng = probability, random.Random(seed)

    def has_traded(self) -> bool:
        return bool(self.orders or self.executions)

    # -- ids
    def _order_id(self, category: str, seq: int) -> str:
        if category == SPOT:  # Bybit's spot ids are numeric, its derivatives ids UUIDs
            return str(1_900_000_000_000_000_000 + seq)
        return str(uuid.UUID(int=0xFA4EB1B1 << 96 | seq))

    def _exec_id(self, seq: int) -> str:
        return str(uuid.UUID(int=0xE4EC << 112 | seq))

    # -- prices
    def _price(self, instrument: Instrument, now: int) -> float:
        return self.market.price(instrument.category, instrument.symbol, now)

    def _bid_ask(self, instrument: Instrument, now: int) -> tuple[float, float]:
        price = self._price(instrument, now)
        return price * (1 - self.half_spread), price * (1 + self.half_spread)

    # -- balances the order book holds back
    def spot_locked(self, coin: str) -> float:
        """Coin held by resting spot orders: the quote of buys at their limit, the base of sells."""
        held = 0.0
        for order in self.open_orders():
            inst = order.instrument
            if inst.category != SPOT:
                continue
            if order.side == "Buy" and inst.quote == coin:
                held += order.leaves * order.price
            elif order.side == "Sell" and inst.base == coin:
                held += order.leaves
        return money(held)

    def order_margin(self, coin: str) -> float:
        """Initial margin of resting linear orders that would open or add to a position."""
        margin = 0.0
        for order in self.open_orders():
            inst = order.instrument
            if inst.category == LINEAR and inst.quote == coin and not order.reduce_only:
                margin += order.leaves * order.price / self.account.position(inst.symbol).leverage
        return money(margin)

    def position_margin(self, coin: str) -> float:
        return money(sum(p.initial_margin() for s, p in self.account.positions.items()
                         if (inst := self.instruments.find(LINEAR, s)) is not None and inst.quote == coin))

    def available(self, coin: str) -> float:
        """What new orders may use: wallet less locked coin and margins (ccxt's ``free``)."""
        return money(self.account.balance(coin) - self.spot_locked(coin) - self.order_margin(coin)
                     - self.position_margin(coin))

    # -- orders
    def open_orders(self) -> Iterator[Order]:
        return (o for o in self.orders.values() if o.is_open)

    def find(self, category: str, order_id: str = "", link_id: str = "") -> Order | None:
        """By orderId if given (Bybit's precedence), else by orderLinkId, within a category."""
        if order_id:
            order = self.orders.get(order_id)
            return order if order is not None and order.category == category else None
        found = self.links.get((category, link_id)) if link_id else None
        return self.orders[found] if found else None

    def by_link(self, link_id: str) -> Order:
        """The order with this orderLinkId in any category (for the test hooks)."""
        found = [self.orders[oid] for (category, link), oid in self.links.items() if link == link_id]
        if not found:
            raise KeyError(f"no order with orderLinkId {link_id!r} on the fake exchange")
        if len(found) > 1:
            raise KeyError(f"orderLinkId {link_id!r} is used in both spot and linear; the hooks need it unique")
        return found[0]

    def create(self, params: Mapping[str, Any], now: int, *, by_api: bool = True) -> Order:
        """Validate and accept an order (``/v5/order/create``), filling what is marketable now;
        ``by_api=False`` for an order placed by hand (not counted in ``creates``)."""
        inst, side, order_type, link, tif, reduce_only, market_unit = self._fields(params)
        bid, ask = self._bid_ask(inst, now)
        taker_price = ask if side == "Buy" else bid
        if order_type == "Limit":
            price = self._limit_price(params, inst)
        elif inst.category == SPOT:
            price = 0.0
        else:
            price = round(taker_price * (1 + IOC_CAP if side == "Buy" else 1 - IOC_CAP), decimals_of(inst.tick))
        ref_price = price if order_type == "Limit" else taker_price
        qty, base_qty, value = self._sized(params, inst, market_unit, ref_price, reduce_only)
        if reduce_only:
            qty = base_qty = self._reduce_only_qty(inst, side, qty)
        self._check_balance(inst, side, base_qty, value, ref_price, reduce_only)
        seq = next(self._seq)
        if inst.category == SPOT and not link:
            link = str(2_000_000_000_000_000_000 + seq)  # Bybit invents one for spot orders sent without
        order = Order(seq=seq, order_id=self._order_id(inst.category, seq), link_id=link, instrument=inst, side=side,
                      order_type=order_type, qty=qty, price=price, tif=tif, reduce_only=reduce_only,
                      market_unit=market_unit, created=now, updated=now, last_price=self._price(inst, now))
        self.orders[order.order_id] = order
        if link:
            self.links[(inst.category, link)] = order.order_id
        if by_api:
            self.creates[link] += 1
        if order_type == "Market":
            self._fill_market(order, taker_price, now)
        elif (side == "Buy" and price >= ask) or (side == "Sell" and price <= bid):
            if tif == "PostOnly":
                self._finish(order, "Cancelled", now, reason="EC_PostOnlyWillTakeLiquidity")
            else:
                self._fill_marketable_limit(order, taker_price, now)
        elif tif in ("IOC", "FOK"):
            self._finish(order, "Cancelled", now, reason="EC_NoImmediateQtyToFill")
        return order

    def _fields(self, params: Mapping[str, Any]) -> tuple[Instrument, str, str, str, str, bool, str]:
        """The order's instrument, side, type, orderLinkId, timeInForce, reduceOnly and marketUnit, checked."""
        category = str(params.get("category", ""))
        inst = self.instruments.get(category, str(params.get("symbol", "")))
        side, order_type = str(params.get("side")), str(params.get("orderType"))
        if side not in ("Buy", "Sell"):
            raise BybitError(10001, f"side {side!r} is invalid: Buy or Sell")
        if order_type not in ("Market", "Limit"):
            raise BybitError(10001, f"orderType {order_type!r} is invalid: Market or Limit")
        for key in UNSUPPORTED:
            if params.get(key) not in (None, "", "0", 0):
                raise BybitError(10001, f"{key} is not supported by the fake Bybit (no conditional or TP/SL orders)")
        if str(params.get("positionIdx", 0)) != "0":
            raise BybitError(10001, "position idx not match position mode: the fake account is one-way (positionIdx 0)")
        link = str(params.get("orderLinkId") or "")
        if link and not LINK_ID.match(link):
            raise BybitError(10001, f"orderLinkId {link!r} is invalid: at most 36 characters of 0-9 A-Z a-z _ -")
        if link and (category, link) in self.links:
            raise BybitError(_code("duplicate", inst), "OrderLinkedID is duplicate")
        tif = str(params.get("timeInForce") or ("IOC" if order_type == "Market" else "GTC"))
        if tif not in ("GTC", "IOC", "FOK", "PostOnly") or (order_type == "Market" and tif == "PostOnly"):
            raise BybitError(_code("tif", inst), f"timeInForce {tif!r} is invalid for a {order_type} order")
        market_unit = ""
        if category == SPOT and order_type == "Market":  # Bybit's default: a buy spends quote, a sell sells base
            market_unit = str(params.get("marketUnit") or ("quoteCoin" if side == "Buy" else "baseCoin"))
            if market_unit not in ("baseCoin", "quoteCoin"):
                raise BybitError(10001, f"marketUnit {market_unit!r} is invalid: baseCoin or quoteCoin")
        reduce_only = category == LINEAR and _flag(params.get("reduceOnly", False))
        return inst, side, order_type, link, tif, reduce_only, market_unit

    @staticmethod
    def _limit_price(params: Mapping[str, Any], inst: Instrument) -> float:
        try:
            price = float(params["price"])
        except (KeyError, TypeError, ValueError):
            raise BybitError(10001, "price is required for a Limit order (a positive number as a string)") from None
        if not price > 0 or not on_step(price, inst.tick):
            raise BybitError(_code("price", inst), f"price {params['price']!r} is invalid: a positive multiple of "
                                                   f"the tick size {num(inst.tick)}")
        return price

    @staticmethod
    def _sized(params: Mapping[str, Any], inst: Instrument, market_unit: str, price: float,
               reduce_only: bool) -> tuple[float, float, float]:
        """(qty as the order keeps it, base quantity, quote value): quantities cut to whole lots and
        checked against the instrument's minimum quantity and value."""
        try:
            qty = float(params["qty"])
        except (KeyError, TypeError, ValueError):
            qty = 0.0
        if not qty > 0:
            raise BybitError(10001, f"qty {params.get('qty')!r} is invalid: a positive number as a string")
        if market_unit == "quoteCoin":
            value = round(qty, 8)
            if value < inst.min_notional:
                raise BybitError(_code("min_value", inst), f"Order value exceeded lower limit: {num(value)} {inst.quote} "
                                                           f"is below the minimum order amount {num(inst.min_notional)}")
            if floor_to(value / price, inst.lot) <= 0:
                raise BybitError(_code("min_qty", inst), "Order quantity lower than the minimum.")
            return value, value / price, value
        qty = floor_to(qty, inst.lot)
        if qty < inst.min_qty:
            raise BybitError(_code("min_qty", inst), f"Order quantity {num(qty)} is below the minimum order "
                                                     f"quantity {num(inst.min_qty)} of {inst.symbol}")
        value = qty * price
        if value < inst.min_notional and not reduce_only:
            raise BybitError(_code("min_value", inst), f"Order does not meet minimum order value "
                                                       f"{num(inst.min_notional)}{inst.quote}: {num(value, 4)}")
        return qty, qty, value

    def _reduce_only_qty(self, inst: Instrument, side: str, qty: float) -> float:
        size = self.account.position(inst.symbol).size
        if size == 0 or (size > 0) == (side == "Buy"):
            raise BybitError(_code("min_qty", inst), f"Reduce-only rule not satisfied: the {inst.symbol} position is "
                                                     f"{num(size)}, a reduce-only {side} cannot reduce it")
        return min(qty, abs(size))

    def _check_balance(self, inst: Instrument, side: str, qty: float, value: float, price: float,
                       reduce_only: bool) -> None:
        """Reject an order the account cannot pay for: ``qty`` base worth ``value`` quote at ``price``."""
        fee_rate = self.fees.rate(inst.category, maker=False)
        if inst.category == LINEAR:
            if reduce_only:
                return
            position = self.account.position(inst.symbol)
            opening = qty if position.size == 0 or (position.size > 0) == (side == "Buy") else max(0.0, qty - abs(position.size))
            need, coin = opening * price / position.leverage + qty * price * fee_rate, inst.quote
        elif side == "Buy":
            need, coin = value * (1 + fee_rate), inst.quote
        else:
            need, coin = qty, inst.base
        free = self.available(coin)
        if need > free + 1e-9:
            message = "ab not enough for new order" if inst.category == LINEAR else "Insufficient balance."
            raise BybitError(_code("balance", inst), f"{message} (needs {num(need, 8)} {coin}, available {num(free, 8)})")

    def _partial_fraction(self) -> float | None:
        if self._partial_probability and self._partial_rng.random() < self._partial_probability:
            return self._partial_rng.uniform(0.1, 0.9)
        return None

    def _fill_market(self, order: Order, price: float, now: int) -> None:
        inst = order.instrument
        if order.by_quote:
            if order.side == "Buy":
                full = floor_to(order.qty / price, inst.lot)
            else:
                full = min(floor_to(order.qty / price, inst.lot), floor_to(self.account.balance(inst.base), inst.lot))
        else:
            full = order.qty
        fraction = self._partial_fraction()
        qty = full if fraction is None else max(inst.lot, floor_to(full * fraction, inst.lot))
        qty = min(qty, full)
        self._execute(order, qty, price, maker=False, at=now)
        if order.by_quote:  # the quote amount is spent (what rounding leaves is not a fill to come)
            self._finish(order, "Filled" if qty >= full else "PartiallyFilledCanceled", now)
        elif order.is_open:
            self._finish(order, "PartiallyFilledCanceled", now)

    def _fill_marketable_limit(self, order: Order, price: float, now: int) -> None:
        inst = order.instrument
        fraction = None if order.tif == "FOK" else self._partial_fraction()
        qty = order.qty if fraction is None else min(order.qty, max(inst.lot, floor_to(order.qty * fraction, inst.lot)))
        order.split = fraction is not None
        self._execute(order, qty, price, maker=False, at=now)
        if order.is_open and order.tif == "IOC":
            self._finish(order, "PartiallyFilledCanceled", now)

    def _execute(self, order: Order, qty: float, price: float, *, maker: bool, at: int) -> str:
        """One execution of ``qty`` at ``price``: the account, the order and the execution list."""
        inst = order.instrument
        value = money(qty * price)
        rate = self.fees.rate(inst.category, maker)
        fee_coin = inst.quote
        if inst.category == LINEAR or order.side == "Sell":
            fee = money(value * rate)
        else:  # a spot buy pays its fee in the coin it buys, as Bybit charges it
            fee, fee_coin = money(qty * rate), inst.base
        order.fee_coin = fee_coin
        closed = 0.0
        if inst.category == LINEAR:
            size = self.account.position(inst.symbol).size
            if size and (size > 0) != (order.side == "Buy"):
                closed = min(abs(size), qty)
            self.account.trade_linear(inst.symbol, inst.quote, order.side, qty, price, fee, at)
        else:
            self.account.trade_spot(inst.base, inst.quote, order.side, qty, value, fee, fee_coin)
        lot_decimals = decimals_of(inst.lot)
        order.cum_qty = round(order.cum_qty + qty, lot_decimals)
        order.cum_value = money(order.cum_value + value)
        order.cum_fee = money(order.cum_fee + fee)
        order.updated = at
        if not order.by_quote:
            order.status = "Filled" if order.cum_qty >= order.qty else "PartiallyFilled"
            if order.status == "Filled":
                self._close(order)
        seq = next(self._seq)
        exec_id = self._exec_id(seq)
        row: dict[str, Any] = {
            "symbol": inst.symbol, "orderId": order.order_id, "orderLinkId": order.link_id, "side": order.side,
            "orderType": order.order_type, "stopOrderType": "", "execType": "Trade", "execId": exec_id,
            "execPrice": num(price), "execQty": num(qty, lot_decimals), "execValue": num(value), "execFee": num(fee),
            "feeRate": num(rate), "feeCoin": fee_coin, "isMaker": maker, "execTime": str(at),
            "orderQty": num(order.qty, 8 if order.by_quote else lot_decimals), "orderPrice": num(order.price),
            "leavesQty": num(order.leaves, lot_decimals), "markPrice": num(self._price(inst, at)) if inst.category == LINEAR else "",
            "indexPrice": "", "underlyingPrice": "", "markIv": "", "tradeIv": "", "blockTradeId": "",
            "closedSize": num(closed, lot_decimals) if inst.category == LINEAR else "", "seq": str(seq), "extraFees": "",
        }
        if inst.category == LINEAR:
            row["createType"] = "CreateByUser"  # contract rows only: ccxt tells contract from spot by it
        self.executions.append(Execution(seq, inst.category, at, row))
        return exec_id

    def _close(self, order: Order) -> None:
        self.recent_closed.append(order.order_id)

    def _finish(self, order: Order, status: str, now: int, *, cancel_type: str = "UNKNOWN", reason: str = "") -> None:
        """End an open order; one cancelled after a fill is PartiallyFilledCanceled."""
        if status == "Cancelled" and order.cum_qty > 0:
            status = "PartiallyFilledCanceled"
        order.status, order.updated, order.cancel_type = status, now, cancel_type
        if reason:
            order.reject_reason = reason
        self._close(order)

    def cancel(self, params: Mapping[str, Any], now: int, *, cancel_type: str = "CancelByUser") -> Order:
        """``/v5/order/cancel``: by orderId, else orderLinkId; only an open order can be cancelled."""
        category = str(params.get("category", ""))
        self.instruments.get(category, str(params.get("symbol", "")))
        order = self.find(category, str(params.get("orderId") or ""), str(params.get("orderLinkId") or ""))
        if order is None or not order.is_open or order.instrument.symbol != params.get("symbol"):
            raise BybitError(_code("not_found", category), "Order does not exist.")
        self._finish(order, "Cancelled", now, cancel_type=cancel_type)
        return order

    # -- hooks
    def fill(self, link_id: str, qty: float | None, price: float | None, now: int) -> str:
        """Execute (part of) a resting order now, as maker; returns the execId."""
        order = self.by_link(link_id)
        if not order.is_open:
            raise ValueError(f"order {link_id!r} is {order.status}: only a resting order can be filled")
        qty = order.leaves if qty is None else floor_to(float(qty), order.instrument.lot)
        if not 0 < qty <= order.leaves:
            raise ValueError(f"fill quantity {qty} of order {link_id!r} must be positive and at most what is left "
                             f"({num(order.leaves)})")
        return self._execute(order, qty, order.price if price is None else float(price), maker=True, at=now)

    def cancel_from_exchange(self, link_id: str, now: int) -> None:
        order = self.by_link(link_id)
        if not order.is_open:
            raise ValueError(f"order {link_id!r} is {order.status}: only a resting order can be cancelled")
        self._finish(order, "Cancelled", now, cancel_type="CancelByAdmin")

    # -- time
    def advance(self, until: int) -> None:
        """Process every base bar that closed and every funding settlement in ``(processed_until,
        until]``, in time order (a bar closing at a settlement is matched before it is charged)."""
        start = self.processed_until
        if until <= start:
            return
        events: list[tuple[int, int, Instrument | None, Bar | None]] = []
        resting = {(o.category, o.instrument.symbol): o.instrument for o in self.open_orders()}
        for listed in resting.values():
            tf = self.market.timeframe(listed.symbol)
            for passed in self.market.base_bars(listed.category, listed.symbol, start - tf + 1, until - tf + 1):
                events.append((passed.ts_open + tf, 0, listed, passed))
        if any(p.size for p in self.account.positions.values()) or any(i.category == LINEAR for i in resting.values()):
            first = max((start // FUNDING_INTERVAL + 1) * FUNDING_INTERVAL, self.market.funding_start)
            events.extend((ts, 1, None, None) for ts in range(first, until + 1, FUNDING_INTERVAL))
        events.sort(key=lambda event: (event[0], event[1]))
        for at, _, inst, bar in events:
            if inst is not None and bar is not None:
                self._match_bar(inst, bar, at)
            else:
                self._settle_funding(at)
        self.processed_until = until

    def _match_bar(self, inst: Instrument, bar: Bar, close: int) -> None:
        for order in [o for o in self.open_orders() if o.instrument is inst and o.created < close]:
            if order.side == "Buy" and bar.low <= order.price:
                price = min(bar.open, order.price)
            elif order.side == "Sell" and bar.high >= order.price:
                price = max(bar.open, order.price)
            else:
                continue
            qty = order.leaves
            if order.reduce_only:
                size = self.account.position(inst.symbol).size
                if size == 0 or (size > 0) == (order.side == "Buy"):
                    self._finish(order, "Cancelled", close, cancel_type="CancelByReduceOnly")
                    continue
                qty = min(qty, abs(size))
            if not order.split and qty > inst.lot:
                fraction = self._partial_fraction()
                if fraction is not None:
                    order.split = True
                    qty = max(inst.lot, floor_to(qty * fraction, inst.lot))
            self._execute(order, qty, price, maker=True, at=close)
            if order.is_open and order.reduce_only and not self.account.position(inst.symbol).size:
                self._finish(order, "Cancelled", close, cancel_type="CancelByReduceOnly")

    def _settle_funding(self, at: int) -> None:
        for symbol, position in self.account.positions.items():
            inst = self.instruments.find(LINEAR, symbol)
            if not position.size or inst is None:
                continue
            mark, rate = self.market.mark_before(symbol, at), self.market.funding_rate(at)
            size, side = abs(position.size), position.side
            fee = self.account.settle_funding(symbol, inst.quote, mark, rate, at)
            seq = next(self._seq)
            row = {
                "symbol": symbol, "orderId": "", "orderLinkId": "", "side": side, "orderType": "UNKNOWN",
                "stopOrderType": "UNKNOWN", "execType": "Funding", "execId": self._exec_id(seq), "execPrice": num(mark),
                "execQty": num(size, decimals_of(inst.lot)), "execValue": num(money(size * mark)), "execFee": num(fee),
                "feeRate": num(rate, 8), "feeCoin": inst.quote, "isMaker": False, "execTime": str(at),
                "orderQty": "0", "orderPrice": "0", "leavesQty": "0", "markPrice": num(mark), "indexPrice": "",
                "underlyingPrice": "", "markIv": "", "tradeIv": "", "blockTradeId": "", "closedSize": "", "seq": str(seq),
                "extraFees": "", "createType": "",
            }
            self.executions.append(Execution(seq, LINEAR, at, row))
