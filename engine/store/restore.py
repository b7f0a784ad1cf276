"""Rebuilding a run's state from the store, for a daemon that restarts.

- ``restore_portfolio``: cash, positions and every cost ledger, by replaying the recorded fills and
  funding payments through ``Portfolio`` in the order the run applied them (their ``seq``), and
  marking each position at the last recorded close. The result equals the portfolio that recorded
  them, to the last bit.
- ``restore_orders``: the run's orders with their status and filled quantity, as an ``OrderBook``,
  and every client order id used, so the restarted context never hands one out again.

For paper trading the store is the source of truth; live trading reconciles it with the exchange
afterwards (``LIVE.md``).
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import select

from engine.domain import OrderStatus
from engine.kernel import Restored
from engine.orders import OrderBook, OrderState
from engine.portfolio import Portfolio
from engine.store.convert import fill_from_row, funding_from_row, order_from_row
from engine.store.db import Store
from engine.store.models import FillRow, FundingRow, OrderRow, PriceChunk, Run
from engine.store.queries import RunInfo


def restore_portfolio(store: Store, info: RunInfo) -> Portfolio:
    with store.read() as conn:
        starting_cash = conn.scalar(select(Run.starting_cash).where(Run.pk == info.pk))
        fills = [(r["seq"], r["ts_event"], 0, r["id"], fill_from_row(r)) for r in conn.execute(
            select(FillRow.__table__).where(FillRow.run_pk == info.pk)).mappings()]
        funding = [(r["seq"], r["ts_event"], 1, r["id"], funding_from_row(r)) for r in conn.execute(
            select(FundingRow.__table__).where(FundingRow.run_pk == info.pk)).mappings()]
        closes = {}
        for symbol in info.symbols:
            chunk = conn.execute(select(PriceChunk.close).where(PriceChunk.run_pk == info.pk,
                                                                PriceChunk.symbol == symbol)
                                 .order_by(PriceChunk.ts_last.desc()).limit(1)).scalar()
            if chunk:
                closes[symbol] = float(np.frombuffer(chunk, "<f8")[-1])
    portfolio = Portfolio(starting_cash)
    # Runs recorded before events carried a sequence replay in time order, fills before funding.
    events = sorted(fills + funding, key=lambda e: (e[0] is None, e[0] or 0, e[1], e[2], e[3]))
    for _, _, kind, _, event in events:
        if kind == 0:
            portfolio.apply_fill(event)
        else:
            portfolio.apply_funding(event)
    for symbol, close in closes.items():
        portfolio.mark(symbol, close)
    return portfolio


def restore_orders(store: Store, info: RunInfo) -> OrderBook:
    with store.read() as conn:
        rows = conn.execute(select(OrderRow.__table__).where(OrderRow.run_pk == info.pk)
                            .order_by(OrderRow.ts_init)).mappings().all()
    return OrderBook.restore(OrderState(order_from_row(r), OrderStatus(r["status"]), r["filled_quantity"],
                                        r["ts_updated"]) for r in rows)


def restored_state(store: Store, info: RunInfo) -> Restored:
    """What ``engine.kernel.assemble`` needs to carry on with an earlier process's run."""
    book = restore_orders(store, info)
    return Restored(portfolio=restore_portfolio(store, info), order_ids=frozenset(book.ids()), book=book)
