"""Fine-tune the ``sentiment`` adapter and head on labelled headlines, calibrate, evaluate.

Splits: without a separate test set, ``test_fraction`` of the data is held out (stratified, fixed
seed) and ``val_fraction`` of the rest is the validation split; with one (e.g. the Twitter set's
``sent_valid.csv``), the whole test file is held out and validation comes from the training file.
Validation drives early stopping, then fits the softmax temperature (``fit_temperature``).
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
from models.datasets import TextDataset, stratified_split
from models.heads import fit_temperature
from models.predictor import Predictor
from models.prompts import headline_text
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
from models.training.evaluation import (
    classification_metrics,
    random_backbone_outputs,
    tfidf_logistic_probabilities,
)
from models.training.inputs import TaskInputs, inputs_record
from models.training.loop import fit
from models.training.sentiment_config import SentimentTrainingConfig, class_weights

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SentimentData:
    train: TextDataset
    val: TextDataset
    test: TextDataset
    fingerprint: dict[str, Any]

    def split(self, name: str) -> TextDataset:
        if name not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {name!r}")
        return getattr(self, name)


def prepare_sentiment_data(data: TextDataset, config: SentimentTrainingConfig,
                           test: TextDataset | None = None) -> SentimentData:
    seed = config.split_seed
    if test is None:
        if not config.test_fraction:
            raise ValueError("no test set: give a separate one or a test_fraction > 0")
        rest, test_index = stratified_split(data.labels, (1 - config.test_fraction, config.test_fraction), seed)
        rest_data, test = data.subset(rest), data.subset(test_index)
    else:
        rest_data = data
    train_index, val_index = stratified_split(rest_data.labels, (1 - config.val_fraction, config.val_fraction), seed)
    train, val = rest_data.subset(train_index), rest_data.subset(val_index)
    if config.max_train_samples and len(train) > config.max_train_samples:
        keep = config.max_train_samples / len(train)
        train = train.subset(stratified_split(train.labels, (keep, 1 - keep), seed)[0])
    fingerprint = {
        "source": data.source, "test_source": test.source, "all": data.fingerprint(),
        "test_all": test.fingerprint(),
        **{f"{name}_size": len(part) for name, part in (("train", train), ("val", val), ("test", test))},
        **{f"{name}_hash": part.fingerprint() for name, part in (("train", train), ("val", val), ("test", test))},
        **{f"{name}_counts": part.counts() for name, part in (("train", train), ("val", val), ("test", test))},
    }
    return SentimentData(train, val, test, fingerprint)


class SentimentTrainer:
    """``train(data, folder)`` fine-tunes the adapter, fits the temperature, writes a checkpoint."""

    def __init__(self, config: SentimentTrainingConfig | None = None, *, progress: bool = False,
                 backbone: Backbone | None = None) -> None:
        self.config = config or SentimentTrainingConfig()
        self.progress = progress
        self._backbone = backbone

    def train(self, data: SentimentData, folder: str | Path, describe: dict[str, Any] | None = None) -> dict[str, Any]:
        check_output_folder(folder)  # a folder that is not ours is refused before, not after, training
        config = self.config
        started = time.perf_counter()
        backbone = self._backbone or load_backbone(config.backbone)
        # validation runs through the LoRA layers: a merged copy of the adapted weights (~0.4 GB) would
        # be rebuilt at every validation, since the adapter moves between them
        predictor = Predictor(backbone, merge_for_inference=False)
        predictor.add_task("sentiment", config.lora, asdict(config.head), seed=config.optim.seed)
        predictor.set_template("sentiment", config.template)
        encoder = predictor.encoders["sentiment"]
        labels = torch.as_tensor(data.train.labels)
        val_texts = [headline_text(t) for t in data.val.texts]
        cache, size = config.optim.cache_lower_states, config.optim.eval_batch_size
        train = TaskInputs(predictor, "sentiment", encoder.encode([headline_text(t) for t in data.train.texts]),
                           cache_lower=cache, batch_size=size)
        val = TaskInputs(predictor, "sentiment", encoder.encode(val_texts), cache_lower=cache, batch_size=size)
        head = predictor.heads["sentiment"]

        weights = None
        if config.class_weights != "none":  # per sample, so that a split batch adds up to the whole one
            per_class = class_weights(data.train.labels, head.config.classes, config.class_weights)
            weights = per_class[np.asarray(data.train.labels, dtype=np.int64)]
            log.info("class weights (%s): %s", config.class_weights, ", ".join(f"{w:.3f}" for w in per_class))
        sample_weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)

        def batch_loss(index: np.ndarray) -> torch.Tensor:
            logits = head(train.states(index, grad=True))
            if sample_weights is None:
                return torch.nn.functional.cross_entropy(logits, labels[index], label_smoothing=config.label_smoothing)
            losses = torch.nn.functional.cross_entropy(logits, labels[index], label_smoothing=config.label_smoothing,
                                                       reduction="none")
            w = sample_weights[index]
            return (w * losses).sum() / w.sum()

        def validate() -> dict[str, float]:
            if val.lower is not None:  # the same numbers as predict_sentiment, through the adapted layers only
                probs = head.probabilities(val.head_outputs(size)).double().numpy()
            else:
                probs = self._probabilities(predictor, val_texts)
            metrics = classification_metrics(probs, data.val.labels)
            return {k: v for k, v in metrics.items() if isinstance(v, float)}

        log.info("training sentiment on %d texts, validating on %d (%s)", len(data.train), len(data.val), data.train.source)
        result = fit(predictor, "sentiment", len(data.train), batch_loss, validate, "accuracy", config.optim,
                     higher_is_better=True, progress=self.progress, lengths=train.lengths, sample_weights=weights,
                     tie_key="macro_f1")
        logits = self._logits(predictor, val_texts)
        head.temperature.fill_(fit_temperature(logits, torch.as_tensor(data.val.labels)))
        predictor.changed("sentiment")
        metrics = {
            "task": "sentiment", "fit": result.as_dict(), "temperature": float(head.temperature),
            "validation": classification_metrics(self._probabilities(predictor, val_texts), data.val.labels),
            "train_samples": len(data.train), "seconds": time.perf_counter() - started,
            "backbone_load_seconds": backbone.load_seconds, "inputs": inputs_record(train, val),
        }
        write_checkpoint(folder, predictor, "sentiment", {"config": config.to_dict(), "data": describe or {}},
                         data.fingerprint, metrics)
        return metrics

    def _logits(self, predictor: Predictor, texts: list[str]) -> torch.Tensor:
        predictor.train_mode("sentiment", False)
        suffixes = predictor.encoders["sentiment"].encode(texts)
        size = self.config.optim.eval_batch_size
        with torch.inference_mode():
            return torch.cat([predictor.classify(suffixes[i:i + size]) for i in range(0, len(suffixes), size)])

    def _probabilities(self, predictor: Predictor, texts: list[str]) -> np.ndarray:
        return predictor.predict_sentiment(texts, batch_size=self.config.optim.eval_batch_size)


def load_sentiment(folder: str | Path, backbone: Backbone | None = None) -> tuple[Predictor, Checkpoint]:
    """A predictor with the checkpoint's sentiment adapter, and the checkpoint itself."""
    checkpoint = read_checkpoint(folder, "sentiment")
    config = SentimentTrainingConfig.from_dict(checkpoint.config["config"])
    predictor = Predictor(backbone or load_backbone(config.backbone))
    load_into(predictor, checkpoint)
    return predictor, checkpoint


def evaluate_sentiment(folder: str | Path, data: TextDataset, test: TextDataset | None = None, *,
                       split: str = "test", baselines: tuple[str, ...] = ("majority", "tfidf", "random"),
                       batch_size: int = 32, baseline_train_samples: int = 2000) -> dict[str, Any]:
    """Metrics of the checkpoint on the held-out split (rebuilt exactly as in training, checked by
    fingerprint), with a majority-class baseline, TF-IDF + logistic regression on the same training
    split (C chosen on its validation split) and the head trained on a random backbone's states (on a
    stratified subsample of ``baseline_train_samples`` training texts)."""
    predictor, checkpoint = load_sentiment(folder)
    config = SentimentTrainingConfig.from_dict(checkpoint.config["config"])
    prepared = prepare_sentiment_data(data, config, test)
    expected = checkpoint.data_fingerprint
    if prepared.fingerprint["all"] != expected.get("all") or prepared.fingerprint["test_hash"] != expected.get("test_hash"):
        raise CheckpointError(
            f"this data ({data.source}) is not what {checkpoint.folder} was trained and held out on; "
            "pass the same files (see config.json, data)")
    part = prepared.split(split)
    texts = [headline_text(t) for t in part.texts]
    started = time.perf_counter()
    probs = predictor.predict_sentiment(texts, batch_size=batch_size)
    report: dict[str, Any] = {
        "task": "sentiment", "split": split, "checkpoint": str(checkpoint.folder), "data": data.source,
        "temperature": float(predictor.heads["sentiment"].temperature),
        "model": classification_metrics(probs, part.labels),
        "predictions_per_second": len(texts) / (time.perf_counter() - started), "baselines": {},
    }
    train = prepared.train
    if "majority" in baselines:
        majority = np.zeros((len(part), 3))
        majority[:, np.bincount(train.labels, minlength=3).argmax()] = 1.0
        report["baselines"]["majority"] = classification_metrics(majority, part.labels)
    if "tfidf" in baselines:
        probabilities, c = tfidf_logistic_probabilities(
            [headline_text(t) for t in train.texts], train.labels,
            [headline_text(t) for t in prepared.val.texts], prepared.val.labels, texts)
        report["baselines"]["tfidf_logistic"] = {"train_samples": len(train), "C": c,
                                                 **classification_metrics(probabilities, part.labels)}
    if "random" in baselines:
        if baseline_train_samples and len(train) > baseline_train_samples:
            keep = baseline_train_samples / len(train)
            train = train.subset(stratified_split(train.labels, (keep, 1 - keep), config.split_seed)[0])
        logits = random_backbone_outputs(
            "sentiment", config.backbone, asdict(config.head), [headline_text(t) for t in train.texts],
            train.labels, texts, batch_size=batch_size, seed=config.optim.seed)
        report["baselines"]["random_backbone"] = {
            "train_samples": len(train), **classification_metrics(torch.softmax(logits, -1).double().numpy(), part.labels)}
    write_json(Path(folder) / EVALUATION_FILE, report)
    return report
