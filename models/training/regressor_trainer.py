"""Fine-tune the ``regressor`` adapter and head on bars, and evaluate it against baselines.

Data flow: bars -> ``compute_features`` (16 per bar, no lookahead) -> ``regression_samples``
(target: next-period log return / realised volatility) -> ``time_split`` (train, validation, test
in time order, purged) -> ``FeatureScaler`` fitted on train only -> prompts
(``prompts.regression_text`` of the scaled values) -> Gaussian / beta-NLL training with
inverse-density weights on the train split. ``evaluate_regressor`` rebuilds the same split from the same bars
(checked by fingerprint) and reports the test metrics beside ridge and random-backbone baselines.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.backbone import Backbone, load_backbone
from models.datasets import RegressionSamples, density_weights, regression_samples, time_split
from models.features import FeatureScaler, compute_features
from models.heads import gaussian_nll
from models.predictor import Predictor
from models.prompts import regression_text
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
from models.training.loop import fit
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
    texts: list[str]  # one prompt text per sample
    scaled: np.ndarray  # scaled features per sample (the ridge baseline's inputs)
    weights: np.ndarray  # per TRAIN sample (ones without density weighting)
    fingerprint: dict[str, Any]

    def part(self, name: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        index = self.splits[name]
        return [self.texts[i] for i in index], self.scaled[index], self.samples.targets[index]


def prepare_regression_data(bars: BarArrays, config: RegressorTrainingConfig) -> RegressionData:
    features = compute_features(bars.ts_open, bars.open, bars.high, bars.low, bars.close, bars.volume,
                                bars.timeframe_ms)
    samples = regression_samples(features, bars.close, vol_window=config.vol_window, horizon=config.horizon)
    train, val, test = time_split(samples.bar_index, config.splits, purge=config.purge)
    if config.max_train_samples and len(train) > config.max_train_samples:
        train = train[-config.max_train_samples:]  # the most recent, next to validation
    scaler = FeatureScaler.fit(samples.features[train])
    scaled = scaler.transform(samples.features)
    texts = [regression_text(bars.asset, bars.timeframe, row, config.feature_digits) for row in scaled]
    y_train = samples.targets[train]
    weights = (density_weights(y_train, bins=config.weight_bins, smoothing=config.weight_smoothing,
                               cap=config.weight_cap) if config.density_weighting else np.ones(len(train)))
    splits = {"train": train, "val": val, "test": test}
    fingerprint = {
        "source": bars.source, "asset": bars.asset, "timeframe": bars.timeframe, "bars": int(len(bars.close)),
        "samples": len(samples), "all": samples.fingerprint(),
        **{f"{name}_size": int(len(index)) for name, index in splits.items()},
        **{f"{name}_hash": samples.subset(index).fingerprint() for name, index in splits.items()},
        **{f"{name}_first_bar_ms": int(bars.ts_open[samples.bar_index[index[0]]]) for name, index in splits.items()},
    }
    return RegressionData(samples, splits, scaler, texts, scaled, weights, fingerprint)


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
        backbone = self._backbone or load_backbone(config.backbone)
        predictor = Predictor(backbone)
        predictor.add_task("regressor", config.lora, asdict(config.head), seed=config.optim.seed)
        predictor.set_template("regressor", config.template)
        train_texts, _, y_train = data.part("train")
        encoder = predictor.encoders["regressor"]
        cache, size = config.optim.cache_lower_states, config.optim.eval_batch_size
        train = TaskInputs(predictor, "regressor", encoder.encode(train_texts), cache_lower=cache, batch_size=size)
        head = predictor.heads["regressor"]
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
        result = fit(predictor, "regressor", len(train_texts), batch_loss, validate, "nll", config.optim,
                     higher_is_better=False, progress=self.progress, lengths=train.lengths)
        metrics = {
            "task": "regressor", "fit": result.as_dict(), "validation": validate(full=True),
            "train_samples": len(train_texts), "seconds": time.perf_counter() - started,
            "backbone_load_seconds": backbone.load_seconds, "inputs": inputs_record(train, val),
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
    predictor = Predictor(backbone or load_backbone(config.backbone))
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
    if "random" in baselines:
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
