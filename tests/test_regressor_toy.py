"""A learnable toy task for the encoder regressor: the target is a known function of one feature of a
past bar in the window, plus noise. The trained model must beat always-zero in MSE, rank outcomes
(IC), and vary its output; the same training on shuffled targets must fail the IC bar. A constant
regressor (the failure the issue found) fails every one of these."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from models.forecasting import ForecastData, LlmForecaster
from models.settings import BackboneConfig, OptimSettings
from models.training.evaluation import spearman
from models.training.regressor_config import RegressorTrainingConfig
from tests.llm_helpers import TINY

CONFIG = RegressorTrainingConfig(backbone=BackboneConfig(source="tiny", tiny=TINY), window=8, virtual_tokens=2,
                                 encoder_width=64, max_val_samples=0,
                                 optim=OptimSettings(epochs=4, batch_size=32, patience=2, lr=1e-3, head_lr=3e-3))
IC_BAR = 0.3  # the noise-free IC is 0.8; a model that learnt the rule reaches ~0.55 here


def _toy(n: int, seed: int) -> ForecastData:
    rng = np.random.default_rng(seed)
    windows = np.clip(rng.normal(size=(n, CONFIG.window, 16)), -5, 5)
    targets = 0.8 * windows[:, -3, 5] + 0.6 * rng.standard_t(5, size=n) / np.sqrt(5 / 3)  # bar t-2, feature 5
    return ForecastData(windows, targets, np.arange(n, dtype=np.int64) * 3_600_000, np.zeros(n, dtype=np.int64))


def _fit_and_score(train: ForecastData, val: ForecastData, test: ForecastData) -> dict[str, float]:
    model = LlmForecaster("llm", "tiny", CONFIG)
    model.fit(train, val)
    predicted = model.predict(test)
    return {"mse": float(np.mean((predicted - test.targets) ** 2)), "zero_mse": float(np.mean(test.targets ** 2)),
            "ic": spearman(predicted, test.targets), "std": float(predicted.std()),
            "positive": float(np.mean(predicted > 0))}


def test_the_encoder_regressor_learns_a_known_rule_and_not_shuffled_labels():
    data = _toy(1200, seed=0)
    train, val, test = data.subset(np.arange(800)), data.subset(np.arange(800, 1000)), data.subset(np.arange(1000, 1200))
    learnt = _fit_and_score(train, val, test)
    assert learnt["mse"] < 0.8 * learnt["zero_mse"], learnt
    assert learnt["ic"] > IC_BAR, learnt
    assert learnt["std"] > 0.25 and 0.2 < learnt["positive"] < 0.8, learnt
    rng = np.random.default_rng(1)
    shuffled = replace(train, targets=rng.permutation(train.targets))
    shuffled_val = replace(val, targets=rng.permutation(val.targets))
    chance = _fit_and_score(shuffled, shuffled_val, test)
    assert chance["ic"] < IC_BAR, chance


def test_a_constant_forecast_fails_the_bars():
    test = _toy(200, seed=2)
    constant = np.full(len(test), 0.1)
    assert np.isnan(spearman(constant, test.targets))  # no IC at all
    assert constant.std() == 0 and np.mean(constant > 0) == 1.0


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
