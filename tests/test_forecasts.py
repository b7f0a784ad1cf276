"""The walk-forward forecast evaluation: purged folds, train-only scaling, the metrics on known
inputs, the baselines on a learnable target, the rule for claims, and the command's report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("torch", reason="the forecast windows come from models.encoder (the llm extra)")

from models.baselines import LightGbmForecaster, MeanForecaster, RidgeForecaster, ZeroForecaster  # noqa: E402
from models.forecasting import ForecastData  # noqa: E402
from research import forecasts  # noqa: E402
from research.forecast_metrics import (  # noqa: E402
    diebold_mariano,
    forecast_metrics,
    hac_variance,
    ic,
    ic_difference,
    r2_oos,
    trading,
)
from research.forecasts import END, START, Market, MarketSpec, fold_data, make_folds, verdict, write_section  # noqa: E402

HOUR = 3_600_000


def test_folds_are_purged_walk_forward_with_validation_inside_training():
    ts = np.arange(5_000, dtype=np.int64) * HOUR
    purge = 22 * HOUR
    folds = make_folds(ts, folds=5, test_share=0.5, val_share=0.2, purge_ms=purge, max_train=1_500)
    assert len(folds) == 5
    tests = [f.test for f in folds]
    assert all(a[-1] < b[0] for a, b in zip(tests, tests[1:]))  # consecutive blocks, no overlap
    for fold in folds:
        test_start = ts[fold.test[0]]
        assert ts[fold.val[-1]] < test_start - purge  # no validation target reaches the test block
        assert ts[fold.train[-1]] < ts[fold.val[0]] - purge  # nor a training target the validation block
        assert len(fold.train) + len(fold.val) <= 1_500
        assert set(fold.train).isdisjoint(fold.val) and set(fold.val).isdisjoint(fold.test)


def _market(n: int = 600, seed: int = 0) -> Market:
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n, 16)) * 3 + 1
    return Market(MarketSpec("toy", (("A", "a.csv"),), 0.001, "toy"), [features], np.arange(20, n),
                  np.zeros(n - 20, dtype=np.int64), np.arange(20, n) * HOUR, rng.standard_normal(n - 20),
                  rng.standard_normal(n - 20) * 0.01, HOUR, n)


def test_each_fold_is_scaled_by_its_own_training_samples_only():
    market = _market()
    fold = make_folds(market.ts, folds=2, test_share=0.4, val_share=0.2, purge_ms=10 * HOUR)[0]
    before = fold_data(market, fold, 4)
    later = np.concatenate([fold.val, fold.test])
    market.features[0][market.bar_index[later].min():] *= 100.0  # change everything after the training part
    after = fold_data(market, fold, 4)
    np.testing.assert_array_equal(before["train"].windows, after["train"].windows)
    assert not np.array_equal(before["test"].windows, after["test"].windows)
    # a window holds its own bar and the three before it, nothing later
    np.testing.assert_array_equal(before["train"].windows.shape[1:], (4, 16))


def test_metrics_on_known_inputs():
    rng = np.random.default_rng(1)
    y = rng.standard_normal(2_000)
    assert ic(y, y)["ic"] == pytest.approx(1.0)
    assert ic(-y, y)["ic"] == pytest.approx(-1.0)
    assert ic(np.zeros_like(y), y)["ic"] == 0.0  # a constant ranks nothing
    assert r2_oos(np.zeros_like(y), y) == pytest.approx(0.0, abs=1e-12)  # rounding differs by CPU
    assert r2_oos(y, y) == 1.0
    noisy = y + rng.standard_normal(2_000)
    dm = diebold_mariano(0.5 * noisy, np.zeros_like(y), y)  # expected squared error 0.5 against 1
    assert dm["statistic"] < -5 and dm["p_value"] < 1e-6  # the informative forecast has the lower loss
    # standard errors shrink with n, and overlap (lags) widens them for autocorrelated terms
    assert ic(noisy[:200], y[:200])["ic_se"] > ic(noisy, y)["ic_se"]
    walk = np.repeat(rng.standard_normal(400), 5)
    assert hac_variance(walk, 4) > 2 * hac_variance(walk, 0)
    m = forecast_metrics(np.full(100, 0.3), rng.standard_normal(100), lags=0)
    assert m["positive_share"] == 1.0 and m["prediction_std"] == 0.0


def test_paired_ic_difference_and_trading_figures():
    rng = np.random.default_rng(2)
    y = rng.standard_normal(3_000)
    good, bad = y + rng.standard_normal(3_000), rng.standard_normal(3_000)
    d = ic_difference(good, bad, y)
    assert d["difference"] == pytest.approx(ic(good, y)["ic"] - ic(bad, y)["ic"])
    assert d["difference"] > 5 * d["se"]
    returns = np.full(12, 0.01)
    ts = np.arange(12) * HOUR
    out = trading(np.ones(12), returns, ts, np.zeros(12, dtype=np.int64), horizon=3, cost=0.001, periods_per_year=1)
    # 4 non-overlapping holds of +1%, one entry and one exit at 0.1% each
    assert out["holds"] == 4 and out["gross_return"] == pytest.approx(math.expm1(0.01) * 0 + (np.expm1(0.01) + 1) ** 4 - 1)
    assert out["break_even_cost"] == pytest.approx(4 * np.expm1(0.01) / 2)
    assert out["return"] < out["gross_return"]
    assert trading(np.zeros(12), returns, ts, np.zeros(12, dtype=np.int64), horizon=3, cost=0.001,
                   periods_per_year=1)["break_even_cost"] is None


def _data(x: np.ndarray, y: np.ndarray) -> ForecastData:
    return ForecastData(x, y, np.arange(len(y), dtype=np.int64), np.zeros(len(y), dtype=np.int64))


def test_ridge_and_lightgbm_beat_zero_on_a_learnable_target_and_zero_and_mean_do_not():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3_000, 4, 16))
    y = 0.5 * x[:, -1, 0] - 0.3 * x[:, -2, 3] + rng.standard_normal(3_000)
    train, val, test = _data(x[:2000], y[:2000]), _data(x[2000:2500], y[2000:2500]), _data(x[2500:], y[2500:])
    for model in (RidgeForecaster(), LightGbmForecaster(threads=1)):
        model.fit(train, val)
        p = model.predict(test)
        assert r2_oos(p, test.targets) > 0.1 and ic(p, test.targets)["ic"] > 0.3, model.name
    for model in (ZeroForecaster(), MeanForecaster()):
        model.fit(train, val)
        assert ic(model.predict(test), test.targets)["ic"] == 0.0
    again = LightGbmForecaster(threads=1)
    again.fit(train, val)
    first = LightGbmForecaster(threads=1)
    first.fit(train, val)
    np.testing.assert_array_equal(again.predict(test), first.predict(test))  # deterministic


def _pooled(ic_value: float) -> dict:
    return {"ic": ic_value, "ic_se": 0.01, "positive_share": 0.5}


def test_the_rule_for_claims_and_the_constant_sign_flag():
    pooled = {"ridge": _pooled(0.02), "lightgbm": _pooled(0.03), "llm_llm": _pooled(0.09)}
    far = {"llm_llm vs ridge": {"ic": {"difference": 0.07, "se": 0.01}},
           "llm_llm vs lightgbm": {"ic": {"difference": 0.06, "se": 0.01}}}
    folds = [{"models": {"ridge": {"positive_share": 0.5}, "lightgbm": {"positive_share": 0.95},
                         "llm_llm": {"positive_share": 0.5}, "zero": {"positive_share": 0.0}}}]
    v = verdict(pooled, far, folds)
    assert v["edge"] is True and v["ic_target_met"] is True and "HAS edge" in v["sentence"]
    assert v["constant_sign_models"] == ["lightgbm"]  # zero is exempt: it never takes a side
    tie = {"llm_llm vs ridge": {"ic": {"difference": 0.015, "se": 0.01}},
           "llm_llm vs lightgbm": {"ic": {"difference": 0.005, "se": 0.01}}}
    v = verdict({**pooled, "llm_llm": _pooled(0.035)}, tie, folds)
    assert v["edge"] is False and v["ic_target_met"] is False and "has NO edge" in v["sentence"]
    assert verdict({"ridge": _pooled(0.0), "lightgbm": _pooled(0.0)}, {}, folds)["edge"] is None


def test_the_section_is_replaced_between_its_markers_and_the_rest_is_kept(tmp_path):
    path = tmp_path / "EVALUATION.md"
    path.write_text("# Evaluation\n\nkept above\n")
    write_section(path, f"{START}\nfirst\n{END}\n")
    path.write_text(path.read_text() + "\nkept below\n")
    write_section(path, f"{START}\nsecond\n{END}\n")
    text = path.read_text()
    assert text.startswith("# Evaluation\n\nkept above\n") and text.rstrip().endswith("kept below")
    assert "second" in text and "first" not in text and text.count(START) == 1


def _bars_csv(path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.standard_normal(n) * 0.01))
    open_ = np.concatenate(([100.0], close[:-1]))
    lines = ["timestamp,open,high,low,close,volume"]
    for i in range(n):
        hi, lo = max(open_[i], close[i]) * 1.002, min(open_[i], close[i]) * 0.998
        lines.append(f"{1_600_000_000_000 + i * HOUR},{open_[i]:.6f},{hi:.6f},{lo:.6f},{close[i]:.6f},{1000 + i}")
    path.write_text("\n".join(lines) + "\n")


def test_the_command_writes_the_json_and_the_markdown_section(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    (data / "ohlcv" / "crypto").mkdir(parents=True)
    _bars_csv(data / "ohlcv" / "crypto" / "binance_BTCUSDT_1h.csv", 1_500, 4)
    md = tmp_path / "EVALUATION.md"
    md.write_text("# Evaluation\n\nthe rest\n")
    code = forecasts.main(["--models", "zero,mean,ridge,lightgbm", "--markets", "btc", "--folds", "3",
                           "--data", str(data), "--out", str(tmp_path / "out"), "--evaluation-md", str(md)])
    assert code == 0
    report = json.loads((tmp_path / "out" / "forecasts.json").read_text())
    btc = report["markets"][0]
    assert len(btc["folds"]) == 3 and set(btc["pooled"]) == {"zero", "mean", "ridge", "lightgbm"}
    assert btc["pooled"]["zero"]["r2_oos"] == 0.0 and btc["verdict"]["edge"] is None
    text = md.read_text()
    assert text.startswith("# Evaluation\n\nthe rest\n") and START in text and END in text
    assert "No LLM variant ran" in text and "| ridge |" in text
    assert "fold 3/3" in capsys.readouterr().err
    assert "Centered targets" not in text
    assert forecasts.main(["--center", "--models", "zero,ridge", "--markets", "btc", "--folds", "3", "--data", str(data),
                           "--out", str(tmp_path / "out"), "--evaluation-md", str(md)]) == 0
    report = json.loads((tmp_path / "out" / "forecasts.json").read_text())
    assert report["options"]["center"] is True and set(report["markets"][0]["pooled"]) == {"zero", "ridge"}
    assert "**Centered targets**" in md.read_text()
    assert f"`{tmp_path / 'out' / 'forecasts.json'}` holds every number" in md.read_text()  # where this run wrote


def test_the_command_refuses_an_unknown_model_or_missing_data(tmp_path, capsys):
    with pytest.raises(SystemExit):
        forecasts.main(["--models", "ridge,oracle"])
    assert "unknown model 'oracle'" in capsys.readouterr().err
    assert forecasts.main(["--models", "zero", "--markets", "btc", "--data", str(tmp_path),
                           "--out", str(tmp_path / "o"), "--evaluation-md", str(tmp_path / "E.md")]) == 2
    assert "is missing" in capsys.readouterr().err


def test_centering_takes_each_tickers_training_mean_from_train_and_validation_only():
    market = _market()
    market.targets = market.targets + 0.7  # a drift
    market.group = np.arange(len(market.ts)) % 2  # two tickers side by side
    market.features = [market.features[0], market.features[0] * 2]
    market.spec = MarketSpec("toy", (("A", "a.csv"), ("B", "b.csv")), 0.001, "toy")
    fold = make_folds(market.ts, folds=2, test_share=0.4, val_share=0.2, purge_ms=10 * HOUR)[0]
    plain = fold_data(market, fold, 4)
    centered = fold_data(market, fold, 4, center=True)
    for g in (0, 1):
        train = centered["train"].group == g
        assert abs(centered["train"].targets[train].mean()) < 1e-12
        drift = plain["train"].targets[train].mean()
        assert drift > 0.3
        val = centered["val"].group == g
        np.testing.assert_allclose(centered["val"].targets[val], plain["val"].targets[val] - drift)
    np.testing.assert_array_equal(centered["test"].targets, plain["test"].targets)  # what is scored is untouched
    np.testing.assert_array_equal(centered["train"].windows, plain["train"].windows)
    assert not np.shares_memory(centered["train"].targets, market.targets)
    assert market.targets.mean() > 0.5  # the market itself is not changed


def test_center_leaves_the_mean_baseline_out_and_refuses_it_by_name(capsys):
    options = forecasts.parse_args(["--center"])
    assert options.center and "mean" not in options.models and "ridge" in options.models
    with pytest.raises(SystemExit):
        forecasts.parse_args(["--center", "--models", "zero,mean"])
    assert "leave it out of --models" in capsys.readouterr().err


def test_the_llm_variants_refit_their_intercept_unless_told_not_to():
    options = forecasts.parse_args(["--window", "8", "--horizon", "3"])
    config = forecasts.make_forecaster("llm_no_llm", options).config
    assert config.refits_intercept and (config.window, config.horizon) == (8, 3)
    config = forecasts.make_forecaster("llm_llm", forecasts.parse_args(["--no-refit-intercept"])).config
    assert config.refit_intercept is False and not config.refits_intercept
    # the targets are centered by the harness (--center) for every model alike, never by the LLM's trainer alone
    assert not config.center_target
    assert forecasts.make_forecaster("llm_llm", forecasts.parse_args(["--center"])).config.center_target
