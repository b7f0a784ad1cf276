"""The paper daemon's decision time and memory: bars of a recorded file replayed through the live path
(``ReplaySource`` -> ``ClosedBars`` -> kernel -> a committed checkpoint per bar, SQLite store), in
this process.

Prints, per strategy: the time from a step taking a bar to its decision being committed (p50, p99,
max), the resident memory after 1,000 replayed bars and at the end, and, as the reference, the same
bars through ``backtest`` (one commit per 20,000 events) in the same run.

    python benchmarks/bench_daemon.py                       # sma_cross on 5,000 BTC hours
    python benchmarks/bench_daemon.py --strategy llm_signal --bars 1500 --set llm.signal_source='"online"'
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ohlcv" / "crypto" / "binance_BTCUSDT_1h.csv"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="bar CSV (default: the shared BTC 1h file)")
    parser.add_argument("--bars", type=int, default=5000, help="replay the first N bars (default 5000)")
    parser.add_argument("--strategy", default="sma_cross")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    if not args.data.is_file():
        print(f"error: {args.data} not found (the shared data folder sits next to the checkout)", file=sys.stderr)
        return 2

    from engine.daemon import commands
    from engine.daemon.runner import Daemon
    from engine.session import load_settings, prepare_backtest, run_recorded

    work = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    lines = args.data.read_text().splitlines()[: args.bars + 1]
    data = work / f"{args.data.stem.split('_')[1] if '_' in args.data.stem else args.data.stem}.csv"
    data.write_text("\n".join(lines) + "\n")
    overrides = [f'store.url="sqlite:///{work / "bench.db"}"', f'run.strategy="{args.strategy}"',
                 f"data.bars={json.dumps(str(data))}", 'data.source="csv"', 'logging.file=""', *args.overrides]
    config = load_settings(ROOT / "config.toml", overrides)

    class Replay:
        replay, warmup = str(data), 0

    spec, clock = commands._spec(Replay, config)
    daemon = Daemon(spec, new=True)
    daemon.open()
    series = spec.series
    latencies: list[float] = []
    rss_1000 = None
    started = time.perf_counter()
    for k in range(len(series)):
        clock.ms = int(series.ts_close[k])
        latencies.extend(daemon.tick(clock.ms).latencies_ms)
        if k + 1 == 1000:
            rss_1000 = rss_mb()
    wall = time.perf_counter() - started
    summary = daemon.finish()
    lat = np.array(latencies)
    t0 = time.perf_counter()
    _, backtest = run_recorded(prepare_backtest(config))
    backtest_s = time.perf_counter() - t0
    same = all(summary[k] == backtest[k] for k in ("orders", "fills", "final_equity"))
    print(f"paper daemon, {args.strategy}, {len(series):,} bars replayed from {args.data.name} (SQLite, commit per bar)")
    print(f"  bar taken -> decision committed: p50 {np.percentile(lat, 50):.2f} ms, p99 {np.percentile(lat, 99):.2f} ms, "
          f"max {lat.max():.2f} ms ({len(lat):,} bars, {len(series) / wall:,.0f} bars/s)")
    print(f"  resident memory: {rss_1000 if rss_1000 is not None else float('nan'):.0f} MB after 1,000 bars, "
          f"{rss_mb():.0f} MB after {len(series):,}")
    print(f"  reference: backtest of the same bars {backtest_s:.2f} s ({len(series) / backtest_s:,.0f} bars/s); "
          f"same orders, fills and final equity: {same} (final equity {summary['final_equity']:.6f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
