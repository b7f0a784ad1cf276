"""Soak: the live daemon against the fake Bybit with random faults and random ``kill -9`` restarts,
then proof that nothing was lost or doubled.

    python benchmarks/soak_live.py --orders 1000 --fault-rate 0.3 --seed 1 --json

The daemon (``python -m engine live start --replay``, a subprocess, the churn strategy: an order
every bar, every third a resting limit order) trades a random walk on the fake exchange, which
answers private requests with a fault at ``--fault-rate`` (5xx before or after processing, lost
acks, dropped connections, 10006, 10002, 10016), fills market orders partly now and then, and
cancels resting orders from its side. The daemon is killed with SIGKILL at random moments (and at
named crash points) and started again until the replay is done. Faults stop for the last bars so
the run can settle. Then, from the store and the fake:

- ``duplicates``: exchange orders beyond one per intent;
- ``lost_fills``: executions of the run's orders on the fake and not in the store, or the reverse;
- ``mismatches``: position, open orders or balance that disagree, and orders left UNKNOWN.

Prints one JSON object (or a table) and exits 1 on any duplicate, lost fill or mismatch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.testing.bars import random_walk, write_csv  # noqa: E402
from engine.testing.fake_bybit import FakeBybit  # noqa: E402

KEY, SECRET = "soak-key", "soak-secret-do-not-print"
SYMBOL, SYMBOL_ID = "BTC/USDT:USDT", "BTCUSDT"
WARMUP = 3
CRASH_POINTS = ("intent_committed", "after_sending", "after_post", "fill_committed", "mid_checkpoint")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=200, help="orders to trade, about (one per bar, 15%% more bars for "
                        "those taken late after restarts; default 200)")
    parser.add_argument("--fault-rate", type=float, default=0.3, help="share of private requests that fail (default 0.3)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kills", type=float, default=1.0, help="random kill -9 per 100 bars on average (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--keep", type=Path, help="keep the store and logs in this folder")
    args = parser.parse_args(argv)
    if not 0 <= args.fault_rate < 1:
        parser.error("--fault-rate must be in [0, 1)")
    if args.orders < 1:
        parser.error("--orders must be at least 1")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="soak-live-"))
    folder.mkdir(parents=True, exist_ok=True)
    result = soak(folder, orders=args.orders, fault_rate=args.fault_rate, seed=args.seed, kills_per_100=args.kills,
                  say=(lambda line: None) if args.json else (lambda line: print(line, file=sys.stderr, flush=True)))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:<22} {value}")
    bad = result["duplicates"] or result["lost_fills"] or result["mismatches"]
    return 1 if bad else 0


def soak(folder: Path, *, orders: int, fault_rate: float, seed: int, kills_per_100: float, say) -> dict:
    rng = random.Random(seed)
    bars = int(orders * 1.15) + WARMUP + 10  # bars taken late after a restart update state but do not trade
    series = random_walk(bars, seed=seed)
    csv = write_csv(series, folder / "BTCUSDT_1h.csv")
    db = folder / "soak.db"
    if db.exists():
        db.unlink()
    end_ms = int(series.ts_open[-1]) + series.timeframe_ms
    quiet_from = end_ms - 8 * series.timeframe_ms  # faults stop here: the last bars settle what is open
    fake = FakeBybit(bars={SYMBOL_ID: series}, api_key=KEY, api_secret=SECRET, balance={"USDT": 100_000.0}).start()
    fake.delay_s = 0.5
    fake.set_market_time(int(series.ts_open[0]))  # the replay moves it on from here
    fake.random_faults(fault_rate, seed)
    fake.partial_fills(0.1, seed)
    settings = [f'store.url="sqlite:///{db}"', f'live.api_url="{fake.url}"', "live.timeout_s=0.3",
                "live.backoff_s=0.01", "live.rate_limit=false", "live.max_attempts=12", "live.max_lookups=12",
                "live.reconcile_every_s=3600", 'logging.file=""', 'run.strategy="churn"',
                'instrument.contract="linear_perp"', "instrument.max_leverage=5.0", "strategies.churn.limit_every=3",
                "strategies.churn.limit_offset=0.002", "strategies.churn.allow_short=true"]
    argv = [sys.executable, "-m", "engine", "live", "start", "--replay", str(csv), "--warmup", str(WARMUP),
            "--symbol", SYMBOL]
    for setting in settings:
        argv += ["--set", setting]
    env = {**os.environ, "BYBIT_API_KEY": KEY, "BYBIT_API_SECRET": SECRET}
    restarts = named = 0
    started = time.perf_counter()
    log = (folder / "daemon.log").open("ab")
    try:
        while True:
            crash = ""
            if restarts < 40 and rng.random() < 0.3:
                crash = f"{rng.choice(CRASH_POINTS)}:{rng.randint(1, 40)}"
            proc = subprocess.Popen(argv, cwd=ROOT, env={**env, "ENGINE_CRASH_AT": crash}, stdout=log, stderr=log)
            # A random kill: on average kills_per_100 per 100 bars at the replay's pace (~20 bars/s here).
            kill_after = rng.expovariate(kills_per_100 / 5.0) if kills_per_100 > 0 else math.inf
            deadline = time.monotonic() + kill_after
            while proc.poll() is None:
                time.sleep(0.05)
                if fake.market_time() >= quiet_from:
                    fake.clear_faults()
                    fake.random_faults(0.0, seed)
                    fake.partial_fills(0.0)
                elif rng.random() < 0.02:
                    resting = [o for o in fake.orders() if o["orderStatus"] == "New"]
                    if resting:
                        fake.cancel_from_exchange(rng.choice(resting)["orderLinkId"])
                if time.monotonic() > deadline and fake.market_time() < quiet_from:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    break
            code = proc.returncode
            if code == 0:
                break
            if code != -signal.SIGKILL:
                raise SystemExit(f"the daemon failed (exit {code}); its log: {folder / 'daemon.log'}")
            restarts += 1
            named += bool(crash)
            say(f"restart {restarts} (killed {'at ' + crash if crash else 'at random'}), "
                f"{len(fake.creates())} orders so far")
    finally:
        log.close()
    elapsed = time.perf_counter() - started
    try:
        return {"orders": len(fake.creates()), "faults": fake.faults_fired, "restarts": restarts,
                "named_crash_points": named, **verify(db, fake), "seconds": round(elapsed, 1), "seed": seed,
                "fault_rate": fault_rate}
    finally:
        fake.stop()


def verify(db: Path, fake: FakeBybit) -> dict:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT client_order_id, status, attempts FROM orders").fetchall()
        stored = {c: (s, a) for c, s, a in rows}
        trade_ids = {t for (t,) in conn.execute("SELECT trade_id FROM fills WHERE trade_id IS NOT NULL UNION "
                                                "SELECT trade_id FROM funding_payments WHERE trade_id IS NOT NULL")}
        held = conn.execute("SELECT coalesce(sum(CASE side WHEN 'buy' THEN quantity ELSE -quantity END), 0) "
                            "FROM fills").fetchone()[0]
        reconciliations = conn.execute("SELECT kind, action, detail FROM reconciliations").fetchall()
        halted = conn.execute("SELECT halted, halt_reason FROM daemons").fetchone()
    finally:
        conn.close()
    created = fake.creates()
    duplicates = sum(n - 1 for n in created.values() if n > 1)
    duplicates += len(set(created) - set(stored))  # exchange orders no intent explains
    execs = {e["execId"] for e in fake.executions()}
    lost = len(execs - trade_ids) + len({t for t in trade_ids if not t.startswith("recon-")} - execs)
    mismatches = []
    if not math.isclose(fake.position(SYMBOL_ID), held, abs_tol=1e-9):
        mismatches.append(f"position: exchange {fake.position(SYMBOL_ID)}, store {held}")
    working = {o["orderLinkId"] for o in fake.orders() if o["orderStatus"] in ("New", "PartiallyFilled")}
    open_stored = {c for c, (s, _) in stored.items() if s not in ("filled", "cancelled", "rejected", "expired")}
    if working != open_stored:
        mismatches.append(f"open orders: exchange {sorted(working)}, store {sorted(open_stored)}")
    wallet, expected = fake.wallet("USDT"), expected_balance(db)
    if not math.isclose(wallet, expected, abs_tol=0.01):
        mismatches.append(f"USDT balance: exchange {wallet:.6f}, store {expected:.6f}")
    unknown = [c for c, (s, _) in stored.items() if s == "unknown"]
    if unknown:
        mismatches.append(f"orders left UNKNOWN: {unknown}")
    if halted and halted[0]:
        mismatches.append(f"the run halted: {halted[1]}")
    statuses: dict[str, int] = {}
    for status, _ in stored.values():
        statuses[status] = statuses.get(status, 0) + 1
    return {"duplicates": duplicates, "lost_fills": lost, "mismatches": len(mismatches),
            "mismatch_details": mismatches[:5], "executions": len(execs), "stored_orders": len(stored),
            "order_statuses": statuses, "resent_orders": sum(1 for _, a in stored.values() if a > 1),
            "reconciliation_records": len(reconciliations)}


def expected_balance(db: Path) -> float:
    """The USDT balance the stored fills, fees and funding imply (the reconciliation's rule): the
    account's balance when the run began, plus the cash the portfolio gained, plus the entry value of
    the perpetual position (the exchange takes only realised P&L, fees and funding)."""
    from engine.store.daemons import find_daemon
    from engine.store.db import open_store
    from engine.store.queries import find_run
    from engine.store.restore import restore_portfolio

    store = open_store(f"sqlite:///{db}", create=False)
    try:
        daemon = find_daemon(store, mode="live")
        info = find_run(store, daemon.run_id)
        portfolio = restore_portfolio(store, info)
        baseline = float(((daemon.live or {}).get("baseline") or {}).get("USDT", info.starting_cash))
    finally:
        store.close()
    pos = portfolio.positions.get(SYMBOL)
    return baseline + portfolio.cash - info.starting_cash + (pos.quantity * pos.average_price if pos else 0.0)


if __name__ == "__main__":
    sys.exit(main())
