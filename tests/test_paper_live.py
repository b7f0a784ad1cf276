"""The daemon's live-bar path through the real ccxt client against a fake Bybit v5 on 127.0.0.1:
the closed-bar rule, gaps, late bars, an exchange that is down, and a whole daemon start and step."""

from __future__ import annotations

import time

import pytest

from engine.daemon.feeds import ClosedBars
from engine.feeds.bybit import BybitSource, make_exchange
from engine.feeds.retry import RetryPolicy
from engine.timeutil import MS_PER_HOUR, parse_instant
from tests.fake_bybit import FakeBybit
from tests.test_paper import ROOT

H = MS_PER_HOUR
T = parse_instant("2024-03-01T10:00")
PERP = "BTC/USDT:USDT"


@pytest.fixture(scope="module")
def fake():
    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / "bybit").is_dir():
        pytest.skip(f"recorded Bybit payloads not found under {SHARED_DATA / 'bybit'}")
    server = FakeBybit(SHARED_DATA / "bybit", missing={T - 3 * H}).start()
    yield server
    server.stop()


@pytest.fixture
def server(fake):
    fake.requests.clear()
    fake.failures.clear()
    return fake


def source(url: str) -> BybitSource:
    return BybitSource(make_exchange(api_url=url, timeout_s=2.0, rate_limit_ms=1),
                       policy=RetryPolicy(retries=0), sleep=lambda s: None)


def test_only_closed_bars_are_taken_each_once_in_order_and_gaps_are_counted(server):
    bars = ClosedBars(source(server.url), PERP, H, settle_ms=3000, last_open=T - 6 * H)
    got = bars.poll(T + 20 * 60_000)  # 10:20: the 10:00 bar is still forming and the fake serves it
    opens = [b.ts_open for b in got.bars]
    assert opens == [T - 5 * H, T - 4 * H, T - 2 * H, T - H]  # 07:00 never existed on the exchange
    assert got.missing == 1 and bars.missing_total == 1
    assert all(b.ts_event <= T + 20 * 60_000 - 3000 for b in got.bars)
    assert server.paths("/v5/market/kline"), "asked the exchange over HTTP"
    assert bars.poll(T + 2000).bars == []  # 11:00 minus the settle delay: the 10:00 bar is not closed yet
    later = bars.poll(T + H + 3000)
    assert [b.ts_open for b in later.bars] == [T] and later.missing == 0
    assert bars.poll(T + H + 60_000).bars == []  # nothing twice


def live_config(tmp_path, url, *extra):
    from engine.session import load_settings

    return load_settings(ROOT / "config.toml", [
        f'store.url="sqlite:///{tmp_path / "live.db"}"', 'run.strategy="sma_cross"', 'data.source="bybit"',
        f'data.symbol="{PERP}"', 'data.timeframe="1h"', f'data.api_url="{url}"', "data.retries=0",
        f'data.cache_dir="{tmp_path / "cache"}"', "paper.warmup_bars=60", 'logging.file=""',
        "strategies.sma_cross.fast=3", "strategies.sma_cross.slow=8", *extra])


def test_a_live_daemon_warms_up_takes_bars_as_they_close_and_waits_out_an_outage(server, tmp_path):
    from engine.daemon import commands, specs
    from engine.daemon.runner import Daemon

    config = live_config(tmp_path, server.url)

    class Args:
        warmup = None

    spec = specs.live_bars_spec(Args, config, say=print)
    assert len(spec.warmup) >= 59 and spec.plan.instruments[PERP].contract.value == "linear_perp"
    daemon = Daemon(spec)
    assert daemon.open() == "started"
    tf = daemon.timeframe_ms
    first = spec.live_from_ms
    report = daemon.tick(first + 1000)  # the first live bar is still forming
    assert report.bars == 0
    report = daemon.tick(first + tf + 5000)
    assert report.bars == 1 and report.late == 0
    assert daemon.kernel.loop.bars_seen == 1
    server.fail("/v5/market/kline", 502, 502, 502)
    report = daemon.tick(first + 2 * tf + 5000)
    assert report.bars == 0 and "unavailable" in report.waiting
    status = commands.status_of(daemon.store, commands._find(daemon.store, None), config)
    assert status["state"] == "waiting" and "unavailable" in status["note"] and not status["stale"]
    server.failures.clear()
    report = daemon.tick(first + 5 * tf + 5000)  # back after hours: the missed bars are late
    assert report.bars == 4 and report.late == 3
    assert daemon.kernel.loop.bars_seen == 5
    daemon.close()
    again = Daemon(specs.live_bars_spec(Args, config, say=print))  # the same command resumes the run
    assert again.open() == "resumed" and again.kernel.loop.bars_seen == 5
    again.close()


def test_an_unknown_symbol_is_refused_before_anything_runs(server, tmp_path, capsys):
    from engine.cli import main

    config_args = ["--set", f'data.api_url="{server.url}"', "--set", "data.retries=0",
                   "--set", f'data.cache_dir="{tmp_path / "cache"}"']
    code = main(["paper", "start", "--source", "bybit", "--symbol", "NOPE/USDT", "--timeframe", "1h",
                 "--strategy", "sma_cross", *config_args])
    err = capsys.readouterr().err
    assert code == 2 and "Bybit has no market 'NOPE/USDT'" in err
    assert not (tmp_path / "live.db").exists()


def test_paper_funding_follows_the_rates_the_exchange_publishes(server):
    from engine.costs import FundingSeries
    from engine.daemon.feeds import LiveFundingRates

    settle = parse_instant("2024-03-01T08:00")
    base = FundingSeries([settle - 8 * H], [0.0003])
    rates = LiveFundingRates(source(server.url), PERP, base)
    assert rates.rate(PERP, settle - 8 * H) == 0.0003 and rates.fetches == 0  # known: no request
    assert rates.rate(PERP, settle) == float(server.funding_rate(settle))  # published since: fetched
    assert rates.rate(PERP, settle + 8 * H) == float(server.funding_rate(settle + 8 * H))
    fetched = rates.fetches
    assert rates.rate(PERP, settle + H) == float(server.funding_rate(settle)) and rates.fetches == fetched
    server.fail("/v5/market/funding/history", 502)  # the exchange in trouble: the latest known rate, no error
    assert rates.rate(PERP, settle + 16 * H) == float(server.funding_rate(settle + 8 * H)) and rates.fetches == fetched
    assert rates.rate(PERP, settle + 16 * H) == float(server.funding_rate(settle + 16 * H))  # back: fetched


@pytest.mark.filterwarnings("ignore:The inplace keyword")  # inside yfinance's pandas calls
def test_stock_bars_through_yfinance_recorded_responses(monkeypatch, tmp_path):
    """yfinance's own parsing of constructed Yahoo chart responses (the seam of tests/test_yahoo.py):
    daily bars, closed once their day is over, weekends not counted as missing."""
    from yfinance import data as yf_data

    from engine.feeds.yahoo import YahooSource
    from engine.timeutil import MS_PER_DAY
    from tests.test_yahoo import FakeYahoo

    fake = FakeYahoo()
    monkeypatch.setattr(yf_data.YfData, "get", lambda self, *a, **k: fake.get(self, *a, **k))
    monkeypatch.setattr(yf_data.YfData, "cache_get", lambda self, *a, **k: fake.get(self, *a, **k))
    yahoo = YahooSource(state_dir=tmp_path / "_yf", policy=RetryPolicy(retries=0))
    friday = parse_instant("2024-01-05")
    bars = ClosedBars(yahoo, "AAPL", MS_PER_DAY, settle_ms=3000, last_open=friday - 4 * MS_PER_DAY)  # after Monday
    got = bars.poll(parse_instant("2024-01-09T12:00"))  # Tuesday midday: Tuesday's bar is still forming
    assert [b.ts_open for b in got.bars] == [friday - 3 * MS_PER_DAY, friday - 2 * MS_PER_DAY, friday - MS_PER_DAY,
                                             friday, friday + 3 * MS_PER_DAY]  # Tue..Fri, then Monday the 8th
    assert got.missing == 0 and fake.requests
    assert bars.poll(parse_instant("2024-01-09T23:59")).bars == []
    assert [b.ts_open for b in bars.poll(parse_instant("2024-01-10T00:01")).bars] == [friday + 4 * MS_PER_DAY]


def test_live_headlines_are_deduplicated_and_never_stamped_in_the_future():
    from engine.daemon.feeds import LiveNews
    from engine.domain import News

    class Hub:
        def __init__(self):
            self.rounds = [[News(T - 60_000, "BTC rallies", PERP, "rss"), News(T + 3_600_000, "from the future", PERP)],
                           [News(T - 60_000, "BTC rallies", PERP, "rss"), News(T + 1000, "ETF approved", PERP)]]

        def poll(self):
            return self.rounds.pop(0)

    news = LiveNews(Hub())
    first = news.poll(T)
    assert [(n.ts_event, n.headline) for n in first] == [(T - 60_000, "BTC rallies"), (T, "from the future")]
    assert [n.headline for n in news.poll(T + 2000)] == ["ETF approved"]  # the repeat is dropped


def test_apscheduler_runs_the_poll_job_and_stops_cleanly(server, tmp_path):
    import threading

    from engine.daemon import commands, specs
    from engine.daemon.runner import Daemon
    from engine.daemon.schedule import run_scheduled

    config = live_config(tmp_path, server.url, "paper.poll_s=0.2")

    class Args:
        warmup = None

    daemon = Daemon(specs.live_bars_spec(Args, config, say=print))
    daemon.open()
    calls: list[float] = []
    tick = daemon.tick
    daemon.tick = lambda now=None: (calls.append(time.monotonic()), tick(now))[1]
    stop = threading.Event()
    said: list[str] = []
    runner = threading.Thread(target=run_scheduled, args=(daemon, stop), kwargs={"say": said.append})
    runner.start()
    try:
        deadline = time.monotonic() + 20
        ticks = 0
        while time.monotonic() < deadline and ticks < 3:
            ticks = len(calls)
            time.sleep(0.05)
        assert ticks >= 3, "the poll job runs the step every 0.2 s"
    finally:
        stop.set()
        runner.join(timeout=30)
    assert not runner.is_alive() and any("scheduled: bar job" in line for line in said)
    status = commands.status_of(daemon.store, commands._find(daemon.store, None), config)
    assert status["state"] == "running" and status["heartbeat_age_s"] < 5 and not status["stale"]
    daemon.close()
