"""Fine-tune the ``regressor`` adapter and head on bars, and evaluate it against baselines.

Data flow: bars -> ``compute_features`` (16 per bar, no lookahead) -> ``regression_samples``
(target: log return over ``horizon`` bars / realised volatility) -> ``time_split`` (train,
validation, test in time order, purged by ``purge_bars``) -> ``FeatureScaler`` fitted on train only ->
the model's inputs: windows of the last ``window`` bars of scaled features for the numeric encoder
(``input = "encoder"``, ``models.encoder``) or prompts (``prompts.regression_text``, ``input = "text"``)
-> Gaussian / beta-NLL training on winsorised train targets (``target_clip``) with the chosen sample
weights (``weighting``), several epochs, early stopping on validation.

``train_on_windows`` is the encoder path's core: it takes windows, targets and weights (the
walk-forward harness calls it through ``models.forecasting.LlmForecaster``); ``RegressorTrainer``
builds those from bars. ``evaluate_regressor`` rebuilds the same split from the same bars (checked by
fingerprint) and reports the test metrics beside ridge and random-backbone baselines.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.backbone import Backbone, load_backbone
from models.datasets import (
    RegressionSamples,
    effective_sample_size,
    regression_samples,
    sample_weights,
    time_split,
    winsorise,
)
from models.encoder import feature_windows, window_ready
from models.features import FeatureScaler, compute_features
from models.heads import gaussian_nll
from models.predictor import Predictor
from models.prompts import regression_text
from models.settings import BackboneConfig
from models.training.checkpoint import (
    EVALUATION_FILE,
    Checkpoint,
    CheckpointError,
    check_output_folder,
    load_into,
    read_checkpoint,
    write_checkpoint,
    write_json,
)
from models.training.evaluation import random_backbone_outputs, regression_metrics, ridge_baseline
from models.training.inputs import TaskInputs, inputs_record
from models.training.loop import FitResult, fit
from models.training.regressor_config import RegressorTrainingConfig

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True, slots=True)
class BarArrays:
    """The bars a regressor learns from; the engine's ``BarSeries`` converts to this."""

    asset: str
    timeframe: str  # e.g. "1h", for the prompt
    timeframe_ms: int
    ts_open: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    source: str = ""


@dataclass(slots=True)
class RegressionData:
    samples: RegressionSamples
    splits: dict[str, np.ndarray]  # positions into samples
    scaler: FeatureScaler
    texts: list[str]  # one prompt text per sample (input "text"; empty for the encoder)
    scaled: np.ndarray  # scaled features per sample (the ridge baseline's inputs)
    weights: np.ndarray  # per TRAIN sample (ones with weighting "none")
    fingerprint: dict[str, Any]
    windows: np.ndarray | None = None  # (n, window, 16) per sample (input "encoder")

    def part(self, name: str) -> tuple[Any, np.ndarray, np.ndarray]:
        """(model inputs: texts or windows, scaled features, targets) of a split."""
        index = self.splits[name]
        inputs = self.windows[index] if self.windows is not None else [self.texts[i] for i in index]
        return inputs, self.scaled[index], self.samples.targets[index]


def train_weights(targets: np.ndarray, config: RegressorTrainingConfig) -> np.ndarray:
    """The sample weights of these TRAIN targets under ``config`` (mean 1)."""
    return sample_weights(targets, config.sample_weighting, cap=config.weight_cap, bins=config.weight_bins,
                          smoothing=config.weight_smoothing)


def prepare_regression_data(bars: BarArrays, config: RegressorTrainingConfig) -> RegressionData:
    features = compute_features(bars.ts_open, bars.open, bars.high, bars.low, bars.close, bars.volume,
                                bars.timeframe_ms)
    samples = regression_samples(features, bars.close, vol_window=config.vol_window, horizon=config.horizon)
    encoder = config.input == "encoder"
    if encoder:  # only bars with a full window of finite features
        samples = samples.subset(np.flatnonzero(window_ready(features, config.window)[samples.bar_index]))
    train, val, test = time_split(samples.bar_index, config.splits, purge=config.purge_bars)
    if config.max_train_samples and len(train) > config.max_train_samples:
        train = train[-config.max_train_samples:]  # the most recent, next to validation
    scaler = FeatureScaler.fit(samples.features[train])
    scaled = scaler.transform(samples.features)
    windows = None
    if encoder:
        windows = feature_windows(scaler.transform(features), samples.bar_index, config.window)
        texts: list[str] = []
    else:
        texts = [regression_text(bars.asset, bars.timeframe, row, config.feature_digits) for row in scaled]
    weights = train_weights(samples.targets[train], config)
    splits = {"train": train, "val": val, "test": test}
    fingerprint = {
        "source": bars.source, "asset": bars.asset, "timeframe": bars.timeframe, "bars": int(len(bars.close)),
        "samples": len(samples), "all": samples.fingerprint(),
        **{f"{name}_size": int(len(index)) for name, index in splits.items()},
        **{f"{name}_hash": samples.subset(index).fingerprint() for name, index in splits.items()},
        **{f"{name}_first_bar_ms": int(bars.ts_open[samples.bar_index[index[0]]]) for name, index in splits.items()},
    }
    return RegressionData(samples, splits, scaler, texts, scaled, weights, fingerprint, windows)


def backbone_config(config: RegressorTrainingConfig) -> BackboneConfig:
    """The backbone this config trains on: random weights for the random_backbone variant."""
    if config.input == "encoder" and config.variant == "random_backbone":
        return replace(config.backbone, random_init=True)
    return config.backbone


def encoder_predictor(config: RegressorTrainingConfig, backbone: Backbone | None = None, *,
                      merge_for_inference: bool = True) -> Predictor:
    """A predictor with a fresh regressor adapter, head and numeric encoder as ``config`` says
    (``merge_for_inference``: as ``Predictor``'s; a trainer passes False, see ``RegressorTrainer``)."""
    if config.input != "encoder":
        raise ValueError("encoder_predictor needs input = 'encoder'")
    predictor = Predictor(backbone or load_backbone(backbone_config(config)), merge_for_inference=merge_for_inference)
    predictor.add_task("regressor", config.lora, asdict(config.head), seed=config.optim.seed)
    predictor.add_numeric_encoder("regressor", config.encoder_settings(), seed=config.optim.seed)
    return predictor


def train_on_windows(predictor: Predictor, config: RegressorTrainingConfig, x_train: np.ndarray,
                     y_train: np.ndarray, weights: np.ndarray | None, x_val: np.ndarray, y_val: np.ndarray, *,
                     progress: bool = False) -> tuple[FitResult, dict[str, Any]]:
    """Train the predictor's regressor (adapter, head, numeric encoder) on windows (n, window, 16) and
    their targets, the targets winsorised here (``target_clip``, train only); validation on the raw
    ``y_val`` drives early stopping (``config.selection``). ``weights`` None: ``train_weights`` of ``y_train``.
    Returns the fit and a record of the data (weighting, effective sample size, clip bound)."""
    x_train, x_val = np.asarray(x_train, dtype=np.float64), np.asarray(x_val, dtype=np.float64)
    y_train, y_val = np.asarray(y_train, dtype=np.float64), np.asarray(y_val, dtype=np.float64)
    if len(x_train) != len(y_train) or len(x_val) != len(y_val):
        raise ValueError(f"{len(x_train)} train windows for {len(y_train)} targets, {len(x_val)} validation "
                         f"windows for {len(y_val)}")
    if not len(x_train) or not len(x_val):
        raise ValueError("training needs train and validation samples")
    weights = train_weights(y_train, config) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(weights) != len(y_train):
        raise ValueError(f"{len(weights)} weights for {len(y_train)} train targets")
    if config.max_val_samples and len(x_val) > config.max_val_samples:
        x_val, y_val = x_val[-config.max_val_samples:], y_val[-config.max_val_samples:]
    y_train, center = centered(y_train, weights, config)
    y_fit, bound = winsorise(y_train, config.target_clip)
    head = predictor.heads["regressor"]
    x = torch.as_tensor(x_train, dtype=torch.float32)
    targets = torch.as_tensor(y_fit, dtype=torch.float32)
    w = torch.as_tensor(weights, dtype=torch.float32)
    beta = config.beta if config.loss == "beta_nll" else 0.0
    size = config.optim.eval_batch_size

    def batch_loss(index: np.ndarray) -> torch.Tensor:
        mean, logvar = head(predictor.window_states("regressor", x[index], grad=True))
        return gaussian_nll(mean, logvar, targets[index], w[index], beta)

    def validate() -> dict[str, float]:
        mean, std = predictor.predict_regression_windows(x_val, batch_size=min(size, len(x_val)))
        return regression_metrics(mean, std, y_val)

    metric, higher = config.selection
    result = fit(predictor, "regressor", len(x_train), batch_loss, validate, metric, config.optim,
                 higher_is_better=higher, progress=progress)
    shift = refit_intercept(predictor, x_train, y_train, weights, size) if config.refits_intercept else 0.0
    record = {"weighting": config.sample_weighting, "effective_sample_size": effective_sample_size(weights),
              "intercept_shift": shift, "target_center": center,
              "target_clip_bound": bound, "clipped_share": float(np.mean(np.abs(y_train) > bound)),
              "train_samples": len(x_train), "val_samples": len(x_val)}
    return result, record


def centered(y: np.ndarray, weights: np.ndarray, config: RegressorTrainingConfig) -> tuple[np.ndarray, float]:
    """The training targets less their weighted mean where ``config.center_target`` (else as they are), and that mean."""
    if not config.center_target:
        return y, 0.0
    center = float(np.average(y, weights=weights))
    return y - center, center


def refit_intercept(predictor: Predictor, x: np.ndarray, y: np.ndarray, weights: np.ndarray, batch_size: int) -> float:
    """Shift the regression head's mean bias so the weighted mean prediction on windows ``x`` equals the
    weighted mean of ``y`` (the least-squares intercept given the rest of the network); returns the shift."""
    mean, _ = predictor.predict_regression_windows(x, batch_size=min(batch_size, len(x)))
    shift = float(np.average(np.asarray(y, dtype=np.float64) - mean, weights=weights))
    with torch.no_grad():
        predictor.heads["regressor"].net[-1].bias[0] += shift
    predictor.changed("regressor")
    return shift


class RegressorTrainer:
    """``train(bars, folder)`` fine-tunes the adapter and writes a checkpoint folder."""

    def __init__(self, config: RegressorTrainingConfig | None = None, *, progress: bool = False,
                 backbone: Backbone | None = None) -> None:
        self.config = config or RegressorTrainingConfig()
        self.progress = progress
        self._backbone = backbone

    def train(self, bars: BarArrays, folder: str | Path, describe: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train and write the checkpoint; ``describe`` (how to load the bars again) goes into
        ``config.json`` so ``evaluate`` can rebuild the same split."""
        check_output_folder(folder)  # a folder that is not ours is refused before, not after, training
        config = self.config
        data = prepare_regression_data(bars, config)
        started = time.perf_counter()
        backbone = self._backbone or load_backbone(backbone_config(config))
        if config.input == "encoder":
            return self._train_encoder(bars, folder, describe, data, backbone, started)
        # validation runs through the LoRA layers, as in the sentiment trainer: a merged copy of the adapted
        # weights (~0.4 GB for SmolLM2) would be rebuilt at every validation, since the adapter moves between them
        predictor = Predictor(backbone, merge_for_inference=False)
        predictor.add_task("regressor", config.lora, asdict(config.head), seed=config.optim.seed)
        predictor.set_template("regressor", config.template)
        train_texts, _, y_train = data.part("train")
        encoder = predictor.encoders["regressor"]
        cache, size = config.optim.cache_lower_states, config.optim.eval_batch_size
        train = TaskInputs(predictor, "regressor", encoder.encode(train_texts), cache_lower=cache, batch_size=size)
        head = predictor.heads["regressor"]
        y_train, center = centered(y_train, data.weights, config)
        targets = torch.as_tensor(y_train, dtype=torch.float32)
        weights = torch.as_tensor(data.weights, dtype=torch.float32)
        beta = config.beta if config.loss == "beta_nll" else 0.0
        val_texts, _, y_val = data.part("val")
        if config.max_val_samples and len(val_texts) > config.max_val_samples:
            val_texts, y_val = val_texts[-config.max_val_samples:], y_val[-config.max_val_samples:]
        val = TaskInputs(predictor, "regressor", encoder.encode(val_texts), cache_lower=cache, batch_size=size)

        def batch_loss(index: np.ndarray) -> torch.Tensor:
            mean, logvar = head(train.states(index, grad=True))
            return gaussian_nll(mean, logvar, targets[index], weights[index], beta)

        def validate(*, full: bool = False) -> dict[str, float]:
            if val.lower is not None and not full:  # predict_regression's numbers, through the adapted layers only
                mean_t, logvar_t = val.head_outputs(size)
                mean, std = mean_t.double().numpy(), np.exp(0.5 * logvar_t.double().numpy())
            else:
                mean, std = predictor.predict_regression(val_texts, batch_size=size)
            return regression_metrics(mean, std, y_val)

        log.info("training the regressor on %d samples (%s), validating on %d", len(train_texts), bars.source,
                 len(val_texts))
        metric, higher = config.selection
        result = fit(predictor, "regressor", len(train_texts), batch_loss, validate, metric, config.optim,
                     higher_is_better=higher, progress=self.progress, lengths=train.lengths,
                     sample_weights=data.weights)
        metrics = {
            "task": "regressor", "fit": result.as_dict(), "validation": validate(full=True),
            "train_samples": len(train_texts), "seconds": time.perf_counter() - started,
            "backbone_load_seconds": backbone.load_seconds, "inputs": inputs_record(train, val),
            "data": {"target_center": center},
        }
        write_checkpoint(folder, predictor, "regressor", {"config": config.to_dict(), "data": {**_describe(bars), **(describe or {})}},
                         data.fingerprint, metrics, data.scaler.to_dict())
        return metrics

    def _train_encoder(self, bars: BarArrays, folder: str | Path, describe: dict[str, Any] | None,
                       data: RegressionData, backbone: Backbone, started: float) -> dict[str, Any]:
        config = self.config
        predictor = encoder_predictor(config, backbone, merge_for_inference=False)  # validation unmerged (above)
        x_train, _, y_train = data.part("train")
        x_val, _, y_val = data.part("val")
        log.info("training the %s regressor (numeric encoder, %d bars a window) on %d samples (%s), validating "
                 "on %d", config.variant, config.window, len(x_train), bars.source,
                 min(len(x_val), config.max_val_samples or len(x_val)))
        result, record = train_on_windows(predictor, config, x_train, y_train, data.weights, x_val, y_val,
                                          progress=self.progress)
        mean, std = predictor.predict_regression_windows(x_val, batch_size=config.optim.eval_batch_size)
        seconds = time.perf_counter() - started
        metrics = {
            "task": "regressor", "input": "encoder", "variant": config.variant, "fit": result.as_dict(),
            "validation": regression_metrics(mean, std, y_val), "train_samples": len(x_train), "seconds": seconds,
            "train_samples_per_second": result.steps * config.optim.batch_size / max(result.seconds, 1e-9),
            "backbone_load_seconds": backbone.load_seconds, "data": record,
        }
        write_checkpoint(folder, predictor, "regressor", {"config": config.to_dict(), "data": {**_describe(bars), **(describe or {})}},
                         data.fingerprint, metrics, data.scaler.to_dict())
        return metrics


def _describe(bars: BarArrays) -> dict[str, Any]:
    return {"source": bars.source, "asset": bars.asset, "timeframe": bars.timeframe,
            "timeframe_ms": bars.timeframe_ms}


def load_regressor(folder: str | Path, backbone: Backbone | None = None) -> tuple[Predictor, Checkpoint]:
    """A predictor with the checkpoint's regressor adapter, and the checkpoint itself."""
    checkpoint = read_checkpoint(folder, "regressor")
    config = RegressorTrainingConfig.from_dict(checkpoint.config["config"])
    predictor = Predictor(backbone or load_backbone(backbone_config(config)))
    load_into(predictor, checkpoint)
    return predictor, checkpoint


def evaluate_regressor(folder: str | Path, bars: BarArrays, *, split: str = "test",
                       baselines: tuple[str, ...] = ("ridge", "random"), batch_size: int = 32,
                       max_samples: int = 0, baseline_train_samples: int = 2000) -> dict[str, Any]:
    """Metrics of the checkpoint on ``split`` of ``bars`` (the same split as in training), with
    baselines: always predicting zero, ridge on the same scaled features, and the head trained on a
    random backbone's states (on the most recent ``baseline_train_samples`` training samples).
    ``max_samples`` > 0 keeps only the most recent samples of the split. Writes the report to
    ``evaluation.json`` in the checkpoint folder and returns it."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}")
    predictor, checkpoint = load_regressor(folder)
    config = RegressorTrainingConfig.from_dict(checkpoint.config["config"])
    data = prepare_regression_data(bars, config)
    if data.fingerprint["all"] != checkpoint.data_fingerprint.get("all"):
        raise CheckpointError(
            f"these bars ({bars.source}) are not the ones {checkpoint.folder} was trained on; the held-out "
            "split would not be held out. Pass the training data (see config.json, data.source)")
    texts, x, y = data.part(split)
    if max_samples and len(texts) > max_samples:
        texts, x, y = texts[-max_samples:], x[-max_samples:], y[-max_samples:]
    started = time.perf_counter()
    if config.input == "encoder":
        mean, std = predictor.predict_regression_windows(texts, batch_size=batch_size)
    else:
        mean, std = predictor.predict_regression(texts, batch_size=batch_size)
    report: dict[str, Any] = {
        "task": "regressor", "split": split, "checkpoint": str(checkpoint.folder), "data": bars.source,
        "model": regression_metrics(mean, std, y), "predictions_per_second": len(texts) / (time.perf_counter() - started),
        "baselines": {},
    }
    _, x_train, y_train = data.part("train")
    _, x_val, y_val = data.part("val")
    if "ridge" in baselines:
        report["baselines"]["ridge"] = ridge_baseline(x_train, y_train, x_val, y_val, x, y)
    report["baselines"]["zero"] = regression_metrics(np.zeros(len(y)), np.full(len(y), np.std(y_train)), y)
    if "random" in baselines and config.input == "encoder":
        report["baselines"]["random_backbone"] = _random_backbone_encoder(config, data, texts, y, batch_size,
                                                                          baseline_train_samples)
    elif "random" in baselines:
        report["baselines"]["random_backbone"] = _random_backbone_baseline(
            config, data, texts, y, batch_size, baseline_train_samples)
    write_json(Path(folder) / EVALUATION_FILE, report)
    return report


def _random_backbone_baseline(config: RegressorTrainingConfig, data: RegressionData, texts: list[str],
                              y: np.ndarray, batch_size: int, limit: int) -> dict[str, Any]:
    train_texts, _, y_train = data.part("train")
    weights = data.weights
    if limit and len(train_texts) > limit:  # the most recent: a bare-backbone pass costs a full forward each
        train_texts, y_train, weights = train_texts[-limit:], y_train[-limit:], weights[-limit:]
    mean, logvar = random_backbone_outputs(
        "regressor", config.backbone, asdict(config.head), train_texts, y_train, texts, batch_size=batch_size,
        seed=config.optim.seed, weights=weights, loss_beta=config.beta if config.loss == "beta_nll" else 0.0)
    out = regression_metrics(mean.double().numpy(), np.exp(0.5 * logvar.double().numpy()), y)
    return {"train_samples": len(train_texts), **out}


def _random_backbone_encoder(config: RegressorTrainingConfig, data: RegressionData, windows: np.ndarray,
                             y: np.ndarray, batch_size: int, limit: int) -> dict[str, Any]:
    """The same encoder training on a random-weight backbone (the random_backbone variant), on the most
    recent ``limit`` training samples."""
    random_config = replace(config, variant="random_backbone")
    x_train, _, y_train = data.part("train")
    weights = data.weights
    if limit and len(x_train) > limit:
        x_train, y_train, weights = x_train[-limit:], y_train[-limit:], weights[-limit:]
    x_val, _, y_val = data.part("val")
    predictor = encoder_predictor(random_config)
    train_on_windows(predictor, random_config, x_train, y_train, weights, x_val, y_val)
    mean, std = predictor.predict_regression_windows(windows, batch_size=batch_size)
    return {"train_samples": len(x_train), **regression_metrics(mean, std, y)}
