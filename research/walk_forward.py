"""Walk-forward evaluation of the LLM strategy: retrain on rolling windows, trade each following window.

Fold k covers bars ``[k x test, k x test + train + test)`` (``[llm.walk_forward]`` ``train_bars``
and ``test_bars``): both adapters are fine-tuned (or reused from the checkpoint cache) on its first
``train_bars`` bars exactly as a single ``llm_signal`` backtest trains on the part before its cut
(``strategies.llm_prepare.setup_llm``), then the strategy trades

- **out of sample** the fold's next ``test_bars`` bars, which no training saw, and
- **in sample** the last ``in_sample_bars`` of the fold's own training bars (default
  ``test_bars``, so both samples are the same length), with the same model.

The out-of-sample windows follow one another without overlap, so their compounded return is what
retraining every ``test_bars`` bars would have earned; the in-sample figures show how much of the
model's fit on its training data survives out of sample. A large gap means overfitting. Every
traded window is a recorded run of its own (``run_plan``), so ``report RUN_ID`` shows any of them.
A last, shorter fold trades what remains when at least 2 bars are left.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config import Config
from engine.errors import ConfigError
from engine.plan import BacktestPlan
from engine.timeutil import iso

if TYPE_CHECKING:
    from research.executors import Executor
    from strategies.llm_settings import WalkForwardSettings

RunPlan = Callable[[BacktestPlan, str], dict[str, Any]]
"""Runs (and records) a plan, returning its summary; the second argument labels it, e.g. "fold 2 out-of-sample"."""


@dataclass(frozen=True, slots=True)
class Fold:
    index: int
    start: int  # bar positions in the whole series: training bars [start, cut), traded [cut, end)
    cut: int
    end: int


def folds(n_bars: int, settings: WalkForwardSettings) -> list[Fold]:
    """The folds over ``n_bars`` bars; a ConfigError when not even one fits."""
    train, test = settings.train_bars, settings.test_bars
    if n_bars < train + 2:
        raise ConfigError(f"llm.walk_forward: a fold needs train_bars = {train:,} bars plus at least 2 to trade, "
                          f"but the data has {n_bars:,}; lower llm.walk_forward.train_bars or give more bars")
    out, start = [], 0
    while start + train + 2 <= n_bars:
        out.append(Fold(len(out), start, start + train, min(start + train + test, n_bars)))
        start += test
    if settings.max_folds:
        out = [dataclasses.replace(f, index=i) for i, f in enumerate(out[-settings.max_folds:])]
    return out


def check_walk_forward(config: Config) -> None:
    """Refuse, before any work, a strategy that has no predictor to retrain."""
    from strategies.llm_signal import LlmSignal

    if (config.run.strategy or None) != LlmSignal.name:
        raise ConfigError(f"--walk-forward retrains the LLM predictor on rolling windows; it needs --strategy "
                          f"{LlmSignal.name} (this run: {config.run.strategy})")


def run_walk_forward(plan: BacktestPlan, run_plan: RunPlan, *, progress: bool = False,
                     say: Callable[[str], None] | None = None, executor: Executor | None = None) -> dict[str, Any]:
    """Every fold's in-sample and out-of-sample runs and their totals (a JSON-able dict). The folds are
    independent of one another, so ``executor`` (``research.executors``; default: serial) may run them
    in parallel; the rows come back in fold order either way. On Ray each fold gets as many cores as
    torch uses here, so that it trains with the same threads and gives the same numbers as serially:
    a machine runs (its cores / that) folds at once."""
    from research.executors import SerialExecutor, torch_threads
    from strategies.llm_settings import llm_settings

    config = plan.config
    check_walk_forward(config)
    settings = llm_settings(config).walk_forward
    if len(plan.series) != 1:
        raise ConfigError("--walk-forward trades one series at a time")
    all_folds = folds(len(plan.series[0]), settings)
    ex = executor or SerialExecutor()
    task = partial(_run_fold, plan, run_plan, len(all_folds), progress and ex.name == "serial", say)
    rows = ex.map(task, all_folds, labels=[f"fold {f.index + 1}/{len(all_folds)}" for f in all_folds],
                  say=None if ex.name == "serial" else say, cpus=torch_threads())
    in_sample = settings.in_sample_bars or settings.test_bars
    return {"folds": rows, "settings": dataclasses.asdict(settings) | {"in_sample_bars": in_sample},
            "totals": {sample: _totals([r[sample] for r in rows]) for sample in ("in_sample", "out_of_sample")}}


def _run_fold(plan: BacktestPlan, run_plan: RunPlan, n_folds: int, progress: bool,
              say: Callable[[str], None] | None, fold: Fold) -> dict[str, Any]:
    """Train fold ``fold``'s adapters (or reuse them), then run its in-sample and out-of-sample windows."""
    from strategies.llm_prepare import llm_plan, setup_llm, translated_errors
    from strategies.llm_settings import llm_settings, with_llm
    from strategies.llm_signal import LlmSignal

    config = plan.config
    llm = llm_settings(config)
    series = plan.series[0]
    in_sample = llm.walk_forward.in_sample_bars or llm.walk_forward.test_bars
    lookback = llm.aggregation.news_lookback_ms
    label = f"fold {fold.index + 1}/{n_folds}"
    if say is not None:
        say(f"walk-forward {label}: train on bars {fold.start:,}..{fold.cut - 1:,}, trade {fold.cut:,}..{fold.end - 1:,}")
    end_ms = int(series.ts_open[fold.end]) if fold.end < len(series) else None
    window = series.between(int(series.ts_open[fold.start]), end_ms)
    fraction = (fold.cut - fold.start) / (fold.end - fold.start)
    fold_news = [n for n in plan.news if end_ms is None or n.ts_event < end_ms]
    fold_config = with_llm(config, train_fraction=fraction)
    fold_plan = dataclasses.replace(plan, config=fold_config, series=[window], news=fold_news)
    with translated_errors(config):
        setup = setup_llm(fold_plan, progress=progress, say=say)  # a fresh backbone: peft wraps it in place
        split = setup.split
        symbol = split.trade.symbol
        oos_source = setup.precompute()
        is_start = int(split.train.ts_open[max(0, len(split.train) - in_sample)])
        is_news = [n for n in split.train_news if n.ts_event >= is_start - lookback]  # with their context
        is_source = setup.precompute(start_ms=is_start, news=is_news, bars=split.train)
    is_delivered = [n for n in is_news if n.ts_event >= is_start]
    oos_plan = llm_plan(fold_plan, setup, partial(LlmSignal, setup.params, {symbol: oos_source}),
                        dict(oos_source.stats))
    is_series = split.train.between(is_start, None)
    is_plan = dataclasses.replace(
        oos_plan, series=[is_series], news=is_delivered,
        make_strategy=partial(LlmSignal, setup.params, {symbol: is_source}),
        notes=[*plan.notes, f"llm walk-forward {label}: IN SAMPLE, trading the last {len(is_series):,} bars "
                            "the adapters were trained on"],
        extra={**oos_plan.extra, "predictions": dict(is_source.stats),
               "trade_period": {**_span(is_series), "headlines": len(is_delivered)}})
    fold_info = {"fold": fold.index + 1, "of": n_folds}
    results = {}
    for sample, sub in (("in_sample", is_plan), ("out_of_sample", oos_plan)):
        sub = dataclasses.replace(sub, extra={**sub.extra, "walk_forward": {**fold_info, "sample": sample}})
        results[sample] = _row(run_plan(sub, f"walk-forward {label} {sample.replace('_', '-')}"))
    return {**fold_info, "train": _span(split.train), "in_sample": results["in_sample"],
            "out_of_sample": results["out_of_sample"], "checkpoints": setup.checkpoints, "seconds": setup.seconds}


def _span(series: Any) -> dict[str, Any]:
    return {"start": iso(int(series.ts_open[0])), "end": iso(int(series.ts_close[-1])), "bars": len(series)}


def _row(summary: dict[str, Any]) -> dict[str, Any]:
    m = summary["metrics"]
    return {"run_id": summary["run_id"], "start": summary.get("start"), "end": summary.get("end"),
            "bars": summary["bars"], "total_return": m["total_return"], "buy_and_hold_return": m["buy_and_hold_return"],
            "sharpe": m["sharpe"], "max_drawdown": m["max_drawdown"], "round_trips": m["round_trips"],
            "fills": summary["fills"], "costs": sum(summary[k] for k in ("fees", "spread", "slippage", "funding"))}


def _totals(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Compounded returns over the folds (contiguous out of sample), mean Sharpe, worst drawdown."""
    def compound(key: str) -> float:
        return math.prod(1.0 + r[key] for r in rows) - 1.0

    sharpes = [r["sharpe"] for r in rows if r["sharpe"] is not None and math.isfinite(r["sharpe"])]
    return {"folds": len(rows), "bars": sum(r["bars"] for r in rows), "compounded_return": compound("total_return"),
            "buy_and_hold_compounded": compound("buy_and_hold_return"),
            "mean_sharpe": sum(sharpes) / len(sharpes) if sharpes else None,
            "worst_drawdown": min((r["max_drawdown"] for r in rows), default=None),
            "folds_beating_buy_and_hold": sum(r["total_return"] > r["buy_and_hold_return"] for r in rows),
            "fills": sum(r["fills"] for r in rows)}


def format_walk_forward(result: dict[str, Any]) -> str:
    """The table printed by ``backtest --walk-forward``."""
    lines = [f"{'fold':>4}  {'trained on':<35} {'sample':<14} {'period':<35} {'return':>8} {'b&h':>8} "
             f"{'sharpe':>7} {'max dd':>7} {'fills':>5}"]
    for r in result["folds"]:
        trained = f"{r['train']['start'][:16]}..{r['train']['end'][:16]}"
        for sample in ("in_sample", "out_of_sample"):
            s = r[sample]
            lines.append(f"{r['fold']:>4}  {trained:<35} {sample.replace('_', '-'):<14} "
                         f"{(s['start'] or '')[:16] + '..' + (s['end'] or '')[:16]:<35} {_pct(s['total_return']):>8} "
                         f"{_pct(s['buy_and_hold_return']):>8} {_num(s['sharpe']):>7} {_pct(s['max_drawdown']):>7} "
                         f"{s['fills']:>5}")
            trained = ""
    lines.append("")
    for sample in ("in_sample", "out_of_sample"):
        t = result["totals"][sample]
        lines.append(f"{sample.replace('_', '-'):<14} {t['folds']} folds, {t['bars']:,} bars: compounded "
                     f"{_pct(t['compounded_return'])} vs buy & hold {_pct(t['buy_and_hold_compounded'])}; mean Sharpe "
                     f"{_num(t['mean_sharpe'])}; worst drawdown {_pct(t['worst_drawdown'])}; "
                     f"{t['folds_beating_buy_and_hold']} of {t['folds']} folds beat buy & hold")
    if "chart" in result:
        lines.append(f"chart: {result['chart']}")
    return "\n".join(lines)


def plot_walk_forward(result: dict[str, Any], path: Path) -> Path:
    """A bar chart of every fold's return in and out of sample beside buy & hold."""
    import numpy as np
    from matplotlib.figure import Figure

    from engine.report import charts

    rows = result["folds"]
    x = np.arange(len(rows))
    fig = Figure(figsize=(charts.WIDTH, 4.6), layout="constrained")
    ax = fig.subplots()
    width = 0.27
    ax.bar(x - width, [r["in_sample"]["total_return"] for r in rows], width, label="LLM in sample",
           color="#9ecae1")
    ax.bar(x, [r["out_of_sample"]["total_return"] for r in rows], width, label="LLM out of sample",
           color=charts.COLORS["strategy"])
    ax.bar(x + width, [r["out_of_sample"]["buy_and_hold_return"] for r in rows], width,
           label="buy & hold (out-of-sample window)", color=charts.COLORS["hold"])
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(x, [f"fold {r['fold']}\n{(r['out_of_sample']['start'] or '')[:10]}" for r in rows])
    ax.yaxis.set_major_formatter(charts.PERCENT)
    ax.set_ylabel("return of the window, net of costs")
    ax.set_title("Walk-forward: each fold's return in sample vs out of sample")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    return charts.save(fig, path)


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _num(x: Any) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.2f}"
