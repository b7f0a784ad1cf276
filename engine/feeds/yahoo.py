"""Yahoo Finance bars through yfinance: daily, weekly and intraday, adjusted or raw.

Times follow the engine's bar-open convention in UTC epoch ms. Daily and weekly bars are stamped at
00:00 UTC of their trading date, exactly as the daily CSV files are read (``load_bars``), so a cached
Yahoo series and a CSV export of the same days line up; intraday bars carry their real open instant.
``adjusted=True`` asks yfinance for split- and dividend-adjusted open/high/low/close
(``auto_adjust``); raw and adjusted bars are cached apart.

Yahoo keeps intraday history for a limited time (1m: 30 days, other minute bars: 60 days, 1h: 730
days) and answers long intraday ranges in pieces, so those are fetched in windows. The ticker object
is made by an injectable factory (``yf.Ticker`` by default); tests replace yfinance's HTTP layer with
recorded chart responses and never touch the network.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.errors import ConfigError, DataError, EngineError, OperationalError, TemporaryError
from engine.feeds.retry import Retrying, RetryPolicy, SourceUnreachable
from engine.timeutil import MS_PER_DAY, format_timeframe, iso

HOST = "query2.finance.yahoo.com"
INTERVALS = {"1m": "1m", "2m": "2m", "5m": "5m", "15m": "15m", "30m": "30m", "1h": "1h", "90m": "90m",
             "1d": "1d", "1w": "1wk"}
# Days per request for intraday bars (Yahoo refuses longer ranges per call).
_WINDOW_DAYS = {"1m": 7, "2m": 59, "5m": 59, "15m": 59, "30m": 59, "90m": 59, "1h": 180}
_EPOCH = pd.Timestamp(0, tz="UTC")


def user_state_dir() -> Path:
    """Where yfinance keeps its cookies, session and ticker time zones: a per-user folder,
    ``$XDG_CACHE_HOME/llmtrader/yfinance`` (else ``~/.cache/llmtrader/yfinance``), never inside
    ``data.cache_dir``, which users copy between machines."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"  # a relative one is ignored (XDG spec)
    return root / "llmtrader" / "yfinance"


class YahooSource:
    name = "yfinance"
    calendar = "exchange"
    host = HOST

    def __init__(self, *, adjusted: bool = False, timeout_s: float = 10.0, policy: RetryPolicy | None = None,
                 ticker_factory: Callable[[str], Any] | None = None, state_dir: str | Path | None = None,
                 sleep: Callable[[float], Any] | None = None) -> None:
        import yfinance as yf

        if state_dir is not None:  # yfinance's own caches: ticker time zones, ISINs, its cookies and session
            state = Path(state_dir)
            state.mkdir(mode=0o700, parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                state.chmod(0o700)  # the cookies are a session: only their owner reads them
            yf.set_tz_cache_location(str(state))  # also its cookie and ISIN caches
        self.adjusted = adjusted
        self.timeout_s = timeout_s
        self.ticker_factory = ticker_factory or yf.Ticker
        kwargs = {"sleep": sleep} if sleep is not None else {}
        self.calls = Retrying("Yahoo Finance", _translate, policy, **kwargs)

    @property
    def variant(self) -> str:
        return "adjusted" if self.adjusted else "raw"

    def check_timeframe(self, timeframe_ms: int) -> str:
        tf = format_timeframe(timeframe_ms)
        if tf not in INTERVALS:
            raise ConfigError(f"Yahoo Finance has no {tf} bars; choose one of {', '.join(INTERVALS)}")
        return tf

    def windows(self, symbol: str, timeframe_ms: int, start: int, end: int) -> list[tuple[int, int]]:
        tf = self.check_timeframe(timeframe_ms)
        if tf not in _WINDOW_DAYS:
            return [(start, end)]
        step = _WINDOW_DAYS[tf] * MS_PER_DAY
        return [(a, min(a + step, end)) for a in range(start, end, step)]

    def fetch_bars(self, symbol: str, timeframe_ms: int, start: int, end: int) -> pd.DataFrame:
        """Bars opening in ``[start, end)`` as timestamp/open/high/low/close/volume."""
        tf = self.check_timeframe(timeframe_ms)
        daily = timeframe_ms >= MS_PER_DAY
        if daily:  # dates: yfinance reads them in the exchange's time zone, start inclusive, end exclusive
            lo: Any = pd.Timestamp(start, unit="ms").strftime("%Y-%m-%d")
            hi: Any = pd.Timestamp(-(-end // MS_PER_DAY) * MS_PER_DAY, unit="ms").strftime("%Y-%m-%d")
        else:
            lo, hi = (pd.Timestamp(start, unit="ms", tz="UTC").to_pydatetime(),
                      pd.Timestamp(end, unit="ms", tz="UTC").to_pydatetime())
        what = f"{symbol} {tf} bars {iso(start)} -> {iso(end)}"
        frame = self.calls.run(what, self._history, symbol, INTERVALS[tf], lo, hi)
        out = history_to_frame(frame, daily=daily)
        return out[(out["timestamp"] >= start) & (out["timestamp"] < end)]

    def _history(self, symbol: str, interval: str, start: Any, end: Any) -> pd.DataFrame:
        from yfinance.exceptions import YFPricesMissingError

        ticker = self.ticker_factory(symbol)
        with _raising_yfinance():
            try:
                return ticker.history(start=start, end=end, interval=interval, auto_adjust=self.adjusted,
                                      actions=False, timeout=self.timeout_s)
            except YFPricesMissingError as exc:
                text = str(exc)
                if "within the last" in text or "must be within" in text:
                    raise ConfigError(f"Yahoo Finance refuses {symbol} {interval} bars so far back ({text}); "
                                      "it keeps 1m bars for 30 days, other minute bars for 60 days and 1h bars for "
                                      "730 days: use daily bars or a CSV file for older history") from None
                return pd.DataFrame(columns=["Open", "High", "Low", "Close", "Volume"])  # no trading in the window


def history_to_frame(history: pd.DataFrame, *, daily: bool) -> pd.DataFrame:
    """A DataFrame as ``Ticker.history`` returns it (tz-aware index named Date or Datetime; Open, High,
    Low, Close, Volume and maybe Adj Close, Dividends, Stock Splits) -> timestamp/open/.../volume."""
    columns = ["timestamp", "open", "high", "low", "close", "volume"]
    if history is None or len(history) == 0:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c == "timestamp" else "float64") for c in columns})
    missing = [c for c in ("Open", "High", "Low", "Close") if c not in history.columns]
    if missing:
        raise DataError(f"Yahoo Finance answer lacks columns {missing} (got {list(history.columns)})")
    index = pd.DatetimeIndex(history.index)
    if index.tz is None:
        index = index.tz_localize("UTC")
    # daily: the trading date in the exchange's zone, stamped 00:00 UTC; intraday: the real open instant
    stamps = index.tz_localize(None).normalize().tz_localize("UTC") if daily else index.tz_convert("UTC")
    ms = ((stamps - _EPOCH) // pd.Timedelta(milliseconds=1)).to_numpy(np.int64)
    volume = history["Volume"].to_numpy(np.float64) if "Volume" in history.columns else np.zeros(len(history))
    return pd.DataFrame({
        "timestamp": ms, "open": history["Open"].to_numpy(np.float64), "high": history["High"].to_numpy(np.float64),
        "low": history["Low"].to_numpy(np.float64), "close": history["Close"].to_numpy(np.float64), "volume": volume,
    })


@contextlib.contextmanager
def _raising_yfinance() -> Iterator[None]:
    """Make yfinance raise its errors instead of logging them and returning an empty frame (so offline
    can be told from "no data"), and keep its log chatter off the user's terminal, for one call."""
    import yfinance as yf

    debug = yf.config.debug
    hide, logger = debug.hide_exceptions, logging.getLogger("yfinance")
    level = logger.level
    debug.hide_exceptions = False
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        debug.hide_exceptions = hide
        logger.setLevel(level)


def _translate(exc: BaseException, contacted: bool) -> EngineError | None:
    import requests
    from curl_cffi.requests import exceptions as curl
    from yfinance import exceptions as yfe

    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, (curl.ConnectionError, requests.exceptions.ConnectionError)) and not isinstance(
            exc, (curl.ReadTimeout, requests.exceptions.ReadTimeout)):
        if not contacted:
            detail = str(exc).split(". See ")[0].removeprefix("Failed to perform, ")  # curl's long tail
            return SourceUnreachable(f"cannot reach Yahoo Finance ({HOST}): {detail[:200]}")
        return TemporaryError(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, (curl.HTTPError, requests.exceptions.HTTPError)):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 404:
            return ConfigError(f"Yahoo Finance does not know the ticker (HTTP 404: {exc}): check the symbol "
                               "(e.g. AAPL, SPY, ^GSPC)")
        if status is not None and 400 <= status < 500 and status != 429:
            return OperationalError(f"Yahoo Finance refused the request: {exc}")
        return TemporaryError(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, (curl.RequestException, requests.exceptions.RequestException, yfe.YFRateLimitError)):
        return TemporaryError(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, yfe.YFTzMissingError):
        return ConfigError(f"Yahoo Finance does not know the ticker ({exc}): check the symbol (e.g. AAPL, SPY, ^GSPC)")
    if isinstance(exc, yfe.YFException):
        return OperationalError(f"Yahoo Finance error ({type(exc).__name__}): {exc}")
    if isinstance(exc, (KeyError, TypeError, ValueError)):
        return DataError(f"Yahoo Finance sent an answer that could not be read ({type(exc).__name__}: {exc})")
    return None
