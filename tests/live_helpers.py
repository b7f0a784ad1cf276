"""A live daemon on the fake Bybit, in this process, stepped bar by bar, and the checks every live
scenario ends with (``LIVE.md``, the end of "Testing it offline"):

- exactly one exchange order per intent, and no exchange order the store does not know;
- the set of execution ids on the fake equals the store's (fills and funding);
- position, open orders and balance agree;
- a second reconciliation writes nothing;
- no order was created before the start-up reconciliation had read the exchange.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from engine.daemon.live_commands import live_daemon
from engine.session import load_settings
from engine.testing.bars import random_walk, write_csv
from engine.testing.fake_bybit import FakeBybit
from tests.stores import StoreTarget, sqlite_target

ROOT = Path(__file__).resolve().parents[1]
KEY, SECRET = "live-test-key-5Qz", "live-test-secret-9f3c2a7e-never-written"
SYMBOL, SYMBOL_ID = "BTC/USDT:USDT", "BTCUSDT"
TABLES = ("orders", "order_events", "fills", "funding_payments", "reconciliations")


class LiveRig:
    """The fake exchange, a store and the command's own way of building a live daemon."""

    def __init__(self, tmp_path: Path, *, bars: int = 120, settings: list[str] | None = None,
                 strategy: str = "churn", warmup: int = 3, balance: float = 10_000.0, spot: bool = False,
                 store: StoreTarget | None = None) -> None:
        self.tmp = tmp_path
        self.spot = spot
        self.symbol = "BTC/USDT" if spot else SYMBOL
        self.series = random_walk(bars, symbol=self.symbol)
        self.csv = write_csv(self.series, tmp_path / "BTCUSDT_1h.csv")
        # The store: a SQLite file under tmp_path unless a target (tests/stores.py) is given.
        self.store = store if store is not None else sqlite_target(tmp_path, "live.db")
        self.db = self.store.path
        self.fake = FakeBybit(bars={SYMBOL_ID: self.series}, api_key=KEY, api_secret=SECRET,
                              balance={"USDT": balance}).start()
        self.fake.delay_s = 1.2  # longer than the client's timeout below: a "timeout" fault is one
        self.settings = [self.store.setting, f'live.api_url="{self.fake.url}"', "live.timeout_s=0.6",
                         "live.backoff_s=0.001", "live.rate_limit=false", "live.reconcile_every_s=86400", f'run.strategy="{strategy}"',
                         f'data.symbol="{self.symbol}"', 'logging.file=""',
                         *([] if spot else ['instrument.contract="linear_perp"', "instrument.max_leverage=5.0"]),
                         *(settings or [])]
        self.warmup = warmup
        self.starts: list[int] = []  # request-log index at each start
        self.daemon: Any = None
        self.time: Any = None

    # -- running -------------------------------------------------------------------------------
    def open(self, *, new: bool = False, env: dict[str, str] | None = None) -> Any:
        args = argparse.Namespace(command="live", replay=str(self.csv), warmup=self.warmup, new=new, mainnet=False,
                                  testnet=False, api_url=None, confirm=None, speed="max", data=None, source=None)
        overrides = [*self.settings, f"data.bars={str(self.csv)!r}".replace("'", '"'), 'data.source="csv"']
        config = load_settings(ROOT / "config.toml", overrides)  # as `live start` run from the checkout reads it
        self.starts.append(len(self.fake.requests))
        daemon, self.time = live_daemon(args, config, say=lambda line: None,
                                        environ=env if env is not None else {"BYBIT_API_KEY": KEY, "BYBIT_API_SECRET": SECRET})
        daemon.open()
        self.daemon = daemon
        return daemon

    def step(self, bars: int = 1) -> None:
        """Take the next ``bars`` bars, each at its close."""
        daemon = self.daemon
        last = daemon.bars.last_open
        k = int(np.searchsorted(self.series.ts_open, last + 1))
        for i in range(k, min(k + bars, len(self.series))):
            close = int(self.series.ts_open[i]) + self.series.timeframe_ms
            self.time.ms = close
            daemon.tick(close)

    def restart(self) -> Any:
        self.daemon.close("stopped")
        return self.open()

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.store is not None:
            self.daemon.close("stopped")
        self.fake.stop()
        self.store.dispose()

    # -- reading the store ---------------------------------------------------------------------
    def rows(self, sql: str, *params: Any) -> list[tuple]:
        """``sql`` with ``?`` placeholders, on either back-end."""
        names = iter(range(len(params)))
        named = re.sub(r"\?", lambda _: f":p{next(names)}", sql)
        return self.store.rows(named, **{f"p{i}": v for i, v in enumerate(params)})

    def counts(self) -> dict[str, int]:
        return {t: self.rows(f"SELECT count(*) FROM {t}")[0][0] for t in TABLES}

    # -- the checks ----------------------------------------------------------------------------
    def check(self, *, open_orders_agree: bool = True) -> None:
        """Every agreement ``LIVE.md`` asks for after a scenario (and after the restart that follows)."""
        fake, daemon = self.fake, self.daemon
        stored = {coid: (status, attempts) for coid, status, attempts in
                  self.rows("SELECT client_order_id, status, attempts FROM orders")}
        created = fake.creates()
        assert all(n == 1 for n in created.values()), f"an intent became several exchange orders: {created}"
        ours = {o["orderLinkId"] for o in fake.orders() if o.get("orderLinkId")}
        strangers = {c for c in ours - set(stored) if c.startswith(daemon.reconciler.tag)}
        assert not strangers, f"exchange orders the store does not know: {strangers}"
        for coid in ours & set(stored):
            assert stored[coid][1] >= 1, f"{coid} is on the exchange but the store never recorded sending it"
        execs = {e["execId"] for e in fake.executions()}
        trade_ids = {t for (t,) in self.rows("SELECT trade_id FROM fills WHERE trade_id IS NOT NULL "
                                             "UNION SELECT trade_id FROM funding_payments WHERE trade_id IS NOT NULL")}
        trade_ids = {t for t in trade_ids if not t.startswith("recon-")}
        assert execs == trade_ids, f"executions differ: only on the fake {execs - trade_ids}, only stored {trade_ids - execs}"
        held = self.rows("SELECT coalesce(sum(CASE side WHEN 'buy' THEN quantity ELSE -quantity END), 0) FROM fills")[0][0]
        on_exchange = fake.wallet("BTC") if self.spot else fake.position(SYMBOL_ID)
        assert math.isclose(on_exchange, held, abs_tol=1e-9), (on_exchange, held)
        assert math.isclose(daemon.kernel.portfolio.quantity(self.symbol), held, abs_tol=1e-9)
        if open_orders_agree:
            working = {o["orderLinkId"] for o in fake.orders() if o["orderStatus"] in ("New", "PartiallyFilled")}
            not_final = {c for c, (s, _) in stored.items() if s not in ("filled", "cancelled", "rejected", "expired")}
            assert working == not_final, f"open orders differ: exchange {working}, store {not_final}"
        expected = daemon.reconciler.expected_quote()
        assert math.isclose(fake.wallet("USDT"), expected, abs_tol=0.01), (fake.wallet("USDT"), expected)
        # A second reconciliation in a row writes nothing.
        daemon.reconcile()
        before = self.counts()
        outcome = daemon.reconcile()
        assert outcome.complete and self.counts() == before, (outcome, before, self.counts())
        self.check_reads_before_creates()

    def check_reads_before_creates(self) -> None:
        """After each start, the first order create comes after the reconciliation's reads (its
        position and balance requests)."""
        log = self.fake.requests
        bounds = [*self.starts, len(log)]
        for lo, hi in zip(bounds, bounds[1:]):
            paths = [entry.path for entry in log[lo:hi]]
            if "/v5/order/create" not in paths:
                continue
            first_create = paths.index("/v5/order/create")
            reads = {"/v5/account/wallet-balance", "/v5/order/realtime", "/v5/execution/list"}
            if not self.spot:
                reads.add("/v5/position/list")
            missing = reads - set(paths[:first_create])
            assert not missing, f"an order was created before the start-up reconciliation read {missing}"
