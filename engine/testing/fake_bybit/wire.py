"""Bybit's wire conventions: numbers as strings, the response envelope, and errors as retCodes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


class BybitError(Exception):
    """A request the fake answers with a non-zero retCode (HTTP 200, Bybit's JSON envelope)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"retCode {code}: {message}")
        self.code = code
        self.message = message


def envelope(result: Any, now_ms: int, *, code: int = 0, message: str = "OK") -> dict[str, Any]:
    """The object every v5 answer is wrapped in; ccxt reads ``retCode``, ``result`` and ``time``."""
    return {"retCode": code, "retMsg": message, "result": result if result is not None else {}, "retExtInfo": {},
            "time": now_ms}


def num(value: float, decimals: int = 10) -> str:
    """A number as Bybit writes it: a plain decimal string, no exponent, no trailing zeros."""
    text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def decimals_of(step: float) -> int:
    """How many decimals a tick or lot step has (0.001 -> 3, 1 -> 0)."""
    text = num(step)
    return len(text.split(".")[1]) if "." in text else 0


def floor_to(value: float, step: float) -> float:
    """``value`` truncated to a whole number of ``step`` (how Bybit and ccxt cut quantities)."""
    return round(math.floor(value / step + 1e-9) * step, decimals_of(step))


def on_step(value: float, step: float) -> bool:
    """Whether ``value`` is a whole number of ``step`` (within float noise)."""
    return abs(value / step - round(value / step)) < 1e-6


def money(value: float) -> float:
    """Balances, fees and PnL are kept to 8 decimals, so a client summing the strings the fake sent
    gets exactly the balance it reports."""
    return round(value, 8)


def int_param(q: Mapping[str, Any], key: str) -> int | None:
    """An integer query parameter (None when absent or empty); anything else is retCode 10001."""
    raw = q.get(key)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise BybitError(10001, f"{key} {raw!r} is invalid: an integer") from None
