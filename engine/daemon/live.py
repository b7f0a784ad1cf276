"""``LiveDaemon``: the paper daemon with the Bybit broker plugged in (``python -m engine live``).

Everything of ``engine.daemon.runner.Daemon`` holds (closed bars only, write before you send, the
lease fencing every checkpoint, the state rebuilt by a replay that sends nothing, halt and
flatten); what changes for live trading:

- **The broker** is ``engine.brokers.bybit.BybitBroker``: intents committed at the bar's checkpoint
  are sent after it (``_after_commit``), each send committed before and after; funding comes from
  the exchange's reports, never simulated.
- **The starting cash** is the account's quote balance when the run begins; those balances are the
  baseline the reconciliation measures from, kept in the daemon's row with the executions' cursor.
- **Reconciliation** (``engine.daemon.reconcile``) runs before the first order after every start
  and every ``live.reconcile_every_s``; until the start-up one has read everything, nothing is
  sent. What it cannot explain halts the run (recorded, shown by ``live status``).
- **Halts** from the broker (an UNKNOWN order, an IP ban) and from the reconciliation are written
  to the store's controls, so they survive a restart and ``live halt --clear`` lifts them.
- A replay against a fake exchange (``--replay`` with ``live.api_url`` on loopback) moves the
  fake's market clock to the replay's time before each step (``market_time``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from engine.brokers.bybit import BybitBroker, LiveOrder, LiveSettings
from engine.brokers.bybit_client import BybitAccount, with_retries
from engine.daemon import crash
from engine.daemon.runner import Daemon, DaemonSpec, TickReport
from engine.domain import OrderStatus
from engine.errors import ConfigError
from engine.funding import ReportedFunding
from engine.history import BarHistory
from engine.kernel import Parts, Restored
from engine.order_ids import run_tag

log = logging.getLogger("engine.live")


class LiveDaemon(Daemon):
    MODE = "live"

    def __init__(self, spec: DaemonSpec, *, account: BybitAccount, venue: str, new: bool = False,
                 say: Callable[[str], None] | None = None, market_time: Callable[[int], None] | None = None,
                 sleep: Callable[[float], None] | None = None) -> None:
        super().__init__(spec, new=new, say=say)
        self.account = account
        self.venue = venue
        self.market_time = market_time
        self.live_config = spec.config.live
        self.broker: BybitBroker | None = None
        self.reconciler: Any = None
        self.reconciled = False
        self._last_reconcile = -10**18
        self._live: dict[str, Any] = {}
        self._sleep = sleep

    # -- start and resume ----------------------------------------------------------------------
    def open(self) -> str:
        """Start or resume the run, then reconcile with the exchange at once (before any order), and
        send what the store holds committed and unsent; a reconciliation that could not read
        everything is tried again at each step, and nothing is sent until one has."""
        how = super().open()
        now = self.spec.clock.now()
        if self.market_time is not None:
            self.market_time(now)
        outcome = self.reconcile(startup=True)
        if outcome.complete:
            self._after_commit()
        else:
            self.say(f"the start-up reconciliation could not read the exchange ({outcome.trouble}); trying again "
                     "at the next step, nothing is sent until it has")
        return how

    def _start_new(self) -> None:
        """The account's balances first: they are the run's starting cash and the reconciliation's baseline."""
        quote = next(iter(self.spec.plan.instruments.values())).quote_currency
        for symbol in self.spec.plan.instruments:
            self.account.market(symbol)  # an unknown symbol fails here, before anything is recorded
        baseline = with_retries(self.account.balances, what="reading the account's balances", say=self.say,
                                max_s=self.paper.retry_max_s)
        cash = baseline.get(quote, 0.0)
        if not cash > 0:
            raise ConfigError(f"the {self.venue} account holds no {quote} (balances: {baseline or 'none'}); fund it "
                              "(demo accounts: Bybit's demo page) before trading")
        self.config = dataclasses.replace(self.config, run=dataclasses.replace(self.config.run, starting_cash=cash))
        self.spec.config = self.config
        self._live = {"venue": self.venue, "baseline": baseline, "floor_ms": self.spec.clock.now(),
                      "cursor": {}, "last_reconciled_ms": None}
        self.say(f"{self.venue} account: {cash:,.2f} {quote} is the run's starting cash")
        super()._start_new()
        self._set_live_state()

    def _resume(self, daemon: Any) -> None:
        self._live = dict(daemon.live or {})
        if self._live.get("venue") not in (None, self.venue):
            raise ConfigError(f"run {daemon.run_id} trades on {self._live['venue']}, not {self.venue}; start with "
                              f"the same venue, or --new for a fresh run")
        super()._resume(daemon)

    def _parts(self, histories: dict[str, BarHistory]) -> Parts:
        plan = self.spec.plan
        self.funding_source = ReportedFunding()
        cfg = self.live_config
        settings = LiveSettings(max_attempts=cfg.max_attempts, max_lookups=cfg.max_lookups, backoff_s=cfg.backoff_s)
        floor = int(self._live.get("floor_ms") or self.spec.clock.now())

        def factory(portfolio: Any, emit: Any, clock: Any) -> BybitBroker:
            extra = {"sleep": self._sleep} if self._sleep is not None else {}
            broker = BybitBroker(self.account, plan.instruments, emit, clock, funding=self.funding_source,
                                 settings=settings, start_ms=floor, **extra)
            broker.commit = self._commit
            broker.on_problem = self._problem
            broker.crash_point = crash.reached
            self.broker = broker
            return broker

        return Parts(clock=self.spec.clock, histories=histories, broker=factory, funding=self.funding_source)

    def _kernel(self, strategy: Any, journal: Any, restored: Restored | None, prefill: Any) -> Any:
        kernel = super()._kernel(strategy, journal, restored, prefill)
        assert self.broker is not None
        self.broker.on_order = kernel.loop.on_order  # orders the broker books itself (fees paid in coin)
        return kernel

    def _restore_broker(self, restored: Restored, daemon: Any) -> int:
        from sqlalchemy import select

        from engine.store.convert import order_from_row
        from engine.store.models import FillRow, FundingRow, OrderRow

        assert self.broker is not None
        terminal = [s.value for s in OrderStatus if s.is_terminal]
        with self.store.read() as conn:
            rows = conn.execute(select(OrderRow.__table__).where(
                OrderRow.run_pk == self.run_pk, OrderRow.status.not_in(terminal))).mappings().all()
            ids = [r for (r,) in conn.execute(select(FillRow.trade_id).where(
                FillRow.run_pk == self.run_pk, FillRow.trade_id.is_not(None)))]
            ids += [r for (r,) in conn.execute(select(FundingRow.trade_id).where(
                FundingRow.run_pk == self.run_pk, FundingRow.trade_id.is_not(None)))]
        orders = [LiveOrder(order_from_row(r), OrderStatus(r["status"]), r["filled_quantity"], r["exchange_order_id"],
                            r["attempts"] or 0, r["sent_ms"]) for r in rows]
        self.broker.restore(orders, ids, self._live.get("cursor") or {})
        return len(orders)

    def _set_live_state(self) -> None:
        from engine.store.daemons import update_daemon

        update_daemon(self.store, self.run_pk, self._token, {"live": self._live_values()})

    def _live_values(self) -> dict[str, Any]:
        broker = self.broker
        if broker is not None:
            cursor = {}
            for symbol, ts in broker.cursor.items():
                pending = broker.funding.earliest_pending(symbol)
                cursor[symbol] = min(ts, pending) if pending is not None else ts  # unapplied funding is read again
            self._live["cursor"] = cursor
        if self.reconciler is not None:
            self._live["baseline"] = self.reconciler.baseline
        return dict(self._live)

    def _more_fence_values(self) -> dict[str, Any]:
        return {"live": self._live_values()}

    # -- the step ------------------------------------------------------------------------------
    def _commit(self) -> None:
        self._checkpoint(self.state, self.note)

    def _reconciler(self) -> Any:
        if self.reconciler is None:
            from engine.daemon.reconcile import Reconciler

            assert self.kernel is not None and self.broker is not None
            self.reconciler = Reconciler(
                self.broker, self.kernel, self.journal, self.live_config,
                baseline={k: float(v) for k, v in (self._live.get("baseline") or {}).items()},
                starting_cash=self.kernel.portfolio.starting_cash, tag=run_tag(self.run_id),
                timeframe_ms=self.timeframe_ms, on_problem=self._problem)
        return self.reconciler

    def reconcile(self, *, startup: bool = False) -> Any:
        """One reconciliation pass, committed; its ``Outcome``."""
        outcome = self._reconciler().run(startup=startup)
        if outcome.complete:
            self.reconciled = True
            self._live["last_reconciled_ms"] = self.spec.clock.now()
            self._last_reconcile = self.spec.clock.now()
        self._checkpoint(self.state, self.note)
        return outcome

    def _exchange_step(self, now: int, report: TickReport) -> bool:
        assert self.broker is not None
        if self.market_time is not None:
            self.market_time(now)
        every = self.live_config.reconcile_every_s * 1000
        if not self.reconciled or now - self._last_reconcile >= every:
            outcome = self.reconcile(startup=not self.reconciled)
            if not self.reconciled:
                report.waiting = f"the start-up reconciliation could not read the exchange ({outcome.trouble})"
                self._checkpoint("waiting", report.waiting + "; nothing is sent until it has")
                return False
            if outcome.differences:
                self.say("reconciliation: " + "; ".join(f"{k} {a}: {d}" for k, a, d in outcome.differences[:5]))
        else:
            self.broker.sync()
            if self.broker.trouble:
                log.warning("run %s: exchange trouble: %s", self.run_id, self.broker.trouble)
            elif self.broker.strangers:  # trades nobody here made: judged now, not at the next round
                self.reconcile()
        assert self.kernel is not None
        self.kernel.loop.deliver()
        self._after_commit()  # cancels still wanted, intents a restart found committed and unsent
        return True

    def _after_commit(self) -> None:
        broker = self.broker
        if broker is None or not self.reconciled:
            return  # nothing leaves before the start-up reconciliation has read the exchange
        if not broker.pending() and not any(lo.cancel_wanted and lo.status is not OrderStatus.CANCEL_PENDING
                                            for lo in broker.orders.values()):
            return
        self._checkpoint(self.state, self.note)  # whatever was decided is in the store before it is sent
        broker.send_pending()
        assert self.kernel is not None
        self.kernel.loop.deliver()
        self._checkpoint(self.state, self.note)

    def finish(self, *, final_news_ms: int | None = None) -> dict[str, Any]:
        """A replay ended: orders whose fate is open are settled first (looked up, resent with their
        ids), the exchange reconciled once more, then the run is completed as paper's is."""
        self.settle()
        return super().finish(final_news_ms=final_news_ms)

    def settle(self, rounds: int = 5) -> None:
        broker = self.broker
        assert broker is not None and self.kernel is not None
        unsettled = (OrderStatus.SENDING, OrderStatus.AMBIGUOUS, OrderStatus.INTENT)
        for _ in range(rounds):
            if not any(lo.status in unsettled for lo in broker.orders.values()) and not broker.trouble:
                break
            broker.sync()
            self.kernel.loop.deliver()
            self._after_commit()
            self._checkpoint(self.state, self.note)
        self.reconcile()

    def _problem(self, symbol: str, reason: str) -> None:
        """The broker or the reconciliation cannot go on safely: halt (``Daemon._halt``)."""
        self._halt(reason)


def post_market_time(api_url: str) -> Callable[[int], None]:
    """For a replay against the fake Bybit: move its market clock to the replay's time."""
    import json
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    host = urlsplit(api_url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(f"--replay drives a fake exchange's clock; {api_url} is not on this machine (loopback)")

    def set_time(ms: int) -> None:
        body = json.dumps({"ms": int(ms)}).encode()
        request = urllib.request.Request(f"{api_url.rstrip('/')}/fake/set_market_time", data=body,
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                answer.read()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace")
            if "only moves forward" not in text:
                raise ConfigError(f"the fake exchange at {api_url} refused the replay's time: {text[:300]}") from None
            # A restarted replay behind the exchange (the killed process had moved it on): it catches up.

    return set_time
