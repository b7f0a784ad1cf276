"""Performance metrics of a finished run: returns, risk, drawdowns, round trips and costs.

The equity-based metrics are vectorised numpy (a million bars take milliseconds); the round trips
come from a plain loop over the fills, which are few.

Per-period returns are taken over ``[starting_equity, *equity]`` so the first bar's move counts.
The starting point is stamped one median bar spacing before ``ts[0]`` (the first bar's open),
which is also why the elapsed time is ``ts[-1] - ts[0] + spacing``.

Annualisation uses the *observed* frequency, ``periods_per_year = returns / elapsed years``, rather
than a constant picked from the timeframe: hourly bars of a 24/7 crypto market give ~8760, daily
bars of an exchange that closes at weekends and holidays give ~252, and a feed with gaps is not
over-annualised. A fixed 365 * 24 would inflate the volatility of a weekday-only hourly stock
feed; a fixed 252 would understate that of daily crypto bars.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np

from engine.domain import Fill
from engine.timeutil import MS_PER_YEAR

COST_KEYS = ("fees", "slippage", "spread", "funding")
_DUST = 1e-9  # position size, relative to the fill, below which a symbol counts as flat
_FLAT_STD = 1e-12  # per-period standard deviation below which returns count as constant


@dataclass(frozen=True, slots=True)
class Metrics:
    """Summary of one run. Ratios are ``None`` where they are undefined (no variation, no losses),
    never a fabricated 0 or infinity."""

    total_return: float  # final / start - 1
    annualized_return: float  # CAGR over the elapsed calendar time; -1.0 once equity hits 0
    volatility: float  # annualised sample std (ddof=1) of per-period simple returns
    sharpe: float | None  # annualised mean / std of per-period returns, risk-free rate 0
    sortino: float | None  # annualised mean / sqrt(mean(min(r, 0)^2))
    max_drawdown: float  # most negative equity / running peak - 1, in [-1, 0]
    max_drawdown_duration_ms: int  # longest peak -> recovery (or peak -> end if never recovered)
    calmar: float | None  # annualized_return / |max_drawdown|
    round_trips: int  # closed flat -> position -> flat trips, all symbols
    win_rate: float | None  # share of closed trips with net P&L > 0
    profit_factor: float | None  # winning P&L / |losing P&L|; None without a losing trip
    exposure: float  # share of equity points with any position held
    turnover: float  # traded notional at reference prices / mean equity
    gross_return: float  # total_return + all costs / starting equity
    cost_returns: dict[str, float]  # each cost ledger / starting equity (positive = lost)
    buy_and_hold_return: float | None
    periods_per_year: float

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-safe dict: floats kept as they are, NaN and infinities become ``None``."""
        out: dict[str, object] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, dict):
                value = {key: _finite_or_none(v) for key, v in value.items()}
            elif isinstance(value, float):
                value = _finite_or_none(value)
            out[field.name] = value
        return out


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def compute_metrics(
    *,
    ts: np.ndarray,
    equity: np.ndarray,
    gross_exposure: np.ndarray,
    fills: Sequence[Fill],
    starting_equity: float,
    costs: Mapping[str, float],
    buy_and_hold_return: float | None = None,
) -> Metrics:
    """Compute every metric of a run.

    ``ts`` (int epoch ms, strictly ascending), ``equity`` and ``gross_exposure`` hold one value per
    bar-close time. ``costs`` maps the ledgers ``fees``, ``slippage``, ``spread`` and ``funding``
    (quote currency, positive = paid) to their totals; a missing ledger counts as 0. ``fills``
    must be in execution order. With fewer than two points there is no frequency to annualise
    with, so the annualised figures are 0 or ``None``.
    """
    ts = np.asarray(ts, dtype=np.int64)
    equity = np.asarray(equity, dtype=np.float64)
    gross_exposure = np.asarray(gross_exposure, dtype=np.float64)
    _validate(ts, equity, gross_exposure, starting_equity, costs)
    start = float(starting_equity)
    n = len(equity)

    spacing = int(np.median(np.diff(ts))) if n >= 2 else 0
    years = (int(ts[-1]) - int(ts[0]) + spacing) / MS_PER_YEAR if n >= 2 else 0.0
    periods_per_year = n / years if years > 0 else 0.0

    curve = np.concatenate(([start], equity))
    final = float(curve[-1])
    total_return = final / start - 1.0
    annualized = _cagr(final / start, years)
    returns = _period_returns(curve)
    volatility, sharpe, sortino = _risk_ratios(returns, periods_per_year)
    times = np.concatenate(([int(ts[0]) - spacing], ts)) if n else np.zeros(1, dtype=np.int64)
    max_dd, max_dd_ms = _drawdown(curve, times)

    trips = _round_trip_pnls(fills)
    wins = sum(p for p in trips if p > 0)
    losses = sum(p for p in trips if p < 0)
    mean_equity = float(equity.mean()) if n else start
    notional = sum(f.notional for f in fills)
    cost_returns = {key: float(costs.get(key, 0.0)) / start for key in COST_KEYS}

    return Metrics(
        total_return=total_return,
        annualized_return=annualized,
        volatility=volatility,
        sharpe=sharpe,
        sortino=sortino,
        max_drawdown=max_dd,
        max_drawdown_duration_ms=max_dd_ms,
        calmar=annualized / abs(max_dd) if max_dd < 0 else None,
        round_trips=len(trips),
        win_rate=sum(p > 0 for p in trips) / len(trips) if trips else None,
        profit_factor=wins / -losses if losses < 0 else None,
        exposure=float(np.count_nonzero(gross_exposure > 0)) / n if n else 0.0,
        turnover=notional / mean_equity if mean_equity > 0 else math.nan,
        gross_return=total_return + sum(cost_returns.values()),
        cost_returns=cost_returns,
        buy_and_hold_return=buy_and_hold_return,
        periods_per_year=periods_per_year,
    )


def _validate(
    ts: np.ndarray, equity: np.ndarray, exposure: np.ndarray, start: float, costs: Mapping[str, float]
) -> None:
    """Refuse inputs that would give silently wrong numbers rather than an error."""
    if not start > 0:
        raise ValueError(f"starting equity must be positive, got {start}")
    if ts.ndim != 1 or ts.shape != equity.shape or ts.shape != exposure.shape:
        raise ValueError(
            f"ts, equity and gross_exposure must be 1-D and equally long, got shapes "
            f"{ts.shape}, {equity.shape}, {exposure.shape}"
        )
    if len(ts) >= 2 and not bool(np.all(np.diff(ts) > 0)):
        raise ValueError("ts must be strictly ascending (one equity point per bar-close time)")
    unknown = set(costs) - set(COST_KEYS)
    if unknown:
        raise ValueError(f"unknown cost ledgers {sorted(unknown)}; expected some of {list(COST_KEYS)}")


def _cagr(growth: float, years: float) -> float:
    """Compound annual growth; -1.0 once the account is wiped out, 0.0 without elapsed time.
    Very short, very profitable runs overflow to ``inf`` instead of raising."""
    if growth <= 0:
        return -1.0
    if years <= 0:
        return 0.0
    with np.errstate(over="ignore"):
        return float(np.expm1(math.log(growth) / years))


def _period_returns(curve: np.ndarray) -> np.ndarray:
    """Simple returns between consecutive points. Equity below zero is read as zero (a loss of
    at most -100%), and a period starting at or below zero has return 0: nothing is left to lose."""
    prev = curve[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(prev > 0, np.maximum(curve[1:], 0.0) / prev - 1.0, 0.0)


def _risk_ratios(returns: np.ndarray, periods_per_year: float) -> tuple[float, float | None, float | None]:
    """(volatility, sharpe, sortino), annualised by ``sqrt(periods_per_year)``."""
    if len(returns) < 2 or periods_per_year <= 0:
        return 0.0, None, None
    scale = math.sqrt(periods_per_year)
    mean = float(returns.mean())
    std = float(returns.std(ddof=1))
    downside = math.sqrt(float(np.mean(np.minimum(returns, 0.0) ** 2)))
    sharpe = mean / std * scale if std > _FLAT_STD else None
    sortino = mean / downside * scale if downside > 0 else None
    return std * scale, sharpe, sortino


def _drawdown(curve: np.ndarray, times: np.ndarray) -> tuple[float, int]:
    """(max drawdown, longest drawdown duration in ms).

    A drawdown spell runs from the last running peak until the first point back at or above it,
    or until the last point when equity never regains it. Every spell's length is measured at
    the point that follows each underwater point, which includes its recovery point.
    """
    peak = np.maximum.accumulate(curve)  # peak >= starting equity > 0
    depth = curve / peak - 1.0
    max_dd = max(float(depth.min()), -1.0)  # equity below zero loses at most everything
    under = curve < peak
    if len(curve) < 2 or not under.any():
        return max_dd, 0
    peak_idx = np.maximum.accumulate(np.where(under, 0, np.arange(len(curve))))
    lengths = times[1:] - times[peak_idx[:-1]]
    in_spell = under[1:] | under[:-1]
    return max_dd, int(lengths[in_spell].max())


def _round_trip_pnls(fills: Sequence[Fill]) -> list[float]:
    """Net P&L of each closed round trip, in the order they closed.

    A trip's P&L is the cash it moved, ``sum(-signed_quantity * price - fee)``, so spread,
    slippage and fees are in it (funding is not: it is not tied to a fill). A fill that takes the
    position through zero is split pro rata, quantity and fee, between closing the old trip and
    opening the next. Trips still open at the end are not returned.
    """
    position: dict[str, float] = {}
    open_pnl: dict[str, float] = {}
    closed: list[float] = []
    for fill in fills:
        old = position.get(fill.symbol, 0.0)
        pnl = open_pnl.get(fill.symbol, 0.0)
        delta = fill.signed_quantity
        new = old + delta
        tolerance = _DUST * max(abs(old), fill.quantity)
        if old != 0.0 and abs(new) > tolerance and (new > 0) != (old > 0):  # flip through zero
            closing_share = abs(old) / abs(delta)
            closed.append(pnl + old * fill.price - fill.fee * closing_share)
            pnl = -new * fill.price - fill.fee * (1.0 - closing_share)
        else:
            pnl += -delta * fill.price - fill.fee
            if old != 0.0 and abs(new) <= tolerance:
                closed.append(pnl)
                new, pnl = 0.0, 0.0
        position[fill.symbol] = new
        open_pnl[fill.symbol] = pnl
    return closed
