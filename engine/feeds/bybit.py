"""Bybit market data through ccxt: OHLCV (spot ``BTC/USDT``, linear perpetual ``BTC/USDT:USDT``),
funding-rate history and instrument details.

ccxt's rate limiter is on (``enableRateLimit``); pages are requested as windows that cannot hold more
than one page (``start`` and ``end`` both set), so the answer never depends on which end of a long
range Bybit would otherwise prefer. Network trouble is retried with back-off (``engine.feeds.retry``);
a source that cannot be reached at all fails at once. The ccxt exchange object is injectable, so
tests point it at a fake Bybit v5 server on 127.0.0.1 (``make_exchange(api_url=...)``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import pandas as pd

from engine.errors import ConfigError, DataError, EngineError, OperationalError, TemporaryError
from engine.feeds.retry import Retrying, RetryPolicy, SourceUnreachable
from engine.timeutil import MS_PER_MINUTE, format_timeframe, iso

KLINE_LIMIT = 1000  # Bybit v5 /market/kline maximum page size
FUNDING_LIMIT = 200  # Bybit v5 /market/funding/history maximum page size
DEFAULT_FUNDING_INTERVAL_MIN = 480
INSTRUMENTS_FILE = "bybit/instruments.json"
HOST = "api.bybit.com"


def make_exchange(*, timeout_s: float = 10.0, api_url: str | None = None, rate_limit_ms: int | None = None) -> Any:
    """A public (key-less) ccxt Bybit client: rate limiter on, markets limited to spot and linear,
    ``timeout_s`` per request. ``api_url`` (e.g. ``http://127.0.0.1:8123``) replaces every Bybit
    base URL (api, test and demo, as BYBIT.md section 1 says)."""
    import ccxt

    config: dict[str, Any] = {
        "enableRateLimit": True,
        "timeout": int(timeout_s * 1000),
        "options": {"fetchMarkets": {"types": ["spot", "linear"]}},
    }
    if api_url:
        base = {name: api_url for name in ("spot", "futures", "v2", "public", "private")}
        config["urls"] = {"api": dict(base), "test": dict(base), "demotrading": dict(base)}
    if rate_limit_ms is not None:
        config["rateLimit"] = rate_limit_ms
    return ccxt.bybit(config)


def instrument_record(market: dict[str, Any]) -> dict[str, Any] | None:
    """The instrument details the engine needs, from one ccxt market (``None`` for kinds it does not
    trade: inverse, futures with expiry, options)."""
    info = market.get("info") or {}
    if market.get("spot"):
        contract = "spot"
    elif market.get("swap") and market.get("linear"):
        contract = "linear_perp"
    else:
        return None
    precision, limits = market.get("precision") or {}, market.get("limits") or {}
    lot = info.get("lotSizeFilter") or {}
    min_notional = (limits.get("cost") or {}).get("min") or _number(lot.get("minNotionalValue")) or _number(lot.get("minOrderAmt"))
    leverage = (limits.get("leverage") or {}).get("max") if contract == "linear_perp" else 1
    return {
        "symbol": market["symbol"], "id": market.get("id"), "contract": contract,
        "tick_size": precision.get("price"), "lot_step": precision.get("amount"),
        "min_quantity": (limits.get("amount") or {}).get("min") or 0.0,
        "min_notional": min_notional or 0.0,
        "max_leverage": float(leverage or 1),
        "quote": market.get("quote"), "active": market.get("active"),
        "funding_interval_min": int(_number(info.get("fundingInterval")) or DEFAULT_FUNDING_INTERVAL_MIN)
        if contract == "linear_perp" else None,
        "ccxt_maker_fee": market.get("maker"), "ccxt_taker_fee": market.get("taker"),
    }


class BybitSource:
    """Fetches one window at a time; the caller (``market_data``) decides which windows are missing."""

    name = "bybit"
    calendar = "24/7"
    host = HOST

    def __init__(self, exchange: Any = None, *, policy: RetryPolicy | None = None, timeout_s: float = 10.0,
                 sleep: Callable[[float], Any] | None = None) -> None:
        self.exchange = exchange if exchange is not None else make_exchange(timeout_s=timeout_s)
        kwargs = {"sleep": sleep} if sleep is not None else {}
        self.calls = Retrying("Bybit", _translate, policy, **kwargs)
        self._markets: dict[str, Any] | None = None

    # -- markets
    def markets(self) -> dict[str, Any]:
        if self._markets is None:
            self._markets = self.calls.run("loading the market list", self.exchange.load_markets)
        return self._markets

    def instruments(self) -> dict[str, dict[str, Any]]:
        """Engine instrument records of every spot and linear-perpetual market, by ccxt symbol."""
        out = {}
        for symbol, market in self.markets().items():
            record = instrument_record(market)
            if record is not None:
                out[symbol] = record
        return out

    def market(self, symbol: str) -> dict[str, Any]:
        markets = self.markets()
        if symbol not in markets:
            close = difflib.get_close_matches(symbol, list(markets), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"Bybit has no market {symbol!r}{hint}; spot looks like BTC/USDT, linear perpetuals "
                              "like BTC/USDT:USDT")
        return markets[symbol]

    # -- bars
    def check_timeframe(self, timeframe_ms: int) -> str:
        tf = format_timeframe(timeframe_ms)
        if tf not in self.exchange.timeframes:
            raise ConfigError(f"Bybit has no {tf} bars; choose one of {', '.join(self.exchange.timeframes)}")
        return tf

    def windows(self, symbol: str, timeframe_ms: int, start: int, end: int) -> list[tuple[int, int]]:
        step = KLINE_LIMIT * timeframe_ms
        return [(a, min(a + step, end)) for a in range(start, end, step)]

    def fetch_bars(self, symbol: str, timeframe_ms: int, start: int, end: int) -> pd.DataFrame:
        """Bars opening in ``[start, end)`` (at most one page), as timestamp/open/high/low/close/volume."""
        tf = self.check_timeframe(timeframe_ms)
        self.market(symbol)
        rows = self.calls.run(f"{symbol} {tf} bars {iso(start)} -> {iso(end)}", self.exchange.fetch_ohlcv,
                              symbol, tf, start, KLINE_LIMIT, {"until": end - 1})
        frame = pd.DataFrame(rows, columns=["timestamp", "open", "high", "low", "close", "volume"])
        frame["timestamp"] = frame["timestamp"].astype("int64")
        return frame[(frame["timestamp"] >= start) & (frame["timestamp"] < end)]

    # -- funding
    def funding_interval_ms(self, symbol: str) -> int:
        record = instrument_record(self.market(symbol))
        if record is None or record["contract"] != "linear_perp":
            raise ConfigError(f"{symbol} is not a linear perpetual: only perpetuals have funding rates "
                              "(write them like BTC/USDT:USDT)")
        return int(record["funding_interval_min"]) * MS_PER_MINUTE

    def funding_windows(self, symbol: str, start: int, end: int) -> list[tuple[int, int]]:
        step = FUNDING_LIMIT * self.funding_interval_ms(symbol)
        return [(a, min(a + step, end)) for a in range(start, end, step)]

    def fetch_funding(self, symbol: str, start: int, end: int) -> pd.DataFrame:
        """Funding rates settled in ``[start, end)`` as timestamp/fundingRate."""
        self.funding_interval_ms(symbol)
        rows = self.calls.run(f"{symbol} funding rates {iso(start)} -> {iso(end)}",
                              self.exchange.fetch_funding_rate_history, symbol, start, FUNDING_LIMIT, {"until": end - 1})
        frame = pd.DataFrame({"timestamp": [int(r["timestamp"]) for r in rows],
                              "fundingRate": [float(r["fundingRate"]) for r in rows]})
        return frame[(frame["timestamp"] >= start) & (frame["timestamp"] < end)]


def _number(text: Any) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _translate(exc: BaseException, contacted: bool) -> EngineError | None:
    """ccxt's exception -> the engine's: unreachable, retryable, or final (BYBIT.md section 6)."""
    import ccxt
    import requests

    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, ccxt.NetworkError):
        cause = exc.__cause__
        connection_failed = isinstance(cause, requests.exceptions.ConnectionError) and not isinstance(
            cause, requests.exceptions.ReadTimeout)
        if connection_failed and not contacted:
            return SourceUnreachable(f"cannot reach Bybit ({HOST}): {_cause_text(exc)}")
        return TemporaryError(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, ccxt.BadSymbol):
        return ConfigError(f"Bybit does not know the symbol: {exc}")
    if isinstance(exc, ccxt.ExchangeError):
        return OperationalError(f"Bybit refused the request ({type(exc).__name__}): {exc}")
    if isinstance(exc, ccxt.BaseError):
        return OperationalError(f"ccxt error ({type(exc).__name__}): {exc}")
    if isinstance(exc, (KeyError, TypeError, ValueError)):
        return DataError(f"Bybit sent an answer that could not be read ({type(exc).__name__}: {exc})")
    return None


def _cause_text(exc: BaseException) -> str:
    cause = exc.__cause__
    text = str(cause or exc)
    for marker in ("Failed to resolve", "Name or service not known", "Temporary failure in name resolution",
                   "Connection refused", "Network is unreachable", "timed out"):
        if marker in text:
            return marker.lower() if marker != "timed out" else "connection timed out"
    return text[:200]
