"""The backtrader cross-check: the same strategy code, run through backtrader's own execution and
accounting, must give the same trades and the same final equity to the cent, and a run outside the
subset backtrader can reproduce must be named as such rather than claimed as agreement."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from engine.cli import main
from engine.config import load_config
from engine.crosscheck import CrosscheckReport, crosscheck_backtrader
from engine.session import BacktestPlan, prepare_backtest
from strategies.base import Strategy

BTC = "ohlcv/crypto/binance_BTCUSDT_1h.csv"
NVDA = "ohlcv/equities_daily/backtrader_nvda-1999-2014.txt"
AAPL = "news/ticker_news_2022_2023/AAPL_daily.csv"
NO_SLIPPAGE = ("costs.slippage_bps=0", "costs.half_spread_bps=0")


def _plan(*overrides: str, bars: Path | None = None, strategy: str = "sma_cross") -> BacktestPlan:
    data = [f"data.bars={json.dumps(str(bars))}"] if bars is not None else []
    return prepare_backtest(load_config(None, [*data, f"run.strategy={json.dumps(strategy)}", *overrides]))


def _check(plan: BacktestPlan) -> CrosscheckReport:
    report = crosscheck_backtrader(plan, plan.run(check_invariants=True))
    json.dumps(report.as_dict(), allow_nan=False)  # what the CLI prints must be plain JSON
    return report


def _assert_agree(report: CrosscheckReport) -> None:
    assert report.agree, report.verdict
    assert report.verdict.startswith("agree to the cent"), report.verdict
    assert report.trades_ours == report.trades_backtrader and not report.first_mismatches
    assert report.rejections_ours == report.rejections_backtrader
    assert abs(report.final_equity_ours - report.final_equity_backtrader) < 0.005
    assert not report.unsupported


@pytest.mark.slow
def test_btc_hourly_sma_cross_with_default_costs_agrees_to_the_cent(shared_data):
    plan = _plan(bars=shared_data / BTC)
    assert len(plan.series[0]) == 33_412
    report = _check(plan)
    _assert_agree(report)
    assert report.trades_ours > 10


@pytest.mark.parametrize(("path", "strategy"), [(NVDA, "sma_cross"), (AAPL, "sma_cross"), (AAPL, "buy_and_hold")])
def test_market_orders_with_percent_fees_and_no_slippage_agree(shared_data, path, strategy):
    report = _check(_plan(*NO_SLIPPAGE, bars=shared_data / path, strategy=strategy))
    _assert_agree(report)
    assert report.trades_ours >= 1


class _NewsFlip(Strategy):
    """Goes half in on a headline when flat, out on the next one: orders decided between bar closes,
    sized from the equity and position of that moment."""

    name = "news_flip"

    def on_news(self, ctx, news) -> None:
        symbol = ctx.symbols[0]
        if ctx.bars_seen(symbol) == 0:
            return
        if ctx.position(symbol) == 0 and not ctx.open_orders(symbol):
            ctx.target_percent(symbol, 0.5)
        else:
            ctx.close(symbol)


class _LimitsAndStops(Strategy):
    """Enters with a resting limit buy, exits with a stop or a limit sell; cancels orders that rest
    for more than five bars."""

    name = "limits_and_stops"

    def on_start(self, ctx) -> None:
        self.waited = 0

    def on_bar(self, ctx, bar) -> None:
        symbol = bar.symbol
        resting = ctx.open_orders(symbol)
        if resting:
            self.waited += 1
            if self.waited > 5:
                for order in resting:
                    assert ctx.cancel(order.client_order_id)
            return
        self.waited = 0
        held = ctx.position(symbol)
        if held == 0:
            ctx.limit(symbol, ctx.equity * 0.9 / bar.close, bar.close * 0.995)
        elif (ctx.bars_seen(symbol) - 1) % 3:
            ctx.stop(symbol, -held, bar.close * 0.99)
        else:
            ctx.limit(symbol, -held, bar.close * 1.01)


@pytest.mark.parametrize("strategy", [_NewsFlip, _LimitsAndStops])
def test_news_decisions_limits_stops_and_cancels_replay_on_the_synthetic_market(strategy):
    plan = dataclasses.replace(_plan(*NO_SLIPPAGE), make_strategy=strategy)
    assert plan.news
    report = _check(plan)
    _assert_agree(report)
    assert report.trades_ours > 100


def test_limit_orders_with_slippage_are_named_unsupported():
    plan = dataclasses.replace(_plan(), make_strategy=_LimitsAndStops)
    report = _check(plan)
    assert not report.agree and report.verdict.startswith("UNSUPPORTED")
    assert any("limit orders" in reason for reason in report.unsupported)


@pytest.mark.parametrize("overrides", [
    ('instrument.contract="linear_perp"', "strategies.sma_cross.allow_short=true", "costs.funding_rate=0.0001"),
    ('run.fill_mode="close"',),
], ids=["perp-funding", "fill-mode-close"])
def test_unsupported_features_are_named_not_claimed_as_agreement(shared_data, overrides):
    report = _check(_plan(*overrides, 'run.end="2018-06-01"', bars=shared_data / BTC))
    assert not report.agree
    assert report.verdict.startswith("UNSUPPORTED"), report.verdict
    assert any(word in " ".join(report.unsupported) for word in ("funding", "fill_mode close"))


@pytest.mark.slow
def test_cli_crosscheck_prints_agreement_in_json(shared_data, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no config.toml here; the CLI's log file goes to tmp_path/logs
    code = main(["backtest", "--data", str(shared_data / BTC), "--strategy", "sma_cross", "--crosscheck",
                 "backtrader", "--json"])
    assert code == 0
    crosscheck = json.loads(capsys.readouterr().out)["crosscheck"]
    assert crosscheck["agree"] is True, crosscheck["verdict"]
    assert crosscheck["trades_ours"] == crosscheck["trades_backtrader"] > 10
