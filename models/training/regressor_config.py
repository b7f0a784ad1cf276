"""Settings of a regressor fine-tuning run (``python -m engine train regressor``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from models.backbone import BackboneConfig
from models.features import WARMUP_BARS
from models.heads import RegressionHeadConfig
from models.predictor import LoraSettings
from models.prompts import REGRESSION_TEMPLATE, PromptTemplate
from models.training.checkpoint import config_from_dict
from models.training.loop import OptimSettings

LOSSES = ("gaussian", "beta_nll")


@dataclass(frozen=True, slots=True)
class RegressorTrainingConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    head: RegressionHeadConfig = field(default_factory=RegressionHeadConfig)
    optim: OptimSettings = field(default_factory=lambda: OptimSettings(epochs=1.0, patience=3))
    template: PromptTemplate = field(default_factory=lambda: REGRESSION_TEMPLATE)  # the prompt's fixed part
    loss: str = "beta_nll"  # "gaussian": plain Gaussian NLL; "beta_nll": Seitzer et al. with ``beta``
    beta: float = 0.5
    splits: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train, validation, test, in time order
    purge: int = WARMUP_BARS + 1  # bars dropped before each split boundary: look-back + horizon
    vol_window: int = 20  # bars of realised volatility that normalise the target
    horizon: int = 1
    density_weighting: bool = True  # inverse label-density weights on the train split
    weight_cap: float = 10.0
    weight_bins: int = 50
    weight_smoothing: float = 2.0  # Gaussian kernel width, in bins
    feature_digits: int = 2  # decimals of the scaled features in the prompt
    max_train_samples: int = 0  # > 0: only the most recent this many training samples
    max_val_samples: int = 1024  # validation during training uses the most recent this many (0: all)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.horizon < 1 or self.vol_window < 2 or self.purge < self.horizon:
            raise ValueError("horizon >= 1, vol_window >= 2 and purge >= horizon are required")
        if len(self.splits) != 3:
            raise ValueError("splits are three fractions: train, validation, test")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegressorTrainingConfig:
        return config_from_dict(cls, data)
