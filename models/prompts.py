"""Zero-shot chat prompts for the two tasks, split into a shared prefix and a per-sample suffix.

A prompt is rendered through the tokenizer's own chat template with a sentinel where the sample
goes; everything before the sentinel (system message, instruction, glossary) is the PREFIX, the
same for every sample, and the sample text plus the closing tags is the SUFFIX. Token ids are
always ``prefix_ids + suffix_ids`` — the per-sample (naive) path and the cached-prefix path feed
the model exactly the same ids, so they can only differ by floating-point rounding. The prefix
ends with a line break, so byte-level BPE never merges across the boundary anyway.

No torch here: tokenizers are duck-typed (anything with ``__call__`` and ``apply_chat_template``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from models.features import FEATURE_NAMES

SENTINEL = "\x00SAMPLE\x00"

REGRESSION_SYSTEM = "You are a quantitative analyst who forecasts short-term asset returns."
REGRESSION_INSTRUCTION = (
    "Below are sixteen features of an asset's latest completed bar, computed only from data up to "
    "that bar. Each is a robust z-score against the asset's own history (0 is typical, +-1 a typical "
    "deviation, clipped at +-5). ret1, ret5, ret20: log returns over 1, 5 and 20 bars; vol_ratio: "
    "volume against its 20-bar mean; rvol20: realised volatility; rsi14: relative strength; "
    "macd_hist: MACD histogram; bb_pos: position in the Bollinger band; atr_ratio: average true "
    "range; vwap_dist: distance to the 20-bar VWAP; range: bar range; close_pos: close within the "
    "bar's range; z100: 100-bar z-score of the close; dist_high20: distance below the 20-bar high; "
    "tod, dow: time of day and closeness to the weekend. Judge the direction and size of the next "
    "bar's return relative to recent volatility, and how uncertain that judgement is.\n"
    f"The values follow in this order: {', '.join(FEATURE_NAMES)}."
)
SENTIMENT_SYSTEM = "You are a financial news analyst."
SENTIMENT_INSTRUCTION = (
    "Classify the financial headline below by its likely effect on the price of the asset it is "
    "about: bearish, neutral or bullish. Bearish: news that tends to push the price down, such as "
    "falling sales or profits, losses, lay-offs, lawsuits, fines, downgrades, missed targets or "
    "weak guidance. Bullish: news that tends to push it up, such as rising sales or profits, new "
    "orders and contracts, upgrades, raised guidance or beaten expectations. Neutral: facts with no "
    "clear direction, such as routine announcements, appointments, schedules or descriptions."
)


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    """The fixed part of a prompt: a system message and an instruction (plus optional glossary)."""

    system: str
    instruction: str
    max_sample_tokens: int = 128  # the sample text is cut to this many tokens (closing tags kept)

    def render(self, tokenizer: Any) -> tuple[str, str]:
        """(prefix, closing): the chat-template text before the sample and after it."""
        messages = [
            {"role": "system", "content": self.system},
            {"role": "user", "content": f"{self.instruction}\n{SENTINEL}"},
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if text.count(SENTINEL) != 1:
            raise ValueError("the tokenizer's chat template dropped or repeated the sample placeholder")
        prefix, closing = text.split(SENTINEL)
        return prefix, closing


REGRESSION_TEMPLATE = PromptTemplate(REGRESSION_SYSTEM, REGRESSION_INSTRUCTION, max_sample_tokens=256)
SENTIMENT_TEMPLATE = PromptTemplate(SENTIMENT_SYSTEM, SENTIMENT_INSTRUCTION, max_sample_tokens=96)


def format_values(values: Sequence[float], digits: int = 2) -> str:
    """Feature values with ``digits`` decimals, space-separated; ``-0.00`` is written ``0.00``."""
    parts = []
    for value in values:
        text = f"{float(value):.{digits}f}"
        parts.append(text[1:] if text.startswith("-") and float(text) == 0.0 else text)
    return " ".join(parts)


def regression_text(asset: str, timeframe: str, values: Sequence[float], digits: int = 2) -> str:
    """The per-sample part of a regression prompt: the asset, the bar length and the sixteen
    (scaled) feature values in ``FEATURE_NAMES`` order.

    The names are not repeated per sample: they sit in the shared prefix (the instruction lists
    their order), so each sample costs ~100 tokens instead of ~150 with ``name=value`` pairs
    (``models.features.format_features``), which matters for speed since only the suffix is
    recomputed per sample.
    """
    if len(values) != len(FEATURE_NAMES):
        raise ValueError(f"{len(values)} feature values, expected {len(FEATURE_NAMES)} ({', '.join(FEATURE_NAMES)})")
    return f"Asset: {asset}, {timeframe} bars.\nFeatures: {format_values(values, digits)}"


def headline_text(headline: str) -> str:
    """The per-sample part of a sentiment prompt."""
    return f"Headline: {' '.join(headline.split())}"


@dataclass(slots=True)
class PromptEncoder:
    """Turns sample texts into suffix token ids for one template and one tokenizer."""

    tokenizer: Any
    template: PromptTemplate
    prefix: str = field(init=False)
    closing: str = field(init=False)
    prefix_ids: list[int] = field(init=False)
    closing_ids: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.prefix, self.closing = self.template.render(self.tokenizer)
        self.prefix_ids = self._ids(self.prefix)
        self.closing_ids = self._ids(self.closing)

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Suffix ids per sample: the sample text (cut to ``max_sample_tokens``) and the closing tags."""
        if not texts:
            return []
        encoded = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        limit = self.template.max_sample_tokens
        return [list(ids[:limit]) + self.closing_ids for ids in encoded]

    def full_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Whole prompts (prefix + suffix) per sample, for the per-sample path."""
        return [self.prefix_ids + ids for ids in self.encode(texts)]

    def full_text(self, text: str) -> str:
        """A whole prompt as text (for reading and logging; the model is fed ``full_ids``)."""
        return self.prefix + text + self.closing
