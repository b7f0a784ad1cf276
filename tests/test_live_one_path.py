"""One path: the same strategy on the same bars decides the same in a backtest, in the paper daemon
and live on the fake Bybit (``--replay`` drives the fake's clock), with faults off. The fake fills a
market order at the open of the bar after the decision, as the backtest does, charges Bybit's VIP0
perpetual fees, and settles funding at the configured rate, so with spread and slippage set to 0
the fills agree too. Where they may differ, and the test says so: live fills carry no
spread/slippage split (the exchange's price is what was paid), and the exchange rounds a fee to 8
decimals."""

from __future__ import annotations

import json
import sqlite3

import pytest

from engine.cli import main
from engine.testing.bars import random_walk, write_csv
from engine.testing.fake_bybit import FakeBybit

SYMBOL = "BTC/USDT:USDT"
KEY, SECRET = "one-path-key", "one-path-secret"


def orders_and_fills(db, run_id: str) -> tuple[list[tuple], list[tuple], list[tuple]]:
    conn = sqlite3.connect(db)
    try:
        pk = conn.execute("SELECT pk FROM runs WHERE run_id = ?", (run_id,)).fetchone()[0]
        orders = conn.execute("SELECT ts_init, side, type, quantity, status FROM orders WHERE run_pk = ? "
                              "ORDER BY ts_init, client_order_id", (pk,)).fetchall()
        fills = conn.execute("SELECT ts_event, side, quantity, price, fee FROM fills WHERE run_pk = ? "
                             "ORDER BY ts_event, id", (pk,)).fetchall()
        funding = conn.execute("SELECT ts_event, position_quantity, amount FROM funding_payments WHERE run_pk = ? "
                               "ORDER BY ts_event", (pk,)).fetchall()
    finally:
        conn.close()
    return orders, fills, funding


def test_live_on_the_fake_decides_and_fills_as_paper_and_the_backtest(tmp_path, capsys, monkeypatch):
    series = random_walk(400, symbol=SYMBOL, seed=11)
    csv = write_csv(series, tmp_path / "BTCUSDT_1h.csv")
    db = tmp_path / "runs.db"
    common = ["--strategy", "sma_cross", "--symbol", SYMBOL, "--json",
              "--set", f'store.url="sqlite:///{db}"', "--set", 'logging.file=""',
              "--set", "strategies.sma_cross.fast=5", "--set", "strategies.sma_cross.slow=20",
              "--set", "strategies.sma_cross.allow_short=true",
              "--set", 'instrument.contract="linear_perp"', "--set", "instrument.max_leverage=5.0",
              "--set", "instrument.tick_size=0.1", "--set", "instrument.lot_step=0.001",
              "--set", "instrument.min_quantity=0.001", "--set", "instrument.min_notional=5.0",
              "--set", "costs.slippage_bps=0", "--set", "costs.half_spread_bps=0", "--set", "costs.funding_rate=0.0001"]

    def run(*argv: str) -> dict:
        capsys.readouterr()
        code = main(list(argv))
        out = capsys.readouterr()
        assert code == 0, out.err[-3000:]
        return json.loads(out.out)

    backtest = run("backtest", "--data", str(csv), *common)
    paper = run("paper", "start", "--replay", str(csv), *common)
    with FakeBybit(bars={"BTCUSDT": series}, api_key=KEY, api_secret=SECRET, balance={"USDT": 10_000.0},
                   funding_rate=lambda ts: 0.0001) as fake:
        monkeypatch.setenv("BYBIT_API_KEY", KEY)
        monkeypatch.setenv("BYBIT_API_SECRET", SECRET)
        live = run("live", "start", "--replay", str(csv), "--api-url", fake.url, "--set", "live.rate_limit=false",
                   *common)
        assert all(n == 1 for n in fake.creates().values())
    assert backtest["fills"] > 10  # the comparison means something: the strategy traded, long and short

    b, p, lv = (orders_and_fills(db, r["run_id"]) for r in (backtest, paper, live))
    assert p == b  # paper is the backtest (tests/test_paper.py pins it on real data too)
    assert [o[:4] for o in lv[0]] == [o[:4] for o in b[0]]  # the same decisions: time, side, type, quantity
    assert len(lv[1]) == len(b[1])
    for live_fill, bt_fill in zip(lv[1], b[1]):
        assert live_fill[:4] == bt_fill[:4]  # time, side, quantity, price: the next bar's open
        assert live_fill[4] == pytest.approx(bt_fill[4], abs=1e-8)  # the exchange's fee, to its 8 decimals
    assert len(lv[2]) == len(b[2]) > 0 and [f[0] for f in lv[2]] == [f[0] for f in b[2]]  # the same settlements
    for live_pay, bt_pay in zip(lv[2], b[2]):  # on the same positions (the backtest's is a float sum of fills)
        assert live_pay[1:] == pytest.approx(bt_pay[1:], abs=1e-8)
    assert live["final_equity"] == pytest.approx(backtest["final_equity"], abs=1e-6)
