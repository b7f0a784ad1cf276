"""Settings of a regressor fine-tuning run (``python -m engine train regressor``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from models.datasets import WEIGHTINGS
from models.features import WARMUP_BARS
from models.prompts import REGRESSION_TEMPLATE, PromptTemplate
from models.settings import (
    INSTRUCTION,
    VARIANTS,
    BackboneConfig,
    EncoderSettings,
    LoraSettings,
    OptimSettings,
    RegressionHeadConfig,
)
from models.training.checkpoint import config_from_dict

LOSSES = ("gaussian", "beta_nll")
INPUTS = ("text", "encoder")
SELECT_METRICS = ("mse", "nll", "ic")  # validation metrics early stopping can keep the best step by


@dataclass(frozen=True, slots=True)
class RegressorTrainingConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    head: RegressionHeadConfig = field(default_factory=RegressionHeadConfig)
    # several passes, validated once an epoch, stopping after 2 without improvement (best weights kept)
    optim: OptimSettings = field(default_factory=lambda: OptimSettings(epochs=6.0, patience=2))
    template: PromptTemplate = field(default_factory=lambda: REGRESSION_TEMPLATE)  # the prompt's fixed part
    loss: str = "beta_nll"  # "gaussian": plain Gaussian NLL; "beta_nll": Seitzer et al. with ``beta``
    beta: float = 0.5
    # the validation metric that keeps the best step: "mse", "nll" (lower is better) or "ic" (rank correlation,
    # higher); "": "mse" for the encoder, "nll" for text. MSE also rewards matching the validation
    # window's drift, IC only the ranking
    select_metric: str = ""
    # training targets less their (weighted) mean over the training samples: the regressor forecasts the
    # deviation from its training window's drift, never the drift, as models.calibration has no intercept (a
    # forecast of the drift is a bet on it; out of sample the drift forecast worse than zero, README)
    center_target: bool = True
    # encoder input: after training, the head's mean bias is refitted in closed form so the mean prediction
    # on the training windows equals their (weighted) mean target, as a linear model's intercept is: the
    # level the optimiser leaves is noise as large as the forecasts' spread, and it decides their sign.
    # None (the default): on for the encoder input, off for text (the text path does not refit); True or False
    # to choose. In the walk-forward it ended the one-sided forecasts and left every fold's IC as it was (README)
    refit_intercept: bool | None = None
    splits: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train, validation, test, in time order
    # bars dropped before each split boundary; 0: the look-back plus the horizon (``purge_bars``)
    purge: int = 0
    vol_window: int = 20  # bars of realised volatility that normalise the target
    horizon: int = 1  # the target: log(close[t + horizon] / close[t]) / sigma_t
    input: str = "encoder"  # "encoder": windows of scaled features -> virtual tokens; "text": prompt texts
    window: int = 16  # encoder: bars per sample
    virtual_tokens: int = 4  # encoder: embeddings handed to the backbone
    encoder_width: int = 256  # encoder: hidden width of its MLP
    variant: str = "llm"  # encoder: "llm", "no_llm", "random_backbone", "head_only" (models.encoder)
    instruction: str = INSTRUCTION  # encoder: the fixed text before the virtual tokens
    weighting: str = "none"  # train-sample weights: "none", "sqrt_density" (capped), "density" (capped)
    weight_cap: float = 3.0
    density_weighting: bool = True  # False forces weighting "none" (the older switch, kept for --no-density-weights)
    target_clip: float = 5.0  # train targets winsorised at +- this many of their std (0: not clipped)
    weight_bins: int = 50
    weight_smoothing: float = 2.0  # Gaussian kernel width, in bins
    feature_digits: int = 2  # decimals of the scaled features in the prompt
    max_train_samples: int = 0  # > 0: only the most recent this many training samples
    max_val_samples: int = 1024  # validation during training uses the most recent this many (0: all)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.horizon < 1 or self.vol_window < 2:
            raise ValueError("horizon >= 1 and vol_window >= 2 are required")
        if not 0 <= self.beta <= 1:
            raise ValueError(f"beta must be in [0, 1] (0: the Gaussian NLL, 1: the mean's MSE gradient), got {self.beta}")
        if self.select_metric and self.select_metric not in SELECT_METRICS:
            raise ValueError(f"select_metric must be one of {', '.join(SELECT_METRICS)}, got {self.select_metric!r}")
        if self.input not in INPUTS:
            raise ValueError(f"input must be one of {', '.join(INPUTS)}, got {self.input!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.input == "text" and self.refit_intercept:
            raise ValueError("refit_intercept needs input = 'encoder' (the text path does not refit); "
                             "leave it unset or set it to false")
        if self.input == "text" and self.variant != "llm":
            raise ValueError(f"variant {self.variant!r} needs input = 'encoder'")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        if self.weight_cap <= 1 or self.target_clip < 0:
            raise ValueError(f"weight_cap must be > 1 and target_clip >= 0, got {self.weight_cap}, {self.target_clip}")
        if self.purge and self.purge < self.min_purge:
            raise ValueError(f"purge {self.purge} is shorter than the horizon plus the window ({self.min_purge} bars): "
                             "a training target or window would reach into the next split")
        self.encoder_settings()  # window, virtual_tokens, width are checked there
        if len(self.splits) != 3:
            raise ValueError("splits are three fractions: train, validation, test")

    @property
    def min_purge(self) -> int:
        """The least purge that keeps every target and window of a split out of the next one."""
        return self.horizon + (self.window - 1 if self.input == "encoder" else 0)

    @property
    def purge_bars(self) -> int:
        """The purge in force: ``purge``, or (0) the features' look-back and window plus the horizon."""
        return self.purge or WARMUP_BARS + self.min_purge

    @property
    def selection(self) -> tuple[str, bool]:
        """The validation metric early stopping keeps the best step by, and whether higher is better."""
        metric = self.select_metric or ("mse" if self.input == "encoder" else "nll")
        return metric, metric == "ic"

    @property
    def refits_intercept(self) -> bool:
        """Whether training ends with the head's intercept refitted (``refit_intercept``, or by default the encoder)."""
        return self.input == "encoder" if self.refit_intercept is None else self.refit_intercept

    @property
    def sample_weighting(self) -> str:
        return self.weighting if self.density_weighting else "none"

    def encoder_settings(self) -> EncoderSettings:
        return EncoderSettings(window=self.window, virtual_tokens=self.virtual_tokens, width=self.encoder_width,
                               variant=self.variant, instruction=self.instruction)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegressorTrainingConfig:
        return config_from_dict(cls, data)
