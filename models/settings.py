"""The predictor's settings: plain frozen dataclasses, no torch.

What ``config.toml``'s ``[llm]`` tables decode into and what a checkpoint's ``config.json`` records: the
backbone to load (``BackboneConfig``), the LoRA adapters (``LoraSettings``), the optimisation
(``OptimSettings``), the numeric encoder (``EncoderSettings``) and the heads. The modules that act on
them (``models.backbone``, ``models.predictor``, ``models.training.loop``, ``models.encoder``,
``models.heads``) need torch and import them from here, so that reading or checking a configuration
(``strategies.llm_settings``, ``backtest --oracle``) never loads torch.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from models.datasets import SENTIMENT_LABELS  # class index order, everywhere
from models.features import N_FEATURES

LLM_MODULES = ("torch", "transformers", "peft")  # what the llm extra installs and the predictor imports


def missing_llm_module() -> str | None:
    """The first of ``LLM_MODULES`` that is not installed (``pip install -e '.[llm]'`` brings them), or None."""
    return next((name for name in LLM_MODULES if importlib.util.find_spec(name) is None), None)


# ------------------------------------------------------------------------------------------ backbone

PRECISIONS = ("fp32", "bf16", "int8", "nf4")
DEFAULT_SOURCE = "smollm2"


class BackboneError(Exception):
    """The backbone cannot be loaded as configured; the message says what to change."""


@dataclass(frozen=True, slots=True)
class TinyLlamaConfig:
    """Shape of the random ``tiny`` backbone (a real Llama architecture, just small)."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 4096


@dataclass(frozen=True, slots=True)
class BackboneConfig:
    """Which backbone to load and how. See the module docstring for the sources and precisions."""

    source: str = DEFAULT_SOURCE
    precision: str = "fp32"
    cache_dir: str = ".cache/models"  # converted GGUF models (git-ignored)
    random_init: bool = False  # same architecture and tokenizer, random weights (a baseline)
    seed: int = 0  # weights of "tiny" and of random_init backbones
    tiny: TinyLlamaConfig = field(default_factory=TinyLlamaConfig)
    allow_emulated_bf16: bool = False
    gradient_checkpointing: bool = False  # for k-bit training on a GPU
    flush_denormal: bool = True  # see load_backbone

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise BackboneError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not self.source:
            raise BackboneError("backbone source must not be empty")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackboneConfig:
        data = dict(data)
        tiny = TinyLlamaConfig(**data.pop("tiny", {}))
        known = {f for f in cls.__dataclass_fields__ if f != "tiny"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BackboneError(f"unknown backbone setting(s): {', '.join(unknown)}")
        return cls(tiny=tiny, **data)


# -------------------------------------------------------------------------------------------- LoRA

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True, slots=True)
class LoraSettings:
    """LoRA hyper-parameters of one adapter (peft ``LoraConfig``)."""

    rank: int = 16
    alpha: int = 32
    # 0: peft keeps no masked copy of each adapted input (1.5x faster steps); on PhraseBank (top 4 layers,
    # 1,000 sentences) 0.787 test accuracy against 0.793 with 0.05, inside each other's 95% intervals
    dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    top_layers: int = 0  # > 0: adapt only the top this many decoder layers (every layer if the model has fewer)

    def __post_init__(self) -> None:
        if self.rank <= 0 or self.alpha <= 0:
            raise ValueError(f"LoRA rank and alpha must be positive, got rank={self.rank}, alpha={self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("LoRA target_modules must name at least one module")
        if self.top_layers < 0:
            raise ValueError(f"LoRA top_layers must be >= 0 (0: every layer), got {self.top_layers}")

    def first_layer(self, num_layers: int) -> int:
        """The lowest adapted decoder layer of a ``num_layers``-layer backbone (0: all of them)."""
        return max(0, num_layers - self.top_layers) if self.top_layers else 0

    def to_peft(self, num_layers: int | None = None) -> Any:
        from peft import LoraConfig

        layers = None
        if self.top_layers:
            if num_layers is None:
                raise ValueError("top_layers needs the backbone's number of layers")
            if self.first_layer(num_layers) > 0:
                layers = list(range(self.first_layer(num_layers), num_layers))
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), bias="none", layers_to_transform=layers,
                          layers_pattern="layers" if layers else None)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoraSettings:
        data = dict(data)
        if "target_modules" in data:
            data["target_modules"] = tuple(data["target_modules"])
        return cls(**data)


# ------------------------------------------------------------------------------------ optimisation

SCHEDULES = ("cosine", "linear", "constant")


# The OptimSettings fields that change a training run's memory and time but never its weights (the loss
# and gradients are the same bit for bit): a checkpoint's cache key leaves them out.
MEMORY_SETTINGS = ("recompute", "activation_budget_mb")


@dataclass(frozen=True, slots=True)
class OptimSettings:
    """How long and how fast to train one adapter."""

    epochs: float = 3.0
    max_steps: int = 0  # > 0: stop after this many steps whatever ``epochs`` says
    batch_size: int = 16
    lr: float = 3e-4  # LoRA weights
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    schedule: str = "cosine"
    grad_clip: float = 1.0
    eval_every: int = 0  # steps between validations; 0: once per epoch
    patience: int = 3  # validations without improvement before stopping early; 0: never stop early
    seed: int = 0
    eval_batch_size: int = 64
    # Batches of similar lengths: each epoch's shuffled samples are sorted by length within chunks of
    # ``bucket_chunk`` batches, cut into batches, and the batches shuffled (less padding, same samples).
    # Only for a training set of at least one whole chunk: on fewer samples the sort spans the whole set,
    # every batch holds one length, and where length goes with the label (the sample market's headline
    # templates) every batch holds one class: 129 sample headlines, 27 steps reached 0.298 validation
    # accuracy bucketed and 0.930 in random batches (SmolLM2, 2026-12-02).
    length_buckets: bool = True
    bucket_chunk: int = 50
    # With LoRA on the top layers only (``LoraSettings.top_layers``): run the frozen lower layers once
    # per sample (``Predictor.lower_states``) and train only the adapted layers on their output.
    cache_lower_states: bool = True
    min_lr_ratio: float = 0.0  # the schedule decays to this fraction of the learning rate, not below
    # Memory: a batch whose padded suffix tokens (rows x longest) exceed this runs as several forward and
    # backward passes whose gradients add up to the whole batch's (the same step; the shared prompt prefix
    # is computed once per step). Activations scale with tokens: one pass of 16 x 26 tokens through
    # SmolLM2-135M holds ~2 GB, so 16 long PhraseBank sentences (16 x 80) took a training run to 6 GB.
    # 0 = never split (the default, so runs keep their pinned results). Only where the trainer passes token
    # lengths (not the fixed-shape encoder input). Dropout (the head's) draws its masks per pass, so a split
    # step differs from an unsplit one by them: the default run's 27 sentiment steps split at 256 tokens
    # reached 0.842 validation accuracy instead of 0.930 (57 headlines; SmolLM2, 2026-12-03).
    max_batch_tokens: int = 0
    # Memory: keep only each decoder layer's input from the forward pass and recompute its activations in
    # the backward pass (``Predictor.recompute``; text prompts after the shared prefix). The same loss and
    # gradients, bit for bit (tests/test_training_speed.py), for one more forward pass a step: on SmolLM2
    # 16 PhraseBank sentences a step kept 231 MB instead of 1,892 MB, at 2.85 instead of 3.56 samples/s
    # (benchmarks/bench_training.py, 2026-12-03). Off by default: the activation budget below recomputes
    # only the layers that do not fit. Either training path (the whole model, or the adapted layers over
    # cached lower states).
    recompute: bool = False
    # Memory, the middle way (``models.activations``): a training pass keeps decoder layers' activations
    # while what they keep fits in this many MB and recomputes the rest in the backward pass, so a batch of
    # short texts runs at full speed and a long one recomputes just enough layers. The same loss and
    # gradients bit for bit, like ``recompute`` (which wins when both are set). 0 = no budget (keep all).
    # Text prompts only, on either training path (whole model, or the adapted layers over cached states).
    # On SmolLM2 PhraseBank batches 62-97 tokens wide, 1024 MB recomputed 2.6 of 30 layers a step at 3.76
    # samples/s (no budget: 3.38, keeping up to 1,688 MB; every layer recomputed: 2.66), and 512 MB 15.4
    # layers at 2.97 (benchmarks/bench_training.py, 2026-12-07).
    activation_budget_mb: int = 1024

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.batch_size <= 0 or self.eval_batch_size <= 0:
            raise ValueError("batch sizes must be positive")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError("set epochs > 0 or max_steps > 0")
        if self.lr <= 0 or self.head_lr <= 0 or not 0 <= self.warmup_ratio < 1 or self.grad_clip < 0:
            raise ValueError("learning rates must be positive, warmup_ratio in [0, 1), grad_clip >= 0")
        if self.bucket_chunk < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("bucket_chunk must be >= 1 and min_lr_ratio in [0, 1]")
        if self.max_batch_tokens < 0:
            raise ValueError("max_batch_tokens must be >= 0 (0: never split a batch)")
        if not isinstance(self.recompute, bool):
            raise ValueError(f"recompute must be true or false, got {self.recompute!r}")
        if isinstance(self.activation_budget_mb, bool) or not isinstance(self.activation_budget_mb, int) \
                or self.activation_budget_mb < 0:
            raise ValueError(f"activation_budget_mb must be a whole number of MB >= 0 (0: no budget), "
                             f"got {self.activation_budget_mb!r}")

    def total_steps(self, n_train: int) -> int:
        per_epoch = math.ceil(n_train / self.batch_size)
        steps = math.ceil(self.epochs * per_epoch) if self.epochs > 0 else self.max_steps
        return max(1, min(steps, self.max_steps) if self.max_steps > 0 else steps)


# --------------------------------------------------------------------------------- numeric encoder

VARIANTS = ("llm", "no_llm", "random_backbone", "head_only")
INSTRUCTION = "Predict the next return of the market from these bars:"


@dataclass(frozen=True, slots=True)
class EncoderSettings:
    window: int = 16  # bars per sample (N)
    virtual_tokens: int = 4  # embeddings handed to the backbone (k)
    width: int = 256  # hidden width of the encoder's MLP
    features: int = N_FEATURES
    variant: str = "llm"
    instruction: str = INSTRUCTION

    def __post_init__(self) -> None:
        if self.window < 1 or self.virtual_tokens < 1 or self.width < 1 or self.features < 1:
            raise ValueError("window, virtual_tokens, width and features must be >= 1, got "
                             f"{self.window}, {self.virtual_tokens}, {self.width}, {self.features}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if not self.instruction.strip():
            raise ValueError("the encoder's instruction text must not be empty")

    @property
    def uses_backbone(self) -> bool:
        return self.variant != "no_llm"

    @property
    def trains_lora(self) -> bool:
        return self.variant in ("llm", "random_backbone")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderSettings:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown encoder setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return cls(**data)


# ------------------------------------------------------------------------------------------- heads

@dataclass(frozen=True, slots=True)
class RegressionHeadConfig:
    width: int = 128
    dropout: float = 0.1
    logvar_min: float = -7.0  # clamp of the predicted log-variance (in normalised-return units)
    logvar_max: float = 5.0


@dataclass(frozen=True, slots=True)
class SentimentHeadConfig:
    width: int = 0  # 0: a linear classifier; > 0: one hidden layer of this width
    dropout: float = 0.1
    classes: int = len(SENTIMENT_LABELS)

