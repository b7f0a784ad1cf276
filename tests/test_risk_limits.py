"""Risk limits ([risk], ``engine.risk.RiskLimits``): each limit breached in a backtest, the reasons a
person reads, the halt that blocks growing a position and lets a close through, orders per minute
in event time, the daily loss over a UTC day boundary, the config checks, the CLI, and runs without
limits exactly as they were."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.backtest import backtest_parts, drive, run_backtest
from engine.cli import main
from engine.clock import WallClock
from engine.config import Config, RiskConfig
from engine.costs import CostModels
from engine.domain import Order, OrderType, Side
from engine.errors import ConfigError
from engine.funding import NoFunding
from engine.history import BarHistory
from engine.kernel import Parts, assemble
from engine.portfolio import Portfolio
from engine.risk import RiskLimits
from engine.session import load_settings
from engine.timeutil import MS_PER_DAY, MS_PER_HOUR, MS_PER_SECOND
from tests.helpers import T0, Scripted, candles, instrument

ROOT = Path(__file__).resolve().parents[1]
FLAT = (100.0, 101.0, 99.0, 100.0)  # a bar that reaches neither a limit at 50 nor one at 90


def backtest(rows, actions, risk: RiskConfig, *, timeframe_ms: int = MS_PER_HOUR, cash: float = 10_000.0):
    strategy = Scripted(actions)
    inst = instrument()
    result = run_backtest(strategy, [candles(rows, timeframe_ms=timeframe_ms)], {inst.symbol: inst},
                          starting_cash=cash, costs=CostModels(), check_invariants=True, risk=risk)
    return result, strategy


def rejected(strategy: Scripted) -> list[str]:
    return [event.reason for kind, event in strategy.seen if kind == "rejected"]  # type: ignore[attr-defined]


def filled(strategy: Scripted) -> list[float]:
    return [event.quantity * event.side for kind, event in strategy.seen if kind == "fill"]  # type: ignore[attr-defined]


# -- each limit in a backtest -------------------------------------------------------------------
def test_order_notional_over_the_limit_is_rejected_and_halts():
    result, strategy = backtest([FLAT] * 4, {0: lambda ctx: ctx.market("TEST", 60),
                                             1: lambda ctx: ctx.market("TEST", 10)},
                                RiskConfig(max_order_notional=5_000))
    reason = ("risk.max_order_notional: order notional 6,000.00 USDT (TEST 60 x 100.00) exceeds the limit "
              "5,000.00")
    assert rejected(strategy) == [reason, f"risk halt: {reason}"]  # the small order after it is halted too
    assert result.fills == () and len(result.rejections) == 2
    assert result.risk_halts == ((T0 + MS_PER_HOUR, reason),)
    assert result.summary()["risk_halts"] == [{"time": "2024-01-01T01:00:00Z", "reason": reason}]


def test_a_halt_blocks_growing_a_position_and_lets_reducing_and_closing_through():
    rows = [FLAT] * 3 + [(400.0, 401.0, 399.0, 400.0)] * 4  # the price quadruples: 20 held are worth 8,000
    actions = {
        0: lambda ctx: ctx.market("TEST", 20),  # 2,000: within the limit
        1: lambda ctx: ctx.market("TEST", 60),  # 6,000: rejected, halts
        2: lambda ctx: (ctx.market("TEST", 1), ctx.market("TEST", -100)),  # grows; flips to short: both halted
        3: lambda ctx: ctx.market("TEST", -5),  # reduces: passes
        4: lambda ctx: ctx.close("TEST"),  # 15 x 400 = 6,000 over the order limit, but it closes: passes
    }
    result, strategy = backtest(rows, actions, RiskConfig(max_order_notional=5_000))
    breach = "risk.max_order_notional: order notional 6,000.00 USDT (TEST 60 x 100.00) exceeds the limit 5,000.00"
    assert rejected(strategy) == [breach, f"risk halt: {breach}", f"risk halt: {breach}"]
    assert filled(strategy) == [20, -5, -15]
    assert result.final_equity == pytest.approx(10_000 + 20 * 300)
    assert [ts for ts, _ in result.risk_halts] == [T0 + 2 * MS_PER_HOUR]


def test_position_notional_counts_open_orders_on_the_same_side():
    limit = RiskConfig(max_position_notional=4_500)
    alone, s1 = backtest([FLAT] * 3, {0: lambda ctx: ctx.market("TEST", 20)}, limit)
    assert filled(s1) == [20] and alone.risk_halts == ()
    # 30 resting at 90 (2,700 at its own price) pass; then 20 at market: 30 + 20 = 50 x 100 = 5,000.
    result, s2 = backtest([FLAT] * 3, {0: lambda ctx: (ctx.limit("TEST", 30, 90.0), ctx.market("TEST", 20))}, limit)
    reason = ("risk.max_position_notional: position notional 5,000.00 USDT if the order filled (TEST 50 x 100.00, "
              "open orders included) exceeds the limit 4,500.00")
    assert rejected(s2) == [reason]
    assert result.risk_halts == ((T0 + MS_PER_HOUR, reason),)


def test_orders_per_minute_count_the_trailing_60_seconds_of_event_time():
    def orders(n: int):
        return lambda ctx: [ctx.limit("TEST", 1, 50.0) for _ in range(n)]  # resting: never filled

    # 30-second bars: closes at 30 s, 60 s, 90 s, 120 s. At 90 s the orders sent at 30 s are 60 s old: out.
    result, strategy = backtest([FLAT] * 4, {0: orders(2), 1: orders(1), 2: orders(3), 3: orders(1)},
                                RiskConfig(max_orders_per_minute=3), timeframe_ms=30 * MS_PER_SECOND)
    reason = ("risk.max_orders_per_minute: this would be order 4 sent in the last 60 s of event time, over the "
              "limit 3")
    assert len(result.orders) == 7
    assert rejected(strategy) == [reason, f"risk halt: {reason}"]
    assert result.risk_halts == ((T0 + 90 * MS_PER_SECOND, reason),)


def _losing_day():
    """50 bought at 100; the close falls to 88 at bar 5 (equity 9,400: 6% below the day's 10,000).
    Bar 23 closes at 00:00 of the next UTC day."""
    rows = [FLAT] * 5 + [(100.0, 100.0, 88.0, 88.0)] + [(88.0, 89.0, 87.0, 88.0)] * 20
    actions = {0: lambda ctx: ctx.market("TEST", 50),
               5: lambda ctx: ctx.market("TEST", 1),  # decided at the close that breached: halted
               6: lambda ctx: ctx.market("TEST", -10),  # reduces: passes
               22: lambda ctx: ctx.market("TEST", 1),  # still the first day: halted
               23: lambda ctx: ctx.market("TEST", 1)}  # the next UTC day: a backtest has cleared the halt
    return rows, actions


@pytest.mark.parametrize(("risk", "reason"), [
    (RiskConfig(max_daily_loss=0.05), "risk.max_daily_loss: equity 9,400.00 USDT is 600.00 (6.00%) below the "
                                      "day's start 10,000.00, at or over the limit 5.00%"),
    (RiskConfig(max_daily_loss_abs=500), "risk.max_daily_loss_abs: equity 9,400.00 USDT is 600.00 below the "
                                         "day's start 10,000.00, at or over the limit 500.00"),
])
def test_daily_loss_halts_until_the_next_utc_day_in_a_backtest(risk, reason):
    rows, actions = _losing_day()
    result, strategy = backtest(rows, actions, risk)
    assert rejected(strategy) == [f"risk halt: {reason}"] * 2
    assert filled(strategy) == [50, -10, 1]
    assert result.risk_halts == ((T0 + 6 * MS_PER_HOUR, reason),)


def test_the_next_days_loss_is_measured_from_the_last_close_before_it():
    rows, actions = _losing_day()
    inst = instrument()
    series = candles(rows)
    kernel = assemble("backtest", backtest_parts([series], {"TEST": inst}, CostModels()), strategy=Scripted(actions),
                      instruments={"TEST": inst}, costs=CostModels(), starting_cash=10_000.0, run_id="risk",
                      risk=RiskLimits(RiskConfig(max_daily_loss=0.05), clear_next_day=True))
    heard: list[str | None] = []
    assert kernel.risk is kernel.ctx.risk is not None
    kernel.risk.on_halt = heard.append  # how a daemon hears of halts (and of their clearing)
    kernel.ctx.time = kernel.clock.now()
    kernel.start()
    drive(kernel, [series], [])
    kernel.stop()
    assert heard == [kernel.risk.halts[0][1], None]  # halted at bar 5, cleared by the next day's first close
    assert kernel.risk.day_start_ms == T0 + MS_PER_DAY
    assert kernel.risk.day_start_equity == pytest.approx(5_000 + 880 + 40 * 88)  # marked at 23:00, the day before


# -- the limits outside a backtest ----------------------------------------------------------------
def test_in_paper_and_live_a_halt_lasts_until_a_person_clears_it():
    heard: list[str | None] = []
    limits = RiskLimits(RiskConfig(max_daily_loss=0.05), currency="USDT", on_halt=heard.append)
    portfolio, inst = Portfolio(10_000.0), instrument()
    limits.start_day(T0, 10_000.0)
    limits.mark(T0 + MS_PER_HOUR, 9_000.0)
    assert limits.halted is not None and limits.halted.startswith("risk.max_daily_loss: equity 9,000.00 USDT")
    tomorrow = T0 + MS_PER_DAY + MS_PER_HOUR
    limits.mark(tomorrow, 9_000.0)
    assert limits.check(inst, 1.0, 100.0, portfolio, [], tomorrow) == f"risk halt: {heard[0]}"
    limits.clear()
    assert limits.halted is None and heard == [heard[0], None]
    assert limits.check(inst, 1.0, 100.0, portfolio, [], tomorrow) is None


def test_only_a_backtest_lifts_a_halt_by_itself():
    parts = Parts(clock=WallClock(), histories={"TEST": BarHistory("TEST", MS_PER_HOUR)},
                  broker=lambda portfolio, emit, clock: None, funding=NoFunding())  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="a person clears it"):
        assemble("paper", parts, strategy=Scripted(), instruments={"TEST": instrument()}, costs=CostModels(),
                 starting_cash=1.0, run_id="p", risk=RiskLimits(RiskConfig(max_daily_loss=0.05), clear_next_day=True))


def test_what_counts_as_reducing_includes_the_other_closing_orders_and_passes_any_limit():
    limits = RiskLimits(RiskConfig(max_orders_per_minute=2, max_order_notional=500))
    portfolio, inst = Portfolio(10_000.0), instrument()
    portfolio.position("TEST").quantity = 10.0
    assert limits.check(inst, 1.0, 100.0, portfolio, [], T0) is None
    assert limits.check(inst, 1.0, 100.0, portfolio, [], T0) is None
    assert limits.check(inst, 1.0, 100.0, portfolio, [], T0).startswith("risk.max_orders_per_minute: this would be order 3")
    assert limits.check(inst, -8.0, 100.0, portfolio, [], T0) is None  # 800 over the order limit, 3rd this minute: reduces
    working = [Order("c1", "TEST", Side.SELL, OrderType.LIMIT, 8.0, T0, limit_price=120.0)]
    assert limits.check(inst, -2.0, 100.0, portfolio, working, T0) is None  # 8 + 2 <= 10 held
    assert limits.check(inst, -3.0, 100.0, portfolio, working, T0).startswith("risk halt: ")  # 8 + 3 > 10: would short
    assert limits.check(inst, -2.0, 100.0, portfolio, working, T0 + 61 * MS_PER_SECOND) is None


def test_an_order_before_the_first_bar_cannot_be_valued_and_is_rejected_without_a_halt():
    limits = RiskLimits(RiskConfig(max_order_notional=1_000))
    reason = limits.check(instrument(), 1.0, None, Portfolio(10_000.0), [], T0)
    assert reason == "risk.max_order_notional: TEST has no price yet to value the order (no bar has closed)"
    assert limits.halted is None


# -- configuration --------------------------------------------------------------------------------
def test_the_shipped_risk_section_sets_no_limit():
    config = load_settings(ROOT / "config.toml")
    assert config.risk == RiskConfig() == Config().risk
    assert not config.risk.any


@pytest.mark.parametrize(("override", "message"), [
    ("risk.max_order_notional=inf", "[risk] max_order_notional must be a finite number in [0, 1e+12]"),
    ("risk.max_position_notional=nan", "[risk] max_position_notional must be a finite number"),
    ("risk.max_daily_loss_abs=-1", "[risk] max_daily_loss_abs must be a finite number in [0, 1e+12]"),
    ("risk.max_order_notional=1e13", "max_order_notional must be a finite number in [0, 1e+12]"),
    ("risk.max_daily_loss=1.5", "[risk] max_daily_loss is a fraction of the day's starting equity in [0, 1]"),
    ("risk.max_daily_loss=-0.05", "[risk] max_daily_loss is a fraction"),
    ("risk.max_orders_per_minute=-1", "[risk] max_orders_per_minute must be in [0, 10000]"),
    ("risk.max_orders_per_minute=2.5", "risk.max_orders_per_minute = 2.5: expected an integer"),
    ("risk.max_order_notionl=5", "unknown key 'risk.max_order_notionl' (did you mean 'risk.max_order_notional'?)"),
    ("risk.max_daily_loss=\"5%\"", "risk.max_daily_loss = '5%': expected a number"),
])
def test_bad_risk_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_settings(ROOT / "config.toml", [override])
    assert message in str(info.value)


# -- the command line -----------------------------------------------------------------------------
def test_set_risk_through_the_command_line():
    out = subprocess.run([sys.executable, "-m", "engine", "backtest", "--strategy", "sma_cross", "--json",
                          "--set", "risk.max_order_notional=5000", "--set", "store.enabled=false",
                          "--set", 'logging.file=""'],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    summary = json.loads(out)
    assert summary["fills"] == 0 and summary["rejected_orders"] == summary["orders"] > 0
    halts = summary["risk_halts"]
    assert halts and all(h["reason"].startswith("risk.max_order_notional: order notional ") for h in halts)
    assert halts[0]["time"].endswith("Z")


def _summary(capsys, config: Path) -> str:
    assert main(["backtest", "--json", "--config", str(config), "--set", "store.enabled=false"]) == 0
    summary = json.loads(capsys.readouterr().out)
    for volatile in ("run_id", "bars_per_second", "elapsed_seconds"):
        summary.pop(volatile)
    return json.dumps(summary, sort_keys=False)


def test_without_limits_a_run_is_byte_identical(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    base = '[run]\nstrategy = "sma_cross"\n[costs]\nslippage_bps = 2.0\n'
    variants = {
        "no_section": base,
        "empty": base + "[risk]\n",
        "zeros": base + "[risk]\nmax_order_notional = 0.0\nmax_position_notional = 0.0\nmax_daily_loss = 0.0\n"
                        "max_daily_loss_abs = 0.0\nmax_orders_per_minute = 0\n",
        # every limit set, none ever reached: the checks run and change nothing
        "unreached": base + "[risk]\nmax_order_notional = 1e9\nmax_position_notional = 1e9\nmax_daily_loss = 0.99\n"
                            "max_daily_loss_abs = 1e9\nmax_orders_per_minute = 10000\n",
    }
    texts = {}
    for name, text in variants.items():
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        texts[name] = _summary(capsys, path)
    assert len(set(texts.values())) == 1, texts
    assert "risk_halts" not in texts["no_section"]


def test_the_report_lists_the_halts(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    assert main(["backtest", "--json", "--strategy", "sma_cross", "--report", "--set", "risk.max_daily_loss=0.02",
                 "--set", f'store.reports_dir="{tmp_path}"', "--set", "sample.bars=400"]) == 0
    summary = json.loads(capsys.readouterr().out)
    page = Path(summary["report"]).read_text(encoding="utf-8")
    assert summary["risk_halts"] and "<h3>Risk halts</h3>" in page
    assert "risk.max_daily_loss: equity" in page
