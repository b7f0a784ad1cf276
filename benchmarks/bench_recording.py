"""What recording a backtest in the run store costs: sma_cross over ~1,000,000 synthetic hourly bars,
run once without a journal and once recorded (run row, orders, fills, equity, prices, positions,
written in one transaction per 20,000 events), each the best of ``--repeat`` runs.

    .venv/bin/python benchmarks/bench_recording.py [--bars 1000000] [--repeat 2] [--url sqlite:///...]

By default the store is a fresh SQLite file in a temporary folder (removed afterwards).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config import load_config  # noqa: E402
from engine.session import prepare_backtest  # noqa: E402
from engine.store.commands import open_recording  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--url", help="store URL (default: a new SQLite file in a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{tmp}/bench.db"
        config = load_config(None, [f"sample.bars={args.bars}", "sample.headlines_per_day=0",
                                    f"store.url={url!r}".replace("'", '"')])
        started = time.perf_counter()
        plan = prepare_backtest(config)
        print(f"data: {len(plan.series[0]):,} synthetic bars, {len(plan.news)} headlines "
              f"(generated in {time.perf_counter() - started:.1f} s); strategy sma_cross; store {url}")

        plain, recorded = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            result = plan.run()
            plain.append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            recording = open_recording(config, plan)
            result = plan.run(journal=recording.journal, run_id=recording.run_id)
            summary = result.summary()
            recording.complete(summary)
            recorded.append(time.perf_counter() - t0)
            batches = recording.journal.batches

        best_plain, best_rec = min(plain), min(recorded)
        print(f"orders {len(result.orders):,}, fills {len(result.fills):,}, equity points {len(result.equity):,}, "
              f"written in {batches} transactions")
        print(f"without recording: {best_plain:7.2f} s  ({result.bars / best_plain:,.0f} bars/s)")
        print(f"with recording:    {best_rec:7.2f} s  ({result.bars / best_rec:,.0f} bars/s)")
        print(f"overhead:          {best_rec - best_plain:7.2f} s  (+{best_rec / best_plain - 1:.0%})")
        db = Path(tmp) / "bench.db"
        if not args.url and db.exists():
            size = sum(p.stat().st_size for p in Path(tmp).glob("bench.db*"))
            print(f"database size: {size / 2**20:,.1f} MiB for {args.repeat} recorded runs")


if __name__ == "__main__":
    main()
