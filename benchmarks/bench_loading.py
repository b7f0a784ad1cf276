"""How long the data and metrics steps take: loading a CSV bar file of ``--rows`` one-minute bars,
computing the metrics of an equity curve of ``--points`` points, and generating the default
synthetic sample market; each the best of ``--repeat`` runs. Prints figures; asserts nothing
(these timings were once assertions in tests/test_bar_files.py, test_metrics.py and
test_sample_market.py, which now check only the results).

    .venv/bin/python benchmarks/bench_loading.py [--rows 1000000] [--points 1000000] [--repeat 3]

Reference figures (a laptop): about 0.6 s for a million rows, well under 1 s for a million
points, under 0.5 s for the sample market.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.feeds.bar_files import load_bars  # noqa: E402
from engine.feeds.sample import generate_sample_market  # noqa: E402
from engine.metrics import compute_metrics  # noqa: E402
from engine.timeutil import MS_PER_HOUR, parse_instant  # noqa: E402

T0 = parse_instant("2024-01-01")


def best_of(repeat: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.csv"
        rows = "\n".join(f"{t},100.5,101.25,99.75,100.5,1.5" for t in range(T0, T0 + args.rows * 60_000, 60_000))
        path.write_text(f"timestamp,open,high,low,close,volume\n{rows}\n")
        seconds = best_of(args.repeat, lambda: load_bars(path).series)
        print(f"load_bars: {args.rows:,} rows of 1m bars in {seconds:.3f} s ({args.rows / seconds:,.0f} rows/s)")

    rng = np.random.default_rng(0)
    equity = 100 * np.cumprod(1 + rng.normal(0, 0.01, args.points))
    exposure = np.abs(rng.normal(size=args.points))
    ts = T0 + MS_PER_HOUR * np.arange(args.points, dtype=np.int64)
    seconds = best_of(args.repeat, lambda: compute_metrics(ts=ts, equity=equity, gross_exposure=exposure, fills=[],
                                                            starting_equity=100.0, costs={}))
    print(f"compute_metrics: {args.points:,} equity points in {seconds:.3f} s")

    seconds = best_of(args.repeat, generate_sample_market)
    market = generate_sample_market()
    print(f"generate_sample_market: {len(market.bars):,} bars and {len(market.news):,} headlines in {seconds:.3f} s")


if __name__ == "__main__":
    main()
