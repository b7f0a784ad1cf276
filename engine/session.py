"""Turns a checked ``Config`` into everything a backtest needs: data, instruments, costs and the
strategy. The CLI, the cross-check and the tests share it, so they all run the same thing."""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine.backtest import BacktestResult
from engine.config import Config, build, load_config
from engine.costs import ConstantFunding, CostModels, FixedBps, FundingModel, InstrumentFees
from engine.domain import ContractType, Instrument, News
from engine.errors import ConfigError, DataError
from engine.plan import BacktestPlan
from engine.series import BarSeries
from engine.timeutil import iso, parse_instant, parse_timeframe

log = logging.getLogger("engine")


def prepare_backtest(config: Config, *, progress: bool = False, say: Callable[[str], None] | None = None,
                     prepare: bool = True, online: bool = False, oracle: bool = False) -> BacktestPlan:
    """Everything a backtest of ``config`` needs, then the strategy's own preparation
    (``Strategy.prepare``: the LLM strategy trains or reuses its predictor there), reporting each
    stage to ``say`` and, with ``progress``, drawing progress bars; ``prepare=False`` leaves that to
    the caller (the walk-forward prepares per fold). ``oracle`` (``backtest --oracle``): the LLM
    strategy's upper bound on the synthetic sample, from the true headline tones."""
    from engine.feeds.market_data import bar_quality, remote_market

    notes: list[str] = []
    remote = remote_market(config, notes)  # None unless data.source is "yfinance" or "bybit" (cache + fetch)
    if remote is None:
        series, news, label = _load_market(config, notes)
    else:
        series, label = remote.series, remote.label
        news = _load_news(config, series.symbol, notes) if config.data.news else []
    series = bar_quality(_slice(series, config), config, notes)  # reported; data.quality_policy, gap_policy applied
    instrument = remote.instrument if remote is not None and remote.instrument else make_instrument(config, series.symbol)
    costs = make_costs(config)
    if remote is not None and remote.funding is not None:
        costs = dataclasses.replace(costs, funding=remote.funding)
    plan = BacktestPlan(
        config=config, series=[series], news=news, instruments={series.symbol: instrument},
        costs=costs, make_strategy=strategy_factory(config), data_label=label, notes=notes,
        strategy_name=strategy_class(config).name,
    )
    if oracle and not strategy_class(config).has_oracle:
        from strategies import STRATEGIES

        able = ", ".join(name for name, cls in STRATEGIES.items() if cls.has_oracle)
        raise ConfigError(f"--oracle is an upper bound from the sample market's true headline tones, and "
                          f"run.strategy {plan.strategy_name!r} has no oracle signal source (add --strategy with "
                          f"one that has: {able})")
    if prepare:
        options = {"oracle": True} if oracle else {}
        plan = strategy_class(config).prepare(plan, progress=progress, say=say, online=online, **options)
    return plan


def run_recorded(plan: BacktestPlan, *, progress: bool = False, crosscheck: str | None = None,
                 report: bool = False) -> tuple[BacktestResult, dict[str, Any]]:
    """Run ``plan``, recording it in the store when its ``store.enabled`` (a failed run is marked so);
    the result and its summary (with ``report``: the report written, its path under "report")."""
    config = plan.config
    recording = None
    if config.store.enabled:  # the run's row exists (status "running") before its first event
        from engine.store.commands import open_recording

        recording = open_recording(config, plan)
    try:
        result = plan.run(progress=progress, journal=recording and recording.journal,
                          run_id=recording and recording.run_id)
        summary = result.summary()
        summary.update(plan.describe())
        summary["database"] = recording and recording.database
        if crosscheck:
            from engine.crosscheck import crosscheck_backtrader

            summary["crosscheck"] = crosscheck_backtrader(plan, result).as_dict()
    except BaseException as exc:
        if recording is not None:
            recording.fail(exc)
        raise
    if recording is not None:
        recording.complete(summary)
    if report and recording is not None:
        from engine.store.commands import write_run_report

        summary["report"] = str(write_run_report(config, result.run_id))
    log.info("run %s finished: %s", result.run_id, json.dumps(
        {k: summary[k] for k in ("bars", "fills", "final_equity")}))
    return result, summary


def load_settings(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """``load_config`` with the sections the strategies bring (``Strategy.sections``, e.g. ``[llm]``)."""
    from strategies import config_sections

    return load_config(path, overrides, sections=config_sections())


def strategy_class(config: Config) -> Any:
    from strategies import DEFAULT_STRATEGY, get_strategy

    try:
        return get_strategy(config.run.strategy or DEFAULT_STRATEGY)
    except KeyError as exc:
        raise ConfigError(f"run.strategy: {exc.args[0]}") from None


def strategy_factory(config: Config) -> Callable[[], Any]:
    """Check the chosen strategy and every ``[strategies.*]`` table now, build instances later."""
    from strategies import STRATEGIES

    for name in config.strategies:
        if name not in STRATEGIES:
            close = difflib.get_close_matches(name, STRATEGIES, n=1)
            hint = f" (did you mean 'strategies.{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown strategy table 'strategies.{name}'{hint}; strategies: {', '.join(STRATEGIES)}")
    cls = strategy_class(config)
    params = build(cls.Params, config.strategies.get(cls.name, {}), where="config", path=f"strategies.{cls.name}")
    return lambda: cls(params)


def make_instrument(config: Config, symbol: str) -> Instrument:
    ic, cc = config.instrument, config.costs
    contract = ContractType(ic.contract)
    maker, taker = cc.fee_rates(contract)
    return Instrument(
        symbol=symbol, contract=contract, tick_size=ic.tick_size, lot_step=ic.lot_step,
        min_quantity=ic.min_quantity, min_notional=ic.min_notional,
        maker_fee=maker, taker_fee=taker,
        max_leverage=ic.max_leverage,
    )


def make_costs(config: Config) -> CostModels:
    cc = config.costs
    funding: FundingModel = ConstantFunding(cc.funding_rate)
    if cc.funding_file:
        from engine.feeds.funding_files import load_funding

        funding = load_funding(cc.funding_file)
    return CostModels(fees=InstrumentFees(), spread=FixedBps(cc.half_spread_bps), slippage=FixedBps(cc.slippage_bps),
                      funding=funding)


def _load_market(config: Config, notes: list[str]) -> tuple[BarSeries, list[News], str]:
    data = config.data
    timeframe_ms = _timeframe(data.timeframe)
    if not data.bars:
        from engine.feeds.sample import generate_sample_market

        try:
            market = generate_sample_market(config.sample)
        except ValueError as exc:
            raise ConfigError(f"[sample] {exc}") from None
        notes.append(f"data: SYNTHETIC sample market (seed {config.sample.seed}, {config.sample.bars} bars of "
                     f"{config.sample.timeframe}, {len(market.news)} synthetic headlines); pass --data for real bars")
        news = list(market.news)
        if data.news:
            news = _load_news(config, market.bars.symbol, notes)
        return market.bars, news, f"synthetic:seed={config.sample.seed}"
    from engine.feeds.bar_files import load_bars

    loaded = load_bars(data.bars, symbol=data.symbol or None, timeframe_ms=timeframe_ms,
                       drop_bad_rows=data.drop_bad_rows, adjusted=data.adjusted)
    if loaded.dropped_rows:
        notes.append(f"data: dropped {loaded.dropped_rows} malformed rows from {data.bars} "
                     f"(first: {loaded.problems[0]})")
    news = _load_news(config, loaded.series.symbol, notes) if data.news else []
    return loaded.series, news, str(data.bars)


def _load_news(config: Config, symbol: str, notes: list[str]) -> list[News]:
    from engine.feeds.news_files import load_news

    loaded = load_news(config.data.news, symbol=None, tz=config.data.news_timezone)
    # Headlines about another asset are not this run's; market-wide ones (symbol None) are kept.
    items = [n if n.symbol is not None else News(n.ts_event, n.headline, symbol, n.source) for n in loaded.items
             if n.symbol in (None, symbol)]
    notes.append(f"news: {len(items)} headlines from {config.data.news} "
                 f"({loaded.duplicates_removed} duplicates removed, {loaded.empty_rows_skipped} empty rows skipped)")
    return items


def _timeframe(text: str) -> int | None:
    if not text:
        return None
    try:
        return parse_timeframe(text)
    except ValueError as exc:
        raise ConfigError(f"data.timeframe: {exc}") from None


def _slice(series: BarSeries, config: Config) -> BarSeries:
    try:
        start = parse_instant(config.run.start) if config.run.start else None
        end = parse_instant(config.run.end) if config.run.end else None
    except ValueError as exc:
        raise ConfigError(f"run.start/run.end: {exc}") from None
    if start is not None and end is not None and end <= start:
        raise ConfigError(f"run.end ({config.run.end}) must be after run.start ({config.run.start})")
    sliced = series.between(start, end)
    if len(sliced) < 2:
        raise DataError(f"{Path(series.source).name or series.symbol}: only {len(sliced)} bars between "
                        f"{config.run.start or 'the start'} and {config.run.end or 'the end'} "
                        f"(the data covers {iso(int(series.ts_open[0]))} to {iso(int(series.ts_close[-1]))})")
    return sliced
