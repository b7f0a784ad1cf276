"""Bybit through the real ccxt client against a fake Bybit v5 server on 127.0.0.1 (recorded payloads):
pagination, instruments, funding, retries and back-off per error class, failing fast when
unreachable, and the `data` command and `backtest --source bybit` working from a warm cache offline."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli import _parser, main
from engine.config import load_config
from engine.errors import ConfigError, TemporaryError
from engine.feeds import commands
from engine.feeds import market_data as market_data_module
from engine.feeds.bybit import BybitSource, make_exchange
from engine.feeds.cache import CacheKey, MarketCache
from engine.feeds.market_data import MissingDataError, cached_instrument, ensure_bars, ensure_funding
from engine.feeds.retry import RetryPolicy
from engine.timeutil import MS_PER_HOUR, parse_instant
from tests.fake_bybit import FakeBybit

ROOT = Path(__file__).resolve().parents[1]
H = MS_PER_HOUR
JAN = parse_instant("2024-01-01")
FEB = parse_instant("2024-02-01")
PERP, SPOT = "BTC/USDT:USDT", "BTC/USDT"


@pytest.fixture(scope="module")
def fake(shared_data_dir):
    server = FakeBybit(shared_data_dir / "bybit", missing={parse_instant("2024-01-10T05:00")}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared_data_dir():
    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / "bybit").is_dir():
        pytest.skip(f"recorded Bybit payloads not found under {SHARED_DATA / 'bybit'}")
    return SHARED_DATA


@pytest.fixture
def server(fake):
    fake.requests.clear()
    fake.failures.clear()
    return fake


def source_for(url: str, *, retries: int = 4, timeout_s: float = 2.0) -> tuple[BybitSource, list[float]]:
    slept: list[float] = []
    exchange = make_exchange(api_url=url, timeout_s=timeout_s, rate_limit_ms=1)
    return BybitSource(exchange, policy=RetryPolicy(retries=retries, base_delay=0.5, max_delay=4.0),
                       sleep=slept.append), slept


def test_exchange_factory_keeps_the_rate_limiter_on_and_redirects_every_base_url():
    exchange = make_exchange(api_url="http://127.0.0.1:9", timeout_s=3)
    assert exchange.enableRateLimit is True and exchange.timeout == 3000
    for section in ("api", "test", "demotrading"):
        assert set(exchange.urls[section].values()) == {"http://127.0.0.1:9"}
    assert exchange.options["fetchMarkets"]["types"] == ["spot", "linear"]
    assert make_exchange().urls["api"]["public"] == "https://api.{hostname}"


def test_recorded_kline_page_parses_to_the_recorded_ohlcv(server, tmp_path, shared_data_dir):
    doc = json.loads((shared_data_dir / "bybit" / "ccxt_static_response_bybit_subset.json").read_text())
    (case,) = doc["methods"]["fetchOHLCV"]
    expected = case["parsedResponse"]
    source, _ = source_for(server.url)
    series, _ = ensure_bars(MarketCache(tmp_path), "bybit", PERP, H, expected[0][0], expected[-1][0] + H, source=source)
    got = [[int(t), o, h, lo, c, v] for t, o, h, lo, c, v in
           zip(series.ts_open, series.open, series.high, series.low, series.close, series.volume)]
    assert got == expected


def test_long_ranges_are_paginated_in_windows_of_one_page(server, tmp_path):
    source, _ = source_for(server.url)
    start, end = JAN, JAN + 2500 * H
    series, report = ensure_bars(MarketCache(tmp_path), "bybit", PERP, H, start, end, source=source)
    klines = server.paths("/v5/market/kline")
    assert [(int(q["start"]), int(q["end"]), q["limit"]) for q in klines] == [
        (start, start + 1000 * H - 1, "1000"), (start + 1000 * H, start + 2000 * H - 1, "1000"),
        (start + 2000 * H, end - 1, "1000")]
    assert {(q["category"], q["interval"], q["symbol"]) for q in klines} == {("linear", "60", "BTCUSDT")}
    assert len(series) == 2499 and report.quality.missing_bars == 1  # the fake's downtime hour
    assert report.requests == 1 + 3 and report.retries == {}  # the market list (3 HTTP requests) + 3 pages
    assert len(server.paths("/v5/market/instruments-info")) == 3


def test_spot_uses_the_spot_category(server, tmp_path):
    source, _ = source_for(server.url)
    ensure_bars(MarketCache(tmp_path), "bybit", SPOT, 4 * H, JAN, JAN + 10 * 4 * H, source=source)
    assert {q["category"] for q in server.paths("/v5/market/kline")} == {"spot"}


def test_instrument_details_come_from_the_markets_and_are_cached(server, tmp_path, shared_data_dir):
    markets = json.loads((shared_data_dir / "bybit" / "ccxt_static_markets_bybit.json").read_text())
    cache = MarketCache(tmp_path)
    source, _ = source_for(server.url)
    ensure_bars(cache, "bybit", PERP, H, JAN, JAN + 5 * H, source=source)
    perp, spot = cached_instrument(cache, PERP), cached_instrument(cache, SPOT)
    assert (perp["contract"], perp["tick_size"], perp["lot_step"], perp["min_quantity"], perp["min_notional"],
            perp["max_leverage"], perp["funding_interval_min"]) == ("linear_perp", 0.1, 0.001, 0.001, 5.0, 100.0, 480)
    assert (spot["contract"], spot["tick_size"], spot["lot_step"], spot["min_quantity"], spot["min_notional"],
            spot["max_leverage"]) == ("spot", markets[SPOT]["precision"]["price"], 1e-06, 1.1e-05, 5, 1.0)
    assert cached_instrument(cache, "BTC/USD:BTC") is None  # inverse contracts are not traded by the engine


def test_funding_history_is_paginated_and_feeds_the_funding_model(server, tmp_path):
    source, _ = source_for(server.url)
    start, end = JAN, JAN + 100 * 24 * H  # 300 settlements: two windows of at most 200
    frame, report = ensure_funding(MarketCache(tmp_path), PERP, start, end, source=source)
    pages = server.paths("/v5/market/funding/history")
    assert [(int(q["startTime"]), int(q["endTime"])) for q in pages] == [
        (start, start + 200 * 8 * H - 1), (start + 200 * 8 * H, end - 1)]
    assert len(frame) == 300 and frame["timestamp"].iloc[0] == start and report.fetched == [(start, end)]
    from engine.costs import FundingSeries

    funding = FundingSeries(frame["timestamp"].tolist(), frame["fundingRate"].tolist())
    settlement = start + 37 * 8 * H
    assert funding.rate(PERP, settlement) == float(server.funding_rate(settlement))
    assert funding.rate(PERP, settlement + H) == float(server.funding_rate(settlement))


def test_retries_back_off_and_are_counted_per_error_class(server, tmp_path):
    source, slept = source_for(server.url, timeout_s=0.3)
    source.markets()
    server.delay_s = 1.0
    server.fail("/v5/market/kline", 502, 429, ("ret", 10006), "timeout")
    started = time.monotonic()
    series, report = ensure_bars(MarketCache(tmp_path), "bybit", PERP, H, JAN, JAN + 24 * H, source=source)
    assert len(series) == 24 and time.monotonic() - started < 5
    assert report.retries == {"ExchangeNotAvailable": 1, "RateLimitExceeded": 2, "RequestTimeout": 1}
    assert slept == [0.5, 1.0, 2.0, 4.0]  # doubling from base_delay, capped at max_delay
    assert len(server.paths("/v5/market/kline")) == 5


def test_retries_give_up_with_the_counts_and_keep_what_was_fetched(server, tmp_path):
    source, slept = source_for(server.url, retries=2)
    cache = MarketCache(tmp_path)
    source.markets()
    server.fail("/v5/market/kline", "ok", 503, 503, 503)
    with pytest.raises(TemporaryError, match=r"failed 3 times \(retried: ExchangeNotAvailable x2\).*run the same command again"):
        ensure_bars(cache, "bybit", PERP, H, JAN, JAN + 1500 * H, source=source)
    assert slept == [0.5, 1.0]
    table = cache.read(CacheKey("bybit", PERP, "bars", "1h"))
    assert table.covered == ((JAN, JAN + 1000 * H),)  # the first page is kept; a rerun fetches the rest only


def test_unreachable_exchange_fails_at_once_without_retries(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: connections are refused
    source, slept = source_for(f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(MissingDataError, match=r"cannot reach Bybit.*connection refused.*has none of it.*data fetch "
                                               r"--source bybit --symbol 'BTC/USDT:USDT' --timeframe 1h.*--data PATH.csv"):
        ensure_bars(MarketCache(tmp_path), "bybit", PERP, H, JAN, FEB, source=source)
    assert time.monotonic() - started < 2 and slept == [] and source.calls.calls == 1


def test_unknown_symbol_names_close_matches(server, tmp_path):
    source, _ = source_for(server.url)
    with pytest.raises(ConfigError, match=r"Bybit has no market 'BTC/USDT:USD'.*did you mean.*BTC/USDT:USDT"):
        ensure_bars(MarketCache(tmp_path), "bybit", "BTC/USDT:USD", H, JAN, FEB, source=source)


# ---------------------------------------------------------------- the data command and backtests

def fetch_command(tmp_path, source, *argv):
    args = _parser().parse_args(["data", "fetch", "--cache-dir", str(tmp_path), *argv])
    return commands.fetch(args, load_config(None, [f'data.cache_dir="{tmp_path}"']), source=source)


@pytest.fixture
def warm_cache(server, tmp_path):
    source, _ = source_for(server.url)
    assert fetch_command(tmp_path, source, "--source", "bybit", "--symbol", PERP, "--timeframe", "1h",
                         "--start", "2024-01-01", "--end", "2024-02-01", "--no-progress") == 0
    return tmp_path


def test_data_fetch_reports_bars_funding_and_instrument(server, tmp_path, capsys):
    assert main(["data", "fetch", "--cache-dir", str(tmp_path), "--source", "bybit", "--symbol", PERP,
                 "--timeframe", "1h", "--start", "2024-01-01", "--end", "2024-02-01", "--bybit-url", server.url]) == 0
    out = capsys.readouterr().out
    assert "bybit BTC/USDT:USDT 1h bars 2024-01-01T00:00:00Z -> 2024-02-01T00:00:00Z: 743 rows, fetched" in out
    assert "1 gaps (1 missing bars: 2024-01-10T04:00:00Z -> 2024-01-10T06:00:00Z" in out
    assert "funding rates 2024-01-01T00:00:00Z -> 2024-02-01T00:00:00Z: 93 rows" in out
    assert "instrument: linear_perp, tick 0.1, lot step 0.001" in out


def test_data_fetch_again_is_answered_by_the_cache(warm_cache, capsys, monkeypatch):
    capsys.readouterr()
    monkeypatch.setattr(market_data_module, "make_source", lambda *a, **k: pytest.fail("no source needed"))
    assert main(["data", "fetch", "--cache-dir", str(warm_cache), "--source", "bybit", "--symbol", PERP,
                 "--timeframe", "1h", "--start", "2024-01-01", "--end", "2024-02-01", "--no-progress"]) == 0
    assert "743 rows, from the cache" in capsys.readouterr().out


def test_data_show_lists_symbol_timeframe_range_and_gaps(warm_cache, capsys):
    capsys.readouterr()
    assert main(["data", "show", "--cache-dir", str(warm_cache)]) == 0
    out = capsys.readouterr().out
    assert "bybit   BTC/USDT:USDT  bars-1h  2024-01-01T00:00:00Z -> 2024-02-01T00:00:00Z  743   1 (1)" in out
    assert "funding" in out and "bybit instrument details: " in out
    assert main(["data", "show", "--cache-dir", str(warm_cache), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    bars = next(t for t in shown["tables"] if t["table"] == "bars-1h")
    assert (bars["symbol"], bars["rows"], bars["gaps"], bars["missing_bars"], bars["bar_time"]) == (PERP, 743, 1, 1, "open")


def test_backtest_source_bybit_runs_offline_from_a_warm_cache(warm_cache, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(market_data_module, "make_source", lambda *a, **k: pytest.fail("the backtest went online"))
    capsys.readouterr()
    code = main(["backtest", "--source", "bybit", "--symbol", PERP, "--timeframe", "1h", "--start", "2024-01-01",
                 "--end", "2024-02-01", "--set", f'data.cache_dir="{warm_cache}"', "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["bars"] == 743 and summary["contract"] == "linear_perp" and summary["data"] == "bybit:BTC/USDT:USDT:1h"
    assert summary["funding"] != 0
    notes = " | ".join(summary["notes"])
    assert "from the cache" in notes and "instrument: BTC/USDT:USDT from the cached Bybit market" in notes
    assert "maker 0.0200% / taker 0.0550%" in notes and "funding: bybit BTC/USDT:USDT funding rates" in notes


def test_backtest_on_a_cold_cache_without_network_explains_what_to_do(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(market_data_module, "make_source",
                        lambda *a, **k: source_for(f"http://127.0.0.1:{port}")[0])
    started = time.monotonic()
    code = main(["backtest", "--source", "bybit", "--symbol", PERP, "--timeframe", "1h", "--start", "2024-01-01",
                 "--end", "2024-02-01", "--set", f'data.cache_dir="{tmp_path / "cold"}"', "--json"])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - started < 3
    assert err.startswith("error: cannot reach Bybit") and "python -m engine data fetch --source bybit" in err
    assert "--data PATH.csv" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--source", "bybit", "--symbol", PERP], "needs --timeframe, --start, --end"),
    (["--source", "bybit", "--data", "x.csv", "--symbol", PERP], "choose one"),
    (["--source", "csv"], "needs a bar file"),
])
def test_backtest_source_flag_checks(capsys, monkeypatch, args, message):
    monkeypatch.chdir(ROOT)
    assert main(["backtest", "--json", *args]) == 2
    assert message in capsys.readouterr().err


def test_data_command_help_is_clear():
    def run(*argv):
        return subprocess.run([sys.executable, "-m", "engine", *argv, "--help"], capture_output=True, text=True,
                              cwd=ROOT, check=True).stdout

    fetch_help = run("data", "fetch")
    for text in ("--source {yfinance,bybit}", "--symbol", "--timeframe", "--start", "--end", "--adjusted",
                 "--no-funding", "--cache-dir", "works offline"):
        assert text in fetch_help
    assert "gaps" in run("data", "show") and "fetch" in run("data")
    assert "--source" in run("backtest")
