"""Typed configuration: ``config.toml`` -> frozen dataclasses, with every key checked.

Unknown keys and bad values stop the run with a message naming the key path and, for a typo, the
nearest valid key. Command-line flags and ``--set section.key=value`` override the file. Secrets
(API keys) never live here: they come from the environment only.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from engine.errors import ConfigError
from engine.feeds.sample import SampleMarketConfig
from models.aggregation import AggregationConfig  # plain Python, no torch

T = TypeVar("T")


@dataclass(frozen=True)
class RunConfig:
    strategy: str = "sma_cross"
    starting_cash: float = 10_000.0
    fill_mode: Literal["next_open", "close"] = "next_open"
    start: str = ""  # ISO date or datetime (UTC); "" = from the first bar
    end: str = ""  # exclusive; "" = to the last bar

    def __post_init__(self) -> None:
        if not self.starting_cash > 0:
            raise ValueError("must be positive")


@dataclass(frozen=True)
class DataConfig:
    bars: str = ""  # CSV of bars; "" = the offline synthetic sample market
    news: str = ""  # CSV of headlines; "" = none (the sample market brings its own)
    symbol: str = ""  # "" = derived from the file name
    timeframe: str = ""  # "" = inferred from the timestamps
    drop_bad_rows: bool = False
    adjusted: bool = False
    news_timezone: str = "UTC"
    # Where bars come from: "auto" = the CSV in ``bars`` when set, else the synthetic sample market;
    # "yfinance" / "bybit" = fetched into the local cache (only missing ranges) and read from it.
    source: Literal["auto", "csv", "sample", "yfinance", "bybit"] = "auto"
    cache_dir: str = ".cache/market"  # the fetched-data cache (git-ignored)
    gap_policy: Literal["keep", "ffill", "refuse"] = "keep"  # what a backtest does with missing bars
    # Suspicious prices (outlier bar returns, spikes out and back, stale stretches of identical OHLC; see
    # engine.feeds.quality): "warn" = run on them with a note; "refuse" = stop, naming the bars.
    quality_policy: Literal["warn", "refuse"] = "warn"
    timeout_s: float = 10.0  # seconds to wait for one answer from a data source
    retries: int = 5  # retries (with back-off) of a request that failed on network trouble

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError("timeout_s must be positive")
        if not 0 <= self.retries <= 20:
            raise ValueError("retries must be between 0 and 20")


@dataclass(frozen=True)
class InstrumentConfig:
    contract: Literal["spot", "linear_perp"] = "spot"
    tick_size: float = 0.01
    lot_step: float = 0.000001
    min_quantity: float = 0.0
    min_notional: float = 0.0
    max_leverage: float = 1.0

    def __post_init__(self) -> None:
        for name in ("tick_size", "lot_step"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.contract == "spot" and self.max_leverage != 1.0:
            raise ValueError("max_leverage must be 1 for spot instruments")


@dataclass(frozen=True)
class CostsConfig:
    maker_fee: float | Literal["vip0"] = "vip0"  # "vip0" = Bybit's VIP0 rate for the contract type
    taker_fee: float | Literal["vip0"] = "vip0"
    slippage_bps: float = 2.0
    half_spread_bps: float = 1.0
    funding_rate: float = 0.0001  # per 8-hour settlement, perpetuals only
    funding_file: str = ""  # CSV of (timestamp, rate); overrides funding_rate when set

    def __post_init__(self) -> None:
        for name in ("maker_fee", "taker_fee"):
            value = getattr(self, name)
            if value != "vip0" and not -0.01 <= value <= 0.05:
                raise ValueError(f"{name} {value} is outside [-0.01, 0.05]; rates are fractions (0.001 = 0.1%)")
        if self.slippage_bps < 0 or self.half_spread_bps < 0:
            raise ValueError("slippage_bps and half_spread_bps must be >= 0")


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    file: str = "logs/engine.log"


@dataclass(frozen=True)
class StoreConfig:
    enabled: bool = True  # record every backtest in the store
    url: str = "sqlite:///logs/engine.db"  # SQLAlchemy URL; a relative SQLite path is relative to the working directory
    reports_dir: str = "logs/reports"  # where `python -m engine report` writes HTML and PNG files
    busy_timeout: float = 5.0  # seconds to wait for a lock held by another process before giving up

    def __post_init__(self) -> None:
        if not self.url:
            raise ValueError("url must not be empty (set enabled = false to record nothing)")
        if not self.busy_timeout >= 0:
            raise ValueError("busy_timeout must be >= 0")


@dataclass(frozen=True)
class RegressorSettings:
    """Fine-tuning of the regressor adapter in an ``llm_signal`` run (``models.training``)."""

    max_train_samples: int = 192  # the most recent samples of the training part's train split
    max_val_samples: int = 32  # validation (early stopping, reported metrics) on the most recent this many
    epochs: float = 1.0  # passes over the training samples
    max_steps: int = 0  # > 0: stop after this many optimiser steps whatever epochs says
    batch_size: int = 16
    lr: float = 3e-4  # LoRA weights
    head_lr: float = 1e-3  # the regression head
    lora_rank: int = 16
    feature_digits: int = 1  # decimals of the scaled features in the prompt (fewer: shorter prompts, faster)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_train_samples < 1 or self.max_val_samples < 1:
            raise ValueError("max_train_samples and max_val_samples must be >= 1")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError("set epochs > 0 or max_steps > 0")
        if self.batch_size < 1 or self.lora_rank < 1 or not self.lr > 0 or not self.head_lr > 0:
            raise ValueError("batch_size and lora_rank must be >= 1, lr and head_lr > 0")
        if not 0 <= self.feature_digits <= 6:
            raise ValueError("feature_digits must be between 0 and 6")


@dataclass(frozen=True)
class SentimentSettings:
    """Fine-tuning of the sentiment adapter in an ``llm_signal`` run (``models.training``)."""

    max_train_samples: int = 128  # a stratified subsample of the training part's headlines
    epochs: float = 3.0
    max_steps: int = 0
    batch_size: int = 16
    lr: float = 1e-3  # LoRA weights
    head_lr: float = 5e-3  # the classification head
    lora_rank: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_train_samples < 1:
            raise ValueError("max_train_samples must be >= 1")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError("set epochs > 0 or max_steps > 0")
        if self.batch_size < 1 or self.lora_rank < 1 or not self.lr > 0 or not self.head_lr > 0:
            raise ValueError("batch_size and lora_rank must be >= 1, lr and head_lr > 0")


@dataclass(frozen=True)
class WalkForwardSettings:
    """``backtest --walk-forward``: retrain on rolling windows and trade each following window
    (``engine.walk_forward``)."""

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
class LlmConfig:
    """The predictor behind the ``llm_signal`` strategy: backbone, the train / trade split,
    fine-tuning, inference and signal aggregation (see ``engine.llm_backtest``)."""

    backbone: str = "smollm2"  # smollm2, tiny (random, for tests), a model folder, a .gguf file or a hub id
    precision: Literal["fp32", "bf16", "int8", "nf4"] = "fp32"
    train_fraction: float = 0.8  # the first 80% of the bars (and their headlines) train, the rest is traded
    cache_dir: str = ".cache/llm"  # trained checkpoints and the prediction cache (git-ignored)
    model_cache_dir: str = ".cache/models"  # converted GGUF backbones
    signal_source: Literal["precomputed", "online"] = "precomputed"
    batch_size: int = 1  # prompts per forward pass at inference; 1 = exactly what the online path computes
    regressor_checkpoint: str = ""  # "" = train or reuse automatically; a folder = use it (no training)
    sentiment_checkpoint: str = ""
    regressor: RegressorSettings = field(default_factory=RegressorSettings)
    sentiment: SentimentSettings = field(default_factory=SentimentSettings)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    walk_forward: WalkForwardSettings = field(default_factory=WalkForwardSettings)

    def __post_init__(self) -> None:
        if not 0 < self.train_fraction < 1:
            raise ValueError(f"train_fraction must be in (0, 1), got {self.train_fraction}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not self.backbone:
            raise ValueError("backbone must not be empty (smollm2, tiny, a folder, a .gguf file or a hub id)")


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sample: SampleMarketConfig = field(default_factory=SampleMarketConfig)
    instrument: InstrumentConfig = field(default_factory=InstrumentConfig)
    costs: CostsConfig = field(default_factory=CostsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    llm: LlmConfig = field(default_factory=LlmConfig)
    # Per-strategy parameter tables, checked against the chosen strategy's Params by ``build``.
    strategies: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


# -- loading -----------------------------------------------------------------------------------
def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read ``path`` (if given), apply ``section.key=value`` overrides, and check everything."""
    raw: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found (pass --config PATH or create it)") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for item in overrides:
        apply_override(raw, item)
    return build(Config, raw, where=where)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``section.key=value``; the value is read as TOML (``20``, ``true``, ``"x"``),
    falling back to a plain string."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set costs.slippage_bps=5")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {part} is a value, not a section")
        node = child
    node[leaf] = value


def build(cls: type[T], table: Mapping[str, Any], *, where: str = "config", path: str = "") -> T:
    """Turn a TOML table into dataclass ``cls``, refusing unknown keys and ill-typed values."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: {path or 'the file'} must be a table, got {table!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    for key in table:
        if key not in fields:
            full = f"{path}.{key}" if path else key
            close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
            hint = f" (did you mean {(path + '.' if path else '') + close[0]!r}?)" if close else ""
            valid = ", ".join(fields) or "none"
            raise ConfigError(f"{where}: unknown key {full!r}{hint}; valid keys here: {valid}")
    values: dict[str, Any] = {}
    for name, value in table.items():
        full = f"{path}.{name}" if path else name
        values[name] = _convert(hints[name], value, where, full)
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: [{path or cls.__name__}] {exc}") from None


def _convert(hint: Any, value: Any, where: str, full: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where=where, path=full)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                return _convert(option, value, where, full)
            except ConfigError as exc:
                errors.append(str(exc).rsplit(": ", 1)[-1])
        raise ConfigError(f"{where}: {full} = {value!r} is not valid: {' or '.join(errors)}")
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint_text = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: {full} = {value!r}: expected one of {', '.join(map(repr, choices))}{hint_text}")
        return value
    if origin in (Mapping, dict) or hint is Any:
        if origin and not isinstance(value, Mapping):
            raise ConfigError(f"{where}: {full} must be a table")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {full} = {value!r}: expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {full} = {value!r}: expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: {full} = {value!r}: expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {full} = {value!r}: expected a string")
        return value
    raise ConfigError(f"{where}: {full}: unsupported setting type {hint!r}")  # a programming error, named
