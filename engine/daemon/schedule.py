"""Driving a ``Daemon``: APScheduler jobs on the wall clock, or a replay on a simulated wall clock.

Live (``run_scheduled``): APScheduler 3.11, one worker thread, so no two steps ever overlap
(``max_instances=1``, ``coalesce=True``: a backlog of missed runs becomes one), a misfire grace of
half a bar. The bar job runs ``paper.settle_s`` after each bar close (UTC) and keeps asking for a due
bar for up to ``paper.max_wait_s``; the poll job (``paper.poll_s``) takes headlines, the controls
and the heartbeat. Correctness never depends on when a job runs: the store's checkpoints say what
was decided. SIGTERM / SIGINT let the current step finish, then the run is recorded "stopped".

Replay (``run_replay``): the recorded bars are served through the same live path
(``ReplaySource`` -> ``ClosedBars``), the clock set to each bar's close in turn; ``speed`` is how
many bars per second (``None``: as fast as it goes).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np

from engine.daemon.runner import Daemon

log = logging.getLogger("engine.daemon")


class ManualTime:
    """A settable time source for ``WallClock``: the replay's simulated wall clock."""

    def __init__(self, start_ms: int) -> None:
        self.ms = int(start_ms)

    def __call__(self) -> int:
        return self.ms


class StopSignals:
    """SIGTERM / SIGINT set ``event`` (the step in progress finishes first); restored on exit."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.received: str = ""
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received = signal.Signals(signum).name
        self.event.set()

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def run_replay(daemon: Daemon, time_source: ManualTime, *, speed: float | None = None,
               stop: threading.Event | None = None, final_news_ms: int | None = None) -> dict[str, Any] | None:
    """Serve the rest of the recording; the summary once it ran out, None if stopped first."""
    assert daemon.bars is not None
    series = daemon.spec.series
    tf = daemon.timeframe_ms
    last = daemon.bars.last_open
    first = int(np.searchsorted(series.ts_open, (last if last is not None else -1) + 1))
    for k in range(first, len(series)):
        if (stop is not None and stop.is_set()) or daemon.stop_requested:
            return None
        close = int(series.ts_open[k]) + tf
        time_source.ms = close
        daemon.tick(close)
        if speed:
            time.sleep(1.0 / speed)
    if (stop is not None and stop.is_set()) or daemon.stop_requested:
        return None
    return daemon.finish(final_news_ms=final_news_ms)


def run_scheduled(daemon: Daemon, stop: threading.Event, *, say: Callable[[str], None]) -> None:
    """Run the bar and poll jobs until ``stop`` is set or the daemon is asked to stop."""
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    assert daemon.bars is not None
    paper, tf = daemon.paper, daemon.timeframe_ms
    clock = daemon.spec.clock
    failures = {"n": 0}

    def step(job: str) -> None:
        try:
            report = daemon.tick()
            deadline = time.monotonic() + paper.max_wait_s
            while job == "bar" and daemon.bars is not None and daemon.bars.due(clock.now()) and not stop.is_set() \
                    and time.monotonic() < deadline and not daemon.stop_requested:
                time.sleep(min(2.0, paper.max_wait_s / 10 or 0.5))  # the exchange has not published it yet
                report = daemon.tick()
            failures["n"] = 0 if not report.waiting else failures["n"] + 1
            if report.waiting:
                say(f"waiting: {report.waiting}")
        except Exception as exc:  # one bad step is logged; the store holds the last good checkpoint
            failures["n"] += 1
            log.exception("run %s: step failed", daemon.run_id)
            say(f"error in the {job} step: {exc}")
            if failures["n"] >= 5:
                say("five steps in a row failed: stopping (the run resumes from its last checkpoint)")
                stop.set()
        if daemon.stop_requested:
            stop.set()

    now = clock.now()
    settle_s = paper.settle_s
    next_close = daemon.bars.latest_closed_open(now) + 2 * tf
    start = datetime.fromtimestamp(next_close / 1000 + settle_s, UTC)
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(max_workers=1)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": max(1, int(tf / 2000))},
        timezone=UTC)
    scheduler.add_job(step, IntervalTrigger(seconds=tf / 1000, start_date=start, timezone=UTC), args=("bar",),
                      id="bar-close", name="bar close")
    scheduler.add_job(step, IntervalTrigger(seconds=paper.poll_s, timezone=UTC), args=("poll",), id="poll",
                      name="news and health", next_run_time=datetime.now(UTC))
    scheduler.start()
    say(f"scheduled: bar job {settle_s:g} s after each {tf // 1000} s bar close (next {start:%Y-%m-%d %H:%M:%S} UTC), "
        f"poll job every {paper.poll_s:g} s")
    try:
        while not stop.wait(1.0):  # a timeout, so that signals reach the main thread promptly
            continue
    finally:
        scheduler.shutdown(wait=True)  # the step in progress finishes; none starts after
