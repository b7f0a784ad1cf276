"""The LLM strategy on real data against its baselines, out of sample and net of costs: writes EVALUATION.md.

    python -m research.evaluation            # or: make evaluate

For every market below the bars are cut at a fixed date. The LLM predictor never sees a bar or a
headline at or after the cut in training, and only the bars after it are traded. Five strategies
then trade the same bars with the same cost models (``config.toml``'s ``[costs]``):

- **LLM**: ``llm_signal`` with the fine-tuned regressor and the sentiment of the headlines;
- **LLM, no news**: the same regressions, no headlines (the news component's worth);
- **ridge**: the same strategy and sizing, the regression made by ridge on the same sixteen
  features fitted on the bars before the cut (``strategies.llm_signals.ridge_signals``): does the
  LLM add anything over a linear model?
- **sma_cross** (10/30) and **buy & hold**.

Models. Sentiment: one adapter trained on the Twitter financial news training set (a public
labelled set of finance tweets, no overlap with any market below), made by the ``train sentiment``
command in ``SENTIMENT_TRAIN`` when its folder is missing. Regressor: BTC/USDT hourly trains its own
on the hourly bars before its cut (``[llm.regressor]``); the daily equity markets (2022–2023
tickers, StockNet 2014–2016) have too few daily bars before their cuts for the regressor's purged
time split, so they share one regressor trained on NVDA daily bars 1999–2014 (``REGRESSOR``),
all of which precede every traded window, each market's features scaled on its own bars before
its cut (``llm.scaler = "market"``). StockNet tweets are capped at the first
``tweets_per_day`` distinct tweets of each UTC day (CPU time; the cap looks at nothing later).

A walk-forward section retrains the BTC regressor on rolling windows (``research.walk_forward``)
and reports in-sample beside out-of-sample returns.

Every number in EVALUATION.md comes from this run; ``docs/evaluation/results.json`` holds them all,
and every backtest is a recorded run in ``logs/evaluation.db`` (``python -m engine report RUN_ID
--set store.url=...``). The shared data sets are read from ``../shared/data``, never copied.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import Config
from engine.domain import News
from engine.errors import ConfigError, DataError
from engine.files import atomic_write_text
from engine.plan import BacktestPlan
from engine.session import load_settings, prepare_backtest, run_recorded, strategy_factory
from engine.timeutil import iso, parse_instant
from models.training.evaluation import spearman
from research.executors import EXECUTORS, Executor, executor, torch_threads
from strategies.llm_settings import llm_settings, with_llm

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
CHECKPOINTS = ROOT / "checkpoints" / "eval"

@dataclass(frozen=True)
class TrainSpec:
    """A checkpoint the evaluation trains when it is missing, as ``python -m engine train`` would."""

    task: str
    folder: Path
    data: str  # relative to the data folder
    test: str | None = None
    label_map: str | None = None
    max_train_samples: int = 0
    optim: tuple[tuple[str, float], ...] = ()  # (OptimSettings field, value)
    fields: tuple[tuple[str, Any], ...] = ()  # (training config field, value), each also a `train` flag
    lora_top_layers: int = 0  # LoRA on the top K layers over cached lower states (0: the trainer's default)

    def config(self) -> Any:
        from models.training.regressor_config import RegressorTrainingConfig
        from models.training.sentiment_config import SentimentTrainingConfig

        base = SentimentTrainingConfig() if self.task == "sentiment" else RegressorTrainingConfig()
        lora = dataclasses.replace(base.lora, top_layers=self.lora_top_layers) if self.lora_top_layers else base.lora
        return dataclasses.replace(base, max_train_samples=self.max_train_samples, **dict(self.fields), lora=lora,
                                   optim=dataclasses.replace(base.optim, **dict(self.optim)))

    def description(self, data: Path) -> dict[str, Any]:
        if self.task == "sentiment":
            return {"path": str(data / self.data), "format": None, "label_map": self.label_map,
                    "test": str(data / self.test) if self.test else None}
        return {"path": str(data / self.data)}

    def command(self) -> str:
        """The same training as a command line, for the record."""
        flags = [f"--data ../shared/data/{self.data}"]
        flags += [f"--label-map {self.label_map}"] if self.label_map else []
        flags += [f"--test ../shared/data/{self.test}"] if self.test else []
        flags += [f"--max-train-samples {self.max_train_samples}"] if self.max_train_samples else []
        flags += [f"--{k.replace('_', '-')} {v}" for k, v in self.fields]
        flags += [f"--lora-top-layers {self.lora_top_layers}"] if self.lora_top_layers else []
        flags += [f"--{k.replace('_', '-')} {v:g}" for k, v in self.optim]
        return f"python -m engine train {self.task} {' '.join(flags)} --out {self.folder.relative_to(ROOT)}"


# Every training tweet (954 of them held out for validation), one epoch with validation every 135 steps
# and the best kept, no class weights (sqrt weights cost 0.015 of accuracy), LoRA on the top 16 layers over
# cached lower states: the README's Twitter runs. 47 min on 2 cores against 67.5 with every layer, for
# 0.869 on sent_valid.csv against 0.879 (2026-12-08); `train sentiment` itself still adapts every layer.
SENTIMENT = TrainSpec("sentiment", CHECKPOINTS / "sentiment_twitter_top16",
                      "sentiment/twitter_financial_news/sent_train.csv",
                      test="sentiment/twitter_financial_news/sent_valid.csv", label_map="twitter",
                      optim=(("epochs", 1.0), ("lr", 6e-4), ("head_lr", 3e-3), ("min_lr_ratio", 0.1),
                             ("eval_every", 135), ("patience", 0)), lora_top_layers=16)
# Every sample of its training split, up to 3 epochs with early stopping on validation, the target over
# strategies.llm_signal's holding_bars (6); the encoder input and the rest as `train regressor`'s defaults.
REGRESSOR = TrainSpec("regressor", CHECKPOINTS / "regressor_nvda_daily_h6",
                      "ohlcv/equities_daily/backtrader_nvda-1999-2014.txt",
                      fields=(("horizon", 6), ("max_val_samples", 512)), optim=(("epochs", 3.0),))


@dataclass(frozen=True)
class Market:
    name: str
    bars: str  # relative to ../shared/data
    news: str
    symbol: str
    start: str  # first bar used (features and, for BTC, training)
    cut: str  # the first traded bar opens at or after this instant
    end: str
    own_regressor: bool = False  # train on the bars before the cut (else: the shared daily regressor)
    tweets_per_day: int = 0  # 0: every headline


_TN = "news/ticker_news_2022_2023"
_SN = "news/stocknet_tweets_2014_2015"
MARKETS = [
    Market("BTC/USDT 1h", "ohlcv/crypto/binance_BTCUSDT_1h.csv", "news/crypto_headlines/"
           "cryptocurrencynews_com_bitcoin_titles_2017_2019.csv", "BTCUSDT", "2018-08-16", "2019-01-30", "2019-03-13",
           own_regressor=True),
    *[Market(f"{t} 1d (2023)", f"{_TN}/{t}_daily.csv", f"{_TN}/{t}_news.csv{gz}", t, "2022-01-01", "2023-01-01",
             "2024-01-01") for t, gz in (("AAPL", ""), ("META", ".gz"), ("NVDA", ".gz"))],
    *[Market(f"{t} 1d (StockNet)", f"{_SN}/stocknet_price_{t}.csv", f"{_SN}/stocknet_tweets_8tickers.csv.gz", t,
             "2015-01-01", "2015-11-01", "2016-04-01", tweets_per_day=3)
      for t in ("AAPL", "AMZN", "BA", "FB", "GOOG", "JPM", "MSFT", "XOM")],
]
VARIANTS = ("llm", "llm_no_news", "ridge", "sma_cross", "buy_and_hold")
LABELS = {"llm": "LLM (bars + news)", "llm_no_news": "LLM, no news", "ridge": "ridge on features",
          "sma_cross": "SMA cross 10/30", "buy_and_hold": "buy & hold"}
WALK_FORWARD = {"llm.walk_forward.train_bars": 2000, "llm.walk_forward.test_bars": 300,
                "llm.walk_forward.max_folds": 3}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m research.evaluation", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="About an hour on a 2-core CPU, plus about an hour the first time, to train the "
                                            "sentiment adapter (the top 16 layers, the whole Twitter training set: "
                                            "47 min) and the NVDA regressor; a rerun reuses checkpoints whose "
                                            "settings are unchanged, and cached predictions.")
    parser.add_argument("--out", type=Path, default=ROOT / "EVALUATION.md", help="the Markdown report (default: %(default)s)")
    parser.add_argument("--charts", type=Path, default=ROOT / "docs" / "evaluation",
                        help="charts and results.json (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="the shared data sets, read in place and never copied (default: %(default)s)")
    parser.add_argument("--markets", default="", help="comma-separated names or prefixes (default: all), e.g. BTC,AAPL")
    parser.add_argument("--no-walk-forward", action="store_true", help="skip the walk-forward section")
    parser.add_argument("--store", default=str(ROOT / "logs" / "evaluation.db"), help="SQLite file the runs are recorded in")
    parser.add_argument("--executor", choices=EXECUTORS, default="serial",
                        help="run the markets one after another (default) or in parallel on Ray (pip install -e "
                        "'.[ray]'); each market gets as many cores as torch uses here, so its numbers equal the "
                        "serial run's, and loads its own backbone")
    parser.add_argument("--workers", type=int, help="with --executor ray: local CPUs to use (default: all)")
    parser.add_argument("--ray-address", help="with --executor ray: join this Ray cluster instead of starting one")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the Markdown from an earlier run's results.json (no backtest is run)")
    args = parser.parse_args(argv)
    if args.render_only:
        payload = json.loads((args.charts / "results.json").read_text(encoding="utf-8"))
        _atomic(args.out, render(payload) + _kept_forecasts(args.out))
        return 0
    try:
        return _main(args)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    data = args.data
    if not data.is_dir():
        raise DataError(f"the evaluation reads the shared data sets from {data}, which does not exist "
                        "(pass --data DIR)")
    chosen = [m for m in MARKETS if not args.markets or any(m.name.lower().startswith(p.strip().lower())
                                                            for p in args.markets.split(","))]
    if not chosen:
        raise ConfigError(f"--markets {args.markets!r} matches none of: {', '.join(m.name for m in MARKETS)}")
    started = time.perf_counter()
    sentiment = _ensure_checkpoint(SENTIMENT, data)
    regressor = _ensure_checkpoint(REGRESSOR, data) if any(
        not m.own_regressor for m in chosen) else None
    args.charts.mkdir(parents=True, exist_ok=True)
    done: dict[int, dict[str, Any]] = {}

    def finished(k: int, result: dict[str, Any]) -> None:  # the markets done so far, in table order
        done[k] = result
        _write(args, [done[i] for i in sorted(done)], None, sentiment, regressor, time.perf_counter() - started,
               partial=True)

    task = partial(evaluate_market, data=data, store=args.store, sentiment=sentiment, regressor=regressor,
                   charts=args.charts)
    with executor(args.executor, address=args.ray_address, workers=args.workers, say=_say) as ex:
        _say(f"{len(chosen)} markets on {ex.name}")
        results = ex.map(task, chosen, labels=[m.name for m in chosen], say=_say, each=finished, cpus=torch_threads())
        walk = None
        if not args.no_walk_forward and any(m.own_regressor for m in chosen):
            _say("walk-forward on BTC/USDT 1h")
            walk = walk_forward_btc(data, args.store, sentiment, args.charts, ex)
    _write(args, results, walk, sentiment, regressor, time.perf_counter() - started, partial=False)
    _say(f"wrote {args.out} and {args.charts / 'results.json'} in {(time.perf_counter() - started) / 60:.1f} min")
    return 0


def _say(line: str) -> None:
    print(f"evaluation: {line}", file=sys.stderr, flush=True)


def _ensure_checkpoint(spec: TrainSpec, data: Path) -> dict[str, Any]:
    """The checkpoint of ``spec``, trained (``research.commands``) when missing or when the one in its
    folder was trained with other settings (an earlier version's defaults): it is then replaced."""
    folder = spec.folder
    changed = _changed_settings(spec)
    if changed is None or changed:
        from research.commands import train_regressor, train_sentiment

        if changed:
            _say(f"{folder.relative_to(ROOT)} was trained with other settings ({', '.join(changed)}); retraining it")
        _say(f"training the {spec.task} checkpoint: {spec.command()}")
        train = train_sentiment if spec.task == "sentiment" else train_regressor
        train(spec.config(), spec.description(data), folder, progress=sys.stderr.isatty())
    metrics = json.loads((folder / "metrics.json").read_text())
    return {"folder": str(folder.relative_to(ROOT)), "command": spec.command(),
            "validation": {k: v for k, v in metrics.get("validation", {}).items() if isinstance(v, float)}}


def _changed_settings(spec: TrainSpec) -> list[str] | None:
    """The training settings in which ``spec``'s checkpoint differs from ``spec`` (dotted names; [] the
    same), or None when there is no checkpoint."""
    path = spec.folder / "config.json"
    if not path.is_file():
        return None
    stored = json.loads(path.read_text()).get("config", {})
    wanted = json.loads(json.dumps(spec.config().to_dict()))  # tuples as JSON has them: lists
    return _differences(stored, wanted)


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b)) for d in _differences(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _config(market: Market, data: Path, store: str, sentiment: dict[str, Any], regressor: dict[str, Any] | None,
            **more: Any) -> Config:
    sets = {"run.strategy": "llm_signal", "data.bars": str(data / market.bars), "data.news": str(data / market.news),
            "data.symbol": market.symbol, "run.start": market.start, "run.end": market.end,
            "llm.sentiment_checkpoint": str(ROOT / sentiment["folder"]), "llm.batch_size": 8,
            "store.url": f"sqlite:///{store}", "logging.file": ""}
    if not market.own_regressor:  # NVDA 1999-2014's regressor reads this market on its own scale
        assert regressor is not None
        sets["llm.regressor_checkpoint"] = str(ROOT / regressor["folder"])
        sets["llm.scaler"] = "market"
    sets.update(more)
    return load_settings(ROOT / "config.toml", [f"{k}={json.dumps(v)}" for k, v in sets.items()])


def _base_plan(market: Market, config: Config) -> BacktestPlan:
    plan = prepare_backtest(config, prepare=False)
    news = _cap_per_day(plan.news, market.tweets_per_day) if market.tweets_per_day else plan.news
    series = plan.series[0]
    cut = int(np.searchsorted(series.ts_open, parse_instant(market.cut), side="left"))
    fraction = cut / len(series)
    if round(fraction * len(series)) != cut:
        raise DataError(f"{market.name}: cannot express the cut at bar {cut} of {len(series)} as a fraction")
    config = with_llm(config, train_fraction=fraction)
    return dataclasses.replace(plan, config=config, news=news)


def _cap_per_day(news: Sequence[News], per_day: int) -> list[News]:
    """The first ``per_day`` distinct texts of each UTC day, in time order (decided as they arrive)."""
    kept, seen, counts = [], set(), {}
    for n in sorted(news, key=lambda n: n.ts_event):
        day = n.ts_event // 86_400_000
        if n.headline in seen or counts.get(day, 0) >= per_day:
            continue
        seen.add(n.headline)
        counts[day] = counts.get(day, 0) + 1
        kept.append(n)
    return kept


def evaluate_market(market: Market, data: Path, store: str, sentiment: dict[str, Any], regressor: dict[str, Any] | None,
                    charts: Path) -> dict[str, Any]:
    """The five strategies on ``market``'s traded part; their metrics and a chart."""
    from strategies.llm_prepare import llm_plan, setup_llm, translated_errors
    from strategies.llm_signal import LlmSignal
    from strategies.llm_signals import ridge_signals

    config = _config(market, data, store, sentiment, regressor)
    plan = _base_plan(market, config)
    with translated_errors(config):
        setup = setup_llm(plan, say=_say)
        source = setup.precompute()
    split = setup.split
    symbol = split.trade.symbol
    ridge = ridge_signals(split.history, llm_settings(config).aggregation, train_end_ms=split.trade_start_ms,
                          start_ms=split.trade_start_ms, horizon=setup.params.holding_bars)
    sources = {"llm": source, "llm_no_news": source.without_news(), "ridge": ridge}
    rows: dict[str, dict[str, Any]] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for variant in VARIANTS:
        if variant in sources:
            sub = llm_plan(plan, setup, partial(LlmSignal, setup.params, {symbol: sources[variant]}),
                           dict(sources[variant].stats))
            if variant != "llm":  # the variants without news get none delivered
                sub = dataclasses.replace(sub, news=[])
        else:
            sub_config = dataclasses.replace(plan.config, run=dataclasses.replace(plan.config.run, strategy=variant))
            sub = dataclasses.replace(plan, config=sub_config, series=[split.trade], news=[],
                                      make_strategy=strategy_factory(sub_config))
        sub = dataclasses.replace(sub, notes=[*sub.notes, f"evaluation: {market.name}, {LABELS[variant]}"],
                                  extra={**sub.extra, "evaluation": {"market": market.name, "variant": variant}})
        result, summary = run_recorded(sub)
        rows[variant] = _metrics(summary)
        curves[variant] = (result.equity_ts, result.equity / result.starting_cash)
        _say(f"{market.name}: {LABELS[variant]}: {_pct(rows[variant]['total_return'])} "
             f"({rows[variant]['fills']} fills, run {summary['run_id']})")
    forecasts = {name: _forecast_quality(src.regression_means(), split.trade, setup.params.holding_bars)
                 for name, src in (("llm", source), ("ridge", ridge))}
    chart = _plot_market(market, curves, charts / f"{_slug(market.name)}.png")
    return {"market": market.name, "symbol": symbol, "timeframe": split.trade.timeframe,
            "train": {"start": iso(int(split.history.ts_open[0])), "end": iso(split.trade_start_ms),
                      "headlines": len(split.train_news)},
            "trade": {"start": iso(split.trade_start_ms), "end": iso(int(split.trade.ts_close[-1])),
                      "bars": len(split.trade), "headlines": len(split.trade_news)},
            "regressor": "own (trained on the bars before the cut)" if market.own_regressor else "shared NVDA daily",
            "checkpoints": setup.checkpoints, "seconds": setup.seconds, "strategies": rows,
            "calibration": _calibration_brief(setup.calibration), "forecasts": forecasts,
            "chart": str(chart.relative_to(ROOT)) if chart.is_relative_to(ROOT) else str(chart)}


def _metrics(summary: dict[str, Any]) -> dict[str, Any]:
    m = summary["metrics"]
    costs = sum(summary[k] for k in ("fees", "spread", "slippage", "funding"))
    return {"run_id": summary["run_id"], "total_return": m["total_return"], "gross_return": m["gross_return"],
            "buy_and_hold_return": m["buy_and_hold_return"], "sharpe": _finite(m["sharpe"]),
            "max_drawdown": m["max_drawdown"], "exposure": m["exposure"], "round_trips": m["round_trips"],
            "fills": summary["fills"], "costs": costs / summary["starting_cash"]}


def _reuse_note(results: list[dict[str, Any]]) -> str:
    """Said when no market trained an adapter: the run's minutes are then a rerun's, not a first run's."""
    trained = [info.get("trained") for r in results for info in (r.get("checkpoints") or {}).values()]
    return " (a rerun: every adapter came from an earlier run's checkpoints)" if trained and not any(trained) else ""


def _calibration_brief(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the calibration before the cut kept: each coefficient's estimate, t and value (0 where
    shrunk), and the enter threshold it chose."""
    if not record:
        return None
    out: dict[str, Any] = {k: {f: record[k].get(f) for f in ("estimate", "t", "value", "rows")}
                           for k in ("regression", "news") if isinstance(record.get(k), dict)}
    out["enter_threshold"] = (record.get("enter_threshold") or {}).get("chosen")
    return out


def _calibration_line(c: dict[str, Any] | None) -> list[str]:
    if not c:
        return []
    parts = [f"{k} {c[k]['estimate']:+.2f} (t {c[k]['t']:+.2f}, {'kept' if c[k]['value'] else 'shrunk to 0'})"
             for k in ("regression", "news") if k in c and c[k].get("estimate") is not None]
    return [f"Calibration before the cut: {', '.join(parts)}; enter threshold {_f(c.get('enter_threshold'))}.", ""]


def _forecast_quality(means: dict[int, float], trade: Any, horizon: int = 1) -> dict[str, Any]:
    """Directional hit rate and rank IC of the predicted return over ``horizon`` bars (the
    regressions' own target: the strategy's holding time) on the traded bars, and the share of
    positive predictions (near 0 or 1: a forecaster of one sign, whose hit rate is the share of up
    moves)."""
    close = trade.close
    ts_close = trade.ts_close.tolist()
    pred, actual = [], []
    for i, ts in enumerate(ts_close[:-horizon]):
        if ts in means:
            pred.append(means[ts])
            actual.append(math.log(close[i + horizon] / close[i]))
    p, a = np.array(pred), np.array(actual)
    if len(p) < 3:
        return {"n": len(p), "horizon": horizon, "hit_rate": None, "ic": None, "positive_share": None}
    nonzero = a != 0
    hit = float(np.mean(np.sign(p[nonzero]) == np.sign(a[nonzero]))) if nonzero.any() else None
    return {"n": len(p), "horizon": horizon, "hit_rate": hit, "ic": _finite(spearman(p, a)),
            "positive_share": float(np.mean(p > 0)), "up_share": float(np.mean(a > 0))}


def _quality(f: dict[str, Any]) -> str:
    """hit rate / IC / positive share (the last absent in an older results.json)."""
    return f"{_f(f['hit_rate'], 3)} / {_f(f['ic'], 3)} / {_f(f.get('positive_share'), 2)}"


def walk_forward_btc(data: Path, store: str, sentiment: dict[str, Any], charts: Path,
                     ex: Executor | None = None) -> dict[str, Any]:
    from research.walk_forward import plot_walk_forward, run_walk_forward

    market = MARKETS[0]
    config = _config(market, data, store, sentiment, None, **WALK_FORWARD)
    plan = prepare_backtest(config, prepare=False)

    def run_plan(sub: BacktestPlan, label: str) -> dict[str, Any]:
        _, summary = run_recorded(sub)
        _say(f"{label}: {_pct(summary['metrics']['total_return'])} (buy & hold "
             f"{_pct(summary['metrics']['buy_and_hold_return'])}), run {summary['run_id']}")
        return summary

    result = run_walk_forward(plan, run_plan, say=_say, executor=ex)
    chart = plot_walk_forward(result, charts / "walk_forward_btc.png")
    result["chart"] = str(chart.relative_to(ROOT)) if chart.is_relative_to(ROOT) else str(chart)
    return result


# -- output --------------------------------------------------------------------------------------
def _plot_market(market: Market, curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    from matplotlib import dates as mdates
    from matplotlib.figure import Figure

    from engine.report import charts

    colors = {"llm": charts.COLORS["strategy"], "llm_no_news": "#6baed6", "ridge": charts.COLORS["b"],
              "sma_cross": "#41ab5d", "buy_and_hold": charts.COLORS["hold"]}
    fig = Figure(figsize=(charts.WIDTH, 4.2), layout="constrained")
    ax = fig.subplots()
    for variant, (ts, equity) in curves.items():
        when = mdates.date2num(ts.astype("datetime64[ms]"))
        ax.plot(when, equity - 1.0, label=f"{LABELS[variant]} ({_pct(equity[-1] - 1.0)})", color=colors[variant],
                linewidth=2.0 if variant == "llm" else 1.2)
    ax.axhline(0.0, color="black", linewidth=0.8)
    locator = mdates.AutoDateLocator(minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.yaxis.set_major_formatter(charts.PERCENT)
    ax.set_ylabel("return since the cut, net of costs")
    ax.set_title(f"{market.name}: out-of-sample equity of each strategy")
    ax.legend(loc="best")
    return charts.save(fig, path)


def _write(args: argparse.Namespace, results: list[dict[str, Any]], walk: dict[str, Any] | None,
           sentiment: dict[str, Any], regressor: dict[str, Any] | None, seconds: float, *, partial: bool) -> None:
    payload = {"generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": round(seconds, 1),
               "machine": f"{platform.machine()}, {_cpus()} CPUs, Python {platform.python_version()}",
               "partial": partial, "sentiment": sentiment, "regressor": regressor, "markets": results,
               "walk_forward": walk, "own_regressor": _own_regressor()}
    _atomic(args.charts / "results.json", json.dumps(payload, indent=1, allow_nan=False, default=str))
    _atomic(args.out, render(payload) + _kept_forecasts(args.out))


def _kept_forecasts(path: Path) -> str:
    """The forecasts section (``research.forecasts``, between its markers) already in ``path``, kept
    as it is: this command rewrites the rest, not what the other one measured."""
    from research.forecasts import section_of

    section = section_of(path.read_text(encoding="utf-8")) if path.is_file() else None
    return f"\n{section}\n" if section else ""


def _own_regressor() -> dict[str, Any]:
    """How a market with its own regressor trains it: config.toml's ``[llm.regressor]``."""
    trained = llm_settings(load_settings(ROOT / "config.toml", [])).regressor
    return {"input": trained.input, "max_train_samples": trained.max_train_samples, "epochs": trained.optim.epochs,
            "horizon": trained.horizon, "weighting": trained.weighting, "target_clip": trained.target_clip}


def _own_regressor_line(own: dict[str, Any] | None) -> str:
    if not own:  # an older results.json
        return "- regressor: BTC/USDT trains its own on the hourly bars before its cut (`[llm.regressor]`)."
    samples = (f"the {own['max_train_samples']:,} most recent samples" if own["max_train_samples"]
               else "every sample of its training split")
    return (f"- regressor: BTC/USDT trains its own on the hourly bars before its cut (`[llm.regressor]`: "
            f"{own['input']} input, {samples}, {own['epochs']:g} epoch(s), the target {own['horizon']} bars ahead "
            f"winsorised at {own['target_clip']:g} std, weighting {own['weighting']}).")


def _atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a uniquely named, synced temporary (two evaluations
    writing at once, or one killed midway, never share or leave a fixed ``.tmp``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


def render(payload: dict[str, Any]) -> str:
    """EVALUATION.md from the results (every figure in it is one of theirs)."""
    results = payload["markets"]
    out = ["# Evaluation: the LLM strategy on real data, out of sample, net of costs", ""]
    if payload["partial"]:
        out += ["**Incomplete: the evaluation was still running (or stopped) when this was written.**", ""]
    out += [f"Generated {payload['generated']} by `python -m research.evaluation` (`make evaluate`) in "
            f"{payload['seconds'] / 60:.0f} min on {payload['machine']}{_reuse_note(results)}. Every figure below "
            "is printed by that command and stored in `docs/evaluation/results.json`; every backtest is a recorded run in "
            "`logs/evaluation.db`.", "",
            "Each market is cut at a date: the predictor learns only from what precedes the cut and the strategies "
            "trade only what follows it. Costs are `config.toml`'s (taker fee by contract, 1 bp half-spread, 2 bp "
            "slippage). Backbone SmolLM2-135M-Instruct (fp32, CPU), LoRA adapters.", "",
            "Models:", "",
            f"- sentiment: `{payload['sentiment']['folder']}`, made by `{payload['sentiment']['command']}` "
            f"(validation accuracy {_f(payload['sentiment']['validation'].get('accuracy'), 3)}, macro-F1 "
            f"{_f(payload['sentiment']['validation'].get('macro_f1'), 3)} on 954 held-out training tweets).",
            _own_regressor_line(payload.get("own_regressor"))]
    if payload["regressor"]:
        out.append(f"- regressor for the daily equity markets: `{payload['regressor']['folder']}`, made by "
                   f"`{payload['regressor']['command']}` (NVDA daily 1999–2014, before every traded window; "
                   "there are too few daily bars before these cuts for the regressor's purged time split), its "
                   "features scaled on each market's own bars before its cut (`llm.scaler = \"market\"`).")
    out += ["", "Strategies: **LLM** = `llm_signal` (regression + headline sentiment); **LLM, no news** = the same "
            "regressions without headlines; **ridge** = the same strategy and sizing with ridge regression on the "
            "same 16 features (fitted before the cut) instead of the LLM; **SMA cross** 10/30; **buy & hold**.", ""]
    out += ["## Summary", "", *_summary(results), ""]
    out += ["| market | traded | bars | LLM | LLM, no news | ridge | SMA cross | buy & hold | LLM hit rate / IC / "
            "positive | ridge hit rate / IC / positive |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        s = r["strategies"]
        f = r["forecasts"]
        out.append(f"| {r['market']} | {r['trade']['start'][:10]} .. {r['trade']['end'][:10]} | {r['trade']['bars']:,} | "
                   + " | ".join(_pct(s[v]["total_return"]) for v in VARIANTS)
                   + f" | {_quality(f['llm'])} | {_quality(f['ridge'])} |")
    out += ["", "Returns are total returns over the traded window, net of every cost. Hit rate: share of traded bars "
            "whose return over the holding time (`holding_bars`, the regressions' target) has the predicted sign; IC: rank "
            "correlation of the predicted and the realised return over it (with n ≈ 100–1,000 overlapping returns "
            "its standard error is larger than 1/√n, 0.03–0.1); positive: the share of bars whose regression was "
            "positive (near 0 or 1 the forecaster has one sign, and its hit rate is the share of up moves).", ""]
    for r in results:
        out += [f"## {r['market']}", "",
                f"Trained on {r['train']['start'][:10]} .. {r['train']['end'][:10]} ({r['train']['headlines']:,} "
                f"headlines before the cut); traded {r['trade']['start'][:16]} .. {r['trade']['end'][:16]} "
                f"({r['trade']['bars']:,} bars, {r['trade']['headlines']:,} headlines). Regressor: {r['regressor']}.", "",
                *_calibration_line(r.get("calibration")),
                "| strategy | return | gross | Sharpe | max drawdown | exposure | round trips | fills | costs | run |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for v in VARIANTS:
            m = r["strategies"][v]
            out.append(f"| {LABELS[v]} | {_pct(m['total_return'])} | {_pct(m['gross_return'])} | {_f(m['sharpe'])} | "
                       f"{_pct(m['max_drawdown'])} | {_pct(m['exposure'])} | {m['round_trips']} | {m['fills']} | "
                       f"{_pct(m['costs'])} | `{m['run_id']}` |")
        out += ["", f"![{r['market']}]({r['chart']})", ""]
    walk = payload["walk_forward"]
    if walk:
        out += ["## Walk-forward (BTC/USDT 1h)", "",
                f"Each fold retrains the regressor on {walk['settings']['train_bars']:,} hourly bars, trades the next "
                f"{walk['settings']['test_bars']:,} out of sample, and also trades the last "
                f"{walk['settings']['in_sample_bars']:,} of its own training bars (in sample). The most recent "
                f"{len(walk['folds'])} folds.", "",
                "| fold | trained on | in sample | buy & hold (in) | out of sample | buy & hold (out) |",
                "|---:|---|---:|---:|---:|---:|"]
        for f in walk["folds"]:
            i, o = f["in_sample"], f["out_of_sample"]
            out.append(f"| {f['fold']} | {f['train']['start'][:10]} .. {f['train']['end'][:10]} | "
                       f"{_pct(i['total_return'])} | {_pct(i['buy_and_hold_return'])} | {_pct(o['total_return'])} | "
                       f"{_pct(o['buy_and_hold_return'])} |")
        t_in, t_out = walk["totals"]["in_sample"], walk["totals"]["out_of_sample"]
        out += ["", f"Compounded over the folds: in sample {_pct(t_in['compounded_return'])} (buy & hold "
                f"{_pct(t_in['buy_and_hold_compounded'])}), out of sample {_pct(t_out['compounded_return'])} "
                f"(buy & hold {_pct(t_out['buy_and_hold_compounded'])}); {t_out['folds_beating_buy_and_hold']} of "
                f"{t_out['folds']} out-of-sample folds beat buy & hold.", "", f"![walk-forward]({walk['chart']})", ""]
    return "\n".join(out) + "\n"


def _summary(results: list[dict[str, Any]]) -> list[str]:
    """Plain statements counted from the table: where the LLM helps and where it does not."""
    if not results:
        return ["No market finished."]
    n = len(results)

    def beats(a: str, b: str) -> int:
        return sum(r["strategies"][a]["total_return"] > r["strategies"][b]["total_return"] for r in results)

    mean = {v: float(np.mean([r["strategies"][v]["total_return"] for r in results])) for v in VARIANTS}
    ics = [r["forecasts"]["llm"]["ic"] for r in results if r["forecasts"]["llm"]["ic"] is not None]
    ridge_ics = [r["forecasts"]["ridge"]["ic"] for r in results if r["forecasts"]["ridge"]["ic"] is not None]
    lines = [f"- Over {n} markets the LLM strategy beat buy & hold in {beats('llm', 'buy_and_hold')}, the SMA cross "
             f"in {beats('llm', 'sma_cross')}, ridge-on-features in {beats('llm', 'ridge')} and its own no-news "
             f"variant in {beats('llm', 'llm_no_news')} (lost to it in {beats('llm_no_news', 'llm')}; equal "
             f"otherwise).",
             "- Mean return per market: " + ", ".join(f"{LABELS[v]} {_pct(mean[v])}" for v in VARIANTS) + "."]
    if ics:
        lines.append(f"- The LLM regressor's mean out-of-sample IC is {np.mean(ics):+.3f} (ridge {np.mean(ridge_ics):+.3f})"
                     f"; positive in {sum(i > 0 for i in ics)} of {len(ics)} markets.")
    shares = [s for r in results if (s := r["forecasts"]["llm"].get("positive_share")) is not None]
    one_sign = sum(not 0.2 <= s <= 0.8 for s in shares)
    if shares:
        spread = f"; its positive share ranged {min(shares):.2f}–{max(shares):.2f}"
        lines.append(f"- The LLM regressor predicted one sign on more than 80% of the traded bars in {one_sign} of "
                     f"{n} markets" + (" (its hit rate there is about the share of up moves, not skill)" if one_sign
                                       else spread) + ".")
    idle = {v: sum(r["strategies"][v]["fills"] == 0 for r in results) for v in ("llm", "llm_no_news", "ridge")}
    calibrated = [r["calibration"] for r in results if r.get("calibration")]
    if calibrated:
        none = sum(all(not c[k]["value"] for k in ("regression", "news") if k in c) for c in calibrated)
        lines.append(f"- The calibration before each cut found neither the regression nor the news score significant "
                     f"(|t| < 2, shrunk to 0) in {none} of {len(calibrated)} markets: there the expected move is 0 "
                     f"and the LLM strategy does not trade, by design. The LLM with news made no trade in "
                     f"{idle['llm']} of {n}, without news in {idle['llm_no_news']} of {n}; ridge (uncalibrated, its "
                     f"own forecast of the same return) in {idle['ridge']} of {n}.")
    elif idle["llm_no_news"]:
        lines.append(f"- Without headlines the LLM strategy made no trade in {idle['llm_no_news']} of {n} markets: the "
                     "regression alone seldom predicts a move worth `enter_threshold` x the round-trip cost, so where "
                     "the LLM strategy traded, the headlines' sentiment moved it. Ridge made no trade in "
                     f"{idle['ridge']} of {n}, the LLM with news in {idle['llm']} of {n}.")
    if mean["llm"] <= max(mean["buy_and_hold"], mean["ridge"]):
        lines.append("- **Where the LLM does not help:** on these data and at this model size it does not beat "
                     "the simplest alternatives on average; treat its signal as unproven, not as an edge.")
    if beats("llm", "llm_no_news") <= beats("llm_no_news", "llm"):
        lines.append("- The headlines did not improve the strategy on balance: the no-news variant did as well or better "
                     "in as many markets.")
    return lines


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_").replace("__", "_")


def _finite(x: Any) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * x:+.2f}%"


def _f(x: Any, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


if __name__ == "__main__":
    from engine import allocator

    allocator.start()  # tcmalloc where installed: less heap held, faster steps (engine/allocator.py)
    sys.exit(main())
