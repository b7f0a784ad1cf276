"""The live daemon against the fake Bybit through the real ccxt client: every scenario of
``LIVE.md``'s "Testing it offline", each followed by the checks of ``tests.live_helpers.LiveRig.check``
after the scenario and again after the restart that follows."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.daemon.live_commands import live_daemon
from engine.session import load_settings
from tests.live_helpers import KEY, SECRET, SYMBOL, SYMBOL_ID, LiveRig

ROOT = Path(__file__).resolve().parents[1]
CREATE, CANCEL = "/v5/order/create", "/v5/order/cancel"


@pytest.fixture
def rig(tmp_path):
    rig = LiveRig(tmp_path)
    yield rig
    rig.stop()


@pytest.fixture
def any_rig(tmp_path, store_target):
    """A rig recording into this case's back-end (SQLite, or PostgreSQL: tests/stores.py)."""
    rig = LiveRig(tmp_path, store=store_target)
    yield rig
    rig.stop()


def scenario(rig: LiveRig, before: int = 3, after: int = 3, **check) -> None:
    """Check now, restart, take ``after`` more bars, check again."""
    rig.check(**check)
    rig.restart()
    rig.step(after)
    rig.check(**check)


def statuses(rig: LiveRig) -> dict[str, str]:
    return dict(rig.rows("SELECT client_order_id, status FROM orders"))


def events(rig: LiveRig, coid: str) -> list[str]:
    return [s for (s,) in rig.rows("SELECT status FROM order_events WHERE client_order_id = ? ORDER BY id", coid)]


def last_order(rig: LiveRig) -> str:
    return rig.rows("SELECT client_order_id FROM orders ORDER BY ts_init DESC, client_order_id DESC LIMIT 1")[0][0]


def test_a_clean_run_trades_every_bar_and_agrees_with_the_exchange(any_rig):
    rig = any_rig
    rig.open()
    rig.step(6)
    assert len(rig.fake.creates()) == 6 and rig.counts()["fills"] == 6
    assert set(statuses(rig).values()) == {"filled"}
    coid = last_order(rig)
    assert events(rig, coid) == ["submitted", "sending", "accepted", "filled"]
    assert rig.rows("SELECT attempts, exchange_order_id IS NOT NULL, sent_ms IS NOT NULL FROM orders "
                    "WHERE client_order_id = ?", coid) == [(1, 1, 1)]
    scenario(rig)


def test_spot_trades_coins_and_agrees_with_the_wallet(tmp_path):
    rig = LiveRig(tmp_path, spot=True)
    try:
        rig.open()
        rig.step(4)
        rig.fake.fault(CREATE, "timeout", when="after")
        rig.step(1)
        assert len(rig.fake.creates()) == 5 and set(statuses(rig).values()) == {"filled"}
        assert rig.rows("SELECT DISTINCT fee_currency FROM fills") == [("USDT",)]
        scenario(rig)
    finally:
        rig.stop()


def test_lost_ack_the_order_exists_is_found_by_its_client_id_and_not_sent_again(any_rig):
    rig = any_rig
    rig.open()
    rig.step(2)
    rig.fake.fault(CREATE, "timeout", when="after")
    rig.step(1)
    coid = last_order(rig)
    assert rig.fake.creates()[coid] == 1
    assert events(rig, coid)[:3] == ["submitted", "sending", "ambiguous"] and statuses(rig)[coid] == "filled"
    scenario(rig)


@pytest.mark.parametrize("status", [502, 504, 503])
def test_5xx_before_processing_is_unclear_looked_up_and_sent_again_with_the_same_id(rig, status):
    rig.open()
    rig.step(2)
    rig.fake.fault(CREATE, status, when="before")
    rig.step(1)
    coid = last_order(rig)
    assert rig.fake.creates()[coid] == 1 and statuses(rig)[coid] == "filled"
    assert rig.rows("SELECT attempts FROM orders WHERE client_order_id = ?", coid) == [(2,)]
    assert "ambiguous" in events(rig, coid)
    scenario(rig)


def test_500_after_processing_is_not_a_rejection(rig):
    rig.open()
    rig.step(2)
    rig.fake.fault(CREATE, 500, when="after")
    rig.step(1)
    coid = last_order(rig)
    assert rig.fake.creates()[coid] == 1 and statuses(rig)[coid] == "filled"
    assert rig.rows("SELECT attempts FROM orders WHERE client_order_id = ?", coid) == [(1,)]  # found, not resent
    scenario(rig)


def test_rate_limit_10006_backs_off_and_resends_the_same_id(rig):
    rig.open()
    rig.step(2)
    rig.fake.fault(CREATE, ("ret", 10006), when="before", times=2)
    rig.step(1)
    coid = last_order(rig)
    assert rig.fake.creates()[coid] == 1 and statuses(rig)[coid] == "filled"
    assert rig.rows("SELECT attempts FROM orders WHERE client_order_id = ?", coid) == [(3,)]
    scenario(rig)


def test_an_ip_ban_403_pauses_sending_and_halts_with_the_reason(rig):
    rig.open()
    rig.step(2)
    rig.fake.fault(CREATE, 403, when="before")
    rig.step(1)
    coid = last_order(rig)
    assert coid not in rig.fake.creates() and statuses(rig)[coid] == "ambiguous"
    halted, reason = rig.rows("SELECT halted, halt_reason FROM daemons")[0]
    assert halted == 1 and "403" in reason
    rig.daemon.broker.paused_until = 0  # the ban lifted
    rig.step(1)  # the ambiguous order is looked up, not found, sent again with its id; halted: nothing new
    assert rig.fake.creates()[coid] == 1 and statuses(rig)[coid] == "filled"
    assert len(rig.fake.creates()) == 3
    scenario(rig)


def test_a_duplicate_id_answer_after_a_lost_ack_is_adopted(rig):
    rig.open()
    rig.step(2)
    rig.fake.fault(CREATE, "timeout", when="after")
    # The look-up right after misses it (as Bybit's lists can lag a create): it is sent again, same id.
    rig.fake.fault("/v5/order/realtime", ("ret", 110001, "Order does not exist"), when="before")
    rig.fake.fault("/v5/order/history", ("ret", 110001, "Order does not exist"), when="before")
    rig.step(1)
    coid = last_order(rig)
    assert rig.fake.creates()[coid] == 1  # the second send was answered "duplicate" and the order adopted
    assert rig.rows("SELECT attempts FROM orders WHERE client_order_id = ?", coid) == [(2,)]
    assert events(rig, coid).count("ambiguous") == 2 and statuses(rig)[coid] == "filled"
    assert any("110072" in (d or "") for (d,) in rig.rows(
        "SELECT detail FROM order_events WHERE client_order_id = ? AND status = 'ambiguous'", coid))
    scenario(rig)


def test_a_clock_outside_the_receive_window_resyncs_and_resends(rig):
    rig.open()
    rig.step(2)
    rig.fake.skew_clock(30_000)  # the exchange's clock runs 30 s ahead: our signatures are too old
    rig.step(1)
    coid = last_order(rig)
    assert rig.fake.creates()[coid] == 1 and statuses(rig)[coid] == "filled"
    scenario(rig)


def test_partial_fills_are_one_fill_per_execution(tmp_path):
    rig = LiveRig(tmp_path)
    try:
        rig.open()
        rig.fake.partial_fills(1.0, seed=1)
        rig.step(3)
        rig.fake.partial_fills(0.0)
        fills = rig.rows("SELECT client_order_id, count(*), sum(quantity) FROM fills GROUP BY client_order_id")
        orders = dict(rig.rows("SELECT client_order_id, quantity FROM orders"))
        assert any(total < orders[c] for c, _, total in fills)
        assert "cancelled" in set(statuses(rig).values())  # the rest of an IOC market order is cancelled
        scenario(rig)
    finally:
        rig.stop()


def test_limit_orders_rest_fill_later_and_are_cancelled_from_either_side(tmp_path):
    rig = LiveRig(tmp_path, settings=["strategies.churn.limit_every=1", "strategies.churn.limit_offset=0.02"])
    try:
        rig.open()
        rig.step(1)
        coid = last_order(rig)
        assert statuses(rig)[coid] == "accepted"  # resting 2% under the close
        rig.fake.cancel_from_exchange(coid)
        rig.step(1)  # the exchange's cancel is learnt; the strategy places the next one
        assert statuses(rig)[coid] == "cancelled"
        second = last_order(rig)
        rig.step(1)  # the strategy cancels its own resting order first
        assert statuses(rig)[second] == "cancelled" and "cancel_pending" in events(rig, second)
        third = last_order(rig)
        rig.fake.fill(third)
        rig.step(1)
        assert statuses(rig)[third] == "filled"
        scenario(rig)
    finally:
        rig.stop()


def test_fills_while_the_daemon_is_stopped_are_ingested_at_the_next_start(tmp_path):
    rig = LiveRig(tmp_path, settings=["strategies.churn.limit_every=1", "strategies.churn.limit_offset=0.02"])
    try:
        rig.open()
        rig.step(1)
        coid = last_order(rig)
        rig.daemon.close("stopped")
        exec_id = rig.fake.fill(coid)
        rig.open()
        rig.step(0)
        rig.daemon.tick(rig.time.ms)
        assert statuses(rig)[coid] == "filled"
        assert rig.rows("SELECT count(*) FROM fills WHERE trade_id = ?", exec_id) == [(1,)]
        rig.check()
    finally:
        rig.stop()


def test_recent_closed_list_wiped_the_order_history_answers(rig):
    rig.open()
    rig.step(2)
    rig.fake.fault(CREATE, "timeout", when="after")
    rig.fake.wipe_recent_closed()
    rig.step(1)
    coid = last_order(rig)
    assert rig.fake.creates()[coid] == 1 and statuses(rig)[coid] == "filled"
    scenario(rig)


def test_an_external_open_order_halts_and_is_ignored_by_configuration(tmp_path):
    rig = LiveRig(tmp_path)
    try:
        rig.open()
        rig.step(2)
        rig.fake.external_order(SYMBOL_ID, "Buy", 0.01, order_type="Limit", price=1000.0)
        rig.daemon.reconcile()
        halted, reason = rig.rows("SELECT halted, halt_reason FROM daemons")[0]
        assert halted == 1 and "someone else" in reason
        assert rig.rows("SELECT kind, action FROM reconciliations") == [("external_order", "halted")]
        creates = len(rig.fake.creates())
        rig.step(2)
        assert len(rig.fake.creates()) == creates  # halted: nothing sent
        rig.check(open_orders_agree=False)
        rig.daemon.close("stopped")
        rig.settings.append('live.external_orders="ignore"')
        from engine.store.daemons import set_controls
        from engine.store.db import open_store

        store = open_store(f"sqlite:///{rig.db}")
        set_controls(store, 1, halted=0, halt_reason="")
        store.close()
        rig.open()
        rig.step(2)
        assert len(rig.fake.creates()) > creates
        rig.check(open_orders_agree=False)
    finally:
        rig.stop()


def test_a_position_changed_by_hand_halts_or_is_adopted_with_its_execution_id(tmp_path):
    rig = LiveRig(tmp_path, settings=["live.adopt=true"])
    try:
        rig.open()
        rig.step(2)
        rig.fake.external_order(SYMBOL_ID, "Buy", 0.05)  # someone bought on the same account
        rig.step(1)
        kinds = rig.rows("SELECT kind, action FROM reconciliations")
        assert ("external_execution", "adopted") in kinds
        assert rig.rows("SELECT halted FROM daemons") == [(0,)]
        scenario(rig)
    finally:
        rig.stop()


def test_a_position_changed_by_hand_halts_without_adopt(rig):
    rig.open()
    rig.step(2)
    rig.fake.external_order(SYMBOL_ID, "Sell", 0.05)
    rig.daemon.reconcile()
    assert rig.rows("SELECT halted FROM daemons") == [(1,)]
    assert ("external_execution", "halted") in rig.rows("SELECT kind, action FROM reconciliations")


def test_an_order_with_this_runs_prefix_unknown_to_the_store_halts(rig):
    rig.open()
    rig.step(1)
    tag = rig.daemon.reconciler.tag
    rig.fake.external_order(SYMBOL_ID, "Buy", 0.01, order_type="Limit", price=1000.0, order_link_id=f"{tag}-zzz-1")
    rig.daemon.reconcile()
    assert rig.rows("SELECT kind FROM reconciliations") == [("unknown_own_order",)]
    assert rig.rows("SELECT halted FROM daemons") == [(1,)]


def test_funding_comes_from_the_exchange_once(tmp_path):
    rig = LiveRig(tmp_path, bars=40, warmup=4, settings=["strategies.churn.fraction=0.2"])  # long over 08:00, 16:00
    try:
        rig.open()
        rig.step(30)  # crosses 08:00 and 16:00 with positions open on some of them
        funding = rig.rows("SELECT trade_id, amount FROM funding_payments")
        assert funding and all(t for t, _ in funding)
        scenario(rig)
        assert rig.rows("SELECT count(*), count(DISTINCT trade_id) FROM funding_payments")[0][0] == len(
            {t for (t,) in rig.rows("SELECT trade_id FROM funding_payments")})
    finally:
        rig.stop()


@pytest.mark.parametrize("point", ["intent_committed:2", "after_sending:2", "after_post:2", "fill_committed:2"])
def test_kill_9_at_a_named_crash_point_then_restart_loses_and_doubles_nothing(tmp_path, point, store_target):
    rig = LiveRig(tmp_path, store=store_target)
    try:
        env = {**os.environ, "BYBIT_API_KEY": KEY, "BYBIT_API_SECRET": SECRET, "ENGINE_CRASH_AT": point}
        assert run_cli(rig, env) == -signal.SIGKILL
        killed_at = rig.counts()
        rig.open()  # the same run resumed (in this process, for the checks): reconciled before it trades
        rig.step(0)
        rig.daemon.tick(rig.time.ms)
        rig.check()
        rig.step(3)
        rig.check()
        assert rig.counts()["orders"] > killed_at["orders"]
    finally:
        rig.stop()


def run_cli(rig: LiveRig, env: dict[str, str]) -> int:
    """``python -m engine live start --replay`` in a subprocess; its exit code (negative: killed)."""
    proc = subprocess.run(cli_argv(rig), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"live start failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.returncode


def cli_argv(rig: LiveRig) -> list[str]:
    argv = [sys.executable, "-m", "engine", "live", "start", "--replay", str(rig.csv), "--warmup", str(rig.warmup),
            "--symbol", SYMBOL, "--strategy", "churn"]
    for setting in rig.settings:
        argv += ["--set", setting]
    return argv


def test_two_daemons_at_once_the_second_is_refused(any_rig):
    rig = any_rig
    rig.open()
    rig.step(1)
    env = {**os.environ, "BYBIT_API_KEY": KEY, "BYBIT_API_SECRET": SECRET}
    proc = subprocess.run(cli_argv(rig), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "is already running" in proc.stderr, proc.stderr[-2000:]
    assert len(rig.fake.creates()) == 1  # the second sent nothing


def test_keys_come_from_the_environment_and_are_never_written(tmp_path):
    rig = LiveRig(tmp_path)
    try:
        with pytest.raises(Exception, match="BYBIT_API_KEY"):
            rig.open(env={})
        env = {**os.environ, "BYBIT_API_KEY": KEY, "BYBIT_API_SECRET": SECRET}
        rig.settings.append(f'logging.file="{tmp_path / "live.log"}"')
        run_cli(rig, env)
        written = [p for p in tmp_path.rglob("*") if p.is_file()]
        assert any(p.suffix == ".db" for p in written) and any(p.name == "live.log" for p in written)
        for path in written:
            blob = path.read_bytes()
            assert SECRET.encode() not in blob and KEY.encode() not in blob, f"a key was written to {path}"
    finally:
        rig.stop()


def test_live_status_shows_the_venue_and_the_reconciliation(tmp_path, capsys):
    from engine.cli import main

    rig = LiveRig(tmp_path)
    try:
        rig.open()
        rig.step(3)
        rig.daemon.close("stopped")
        capsys.readouterr()
        assert main(["live", "status", "--set", f'store.url="sqlite:///{rig.db}"', "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["venue"] == "demo" and status["last_reconciliation"] and status["state"] == "stopped"
        assert main(["live", "status", "--set", f'store.url="sqlite:///{rig.db}"']) == 0
        assert "Bybit demo" in capsys.readouterr().out
    finally:
        rig.stop()


def test_mainnet_needs_the_flag_the_limits_and_the_typed_account(tmp_path, capsys, monkeypatch):
    from engine.cli import main

    monkeypatch.setenv("BYBIT_API_KEY", KEY)
    monkeypatch.setenv("BYBIT_API_SECRET", SECRET)
    base = ["live", "start", "--set", f'store.url="sqlite:///{tmp_path / "m.db"}"', "--symbol", SYMBOL,
            "--timeframe", "1h", "--api-url", "http://127.0.0.1:9"]
    assert main([*base[:2], "--set", 'live.venue="mainnet"', *base[2:]]) == 2
    assert "--mainnet" in capsys.readouterr().err
    assert main([*base, "--mainnet"]) == 2
    assert "risk.max_daily_loss" in capsys.readouterr().err
    assert not (tmp_path / "m.db").exists()  # nothing was started or recorded


def test_mainnet_shows_the_account_and_limits_and_needs_its_id_typed(tmp_path, capsys, monkeypatch):
    from engine.cli import main

    rig = LiveRig(tmp_path, bars=12)
    try:
        monkeypatch.setenv("BYBIT_API_KEY", KEY)
        monkeypatch.setenv("BYBIT_API_SECRET", SECRET)
        argv = ["live", "start", "--mainnet", "--replay", str(rig.csv), "--symbol", SYMBOL, "--strategy", "churn",
                "--json", "--set", "risk.max_daily_loss=0.05", "--set", "risk.max_order_notional=5000",
                "--set", "risk.max_position_notional=5000"]
        for setting in rig.settings:
            argv += ["--set", setting]
        capsys.readouterr()
        assert main([*argv, "--confirm", "999"]) == 2  # the fake's account id is 1
        err = capsys.readouterr().err
        assert "MAINNET: real money. Account 1" in err and "order notional <= 5,000.00" in err
        assert "not the account id" in err and not rig.fake.creates()
        monkeypatch.setattr("sys.stdin.isatty", lambda: False)
        assert main(argv) == 2 and "--confirm ACCOUNT_ID" in capsys.readouterr().err
        assert main([*argv, "--confirm", "1"]) == 0
        assert json.loads(capsys.readouterr().out)["orders"] >= 5 and rig.fake.creates()
    finally:
        rig.stop()


def test_halt_with_flatten_cancels_on_the_exchange_and_closes_the_position(tmp_path):
    from engine.store.daemons import set_controls

    rig = LiveRig(tmp_path, settings=["strategies.churn.limit_every=2", "strategies.churn.limit_offset=0.05"])
    try:
        rig.open()
        for _ in range(4):  # until a market entry is held and a limit exit far away rests
            rig.step(1)
            if rig.fake.position(SYMBOL_ID) > 0 and [o for o in rig.fake.orders() if o["orderStatus"] == "New"]:
                break
        assert rig.fake.position(SYMBOL_ID) > 0
        assert [o for o in rig.fake.orders() if o["orderStatus"] == "New"]
        set_controls(rig.daemon.store, rig.daemon.run_pk, halted=1, halt_reason="by hand", flatten_requested=1)
        rig.daemon._controls_read = float("-inf")
        rig.step(1)
        assert rig.fake.position(SYMBOL_ID) == 0.0
        assert not [o for o in rig.fake.orders() if o["orderStatus"] == "New"]
        creates = len(rig.fake.creates())
        rig.step(2)
        assert len(rig.fake.creates()) == creates  # halted: nothing new
        rig.check()
    finally:
        rig.stop()


def test_sigterm_mid_run_finishes_the_step_records_stopped_and_resumes_cleanly(tmp_path):
    rig = LiveRig(tmp_path)
    try:
        env = {**os.environ, "BYBIT_API_KEY": KEY, "BYBIT_API_SECRET": SECRET}
        proc = subprocess.Popen([*cli_argv(rig), "--speed", "20"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while len(rig.fake.creates()) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]
        assert "stopped (SIGTERM)" in err
        assert rig.rows("SELECT state FROM daemons") == [("stopped",)]
        rig.open()
        rig.step(2)
        rig.check()
    finally:
        rig.stop()


def test_live_bars_from_the_exchange_a_missing_kline_is_a_counted_gap(tmp_path):
    """Without --replay the daemon reads closed klines from the exchange (the fake follows the wall
    clock here); a bar the exchange does not have is counted, never invented, and nothing trades on it."""
    from engine.testing.fake_bybit import FakeBybit
    from engine.timeutil import MS_PER_HOUR

    now = int(time.time() * 1000)
    last_open = now // MS_PER_HOUR * MS_PER_HOUR - MS_PER_HOUR  # the newest closed bar
    with FakeBybit(api_key=KEY, api_secret=SECRET, missing={last_open - MS_PER_HOUR}) as fake:
        db = tmp_path / "live.db"
        args = argparse.Namespace(command="live", replay=None, warmup=40, new=False, mainnet=False, testnet=False,
                                  api_url=None, confirm=None, speed="max", data=None, source=None)
        config = load_settings(ROOT / "config.toml", [
            f'store.url="sqlite:///{db}"', f'live.api_url="{fake.url}"', "live.rate_limit=false", "live.timeout_s=2",
            f'data.symbol="{SYMBOL}"', 'data.timeframe="1h"', 'run.strategy="churn"', 'logging.file=""',
            f'data.cache_dir="{tmp_path / "cache"}"', 'instrument.contract="linear_perp"',
            "instrument.max_leverage=5.0", "paper.settle_s=0"])
        daemon, _ = live_daemon(args, config, say=lambda line: None,
                                environ={"BYBIT_API_KEY": KEY, "BYBIT_API_SECRET": SECRET})
        daemon.open()
        try:
            report = daemon.tick()
            assert report.bars == 0  # the warm-up ended at the newest closed bar: nothing new has closed
            opens = [int(t) for t in daemon.spec.warmup.ts_open]
            assert last_open - MS_PER_HOUR not in opens and last_open in opens  # the hole is kept, not filled
            assert opens[-1] - opens[-2] == 2 * MS_PER_HOUR
            assert not fake.creates()
        finally:
            daemon.close("stopped")


def test_a_risk_limit_breach_halts_live_trading_with_the_reason(tmp_path):
    rig = LiveRig(tmp_path, settings=["risk.max_order_notional=1000", "strategies.churn.fraction=0.15"])
    try:
        rig.open()
        rig.step(3)
        assert not rig.fake.creates()  # 15% of 10,000 is over the limit: refused before it was sent
        rejected = rig.rows("SELECT reject_reason FROM orders WHERE status = 'rejected'")
        assert rejected and "risk.max_order_notional" in rejected[0][0]
        halted, reason = rig.rows("SELECT halted, halt_reason FROM daemons")[0]
        assert halted == 1 and reason.startswith("risk limit: ")
        rig.check()
    finally:
        rig.stop()
