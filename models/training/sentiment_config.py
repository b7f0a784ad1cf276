"""Settings of a sentiment fine-tuning run (``python -m engine train sentiment``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from models.prompts import SENTIMENT_TEMPLATE, PromptTemplate
from models.settings import BackboneConfig, LoraSettings, OptimSettings, SentimentHeadConfig
from models.training.checkpoint import config_from_dict

CLASS_WEIGHTS = ("none", "balanced", "sqrt")


def class_weights(labels: np.ndarray, classes: int, kind: str) -> np.ndarray:
    """The loss weight of each class (``SentimentTrainingConfig.class_weights``) from the training labels;
    a class absent from them gets the largest weight of the others (it cannot weigh anything anyway)."""
    if kind not in CLASS_WEIGHTS:
        raise ValueError(f"class_weights must be one of {', '.join(CLASS_WEIGHTS)}, got {kind!r}")
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=classes).astype(np.float64)
    if kind == "none" or not counts.sum():
        return np.ones(classes)
    present = counts > 0
    weights = np.ones(classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    weights[~present] = weights[present].max()
    return np.sqrt(weights) if kind == "sqrt" else weights


@dataclass(frozen=True, slots=True)
class SentimentTrainingConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    head: SentimentHeadConfig = field(default_factory=SentimentHeadConfig)
    # lr 1e-3 / head 5e-3: at 3e-4 / 1e-3 a few dozen steps learnt nothing on 128 headlines (38% accuracy)
    optim: OptimSettings = field(default_factory=lambda: OptimSettings(epochs=3.0, eval_every=0, patience=2, lr=1e-3,
                                                                       head_lr=5e-3))
    template: PromptTemplate = field(default_factory=lambda: SENTIMENT_TEMPLATE)  # the prompt's fixed part
    test_fraction: float = 0.25  # held out, stratified, when no separate test set is given
    val_fraction: float = 0.1  # of what is left: early stopping and temperature scaling
    split_seed: int = 0
    label_smoothing: float = 0.0
    # the loss's weight of each class: "none" (every sample alike), "balanced" (n / (classes x n_class), so
    # every class weighs the same in total) or "sqrt" (the square root of that: halfway, in logs), from the
    # training split's counts. For macro-F1 where a class is rare (PhraseBank 50-agree: 12% negative).
    class_weights: str = "none"
    max_train_samples: int = 0  # > 0: a stratified subsample of the training split

    def __post_init__(self) -> None:
        if not 0 <= self.test_fraction < 1 or not 0 < self.val_fraction < 1:
            raise ValueError("test_fraction must be in [0, 1) and val_fraction in (0, 1)")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError("label_smoothing must be in [0, 1)")
        if self.class_weights not in CLASS_WEIGHTS:
            raise ValueError(f"class_weights must be one of {', '.join(CLASS_WEIGHTS)}, got {self.class_weights!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SentimentTrainingConfig:
        return config_from_dict(cls, data)
