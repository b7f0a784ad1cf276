"""How good a return forecast is, with standard errors that respect overlapping targets.

Targets are h-bar forward returns, sampled every bar, so neighbouring targets share h-1 bars and
are correlated: a naive standard error would be about sqrt(h) times too small. Every standard error
here is a Newey–West (Bartlett kernel) long-run variance of the per-sample terms with ``lags`` =
h - 1, computed within each market (``group``) and summed, as markets are assumed independent of
each other's overlap.

- ``ic``: Spearman rank correlation of forecast and target, written as the mean of the products of
  standardised ranks, so its HAC error is that of a mean; ``ic_difference`` does the same for the
  difference of two forecasters' ICs on the same targets (paired, so much tighter than two errors).
- ``hit_rate``: share of samples whose forecast sign equals the target's (forecasts of exactly 0
  do not count); ``positive_share``: share of forecasts > 0.
- ``r2_oos``: 1 - SSE / SSE of the zero forecast (Campbell & Thompson 2008).
- ``diebold_mariano``: squared-error loss differential, HAC variance (Diebold & Mariano 1995);
  negative statistic = the first forecaster has the lower loss.
- ``trading``: a long/short rule on non-overlapping h-bar holds, after a per-side cost, and the
  per-side cost at which it would break even.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _groups(group: np.ndarray | None, n: int) -> list[np.ndarray]:
    if group is None:
        return [np.arange(n)]
    group = np.asarray(group)
    return [np.flatnonzero(group == g) for g in np.unique(group)]


def hac_variance(terms: np.ndarray, lags: int, group: np.ndarray | None = None) -> float:
    """Newey–West long-run variance of the MEAN of ``terms`` (in time order within each group)."""
    terms = np.asarray(terms, dtype=np.float64)
    n = len(terms)
    if n < 2:
        return math.nan
    total = 0.0
    centred = terms - terms.mean()
    for idx in _groups(group, n):
        x = centred[idx]
        s = float(x @ x)
        for lag in range(1, min(lags, len(x) - 1) + 1):
            s += 2.0 * (1.0 - lag / (lags + 1.0)) * float(x[lag:] @ x[:-lag])
        total += s
    return max(total, 0.0) / n ** 2


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), standardised to mean 0 and std 1 (0 if constant)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=np.float64)
    sorted_x = x[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_x[1:] != sorted_x[:-1])))
    ends = np.concatenate((starts[1:], [len(x)]))
    for a, b in zip(starts, ends):
        if b - a > 1:
            ranks[order[a:b]] = (a + b - 1) / 2.0
    std = ranks.std()
    return (ranks - ranks.mean()) / std if std > 0 else np.zeros(len(x))


def ic(prediction: np.ndarray, target: np.ndarray, lags: int = 0, group: np.ndarray | None = None) -> dict[str, float]:
    """Spearman IC and its HAC standard error. A constant forecast has IC 0 (and no ranking at all)."""
    terms = _ranks(prediction) * _ranks(target)
    value = float(terms.mean())
    return {"ic": value, "ic_se": math.sqrt(hac_variance(terms, lags, group))}


def ic_difference(a: np.ndarray, b: np.ndarray, target: np.ndarray, lags: int = 0,
                  group: np.ndarray | None = None) -> dict[str, float]:
    """IC(a) - IC(b) on the same targets with the paired HAC standard error of the difference."""
    u = _ranks(target)
    terms = u * (_ranks(a) - _ranks(b))
    return {"difference": float(terms.mean()), "se": math.sqrt(hac_variance(terms, lags, group))}


def hit_rate(prediction: np.ndarray, target: np.ndarray, lags: int = 0,
             group: np.ndarray | None = None) -> dict[str, float]:
    prediction, target = np.asarray(prediction), np.asarray(target)
    called = prediction != 0
    if not called.any():
        return {"hit_rate": math.nan, "hit_rate_se": math.nan}
    hits = (np.sign(prediction[called]) == np.sign(target[called])).astype(np.float64)
    g = None if group is None else np.asarray(group)[called]
    return {"hit_rate": float(hits.mean()), "hit_rate_se": math.sqrt(hac_variance(hits, lags, g))}


def r2_oos(prediction: np.ndarray, target: np.ndarray) -> float:
    """1 - SSE(prediction) / SSE(zero): > 0 only if the forecast beats saying nothing."""
    target = np.asarray(target, dtype=np.float64)
    zero = float(target @ target)
    return 1.0 - float(np.sum((target - prediction) ** 2)) / zero if zero > 0 else math.nan


def diebold_mariano(a: np.ndarray, b: np.ndarray, target: np.ndarray, lags: int = 0,
                    group: np.ndarray | None = None) -> dict[str, float]:
    """DM test of equal squared-error loss; statistic < 0: ``a`` has the lower loss. Two-sided p."""
    d = (np.asarray(a) - target) ** 2 - (np.asarray(b) - target) ** 2
    variance = hac_variance(d, lags, group)
    if not variance > 0:
        return {"statistic": math.nan, "p_value": math.nan, "mean_loss_difference": float(d.mean())}
    stat = float(d.mean()) / math.sqrt(variance)
    return {"statistic": stat, "p_value": math.erfc(abs(stat) / math.sqrt(2.0)), "mean_loss_difference": float(d.mean())}


def trading(prediction: np.ndarray, returns: np.ndarray, ts: np.ndarray, group: np.ndarray, *, horizon: int,
            cost: float, periods_per_year: float, short: bool = True) -> dict[str, Any]:
    """The rule "hold sign(forecast) for ``horizon`` bars" on non-overlapping holds, per market.

    Every ``horizon``-th sample of each market (in time order) opens a position of +1 (forecast > 0),
    -1 (< 0, or 0 when ``short`` is False) or 0 for the next ``horizon`` bars; ``returns`` are the
    samples' h-bar log returns. Changing the position costs ``cost`` per unit traded, per side
    (a flip pays twice). The book splits its capital equally between markets. Returns the after-cost
    and before-cost total return, the annualised Sharpe of the per-hold returns, the number of holds
    with a position, and the break-even per-side cost (gross return / turnover; None if no trades)."""
    gross_total = turnover_total = 0.0
    net_per_market, gross_per_market, period_returns = [], [], []
    held = 0
    for idx in _groups(group, len(prediction)):
        idx = idx[np.argsort(ts[idx], kind="stable")][::horizon]
        position = np.sign(prediction[idx])
        if not short:
            position = np.maximum(position, 0.0)
        simple = np.expm1(returns[idx])
        turnover = np.abs(np.diff(np.concatenate(([0.0], position, [0.0]))))  # in, changes, and the final exit
        gross = position * simple
        costs = cost * turnover[:-1]
        costs[-1:] += cost * turnover[-1]
        net = gross - costs
        net_per_market.append(float(np.prod(1.0 + net) - 1.0))
        gross_per_market.append(float(np.prod(1.0 + gross) - 1.0))
        period_returns.append(net)
        gross_total += float(gross.sum())
        turnover_total += float(turnover.sum())
        held += int(np.count_nonzero(position))
    flat = np.concatenate(period_returns) if period_returns else np.zeros(0)
    sharpe = (float(flat.mean() / flat.std()) * math.sqrt(periods_per_year)
              if len(flat) > 1 and flat.std() > 0 else math.nan)
    return {"return": float(np.mean(net_per_market)), "gross_return": float(np.mean(gross_per_market)),
            "sharpe": sharpe, "holds": held, "periods": len(flat), "cost_per_side": cost,
            "break_even_cost": gross_total / turnover_total if turnover_total > 0 else None}


def forecast_metrics(prediction: np.ndarray, target: np.ndarray, *, lags: int, group: np.ndarray | None = None) -> dict[str, Any]:
    """IC, hit rate (each with its HAC SE), positive share and out-of-sample R² of one forecast."""
    prediction = np.asarray(prediction, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ in shape")
    return {"n": len(target), **ic(prediction, target, lags, group), **hit_rate(prediction, target, lags, group),
            "positive_share": float(np.mean(prediction > 0)), "r2_oos": r2_oos(prediction, target),
            "prediction_std": float(prediction.std())}
