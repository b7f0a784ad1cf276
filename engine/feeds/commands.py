"""The ``data`` command: ``python -m engine data fetch ...`` fills the local cache, ``data show`` lists it."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

FETCH_EPILOG = """examples:
  python -m engine data fetch --source bybit --symbol BTC/USDT:USDT --timeframe 1h --start 2024-01-01 --end 2024-03-01
  python -m engine data fetch --source bybit --symbol BTC/USDT --symbol ETH/USDT --timeframe 4h --start 2023-01-01
  python -m engine data fetch --source yfinance --symbol AAPL --symbol SPY --timeframe 1d --start 2015-01-01 --adjusted

Only the parts of the range the cache has never fetched are requested, so running the same command
again is instant and works offline. A linear perpetual (BTC/USDT:USDT) also gets its funding-rate
history, and every Bybit fetch caches the instrument details (tick, lot step, minimums). Without
network, a range the cache cannot answer fails at once, saying what is missing and how to supply it.
Times are UTC; bars are stamped at their open; a future --end stops at the last complete bar."""

SHOW_EPILOG = """examples:
  python -m engine data show
  python -m engine data show --source bybit --json

Columns: the table (bars-1h, bars-1d-adjusted, funding), the ranges fetched, rows, and the quality of
the bars: gaps (missing bars under the market's calendar: 24/7 for crypto, weekdays for stocks),
stretches of 3+ zero-volume bars, outlier bar returns / spikes out and back, and stale stretches of 5+
bars with identical OHLC (each suspicious price is listed below the table)."""


def add_data_parser(sub: Any) -> None:
    data = sub.add_parser(
        "data", help="fetch market data into the local cache (yfinance, Bybit) and list what is cached",
        description="Fetch bars (and Bybit funding rates and instrument details) into the local cache, "
        "or list what it holds. Backtests read it with --source yfinance|bybit.",
    )
    commands = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    fetch = commands.add_parser(
        "fetch", help="download missing bars into the cache (with a progress bar)",
        description="Download the bars of each --symbol between --start and --end into the cache, "
        "fetching only what it lacks.", epilog=FETCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fetch.add_argument("--source", required=True, choices=["yfinance", "bybit"], help="where to fetch from")
    fetch.add_argument("--symbol", required=True, action="append", metavar="SYMBOL",
                       help="repeatable; Bybit: BTC/USDT (spot) or BTC/USDT:USDT (linear perpetual); Yahoo: AAPL, SPY, ^GSPC")
    fetch.add_argument("--timeframe", required=True,
                       help="bar length: Bybit 1m 3m 5m 15m 30m 1h 2h 4h 6h 12h 1d 1w; Yahoo 1m 2m 5m 15m 30m 1h 90m 1d 1w")
    fetch.add_argument("--start", required=True, help="first bar open time, ISO (UTC), e.g. 2024-01-01")
    fetch.add_argument("--end", help="bars opening before this instant, ISO (UTC); default: now (last complete bar)")
    fetch.add_argument("--adjusted", action="store_true", help="Yahoo: split- and dividend-adjusted prices (cached apart)")
    fetch.add_argument("--no-funding", action="store_true", help="Bybit perpetuals: skip the funding-rate history")
    fetch.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    fetch.add_argument("--bybit-url", metavar="URL",
                       help="Bybit API base URL instead of https://api.bybit.com (a proxy, or a local fake for "
                       "tests); what it serves lands in the same cache, so give testnet data its own --cache-dir")
    fetch.add_argument("--json", action="store_true", help="print one JSON object per symbol")
    _common(fetch)

    show = commands.add_parser(
        "show", help="list the cache: symbol, timeframe, range, rows, gaps",
        description="List every cached table with its ranges, rows and data quality.", epilog=SHOW_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument("--source", choices=["yfinance", "bybit"], help="only this source")
    show.add_argument("--symbol", help="only this symbol")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _common(show)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", help="the cache folder (default: data.cache_dir in config.toml, .cache/market)")
    parser.add_argument("--config", type=Path, help="TOML config file (default: ./config.toml if present)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set data.timeout_s=30")


def main(args: argparse.Namespace, load: Callable[[argparse.Namespace, Sequence[str]], Any]) -> int:
    flags = [f"data.cache_dir={json.dumps(args.cache_dir)}"] if args.cache_dir else []
    config = load(args, flags)
    if args.data_command == "fetch":
        return fetch(args, config)
    return show(args, config)


def fetch(args: argparse.Namespace, config: Any, *, source: Any = None, now_ms: int | None = None) -> int:
    """``data fetch``; ``source`` replaces the real one in tests."""
    from engine.errors import ConfigError
    from engine.feeds.cache import MarketCache
    from engine.feeds.market_data import ensure_bars, ensure_funding, make_source
    from engine.timeutil import parse_instant, parse_timeframe

    data = config.data
    try:
        tf = parse_timeframe(args.timeframe)
        start = parse_instant(args.start)
        end = parse_instant(args.end) if args.end else 2**62
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if end <= start:
        raise ConfigError(f"--end ({args.end}) must be after --start ({args.start})")
    if args.adjusted and args.source != "yfinance":
        raise ConfigError("--adjusted applies to Yahoo Finance bars only")
    if args.bybit_url and args.source != "bybit":
        raise ConfigError("--bybit-url applies to --source bybit only")
    cache = MarketCache(data.cache_dir)
    progress = not args.no_progress and not args.json and sys.stderr.isatty()
    shared: dict[str, Any] = {"source": source}

    def make() -> Any:
        if shared["source"] is None and args.bybit_url:
            from engine.feeds.bybit import BybitSource, make_exchange
            from engine.feeds.retry import RetryPolicy

            shared["source"] = BybitSource(make_exchange(timeout_s=data.timeout_s, api_url=args.bybit_url),
                                           policy=RetryPolicy(retries=data.retries))
        if shared["source"] is None:
            shared["source"] = make_source(args.source, adjusted=args.adjusted, timeout_s=data.timeout_s,
                                           retries=data.retries, cache=cache)
        return shared["source"]

    for symbol in args.symbol:
        series, report = ensure_bars(cache, args.source, symbol, tf, start, end, make=make, adjusted=args.adjusted,
                                     progress=progress, now_ms=now_ms)
        out: dict[str, Any] = {"symbol": symbol, "bars": _report_dict(report)}
        lines = [*report.notes, report.line()]
        if report.dropped:
            lines.append(f"  {len(report.dropped)} rows failed the bar checks and were dropped; first: {report.dropped[0]}")
        if report.quality is not None:
            lines.append(f"  {report.quality.summary()}")
        if args.source == "bybit" and ":" in symbol and not args.no_funding:
            _, funding = ensure_funding(cache, symbol, start, min(end, report.end), make=make, progress=progress,
                                        now_ms=now_ms)
            out["funding"] = _report_dict(funding)
            lines += [*funding.notes, funding.line()]
        if args.source == "bybit":
            from engine.feeds.market_data import cached_instrument

            record = cached_instrument(cache, symbol)
            out["instrument"] = record
            if record:
                lines.append(f"  instrument: {record['contract']}, tick {record['tick_size']}, lot step "
                             f"{record['lot_step']}, min qty {record['min_quantity']}, min notional "
                             f"{record['min_notional']} (cached {record.get('fetched_at')})")
        if args.json:
            print(json.dumps(out, default=str))
        else:
            print("\n".join(lines))
    if not args.json:
        print(f"cache: {cache.root} (list it with `python -m engine data show`, backtest with --source {args.source}; "
              "times are UTC, bars stamped at their open)")
    return 0


def show(args: argparse.Namespace, config: Any) -> int:
    from engine.feeds.cache import CachedTable, MarketCache, describe_ranges
    from engine.feeds.quality import check_bars
    from engine.timeutil import iso

    cache = MarketCache(config.data.cache_dir)
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for item in cache.tables():
        if not isinstance(item, CachedTable):
            problems.append(f"{item[0]}: {item[1]}")
            continue
        key = item.key
        if (args.source and key.source != args.source) or (args.symbol and key.symbol != args.symbol):
            continue
        frame = item.frame
        row: dict[str, Any] = {
            "source": key.source, "symbol": key.symbol, "table": key.table, "timeframe": key.timeframe or None,
            "variant": key.variant or None, "ranges": describe_ranges(item.covered),
            "covered": [[iso(a), iso(b)] for a, b in item.covered], "rows": len(frame),
            "first": iso(int(frame["timestamp"].iloc[0])) if len(frame) else None,
            "last": iso(int(frame["timestamp"].iloc[-1])) if len(frame) else None,
            "bytes": item.path.stat().st_size if item.path else 0, "written_at": item.meta.get("written_at"),
        }
        if key.kind == "bars" and len(frame):
            quality = check_bars(item.series(), "exchange" if key.source == "yfinance" else "24/7")
            row.update(gaps=len(quality.gaps), missing_bars=quality.missing_bars,
                       zero_volume_stretches=len(quality.zero_volume), outliers=len(quality.outliers),
                       spikes=len(quality.spikes), stale_stretches=len(quality.stale), calendar=quality.calendar,
                       bar_time=quality.bar_time, suspect=quality.suspect_parts())
        rows.append(row)
    instruments = cache.read_json("bybit/instruments.json")
    problems += cache.notes
    if args.json:
        print(json.dumps({"cache": str(cache.root), "tables": rows, "problems": problems,
                          "instruments": {"bybit": len((instruments or {}).get("markets") or {}),
                                          "fetched_at": (instruments or {}).get("fetched_at")}}))
        return 0
    if not rows and not problems:
        print(f"the cache at {cache.root} is empty; fill it with `python -m engine data fetch --help`")
        return 0
    print(_table(rows))
    for row in rows:
        for part in row.get("suspect", ()):
            print(f"suspicious prices in {row['source']} {row['symbol']} {row['table']}: {part}")
    if instruments:
        print(f"\nbybit instrument details: {len(instruments.get('markets') or {})} markets (fetched "
              f"{instruments.get('fetched_at')})")
    for problem in problems:
        print(f"problem: {problem}")
    print(f"\ncache: {cache.root}; times UTC, bars stamped at their open")
    return 0


def _report_dict(report: Any) -> dict[str, Any]:
    from engine.timeutil import iso

    return {
        "table": report.key.table, "start": iso(report.start), "end": iso(report.end), "rows": report.rows,
        "fetched": [[iso(a), iso(b)] for a, b in report.fetched], "new_rows": report.new_rows,
        "requests": report.requests, "retries": report.retries, "dropped": list(report.dropped),
        "duplicates": report.duplicates, "conflicts": report.conflicts,
        "quality": report.quality.as_dict() if report.quality is not None else None, "notes": report.notes,
    }


def _table(rows: list[dict[str, Any]]) -> str:
    header = ("source", "symbol", "table", "range", "rows", "gaps (missing bars)", "zero-vol", "outliers/spikes",
              "stale")
    body = []
    for r in rows:
        gaps = f"{r['gaps']} ({r['missing_bars']})" if "gaps" in r else "-"
        odd = f"{r['outliers']}/{r['spikes']}" if "outliers" in r else "-"
        body.append((r["source"], r["symbol"], r["table"], r["ranges"], str(r["rows"]), gaps,
                     str(r.get("zero_volume_stretches", "-")), odd, str(r.get("stale_stretches", "-"))))
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in (header, *body)]
    return "\n".join(lines)
