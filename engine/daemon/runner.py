"""``Daemon``: one paper run of one strategy, fed closed bars and headlines as they arrive (live
trading is this daemon with the Bybit broker: ``engine.daemon.live.LiveDaemon``).

**Start.** A new run: bars before the first live one (``paper.warmup_bars``) are replayed through a
*shadow* kernel (a backtest with no store behind it; its orders reach nothing) so the strategy's
indicators and features are ready; then the run's kernel (``engine.kernel.assemble("paper", ...)``)
takes over the same strategy object, with an empty portfolio, and the live bars.

**Resume.** The same ``paper start`` again finds its run by its key (mode, strategy and settings,
symbol, bar length, data source). The portfolio and the open orders are restored from the store,
the source of truth for paper trading (``engine.store.restore``); the strategy's state is rebuilt
by replaying, through shadow kernels again, the warm-up bars and then the bars and headlines the
run already decided, exactly as they reached it the first time. The shadow's portfolio is checked
against the store's; a bar already decided is never decided again.

**The step.** ``tick(now)`` is a plain function: read the controls (``paper halt``/``stop``), poll
headlines and closed bars, hand them to the kernel in the backtest's order (headlines published up
to a bar's close before that bar), and commit a checkpoint after each bar close, with the daemon's
heartbeat in the same transaction (fenced by the lease). Orders a bar decides are committed with
it, before the next bar (the first that can fill them) is taken: write before you send. A crash at
any instant leaves the store at the last checkpoint, and the next start carries on from there.

A bar taken later than ``paper.late_fraction`` of its length after its close (missed while the
daemon was down, or the exchange lagged) updates state but does not trade unless
``paper.catch_up = "trade"``. Halted, the strategy sees every event and nothing is sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.backtest import backtest_parts, drive, iter_bars
from engine.brokers.simulated import SimulatedBroker
from engine.clock import WallClock
from engine.config import Config
from engine.daemon import crash
from engine.daemon.feeds import BarSource, ClosedBars, NewsFeed, PollResult
from engine.domain import News, OrderStatus
from engine.errors import EngineError, TemporaryError
from engine.funding import SimulatedFunding
from engine.history import BarHistory
from engine.kernel import Kernel, Parts, Restored, assemble
from engine.metrics import compute_metrics
from engine.plan import BacktestPlan
from engine.risk import RiskLimits
from engine.series import BarSeries
from engine.timeutil import format_timeframe, iso

log = logging.getLogger("engine.daemon")

CONTROLS_EVERY_S = 0.25  # how often a step reads `paper halt` / `paper stop` from the store, at most


@dataclass
class DaemonSpec:
    """What one daemon runs: the plan (strategy, instruments, costs; ``plan.series[0]`` is the
    warm-up history for a live source, the recording for a replay), where bars and headlines come
    from, and its clock."""

    mode: str
    config: Config
    plan: BacktestPlan
    source: BarSource
    clock: WallClock
    data_label: str
    warmup: BarSeries  # bars before the first live one (may be empty)
    live_from_ms: int  # open of the first bar a new run decides
    news: NewsFeed | None = None
    replay: bool = False
    set_time: Callable[[int], None] | None = None  # a replay's simulated wall clock (resumed where the run was)

    @property
    def series(self) -> BarSeries:
        return self.plan.series[0]

    def key(self) -> str:
        """The daemon's identity: the same command finds the same run again."""
        config = self.config
        settings = {"strategy": self.plan.strategy_name, "params": config.strategies.get(self.plan.strategy_name, {}),
                    "cash": None if self.mode == "live" else config.run.starting_cash, "fill_mode": config.run.fill_mode,
                    "instrument": [dataclass_dict(i) for i in self.plan.instruments.values()],
                    "costs": dataclass_dict(config.costs), "sections": config.sections}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
        s = self.series
        return f"{self.mode}:{self.plan.strategy_name}:{self.data_label}:{s.symbol}:{s.timeframe}:{digest}"


def dataclass_dict(value: Any) -> Any:
    import dataclasses

    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


@dataclass
class TickReport:
    bars: int = 0
    news: int = 0
    late: int = 0
    missing: int = 0
    waiting: str = ""  # why no bar could be read (exchange trouble), in words
    latencies_ms: list[float] = field(default_factory=list)


class Daemon:
    MODE = "paper"

    def __init__(self, spec: DaemonSpec, *, new: bool = False, say: Callable[[str], None] | None = None) -> None:
        self.spec = spec
        self.config = spec.config
        self.paper = spec.config.paper
        self.new = new
        self.say = say or (lambda line: None)
        self.symbol = spec.series.symbol
        self.timeframe_ms = spec.series.timeframe_ms
        self.store: Any = None
        self.kernel: Kernel | None = None
        self.journal: Any = None
        self.run_id = ""
        self.run_pk = 0
        self._token = ""
        self._lock = threading.Lock()  # one step at a time, whoever calls it
        self._halted = False
        self._halt_reason = ""
        self._clear_flatten = False
        self.stop_requested = False
        self.state = "starting"
        self.note = ""
        self.last_bar_close: int | None = None
        self._latencies: deque[float] = deque(maxlen=1000)
        self._controls_read = -math.inf
        self._orders_seen = self._fills_seen = 0  # what the last checkpoint held (for the crash points)
        self.bars: ClosedBars | None = None
        self.resumed = False
        self.started_wall = time.perf_counter()

    # -- start and resume ----------------------------------------------------------------------
    def open(self) -> str:
        """Start a new run or resume this key's run; returns "started" or "resumed"."""
        from engine.store.daemons import find_daemon
        from engine.store.db import open_store

        self.store = open_store(self.config.store.url, busy_timeout=self.config.store.busy_timeout)
        try:
            existing = None if self.new else find_daemon(self.store, key=self.spec.key())
            if existing is not None and existing.state == "finished":
                self.say(f"run {existing.run_id} of this command finished (its replay ended); starting a new run")
                existing = None
            if existing is not None:
                self._resume(existing)
                self.resumed = True
                return "resumed"
            self._start_new()
            return "started"
        except BaseException:
            self.store.close()
            raise

    def _strategy(self) -> Any:
        return self.spec.plan.make_strategy()

    def _shadow(self, strategy: Any, series: BarSeries, news: Sequence[News], *, start: bool) -> Kernel | None:
        """Replay ``series`` and ``news`` through a kernel with no store and a broker that reaches
        nothing: the strategy's state comes out as it was, no order leaves."""
        if not len(series) and not news:
            return None
        plan = self.spec.plan
        kernel = assemble("backtest", backtest_parts([series], plan.instruments, plan.costs, self.config.run.fill_mode),
                          strategy=strategy, instruments=plan.instruments, costs=plan.costs,
                          starting_cash=self.config.run.starting_cash, run_id=self.run_id or "warm-up")
        kernel.ctx.time = kernel.clock.now()
        if start:
            kernel.start()
        drive(kernel, [series], news)
        return kernel

    def _kernel(self, strategy: Any, journal: Any, restored: Restored | None, prefill: Sequence[BarSeries]) -> Kernel:
        plan = self.spec.plan
        histories = {self.symbol: BarHistory(self.symbol, self.timeframe_ms, capacity=self.paper.history_capacity)}
        for series in prefill:
            for bar in iter_bars(series):
                histories[self.symbol].append(bar)
        parts = self._parts(histories)
        risk = self.config.risk
        limits = RiskLimits(risk, currency=next(iter(plan.instruments.values())).quote_currency,
                            on_halt=self._risk_halt) if risk.any else None
        kernel = assemble(self.MODE, parts, strategy=strategy, instruments=plan.instruments, costs=plan.costs,
                          starting_cash=self.config.run.starting_cash, run_id=self.run_id, journal=journal,
                          restored=restored, risk=limits)
        journal.before_commit = self._fence
        journal.hold_last_equity = False  # a daemon checkpoints after every bar close: no point is still open
        return kernel

    def _parts(self, histories: dict[str, BarHistory]) -> Parts:
        """Paper: the backtest's simulated fills and funding, on the wall clock."""
        plan, fill_mode = self.spec.plan, self.config.run.fill_mode
        self._funding = SimulatedFunding(plan.costs.funding)
        return Parts(clock=self.spec.clock, histories=histories,
                     broker=lambda portfolio, emit, clock: SimulatedBroker(
                         portfolio, plan.instruments, plan.costs, emit=emit, fill_mode=fill_mode, clock=clock),
                     funding=self._funding)

    def _restore_broker(self, restored: Restored, daemon: Any) -> int:
        """Orders an earlier process left working, given back to the broker; how many."""
        broker = self.kernel.broker if self.kernel is not None else None
        assert isinstance(broker, SimulatedBroker)
        working = [s.order for s in restored.book.open()] if restored.book is not None else []
        broker.restore(working)
        if daemon.last_bar_ms is not None:  # settlements up to the last decided close were applied
            self._funding.resume_after(self.symbol, daemon.last_bar_ms)
        return len(working)

    def _exchange_step(self, now: int, report: TickReport) -> bool:
        """Before the bars of a step: nothing to do for paper (live: the exchange's news). False
        stops the step (nothing may be decided yet)."""
        return True

    def _after_commit(self) -> None:
        """After a checkpoint that may hold new intents: paper's broker already has them (live sends them)."""

    def _start_new(self) -> None:
        from engine.backtest import new_run_id
        from engine.store.commands import code_version, config_snapshot
        from engine.store.daemons import acquire_lease, daemon_row, insert_daemon
        from engine.store.journal import now_ms, start_run

        spec, tf = self.spec, self.timeframe_ms
        self.run_id = new_run_id()
        strategy = self._strategy()
        warm = spec.warmup
        if len(warm):
            self.say(f"warm-up: replaying {len(warm):,} bars ({iso(int(warm.ts_open[0]))} -> "
                     f"{iso(int(warm.ts_close[-1]))}) without orders")
        shadow = self._shadow(strategy, warm, [], start=True)
        row = daemon_row(spec.key(), warmup_from_ms=int(warm.ts_open[0]) if len(warm) else None,
                         first_bar_ms=spec.live_from_ms)
        journal = start_run(
            self.store, run_id=self.run_id, mode=spec.mode, strategy=spec.plan.strategy_name,
            symbols=[self.symbol], timeframe_ms=tf, starting_cash=self.config.run.starting_cash,
            config=config_snapshot(self.config), data_label=spec.data_label, code_version=code_version(),
            timeframes={self.symbol: tf}, also=lambda conn, pk: insert_daemon(conn, pk, row))
        self.run_pk = journal.run_pk
        self._token = acquire_lease(self.store, self.run_pk, now_ms=now_ms(), stale_ms=int(self.paper.lease_stale_s * 1000))
        self.journal = journal
        self.kernel = self._kernel(strategy, journal, None, [warm])
        journal.skip_prices({self.symbol: len(warm)})
        if shadow is None:
            self.kernel.ctx.time = self.spec.clock.now()
            self.kernel.start()
        self.bars = ClosedBars(spec.source, self.symbol, tf, settle_ms=self._settle_ms(),
                               last_open=spec.live_from_ms - tf)
        self.say(f"run {self.run_id}: {spec.mode} {spec.plan.strategy_name} on {self.symbol} {format_timeframe(tf)} "
                 f"from {spec.data_label}, first live bar opens {iso(spec.live_from_ms)}")
        self._set_state("running", "started")

    def _resume(self, daemon: Any) -> None:
        from engine.store.daemons import acquire_lease
        from engine.store.journal import now_ms, resume_run
        from engine.store.models import NewsRow
        from engine.store.queries import find_run
        from engine.store.restore import restored_state

        spec, tf = self.spec, self.timeframe_ms
        # The lease first: nothing is read or replayed for a run another process is running.
        self._token = acquire_lease(self.store, daemon.run_pk, now_ms=now_ms(),
                                    stale_ms=int(self.paper.lease_stale_s * 1000))
        info = find_run(self.store, daemon.run_id)
        self.run_id, self.run_pk = info.run_id, info.pk
        if spec.set_time is not None and daemon.last_bar_ms is not None:
            spec.set_time(daemon.last_bar_ms)
        probe = ClosedBars(spec.source, self.symbol, tf)
        first = daemon.first_bar_ms
        warm = (probe.history(daemon.warmup_from_ms, first) if daemon.warmup_from_ms is not None
                else _empty(self.symbol, tf))
        last_open = daemon.last_bar_ms - tf if daemon.last_bar_ms is not None else first - tf
        decided = probe.history(first, last_open + 1) if last_open >= first else _empty(self.symbol, tf)
        expected = (last_open - first) // tf + 1 - daemon.missing_bars if last_open >= first else 0
        if len(decided) < expected:
            raise EngineError(f"run {self.run_id}: the source now has {len(decided)} of the {expected} bars the run "
                              f"decided ({iso(first)} -> {iso(last_open + tf)}); the strategy's state cannot be "
                              "rebuilt. Start a fresh run with --new (nothing was changed).")
        from sqlalchemy import select

        from engine.store.convert import news_from_row
        with self.store.read() as conn:
            seen = [news_from_row(r) for r in conn.execute(select(NewsRow.__table__).where(
                NewsRow.run_pk == info.pk).order_by(NewsRow.ts_event, NewsRow.id)).mappings()]
        self.say(f"resuming run {self.run_id}: rebuilding the strategy from {len(warm):,} warm-up bars and "
                 f"{len(decided):,} decided bars, {len(seen):,} headlines (no orders)")
        strategy = self._strategy()
        shadow_warm = self._shadow(strategy, warm, [], start=True)
        shadow = self._shadow(strategy, decided, seen, start=shadow_warm is None)
        restored = restored_state(self.store, info)
        if shadow is not None and self.MODE == "paper":  # live: the exchange's fills, not the simulation's
            self._compare(shadow, restored)
        journal = resume_run(self.store, info.pk, info.run_id, timeframes={self.symbol: tf},
                             history_counts={self.symbol: len(warm) + len(decided)})
        self.journal = journal
        self.kernel = self._kernel(strategy, journal, restored, [warm, decided])
        self.kernel.loop.bars_seen = info.bars
        self.kernel.loop.news_seen = len(seen)
        if self.kernel.risk is not None:  # the daily loss counts from the day's start, not from this restart
            now = self.spec.clock.now()
            self.kernel.risk.start_day(now, _day_open_equity(self.store, info.pk, now, info.starting_cash))
        working = self._restore_broker(restored, daemon)
        if shadow_warm is None and shadow is None:
            self.kernel.ctx.time = self.spec.clock.now()
            self.kernel.start()
        self.last_bar_close = daemon.last_bar_ms
        self.bars = ClosedBars(spec.source, self.symbol, tf, settle_ms=self._settle_ms(), last_open=last_open)
        self.bars.missing_total = daemon.missing_bars
        if spec.news is not None and hasattr(spec.news, "skip_seen"):
            spec.news.skip_seen({(n.ts_event, n.headline) for n in seen}, daemon.last_bar_ms or 0)
        self._halted, self._halt_reason = daemon.halted, daemon.halt_reason
        self.kernel.ctx.trading = not self._halted
        open_text = f", {working} open orders" if working else ""
        self.say(f"run {self.run_id} resumed after the bar closing {iso(daemon.last_bar_ms) if daemon.last_bar_ms else '-'}"
                 f"{open_text}; equity {restored.portfolio.equity:,.2f}")
        self._set_state("halted" if self._halted else "running", "resumed")

    def _compare(self, shadow: Kernel, restored: Restored) -> None:
        """The replayed portfolio against the store's (the store is kept): a difference means the
        code or the data changed since those bars were decided."""
        a, b = shadow.portfolio, restored.portfolio
        diffs = []
        if not math.isclose(a.cash, b.cash, rel_tol=1e-9, abs_tol=1e-6):
            diffs.append(f"cash {a.cash:,.4f} replayed vs {b.cash:,.4f} stored")
        for symbol in set(a.positions) | set(b.positions):
            qa, qb = a.quantity(symbol), b.quantity(symbol)
            if not math.isclose(qa, qb, rel_tol=1e-9, abs_tol=1e-12):
                diffs.append(f"{symbol} position {qa:g} replayed vs {qb:g} stored")
        if diffs:
            message = ("the warm-up replay disagrees with the store (" + "; ".join(diffs) + "): the code, the "
                       "settings or the bars changed since these bars were decided; the store's portfolio is kept")
            log.warning("run %s: %s", self.run_id, message)
            self.say("warning: " + message)

    def _set_state(self, state: str, note: str) -> None:
        from engine.store.daemons import update_daemon
        from engine.store.journal import now_ms

        self.state, self.note = state, note
        update_daemon(self.store, self.run_pk, self._token, {"state": state, "note": note, "heartbeat_ms": now_ms(),
                                                              "halted": int(self._halted)})

    def _settle_ms(self) -> int:
        return 0 if self.spec.replay else int(self.paper.settle_s * 1000)

    # -- the step ------------------------------------------------------------------------------
    def tick(self, now: int | None = None) -> TickReport:
        """One step at ``now`` (the clock's time if None): controls, headlines, closed bars, checkpoints."""
        with self._lock:
            assert self.kernel is not None and self.bars is not None
            now = self.spec.clock.now() if now is None else int(now)
            report = TickReport()
            self._apply_controls(now)
            if self.stop_requested or not self._exchange_step(now, report):
                return report
            news = self.spec.news.poll(now) if self.spec.news is not None else []
            started = time.perf_counter()
            try:
                got = self.bars.poll(now)
            except TemporaryError as exc:
                got = PollResult()
                report.waiting = f"{self.spec.source.name} unavailable: {exc}"
            report.missing = got.missing
            kernel, tf = self.kernel, self.timeframe_ms
            i = 0
            for bar in got.bars:
                while i < len(news) and news[i].ts_event <= bar.ts_event:
                    kernel.on_news(news[i])
                    report.news += 1
                    i += 1
                late = now - bar.ts_event > self.paper.late_fraction * tf
                kernel.ctx.trading = not self._halted and not (late and self.paper.catch_up == "no_trade")
                if late:
                    report.late += 1
                    if not kernel.ctx.trading and not self._halted:
                        log.info("%s bar closing %s taken %.0f s late: state updated, no trade", self.symbol,
                                 iso(bar.ts_event), (now - bar.ts_event) / 1000)
                kernel.on_bar(bar)
                kernel.ctx.trading = not self._halted
                self.last_bar_close = bar.ts_event
                crash.reached("bar_processed")
                self._checkpoint("halted" if self._halted else "running", f"last bar closed {iso(bar.ts_event)}")
                self._after_commit()  # intents are in the store: now they may be sent
                latency = (time.perf_counter() - started) * 1000
                report.latencies_ms.append(latency)
                self._latencies.append(latency)
                log.info("%s bar closing %s: decision recorded %.1f ms after it was taken (%.0f ms after its close)",
                         self.symbol, iso(bar.ts_event), latency, max(0, now - bar.ts_event) + latency)
                started = time.perf_counter()
            report.bars = len(got.bars)
            for item in news[i:]:
                kernel.on_news(item)
                report.news += 1
            kernel.clock.fire_due()
            if report.waiting:
                self._checkpoint("waiting", report.waiting + "; retrying, nothing is traded meanwhile")
            elif news[i:] or not got.bars:
                self._checkpoint("halted" if self._halted else "running", self._idle_note(now, got))
            self._after_commit()  # what headlines and timers decided
            return report

    def _idle_note(self, now: int, got: PollResult) -> str:
        if self._halted:
            return f"halted: {self._halt_reason}"
        if got.refused:
            return "; ".join(got.refused[-3:])
        return f"waiting for the bar closing {iso(self.bars.latest_closed_open(now) + 2 * self.timeframe_ms)}" \
            if self.bars is not None else ""

    def _checkpoint(self, state: str, note: str) -> None:
        assert self.kernel is not None
        loop = self.kernel.loop
        orders, fills = len(loop.orders), len(loop.fills)
        self.state, self.note = state, note
        self.kernel.checkpoint()
        if len(loop.orders) != self._orders_seen:
            crash.reached("intent_committed")
        if len(loop.fills) != self._fills_seen:
            crash.reached("fill_committed")
        self._orders_seen, self._fills_seen = orders, fills
        self._clear_flatten = False

    def _fence(self, conn: Any) -> None:
        """Inside each checkpoint's transaction: the heartbeat and state, if the lease is still ours."""
        from engine.store.daemons import fence
        from engine.store.journal import now_ms

        crash.reached("mid_checkpoint")
        values: dict[str, Any] = {"heartbeat_ms": now_ms(), "state": self.state, "note": self.note[:2000],
                                  "last_bar_ms": self.last_bar_close,
                                  "missing_bars": self.bars.missing_total if self.bars is not None else 0,
                                  "latency": self.latency_figures()}
        if self._clear_flatten:
            values["flatten_requested"] = 0
        values.update(self._more_fence_values())
        fence(conn, self.run_pk, self._token, values)

    def _more_fence_values(self) -> dict[str, Any]:
        """More of the daemon's row to write with each checkpoint (live: reconciliation progress)."""
        return {}

    def latency_figures(self) -> dict[str, float] | None:
        if not self._latencies:
            return None
        values = np.fromiter(self._latencies, np.float64)
        return {"last_ms": round(values[-1], 3), "p50_ms": round(float(np.percentile(values, 50)), 3),
                "p99_ms": round(float(np.percentile(values, 99)), 3), "bars": len(values)}

    def _risk_halt(self, reason: str | None) -> None:
        """A risk limit was breached: the daemon halts (recorded, shown by ``status``) until a person
        lifts it with ``halt --clear``."""
        if reason is None:
            return  # cleared: by ``halt --clear``, which already lifted the daemon's halt
        self._halt(f"risk limit: {reason}")

    def _halt(self, reason: str) -> None:
        """Halt: nothing new is sent until a person lifts it (``halt --clear``); kept in the store."""
        from engine.store.daemons import set_controls

        if self._halted:
            return
        self._halted, self._halt_reason = True, reason[:2000]
        if self.kernel is not None:
            self.kernel.ctx.trading = False
        set_controls(self.store, self.run_pk, halted=1, halt_reason=self._halt_reason)
        self.state = "halted"
        log.error("run %s halted: %s", self.run_id, reason)
        self.say(f"HALTED at {iso(self.spec.clock.now())}: {reason}")

    # -- controls ------------------------------------------------------------------------------
    def _apply_controls(self, now: int) -> None:
        from engine.store.daemons import read_controls

        wall = time.monotonic()
        if wall - self._controls_read < CONTROLS_EVERY_S:
            return  # a replay ticks thousands of times a second; a person's halt can wait this long
        self._controls_read = wall
        controls = read_controls(self.store, self.run_pk)
        if not controls:
            return
        assert self.kernel is not None
        if controls["halted"] and not self._halted:
            self._halted, self._halt_reason = True, controls["halt_reason"] or "halted by hand"
            self.say(f"halted: {self._halt_reason}; no order is sent until `paper halt --clear`")
            log.warning("run %s halted: %s", self.run_id, self._halt_reason)
        elif not controls["halted"] and self._halted:
            self._halted, self._halt_reason = False, ""
            if self.kernel.risk is not None and self.kernel.risk.halted:
                self.kernel.risk.clear()
            self.say("halt cleared: trading again")
        self.kernel.ctx.trading = not self._halted
        if controls["flatten_requested"]:
            self._flatten(now)
        if controls["stop_requested"]:
            self.stop_requested = True

    def _flatten(self, now: int) -> None:
        """Cancel every open order and close every position at market (the next bar's open fills it)."""
        assert self.kernel is not None
        ctx = self.kernel.ctx
        ctx.time = max(ctx.time, now)
        ctx.trading = True
        cancelled = sum(ctx.cancel(o.client_order_id) for o in ctx.open_orders())
        closed = [s for s in ctx.symbols if ctx.position(s) != 0.0 and ctx.close(s, tag="halt:flatten") is not None]
        ctx.trading = not self._halted
        self._clear_flatten = True
        self.say(f"flatten: {cancelled} open orders cancelled, closing {', '.join(closed) or 'nothing'}")
        self._checkpoint("halted" if self._halted else self.state, "flattening")
        self._after_commit()

    # -- the end -------------------------------------------------------------------------------
    def close(self, state: str = "stopped", error: BaseException | None = None) -> None:
        """Record ``state`` (stopped, failed) and give the lease back; the run can be resumed."""
        from engine.store.daemons import LeaseLost, update_daemon

        if self.store is None:
            return
        try:
            if self.journal is not None and self.kernel is not None:
                if error is not None:
                    self.journal.fail(error, "failed")
                else:
                    self.kernel.checkpoint()
                    self.journal.set_status("stopped")
            if self._token:
                update_daemon(self.store, self.run_pk, self._token, {
                    "state": state, "note": f"{state}: {error}" if error is not None else state,
                    "lease_pid": None, "lease_token": "", "stop_requested": 0})
        except LeaseLost:
            log.warning("run %s: the lease was taken over; nothing more written", self.run_id)
        finally:
            self.store.close()
            self.store = None

    def finish(self, *, final_news_ms: int | None = None) -> dict[str, Any]:
        """The recording ended (a replay ran out): the strategy's ``on_stop``, the run marked
        completed with its summary (the backtest's keys), the lease given back."""
        from engine.store.daemons import update_daemon
        from engine.store.queries import find_run

        assert self.kernel is not None
        if final_news_ms is not None and self.spec.news is not None:
            for item in self.spec.news.poll(final_news_ms):
                self.kernel.on_news(item)
        self.kernel.ctx.time = max(self.kernel.ctx.time, self.last_bar_close or 0)
        self.kernel.stop()
        info = find_run(self.store, self.run_id)
        summary = run_summary(self.store, info, self.spec.plan, self.kernel,
                              elapsed=time.perf_counter() - self.started_wall)
        summary["database"] = self.store.name
        self.journal.finish(summary)
        update_daemon(self.store, self.run_pk, self._token, {"state": "finished", "note": "the replay ended",
                                                              "lease_pid": None, "lease_token": ""})
        self.store.close()
        self.store = None
        return summary


def _day_open_equity(store: Any, run_pk: int, now_ms: int, starting_cash: float) -> float:
    """The run's equity at the start of ``now_ms``'s UTC day (its last point before; the starting cash
    if it began that day)."""
    from sqlalchemy import select

    from engine.store.models import EquityPoint
    from engine.timeutil import MS_PER_DAY

    day = now_ms // MS_PER_DAY * MS_PER_DAY
    with store.read() as conn:
        value = conn.execute(select(EquityPoint.equity).where(EquityPoint.run_pk == run_pk, EquityPoint.ts_event <= day)
                             .order_by(EquityPoint.ts_event.desc()).limit(1)).scalar()
    return float(value) if value is not None else starting_cash


def _empty(symbol: str, timeframe_ms: int) -> BarSeries:
    e = np.empty(0)
    return BarSeries.from_arrays(symbol, timeframe_ms, np.empty(0, np.int64), e, e, e, e, e)


def run_summary(store: Any, info: Any, plan: BacktestPlan, kernel: Kernel, *, elapsed: float) -> dict[str, Any]:
    """The run's summary with the keys of ``backtest --json``, computed from the store (the run may
    have been decided by several processes)."""
    from engine.store.queries import load_run
    from engine.store.restore import restore_portfolio

    data = load_run(store, info)
    portfolio = restore_portfolio(store, info)
    closes = [c for _, c in data.prices.values() if len(c) > 1]
    bh = float(np.mean([c[-1] / c[0] - 1.0 for c in closes])) if closes else None
    metrics = compute_metrics(ts=data.equity_ts, equity=data.equity, gross_exposure=data.gross_exposure,
                              fills=data.fills, starting_equity=info.starting_cash, costs=portfolio.ledgers.as_dict(),
                              buy_and_hold_return=bh).to_dict()
    bars = sum(len(t) for t, _ in data.prices.values())
    ledgers = portfolio.ledgers
    strategy_summary = getattr(kernel.strategy, "summary", None)
    out: dict[str, Any] = {
        "run_id": info.run_id, "strategy": getattr(kernel.strategy, "name", type(kernel.strategy).__name__),
        "symbols": list(info.symbols), "bars": bars, "news": data.news, "orders": data.orders,
        "fills": len(data.fills), "rejected_orders": data.order_status.get(OrderStatus.REJECTED.value, 0),
        "starting_cash": info.starting_cash,
        "final_equity": float(data.equity[-1]) if len(data.equity) else info.starting_cash,
        "total_return": metrics["total_return"], "sharpe": metrics["sharpe"], "max_drawdown": metrics["max_drawdown"],
        "fees": ledgers.fees, "slippage": ledgers.slippage, "spread": ledgers.spread, "funding": ledgers.funding,
        "buy_and_hold_return": metrics["buy_and_hold_return"],
        "bars_per_second": round(bars / elapsed, 1) if elapsed > 0 else None,
        "elapsed_seconds": round(elapsed, 4), "fill_mode": plan.config.run.fill_mode, "metrics": metrics,
    }
    halts = kernel.risk.halts if kernel.risk is not None else []
    if halts:  # the backtest's key: only when one happened
        out["risk_halts"] = [{"time": iso(ts), "reason": reason} for ts, reason in halts]
    if strategy_summary is not None:
        out.update(strategy_summary())
    out.update(plan.describe())
    return out


__all__ = ["Daemon", "DaemonSpec", "TickReport", "run_summary"]
