"""The daemon's spec, built from the command line: what it runs, on which bars, on which clock.
Shared by ``paper start`` and ``live start`` (``engine.daemon.commands``, ``engine.daemon.live_commands``)."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, TemporaryError

log = logging.getLogger("engine.daemon")


def daemon_spec(args: argparse.Namespace, config: Any, *, say: Callable[[str], None], mode: str = "paper"
                ) -> tuple[Any, Any]:
    """What ``start`` runs: a replay of ``--replay FILE`` on a simulated clock (and its time source), or
    live bars (time source None)."""
    from engine.clock import WallClock
    from engine.daemon.feeds import ReplayNews, ReplaySource
    from engine.daemon.runner import DaemonSpec
    from engine.daemon.schedule import ManualTime
    from engine.session import prepare_backtest

    if args.replay:
        plan = prepare_backtest(config, say=say, online=True)
        series = plan.series[0]
        warm_n = args.warmup or 0
        if not 0 <= warm_n < len(series):
            raise ConfigError(f"--warmup {warm_n}: the replay holds {len(series)} bars")
        warm = series.between(None, int(series.ts_open[warm_n])) if warm_n else series.between(None, int(series.ts_open[0]))
        live_from = int(series.ts_open[warm_n])
        time_source = ManualTime(live_from)
        clock = WallClock(source=time_source)
        source = ReplaySource(series, clock.now)
        for note in plan.notes:
            say(note)
        return DaemonSpec(mode=mode, config=config, plan=plan, source=source, clock=clock,
                          data_label=f"replay:{Path(args.replay).resolve()}", warmup=warm, live_from_ms=live_from,
                          news=ReplayNews(plan.news), replay=True,
                          set_time=lambda ms: setattr(time_source, "ms", ms)), time_source
    return live_bars_spec(args, config, say=say, mode=mode), None


def live_bars_spec(args: argparse.Namespace, config: Any, *, say: Callable[[str], None], mode: str = "paper") -> Any:
    """A daemon on live closed bars from Bybit or yfinance, warmed up on the bars before now."""
    import dataclasses

    from engine.clock import WallClock
    from engine.daemon.feeds import LiveFundingRates, LiveNews
    from engine.daemon.runner import DaemonSpec
    from engine.feeds.market_data import make_source
    from engine.session import prepare_backtest
    from engine.timeutil import iso, parse_timeframe

    data = config.data
    if data.source not in ("bybit", "yfinance"):
        raise ConfigError(f"{mode} start needs live bars: --source bybit or yfinance with --symbol and --timeframe "
                          "(or --replay FILE to rehearse offline)")
    if not data.symbol or not data.timeframe:
        raise ConfigError(f"--source {data.source} needs --symbol and --timeframe (e.g. --symbol BTC/USDT:USDT "
                          "--timeframe 1h)")
    tf = parse_timeframe(data.timeframe)
    warm_n = args.warmup if args.warmup is not None else config.paper.warmup_bars
    wait = 1.0
    while True:  # an exchange that is down at start: wait with back-off, never trade on stale data
        now = int(time.time() * 1000)
        start = (now // tf - max(warm_n, 2)) * tf
        run = dataclasses.replace(config.run, start=iso(start), end=iso(now))
        try:
            plan = prepare_backtest(dataclasses.replace(config, run=run), say=say, online=True)
            break
        except TemporaryError as exc:
            say(f"{data.source} unreachable ({exc}); retrying in {wait:.0f} s")
            time.sleep(wait)
            wait = min(wait * 2, config.paper.retry_max_s)
    warm = plan.series[0]
    source = make_source(data.source, adjusted=data.adjusted, timeout_s=data.timeout_s, retries=data.retries,
                         api_url=data.api_url)
    if plan.instruments[warm.symbol].pays_funding and hasattr(source, "fetch_funding"):
        # Funding from the live rate: the history fetched for the warm-up, extended as the exchange publishes.
        rates = LiveFundingRates(source, warm.symbol, plan.costs.funding)
        plan = dataclasses.replace(plan, costs=dataclasses.replace(plan.costs, funding=rates))
    live_from = int(warm.ts_open[-1]) + tf if len(warm) else (now // tf) * tf
    news = LiveNews(news_hub(config, warm.symbol)) if config.paper.news_feeds else None
    for note in plan.notes:
        say(note)
    return DaemonSpec(mode=mode, config=config, plan=plan, source=source, clock=WallClock(),
                      data_label=f"{data.source}", warmup=warm, live_from_ms=live_from, news=news)


def news_hub(config: Any, symbol: str) -> Any:
    """The live headline pollers ``paper.news_feeds`` names."""
    from engine.feeds.live_news import NewsHub, RssPoller, YahooNewsPoller

    pollers: list[Any] = []
    for feed in config.paper.news_feeds:
        if feed.startswith("yahoo:"):
            poller: Any = YahooNewsPoller(feed.split(":", 1)[1])
            poller.symbol = symbol
            pollers.append(poller)
        elif feed.startswith(("http://", "https://")):
            pollers.append(RssPoller(feed, symbol))
        else:
            raise ConfigError(f"paper.news_feeds: {feed!r} is neither 'yahoo:TICKER' nor an http(s) feed URL")
    return NewsHub(pollers, on_error=lambda poller, exc: log.warning("news feed %s: %s", poller.source, exc))
