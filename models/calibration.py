"""The calibrated expected move: a least-squares fit of the realised forward return on the
regression's forecast and the news score, each coefficient with its standard error, and shrunk to
zero where it is not significant. Plain numpy; no engine, no torch.

The target is the one the regressor is trained on, over the strategy's holding time ``h``: the log
return from a bar's close to the close ``h`` bars later, divided by that bar's realised volatility
``sigma`` (``forward_targets``). The calibrated forecast in the same units is::

    z_hat = b_regression x regression_mean + b_news x news_score

and the expected log move over the holding time is ``z_hat x sigma``. There is no intercept: with
no information the expected move is zero (a constant would be a bet on drift).

The two coefficients are fitted from different rows, because they are known on different parts of
the data before the cut: the news score on every bar before it (the headlines are classified there
anyway), the regression mean only where the regressor did not train (its validation tail). So the
news coefficient comes first, a regression through the origin of the target on the news score; the
regression coefficient is then fitted on the rows with a regression mean, on what the (kept) news
part leaves of the target. Targets over ``h`` bars overlap, so the standard errors are Newey-West
(heteroskedasticity and autocorrelation consistent, ``h - 1`` lags, Bartlett weights), not the
i.i.d. formula that would overstate significance about sqrt(h) times. A coefficient whose |t| is
below ``min_t`` (2 by default) is set to exactly 0 and the record says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MIN_ROWS = 20
"""Fewer usable rows than this leave a coefficient at 0 (not enough data to judge it)."""


@dataclass(frozen=True)
class Coefficient:
    """One fitted coefficient: ``estimate`` (least squares), ``std_error`` (Newey-West), ``t`` =
    estimate / std_error, ``rows`` used, and ``value`` = the estimate when |t| >= the threshold,
    else exactly 0; ``note`` says which and why."""

    value: float
    estimate: float
    std_error: float
    t: float
    rows: int
    note: str

    @property
    def kept(self) -> bool:
        return self.value != 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Calibration:
    """The fitted combination (see the module docstring). ``horizon``: the target's bars."""

    regression: Coefficient
    news: Coefficient
    horizon: int
    min_t: float

    def z(self, regression_mean: float, news_score: float) -> float:
        """The calibrated forecast of the vol-normalised log return over ``horizon`` bars."""
        return self.regression.value * regression_mean + self.news.value * news_score

    def to_dict(self) -> dict[str, Any]:
        return {"regression": self.regression.to_dict(), "news": self.news.to_dict(), "horizon": self.horizon,
                "min_t": self.min_t, "target": f"log(close[t+{self.horizon}] / close[t]) / sigma_t",
                "expected_move": "(regression x regression_mean + news x news_score) x sigma_t"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        def coefficient(d: Mapping[str, Any]) -> Coefficient:
            return Coefficient(float(d["value"]), float(d["estimate"]),
                               float("inf") if d["std_error"] is None else float(d["std_error"]),
                               0.0 if d["t"] is None else float(d["t"]), int(d["rows"]), str(d["note"]))

        return cls(coefficient(data["regression"]), coefficient(data["news"]), int(data["horizon"]),
                   float(data["min_t"]))


def forward_targets(close: np.ndarray, sigma: np.ndarray, horizon: int) -> np.ndarray:
    """Per bar t: log(close[t + horizon] / close[t]) / sigma[t]; NaN where t + horizon is past the
    end or sigma is not positive and finite."""
    close = np.asarray(close, dtype=float)
    sigma = np.asarray(sigma, dtype=float)
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if close.shape != sigma.shape:
        raise ValueError(f"close and sigma must have the same shape, got {close.shape} and {sigma.shape}")
    out = np.full(close.shape, np.nan)
    if len(close) > horizon:
        out[:-horizon] = np.log(close[horizon:] / close[:-horizon])
    ok = np.isfinite(sigma) & (sigma > 0)
    out[~ok] = np.nan
    out[ok] /= sigma[ok]
    return out


def _fit_through_origin(x: np.ndarray, y: np.ndarray, lags: int, min_t: float, what: str) -> Coefficient:
    rows = len(x)
    if rows < MIN_ROWS:
        return Coefficient(0.0, 0.0, math.inf, 0.0, rows, f"{what}: {rows} rows (< {MIN_ROWS}): set to 0")
    sxx = float(x @ x)
    if sxx <= 0.0:
        return Coefficient(0.0, 0.0, math.inf, 0.0, rows, f"{what}: the input is always 0: set to 0")
    estimate = float(x @ y) / sxx
    u = x * (y - estimate * x)  # the score contributions
    meat = float(u @ u)
    for lag in range(1, min(lags, rows - 1) + 1):
        meat += 2.0 * (1.0 - lag / (lags + 1)) * float(u[lag:] @ u[:-lag])
    std_error = math.sqrt(max(meat, 0.0)) / sxx
    t = estimate / std_error if std_error > 0 else (math.inf if estimate else 0.0)
    if abs(t) >= min_t:
        return Coefficient(estimate, estimate, std_error, t, rows, f"{what}: |t| = {abs(t):.2f} >= {min_t:g}: kept")
    return Coefficient(0.0, estimate, std_error, t, rows,
                       f"{what}: |t| = {abs(t):.2f} < {min_t:g}: not significant, shrunk to 0")


def fit_calibration(regression_mean: np.ndarray, news_score: np.ndarray, target: np.ndarray, *,
                    horizon: int = 1, min_t: float = 2.0) -> Calibration:
    """Fit ``target ~ b_regression x regression_mean + b_news x news_score`` (module docstring).

    All three arrays are per bar, the same length, and hold ONLY data from before the cut (the
    caller's job: nothing here knows where the cut is). NaN marks a missing value: rows with a
    finite news score and target fit the news coefficient; rows that also have a finite regression
    mean fit the regression coefficient, on target - b_news x news_score. ``horizon``: the
    target's bars, which sets the Newey-West lags (horizon - 1)."""
    r = np.asarray(regression_mean, dtype=float)
    n = np.asarray(news_score, dtype=float)
    y = np.asarray(target, dtype=float)
    if not (r.shape == n.shape == y.shape) or r.ndim != 1:
        raise ValueError(f"regression_mean, news_score and target must be 1-d and the same length, got "
                         f"{r.shape}, {n.shape}, {y.shape}")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if not (math.isfinite(min_t) and min_t >= 0):
        raise ValueError(f"min_t must be >= 0, got {min_t}")
    lags = horizon - 1
    rows = np.isfinite(n) & np.isfinite(y)
    news = _fit_through_origin(n[rows], y[rows], lags, min_t, "news")
    rows = np.isfinite(r) & np.isfinite(n) & np.isfinite(y)
    regression = _fit_through_origin(r[rows], y[rows] - news.value * n[rows], lags, min_t, "regression")
    return Calibration(regression, news, horizon, float(min_t))


def uncalibrated(horizon: int = 1) -> Calibration:
    """The forecast as it is: z_hat = the regression mean (coefficient 1), no news. For sources
    that were given no calibration (a baseline, a test); the record says so."""
    one = Coefficient(1.0, 1.0, math.nan, math.nan, 0, "uncalibrated: the regression mean as it is")
    zero = Coefficient(0.0, 0.0, math.nan, math.nan, 0, "uncalibrated: news not in the expected move")
    return Calibration(one, zero, horizon, 0.0)
