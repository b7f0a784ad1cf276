"""The same sweep serially and on a local Ray: wall times, their ratio, and what a cluster would give.

The sweep is ``sma_cross`` over a grid of fast x slow windows on the shared Binance BTCUSDT 1h file
(or the synthetic sample market with ``--sample``), every point a run recorded into one temporary
SQLite store (or ``--db URL``, e.g. a PostgreSQL server), exactly as ``python -m engine sweep`` runs it
(``research.sweep.run_sweep``). Both executions must give the same metrics point for point; the
script exits 1 if they do not.

What is timed: the whole sweep, store writes included. Ray's start-up (a few seconds: its raylet,
object store and first workers) is timed apart, because a cluster pays it once, not per sweep.

The projection for a cluster of N machines with C cores each: a point takes ``t`` seconds of one core
(measured: the serial wall time / points), so the sweep takes about ``ceil(points / (N x C)) x t``
plus Ray's per-task overhead (measured here as the Ray wall time minus points x t / cores), as long as
the store keeps up with the writers (PostgreSQL; SQLite serialises them).

    .venv/bin/python benchmarks/bench_sweep.py [--fast 5:30:5] [--slow 40:140:20] [--workers 2] [--db URL]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "ohlcv" / "crypto" / "binance_BTCUSDT_1h.csv"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", default="5:30:5", help="the fast window's grid (default: %(default)s)")
    parser.add_argument("--slow", default="40:140:20", help="the slow window's grid (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="local Ray CPUs (default: all)")
    parser.add_argument("--db", help="store URL (default: a temporary SQLite file)")
    parser.add_argument("--sample", action="store_true", help="the synthetic sample market instead of BTC 1h")
    parser.add_argument("--machines", default="1,4,16,64", help="cluster sizes to project (default: %(default)s)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))

    import ray

    from research.executors import RayExecutor, SerialExecutor
    from research.sweep import SweepSpec, parse_axis, run_sweep

    if not args.sample and not DATA.is_file():
        print(f"no {DATA}: run with --sample, or next to ../shared/data", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="bench-sweep-")
    url = args.db or f"sqlite:///{tmp}/sweep.db"
    overrides = (f'store.url="{url}"', f'store.reports_dir="{tmp}/reports"', 'logging.file=""',
                 'run.strategy="sma_cross"', *([] if args.sample else [f'data.bars="{DATA}"']))
    spec = SweepSpec(axes=[parse_axis(f"strategies.sma_cross.fast={args.fast}"),
                           parse_axis(f"strategies.sma_cross.slow={args.slow}")],
                     spans=[], data=[None], config_path=str(ROOT / "config.toml"), overrides=overrides)
    points = len(spec.axes[0].values) * len(spec.axes[1].values)
    print(f"sweep: sma_cross over {points} points ({args.fast} x {args.slow}) on "
          f"{'the synthetic sample' if args.sample else DATA.name}; store {url.split('@')[-1]}; "
          f"{os.cpu_count()} cores here", flush=True)

    started = time.perf_counter()
    serial = run_sweep(spec, SerialExecutor())
    serial_s = time.perf_counter() - started

    started = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024 * 1024)
    ray.get([ray.remote(num_cpus=1)(lambda: 0).remote() for _ in range(args.workers)])  # workers up
    startup_s = time.perf_counter() - started
    started = time.perf_counter()
    on_ray = run_sweep(spec, RayExecutor(ray))
    ray_s = time.perf_counter() - started
    ray.shutdown()

    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("run_id", "seconds")} for r in rows]

    same = strip(serial["rows"]) == strip(on_ray["rows"])
    per_point = serial_s / points
    ideal = points * per_point / args.workers
    overhead = max(0.0, ray_s - ideal)
    print(f"\n{'':28}{'wall s':>9}{'points/s':>10}")
    print(f"{'serial':28}{serial_s:9.2f}{points / serial_s:10.2f}")
    print(f"{'ray, local, ' + str(args.workers) + ' workers':28}{ray_s:9.2f}{points / ray_s:10.2f}")
    print(f"{'ray start-up (once)':28}{startup_s:9.2f}")
    print(f"\nspeed-up on this machine: {serial_s / ray_s:.2f}x with {args.workers} workers "
          f"({serial_s / (ray_s + startup_s):.2f}x counting Ray's start-up)")
    print(f"per point: {per_point:.3f} s of one core; Ray's overhead here: {overhead:.2f} s over the sweep "
          f"({overhead / points * 1000:.0f} ms a point)")
    print(f"results identical point for point: {'yes' if same else 'NO'}")
    cores = args.workers
    print(f"\nprojection, {points} points, machines of {cores} cores like this one "
          f"(ceil(points / cores) x {per_point:.3f} s + the overhead measured here per point and worker):")
    for n in (int(x) for x in args.machines.split(",")):
        slots = n * cores
        wall = math.ceil(points / slots) * per_point + overhead * cores / slots
        print(f"  {n:>4} machine{'s' if n > 1 else ' '}: {wall:8.2f} s  ({serial_s / wall:6.1f}x serial)")
    print(f"  {'':>4} and for a sweep of 10,000 points on 64 such machines: "
          f"{math.ceil(10_000 / (64 * cores)) * per_point / 60:.1f} min")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
