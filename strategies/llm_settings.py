"""The ``[llm]`` section: the predictor behind the ``llm_signal`` strategy (backbone, the train /
trade split, fine-tuning, inference, aggregation and the walk-forward).

``[llm.regressor]`` and ``[llm.sentiment]`` decode straight into the trainers' own configs
(``models.training``), so ``python -m engine train`` and a backtest share one set of defaults: the
trainers'. What differs in a backtest is only how much it trains on (``max_train_samples`` and the
like, sized for a first run of minutes on a 2-core CPU). The backbone is ``llm.backbone`` for both
adapters. Imported on use (``Config.section`` decodes it); it loads no torch, since every setting it
decodes into lives in ``models.settings``, so ``backtest --oracle`` and a config check run without it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from engine.config import Config
from models.aggregation import AggregationConfig
from models.settings import BackboneConfig, LoraSettings, OptimSettings
from models.training.regressor_config import RegressorTrainingConfig
from models.training.sentiment_config import SentimentTrainingConfig

SECTION = "llm"


@dataclass(frozen=True)
class WalkForwardSettings:
    """``backtest --walk-forward``: retrain on rolling windows and trade each following window
    (``research.walk_forward``)."""

    train_bars: int = 3000  # bars each fold trains on (the regressor's own validation is inside them)
    test_bars: int = 600  # bars each fold then trades out of sample; the window moves on by this much
    in_sample_bars: int = 0  # the last this many training bars are also traded, in sample (0: test_bars)
    max_folds: int = 0  # 0: as many as the data holds; else the most recent this many

    def __post_init__(self) -> None:
        if self.train_bars < 2 or self.test_bars < 2:
            raise ValueError("train_bars and test_bars must be >= 2")
        if not 0 <= self.in_sample_bars <= self.train_bars:
            raise ValueError(f"in_sample_bars must be in [0, train_bars = {self.train_bars}]")
        if self.max_folds < 0:
            raise ValueError("max_folds must be >= 0")


@dataclass(frozen=True)
class CalibrationSettings:
    """``[llm.calibration]``: how the expected move and the enter threshold are fitted before the
    cut (``strategies.llm_prepare.calibrate``, ``models.calibration``)."""

    bars: int = 480  # the most recent bars before the cut that the regressor did not train on: the regression
    # coefficient and the threshold search use them (each costs one regression; the news coefficient uses every bar)
    min_t: float = 2.0  # a coefficient with |t| below this is set to 0
    enter_thresholds: tuple[float, ...] = (1.0, 1.25, 1.5, 2.0, 3.0)  # tried on those bars with the run's costs;
    # the best after-cost return wins (ties or none positive: the highest). () = keep strategies.llm_signal's

    def __post_init__(self) -> None:
        if self.bars < 0:
            raise ValueError(f"bars must be >= 0, got {self.bars}")
        if not self.min_t >= 0:
            raise ValueError(f"min_t must be >= 0, got {self.min_t}")
        if any(not t >= 1 for t in self.enter_thresholds):
            raise ValueError(f"enter_thresholds must all be >= 1, got {list(self.enter_thresholds)}")


def _backtest_regressor() -> RegressorTrainingConfig:
    # Every training sample once (1 epoch, about 3 minutes on 2 cores through the numeric encoder); validation
    # on the most recent 512. The target's horizon is the strategy's holding time (holding_bars, 6 by default).
    return RegressorTrainingConfig(max_train_samples=0, max_val_samples=512, feature_digits=1, horizon=6,
                                   optim=OptimSettings(epochs=1.0, patience=2))


def _backtest_sentiment() -> SentimentTrainingConfig:
    # LoRA on the top 4 layers over lower states cached once per headline, 6 epochs at lr 3e-3 / head 1e-2:
    # on the sample market's headlines 0.965 validation accuracy in 56 s, against 0.930 in 198 s with every
    # layer (SmolLM2, 2-core AVX2 CPU, 2026-12-06; config.toml lists the settings tried). The memory policy is
    # the trainer's (an activation budget of 1024 MB: the 4 layers fit it, so nothing is recomputed).
    base = SentimentTrainingConfig(max_train_samples=128, lora=LoraSettings(top_layers=4))
    return dataclasses.replace(base, optim=dataclasses.replace(base.optim, epochs=6.0, lr=3e-3, head_lr=1e-2))


@dataclass(frozen=True)
class LlmSettings:
    backbone: str = "smollm2"  # smollm2, tiny (random, for tests), a model folder, a .gguf file or a hub id
    precision: Literal["fp32", "bf16", "int8", "nf4"] = "fp32"
    train_fraction: float = 0.8  # the first 80% of the bars (and their headlines) train, the rest is traded
    cache_dir: str = ".cache/llm"  # trained checkpoints and the prediction cache (git-ignored)
    model_cache_dir: str = ".cache/models"  # converted GGUF backbones
    signal_source: Literal["precomputed", "online", "oracle"] = "precomputed"  # "oracle" is refused: --oracle only
    batch_size: int = 1  # prompts per forward pass at inference; 1 = exactly what the online path computes
    window_batch_size: int = 16  # encoder windows per forward pass, always this many (padded), online too
    regressor_checkpoint: str = ""  # "" = train or reuse automatically; a folder = use it (no training)
    sentiment_checkpoint: str = ""
    # the regressor's feature scaler: "checkpoint" = the one it was trained with; "market" = refitted on
    # this run's bars before the cut (a checkpoint trained on another market reads this one on its own scale)
    scaler: Literal["checkpoint", "market"] = "checkpoint"
    regressor: RegressorTrainingConfig = field(default_factory=_backtest_regressor)
    sentiment: SentimentTrainingConfig = field(default_factory=_backtest_sentiment)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    walk_forward: WalkForwardSettings = field(default_factory=WalkForwardSettings)
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)

    def __post_init__(self) -> None:
        if self.signal_source == "oracle":
            raise ValueError('signal_source = "oracle" cannot be set in a config: the oracle knows the sample '
                             "market's true tones, an upper bound and never a default; pass --oracle to "
                             "`python -m engine backtest --strategy llm_signal` explicitly")
        if not 0 < self.train_fraction < 1:
            raise ValueError(f"train_fraction must be in (0, 1), got {self.train_fraction}")
        if self.batch_size < 1 or self.window_batch_size < 1:
            raise ValueError("batch_size and window_batch_size must be >= 1")
        if not self.backbone:
            raise ValueError("backbone must not be empty (smollm2, tiny, a folder, a .gguf file or a hub id)")
        for task in ("regressor", "sentiment"):
            if getattr(self, task).backbone != BackboneConfig():
                raise ValueError(f"set the backbone with llm.backbone / llm.precision, not llm.{task}.backbone")

    @property
    def backbone_config(self) -> BackboneConfig:
        return BackboneConfig(source=self.backbone, precision=self.precision, cache_dir=self.model_cache_dir)

    def training(self, task: Literal["regressor", "sentiment"]) -> RegressorTrainingConfig | SentimentTrainingConfig:
        """The trainer's config of ``task``, on this section's backbone."""
        return dataclasses.replace(getattr(self, task), backbone=self.backbone_config)


def llm_settings(config: Config) -> LlmSettings:
    return config.section(SECTION, LlmSettings)


def with_llm(config: Config, **changes: object) -> Config:
    """``config`` with some ``[llm]`` settings replaced."""
    return config.with_section(SECTION, dataclasses.replace(llm_settings(config), **changes))
