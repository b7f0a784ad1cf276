"""Parameter sweeps: a grid (or an Optuna search) over ``--set`` keys, over one or more data files.

::

    python -m engine sweep --strategy sma_cross --grid strategies.sma_cross.fast=5,10,20 \\
        --grid strategies.sma_cross.slow=30:90:20 --metric sharpe
    python -m engine sweep --strategy sma_cross --data a.csv --data b.csv --grid strategies.sma_cross.fast=5,10 \\
        --executor ray
    python -m engine sweep --strategy sma_cross --optuna 40 --range strategies.sma_cross.fast=3..40 \\
        --range strategies.sma_cross.slow=20..200

Every point on every data file is one backtest, recorded in the store like any other run
(``report RUN_ID`` shows it; its summary carries the sweep's id and the point's settings). The
sweep writes ``results.json``, ``results.csv``, a heat map of the chosen metric and an HTML page into
``store.reports_dir/sweep-<id>/`` (or ``--out``), and prints the table.

Points are ranked by the metric's mean over the data files (higher is better; for ``max_drawdown``,
a negative number, that means the shallower drawdown); a point whose metric is undefined (a Sharpe
ratio without a single trade) ranks last.

With ``--optuna N``, Optuna's TPE sampler (seeded by ``--seed``) proposes N points in batches of
``--batch``: each batch is asked for, run (in parallel on Ray), and told its results before the
next is asked for. The batches are the same with either executor, so the same seed proposes and
runs the same points serially and on Ray.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import itertools
import json
import math
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, DataError
from research.executors import EXECUTORS, Executor, executor

METRICS = ("total_return", "annualized_return", "sharpe", "sortino", "calmar", "max_drawdown", "profit_factor",
           "win_rate", "gross_return", "exposure")
MAX_POINTS = 10_000


# -- what is swept -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Axis:
    """A key and its values: a grid axis, or (with Optuna) a categorical choice."""

    key: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Span:
    """A key searched by Optuna between two bounds (inclusive): integers, floats, or floats on a log scale."""

    key: str
    low: float
    high: float
    kind: str  # "int", "float" or "log"


def _value(text: str, where: str) -> Any:
    """One value as TOML reads it (``5``, ``0.5``, ``true``, ``"fast"``); a bare word is a string."""
    import tomllib

    text = text.strip()
    if not text:
        raise ConfigError(f"{where}: an empty value")
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _key_and_rest(text: str, flag: str, example: str) -> tuple[str, str]:
    key, sep, rest = text.partition("=")
    key = key.strip()
    if not sep or not key or not rest.strip() or "." not in key:
        raise ConfigError(f"{flag} {text!r}: expected SECTION.KEY=VALUES, e.g. {flag} {example}")
    return key, rest


def parse_axis(text: str) -> Axis:
    """``KEY=V1,V2,...`` or ``KEY=START:STOP:STEP`` (numbers, STOP included when it falls on a step)."""
    key, rest = _key_and_rest(text, "--grid", "strategies.sma_cross.fast=5,10,20")
    where = f"--grid {key}"
    if ":" in rest and "," not in rest:
        parts = [_value(p, where) for p in rest.split(":")]
        if len(parts) != 3 or not all(isinstance(p, int | float) and not isinstance(p, bool) for p in parts):
            raise ConfigError(f"{where}: a range is START:STOP:STEP in numbers, e.g. 10:50:10 (got {rest!r})")
        start, stop, step = parts
        if step <= 0 or stop < start:
            raise ConfigError(f"{where}: a range needs STEP > 0 and STOP >= START (got {rest!r})")
        count = int(math.floor((stop - start) / step + 1e-9)) + 1
        if count > MAX_POINTS:
            raise ConfigError(f"{where}: {count:,} values; at most {MAX_POINTS:,}")
        kind = int if all(isinstance(p, int) for p in parts) else float
        values = tuple(kind(round(start + i * step, 12)) for i in range(count))
    else:
        values = tuple(_value(v, where) for v in rest.split(","))
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"{where}: a value is listed twice ({rest!r})")
    return Axis(key, values)


def parse_span(text: str) -> Span:
    """``KEY=LOW..HIGH`` (integers if both are), with ``:log`` for a log scale, e.g. ``1e-4..1e-1:log``."""
    key, rest = _key_and_rest(text, "--range", "strategies.sma_cross.fast=3..40")
    where = f"--range {key}"
    body, _, scale = rest.partition(":")
    low_text, sep, high_text = body.partition("..")
    low, high = (_value(low_text, where), _value(high_text, where)) if sep else (None, None)
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
        raise ConfigError(f"{where}: expected LOW..HIGH in numbers, e.g. 3..40 or 0.001..0.1:log (got {rest!r})")
    assert isinstance(low, int | float) and isinstance(high, int | float)
    if not high > low:
        raise ConfigError(f"{where}: HIGH must be above LOW (got {rest!r})")
    if scale.strip() not in ("", "log"):
        raise ConfigError(f"{where}: the only scale is ':log' (got {scale!r})")
    if scale.strip() == "log":
        if low <= 0:
            raise ConfigError(f"{where}: a log scale needs LOW > 0 (got {low})")
        kind = "log"
    else:
        kind = "int" if isinstance(low, int) and isinstance(high, int) else "float"
    return Span(key, float(low), float(high), kind)


def grid(axes: Sequence[Axis]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, the first axis varying slowest."""
    keys = [a.key for a in axes]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--grid: a key is swept twice ({', '.join(keys)})")
    count = math.prod(len(a.values) for a in axes)
    if count > MAX_POINTS:
        raise ConfigError(f"the grid has {count:,} points; at most {MAX_POINTS:,} (use --optuna N to search it)")
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(a.values for a in axes))]


# -- one point ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    """One backtest of the sweep: what a worker needs to run it, and nothing it must share."""

    index: int  # the point's number in the sweep (several data files share it)
    params: dict[str, Any]
    data: str | None  # a bar file, or None: the config's own data
    config_path: str | None
    overrides: tuple[str, ...]  # --set and the run flags, before the point's own values
    sweep_id: str

    def settings(self) -> list[str]:
        data = [f"data.bars={json.dumps(self.data)}"] if self.data is not None else []
        return [*self.overrides, *data, *(f"{k}={json.dumps(v)}" for k, v in self.params.items())]


def point_config(point: Point) -> Any:
    """The point's checked config, its strategy's parameters included (a typo fails here, before any run)."""
    from engine.session import load_settings, strategy_factory

    config = load_settings(point.config_path, point.settings())
    strategy_factory(config)
    return config


def run_point(point: Point) -> dict[str, Any]:
    """Run and record one point; its row of the results (JSON-able)."""
    from engine.session import prepare_backtest, run_recorded

    config = point_config(point)
    plan = prepare_backtest(config)
    plan = dataclasses.replace(plan, extra={**plan.extra, "sweep": {"id": point.sweep_id, "point": point.index,
                                                                     "params": point.params}})
    started = time.perf_counter()
    _, summary = run_recorded(plan)
    m = summary["metrics"]
    return {"point": point.index, "params": point.params, "data": summary.get("data"),
            "run_id": summary["run_id"] if summary.get("database") else None,
            "metrics": {k: _finite(m.get(k)) for k in METRICS},
            "buy_and_hold_return": _finite(m["buy_and_hold_return"]), "round_trips": m["round_trips"],
            "fills": summary["fills"], "costs": sum(summary[k] for k in ("fees", "spread", "slippage", "funding")),
            "seconds": round(time.perf_counter() - started, 3)}


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


# -- the sweep ------------------------------------------------------------------------------------
@dataclass
class SweepSpec:
    axes: list[Axis]
    spans: list[Span]
    data: list[str | None]
    config_path: str | None
    overrides: tuple[str, ...]
    metric: str = "sharpe"
    optuna_trials: int = 0
    batch: int = 4
    seed: int = 0
    cpus: int = 1  # per point, on Ray

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"--metric {self.metric!r}: choose one of {', '.join(METRICS)}")
        if not self.axes and not self.spans:
            raise ConfigError("nothing to sweep: give at least one --grid KEY=V1,V2 (or --range with --optuna)")
        if self.spans and not self.optuna_trials:
            raise ConfigError("--range is searched by Optuna: add --optuna N (the number of points to try), "
                              "or list values with --grid KEY=V1,V2,...")
        if self.optuna_trials < 0 or self.batch < 1 or self.cpus < 1:
            raise ConfigError("--optuna, --batch and --cpus-per-point must be positive")
        keys = [a.key for a in self.axes] + [s.key for s in self.spans]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"a key is swept twice ({', '.join(keys)})")

    @property
    def keys(self) -> list[str]:
        return [a.key for a in self.axes] + [s.key for s in self.spans]


def run_sweep(spec: SweepSpec, ex: Executor, *, say: Callable[[str], None] | None = None,
              progress: bool = False) -> dict[str, Any]:
    """Every point's rows (in point order, then data order), the best point and the timing."""
    sweep_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    started = time.perf_counter()

    def points_for(params_list: Sequence[dict[str, Any]], first: int) -> list[Point]:
        return [Point(first + i, params, data, spec.config_path, spec.overrides, sweep_id)
                for i, params in enumerate(params_list) for data in spec.data]

    def run(points: list[Point]) -> list[dict[str, Any]]:
        for p in points:  # every point's config is checked before the first runs
            point_config(p)
        labels = [_label(p.params) + (f" on {Path(p.data).name}" if p.data else "") for p in points]
        return _map_with_progress(ex, points, labels, say, progress, spec.cpus)

    if not spec.optuna_trials:
        params_list = grid(spec.axes)
        _prepare_store(points_for(params_list[:1], 0)[0])
        if say is not None:
            say(f"sweep {sweep_id}: {len(params_list):,} points x {len(spec.data)} data = "
                f"{len(params_list) * len(spec.data):,} backtests on {ex.name}")
        rows = run(points_for(params_list, 0))
    else:
        rows = _optuna(spec, run, points_for, say)
    ranked = _rank(rows, spec.metric, len(spec.data))
    return {"sweep_id": sweep_id, "metric": spec.metric, "executor": ex.name, "keys": spec.keys,
            "search": "optuna" if spec.optuna_trials else "grid", "seed": spec.seed if spec.optuna_trials else None,
            "data": [d or "config" for d in spec.data], "rows": rows, "ranking": ranked,
            "best": ranked[0] if ranked else None, "seconds": round(time.perf_counter() - started, 3)}


def _prepare_store(point: Point) -> None:
    """Create (or migrate) the store once here, so that parallel workers never race to create it."""
    config = point_config(point)
    if config.store.enabled:
        from engine.store.db import open_store

        open_store(config.store.url, busy_timeout=config.store.busy_timeout).close()


def _map_with_progress(ex: Executor, points: list[Point], labels: list[str], say: Callable[[str], None] | None,
                       progress: bool, cpus: int) -> list[dict[str, Any]]:
    if not progress:
        return ex.map(run_point, points, labels=labels, say=say, cpus=cpus)
    from tqdm import tqdm

    with tqdm(total=len(points), unit="run", desc="sweep", leave=False) as bar:
        def tick(line: str) -> None:
            bar.update(1)
            bar.set_postfix_str(line.split(": ", 1)[-1][:60])

        return ex.map(run_point, points, labels=labels, say=tick, cpus=cpus)


def _optuna(spec: SweepSpec, run: Callable[[list[Point]], list[dict[str, Any]]],
            points_for: Callable[[Sequence[dict[str, Any]], int], list[Point]],
            say: Callable[[str], None] | None) -> list[dict[str, Any]]:
    try:
        import optuna
    except ImportError:
        raise ConfigError("--optuna needs Optuna, an optional extra: pip install -e '.[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=spec.seed))
    rows: list[dict[str, Any]] = []
    done = 0
    while done < spec.optuna_trials:
        trials = [study.ask() for _ in range(min(spec.batch, spec.optuna_trials - done))]
        params_list = [_suggest(t, spec) for t in trials]
        points = points_for(params_list, done)
        if done == 0:
            _prepare_store(points[0])
        batch_rows = run(points)
        rows += batch_rows
        for k, trial in enumerate(trials):
            score = _mean([r["metrics"][spec.metric] for r in batch_rows if r["point"] == done + k])
            if score is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, score)
        done += len(trials)
        if say is not None:
            best = _rank(rows, spec.metric, len(spec.data))
            say(f"optuna: {done}/{spec.optuna_trials} points; best so far {_label(best[0]['params'])} "
                f"({spec.metric} {_num(best[0]['score'])})" if best else f"optuna: {done}/{spec.optuna_trials}")
    return rows


def _suggest(trial: Any, spec: SweepSpec) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for axis in spec.axes:
        params[axis.key] = trial.suggest_categorical(axis.key, list(axis.values))
    for span in spec.spans:
        if span.kind == "int":
            params[span.key] = trial.suggest_int(span.key, int(span.low), int(span.high))
        else:
            params[span.key] = trial.suggest_float(span.key, span.low, span.high, log=span.kind == "log")
    return params


def _mean(values: Sequence[float | None]) -> float | None:
    """The mean over the data files; undefined if the metric is undefined on any of them."""
    if not values or any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None) / len(values)


def _rank(rows: Sequence[dict[str, Any]], metric: str, n_data: int) -> list[dict[str, Any]]:
    """One entry per point with its mean metric over the data files, best first (undefined last)."""
    by_point: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_point.setdefault(r["point"], []).append(r)
    entries = [{"point": k, "params": rs[0]["params"], "score": _mean([r["metrics"][metric] for r in rs]),
                "run_ids": [r["run_id"] for r in rs]} for k, rs in by_point.items() if len(rs) == n_data]
    return sorted(entries, key=lambda e: (e["score"] is None, -(e["score"] or 0.0), e["point"]))


def _label(params: dict[str, Any]) -> str:
    return " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in params.items())


# -- output ---------------------------------------------------------------------------------------
def format_table(result: dict[str, Any]) -> str:
    """The results table: one line per point and data file, the best point marked."""
    keys = result["keys"]
    metric = result["metric"]
    best = result["best"]["point"] if result["best"] else None
    short = [k.rsplit(".", 1)[-1] for k in keys]
    head = ["", "#", *short, "data", metric, "return", "b&h", "max dd", "trips", "run"]
    lines = [head]
    for r in result["rows"]:
        m = r["metrics"]
        lines.append(["*" if r["point"] == best else "", str(r["point"]), *(_cell(r["params"][k]) for k in keys),
                      Path(str(r["data"])).name[:28], _num(m[metric], pct=metric in _PCT), _num(m["total_return"], pct=True),
                      _num(r["buy_and_hold_return"], pct=True), _num(m["max_drawdown"], pct=True), str(r["round_trips"]),
                      r["run_id"] or "-"])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    left = {0, len(short) + 2, len(head) - 1}  # the marker, the data file and the run id; numbers to the right
    text = ["  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
            .rstrip() for row in lines]
    if result["best"]:
        b = result["best"]
        text += ["", f"best: {_label(b['params'])}  ({metric} {_num(b['score'], pct=metric in _PCT)}"
                     f"{' mean over ' + str(len(result['data'])) + ' data files' if len(result['data']) > 1 else ''})"]
    text.append(f"{len(result['rows']):,} backtests in {result['seconds']:.1f} s on {result['executor']}")
    return "\n".join(text)


_PCT = {"total_return", "annualized_return", "max_drawdown", "win_rate", "gross_return", "exposure"}


def _cell(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _num(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.2f}%" if pct else f"{x:.3f}"


def write_outputs(result: dict[str, Any], folder: Path) -> dict[str, Path]:
    """results.json, results.csv, the heat map (PNG) and an HTML page, each written atomically."""
    from engine.files import atomic_write, atomic_write_text

    png = plot_sweep(result)
    paths = {"json": folder / "results.json", "csv": folder / "results.csv", "chart": folder / "heatmap.png",
             "html": folder / "index.html"}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(paths["json"], json.dumps(result, indent=1, allow_nan=False))
    atomic_write_text(paths["csv"], _csv(result))
    atomic_write(paths["chart"], png)
    atomic_write_text(paths["html"], _html(result, png))
    return paths


def _csv(result: dict[str, Any]) -> str:
    buffer = io.StringIO()
    out = csv.writer(buffer, lineterminator="\n")
    out.writerow(["point", *result["keys"], "data", *METRICS, "buy_and_hold_return", "round_trips", "fills", "costs",
                  "run_id"])
    for r in result["rows"]:
        out.writerow([r["point"], *(r["params"][k] for k in result["keys"]), r["data"],
                      *("" if r["metrics"][k] is None else r["metrics"][k] for k in METRICS),
                      r["buy_and_hold_return"], r["round_trips"], r["fills"], r["costs"], r["run_id"] or ""])
    return buffer.getvalue()


def plot_sweep(result: dict[str, Any]) -> bytes:
    """The metric over the first two swept keys: a heat map for a grid (the best over any further key),
    a scatter of the points tried for Optuna, a line for a single key; the PNG's bytes."""
    import numpy as np
    from matplotlib.figure import Figure

    from engine.report import charts

    keys, metric = result["keys"], result["metric"]
    ranking = result["ranking"]
    pct = metric in _PCT
    fig = Figure(figsize=(charts.WIDTH * 0.7, 5.2), layout="constrained")
    ax = fig.subplots()
    scores = {e["point"]: e["score"] for e in ranking}
    params = {e["point"]: e["params"] for e in ranking}
    title = f"{metric}" + (f" (mean over {len(result['data'])} data files)" if len(result["data"]) > 1 else "")
    if len(keys) == 1 or result["search"] == "optuna":
        xs = [params[p][keys[0]] for p in scores]
        ys = [np.nan if scores[p] is None else scores[p] for p in scores]
        if len(keys) == 1:
            order = np.argsort(np.asarray(xs, dtype=float)) if _numeric(xs) else np.arange(len(xs))
            ax.plot([str(xs[i]) if not _numeric(xs) else xs[i] for i in order], [ys[i] for i in order], marker="o",
                    color=charts.COLORS["strategy"])
            ax.set_xlabel(keys[0])
            ax.set_ylabel(metric)
            if pct:
                ax.yaxis.set_major_formatter(charts.PERCENT)
        else:
            yv = [params[p][keys[1]] for p in scores]
            sc = ax.scatter(xs, yv, c=ys, cmap="RdYlGn", s=60, edgecolors="#333")
            cbar = fig.colorbar(sc, ax=ax)
            cbar.set_label(metric)
            if pct:
                cbar.ax.yaxis.set_major_formatter(charts.PERCENT)
            ax.set_xlabel(keys[0])
            ax.set_ylabel(keys[1])
            title += f", {len(scores)} points tried by Optuna"
    else:
        xk, yk = keys[0], keys[1]
        xv = sorted({params[p][xk] for p in scores}, key=_sort_key)
        yv = sorted({params[p][yk] for p in scores}, key=_sort_key)
        z = np.full((len(yv), len(xv)), np.nan)
        for p, s in scores.items():
            if s is None:
                continue
            i, j = yv.index(params[p][yk]), xv.index(params[p][xk])
            z[i, j] = s if np.isnan(z[i, j]) else max(z[i, j], s)  # the best over any further key
        finite = z[np.isfinite(z)]
        bound = float(np.max(np.abs(finite))) if finite.size else 1.0
        image = ax.imshow(z, cmap="RdYlGn", vmin=-bound, vmax=bound, origin="lower", aspect="auto")
        ax.grid(False)
        ax.set_xticks(range(len(xv)), [_cell(v) for v in xv])
        ax.set_yticks(range(len(yv)), [_cell(v) for v in yv])
        ax.set_xlabel(xk)
        ax.set_ylabel(yk)
        for i in range(len(yv)):
            for j in range(len(xv)):
                text = "n/a" if np.isnan(z[i, j]) else _num(float(z[i, j]), pct=pct)
                ax.text(j, i, text, ha="center", va="center", fontsize=8)
        cbar = fig.colorbar(image, ax=ax)
        cbar.set_label(metric)
        if len(keys) > 2:
            title += f"; each cell the best over {', '.join(k.rsplit('.', 1)[-1] for k in keys[2:])}"
    ax.set_title(f"Sweep {result['sweep_id']}: {title}", fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=charts.DPI, format="png")
    return buffer.getvalue()


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _sort_key(v: Any) -> tuple[int, Any]:
    return (0, v) if isinstance(v, int | float) and not isinstance(v, bool) else (1, str(v))


def _html(result: dict[str, Any], png: bytes) -> str:
    import base64
    import html

    from engine.report.html import CSS

    e = html.escape
    keys, metric = result["keys"], result["metric"]
    best = result["best"]["point"] if result["best"] else None
    head = "".join(f"<th>{e(k)}</th>" for k in ["#", *keys, "data", metric, "return", "buy & hold", "max drawdown",
                                                  "round trips", "run"])
    body = []
    for r in result["rows"]:
        m = r["metrics"]
        cells = [str(r["point"]), *(_cell(r["params"][k]) for k in keys), Path(str(r["data"])).name,
                 _num(m[metric], pct=metric in _PCT), _num(m["total_return"], pct=True),
                 _num(r["buy_and_hold_return"], pct=True), _num(m["max_drawdown"], pct=True), str(r["round_trips"]),
                 r["run_id"] or "-"]
        style = ' style="font-weight:600"' if r["point"] == best else ""
        body.append(f"<tr{style}>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    summary = format_table(result).rsplit("\n", 2)
    img = base64.b64encode(png).decode("ascii")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Sweep {e(result['sweep_id'])}</title>"
            f"<style>{CSS}</style></head><body><h1>Sweep {e(result['sweep_id'])}</h1>"
            f"<p class='sub'>{e(result['search'])} over {e(', '.join(keys))}; metric {e(metric)}; "
            f"{len(result['rows'])} backtests on {e(result['executor'])} in {result['seconds']:.1f} s</p>"
            f"<p>{e(summary[-2] if len(summary) > 1 else '')}</p>"
            f"<img alt='{e(metric)} over the swept keys' src='data:image/png;base64,{img}'>"
            f"<h2>Points</h2><table><tr>{head}</tr>{''.join(body)}</table>"
            "<footer>Every run is in the store: python -m engine report RUN_ID</footer></body></html>")


# -- the command ------------------------------------------------------------------------------------
def add_parser(sub: Any, add_run_options: Callable[..., None]) -> None:
    p = sub.add_parser(
        "sweep", help="run a strategy over a grid (or an Optuna search) of settings, on one or more data files",
        description=__doc__.split("\n\n")[0] + " Each point is a recorded run; the results table, a heat map "
        "and an HTML page are written at the end.",
        epilog="examples:" + __doc__.split("::", 1)[1].split("\n\n")[1].replace("    python", "\n  python")
        .replace("\\\n        ", "") + "\n\nexecutors:\n  serial (default): one point after another here\n  "
        "ray: pip install -e '.[ray]'; local Ray on --workers CPUs, or a cluster with --ray-address HOST:PORT "
        "(record into PostgreSQL there: --set store.url=postgresql+psycopg://...)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(p, many_data=True)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a swept key and its values (or START:STOP:STEP); repeatable, e.g. "
                   "--grid strategies.sma_cross.fast=5,10,20")
    p.add_argument("--range", dest="spans", action="append", default=[], metavar="KEY=LOW..HIGH[:log]",
                   help="with --optuna: a key searched between bounds (integers if both are)")
    p.add_argument("--metric", default="sharpe", choices=METRICS, help="what ranks the points (default: sharpe)")
    p.add_argument("--optuna", type=int, default=0, metavar="N",
                   help="search N points with Optuna's TPE sampler instead of the whole grid (extra: '.[sweep]')")
    p.add_argument("--batch", type=int, default=4, help="Optuna: points asked for at a time (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="Optuna's seed (default: 0)")
    p.add_argument("--executor", choices=EXECUTORS, default="serial", help="where the points run (default: serial)")
    p.add_argument("--workers", type=int, help="local Ray: CPUs to use (default: all)")
    p.add_argument("--ray-address", help="join a running Ray cluster, e.g. 10.0.0.5:6379 (default: start a local Ray)")
    p.add_argument("--cpus-per-point", type=int, default=1,
                   help="Ray: cores (and math threads) per point (default: 1). An llm_signal sweep trains at each "
                   "point: give it as many as torch uses serially (the machine's cores) for results equal to serial")
    p.add_argument("--out", type=Path, help="folder for the results (default: store.reports_dir/sweep-<id>)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object instead of a table")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def main(args: argparse.Namespace, config_path: Path | None, load_config: Callable[..., Any],
         flags: list[str]) -> int:
    """``flags``: the run flags as settings (``--strategy`` and the like, ``--data`` aside: that is swept)."""
    base = load_config(args, flags)  # the file and the flags checked once, before any point
    data: list[str | None] = [str(Path(d)) for d in args.data] if args.data else [None]
    for d in data:
        if d is not None and not Path(d).is_file():
            raise DataError(f"--data {d}: no such file")
    spec = SweepSpec(axes=[parse_axis(g) for g in args.grid], spans=[parse_span(s) for s in args.spans], data=data,
                     config_path=str(config_path) if config_path else None, overrides=(*args.overrides, *flags), metric=args.metric, optuna_trials=args.optuna, batch=args.batch, seed=args.seed,
                     cpus=args.cpus_per_point)
    progress = not args.json and not args.no_progress and sys.stderr.isatty()
    say = None if args.json else _stderr
    with executor(args.executor, address=args.ray_address, workers=args.workers, say=say) as ex:
        result = run_sweep(spec, ex, say=None if progress else say, progress=progress)
    folder = args.out or Path(base.store.reports_dir) / f"sweep-{result['sweep_id']}"
    paths = write_outputs(result, folder)
    result["files"] = {k: str(v) for k, v in paths.items()}
    if args.json:
        print(json.dumps(result, allow_nan=False))
    else:
        print(format_table(result))
        print(f"results: {paths['csv']}, {paths['json']}\nheat map: {paths['chart']}\npage: {paths['html']}")
    return 0


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)

