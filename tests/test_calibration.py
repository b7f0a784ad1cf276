"""The calibrated expected move (models/calibration.py): the fit recovers known coefficients, sets an
insignificant one to exactly 0, uses Newey-West errors for overlapping targets, and (through the
strategy's preparation) sees only data from before the cut."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from models.calibration import Calibration, fit_calibration, forward_targets, uncalibrated


def overlapping(rng: np.random.Generator, n: int, horizon: int) -> np.ndarray:
    """Noise with the autocorrelation of sums over ``horizon`` overlapping bars (unit variance)."""
    steps = rng.standard_normal(n + horizon)
    return np.convolve(steps, np.ones(horizon), "valid")[:n] / math.sqrt(horizon)


def test_it_recovers_known_coefficients_and_their_errors():
    rng = np.random.default_rng(0)
    n, horizon = 4000, 6
    news = overlapping(rng, n, horizon) * 0.5  # persistent, as a decaying news score is
    reg = rng.standard_normal(n)
    target = 0.8 * reg + 2.0 * news + overlapping(rng, n, horizon)
    fit = fit_calibration(reg, news, target, horizon=horizon)
    assert fit.news.value == pytest.approx(2.0, abs=4 * fit.news.std_error)
    assert fit.regression.value == pytest.approx(0.8, abs=4 * fit.regression.std_error)
    assert fit.news.kept and fit.regression.kept and "kept" in fit.news.note
    assert fit.z(1.0, 0.5) == pytest.approx(fit.regression.value + 0.5 * fit.news.value)
    # the errors allow for the overlap of a persistent input and overlapping targets: with horizon 1 (no
    # lags) they come out about half as large, and would overstate the t-statistic about twice
    naive = fit_calibration(reg, news, target, horizon=1)
    assert naive.news.estimate == fit.news.estimate
    assert 1.3 < fit.news.std_error / naive.news.std_error < 3.0


def test_an_insignificant_coefficient_is_exactly_zero_and_says_so():
    rng = np.random.default_rng(1)
    n = 500
    reg = rng.standard_normal(n)
    news = rng.standard_normal(n)
    target = 1.5 * news + rng.standard_normal(n)  # the regression has nothing to do with it
    fit = fit_calibration(reg, news, target, horizon=1)
    assert abs(fit.regression.t) < 2 and fit.regression.value == 0.0 and fit.regression.estimate != 0.0
    assert "not significant, shrunk to 0" in fit.regression.note and not fit.regression.kept
    assert fit.news.kept
    # min_t sets where: a threshold of 0 keeps every estimate
    assert fit_calibration(reg, news, target, horizon=1, min_t=0.0).regression.value == fit.regression.estimate


def test_missing_rows_and_degenerate_inputs():
    rng = np.random.default_rng(2)
    n = 300
    news = rng.standard_normal(n)
    target = news + rng.standard_normal(n)
    reg = np.full(n, np.nan)
    reg[-50:] = rng.standard_normal(50)  # a regression known on the last 50 bars only (the validation tail)
    fit = fit_calibration(reg, news, target, horizon=1)
    assert fit.news.rows == n and fit.regression.rows == 50
    zero = fit_calibration(np.full(n, np.nan), np.zeros(n), target, horizon=1)
    assert zero.news.value == 0.0 and "always 0" in zero.news.note
    assert zero.regression.value == 0.0 and "0 rows" in zero.regression.note
    with pytest.raises(ValueError, match="the same length"):
        fit_calibration(reg[:-1], news, target)
    again = Calibration.from_dict(fit.to_dict())
    assert again.z(0.3, -0.2) == pytest.approx(fit.z(0.3, -0.2))
    assert uncalibrated().z(0.7, 1.0) == 0.7


def test_forward_targets_are_log_returns_over_the_horizon_over_sigma():
    close = np.array([100.0, 101.0, 99.0, 102.0, 103.0])
    sigma = np.array([0.01, 0.02, 0.0, 0.01, 0.01])
    out = forward_targets(close, sigma, 2)
    assert out[0] == pytest.approx(math.log(99 / 100) / 0.01)
    assert out[1] == pytest.approx(math.log(102 / 101) / 0.02)
    assert math.isnan(out[2]) and np.isnan(out[3:]).all()  # sigma 0; past the end


def test_the_fit_uses_only_data_from_before_the_cut():
    """The oracle's preparation (no model: milliseconds) fits the calibration and the threshold; bars
    and headlines after the cut changed beyond recognition leave both exactly as they were."""
    from pathlib import Path

    from engine.session import load_settings, prepare_backtest
    from engine.timeutil import iso

    root = Path(__file__).resolve().parents[1]
    config = load_settings(root / "config.toml", ["sample.bars=2000", "store.enabled=false"])
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, strategy="llm_signal"))
    plan = prepare_backtest(config, prepare=False)
    from strategies.llm_prepare import prepare_oracle_backtest

    first = prepare_oracle_backtest(plan).extra["calibration"]
    series = plan.series[0]
    cut = round(0.8 * len(series))
    close = series.close.copy()
    close[cut:] = close[cut:] * np.exp(np.linspace(0, 0.5, len(series) - cut))  # a rally after the cut
    changed = dataclasses.replace(series, close=close, high=np.maximum(series.high, close))
    later = [n for n in plan.news if n.ts_event >= int(series.ts_open[cut])]
    moved = dataclasses.replace(plan, series=[changed], news=[n for n in plan.news if n not in later[::2]])
    second = prepare_oracle_backtest(moved).extra["calibration"]
    assert second == first
    assert first["news"]["value"] != 0.0  # the true tones' effect is found
    assert first["window"]["end"] == iso(int(series.ts_open[cut]))  # the threshold search ends at the cut


def test_the_calibration_window_holds_only_bars_the_regressor_did_not_train_on():
    from types import SimpleNamespace

    from engine.errors import ConfigError
    from strategies.llm_prepare import _calibration_window

    hour = 3_600_000
    opens = np.arange(100, dtype=np.int64) * hour + 1_000 * hour  # the training part: 100 hourly bars
    class Train(SimpleNamespace):
        def __len__(self):
            return len(self.ts_open)

    split = SimpleNamespace(train=Train(ts_open=opens), trade_start_ms=int(opens[-1]) + hour)
    start, why = _calibration_window(split, 40, int(opens[80]))  # validation from bar 80: only 20 unseen
    assert start == opens[80] and "validation tail" in why
    start, why = _calibration_window(split, 40, int(opens[30]))  # the last 40 are all unseen
    assert start == opens[60] and "all after" in why
    start, why = _calibration_window(split, 0, int(opens[0]) - 500 * hour)  # trained on earlier bars only
    assert start == opens[0] and "none of them" in why
    start, why = _calibration_window(split, 40, None)  # not known: said so
    assert start == opens[60] and "may include bars it trained on" in why
    with pytest.raises(ConfigError, match="after this run's cut"):  # it may have seen the traded bars
        _calibration_window(split, 40, split.trade_start_ms + hour)
