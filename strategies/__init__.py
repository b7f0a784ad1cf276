"""User-facing strategies, built only on the strategy API (``strategies.base.Strategy``)."""

from __future__ import annotations

import difflib

from strategies.base import Strategy
from strategies.buy_and_hold import BuyAndHold
from strategies.churn import Churn
from strategies.llm_signal import LlmSignal
from strategies.sma_cross import SmaCross

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (BuyAndHold, SmaCross, LlmSignal, Churn)}
DEFAULT_STRATEGY = SmaCross.name  # what run.strategy = "" runs


def config_sections() -> tuple[str, ...]:
    """The config sections the strategies bring beside ``[strategies.<name>]``."""
    return tuple(dict.fromkeys(name for cls in STRATEGIES.values() for name in cls.sections))


def get_strategy(name: str) -> type[Strategy]:
    try:
        return STRATEGIES[name]
    except KeyError:
        close = difflib.get_close_matches(name, STRATEGIES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise KeyError(f"unknown strategy {name!r}{hint}; available: {', '.join(sorted(STRATEGIES))}") from None


__all__ = ["DEFAULT_STRATEGY", "STRATEGIES", "Strategy", "config_sections", "get_strategy"]
