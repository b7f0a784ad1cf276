"""Cached market data from remote sources (Yahoo Finance, Bybit): fetch only what the cache lacks.

``ensure_bars`` and ``ensure_funding`` read the cache, work out which parts of the requested range the
source has never answered for, fetch those (window by window, with a progress bar on long fetches),
merge, check and store them, and return the range. A range the cache answers needs no network at
all. When the source cannot be reached, what was fetched is kept and a ``MissingDataError`` says at
once what is missing and how to supply it (fetch it elsewhere, or pass a CSV). ``remote_market`` is
what a backtest with ``data.source = "bybit"`` or ``"yfinance"`` calls.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pandas as pd

from engine.costs import FundingSeries
from engine.domain import ContractType, Instrument
from engine.errors import ConfigError, DataError, TemporaryError
from engine.feeds.cache import (
    CacheKey,
    MarketCache,
    describe_ranges,
    merge_ranges,
    missing_ranges,
)
from engine.feeds.quality import QualityReport, check_bars, dedupe_rows
from engine.feeds.retry import RetryPolicy, SourceUnreachable
from engine.series import BarSeries
from engine.timeutil import MS_PER_DAY, format_timeframe, iso, parse_instant, parse_timeframe

REMOTE_SOURCES = ("yfinance", "bybit")
_HOSTS = {"bybit": "api.bybit.com", "yfinance": "query2.finance.yahoo.com"}
COMMIT_EVERY = 200  # windows fetched between two writes of the cache during a long fetch
CSV_HINT = ("or pass the bars as a CSV file instead: `--data PATH.csv` (columns timestamp,open,high,low,close,volume; "
            "times are bar opens in UTC, epoch ms or ISO)")


class MissingDataError(DataError):
    """The cache lacks data that the source cannot be asked for now (offline)."""


class Source(Protocol):
    name: str
    calendar: str
    host: str

    def windows(self, symbol: str, timeframe_ms: int, start: int, end: int) -> list[tuple[int, int]]: ...

    def fetch_bars(self, symbol: str, timeframe_ms: int, start: int, end: int) -> pd.DataFrame: ...


@dataclass
class FetchReport:
    key: CacheKey
    start: int
    end: int  # the end actually served (a future end is cut to the last complete bar)
    rows: int = 0  # rows in the range, after the fetch
    fetched: list[tuple[int, int]] = field(default_factory=list)  # ranges asked of the source
    new_rows: int = 0
    requests: int = 0
    retries: dict[str, int] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()  # rows the validation refused
    duplicates: int = 0  # fetched rows identical to one already held (dropped)
    conflicts: int = 0  # fetched rows whose open time was held with other values (the newest kept)
    quality: QualityReport | None = None
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        origin = ("from the cache" if not self.fetched else
                  f"fetched {describe_ranges(self.fetched, 2)}: {self.new_rows} new rows in {self.requests} requests"
                  + (f", retries {', '.join(f'{k} x{v}' for k, v in sorted(self.retries.items()))}" if self.retries else ""))
        return f"{self.key.describe()} {iso(self.start)} -> {iso(self.end)}: {self.rows} rows, {origin}"


def make_source(name: str, *, adjusted: bool = False, timeout_s: float = 10.0, retries: int = 5,
                cache: MarketCache | None = None, api_url: str = "") -> Any:
    """The production source object for ``name`` (imports ccxt / yfinance only now); ``api_url``
    points Bybit's client at another server (a fake Bybit on 127.0.0.1, to rehearse offline).
    yfinance's cookies and session stay out of ``cache`` (``yahoo.user_state_dir``): the market cache
    holds market data only, and may be copied to another machine."""
    policy = RetryPolicy(retries=retries)
    if name == "bybit":
        from engine.feeds.bybit import BybitSource, make_exchange

        exchange = make_exchange(timeout_s=timeout_s, api_url=api_url) if api_url else None
        return BybitSource(exchange, policy=policy, timeout_s=timeout_s)
    if name == "yfinance":
        from engine.feeds.yahoo import YahooSource, user_state_dir

        return YahooSource(adjusted=adjusted, timeout_s=timeout_s, policy=policy, state_dir=user_state_dir())
    raise ConfigError(f"unknown data source {name!r}: expected one of {', '.join(REMOTE_SOURCES)}")


def bars_key(source: str, symbol: str, timeframe_ms: int, adjusted: bool = False) -> CacheKey:
    variant = ("adjusted" if adjusted else "raw") if source == "yfinance" else ""
    return CacheKey(source, symbol, "bars", format_timeframe(timeframe_ms), variant)


def last_complete_open(timeframe_ms: int, now_ms: int | None = None) -> int:
    """Bars opening before this instant have closed: the open of the bar still forming now."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return now // timeframe_ms * timeframe_ms


def ensure_bars(cache: MarketCache, source_name: str, symbol: str, timeframe_ms: int, start: int, end: int, *,
                source: Any = None, make: Callable[[], Any] | None = None, adjusted: bool = False,
                progress: bool = False, now_ms: int | None = None) -> tuple[BarSeries, FetchReport]:
    """Bars of ``symbol`` opening in ``[start, end)``, from the cache, fetching only the missing parts.

    ``source`` (or ``make()``, called only when something must be fetched) is the source object.
    """
    key = bars_key(source_name, symbol, timeframe_ms, adjusted)
    if timeframe_ms <= MS_PER_DAY:
        start -= start % timeframe_ms  # bar boundaries (UTC)
    end = min(end, last_complete_open(timeframe_ms, now_ms))
    if end <= start:
        raise DataError(f"no complete {format_timeframe(timeframe_ms)} bar of {symbol} opens between {iso(start)} and "
                        f"the requested end yet")
    holder = _SourceHolder(source, make)
    table, report = _ensure(cache, key, start, end, holder, progress,
                            windows=lambda s, a, b: s.windows(symbol, timeframe_ms, a, b),
                            fetch=lambda s, a, b: s.fetch_bars(symbol, timeframe_ms, a, b),
                            hint=CSV_HINT)
    frame = table[(table["timestamp"] >= start) & (table["timestamp"] < end)] if len(table) else table
    series = BarSeries.from_arrays(symbol, timeframe_ms, frame["timestamp"], frame["open"], frame["high"], frame["low"],
                                   frame["close"], frame["volume"], source=str(key.folder(cache.root)))
    report.rows = len(series)
    calendar = getattr(holder.source, "calendar", None) or ("exchange" if source_name == "yfinance" else "24/7")
    report.quality = check_bars(series, calendar, duplicates=report.duplicates, conflicts=report.conflicts) \
        if len(series) else None
    if source_name == "bybit" and report.fetched and hasattr(holder.source, "instruments"):
        cache_instruments(cache, holder.source)  # the markets were loaded for the fetch anyway
    return series, report


def ensure_funding(cache: MarketCache, symbol: str, start: int, end: int, *, source: Any = None,
                   make: Callable[[], Any] | None = None, progress: bool = False,
                   now_ms: int | None = None) -> tuple[pd.DataFrame, FetchReport]:
    """Bybit funding rates of a linear perpetual settled in ``[start, end)`` (timestamp, fundingRate)."""
    key = CacheKey("bybit", symbol, "funding")
    end = min(end, int(time.time() * 1000) if now_ms is None else now_ms)
    holder = _SourceHolder(source, make)
    table, report = _ensure(cache, key, start, end, holder, progress,
                            windows=lambda s, a, b: s.funding_windows(symbol, a, b),
                            fetch=lambda s, a, b: s.fetch_funding(symbol, a, b),
                            hint="or give the rates as a CSV with costs.funding_file (columns timestamp,fundingRate), "
                                 "or a constant rate with costs.funding_rate")
    frame = table[(table["timestamp"] >= start) & (table["timestamp"] < end)] if len(table) else table
    report.rows = len(frame)
    return frame.reset_index(drop=True), report


def cache_instruments(cache: MarketCache, source: Any) -> dict[str, Any]:
    """Store the instrument details of every Bybit spot / linear market (the markets are loaded anyway
    for any fetch); returns them."""
    records = source.instruments()
    cache.write_json("bybit/instruments.json", {"fetched_at": iso(int(time.time() * 1000)), "markets": records})
    return records


def cached_instrument(cache: MarketCache, symbol: str) -> dict[str, Any] | None:
    document = cache.read_json("bybit/instruments.json")
    markets = (document or {}).get("markets") or {}
    record = markets.get(symbol)
    return dict(record, fetched_at=document.get("fetched_at")) if record and document else None


# ---------------------------------------------------------------- the fetch loop
@dataclass
class _SourceHolder:
    source: Any
    make: Callable[[], Any] | None

    def get(self) -> Any:
        if self.source is None:
            if self.make is None:
                raise TemporaryError("no data source configured")
            self.source = self.make()
        return self.source


def _ensure(cache: MarketCache, key: CacheKey, start: int, end: int, holder: _SourceHolder, progress: bool, *,
            windows: Callable[[Any, int, int], list[tuple[int, int]]],
            fetch: Callable[[Any, int, int], pd.DataFrame], hint: str) -> tuple[pd.DataFrame, FetchReport]:
    cached = cache.read(key)
    report = FetchReport(key, start, end)
    report.notes.extend(cache.notes)
    cache.notes.clear()
    covered = cached.covered if cached else ()
    frame = cached.frame if cached else pd.DataFrame(columns=_columns(key))
    gaps = missing_ranges(covered, start, end)
    if not gaps:
        return frame, report
    pending: list[pd.DataFrame] = []
    done: list[tuple[int, int]] = []

    def commit() -> None:
        nonlocal frame, covered
        if not done:
            return
        merged, identical, conflicts = dedupe_rows(pd.concat([frame, *pending], ignore_index=True)
                                                   if pending else frame)
        report.duplicates += identical
        report.conflicts += conflicts
        table, problems = cache.write(key, merged, [*covered, *done])
        report.dropped += problems
        frame, covered = table.frame, table.covered
        pending.clear()
        done.clear()

    bar = None
    calls_before: tuple[int, dict[str, int]] = (0, {})
    try:
        source = holder.get()
        calls = getattr(source, "calls", None)
        if calls is not None:
            calls_before = (calls.calls, dict(calls.retries))
        plan = [w for a, b in gaps for w in windows(source, a, b)]
        if progress and len(plan) > 1:
            from tqdm import tqdm

            bar = tqdm(total=len(plan), desc=f"{key.source} {key.symbol} {key.timeframe or key.kind}", unit="page",
                       leave=False)
        before = len(frame)
        for i, (a, b) in enumerate(plan):
            page = fetch(source, a, b)
            if len(page):
                pending.append(page.astype({"timestamp": "int64"}))
            done.append((a, b))
            report.fetched = list(merge_ranges([*report.fetched, (a, b)]))
            if bar is not None:
                bar.update(1)
            if (i + 1) % COMMIT_EVERY == 0:
                commit()
        commit()
        report.new_rows = len(frame) - before
    except SourceUnreachable as exc:
        commit()  # keep whatever arrived before the source went away
        still = missing_ranges(covered, start, end)
        raise MissingDataError(_missing_message(cache, key, still, covered, str(exc), hint)) from None
    except BaseException:  # a failed request, an interrupted run: keep the windows that arrived
        with contextlib.suppress(Exception):
            commit()
        raise
    finally:
        if bar is not None:
            bar.close()
        calls = getattr(holder.source, "calls", None)
        if calls is not None:  # what this fetch cost (the source object may serve several)
            report.requests = calls.calls - calls_before[0]
            report.retries = {k: v - calls_before[1].get(k, 0) for k, v in calls.retries.items()
                              if v > calls_before[1].get(k, 0)}
    return frame, report


def _columns(key: CacheKey) -> list[str]:
    from engine.feeds.cache import KINDS

    return list(KINDS[key.kind])


def _missing_message(cache: MarketCache, key: CacheKey, missing: list[tuple[int, int]],
                     covered: tuple[tuple[int, int], ...], reason: str, hint: str) -> str:
    has = f"has {describe_ranges(covered)}" if covered else "has none of it"
    first, last = missing[0][0], missing[-1][1]
    command = (f"python -m engine data fetch --source {key.source} --symbol '{key.symbol}'"
               + (f" --timeframe {key.timeframe}" if key.timeframe else "")
               + (" --adjusted" if key.variant == "adjusted" else "")
               + f" --start {_day(first)} --end {_day(last, up=True)}")
    return (f"{reason.rstrip('.')}. The cache ({cache.root}) lacks the {key.describe()} for {describe_ranges(missing)} "
            f"(it {has}). To fix: run `{command}` on a machine that reaches {_HOSTS.get(key.source, key.source)} "
            f"and copy its {cache.root} folder here, {hint}")


def _day(ms: int, up: bool = False) -> str:
    if up and ms % MS_PER_DAY:
        ms += MS_PER_DAY - ms % MS_PER_DAY
    return pd.Timestamp(ms, unit="ms").strftime("%Y-%m-%d")


# ---------------------------------------------------------------- backtests
@dataclass
class RemoteMarket:
    series: BarSeries
    label: str
    instrument: Instrument | None  # None: build it from config.toml's [instrument]
    funding: FundingSeries | None  # None: use the [costs] funding settings


def remote_market(config: Any, notes: list[str], *, source: Any = None, now_ms: int | None = None,
                  progress: bool = False) -> RemoteMarket | None:
    """The bars (and Bybit instrument and funding) of a backtest whose ``data.source`` is remote;
    ``None`` for the file and sample sources (after checking the source agrees with ``data.bars``)."""
    data, run = config.data, config.run
    if data.source in ("auto", "csv", "sample"):
        if data.source == "csv" and not data.bars:
            raise ConfigError("data.source = 'csv' needs a bar file: pass --data PATH (or set data.bars)")
        if data.source == "sample" and data.bars:
            raise ConfigError(f"data.source = 'sample' but data.bars = {data.bars!r}: drop one of them")
        return None
    name = data.source
    if data.bars:
        raise ConfigError(f"data.bars = {data.bars!r} and data.source = {name!r}: choose one (--data reads a CSV; "
                          f"--source {name} fetches or reads the cache)")
    missing = [flag for flag, value in (("--symbol", data.symbol), ("--timeframe", data.timeframe),
                                        ("--start", run.start), ("--end", run.end)) if not value]
    if missing:
        example = "BTC/USDT:USDT --timeframe 1h" if name == "bybit" else "AAPL --timeframe 1d"
        raise ConfigError(f"data.source = {name!r} needs {', '.join(missing)} (e.g. --symbol {example} "
                          "--start 2024-01-01 --end 2024-03-01)")
    try:
        tf = parse_timeframe(data.timeframe)
        start, end = parse_instant(run.start), parse_instant(run.end)
    except ValueError as exc:
        raise ConfigError(f"data.timeframe / run.start / run.end: {exc}") from None
    if end <= start:
        raise ConfigError(f"run.end ({run.end}) must be after run.start ({run.start})")
    cache = MarketCache(data.cache_dir)
    holder = _SourceHolder(source, lambda: make_source(name, adjusted=data.adjusted, timeout_s=data.timeout_s,
                                                        retries=data.retries, cache=cache, api_url=data.api_url))
    series, report = ensure_bars(cache, name, data.symbol, tf, start, end, make=holder.get, adjusted=data.adjusted,
                                 progress=progress, now_ms=now_ms)
    notes.extend(report.notes)
    notes.append(f"data: {report.line()} (cache {cache.root})")
    if report.dropped:
        notes.append(f"data: {len(report.dropped)} fetched rows failed the bar checks and were dropped "
                     f"(first: {report.dropped[0]})")
    instrument = funding = None
    if name == "bybit":
        instrument = _bybit_instrument(config, cache, data.symbol, notes)
        contract = instrument.contract if instrument else ContractType(config.instrument.contract)
        if contract is ContractType.LINEAR_PERP:
            funding = _bybit_funding(config, cache, data.symbol, start, end, holder, progress, now_ms, notes)
    else:
        notes.append("instrument: from config.toml [instrument] (Yahoo Finance has no instrument details)")
    return RemoteMarket(series, f"{name}:{data.symbol}:{data.timeframe}", instrument, funding)


def _bybit_instrument(config: Any, cache: MarketCache, symbol: str, notes: list[str]) -> Instrument | None:
    record = cached_instrument(cache, symbol)
    if record is None:
        notes.append(f"instrument: from config.toml [instrument] (no cached Bybit market for {symbol}; "
                     f"`python -m engine data fetch --source bybit --symbol '{symbol}' ...` caches it)")
        if ":" in symbol and config.instrument.contract == "spot":
            notes.append(f"instrument: WARNING {symbol} is a perpetual but [instrument] contract = 'spot'; "
                         "set --set instrument.contract=linear_perp")
        return None
    contract = ContractType(record["contract"])
    maker, taker = config.costs.fee_rates(contract)
    instrument = Instrument(
        symbol=symbol, contract=contract, tick_size=float(record["tick_size"]), lot_step=float(record["lot_step"]),
        min_quantity=float(record["min_quantity"] or 0), min_notional=float(record["min_notional"] or 0),
        maker_fee=maker, taker_fee=taker,
        max_leverage=float(record["max_leverage"]) if contract is ContractType.LINEAR_PERP else 1.0,
        quote_currency=record.get("quote") or "USDT",
    )
    fees = "Bybit VIP0" if config.costs.vip0 else "[costs] in config"
    notes.append(f"instrument: {symbol} from the cached Bybit market (fetched {record.get('fetched_at')}): "
                 f"{contract.value}, tick {instrument.tick_size:g}, lot step {instrument.lot_step:g}, min qty "
                 f"{instrument.min_quantity:g}, min notional {instrument.min_notional:g}, max leverage "
                 f"{instrument.max_leverage:g}; fees {fees} maker {maker:.4%} / taker {taker:.4%}")
    return instrument


def _bybit_funding(config: Any, cache: MarketCache, symbol: str, start: int, end: int, holder: _SourceHolder,
                   progress: bool, now_ms: int | None, notes: list[str]) -> FundingSeries | None:
    cc = config.costs
    if cc.funding_file:
        notes.append(f"funding: from {cc.funding_file} (costs.funding_file)")
        return None
    try:
        frame, report = ensure_funding(cache, symbol, start, end, make=holder.get, progress=progress, now_ms=now_ms)
    except MissingDataError as exc:
        notes.append(f"funding: WARNING no Bybit funding history ({exc}); using the constant "
                     f"costs.funding_rate = {cc.funding_rate:g} per settlement instead")
        return None
    notes.extend(report.notes)
    notes.append(f"funding: {report.line()}")
    return FundingSeries(frame["timestamp"].tolist(), frame["fundingRate"].tolist(), default=cc.funding_rate)


def bar_quality(series: BarSeries, config: Any, notes: list[str]) -> BarSeries:
    """Report the gaps, duplicates, zero-volume stretches and suspicious prices of a backtest's bars
    and apply ``data.quality_policy`` and ``data.gap_policy``; the synthetic sample market is left
    alone (it has none by construction)."""
    from pathlib import Path

    from engine.feeds.quality import apply_gap_policy, apply_quality_policy

    data = config.data
    if data.source == "sample" or (data.source == "auto" and not data.bars):
        return series
    calendar = {"bybit": "24/7", "yfinance": "exchange"}.get(data.source)  # files: guessed from weekends
    report = check_bars(series, calendar)
    notes.append(f"data: {report.summary()}")
    local = data.source in ("auto", "csv")
    source = Path(data.bars).name if local else f"{series.symbol} {series.timeframe} ({data.source})"
    warning = apply_quality_policy(data.quality_policy, report, source)
    if warning:
        notes.append(f"data: {warning}")
    series, note = apply_gap_policy(series, data.gap_policy, report)
    if note:
        notes.append(f"data: {note}")
    return series
