"""The prices the fake serves and trades on, seen at market time.

Each symbol has *base bars*: the bars it was given (``bars``, any timeframe) or else an hourly
generator (a slow sine around 40,000 with an hourly wiggle, the linear price 12.5 above spot), with
the recorded kline rows of ``ccxt_static_response_bybit_subset.json`` served at their own times.
Everything else derives from them at a market time ``t``:

- the current price is the OPEN of the base bar containing ``t``, so an order sent at bar k's close
  (market time = bar k+1's open) fills at bar k+1's open, as a backtest's next-open fill does;
- klines go up to and including the candle forming at ``t``, which is served as open = high = low =
  close = its open and no volume: it has barely started, and nothing the client sees lies after ``t``;
- funding settles every 8 hours (00:00, 08:00, 16:00 UTC) at the rate ``funding_rate(ts)``, the mark
  being the close of the base bar that ends at the settlement.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.series import BarSeries
from engine.testing.fake_bybit.instruments import LINEAR, SPOT, Instrument
from engine.testing.fake_bybit.wire import BybitError, int_param, num

HOUR = 3_600_000
DAY = 24 * HOUR
FUNDING_INTERVAL = 8 * HOUR
INTERVALS = {"1": 60_000, "3": 180_000, "5": 300_000, "15": 900_000, "30": 1_800_000, "60": HOUR, "120": 2 * HOUR,
             "240": 4 * HOUR, "360": 6 * HOUR, "720": 12 * HOUR, "D": DAY, "W": 7 * DAY}
RECORDED_FILE = "ccxt_static_response_bybit_subset.json"
# Generated prices of symbols other than BTC are BTC's scaled, so that ETH trades near 2,000.
GENERATOR_SCALE = {"ETHUSDT": 0.05}


@dataclass(frozen=True, slots=True)
class Bar:
    ts_open: int
    open: float
    high: float
    low: float
    close: float
    volume: float

    @property
    def turnover(self) -> float:
        return self.volume * self.close


def generated_bar(category: str, ts: int, symbol: str = "BTCUSDT") -> list[str]:
    """The generator's bar opening at ``ts`` as a Bybit kline row (7 strings). Deterministic; one
    hour in 997 has zero volume (a thin market)."""
    scale = GENERATOR_SCALE.get(symbol, 1.0)
    base = 40_000 + 5_000 * math.sin(ts / (50 * HOUR)) + (0 if category == SPOT else 12.5)
    wiggle = 100 * math.sin(ts / HOUR)
    o, c = (base + wiggle) * scale, (base - wiggle / 2) * scale
    h, lo = max(o, c) + 25 * scale, min(o, c) - 25 * scale
    volume = 0.0 if (ts // HOUR) % 997 == 0 else 100 + (ts // HOUR) % 50
    return [str(ts), f"{o:.1f}", f"{h:.1f}", f"{lo:.1f}", f"{c:.1f}", f"{volume:.3f}", f"{volume * c:.4f}"]


def generated_funding_rate(ts: int) -> float:
    """The generator's funding rate for the settlement at ``ts``: 1 bp, +/- 0.5 bp over days."""
    return 0.0001 + 0.00005 * math.sin(ts / DAY)


def recorded_klines(bybit_dir: Path | None) -> dict[tuple[str, str, int], list[str]]:
    """(category, symbol, open ms) -> the recorded kline row; empty without a recording."""
    path = bybit_dir / RECORDED_FILE if bybit_dir is not None else None
    if path is None or not path.is_file():
        return {}
    out = {}
    for case in json.loads(path.read_text())["methods"]["fetchOHLCV"]:
        result = case["httpResponse"]["result"]
        for row in result["list"]:
            out[(result["category"], result["symbol"], int(row[0]))] = row
    return out


def _bar_of(row: list[str]) -> Bar:
    return Bar(int(row[0]), float(row[1]), float(row[2]), float(row[3]), float(row[4]), float(row[5]))


class Market:
    """Base bars by symbol, and what the public endpoints serve from them at a given market time."""

    def __init__(self, *, bars: Mapping[str, BarSeries] | None, recorded: dict[tuple[str, str, int], list[str]],
                 missing: set[int], funding_rate: Callable[[int], float], funding_start: int) -> None:
        self.series = dict(bars or {})
        self.recorded = recorded
        self.missing = missing  # open times the exchange has no bar for (downtime), shared with the fake
        self.funding_rate = funding_rate
        self.funding_start = funding_start

    # -- base bars
    def timeframe(self, symbol: str) -> int:
        series = self.series.get(symbol)
        return series.timeframe_ms if series is not None else HOUR

    def base_bars(self, category: str, symbol: str, start: int, end: int) -> list[Bar]:
        """Base bars opening in ``[start, end)``, oldest first, downtime skipped."""
        series = self.series.get(symbol)
        if series is not None:
            lo, hi = np.searchsorted(series.ts_open, [start, end], side="left")
            return [Bar(int(series.ts_open[i]), float(series.open[i]), float(series.high[i]), float(series.low[i]),
                        float(series.close[i]), float(series.volume[i]))
                    for i in range(int(lo), int(hi)) if int(series.ts_open[i]) not in self.missing]
        first = -(-start // HOUR) * HOUR
        return [self._generated(category, symbol, ts) for ts in range(first, end, HOUR) if ts not in self.missing]

    def _generated(self, category: str, symbol: str, ts: int) -> Bar:
        return _bar_of(self.recorded.get((category, symbol, ts)) or generated_bar(category, ts, symbol))

    def bar_at(self, category: str, symbol: str, t: int) -> Bar | None:
        """The base bar containing ``t`` (open <= t < close), if the exchange has one."""
        tf = self.timeframe(symbol)
        series = self.series.get(symbol)
        if series is None:
            ts = t // HOUR * HOUR
            return None if ts in self.missing else self._generated(category, symbol, ts)
        i = int(np.searchsorted(series.ts_open, t, side="right")) - 1
        if i < 0 or int(series.ts_open[i]) + tf <= t or int(series.ts_open[i]) in self.missing:
            return None
        return self.base_bars(category, symbol, int(series.ts_open[i]), int(series.ts_open[i]) + 1)[0]

    def last_close_before(self, category: str, symbol: str, t: int) -> float | None:
        """The close of the latest base bar that closed at or before ``t``."""
        tf = self.timeframe(symbol)
        series = self.series.get(symbol)
        if series is None:
            for ts in range(t // HOUR * HOUR - HOUR, t // HOUR * HOUR - 1000 * HOUR, -HOUR):
                if ts not in self.missing:
                    return self._generated(category, symbol, ts).close
            return None
        for i in range(int(np.searchsorted(series.ts_open, t - tf, side="right")) - 1, -1, -1):
            if int(series.ts_open[i]) not in self.missing:
                return float(series.close[i])
        return None

    def price(self, category: str, symbol: str, t: int) -> float:
        """The current price at market time ``t``: the open of the bar containing ``t``; in a gap or
        after the last bar, the last close; before the first bar, the first open."""
        bar = self.bar_at(category, symbol, t)
        if bar is not None:
            return bar.open
        close = self.last_close_before(category, symbol, t)
        if close is not None:
            return close
        series = self.series.get(symbol)
        if series is None or not len(series):
            raise BybitError(10016, f"the fake has no price for {symbol} at {t}: every bar before it is missing")
        return float(series.open[0])

    def mark_before(self, symbol: str, t: int) -> float:
        """The mark price funding uses at settlement ``t``: the close of the bar before it."""
        close = self.last_close_before(LINEAR, symbol, t)
        return close if close is not None else self.price(LINEAR, symbol, t)

    # -- /v5/market/kline
    def kline(self, q: Mapping[str, str], now: int) -> dict[str, Any]:
        """Up to ``limit`` candles (newest first) opened at or before ``now``. ``start`` alone pages
        forward from it; otherwise the page ends at ``end`` (default: the forming candle)."""
        if q.get("interval") not in INTERVALS:
            raise BybitError(10001, f"Invalid period: interval {q.get('interval')!r} is not one of {', '.join(INTERVALS)}")
        category, symbol, step = q.get("category", LINEAR), q.get("symbol", ""), INTERVALS[q["interval"]]
        tf = self.timeframe(symbol)
        if step < tf or step % tf:
            raise BybitError(10001, f"this fake has {tf // 60_000} min bars for {symbol}: interval {q['interval']} "
                                    "is not a whole number of them")
        limit = max(1, min(int_param(q, "limit") or 200, 1000))
        asked_end = int_param(q, "end")
        end = now if asked_end is None else min(asked_end, now)
        start = int_param(q, "start")
        first = -(-start // step) * step if start is not None else None
        last = end // step * step
        series = self.series.get(symbol)
        if series is not None and len(series):  # nothing to walk through before or after the bars
            floor_open = int(series.ts_open[0]) // step * step
            first = floor_open if first is None else max(first, floor_open)
            last = min(last, int(series.ts_open[-1]) // step * step)
        if first is None:  # the generator has every bar but the downtime: enough of them to fill a page
            first = last - (limit + len(self.missing)) * step
        forward = "start" in q and "end" not in q
        rows: list[list[str]] = []
        for ts in range(first, last + 1, step) if forward else range(last, first - 1, -step):
            row = self._candle(category, symbol, ts, step, now)
            if row is not None:
                rows.append(row)
                if len(rows) == limit:
                    break
        rows.sort(key=lambda r: -int(r[0]))
        return {"symbol": symbol, "category": category, "list": rows}

    def _candle(self, category: str, symbol: str, ts: int, step: int, now: int) -> list[str] | None:
        if ts > now:
            return None
        series = self.series.get(symbol)
        if series is None and step == HOUR:
            if ts in self.missing:
                return None
            if ts + step <= now:
                return self.recorded.get((category, symbol, ts)) or generated_bar(category, ts, symbol)
            bars = [self._generated(category, symbol, ts)]
        elif series is None:  # the generator at any other interval: its bar opening at ts, as before
            if ts in self.missing:
                return None
            bars = [_bar_of(generated_bar(category, ts, symbol))]
        else:
            bars = self.base_bars(category, symbol, ts, ts + step)
        if not bars:
            return None
        o = bars[0].open
        if ts + step > now:  # forming: it has barely started
            return [str(ts), num(o), num(o), num(o), num(o), "0", "0"]
        volume = sum(b.volume for b in bars)
        return [str(ts), num(o), num(max(b.high for b in bars)), num(min(b.low for b in bars)), num(bars[-1].close),
                num(volume), num(sum(b.turnover for b in bars), 4)]

    # -- /v5/market/tickers
    def ticker(self, instrument: Instrument, now: int, half_spread: float) -> dict[str, Any]:
        """A ticker at market time: last = the current price, 24 h figures from the closed base bars
        of the last day (the forming one counted at its open)."""
        category, symbol = instrument.category, instrument.symbol
        last = self.price(category, symbol, now)
        tf = self.timeframe(symbol)
        day = [b for b in self.base_bars(category, symbol, now - DAY, now) if b.ts_open + tf <= now]
        prev = self.price(category, symbol, now - DAY)
        row = {
            "symbol": symbol, "lastPrice": num(last), "bid1Price": num(last * (1 - half_spread)), "bid1Size": "10",
            "ask1Price": num(last * (1 + half_spread)), "ask1Size": "10",
            "highPrice24h": num(max([last, *(b.high for b in day)])),
            "lowPrice24h": num(min([last, *(b.low for b in day)])),
            "prevPrice24h": num(prev), "price24hPcnt": num(last / prev - 1, 6) if prev else "0",
            "volume24h": num(sum(b.volume for b in day)), "turnover24h": num(sum(b.turnover for b in day), 4),
        }
        if category == LINEAR:
            next_funding = (now // FUNDING_INTERVAL + 1) * FUNDING_INTERVAL
            row.update({"markPrice": num(last), "indexPrice": num(last), "prevPrice1h": num(self.price(category, symbol, now - HOUR)),
                        "openInterest": "50000", "openInterestValue": num(50_000 * last, 2),
                        "fundingRate": num(self.funding_rate(next_funding), 8), "nextFundingTime": str(next_funding),
                        "fundingIntervalHour": "8", "predictedDeliveryPrice": "", "basisRate": "", "deliveryFeeRate": "",
                        "deliveryTime": "0", "basis": ""})
        else:
            row.update({"usdIndexPrice": num(last)})
        return row

    # -- /v5/market/funding/history
    def funding_history(self, q: Mapping[str, str], now: int) -> dict[str, Any]:
        """Settlements in ``[startTime, endTime]`` (newest ``limit``, at most 200) that happened by ``now``."""
        limit = max(1, min(int_param(q, "limit") or 200, 200))
        asked_end = int_param(q, "endTime")
        end = now if asked_end is None else min(asked_end, now)
        start = int_param(q, "startTime")
        start = end - limit * FUNDING_INTERVAL if start is None else start
        first = max(-(-start // FUNDING_INTERVAL) * FUNDING_INTERVAL, self.funding_start)
        items = [{"symbol": q.get("symbol", ""), "fundingRate": num(self.funding_rate(ts), 8),
                  "fundingRateTimestamp": str(ts)} for ts in range(first, end + 1, FUNDING_INTERVAL)]
        return {"category": q.get("category", LINEAR), "list": items[-limit:][::-1]}
