"""The forecaster interface the walk-forward evaluation calls, and the LLM regressor behind it.

Plain numpy at the boundary. A ``ForecastData`` holds, per sample (bar t), the window of scaled
features of bars t-N+1 .. t, the target log(close[t+h] / close[t]) / sigma_t (NOT winsorised: a model
winsorises its own training copy), the bar-close time and a market id. ``forecast_data`` builds one
from bars; a harness that builds its own calls, in this order:

1. ``models.features.compute_features(ts_open, open, high, low, close, volume, timeframe_ms)``
   -> (bars, 16), NaN during the warm-up;
2. ``models.datasets.regression_samples(features, close, vol_window=20, horizon=h)`` -> samples with
   ``bar_index``, ``targets``, ``features``;
3. keep samples whose window is complete: ``models.encoder.window_ready(features, N)[bar_index]``;
4. ``models.features.FeatureScaler.fit(features of the TRAIN samples only)``;
5. ``models.encoder.feature_windows(scaler.transform(features), bar_index, N)`` -> (n, N, 16).

``LlmForecaster(variant)`` trains the numeric-encoder regressor (``models.encoder`` for the variants)
with ``models.training.regressor_trainer.train_on_windows``. Importing this module loads no model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from models.training.regressor_config import RegressorTrainingConfig


@dataclass(frozen=True)
class ForecastData:
    windows: np.ndarray  # (n, N, 16) float64, scaled features of bars t-N+1..t (scaler fit on train only)
    targets: np.ndarray  # (n,) log(close[t+h]/close[t]) / sigma_t, NOT winsorised
    ts: np.ndarray  # (n,) int64 bar-close epoch ms
    group: np.ndarray  # (n,) int, market id when several markets are pooled (0 otherwise)

    def __post_init__(self) -> None:
        n = len(self.targets)
        if np.asarray(self.windows).ndim != 3:
            raise ValueError(f"windows must be (n, N, features), got shape {np.shape(self.windows)}")
        if not len(self.windows) == n == len(self.ts) == len(self.group):
            raise ValueError(f"windows, targets, ts and group need one length, got {len(self.windows)}, {n}, "
                             f"{len(self.ts)}, {len(self.group)}")

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, index: np.ndarray) -> ForecastData:
        return ForecastData(self.windows[index], self.targets[index], self.ts[index], self.group[index])


class Forecaster(Protocol):
    name: str

    def fit(self, train: ForecastData, val: ForecastData) -> None: ...

    def predict(self, data: ForecastData) -> np.ndarray: ...  # predicted mean of the target, (n,)


def forecast_data(ts_close: np.ndarray, open: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray,
                  volume: np.ndarray, timeframe_ms: int, *, window: int, horizon: int, scaler: Any = None,
                  vol_window: int = 20, group: int = 0, train_until_ms: int | None = None) -> tuple[ForecastData, Any]:
    """``ForecastData`` of every bar with a complete window and a target, and the ``FeatureScaler`` used.

    ``scaler`` None fits one on the samples whose bar closes at or before ``train_until_ms`` (required
    then: the scaler must see training data only). Targets near the end of ``close`` that would need
    bars after it are absent; the caller purges across its own split boundaries (horizon + window - 1
    bars at least)."""
    from models.datasets import regression_samples
    from models.encoder import feature_windows, window_ready
    from models.features import FeatureScaler, compute_features

    ts_close = np.asarray(ts_close, dtype=np.int64)
    ts_open = ts_close - int(timeframe_ms)
    features = compute_features(ts_open, open, high, low, close, volume, timeframe_ms)
    samples = regression_samples(features, close, vol_window=vol_window, horizon=horizon)
    samples = samples.subset(np.flatnonzero(window_ready(features, window)[samples.bar_index]))
    if scaler is None:
        if train_until_ms is None:
            raise ValueError("pass a fitted scaler, or train_until_ms to fit one on the training bars only")
        fit_rows = samples.features[ts_close[samples.bar_index] <= train_until_ms]
        if not len(fit_rows):
            raise ValueError("no samples at or before train_until_ms to fit the feature scaler on")
        scaler = FeatureScaler.fit(fit_rows)
    windows = feature_windows(scaler.transform(features), samples.bar_index, window)
    data = ForecastData(windows, samples.targets.copy(), ts_close[samples.bar_index],
                        np.full(len(samples), group, dtype=np.int64))
    return data, scaler


class LlmForecaster:
    """The numeric-encoder regressor as a ``Forecaster``: ``variant`` is one of ``models.settings.VARIANTS``
    (llm, no_llm, random_backbone, head_only); ``backbone`` the backbone source ("smollm2", "tiny", a
    folder). ``config`` sets everything else (its input, variant and backbone source are overridden).
    Each ``fit`` starts from a fresh adapter, head and encoder."""

    def __init__(self, variant: str, backbone: str = "smollm2", config: RegressorTrainingConfig | None = None,
                 progress: bool = False) -> None:
        base = config or RegressorTrainingConfig()
        self.config = replace(base, input="encoder", variant=variant, backbone=replace(base.backbone, source=backbone))
        self.name = f"llm_{variant}"
        self.progress = progress
        self.predictor: Any = None
        self.fit_record: dict[str, Any] = {}

    def fit(self, train: ForecastData, val: ForecastData) -> None:
        from models.training.regressor_trainer import encoder_predictor, train_on_windows

        self._check(train)
        self._check(val)
        self.predictor = encoder_predictor(self.config)
        result, record = train_on_windows(self.predictor, self.config, train.windows, train.targets, None,
                                          val.windows, val.targets, progress=self.progress)
        self.fit_record = {**record, "fit": result.as_dict()}

    def predict(self, data: ForecastData) -> np.ndarray:
        if self.predictor is None:
            raise RuntimeError(f"{self.name}: call fit before predict")
        self._check(data)
        mean, _ = self.predictor.predict_regression_windows(data.windows,
                                                            batch_size=self.config.optim.eval_batch_size)
        return mean

    def _check(self, data: ForecastData) -> None:
        shape = (self.config.window, self.config.encoder_settings().features)
        if data.windows.shape[1:] != shape:
            raise ValueError(f"{self.name}: windows must be (n, {shape[0]}, {shape[1]}) for window = "
                             f"{self.config.window}, got {data.windows.shape}")
