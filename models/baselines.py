"""The reference forecasters an LLM regressor must beat, on exactly its inputs (``models.forecasting``).

Each is a ``Forecaster``: ``fit(train, val)`` then ``predict(data)``, on ``ForecastData`` windows of
scaled features. Ridge and LightGBM read the whole window, flattened (the same numbers the
encoder reads); validation picks ridge's penalty and stops LightGBM's boosting. Plain numpy, plus
LightGBM imported on use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from models.forecasting import ForecastData
from models.training.evaluation import fit_ridge, predict_ridge

RIDGE_PENALTIES = (1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0)


def flat(data: ForecastData) -> np.ndarray:
    """(n, window x features): the windows as one row of numbers per sample."""
    return np.asarray(data.windows, dtype=np.float64).reshape(len(data), -1)


class ZeroForecaster:
    """Always 0: no view (the benchmark of out-of-sample R²)."""

    name = "zero"

    def fit(self, train: ForecastData, val: ForecastData) -> None:
        pass

    def predict(self, data: ForecastData) -> np.ndarray:
        return np.zeros(len(data))


class MeanForecaster:
    """The training targets' mean: the drift, and nothing else."""

    name = "mean"

    def __init__(self) -> None:
        self.value: float | None = None

    def fit(self, train: ForecastData, val: ForecastData) -> None:
        self.value = float(np.mean(train.targets))

    def predict(self, data: ForecastData) -> np.ndarray:
        if self.value is None:
            raise RuntimeError("mean: call fit before predict")
        return np.full(len(data), self.value)


class RidgeForecaster:
    """Ridge regression on the flattened window; the penalty with the lowest validation MSE, then
    refitted on train and validation together."""

    name = "ridge"

    def __init__(self, penalties: Sequence[float] = RIDGE_PENALTIES) -> None:
        self.penalties = tuple(penalties)
        self.coef: np.ndarray | None = None
        self.penalty: float | None = None

    def fit(self, train: ForecastData, val: ForecastData) -> None:
        x, y, xv, yv = flat(train), train.targets, flat(val), val.targets
        scores = [(float(np.mean((predict_ridge(fit_ridge(x, y, p), xv) - yv) ** 2)), p) for p in self.penalties]
        self.penalty = min(scores)[1]
        self.coef = fit_ridge(np.vstack([x, xv]), np.concatenate([y, yv]), self.penalty)

    def predict(self, data: ForecastData) -> np.ndarray:
        if self.coef is None:
            raise RuntimeError("ridge: call fit before predict")
        return predict_ridge(self.coef, flat(data))


class LightGbmForecaster:
    """Gradient-boosted trees (LightGBM's own API, no scikit-learn) on the flattened window: small
    trees, strong regularisation, boosting stopped when the validation L2 has not improved for
    ``patience`` rounds. Deterministic (fixed seed, ``deterministic``, row-wise histograms)."""

    name = "lightgbm"

    def __init__(self, *, seed: int = 0, threads: int = 2, rounds: int = 1_000, patience: int = 50,
                 **params: Any) -> None:
        self.params = {"objective": "regression", "learning_rate": 0.02, "num_leaves": 15, "min_data_in_leaf": 100,
                       "bagging_fraction": 0.8, "bagging_freq": 1, "feature_fraction": 0.5, "lambda_l2": 10.0,
                       "seed": seed, "num_threads": threads, "deterministic": True, "force_row_wise": True,
                       "verbosity": -1, **params}
        self.rounds_max = rounds
        self.patience = patience
        self.booster: Any = None

    def fit(self, train: ForecastData, val: ForecastData) -> None:
        import lightgbm

        data = lightgbm.Dataset(flat(train), train.targets, params={"verbosity": -1})
        valid = lightgbm.Dataset(flat(val), val.targets, reference=data)
        self.booster = lightgbm.train(self.params, data, num_boost_round=self.rounds_max, valid_sets=[valid],
                                      callbacks=[lightgbm.early_stopping(self.patience, verbose=False)])

    @property
    def rounds(self) -> int:
        return int(self.booster.best_iteration or self.rounds_max) if self.booster is not None else 0

    def predict(self, data: ForecastData) -> np.ndarray:
        if self.booster is None:
            raise RuntimeError("lightgbm: call fit before predict")
        return np.asarray(self.booster.predict(flat(data), num_iteration=self.rounds), dtype=np.float64)


BASELINES = {"zero": ZeroForecaster, "mean": MeanForecaster, "ridge": RidgeForecaster, "lightgbm": LightGbmForecaster}
