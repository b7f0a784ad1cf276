"""The numeric-encoder input of the regressor: shapes, causality, save and reload, batch against single
predictions, the sample weights' effective sample size (tiny random Llamas, toy bars)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from models.datasets import DatasetError, effective_sample_size, sample_weights, winsorise
from models.encoder import NumericEncoder, embedding_norm, feature_windows, window_ready
from models.forecasting import ForecastData, LlmForecaster, forecast_data
from models.settings import BackboneConfig, EncoderSettings, OptimSettings
from models.training.regressor_config import RegressorTrainingConfig
from models.training.regressor_trainer import (
    BarArrays,
    RegressorTrainer,
    encoder_predictor,
    evaluate_regressor,
    load_regressor,
    prepare_regression_data,
    train_on_windows,
)
from tests.llm_helpers import TINY, randomise_adapters, tiny_backbone, torch

TINY_BACKBONE = BackboneConfig(source="tiny", tiny=TINY)
CONFIG = RegressorTrainingConfig(backbone=TINY_BACKBONE, window=8, virtual_tokens=3, encoder_width=32)


def _bars(n: int = 600, seed: int = 0) -> BarArrays:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    high, low = np.maximum(open_, close) * 1.002, np.minimum(open_, close) * 0.998
    ts = 1_704_067_200_000 + np.arange(n) * 3_600_000
    return BarArrays("TOY/USDT", "1h", 3_600_000, ts, open_, high, low, close, rng.uniform(1, 2, n), source="toy")


def _predictor(config: RegressorTrainingConfig = CONFIG):
    predictor = encoder_predictor(config)
    randomise_adapters(predictor, seed=3)  # LoRA B and the head's last layer start at 0: outputs would be constant
    return predictor


def test_the_encoder_maps_a_window_to_virtual_tokens_at_the_embedding_norm():
    backbone = tiny_backbone()
    norm = embedding_norm(backbone.model)
    encoder = NumericEncoder(EncoderSettings(window=8, virtual_tokens=3, width=16), backbone.hidden_size, norm)
    out = encoder(torch.randn(5, 8, 16))
    assert out.shape == (5, 3, backbone.hidden_size)
    torch.testing.assert_close(out.norm(dim=-1), torch.full((5, 3), norm))
    with pytest.raises(ValueError, match=r"windows must be \(batch, 8, 16\)"):
        encoder(torch.randn(5, 7, 16))
    with pytest.raises(ValueError, match="variant must be one of"):
        EncoderSettings(variant="gpt")


def test_feature_windows_hold_bars_up_to_t_only():
    x = np.arange(10 * 2, dtype=np.float64).reshape(10, 2)
    w = feature_windows(x, [2, 9], 3)
    np.testing.assert_array_equal(w[0], x[0:3])
    np.testing.assert_array_equal(w[1], x[7:10])
    with pytest.raises(ValueError, match="no full window of 3 bars"):
        feature_windows(x, [1], 3)
    x[5, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite features"):
        feature_windows(x, [6], 3)
    np.testing.assert_array_equal(window_ready(x, 3), [0, 0, 1, 1, 1, 0, 0, 0, 1, 1])


def test_changing_bars_after_t_changes_no_window_nor_prediction_at_t():
    bars = _bars(400)
    cut = 300
    args = dict(window=8, horizon=6)
    data, scaler = forecast_data(bars.ts_open + bars.timeframe_ms, bars.open, bars.high, bars.low, bars.close,
                                 bars.volume, bars.timeframe_ms, train_until_ms=int(bars.ts_open[250]), **args)
    later = {name: getattr(bars, name).copy() for name in ("open", "high", "low", "close", "volume")}
    for values in later.values():
        values[cut + 1:] *= 1.5  # every bar after t = cut
    moved, _ = forecast_data(bars.ts_open + bars.timeframe_ms, later["open"], later["high"], later["low"],
                             later["close"], later["volume"], bars.timeframe_ms, scaler=scaler, **args)
    t_close = bars.ts_open[cut] + bars.timeframe_ms
    before, after = data.ts <= t_close, moved.ts <= t_close
    assert before.sum() > 100 and np.array_equal(data.ts[before], moved.ts[after])
    np.testing.assert_array_equal(data.windows[before], moved.windows[after])
    predictor = _predictor(replace(CONFIG, window=8))
    a, _ = predictor.predict_regression_windows(data.windows[before])
    b, _ = predictor.predict_regression_windows(moved.windows[after])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(data.windows[~before][:5], moved.windows[~after][:5])  # the change is real


@pytest.mark.parametrize("batch_size", [1, 8, 16, 32])
def test_a_window_alone_predicts_what_the_same_window_predicts_in_a_batch(batch_size):
    # fixed-shape batches (the last one filled with copies) make a row's result independent of the other
    # rows up to float32 rounding, not bit for bit: with two threads the BLAS library splits a batch's rows
    # between them, and on an AVX2 CPU rows 8-15 of a 16-row batch came out up to 7e-7 away from the same
    # window in row 0 (bit-identical on one thread). A padding or masking mistake would move them by far more.
    predictor = _predictor()
    windows = np.random.default_rng(1).normal(size=(45, CONFIG.window, 16))
    mean, std = predictor.predict_regression_windows(windows, batch_size=batch_size)
    assert mean.shape == std.shape == (45,) and np.unique(mean).size == 45
    assert mean.std() > 0.05  # the windows' predictions differ by far more than the tolerance below
    alone = np.array([predictor.predict_regression_windows(windows[i:i + 1], batch_size=batch_size)
                      for i in range(45)])[:, :, 0]
    np.testing.assert_allclose(alone[:, 0], mean, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(alone[:, 1], std, rtol=2e-6, atol=2e-6)


def test_encoder_checkpoint_with_a_six_bar_horizon_reloads_to_identical_predictions(tmp_path):
    config = replace(CONFIG, horizon=6, splits=(0.5, 0.25, 0.25), max_val_samples=32, weighting="sqrt_density",
                     optim=OptimSettings(epochs=2, batch_size=16))
    bars = _bars(700)
    data = prepare_regression_data(bars, config)
    assert config.purge_bars == 100 + 6 + 7
    bar_of = {k: data.samples.bar_index[v] for k, v in data.splits.items()}
    assert bar_of["train"].max() + config.purge_bars < bar_of["val"].min()
    assert data.windows.shape == (len(data.samples), 8, 16)
    metrics = RegressorTrainer(config).train(bars, tmp_path / "reg")
    assert metrics["input"] == "encoder" and metrics["fit"]["steps"] >= 1
    assert 0.5 < metrics["data"]["effective_sample_size"] < 1.0
    saved = json.loads((tmp_path / "reg" / "config.json").read_text())
    assert saved["config"]["input"] == "encoder" and saved["config"]["window"] == 8
    assert (tmp_path / "reg" / "regressor" / "encoder.safetensors").is_file()
    windows, _, _ = data.part("test")
    predictor, _ = load_regressor(tmp_path / "reg")
    again, _ = load_regressor(tmp_path / "reg")
    assert predictor.encoder_settings("regressor") == config.encoder_settings()
    first = predictor.predict_regression_windows(windows)
    second = again.predict_regression_windows(windows)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert predictor.fingerprint("regressor") == saved["predictor_fingerprint"]
    report = evaluate_regressor(tmp_path / "reg", bars, max_samples=24, baseline_train_samples=48)
    assert set(report["baselines"]) == {"ridge", "zero", "random_backbone"}
    assert np.isfinite(report["model"]["mse"])


@pytest.mark.parametrize("variant", ["no_llm", "random_backbone", "head_only"])
def test_each_ablation_trains_what_it_says(variant):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 8, 16))
    data = ForecastData(x, rng.normal(size=96), np.arange(96, dtype=np.int64), np.zeros(96, dtype=np.int64))
    forecaster = LlmForecaster(variant, "tiny", replace(CONFIG, optim=OptimSettings(max_steps=3, epochs=0, batch_size=16)))
    forecaster.fit(data.subset(np.arange(64)), data.subset(np.arange(64, 96)))
    predictor = forecaster.predictor
    trained = predictor.trainable_parameters("regressor")
    assert bool(trained["lora"]) == (variant == "random_backbone")
    assert predictor.backbone.config.random_init == (variant == "random_backbone")
    assert forecaster.predict(data).shape == (96,)
    if variant == "head_only":  # no LoRA update: the adapter's B matrices stayed 0
        assert all(float(p.detach().abs().max()) == 0 for n, p in predictor.model.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize("weighted", [False, True])
def test_refit_intercept_sets_the_mean_training_forecast_to_the_mean_target(weighted):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(80, 8, 16)), rng.normal(size=80) + 0.7  # a level the 3 steps below do not reach
    weights = rng.uniform(0.5, 2.0, 64) if weighted else np.ones(64)
    config = replace(CONFIG, refit_intercept=True, center_target=False,
                     optim=OptimSettings(max_steps=3, epochs=0, batch_size=16))
    predictor = _predictor(config)
    _, record = train_on_windows(predictor, config, x[:64], y[:64], weights, x[64:], y[64:])
    mean, _ = predictor.predict_regression_windows(x[:64])
    assert np.average(mean, weights=weights) == pytest.approx(np.average(y[:64], weights=weights), abs=1e-5)
    shift = record["intercept_shift"]
    assert abs(shift) > 0.1  # the 3 steps left the level well short of 0.7
    # the same training without the refit: every forecast, test windows included, differs by the shift alone
    plain_config = replace(config, refit_intercept=False)
    plain = _predictor(plain_config)
    _, plain_record = train_on_windows(plain, plain_config, x[:64], y[:64], weights, x[64:], y[64:])
    assert plain_record["intercept_shift"] == 0.0
    np.testing.assert_allclose(predictor.predict_regression_windows(x)[0] - plain.predict_regression_windows(x)[0],
                               shift, atol=1e-5)


def test_centered_targets_leave_the_training_windows_mean_forecast_at_zero_whatever_their_level():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(80, 8, 16)), rng.normal(size=80) + 0.7  # a drift of 0.7 in the training window
    weights = rng.uniform(0.5, 2.0, 64)
    assert CONFIG.center_target and CONFIG.refits_intercept  # the defaults
    config = replace(CONFIG, optim=OptimSettings(max_steps=3, epochs=0, batch_size=16))
    predictor = _predictor(config)
    _, record = train_on_windows(predictor, config, x[:64], y[:64], weights, x[64:], y[64:])
    assert record["target_center"] == pytest.approx(np.average(y[:64], weights=weights))
    mean, _ = predictor.predict_regression_windows(x[:64])
    assert np.average(mean, weights=weights) == pytest.approx(0.0, abs=1e-5)  # the drift is not forecast
    assert 0 < np.mean(mean > 0) < 1
    off = replace(config, center_target=False)
    _, off_record = train_on_windows(_predictor(off), off, x[:64], y[:64], weights, x[64:], y[64:])
    assert off_record["target_center"] == 0.0


def test_early_stopping_keeps_the_step_of_the_chosen_validation_metric():
    assert CONFIG.selection == ("mse", False)
    assert replace(CONFIG, input="text").selection == ("nll", False)
    assert replace(CONFIG, select_metric="ic").selection == ("ic", True)
    with pytest.raises(ValueError, match="select_metric must be one of mse, nll, ic"):
        RegressorTrainingConfig(select_metric="r2")
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
        RegressorTrainingConfig(beta=-0.5)
    with pytest.raises(ValueError, match="refit_intercept needs input = 'encoder'"):
        RegressorTrainingConfig(input="text", refit_intercept=True)
    # unset, the encoder refits and the text path does not
    assert RegressorTrainingConfig().refits_intercept and not RegressorTrainingConfig(input="text").refits_intercept
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(80, 8, 16)), rng.normal(size=80)
    config = replace(CONFIG, select_metric="ic", optim=OptimSettings(max_steps=4, epochs=0, batch_size=16, eval_every=1))
    result, _ = train_on_windows(_predictor(config), config, x[:64], y[:64], None, x[64:], y[64:])
    ics = [h["ic"] for h in result.history]
    assert result.best_step == result.history[int(np.nanargmax(ics))]["step"]
    assert result.best_score == pytest.approx(np.nanmax(ics))


def test_effective_sample_size_of_each_weighting_on_normal_targets():
    assert effective_sample_size(np.array([1.0, 1.0, 2.0, 2.0])) == pytest.approx(36 / 10 / 4)
    y = np.random.default_rng(0).normal(size=20000)
    ess = {kind: effective_sample_size(sample_weights(y, kind, cap=3.0)) for kind in ("none", "sqrt_density", "density")}
    assert ess["none"] == 1.0
    assert 0.8 < ess["sqrt_density"] < 0.95  # 1/sqrt(density), cap 3: keeps most of the sample
    assert 0.6 < ess["density"] < ess["sqrt_density"]
    assert effective_sample_size(sample_weights(y, "density", cap=10.0)) < 0.45  # the old default: a bit over a third
    # in units of the targets' own std: a 6-bar target (std ~2.5x) gets the same weights
    np.testing.assert_allclose(sample_weights(2.5 * y, "sqrt_density"), sample_weights(y, "sqrt_density"))
    with pytest.raises(DatasetError, match="weighting must be one of"):
        sample_weights(y, "inverse")


def test_winsorising_clips_at_a_multiple_of_the_std():
    y = np.concatenate([np.random.default_rng(0).normal(size=999), [50.0]])
    clipped, bound = winsorise(y, 4.0)
    assert bound == pytest.approx(4 * y.std()) and clipped.max() == pytest.approx(bound)
    assert np.array_equal(clipped[:999], y[:999])
    assert winsorise(y, 0.0)[1] == np.inf


def test_bad_encoder_settings_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="shorter than the horizon plus the window"):
        RegressorTrainingConfig(horizon=6, window=16, purge=10)
    with pytest.raises(ValueError, match="needs input = 'encoder'"):
        RegressorTrainingConfig(input="text", variant="no_llm")
    predictor = _predictor()
    with pytest.raises(ValueError, match=r"windows must be \(n, 8, 16\)"):
        predictor.predict_regression_windows(np.zeros((2, 9, 16)))
