"""Yahoo Finance bars through yfinance's own parsing, fed constructed Yahoo chart (v8) responses at
yfinance's HTTP seam (``YfData.get``): no network. Daily raw/adjusted, bar-open UTC stamps, the cache,
retries, failing fast offline, unknown tickers and too-old intraday ranges."""

from __future__ import annotations

import copy
import json
import time

import numpy as np
import pandas as pd
import pytest
import yfinance as yf
from yfinance import data as yf_data

from engine.errors import ConfigError
from engine.feeds.cache import CacheKey, MarketCache
from engine.feeds.market_data import MissingDataError, ensure_bars
from engine.feeds.retry import RetryPolicy
from engine.feeds.yahoo import YahooSource, history_to_frame
from engine.timeutil import MS_PER_DAY, MS_PER_HOUR, parse_instant

# yfinance's own pandas calls trigger pandas 3 deprecation notices; they are not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword")

D = MS_PER_DAY
OPEN_UTC = 14 * 3600 + 30 * 60  # 09:30 New York (EST) in seconds after 00:00 UTC


def chart_meta(symbol: str, granularity: str) -> dict:
    return {"currency": "USD", "symbol": symbol, "exchangeName": "NMS", "fullExchangeName": "NasdaqGS",
            "instrumentType": "EQUITY", "firstTradeDate": 345479400, "regularMarketTime": 1704402000,
            "hasPrePostMarketData": True, "gmtoffset": -18000, "timezone": "EST",
            "exchangeTimezoneName": "America/New_York", "regularMarketPrice": 181.91, "chartPreviousClose": 192.53,
            "priceHint": 2, "dataGranularity": granularity, "range": "",
            "currentTradingPeriod": {p: {"timezone": "EST", "start": s, "end": e, "gmtoffset": -18000} for p, s, e in (
                ("pre", 1704358800, 1704378600), ("regular", 1704378600, 1704402000), ("post", 1704402000, 1704416400))},
            "validRanges": ["1d", "5d", "1mo", "3mo", "6mo", "1y", "2y", "5y", "10y", "ytd", "max"]}


def price(day: int) -> tuple[float, float, float, float, float, int]:
    """open, high, low, close, adjclose, volume of trading day number ``day`` (epoch days)."""
    base = 180 + 5 * np.sin(day / 7)
    o, c = round(base, 2), round(base + 1.25, 2)
    return o, round(c + 1, 2), round(o - 1, 2), c, round(c * 0.99, 2), 50_000_000 + day


class FakeYahoo:
    """Answers yfinance's chart requests for weekdays between period1 and period2 (daily bars)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.raise_next: list[BaseException] = []
        self.tz_error = False
        self.history_error: str | None = None

    def get(self, _self, url, params=None, timeout=30):
        params = dict(params or {})
        self.requests.append(params)
        if self.raise_next:
            raise self.raise_next.pop(0)
        if "/v8/finance/chart/" not in url:  # e.g. quoteSummary, its fallback for a ticker's time zone
            return Response({"finance": {"result": None, "error": {"code": "Not Found"}}}, status=404)
        if "period1" not in params:  # yfinance asks for the exchange's time zone first
            if self.tz_error:
                return Response({"chart": {"result": None, "error": {"code": "Not Found",
                                                                      "description": "No data found, symbol may be delisted"}}})
            return Response({"chart": {"result": [{"meta": chart_meta(url.rsplit("/", 1)[-1], "1d")}], "error": None}})
        if self.history_error:
            return Response({"chart": {"result": None, "error": {"code": "Unprocessable Entity",
                                                                  "description": self.history_error}}})
        days = [d for d in range(params["period1"] // 86400, -(-params["period2"] // 86400)) if (d + 3) % 7 < 5]
        rows = [price(d) for d in days]
        result = {"meta": chart_meta(url.rsplit("/", 1)[-1], params["interval"]),
                  "timestamp": [d * 86400 + OPEN_UTC for d in days],
                  "indicators": {"quote": [{"open": [r[0] for r in rows], "high": [r[1] for r in rows],
                                            "low": [r[2] for r in rows], "close": [r[3] for r in rows],
                                            "volume": [r[5] for r in rows]}],
                                 "adjclose": [{"adjclose": [r[4] for r in rows]}]}}
        return Response({"chart": {"result": [result], "error": None}})


class Response:
    url = "https://query2.finance.yahoo.com/v8/finance/chart"

    def __init__(self, body: dict, status: int = 200) -> None:
        self._body = body
        self.text = json.dumps(body)
        self.status_code = status

    def raise_for_status(self) -> None:
        from curl_cffi.requests.exceptions import HTTPError

        if self.status_code >= 400:
            raise HTTPError(f"HTTP Error {self.status_code}: Not Found", 0, self)

    def json(self) -> dict:
        return copy.deepcopy(self._body)  # yfinance edits what it gets


@pytest.fixture
def yahoo(monkeypatch):
    fake = FakeYahoo()
    monkeypatch.setattr(yf_data.YfData, "get", lambda self, *a, **k: fake.get(self, *a, **k))
    monkeypatch.setattr(yf_data.YfData, "cache_get", lambda self, *a, **k: fake.get(self, *a, **k))
    return fake


def source(tmp_path, *, adjusted=False, retries=3):
    slept: list[float] = []
    return YahooSource(adjusted=adjusted, state_dir=tmp_path / "_yf", policy=RetryPolicy(retries=retries, base_delay=0.25),
                       sleep=slept.append), slept


def epoch_day(date: str) -> int:
    return parse_instant(date) // D


START, END = parse_instant("2024-01-02"), parse_instant("2024-01-13")  # Tue .. Fri of the next week


def test_daily_bars_are_stamped_at_00_utc_of_the_trading_date(yahoo, tmp_path):
    src, _ = source(tmp_path)
    series, report = ensure_bars(MarketCache(tmp_path), "yfinance", "AAPL", D, START, END, source=src)
    dates = ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-08", "2024-01-09", "2024-01-10",
             "2024-01-11", "2024-01-12"]
    assert series.ts_open.tolist() == [parse_instant(d) for d in dates]
    expected = [price(epoch_day(d)) for d in dates]
    assert series.close.tolist() == [r[3] for r in expected] and series.open.tolist() == [r[0] for r in expected]
    assert series.volume.tolist() == [float(r[5]) for r in expected]
    assert report.quality.calendar == "exchange" and report.quality.gaps == ()  # the weekend is no gap
    history = [r for r in yahoo.requests if "period1" in r]
    assert [(r["interval"], r["period1"], r["period2"]) for r in history] == [
        ("1d", START // 1000 + 5 * 3600, END // 1000 + 5 * 3600)]  # midnight New York


def test_adjusted_bars_scale_by_adjclose_and_are_cached_apart(yahoo, tmp_path):
    cache = MarketCache(tmp_path)
    raw, _ = ensure_bars(cache, "yfinance", "AAPL", D, START, END, source=source(tmp_path)[0])
    adjusted, _ = ensure_bars(cache, "yfinance", "AAPL", D, START, END, source=source(tmp_path, adjusted=True)[0],
                              adjusted=True)
    assert np.allclose(adjusted.close, raw.close * 0.99, atol=0.006)
    assert np.allclose(adjusted.open / raw.open, adjusted.close / raw.close)
    assert sorted(p.name for p in CacheKey("yfinance", "AAPL", "bars", "1d").folder(tmp_path).parent.iterdir()) == ["bars-1d-adjusted", "bars-1d-raw"]


def test_second_run_is_answered_by_the_cache(yahoo, tmp_path):
    cache = MarketCache(tmp_path)
    ensure_bars(cache, "yfinance", "AAPL", D, START, END, source=source(tmp_path)[0])
    asked = len(yahoo.requests)
    series, report = ensure_bars(cache, "yfinance", "AAPL", D, START + 2 * D, END, make=lambda: pytest.fail("online"))
    assert len(yahoo.requests) == asked and report.fetched == [] and len(series) == 7


def test_offline_fails_at_once_saying_how_to_supply_the_bars(yahoo, tmp_path):
    from curl_cffi.requests.exceptions import DNSError

    yahoo.raise_next = [DNSError("Failed to perform, curl: (6) Could not resolve host: query2.finance.yahoo.com")]
    src, slept = source(tmp_path)
    started = time.monotonic()
    with pytest.raises(MissingDataError) as info:
        ensure_bars(MarketCache(tmp_path), "yfinance", "AAPL", D, START, END, source=src)
    message = str(info.value)
    assert "cannot reach Yahoo Finance" in message and "Could not resolve host" in message
    assert "python -m engine data fetch --source yfinance --symbol 'AAPL' --timeframe 1d --start 2024-01-02" in message
    assert "--data PATH.csv" in message
    assert time.monotonic() - started < 1 and slept == [] and src.calls.calls == 1


def test_rate_limits_are_retried_with_back_off(yahoo, tmp_path):
    from yfinance.exceptions import YFRateLimitError

    yahoo.raise_next = [YFRateLimitError(), YFRateLimitError()]
    src, slept = source(tmp_path)
    src.calls.contacted = True
    series, report = ensure_bars(MarketCache(tmp_path), "yfinance", "AAPL", D, START, END, source=src)
    assert len(series) == 9 and report.retries == {"YFRateLimitError": 2} and slept == [0.25, 0.5]


def test_unknown_ticker_is_a_config_error(yahoo, tmp_path):
    yahoo.tz_error = True
    with pytest.raises(ConfigError, match="Yahoo Finance does not know the ticker.*check the symbol"):
        ensure_bars(MarketCache(tmp_path), "yfinance", "NOPE", D, START, END, source=source(tmp_path)[0])
    assert yf.config.debug.hide_exceptions is True  # yfinance's global setting is restored


def test_intraday_too_far_back_explains_yahoos_limits(yahoo, tmp_path):
    yahoo.history_error = "1h data not available for startTime=1. The requested range must be within the last 730 days."
    with pytest.raises(ConfigError, match="keeps 1m bars for 30 days.*1h bars for 730 days"):
        ensure_bars(MarketCache(tmp_path), "yfinance", "AAPL", MS_PER_HOUR, START, START + 5 * D,
                    source=source(tmp_path)[0])


def test_intraday_ranges_are_fetched_in_windows(tmp_path):
    src, _ = source(tmp_path)
    start = parse_instant("2024-01-01")
    assert len(src.windows("AAPL", MS_PER_HOUR, start, start + 400 * D)) == 3  # 180 days per request
    assert len(src.windows("AAPL", 60_000, start, start + 20 * D)) == 3  # 7 days per request
    assert src.windows("AAPL", D, start, start + 4000 * D) == [(start, start + 4000 * D)]
    with pytest.raises(ConfigError, match="Yahoo Finance has no 4h bars"):
        src.windows("AAPL", 4 * MS_PER_HOUR, start, start + D)


def test_history_frame_conversion_daily_and_intraday():
    index = pd.DatetimeIndex(["2024-01-02 09:30", "2024-01-02 10:30"], name="Datetime").tz_localize("America/New_York")
    frame = pd.DataFrame({"Open": [1.0, 2.0], "High": [2.0, 3.0], "Low": [0.5, 1.5], "Close": [1.5, 2.5],
                          "Volume": [10, 20], "Dividends": [0.0, 0.0], "Stock Splits": [0.0, 0.0]}, index=index)
    intraday = history_to_frame(frame, daily=False)
    assert intraday["timestamp"].tolist() == [parse_instant("2024-01-02T14:30"), parse_instant("2024-01-02T15:30")]
    daily = history_to_frame(frame.iloc[:1].set_axis(pd.DatetimeIndex(["2024-01-02"], name="Date")
                                                     .tz_localize("America/New_York")), daily=True)
    assert daily["timestamp"].tolist() == [parse_instant("2024-01-02")] and daily["close"].tolist() == [1.5]
    assert len(history_to_frame(pd.DataFrame(), daily=True)) == 0


def test_backtest_source_yfinance_from_the_cache(yahoo, tmp_path):
    from engine.config import load_config
    from engine.session import prepare_backtest

    ensure_bars(MarketCache(tmp_path), "yfinance", "AAPL", D, START, END, source=source(tmp_path)[0])
    config = load_config(None, ['data.source="yfinance"', 'data.symbol="AAPL"', 'data.timeframe="1d"',
                                'run.start="2024-01-02"', 'run.end="2024-01-13"', f'data.cache_dir="{tmp_path}"',
                                'data.gap_policy="refuse"'])
    plan = prepare_backtest(config)
    assert len(plan.series[0]) == 9 and plan.data_label == "yfinance:AAPL:1d"
    assert any("instrument: from config.toml [instrument]" in n for n in plan.notes)
    assert any("exchange calendar" in n and "no gaps" in n for n in plan.notes)
