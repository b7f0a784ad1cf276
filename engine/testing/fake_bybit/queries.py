"""The account's read endpoints: open and closed orders, executions, positions, wallet, fee rates.

Bybit's rules that a client must cope with, kept here:

- ``/v5/order/realtime`` lists open orders; the recently closed ones (at most ``recent_closed_limit``,
  the list Bybit clears when it restarts its services) only when the query names an order
  (``orderId``/``orderLinkId``) or asks for them (``openOnly`` 1), as Bybit's docs describe. An empty
  list is a valid answer (ccxt turns it into OrderNotFound).
- ``/v5/order/history`` and ``/v5/execution/list`` answer one window of at most 7 days (of creation /
  execution time): ``startTime`` alone means the 7 days after it, ``endTime`` alone the 7 days
  before it, neither the last 7 days of market time; a longer window is retCode 10001.
- Lists are newest first and paged by an opaque ``cursor``; ``nextPageCursor`` is "" on the last page.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from engine.testing.fake_bybit.instruments import CATEGORIES, LINEAR, SPOT
from engine.testing.fake_bybit.market import DAY
from engine.testing.fake_bybit.matching import Matching, Order
from engine.testing.fake_bybit.wire import BybitError, decimals_of, int_param, money, num

WEEK = 7 * DAY
MAINTENANCE_RATE = 0.005  # positionMM as a share of the position value (Bybit's lowest risk tier)
STABLE = ("USDT", "USDC", "USD")


def _category(q: Mapping[str, str], allowed: Iterable[str] = CATEGORIES) -> str:
    category = q.get("category", "")
    if category not in allowed:
        raise BybitError(10001, f"category {category!r} is invalid here: one of {', '.join(allowed)}")
    return category


def _limit(q: Mapping[str, str], default: int, maximum: int) -> int:
    limit = int_param(q, "limit")
    if limit is None:
        return default
    if not 1 <= limit <= maximum:
        raise BybitError(10001, f"limit {limit} is invalid: between 1 and {maximum}")
    return limit


def window(q: Mapping[str, str], now: int) -> tuple[int, int]:
    """The ``[start, end]`` a history query covers (Bybit's 7-day rule)."""
    start, end = int_param(q, "startTime"), int_param(q, "endTime")
    if start is not None and end is not None:
        if end < start:
            raise BybitError(10001, f"endTime {end} is before startTime {start}")
        if end - start > WEEK:
            raise BybitError(10001, "The time range between startTime and endTime cannot exceed 7 days "
                                    f"({(end - start) / DAY:.1f} days asked)")
        return start, end
    if start is not None:
        return start, start + WEEK
    if end is not None:
        return end - WEEK, end
    return now - WEEK, now


def _page(rows: list[tuple[int, dict[str, Any]]], q: Mapping[str, str], limit: int) -> tuple[list[dict[str, Any]], str]:
    """Rows (seq, row), newest first, after the cursor; the cursor is the seq of a page's last row."""
    cursor = q.get("cursor", "")
    if cursor:
        if not cursor.isdigit():
            raise BybitError(10001, f"cursor {cursor!r} is invalid: pass back a nextPageCursor unchanged")
        rows = [r for r in rows if r[0] < int(cursor)]
    page = rows[:limit]
    return [row for _, row in page], str(page[-1][0]) if len(rows) > limit else ""


def _matches(order: Order, q: Mapping[str, str]) -> bool:
    inst = order.instrument
    return ((not q.get("symbol") or inst.symbol == q["symbol"])
            and (not q.get("orderId") or order.order_id == q["orderId"])
            and (not q.get("orderLinkId") or order.link_id == q["orderLinkId"])
            and (not q.get("settleCoin") or inst.quote == q["settleCoin"])
            and (not q.get("baseCoin") or inst.base == q["baseCoin"]))


def realtime(m: Matching, q: Mapping[str, str]) -> dict[str, Any]:
    category = _category(q)
    if category == LINEAR and not (q.get("symbol") or q.get("settleCoin") or q.get("baseCoin")):
        raise BybitError(10001, "Missing some parameters that must be filled in: symbol, settleCoin or baseCoin")
    if q.get("orderFilter", "Order") != "Order":
        return {"category": category, "list": [], "nextPageCursor": ""}
    open_only = q.get("openOnly", "0")
    closed = [m.orders[oid] for oid in m.recent_closed]
    if open_only != "0":
        candidates = closed
    elif q.get("orderId") or q.get("orderLinkId"):
        candidates = [*m.open_orders(), *closed]
    else:
        candidates = list(m.open_orders())
    rows = sorted(((o.seq, o.to_bybit()) for o in candidates if o.category == category and _matches(o, q)),
                  key=lambda r: -r[0])
    page, cursor = _page(rows, q, _limit(q, 20, 50))
    return {"category": category, "list": page, "nextPageCursor": cursor}


def history(m: Matching, q: Mapping[str, str], now: int) -> dict[str, Any]:
    category = _category(q)
    start, end = window(q, now)
    statuses = set(filter(None, q.get("orderStatus", "").split(",")))
    rows = sorted(((o.seq, o.to_bybit()) for o in m.orders.values()
                   if not o.is_open and o.category == category and _matches(o, q) and start <= o.created <= end
                   and (not statuses or o.status in statuses)), key=lambda r: -r[0])
    page, cursor = _page(rows, q, _limit(q, 20, 50))
    return {"category": category, "list": page, "nextPageCursor": cursor}


def executions(m: Matching, q: Mapping[str, str], now: int) -> dict[str, Any]:
    category = _category(q)
    start, end = window(q, now)
    rows = sorted(((e.seq, dict(e.row)) for e in m.executions
                   if e.category == category and start <= e.at <= end
                   and (not q.get("execType") or e.row["execType"] == q["execType"])
                   and all(not q.get(key) or e.row[key] == q[key] for key in ("symbol", "orderId", "orderLinkId"))),
                  key=lambda r: -r[0])
    page, cursor = _page(rows, q, _limit(q, 50, 100))
    return {"category": category, "list": page, "nextPageCursor": cursor}


def _mark(m: Matching, symbol: str, now: int) -> float:
    return m.market.price(LINEAR, symbol, now)


def position_row(m: Matching, symbol: str, now: int) -> dict[str, Any]:
    inst = m.instruments.get(LINEAR, symbol)
    position = m.account.position(symbol)
    mark = _mark(m, symbol, now)
    size = abs(position.size)
    margin = position.initial_margin()
    return {
        "positionIdx": 0, "riskId": 1, "riskLimitValue": "2000000", "symbol": symbol, "side": position.side,
        "size": num(size, decimals_of(inst.lot)), "avgPrice": num(position.avg_price) if size else "0",
        "positionValue": num(money(size * position.avg_price)) if size else "", "tradeMode": 0,
        "positionStatus": "Normal", "autoAddMargin": 0, "adlRankIndicator": 2 if size else 0,
        "leverage": num(position.leverage), "positionBalance": num(money(margin)), "markPrice": num(mark),
        "liqPrice": "", "bustPrice": "", "positionMM": num(money(size * mark * MAINTENANCE_RATE)),
        "positionIM": num(money(margin)), "tpslMode": "Full", "takeProfit": "", "stopLoss": "", "trailingStop": "0",
        "unrealisedPnl": num(money(position.unrealised(mark))) if size else "",
        "curRealisedPnl": num(position.cur_realised), "cumRealisedPnl": num(position.cum_realised), "seq": "0",
        "isReduceOnly": False, "mmrSysUpdatedTime": "", "leverageSysUpdatedTime": "", "sessionAvgPrice": "",
        "createdTime": str(position.created or now), "updatedTime": str(position.updated or now),
    }


def positions(m: Matching, q: Mapping[str, str], now: int) -> dict[str, Any]:
    category = _category(q, (LINEAR,))
    if q.get("symbol"):
        symbols = [q["symbol"]]
    elif q.get("settleCoin") or q.get("baseCoin"):
        symbols = [s for s, p in m.account.positions.items() if p.size
                   and (inst := m.instruments.find(LINEAR, s)) is not None
                   and inst.quote == q.get("settleCoin", inst.quote) and inst.base == q.get("baseCoin", inst.base)]
    else:
        raise BybitError(10001, "Missing some parameters that must be filled in: symbol, settleCoin or baseCoin")
    rows = [position_row(m, s, now) for s in sorted(symbols)][: _limit(q, 20, 200)]
    return {"category": category, "list": rows, "nextPageCursor": ""}


def _usd_price(m: Matching, coin: str, now: int) -> float:
    if coin in STABLE:
        return 1.0
    inst = m.instruments.find(SPOT, coin + "USDT")
    return m.market.price(SPOT, inst.symbol, now) if inst is not None else 0.0


def coin_row(m: Matching, coin: str, now: int) -> dict[str, Any]:
    wallet = m.account.balance(coin)
    upnl = money(sum(p.unrealised(_mark(m, s, now)) for s, p in m.account.positions.items()
                     if p.size and (inst := m.instruments.find(LINEAR, s)) is not None and inst.quote == coin))
    mm = money(sum(abs(p.size) * _mark(m, s, now) * MAINTENANCE_RATE for s, p in m.account.positions.items()
                   if p.size and (inst := m.instruments.find(LINEAR, s)) is not None and inst.quote == coin))
    equity = money(wallet + upnl)
    return {
        "coin": coin, "equity": num(equity), "usdValue": num(money(equity * _usd_price(m, coin, now))),
        "walletBalance": num(wallet), "locked": num(m.spot_locked(coin)), "spotHedgingQty": "0",
        "borrowAmount": "0", "accruedInterest": "0", "totalOrderIM": num(m.order_margin(coin)),
        "totalPositionIM": num(m.position_margin(coin)), "totalPositionMM": num(mm), "unrealisedPnl": num(upnl),
        "cumRealisedPnl": num(m.account.realised.get(coin, 0.0)), "bonus": "0", "marginCollateral": True,
        "collateralSwitch": True, "availableToWithdraw": "", "availableToBorrow": "",
    }


def wallet_balance(m: Matching, q: Mapping[str, str], now: int) -> dict[str, Any]:
    """The UNIFIED account. ``availableToWithdraw`` is "" (deprecated by Bybit for UTA), so ccxt
    computes free as walletBalance - locked - totalPositionIM - totalOrderIM."""
    if q.get("accountType") != "UNIFIED":
        raise BybitError(10001, f"accountType {q.get('accountType')!r} is invalid: this fake account is UNIFIED")
    wanted = set(filter(None, q.get("coin", "").split(",")))
    coins = [coin_row(m, c, now) for c in m.account.wallet if not wanted or c in wanted]
    usd = {row["coin"]: _usd_price(m, row["coin"], now) for row in coins}

    def total(field: str) -> str:
        return num(money(sum(float(row[field]) * usd[row["coin"]] for row in coins)))

    available = money(sum(m.available(row["coin"]) * usd[row["coin"]] for row in coins))
    account = {
        "accountType": "UNIFIED", "accountIMRate": "0", "accountMMRate": "0", "accountLTV": "0",
        "totalEquity": total("equity"), "totalWalletBalance": total("walletBalance"),
        "totalMarginBalance": total("equity"), "totalAvailableBalance": num(available),
        "totalPerpUPL": total("unrealisedPnl"), "totalInitialMargin": total("totalPositionIM"),
        "totalMaintenanceMargin": total("totalPositionMM"), "coin": coins,
    }
    return {"list": [account]}


def fee_rates(m: Matching, q: Mapping[str, str]) -> dict[str, Any]:
    category = _category(q)
    rows = [{"symbol": inst.symbol, "baseCoin": inst.base if category == SPOT else "",
             "takerFeeRate": num(m.fees.rate(category, maker=False)), "makerFeeRate": num(m.fees.rate(category, maker=True))}
            for inst in m.instruments.listed(category) if not q.get("symbol") or inst.symbol == q["symbol"]]
    return {"category": category, "list": rows}
