"""Concurrent use of the store, on SQLite (WAL) and on PostgreSQL: a backtest recording in another
process while readers here run the queries of ``runs`` and ``report`` over and over. Readers never
see a half-written batch (each read is one consistent snapshot), and the writer never fails or
waits on a reader's lock."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import func, select

from engine.store.db import open_store
from engine.store.models import EquityPoint, FillRow, OrderRow, Run
from engine.store.queries import find_run, list_runs, load_run

ROOT = Path(__file__).resolve().parents[1]
BARS = 150_000  # a few seconds of recording, in many 20,000-event batches


def test_readers_see_whole_batches_and_never_block_the_writer(backend, tmp_path):
    db = backend.new()
    open_store(db.url).close()  # the schema first: the readers below open it without creating it
    writer = subprocess.Popen(
        [sys.executable, "-m", "engine", "backtest", "--json", "--no-progress", "--config", str(ROOT / "config.toml"),
         "--set", f"sample.bars={BARS}", "--set", "sample.headlines_per_day=0", "--set", db.setting,
         "--set", f"logging.file='{tmp_path / 'engine.log'}'", "--set", "store.busy_timeout=2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = open_store(db.url, create=False)
    failures: list[BaseException] = []
    seen: list[set[int]] = [set(), set()]  # fill counts each reader saw while the run was being written

    def snapshot_is_whole(conn) -> int:
        """Several statements in one read transaction: they must agree, as of one commit."""
        bars = conn.scalar(select(func.max(Run.bars))) or 0
        points = conn.scalar(select(func.count()).select_from(EquityPoint))
        fills = conn.scalar(select(func.count()).select_from(FillRow))
        filled = conn.scalar(select(func.count()).select_from(OrderRow).where(OrderRow.status == "filled"))
        assert points <= bars, f"{points} equity points but the run says {bars} bars: a later batch showed through"
        assert filled == fills, f"{fills} fills but {filled} filled orders: half a batch"
        return fills

    def reader(k: int) -> None:
        try:
            while writer.poll() is None:
                runs = list_runs(store)  # what `runs` shows
                if not runs:
                    time.sleep(0.01)
                    continue
                data = load_run(store, find_run(store, runs[0].run_id))  # what `report` reads
                assert data.order_status.get("filled", 0) == len(data.fills), "report: half a batch"
                assert len(data.equity) <= len(data.prices[runs[0].symbols[0]][0]) + 1
                with store.read() as conn:
                    seen[k].add(snapshot_is_whole(conn))
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=reader, args=(k,), daemon=True) for k in range(2)]
    for t in threads:
        t.start()
    try:
        out, err = writer.communicate(timeout=300)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.communicate()
    for t in threads:
        t.join(timeout=60)
    if failures:
        raise failures[0]
    assert writer.returncode == 0, f"the writer failed while readers read:\n{err[-3000:]}"
    summary = json.loads(out)
    assert summary["bars"] == BARS
    # The readers really ran alongside the writer: each read, and they saw the run half-way through.
    assert all(seen) and any(0 < n < summary["fills"] for s in seen for n in s), [sorted(s) for s in seen]
    (info,) = list_runs(store)
    assert info.status == "completed" and info.bars == BARS
    with store.read() as conn:
        assert snapshot_is_whole(conn) == summary["fills"]
    store.close()


def test_a_read_is_one_snapshot_whatever_commits_meanwhile(backend):
    """The deterministic core of the above: a batch committed while a reader is between two of its
    statements is not seen by the second (PostgreSQL's default, READ COMMITTED, would show it)."""
    from engine.store.journal import start_run

    store = open_store(backend.new().url)

    def runs(conn) -> int:
        return conn.scalar(select(func.count()).select_from(Run))

    with store.read() as conn:
        before = runs(conn)
        start_run(store, run_id="committed-meanwhile", mode="backtest", strategy="sma_cross", symbols=["X"],
                  timeframe_ms=60_000, starting_cash=1.0, config={}, timeframes={"X": 60_000})
        assert runs(conn) == before  # still the snapshot of the first statement
    with store.read() as conn:
        assert runs(conn) == before + 1
    store.close()
