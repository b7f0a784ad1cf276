"""Conversions between ``engine.domain`` values and store rows.

Writing uses plain dicts keyed by column name (bulk ``insert()`` of many rows at once); reading
turns rows back into the domain values, so metrics and reports work on the same types as the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.domain import Fill, FundingPayment, Liquidity, News, Order, OrderType, Side

_SIDE = {Side.BUY: "buy", Side.SELL: "sell"}
_SIDE_BACK = {"buy": Side.BUY, "sell": Side.SELL}


def side_text(side: Side) -> str:
    return _SIDE[side]


def order_row(run_pk: int, order: Order, status: str) -> dict[str, Any]:
    return {
        "run_pk": run_pk, "client_order_id": order.client_order_id, "exchange_order_id": None,
        "symbol": order.symbol, "side": _SIDE[order.side], "type": str(order.type), "quantity": order.quantity,
        "limit_price": order.limit_price, "stop_price": order.stop_price, "tag": order.tag,
        "ts_init": order.ts_init, "status": status, "reject_reason": None, "filled_quantity": 0.0,
        "ts_updated": order.ts_init, "attempts": 0, "sent_ms": None,
    }


def order_from_row(row: Mapping[str, Any]) -> Order:
    return Order(client_order_id=row["client_order_id"], symbol=row["symbol"], side=_SIDE_BACK[row["side"]],
                 type=OrderType(row["type"]), quantity=row["quantity"], ts_init=row["ts_init"],
                 limit_price=row["limit_price"], stop_price=row["stop_price"], tag=row["tag"])


def fill_row(run_pk: int, fill: Fill, seq: int | None = None) -> dict[str, Any]:
    return {
        "run_pk": run_pk, "seq": seq, "client_order_id": fill.client_order_id, "symbol": fill.symbol, "side": _SIDE[fill.side],
        "order_type": str(fill.order_type), "quantity": fill.quantity, "price": fill.price,
        "reference_price": fill.reference_price, "fee": fill.fee, "fee_currency": fill.fee_currency,
        "liquidity": str(fill.liquidity), "spread_cost": fill.spread_cost, "slippage_cost": fill.slippage_cost,
        "ts_event": fill.ts_event, "trade_id": fill.trade_id,
    }


def fill_from_row(row: Mapping[str, Any]) -> Fill:
    return Fill(client_order_id=row["client_order_id"], symbol=row["symbol"], side=_SIDE_BACK[row["side"]],
                quantity=row["quantity"], price=row["price"], reference_price=row["reference_price"],
                fee=row["fee"], liquidity=Liquidity(row["liquidity"]), spread_cost=row["spread_cost"],
                slippage_cost=row["slippage_cost"], ts_event=row["ts_event"],
                order_type=OrderType(row["order_type"]), fee_currency=row["fee_currency"],
                trade_id=row.get("trade_id"))


def funding_row(run_pk: int, payment: FundingPayment, seq: int | None = None) -> dict[str, Any]:
    return {"run_pk": run_pk, "seq": seq, "symbol": payment.symbol, "ts_event": payment.ts_event, "rate": payment.rate,
            "mark_price": payment.mark_price, "position_quantity": payment.position_quantity,
            "amount": payment.amount, "trade_id": payment.trade_id}


def funding_from_row(row: Mapping[str, Any]) -> FundingPayment:
    return FundingPayment(symbol=row["symbol"], ts_event=row["ts_event"], rate=row["rate"],
                          mark_price=row["mark_price"], position_quantity=row["position_quantity"],
                          amount=row["amount"], trade_id=row.get("trade_id"))


def news_row(run_pk: int, news: News) -> dict[str, Any]:
    return {"run_pk": run_pk, "ts_event": news.ts_event, "symbol": news.symbol, "headline": news.headline,
            "source": news.source}


def news_from_row(row: Mapping[str, Any]) -> News:
    return News(ts_event=row["ts_event"], headline=row["headline"], symbol=row["symbol"], source=row["source"])
