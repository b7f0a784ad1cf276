"""Settings of a sentiment fine-tuning run (``python -m engine train sentiment``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from models.prompts import SENTIMENT_TEMPLATE, PromptTemplate
from models.settings import BackboneConfig, LoraSettings, OptimSettings, SentimentHeadConfig
from models.training.checkpoint import config_from_dict


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
    max_train_samples: int = 0  # > 0: a stratified subsample of the training split

    def __post_init__(self) -> None:
        if not 0 <= self.test_fraction < 1 or not 0 < self.val_fraction < 1:
            raise ValueError("test_fraction must be in [0, 1) and val_fraction in (0, 1)")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError("label_smoothing must be in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SentimentTrainingConfig:
        return config_from_dict(cls, data)
