"""Figures of a recorded run, computed from what the store holds (never from the broker or the data
files): the engine's own metrics, buy-and-hold, drawdown, costs over time, positions over time and
monthly returns. A run that did not finish is measured over what it recorded."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from engine.metrics import Metrics, compute_metrics
from engine.portfolio import Ledgers
from engine.store.queries import RunData


def cost_totals(data: RunData) -> Ledgers:
    """Summed in the order the portfolio summed them, so they equal its ledgers to the last bit."""
    fees = spread = slippage = funding = 0.0
    for f in data.fills:
        fees += f.fee
        spread += f.spread_cost
        slippage += f.slippage_cost
    for p in data.funding:
        funding += p.amount
    return Ledgers(fees, spread, slippage, funding)


def buy_and_hold_return(data: RunData) -> float | None:
    """Equal-weight price return from the first recorded close to the last (as the engine reports it)."""
    rets = [float(c[-1] / c[0] - 1.0) for _, c in data.prices.values() if len(c) > 1]
    return float(np.mean(rets)) if rets else None


def run_metrics(data: RunData) -> Metrics | None:
    if not len(data.equity):
        return None
    return compute_metrics(ts=data.equity_ts, equity=data.equity, gross_exposure=data.gross_exposure,
                           fills=data.fills, starting_equity=data.info.starting_cash,
                           costs=cost_totals(data).as_dict(), buy_and_hold_return=buy_and_hold_return(data))


def buy_and_hold_curve(data: RunData) -> np.ndarray | None:
    """Starting cash held equally in every symbol from its first close, at each equity time."""
    ts = data.equity_ts
    parts = []
    for pts, closes in data.prices.values():
        if not len(closes):
            continue
        idx = np.clip(np.searchsorted(pts, ts, side="right") - 1, 0, len(closes) - 1)
        parts.append(closes[idx] / closes[0])
    if not parts or not len(ts):
        return None
    return data.info.starting_cash * np.mean(parts, axis=0)


def drawdown(equity: np.ndarray, start: float) -> np.ndarray:
    """Equity / running peak - 1 at each point (the starting cash counts as the first peak)."""
    if not len(equity):
        return equity
    peak = np.maximum.accumulate(np.concatenate(([start], equity)))[1:]
    return equity / peak - 1.0


def positions_over_time(data: RunData) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Signed quantity held per symbol after each fill: (fill times, quantities), from the fills."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    held: dict[str, float] = {}
    for f in data.fills:
        q = held.get(f.symbol, 0.0) + f.signed_quantity
        if abs(q) <= 1e-12 * f.quantity:
            q = 0.0
        held[f.symbol] = q
        ts, qs = out.setdefault(f.symbol, ([], []))
        ts.append(f.ts_event)
        qs.append(q)
    return {s: (np.array(t, dtype=np.int64), np.array(q)) for s, (t, q) in out.items()}


def cumulative_costs(data: RunData) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each cost ledger as (times, cumulative amount)."""
    out = {}
    if data.fills:
        ts = np.array([f.ts_event for f in data.fills], dtype=np.int64)
        for name, values in (("fees", [f.fee for f in data.fills]), ("spread", [f.spread_cost for f in data.fills]),
                             ("slippage", [f.slippage_cost for f in data.fills])):
            out[name] = (ts, np.cumsum(values))
    if data.funding:
        out["funding"] = (np.array([p.ts_event for p in data.funding], dtype=np.int64),
                          np.cumsum([p.amount for p in data.funding]))
    return out


def to_datetime(ts: np.ndarray) -> np.ndarray:
    return np.asarray(ts, dtype=np.int64).astype("datetime64[ms]")


def period_returns(data: RunData, freq: str) -> pd.Series:
    """Returns per calendar period (``"ME"`` month ends, ``"YE"`` year ends) of the equity curve,
    the first period measured from the starting cash."""
    if not len(data.equity):
        return pd.Series(dtype=float)
    series = pd.Series(data.equity, index=pd.DatetimeIndex(to_datetime(data.equity_ts)))
    ends = series.resample(freq).last().dropna()
    previous = ends.shift(1)
    previous.iloc[0] = data.info.starting_cash
    return ends / previous - 1.0


def monthly_table(data: RunData) -> pd.DataFrame:
    """Monthly returns as a year x month table (NaN where the run did not cover the month), with
    each year's compounded return in a ``Year`` column."""
    monthly = period_returns(data, "ME")
    if monthly.empty:
        return pd.DataFrame()
    frame = pd.DataFrame({"year": monthly.index.year, "month": monthly.index.month, "r": monthly.to_numpy()})
    table = frame.pivot(index="year", columns="month", values="r").reindex(columns=range(1, 13))
    table["Year"] = (1.0 + table.iloc[:, :12].fillna(0.0)).prod(axis=1) - 1.0
    return table


SIGNAL_ACTIONS = ("open", "resize", "flip", "close", "hold", "flat", "halted")  # the decisions the LLM strategy records


def signal_entry_move(data: RunData) -> np.ndarray | None:
    """The expected move each recorded decision needed to open, grow or flip a position: the enter
    threshold the run used x the round-trip cost in the move's direction (a fraction of the
    notional), or None when the run's strategy has no ``enter_threshold`` or recorded no costs.

    The threshold is the one in the run's summary (``gate``: the LLM strategy chooses it by
    after-cost backtests before its cut), else the config's. A decision entered only where
    |expected move| reached it; the strategy's score is sizing, not the gate, so the band belongs on
    the move's scale. (On a perpetual the funding part of the cost to keep a position the other way
    differs a little.)"""
    signals = data.signals
    gate = (data.info.summary or {}).get("gate")
    threshold = gate.get("enter_threshold") if isinstance(gate, dict) else None
    if threshold is None:
        params = data.info.config.get("strategies", {}).get(data.info.strategy, {})
        threshold = params.get("enter_threshold") if isinstance(params, dict) else None
    if threshold is None or not len(signals) or np.isnan(signals.cost).all():
        return None
    return float(threshold) * signals.cost


def signal_table(data: RunData) -> dict[str, Any]:
    """The signals' summary: how many, the decisions taken (every known action, zeros included),
    the mean confidence and the share of signals whose news component had a headline to go on."""
    signals = data.signals
    actions = dict.fromkeys(SIGNAL_ACTIONS, 0)
    actions.update(Counter(action or "not recorded" for action in signals.action))
    confidence = signals.confidence[np.isfinite(signals.confidence)]
    return {"signals": len(signals), "actions": actions,
            "mean_confidence": float(confidence.mean()) if len(confidence) else None,
            "news_share": float(np.isfinite(signals.news).mean()) if len(signals) else None}
