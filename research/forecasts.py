"""Does the LLM forecast returns better than ridge and LightGBM? A purged walk-forward answers it.

    python -m research.forecasts                       # baselines and every LLM variant, both markets
    python -m research.forecasts --models zero,mean,ridge,lightgbm --markets btc

Markets: BTC/USDT hourly bars, and three US equities' daily bars (NVDA, ORCL, YHOO, split- and
dividend-adjusted) pooled by date. Per sample (bar t) every forecaster sees the same window of the
last ``window`` bars' sixteen features (``models.features``), each market scaled by a
``FeatureScaler`` fitted on that fold's training samples only, and predicts the target
log(close[t+h] / close[t]) / sigma_t (sigma_t: the realised volatility of the last 20 bars).

Folds: the last ``test_share`` of the time range is cut into ``folds`` consecutive test blocks. Fold
k trains on the samples before its block (the most recent ``max_train``), minus a purge of
``horizon + window`` bars before the block, so no training target reaches into it; the last
``val_share`` of the training samples, purged the same way from the rest, is the validation set
(ridge's penalty, LightGBM's and the LLM's early stopping). Nothing after a test block is used
for it. Metrics (``research.forecast_metrics``) are computed per fold and pooled over all test
samples, with Newey–West errors for the overlapping targets.

``--center`` trains every model on targets less their mean over the fold's training samples (per
ticker): each forecasts the deviation from its training window's drift, not the drift. Without it, a
short window's drift dominates every forecast of so noisy a target, so each model predicts one sign
in most folds, and the drift forecasts worse than zero out of sample (``mean``'s R² is negative).
The LLM variants refit their head's intercept after training (the regressor's default;
``--no-refit-intercept`` turns it off), as the linear baselines fit theirs: their forecasts' spread is
a few hundredths of a standard deviation, and the level the optimiser leaves their head at is as
large, so without the refit that level decides their sign.

The rule for claims: an LLM variant has an edge only where its pooled IC beats both ridge's and
LightGBM's by more than two standard errors of the (paired) difference; otherwise the report says
it has none. Writes ``docs/evaluation/forecasts.json`` and the section of EVALUATION.md between
``<!-- forecasts:start -->`` and ``<!-- forecasts:end -->`` (the rest of the file is left as it is).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError, DataError
from engine.files import atomic_write_text
from engine.timeutil import MS_PER_YEAR, iso
from models.settings import VARIANTS
from research.forecast_metrics import diebold_mariano, forecast_metrics, ic_difference, trading

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
START, END = "<!-- forecasts:start -->", "<!-- forecasts:end -->"
BASELINE_NAMES = ("zero", "mean", "ridge", "lightgbm")
LLM_VARIANTS = VARIANTS  # the encoder's, from models.settings (no torch)
DEFAULT_MODELS = (*BASELINE_NAMES, *(f"llm_{v}" for v in LLM_VARIANTS))


@dataclass(frozen=True)
class MarketSpec:
    name: str
    files: tuple[tuple[str, str], ...]  # (ticker, path relative to the data folder)
    cost: float  # per side, as a fraction of notional
    cost_note: str
    adjusted: bool = False


MARKETS = {
    "btc": MarketSpec("BTC/USDT 1h", (("BTCUSDT", "ohlcv/crypto/binance_BTCUSDT_1h.csv"),), 0.00055 + 0.0002 + 0.0001,
                      "perpetual: taker 0.055% + slippage 2 bps + half-spread 1 bps per side, long and short"),
    "equities": MarketSpec("US equities 1d (NVDA, ORCL, YHOO pooled)",
                           (("NVDA", "ohlcv/equities_daily/backtrader_nvda-1999-2014.txt"),
                            ("ORCL", "ohlcv/equities_daily/backtrader_orcl-1995-2014.txt"),
                            ("YHOO", "ohlcv/equities_daily/backtrader_yhoo-1996-2015.txt")), 0.001,
                           "0.1% per side, long and short", adjusted=True),
}


@dataclass
class Market:
    """Raw per-sample data of one market (several tickers pooled): features, targets, returns."""

    spec: MarketSpec
    features: list[np.ndarray]  # per ticker: (bars, 16) raw features
    bar_index: np.ndarray  # per sample: its bar in its ticker
    group: np.ndarray  # per sample: the ticker
    ts: np.ndarray  # per sample: bar close, epoch ms
    targets: np.ndarray
    returns: np.ndarray  # h-bar log returns
    timeframe_ms: int
    bars: int


def load_market(spec: MarketSpec, data: Path, *, window: int, horizon: int) -> Market:
    from engine.feeds.bar_files import load_bars
    from models.datasets import regression_samples
    from models.encoder import window_ready
    from models.features import compute_features

    features, parts = [], []
    timeframe_ms = bars = 0
    for g, (ticker, relative) in enumerate(spec.files):
        path = data / relative
        if not path.is_file():
            raise DataError(f"{path} is missing: the forecast evaluation reads the shared data sets (--data DIR)")
        series = load_bars(path, symbol=ticker, adjusted=spec.adjusted).series
        f = compute_features(series.ts_open, series.open, series.high, series.low, series.close, series.volume,
                             series.timeframe_ms)
        samples = regression_samples(f, series.close, vol_window=20, horizon=horizon)
        keep = window_ready(f, window)[samples.bar_index]
        samples = samples.subset(np.flatnonzero(keep))
        features.append(f)
        parts.append((np.full(len(samples), g), samples.bar_index, series.ts_close[samples.bar_index],
                      samples.targets, samples.raw_returns))
        timeframe_ms, bars = series.timeframe_ms, bars + len(series)
    group, index, ts, targets, returns = (np.concatenate(p) for p in zip(*parts))
    order = np.lexsort((group, ts))  # time order, tickers side by side
    return Market(spec, features, index[order], group[order], ts[order], targets[order], returns[order],
                  timeframe_ms, bars)


@dataclass(frozen=True)
class Fold:
    number: int
    train: np.ndarray  # sample positions
    val: np.ndarray
    test: np.ndarray

    def describe(self, ts: np.ndarray) -> dict[str, Any]:
        return {"fold": self.number, **{f"{name}_samples": int(len(part)) for name, part in
                                        (("train", self.train), ("val", self.val), ("test", self.test))},
                "train_start": iso(int(ts[self.train[0]])), "test_start": iso(int(ts[self.test[0]])),
                "test_end": iso(int(ts[self.test[-1]]))}


def make_folds(ts: np.ndarray, *, folds: int, test_share: float, val_share: float, purge_ms: int,
               max_train: int = 0, max_test: int = 0) -> list[Fold]:
    """Purged walk-forward folds over samples in time order (see the module docstring)."""
    if folds < 1 or not 0 < test_share < 1 or not 0 < val_share < 1:
        raise ConfigError("folds >= 1, test_share and val_share in (0, 1) are required")
    first, last = int(ts[0]), int(ts[-1]) + 1
    edges = np.linspace(last - test_share * (last - first), last, folds + 1).astype(np.int64)
    out = []
    for k in range(folds):
        test = np.flatnonzero((ts >= edges[k]) & (ts < edges[k + 1]))
        if max_test and len(test) > max_test:
            test = test[:max_test]  # the block's first samples: nearest its training data
        before = np.flatnonzero(ts < edges[k] - purge_ms)
        if max_train and len(before) > max_train:
            before = before[-max_train:]
        if len(test) == 0 or len(before) < 10:
            raise DataError(f"fold {k + 1}: {len(before)} training and {len(test)} test samples; use fewer folds "
                            "or a larger test share")
        val_start = int(ts[before[int(len(before) * (1 - val_share))]])
        val = before[ts[before] >= val_start]
        train = before[ts[before] < val_start - purge_ms]
        if len(train) < 10 or len(val) < 10:
            raise DataError(f"fold {k + 1}: {len(train)} training and {len(val)} validation samples are too few")
        out.append(Fold(k + 1, train, val, test))
    return out


def fold_data(market: Market, fold: Fold, window: int, *, center: bool = False) -> dict[str, Any]:
    """ForecastData of the fold's train, val and test parts, each ticker scaled by a FeatureScaler
    fitted on ITS OWN training samples of this fold only. ``center``: each ticker's training and
    validation targets less that ticker's mean training target, so a forecaster learns the deviation
    from the training window's drift and the drift is not forecast (the test targets stay as they are)."""
    from models.encoder import feature_windows
    from models.features import FeatureScaler
    from models.forecasting import ForecastData

    windows = np.empty((len(market.ts), window, market.features[0].shape[1]))
    needed = np.concatenate([fold.train, fold.val, fold.test])
    for g, features in enumerate(market.features):
        mine = needed[market.group[needed] == g]
        train_rows = market.bar_index[fold.train[market.group[fold.train] == g]]
        if len(mine) == 0:
            continue
        if len(train_rows) == 0:
            raise DataError(f"fold {fold.number}: {market.spec.files[g][0]} has test samples but no training samples")
        scaler = FeatureScaler.fit(features[train_rows])
        windows[mine] = scaler.transform(feature_windows(features, market.bar_index[mine], window))

    targets = market.targets.copy()
    if center:
        fitted = np.concatenate([fold.train, fold.val])
        for g in range(len(market.features)):
            drift = market.targets[fold.train[market.group[fold.train] == g]]
            if len(drift):
                targets[fitted[market.group[fitted] == g]] -= drift.mean()

    def part(index: np.ndarray) -> Any:
        return ForecastData(windows[index], targets[index], market.ts[index], market.group[index])

    return {"train": part(fold.train), "val": part(fold.val), "test": part(fold.test)}


@dataclass
class Options:
    models: tuple[str, ...] = DEFAULT_MODELS
    markets: tuple[str, ...] = ("btc", "equities")
    folds: int = 5
    window: int = 16
    horizon: int = 6
    test_share: float = 0.5
    val_share: float = 0.2
    max_train: int = 4_000
    max_test: int = 0
    seed: int = 0
    backbone: str = "smollm2"
    llm_epochs: float = 3.0
    llm_max_train: int = 0
    center: bool = False
    refit_intercept: bool = True  # the regressor's default for the encoder input
    data: Path = DEFAULT_DATA
    out: Path = ROOT / "docs" / "evaluation"
    evaluation_md: Path = ROOT / "EVALUATION.md"
    extra: dict[str, Any] = field(default_factory=dict)


def make_forecaster(name: str, options: Options) -> Any:
    from models.baselines import BASELINES, LightGbmForecaster

    if name == "lightgbm":
        return LightGbmForecaster(seed=options.seed)
    if name in BASELINES:
        return BASELINES[name]()
    variant = name.removeprefix("llm_")
    if variant not in LLM_VARIANTS:
        raise ConfigError(f"unknown model {name!r}; models: {', '.join(DEFAULT_MODELS)}")
    import dataclasses

    from models.forecasting import LlmForecaster
    from models.training.regressor_config import RegressorTrainingConfig

    base = RegressorTrainingConfig()
    config = dataclasses.replace(base, window=options.window, horizon=options.horizon,
                                 refit_intercept=options.refit_intercept,
                                 # the harness centers every model's targets per ticker (--center) or none
                                 center_target=options.center,
                                 optim=dataclasses.replace(base.optim, epochs=options.llm_epochs, seed=options.seed))
    return LlmForecaster(variant, backbone=options.backbone, config=config)


def evaluate_market(key: str, options: Options, say: Callable[[str], None]) -> dict[str, Any]:
    spec = MARKETS[key]
    started = time.perf_counter()
    market = load_market(spec, options.data, window=options.window, horizon=options.horizon)
    purge_ms = (options.horizon + options.window) * market.timeframe_ms
    folds = make_folds(market.ts, folds=options.folds, test_share=options.test_share, val_share=options.val_share,
                       purge_ms=purge_ms, max_train=options.max_train, max_test=options.max_test)
    lags = options.horizon - 1
    predictions = {name: [] for name in options.models}
    per_fold: list[dict[str, Any]] = []
    seconds = {name: 0.0 for name in options.models}
    for fold in folds:
        parts = fold_data(market, fold, options.window, center=options.center)
        record = {**fold.describe(market.ts), "models": {}}
        for name in options.models:
            t0 = time.perf_counter()
            model = make_forecaster(name, options)
            if name.startswith("llm_") and options.llm_max_train and len(parts["train"]) > options.llm_max_train:
                train = parts["train"].subset(np.arange(len(parts["train"]) - options.llm_max_train, len(parts["train"])))
            else:
                train = parts["train"]
            model.fit(train, parts["val"])
            prediction = np.asarray(model.predict(parts["test"]), dtype=np.float64)
            elapsed = time.perf_counter() - t0
            seconds[name] += elapsed
            predictions[name].append(prediction)
            test = parts["test"]
            metrics = forecast_metrics(prediction, test.targets, lags=lags, group=test.group)
            metrics["seconds"] = round(elapsed, 2)
            metrics["train_samples"] = len(train)
            record["models"][name] = metrics
            say(f"{spec.name}, fold {fold.number}/{len(folds)}: {name:<20} IC {metrics['ic']:+.4f} "
                f"(SE {metrics['ic_se']:.4f}), positive {metrics['positive_share']:.0%}, {elapsed:.1f} s")
        per_fold.append(record)
    test_index = np.concatenate([f.test for f in folds])
    target, group, ts = market.targets[test_index], market.group[test_index], market.ts[test_index]
    pooled = {name: np.concatenate(predictions[name]) for name in options.models}
    periods = MS_PER_YEAR / (options.horizon * market.timeframe_ms) if market.timeframe_ms < 86_400_000 else 252 / options.horizon
    results: dict[str, Any] = {}
    for name, prediction in pooled.items():
        results[name] = {**forecast_metrics(prediction, target, lags=lags, group=group),
                         "trading": trading(prediction, market.returns[test_index], ts, group, horizon=options.horizon,
                                            cost=spec.cost, periods_per_year=periods),
                         "seconds": round(seconds[name], 2)}
    references = [r for r in ("ridge", "lightgbm") if r in pooled]
    comparisons: dict[str, Any] = {}
    for name in pooled:
        for ref in references:
            if ref == name:
                continue
            comparisons[f"{name} vs {ref}"] = {
                "ic": ic_difference(pooled[name], pooled[ref], target, lags, group),
                "diebold_mariano": diebold_mariano(pooled[name], pooled[ref], target, lags, group)}
    return {"market": spec.name, "cost": spec.cost, "cost_note": spec.cost_note, "bars": market.bars,
            "samples": int(len(market.ts)), "test_samples": int(len(test_index)), "folds": per_fold,
            "pooled": results, "comparisons": comparisons, "verdict": verdict(results, comparisons, per_fold),
            "seconds": round(time.perf_counter() - started, 1)}


def verdict(pooled: dict[str, Any], comparisons: dict[str, Any], folds: list[dict[str, Any]]) -> dict[str, Any]:
    """The rule for claims and the issue's targets, applied to the numbers."""
    constant = sorted({name for fold in folds for name, m in fold["models"].items()
                       if name != "zero" and not 0.2 <= m["positive_share"] <= 0.8})
    llms = [n for n in pooled if n.startswith("llm_")]
    refs = [r for r in ("ridge", "lightgbm") if r in pooled]
    out: dict[str, Any] = {"constant_sign_models": constant}
    if not llms or len(refs) < 2:
        out["edge"] = None
        out["sentence"] = ("No LLM variant ran: the table holds the baselines only." if not llms else
                           "Ridge and LightGBM are both needed to judge an edge; one did not run.")
        return out
    best = max(llms, key=lambda n: pooled[n]["ic"])
    beats = {r: comparisons[f"{best} vs {r}"]["ic"] for r in refs}
    edge = all(d["difference"] > 2 * d["se"] for d in beats.values())
    best_ref = max(pooled[r]["ic"] for r in refs)
    target_met = pooled[best]["ic"] >= best_ref + 0.02 and pooled[best]["ic"] > 2 * pooled[best]["ic_se"]
    out.update({"best_llm": best, "edge": edge, "ic_target_met": target_met,
                "ic_differences": {r: d for r, d in beats.items()}})
    diffs = ", ".join(f"{d['difference']:+.4f} ± {d['se']:.4f} against {r}" for r, d in beats.items())
    out["sentence"] = (f"The best LLM variant, {best}, {'HAS' if edge else 'has NO'} edge: its pooled IC is "
                       f"{pooled[best]['ic']:+.4f} ({diffs}); an edge needs more than two standard errors over both.")
    return out


# -- the report ------------------------------------------------------------------------------------------
def _f(value: Any, spec: str = "+.4f") -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _shown(path: Path) -> str:
    """``path`` relative to the project where it lies inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def markdown(report: dict[str, Any]) -> str:
    o = report["options"]
    lines = [START, "", "## Forecasts, walk-forward: the LLM regressor against ridge and LightGBM", "",
             f"Generated by `{report['command']}` on {report['generated']} ({report['machine']}), "
             f"{report['seconds']:.0f} s. Models that ran: {', '.join(o['models'])}. Every forecaster sees the same "
             f"window of the last {o['window']} bars' sixteen features and predicts the {o['horizon']}-bar log return "
             f"divided by the realised volatility; {o['folds']} purged walk-forward folds over the last "
             f"{o['test_share']:.0%} of each market, training on at most {o['max_train']:,} samples before each "
             f"block (purge: horizon + window bars), validation the last {o['val_share']:.0%} of those. Standard "
             "errors are Newey–West with horizon − 1 lags (the targets overlap). Trading: hold sign(forecast) for "
             f"the horizon, non-overlapping, after costs. `{_shown(Path(o['out']) / 'forecasts.json')}` holds every number."
             + (" **Centered targets** (`--center`): every model learns each ticker's target less its mean over the "
                "fold's training samples, so it forecasts the deviation from the training window's drift and never the "
                "drift itself (the test targets are not changed); the `mean` baseline is then the zero forecast and "
                "is left out." if o.get("center") else "")
             + (" **Intercept refitted** (the regressor's default): after training, each LLM variant's head bias is "
                "set so its mean forecast on the training windows equals their mean target, as ridge's intercept is."
                if o.get("refit_intercept") else " **Intercept not refitted** (`--no-refit-intercept`): each LLM "
                "variant's level is where the optimiser left its head."), ""]
    for result in report["markets"]:
        lines += [f"### {result['market']}", "",
                  f"{result['bars']:,} bars, {result['test_samples']:,} test samples in {len(result['folds'])} folds; "
                  f"costs: {result['cost_note']}.", "",
                  "| model | IC ± SE | hit rate ± SE | positive | R² (oos) | after-cost return | Sharpe | "
                  "break-even cost/side | time |", "|---|---|---|---|---|---|---|---|---|"]
        for name, m in result["pooled"].items():
            t = m["trading"]
            be = t["break_even_cost"]
            lines.append(f"| {name} | {_f(m['ic'])} ± {_f(m['ic_se'], '.4f')} | {_f(m['hit_rate'], '.3f')} ± "
                         f"{_f(m['hit_rate_se'], '.3f')} | {m['positive_share']:.0%} | {_f(m['r2_oos'])} | "
                         f"{t['return']:+.1%} | {_f(t['sharpe'], '+.2f')} | "
                         f"{'–' if be is None else f'{be:+.3%}'} | {m['seconds']:.0f} s |")
        lines += ["", "IC and positive share per fold:", "",
                  "| fold | test from | " + " | ".join(result["pooled"]) + " |",
                  "|---|---|" + "---|" * len(result["pooled"])]
        for fold in result["folds"]:
            cells = [f"{_f(m['ic'], '+.3f')} ({m['positive_share']:.0%})" for m in fold["models"].values()]
            lines.append(f"| {fold['fold']} | {fold['test_start'][:10]} | " + " | ".join(cells) + " |")
        if result["comparisons"]:
            lines += ["", "| comparison | IC difference ± SE | Diebold–Mariano (p) |", "|---|---|---|"]
            for pair, c in result["comparisons"].items():
                dm = c["diebold_mariano"]
                lines.append(f"| {pair} | {_f(c['ic']['difference'])} ± {_f(c['ic']['se'], '.4f')} | "
                             f"{_f(dm['statistic'], '+.2f')} ({_f(dm['p_value'], '.3f')}) |")
        v = result["verdict"]
        flagged = (f" Constant-sign forecasters (positive share outside 20–80% in a fold): "
                   f"{', '.join(v['constant_sign_models'])}." if v["constant_sign_models"] else
                   " No forecaster had a positive share outside 20–80% in any fold.")
        lines += ["", f"**Verdict:** {v['sentence']}{flagged}", ""]
    lines.append(END)
    return "\n".join(lines) + "\n"


def section_of(text: str) -> str | None:
    """The section in ``text``, its markers included, or None when it has none."""
    if START not in text or END not in text.split(START, 1)[1]:
        return None
    return START + text.split(START, 1)[1].split(END, 1)[0] + END


def write_section(path: Path, section: str) -> None:
    """Replace the text between the markers in ``path`` (or append it), leaving the rest untouched."""
    text = path.read_text() if path.is_file() else ""
    old = section_of(text)
    if old is not None:
        text = text.replace(old, section.rstrip("\n"), 1)
    else:
        text = text + ("\n" if text and not text.endswith("\n") else "") + "\n" + section
    atomic_write_text(path, text)


def run(options: Options, say: Callable[[str], None], command: str) -> dict[str, Any]:
    started = time.perf_counter()
    markets = [evaluate_market(key, options, say) for key in options.markets]
    report = {"command": command, "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.machine()}, {platform.python_version()}",
              "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options).items()},
              "markets": markets, "seconds": round(time.perf_counter() - started, 1)}
    options.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(options.out / "forecasts.json", json.dumps(report, indent=1, default=str) + "\n")
    write_section(options.evaluation_md, markdown(report))
    return report


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m research.forecasts", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Writes docs/evaluation/forecasts.json and EVALUATION.md's forecast section.")
    d = Options()
    parser.add_argument("--models", default=",".join(d.models), help=f"comma-separated (default: all): {', '.join(DEFAULT_MODELS)}")
    parser.add_argument("--markets", default=",".join(d.markets), help=f"comma-separated: {', '.join(MARKETS)}")
    parser.add_argument("--folds", type=int, default=d.folds, help="walk-forward folds (default %(default)s)")
    parser.add_argument("--window", type=int, default=d.window, help="bars per input window (default %(default)s)")
    parser.add_argument("--horizon", type=int, default=d.horizon, help="target horizon in bars (default %(default)s)")
    parser.add_argument("--test-share", type=float, default=d.test_share, help="share of the time range the folds test")
    parser.add_argument("--max-train", type=int, default=d.max_train, help="most recent training samples per fold (0: all)")
    parser.add_argument("--max-test", type=int, default=d.max_test, help="first test samples per fold (0: the whole block)")
    parser.add_argument("--llm-max-train", type=int, default=d.llm_max_train, help="LLM variants: most recent training samples (0: as --max-train)")
    parser.add_argument("--llm-epochs", type=float, default=d.llm_epochs, help="LLM variants: epochs (early stopping on validation)")
    parser.add_argument("--backbone", default=d.backbone, help="LLM variants' backbone (smollm2; tiny for a smoke run)")
    parser.add_argument("--center", action="store_true",
                        help="train every model on targets less their training mean (per ticker): forecast the "
                             "deviation from the training window's drift, not the drift")
    parser.add_argument("--refit-intercept", action=argparse.BooleanOptionalAction, default=d.refit_intercept,
                        help="LLM variants: after training, refit the head's bias so the mean forecast on the "
                             "training windows is their mean target, as ridge's intercept is (default: on)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--data", type=Path, default=d.data, help="the shared data folder (default ../shared/data)")
    parser.add_argument("--out", type=Path, default=d.out, help="where forecasts.json goes (default docs/evaluation)")
    parser.add_argument("--evaluation-md", type=Path, default=d.evaluation_md, help="the Markdown file whose section is rewritten")
    a = parser.parse_args(argv)
    models = tuple(m.strip() for m in a.models.split(",") if m.strip())
    if a.center and "mean" in models:
        if a.models != parser.get_default("models"):
            parser.error("--center trains on targets whose training mean is 0, so 'mean' would be the zero forecast "
                         "plus rounding noise: leave it out of --models")
        models = tuple(m for m in models if m != "mean")
    markets = tuple(m.strip() for m in a.markets.split(",") if m.strip())
    for m in models:
        if m not in DEFAULT_MODELS:
            parser.error(f"unknown model {m!r}; models: {', '.join(DEFAULT_MODELS)}")
    for m in markets:
        if m not in MARKETS:
            parser.error(f"unknown market {m!r}; markets: {', '.join(MARKETS)}")
    if a.window < 1 or a.horizon < 1 or a.folds < 1:
        parser.error("--window, --horizon and --folds must be >= 1")
    return Options(models=models, markets=markets, folds=a.folds, window=a.window, horizon=a.horizon,
                   test_share=a.test_share, max_train=a.max_train, max_test=a.max_test, seed=a.seed,
                   backbone=a.backbone, llm_epochs=a.llm_epochs, llm_max_train=a.llm_max_train, center=a.center,
                   refit_intercept=a.refit_intercept, data=a.data, out=a.out, evaluation_md=a.evaluation_md)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options = parse_args(argv)
    if any(m.startswith("llm_") for m in options.models):
        try:
            import torch  # noqa: F401

            import models.forecasting  # noqa: F401
        except ImportError as exc:
            print(f"error: the LLM variants need the llm extra ({exc.name} is missing); run the baselines with "
                  f"--models {','.join(BASELINE_NAMES)}", file=sys.stderr)
            return 2
    try:
        report = run(options, lambda line: print(line, file=sys.stderr, flush=True),
                     "python -m research.forecasts " + " ".join(argv))
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for result in report["markets"]:
        print(f"{result['market']}: {result['verdict']['sentence']}")
    return 0


if __name__ == "__main__":
    from engine import allocator

    allocator.start()  # tcmalloc where installed: less heap held, faster steps (engine/allocator.py)
    sys.exit(main())
