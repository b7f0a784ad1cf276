"""Speed and memory of our engine against backtrader on about a million hourly bars, same trades.

The bars are the shared Binance BTCUSDT 1h file stitched end to end, every other copy played
backwards (bars in reverse order, open and close swapped) so that prices go up and come back down
instead of compounding to absurd levels; each copy is scaled so that its first open equals the
previous copy's last close, and continues one hour after the previous copy's last bar (inside a
copy the file's own time steps, gaps included, are kept). Both engines run a
10/30 SMA crossover, long only, holding 95% of equity (quantity rounded down to the 0.000001 lot
step), 0.1% taker fee, no slippage, spot cash account:

- ours: ``strategies.sma_cross`` through ``engine.backtest.run_backtest``;
- backtrader: a native ``bt.Strategy`` with ``bt.ind.SMA`` written the way a backtrader user would.

Each engine runs in its own spawned process, so its peak resident memory (``ru_maxrss``) is its own.
Only the run is timed (ours: ``run_backtest``; backtrader: ``cerebro.run``, which includes its feed
preload), not reading and stitching the file. Exits 1 if the trades differ.

    .venv/bin/python benchmarks/bench_sma_cross.py [--bars N]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ohlcv" / "crypto" / "binance_BTCUSDT_1h.csv"
HOUR_MS = 3_600_000
EPOCH = datetime(1970, 1, 1)  # backtrader's datetimes are naive UTC
FAST, SLOW, FRACTION, FEE, LOT_STEP, CASH = 10, 30, 0.95, 0.001, 0.000001, 10_000.0
Trade = tuple[int, int, float, float]  # (epoch ms, side +1/-1, quantity, price)


def stitched_bars(n: int) -> dict[str, Any]:
    """``n`` bars of the BTC file stitched end to end as numpy columns (see the module docstring)."""
    import numpy as np

    from engine.feeds.bar_files import load_bars

    base = load_bars(DATA).series
    forward = {"ts": base.ts_open - base.ts_open[0], "open": base.open, "high": base.high, "low": base.low,
               "close": base.close, "volume": base.volume}
    backward = {"ts": forward["ts"], "open": base.close[::-1], "high": base.high[::-1], "low": base.low[::-1],
                "close": base.open[::-1], "volume": base.volume[::-1]}
    columns: dict[str, list[Any]] = {k: [] for k in forward}
    total, next_ts, last_close, copy = 0, int(base.ts_open[0]), float(base.open[0]), 0
    while total < n:
        piece = forward if copy % 2 == 0 else backward
        take = min(len(base), n - total)
        scale = last_close / float(piece["open"][0])
        columns["ts"].append(piece["ts"][:take] + next_ts)
        for name in ("open", "high", "low", "close"):
            columns[name].append(piece[name][:take] * scale)
        columns["volume"].append(piece["volume"][:take])
        total += take
        copy += 1
        next_ts, last_close = int(columns["ts"][-1][-1]) + HOUR_MS, float(columns["close"][-1][-1])
    return {k: np.concatenate(v) for k, v in columns.items()}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_ours(n: int) -> dict[str, Any]:
    """Our engine in this (child) process: trades, seconds, peak RSS."""
    from engine.backtest import run_backtest
    from engine.costs import CostModels, FixedBps
    from engine.domain import Instrument
    from engine.series import BarSeries
    from strategies.sma_cross import SmaCross

    b = stitched_bars(n)
    series = BarSeries.from_arrays("BTCUSDT", HOUR_MS, b["ts"], b["open"], b["high"], b["low"], b["close"],
                                   b["volume"], source="stitched")
    instrument = Instrument("BTCUSDT", maker_fee=FEE, taker_fee=FEE, lot_step=LOT_STEP)
    strategy = SmaCross(SmaCross.Params(fast=FAST, slow=SLOW, fraction=FRACTION))
    started = time.perf_counter()
    result = run_backtest(strategy, [series], {"BTCUSDT": instrument}, starting_cash=CASH,
                          costs=CostModels(spread=FixedBps(0.0), slippage=FixedBps(0.0)))
    seconds = time.perf_counter() - started
    trades = [(f.ts_event, int(f.side), f.quantity, f.price) for f in result.fills]
    return {"bars": result.bars, "trades": trades, "seconds": seconds, "rss_mb": _peak_rss_mb()}


def run_backtrader(n: int) -> dict[str, Any]:
    """The same strategy written natively for backtrader, in this (child) process."""
    import backtrader as bt
    import pandas as pd

    class PercentFee(bt.CommInfoBase):
        params = (("commtype", bt.CommInfoBase.COMM_PERC), ("percabs", True), ("stocklike", True))

    class SmaCrossBT(bt.Strategy):
        params = (("fast", FAST), ("slow", SLOW), ("fraction", FRACTION), ("lot", LOT_STEP))

        def __init__(self) -> None:
            self.fast = bt.ind.SMA(self.data.close, period=self.p.fast)
            self.slow = bt.ind.SMA(self.data.close, period=self.p.slow)
            self.trades: list[Trade] = []

        def next(self) -> None:
            if len(self) <= self.p.slow:
                return  # the first bar with a slow average has no previous one to cross from
            above, was = self.fast[0] > self.slow[0], self.fast[-1] > self.slow[-1]
            if above and not was:
                steps = math.floor(self.broker.getvalue() * self.p.fraction / self.data.close[0] / self.p.lot + 1e-9)
                size = round(steps * self.p.lot, 8) - self.position.size
                if size > 0:
                    self.buy(size=size)
            elif was and not above and self.position:
                self.close()

        def notify_order(self, order: bt.Order) -> None:
            for bit in order.executed.iterpending():
                ms = round((bt.num2date(bit.dt) - EPOCH).total_seconds() * 1000)
                self.trades.append((ms, 1 if bit.size > 0 else -1, abs(bit.size), bit.price))

    b = stitched_bars(n)
    frame = pd.DataFrame({k: b[k] for k in ("open", "high", "low", "close", "volume")},
                         index=pd.to_datetime(b["ts"], unit="ms"))
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(bt.feeds.PandasData(dataname=frame, openinterest=None))
    cerebro.broker.setcash(CASH)
    cerebro.broker.set_checksubmit(False)
    cerebro.broker.addcommissioninfo(PercentFee(commission=FEE))
    cerebro.addstrategy(SmaCrossBT)
    started = time.perf_counter()
    strategy = cerebro.run(maxcpus=1)[0]
    seconds = time.perf_counter() - started
    return {"bars": len(strategy.data), "trades": strategy.trades, "seconds": seconds, "rss_mb": _peak_rss_mb()}


def first_difference(ours: list[Trade], theirs: list[Trade]) -> str | None:
    """The first trade that differs (time and side exactly, quantity and price to 1e-9 relative)."""
    for k in range(max(len(ours), len(theirs))):
        a = ours[k] if k < len(ours) else None
        b = theirs[k] if k < len(theirs) else None
        if a is None or b is None or a[:2] != b[:2] or not all(
                math.isclose(x, y, rel_tol=1e-9) for x, y in zip(a[2:], b[2:])):
            return f"trade {k + 1}: ours {a} vs backtrader {b}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=1_000_000, help="bars to stitch together (default 1,000,000)")
    args = parser.parse_args(argv)
    if not DATA.exists():
        print(f"data file not found: {DATA}", file=sys.stderr)
        return 2
    spawn = multiprocessing.get_context("spawn")
    executor = ProcessPoolExecutor  # one fresh interpreter per engine: peak RSS is that engine's own
    results = {}
    for name, target, note in (("ours", run_ours, "a few seconds"),
                               ("backtrader", run_backtrader, "a couple of minutes on a million bars")):
        print(f"running {name} on {args.bars:,} stitched bars in its own process ({note}) ...", flush=True)
        with executor(max_workers=1, mp_context=spawn) as pool:
            results[name] = pool.submit(target, args.bars).result()
    ours, theirs = results["ours"], results["backtrader"]
    print(f"{'engine':<12}{'bars':>11}{'trades':>9}{'seconds':>10}{'bars/s':>12}{'peak RSS MB':>13}")
    for name, r in results.items():
        print(f"{name:<12}{r['bars']:>11,}{len(r['trades']):>9,}{r['seconds']:>10.2f}"
              f"{r['bars'] / r['seconds']:>12,.0f}{r['rss_mb']:>13,.0f}")
    print(f"speed ratio ours/backtrader: {theirs['seconds'] / ours['seconds']:.1f}x bars/s")
    difference = first_difference(ours["trades"], theirs["trades"])
    print("trades identical: " + ("yes" if difference is None else f"NO, first difference: {difference}"))
    return 0 if difference is None else 1


if __name__ == "__main__":
    sys.exit(main())
