"""The report's PNG charts, drawn with matplotlib's object API (no pyplot, no global state, no
display: ``Figure`` renders through the Agg canvas). Each function draws one chart from a run's
stored record and returns the ``Figure``; ``save`` writes it.

Every chart shows its text as written: a ``$`` in a symbol, file name or run id is not maths text
(matplotlib would read ``$...$`` as mathtext, change it or fail on it), so each chart is drawn with
``text.parse_math`` and ``text.usetex`` off.

Long runs are thinned for drawing only (a chart is ~1,300 pixels wide): each bucket keeps its
last point and, for the drawdown, its deepest one, so no spike disappears.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec

import matplotlib as mpl
import numpy as np
from matplotlib import dates as mdates
from matplotlib import ticker
from matplotlib.figure import Figure

from engine.files import atomic_write
from engine.report import stats
from engine.store.queries import RunData

mpl.rcParams.update({
    "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
    "axes.titlesize": 12, "axes.titleweight": "bold", "axes.labelsize": 10, "legend.fontsize": 9,
    "legend.framealpha": 0.85, "font.size": 9,
})
WIDTH = 12.0
DPI = 110
MAX_POINTS = 4_000
RECENT_BARS = 500  # the close-up panel of a long run's price chart
COLORS = {"strategy": "#1f5fa8", "hold": "#8c8c8c", "buy": "#1a9850", "sell": "#d73027", "fees": "#4575b4",
          "spread": "#fdae61", "slippage": "#f46d43", "funding": "#762a83", "dd": "#d73027", "b": "#e08214"}
PERCENT = ticker.PercentFormatter(xmax=1.0, decimals=0)
MONEY = ticker.FuncFormatter(lambda x, _: f"{x:,.0f}")
AS_WRITTEN = {"text.parse_math": False, "text.usetex": False}  # see the module's docstring
P = ParamSpec("P")


def _as_written(draw: Callable[P, Figure]) -> Callable[P, Figure]:
    """Draw under ``AS_WRITTEN``: every text object the chart makes shows its string as it is."""
    @functools.wraps(draw)
    def drawn(*args: P.args, **kwargs: P.kwargs) -> Figure:
        with mpl.rc_context(AS_WRITTEN):
            return draw(*args, **kwargs)
    return drawn


def save(fig: Figure, path: Path) -> Path:
    """Draw ``fig`` as a PNG at ``path``: drawn in memory first, then written atomically, so a
    failing chart never leaves a half file (or a stale one half replaced)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, format="png")
    atomic_write(path, buffer.getvalue())
    return path


def _figure(height: float = 4.6, rows: int = 1, ratios: list[float] | None = None, sharex: bool = True) -> tuple[Figure, list]:
    fig = Figure(figsize=(WIDTH, height), layout="constrained")
    axes = fig.subplots(rows, 1, sharex=sharex, squeeze=False, gridspec_kw={"height_ratios": ratios} if ratios else None)
    return fig, list(axes[:, 0])


def _fill_markers(ax, fills: list) -> None:
    """Buy and sell fills as up / down triangles at their prices (smaller, unrimmed when there are many)."""
    dense = len(fills) > 300
    for side, marker, name in ((1, "^", "buy"), (-1, "v", "sell")):
        chosen = [f for f in fills if int(f.side) == side]
        if chosen:
            ax.scatter(stats.to_datetime(np.array([f.ts_event for f in chosen])), [f.price for f in chosen],
                       marker=marker, s=14 if dense else 40, color=COLORS[name], zorder=3,
                       edgecolors="none" if dense else "white", linewidths=0.5, label=f"{name} fills ({len(chosen):,})")


def _dates(ax) -> None:
    locator = mdates.AutoDateLocator(minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _thin(ts: np.ndarray, *values: np.ndarray, keep_min: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """At most ~MAX_POINTS points: the last of each bucket (and the bucket's minimum of ``keep_min``)."""
    n = len(ts)
    if n <= MAX_POINTS:
        return (ts, *values) + ((keep_min,) if keep_min is not None else ())
    step = -(-n // MAX_POINTS)
    last = np.minimum(np.arange(step - 1, n + step - 1, step), n - 1)
    out = [ts[last], *(v[last] for v in values)]
    if keep_min is not None:
        starts = np.arange(0, n, step)
        out.append(np.minimum.reduceat(keep_min, starts))
    return tuple(out)


def _subtitle(data: RunData) -> str:
    info = data.info
    label = Path(info.data_label).name if "/" in info.data_label else info.data_label
    status = "" if info.status == "completed" else f"  [{info.status.upper()}]"
    return f"{info.run_id} · {info.strategy} · {', '.join(info.symbols)} · {label}{status}"


def _empty(ax, text: str = "nothing recorded") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="#777")


# -- one run -------------------------------------------------------------------------------------
@_as_written
def equity_chart(data: RunData) -> Figure:
    fig, (ax,) = _figure()
    ax.set_title(f"Equity vs buy-and-hold\n{_subtitle(data)}", loc="left")
    if len(data.equity):
        hold = stats.buy_and_hold_curve(data)
        ts, eq, *rest = _thin(data.equity_ts, data.equity, *([hold] if hold is not None else []))
        x = stats.to_datetime(ts)
        ax.plot(x, eq, color=COLORS["strategy"], lw=1.4, label=f"strategy (final {data.equity[-1]:,.0f})")
        if rest:
            ax.plot(x, rest[0], color=COLORS["hold"], lw=1.1, ls="--",
                    label=f"buy and hold, no costs (final {hold[-1]:,.0f})")
        ax.axhline(data.info.starting_cash, color="black", lw=0.7, alpha=0.5)
        ax.annotate(f"start {data.info.starting_cash:,.0f}", (x[0], data.info.starting_cash), xytext=(4, 4),
                    textcoords="offset points", fontsize=8, color="#555")
        ax.legend(loc="best")
        _dates(ax)
    else:
        _empty(ax)
    ax.set_ylabel("equity (quote currency)")
    ax.yaxis.set_major_formatter(MONEY)
    ax.set_xlabel("time (UTC)")
    return fig


@_as_written
def drawdown_chart(data: RunData) -> Figure:
    fig, (ax,) = _figure(height=3.6)
    ax.set_title(f"Drawdown from the running peak\n{_subtitle(data)}", loc="left")
    if len(data.equity):
        dd = stats.drawdown(data.equity, data.info.starting_cash)
        ts, _, deepest = _thin(data.equity_ts, dd, keep_min=dd)
        x = stats.to_datetime(ts)
        ax.fill_between(x, deepest, 0.0, color=COLORS["dd"], alpha=0.35, lw=0, step="pre")
        ax.plot(x, deepest, color=COLORS["dd"], lw=0.8, drawstyle="steps-pre", label="drawdown")
        i = int(np.argmin(dd))
        ax.annotate(f"max {dd[i]:.1%}", (stats.to_datetime(data.equity_ts[i:i + 1])[0], dd[i]), xytext=(8, -2),
                    textcoords="offset points", fontsize=9, color=COLORS["dd"], fontweight="bold")
        ax.set_ylim(min(float(dd.min()) * 1.12, -0.01), 0.005)
        ax.legend(loc="lower left")
        _dates(ax)
    else:
        _empty(ax)
    ax.yaxis.set_major_formatter(PERCENT)
    ax.set_ylabel("below peak")
    ax.set_xlabel("time (UTC)")
    return fig


@_as_written
def price_chart(data: RunData) -> Figure:
    """Each symbol's closes with its buy and sell fills; a long run gets a second panel with its last
    ``RECENT_BARS`` bars, where single entries and exits can be told apart."""
    symbols = ([s for s, (t, _) in data.prices.items() if len(t)] or list(data.prices)[:1])[:3]
    panels = [(s, recent) for s in symbols
              for recent in ((False, True) if len(data.prices.get(s, ((),))[0]) > 3 * RECENT_BARS else (False,))]
    fig, axes = _figure(height=1.2 + 3.0 * len(panels), rows=max(1, len(panels)), sharex=False)
    axes[0].set_title(f"Price with entries and exits\n{_subtitle(data)}", loc="left")
    for ax, (symbol, recent) in zip(axes, panels):
        ts, closes = data.prices.get(symbol, (np.empty(0, np.int64), np.empty(0)))
        if not len(ts):
            _empty(ax, f"no prices recorded for {symbol}")
            continue
        fills = [f for f in data.fills if f.symbol == symbol]
        if recent:
            ts, closes = ts[-RECENT_BARS:], closes[-RECENT_BARS:]
            fills = [f for f in fills if f.ts_event >= ts[0]]
            ax.set_title(f"the last {RECENT_BARS:,} bars", loc="left", fontsize=10)
        tt, cc = _thin(ts, closes)
        ax.plot(stats.to_datetime(tt), cc, color="#333", lw=0.9, label=f"{symbol} close")
        _fill_markers(ax, fills)
        ax.set_ylabel(f"{symbol} price")
        decimals = 2 if float(np.nanmax(closes)) < 100 else 0
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _, d=decimals: f"{x:,.{d}f}"))
        ax.legend(loc="best")
        ax.set_xlabel("time (UTC)")
        _dates(ax)
    return fig


@_as_written
def position_chart(data: RunData) -> Figure:
    fig, (top, bottom) = _figure(height=5.6, rows=2, ratios=[1.3, 1.0])
    top.set_title(f"Position over time\n{_subtitle(data)}", loc="left")
    held = stats.positions_over_time(data)
    end = int(data.equity_ts[-1]) if len(data.equity_ts) else None
    if held:
        for symbol, (ts, qty) in held.items():
            if end is not None and ts[-1] < end:
                ts, qty = np.append(ts, end), np.append(qty, qty[-1])
            tt, qq = _thin(ts, qty)
            top.step(stats.to_datetime(tt), qq, where="post", lw=0.9, label=f"{symbol} (signed quantity)")
        top.axhline(0.0, color="black", lw=0.6)
        top.legend(loc="upper left")
    else:
        _empty(top, "no fills: never in a position")
    top.set_ylabel("quantity held")
    if len(data.equity):
        with np.errstate(divide="ignore", invalid="ignore"):
            exposure = np.where(data.equity > 0, data.gross_exposure / data.equity, np.nan)
        ts, ex = _thin(data.equity_ts, exposure)
        bottom.fill_between(stats.to_datetime(ts), ex, 0.0, step="post", color=COLORS["strategy"], alpha=0.35, lw=0,
                            label="gross exposure / equity")
        bottom.legend(loc="upper left")
        bottom.yaxis.set_major_formatter(PERCENT)
        _dates(bottom)
    bottom.set_ylabel("exposure")
    bottom.set_xlabel("time (UTC)")
    return fig


@_as_written
def cost_chart(data: RunData) -> Figure:
    fig = Figure(figsize=(WIDTH, 4.4), layout="constrained")
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.0, 1.6]})
    fig.suptitle(f"Costs: where the gross return went\n{_subtitle(data)}", x=0.01, ha="left",
                 fontsize=12, fontweight="bold")
    totals = stats.cost_totals(data).as_dict()
    start = data.info.starting_cash
    names = list(totals)
    values = [totals[n] for n in names]
    bars = left.barh(names, values, color=[COLORS[n] for n in names])
    left.invert_yaxis()
    for bar, value in zip(bars, values):
        left.annotate(f" {value:,.2f} ({value / start:.2%} of start)", (max(bar.get_width(), 0.0),
                      bar.get_y() + bar.get_height() / 2), va="center", fontsize=8)
    left.set_xlim(min(0.0, min(values) * 1.1), max(max(values), 1e-9) * 1.9)
    left.set_title(f"total {sum(values):,.2f} ({sum(values) / start:.1%} of starting cash)", fontsize=10, loc="left")
    left.set_xlabel("quote currency")
    left.xaxis.set_major_formatter(MONEY)
    curves = stats.cumulative_costs(data)
    if curves:
        for name, (ts, cum) in curves.items():
            tt, cc = _thin(ts, cum)
            right.step(stats.to_datetime(tt), cc, where="post", color=COLORS[name], lw=1.3, label=name)
        right.legend(loc="upper left")
        _dates(right)
    else:
        _empty(right, "no costs paid")
    right.set_title("cumulative", fontsize=10, loc="left")
    right.set_ylabel("quote currency")
    right.set_xlabel("time (UTC)")
    right.yaxis.set_major_formatter(MONEY)
    return fig


@_as_written
def monthly_chart(data: RunData) -> Figure:
    table = stats.monthly_table(data)
    if table.empty:
        fig, (ax,) = _figure(height=3.0)
        ax.set_title(f"Monthly returns\n{_subtitle(data)}", loc="left")
        _empty(ax)
        return fig
    if len(table) > 25:  # a century of synthetic bars: one bar per year reads better than 1,200 cells
        return _yearly_chart(data)
    months = table.iloc[:, :12].to_numpy(dtype=float)
    fig = Figure(figsize=(WIDTH, max(3.0, 1.7 + 0.42 * len(table))), layout="constrained")
    ax = fig.subplots()
    ax.grid(False)
    ax.set_title(f"Monthly returns\n{_subtitle(data)}", loc="left")
    finite = np.abs(months[np.isfinite(months)])
    limit = max(float(np.percentile(finite, 95)) if finite.size else 0.01, 0.005)
    image = ax.imshow(np.ma.masked_invalid(months), cmap="RdYlGn", vmin=-limit, vmax=limit, aspect="auto")
    for (r, c), value in np.ndenumerate(months):
        if np.isfinite(value):
            ax.text(c, r, f"{value:+.1%}", ha="center", va="center", fontsize=8,
                    color="white" if abs(value) > 0.75 * limit else "black")
    for r, value in enumerate(table["Year"].to_numpy()):
        ax.text(12.35, r, f"{value:+.1%}", ha="center", va="center", fontsize=9, fontweight="bold",
                color=COLORS["buy"] if value >= 0 else COLORS["sell"])
    ax.set_xticks([*range(12), 12.35], ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                                        "Dec", "year"])
    ax.set_yticks(range(len(table)), [str(y) for y in table.index])
    ax.axvline(11.75, color="#999", lw=0.8)
    ax.set_xlim(-0.5, 12.95)
    ax.set_xlabel("month")
    ax.set_ylabel("year")
    fig.colorbar(image, ax=ax, format=PERCENT, shrink=0.9, label="monthly return")
    return fig


def _yearly_chart(data: RunData) -> Figure:
    yearly = stats.period_returns(data, "YE")
    fig, (ax,) = _figure(height=4.0)
    ax.set_title(f"Yearly returns (too many years for a monthly table)\n{_subtitle(data)}", loc="left")
    colors = [COLORS["buy"] if v >= 0 else COLORS["sell"] for v in yearly.to_numpy()]
    ax.bar(yearly.index.year, yearly.to_numpy(), color=colors, width=0.8)
    ax.axhline(0.0, color="black", lw=0.6)
    ax.yaxis.set_major_formatter(PERCENT)
    ax.set_ylabel("return in the year")
    ax.set_xlabel("year")
    return fig


@_as_written
def signal_chart(data: RunData) -> Figure:
    """The strategy's signal against the price, on one time axis: the aggregated score with the
    regression and news components it averages, the expected move that the cost gate compares with
    enter_threshold x the round-trip cost, and the confidence. One symbol: the first with signals
    (a chart per symbol would repeat the rest)."""
    signals = data.signals
    fig, (top, middle, gate, bottom) = _figure(height=10.4, rows=4, ratios=[1.2, 1.2, 0.9, 0.6])
    if not len(signals):
        top.set_title(f"Signals\n{_subtitle(data)}", loc="left")
        _empty(top, "no signals recorded")
        return fig
    symbol = str(signals.symbol[0])
    mine = signals.symbol == symbol
    others = len(set(signals.symbol)) - 1
    note = f" ({symbol}; {others} other symbol{'s' if others > 1 else ''} not shown)" if others else ""
    top.set_title(f"Signals: price, score and confidence{note}\n{_subtitle(data)}", loc="left")
    ts = signals.ts[mine]
    start, end = int(ts[0]), int(ts[-1])

    prices, closes = data.prices.get(symbol, (np.empty(0, np.int64), np.empty(0)))
    shown = (prices >= start) & (prices <= end)
    if shown.any():
        tt, cc = _thin(prices[shown], closes[shown])
        top.plot(stats.to_datetime(tt), cc, color="#333", lw=0.9, label=f"{symbol} close")
        _fill_markers(top, [f for f in data.fills if f.symbol == symbol])
        top.legend(loc="best")
    else:
        _empty(top, f"no prices recorded for {symbol}")
    top.set_ylabel(f"{symbol} price")

    lines = [(signals.score[mine], "aggregated score (signed strength)", COLORS["strategy"], 1.4, 3)]
    calibration = (data.info.summary or {}).get("calibration") or {}
    for name, values, color in (("regression", signals.regression[mine], COLORS["b"]),
                                ("news", signals.news[mine], COLORS["funding"])):
        if np.isfinite(values).any():
            shrunk = (calibration.get(name) or {}).get("value") == 0  # the signal left it out
            lines.append((values, f"{name} component" + (" (shrunk to 0: not in the score)" if shrunk else ""),
                          color, 0.9, 2))
    entry = stats.signal_entry_move(data)
    band = entry[mine] if entry is not None and np.isfinite(entry[mine]).any() else None
    moves = signals.expected_move[mine]
    thinned = _thin(ts, signals.confidence[mine], moves, *(values for values, *_ in lines),
                    *((band,) if band is not None else ()))
    x, confidence, move = stats.to_datetime(thinned[0]), thinned[1], thinned[2]
    for values, (_, label, color, lw, z) in zip(thinned[3:3 + len(lines)], lines):
        middle.plot(x, values, color=color, lw=lw, label=label, zorder=z)
    middle.axhline(0.0, color="black", lw=0.6)
    middle.set_ylabel("score (-1 bearish, +1 bullish)")
    middle.legend(loc="best", ncols=2)

    if band is not None:
        gate.fill_between(x, -thinned[-1], thinned[-1], color=COLORS["hold"], alpha=0.25, lw=0,
                          label="no entry inside (enter_threshold x round-trip cost)")
    if np.isfinite(move).any():
        gate.plot(x, move, color=COLORS["strategy"], lw=1.0, label="expected move over the holding time", zorder=3)
    else:
        _empty(gate, "no expected moves recorded")
    gate.axhline(0.0, color="black", lw=0.6)
    gate.yaxis.set_major_formatter(ticker.PercentFormatter(xmax=1.0, decimals=1))
    gate.set_ylabel("expected move")
    gate.legend(loc="best", ncols=2)

    bottom.fill_between(x, confidence, 0.0, color=COLORS["strategy"], alpha=0.3, lw=0)
    known = signals.confidence[mine][np.isfinite(signals.confidence[mine])]
    bottom.plot(x, confidence, color=COLORS["strategy"], lw=1.0,
                label=f"confidence (mean {known.mean():.2f})" if len(known) else "confidence (none recorded)")
    bottom.set_ylim(0.0, 1.0)
    bottom.set_ylabel("confidence")
    bottom.legend(loc="upper left")
    bottom.set_xlabel("time (UTC)")
    if len(x) > 1:
        bottom.set_xlim(x[0], x[-1])
    _dates(bottom)
    return fig


CHARTS = {
    "equity": equity_chart,
    "drawdown": drawdown_chart,
    "price": price_chart,
    "position": position_chart,
    "costs": cost_chart,
    "monthly_returns": monthly_chart,
}


# -- two runs ------------------------------------------------------------------------------------
@_as_written
def comparison_chart(a: RunData, b: RunData) -> Figure:
    fig, (top, bottom) = _figure(height=6.4, rows=2, ratios=[1.6, 1.0])
    top.set_title(f"Comparison: return and drawdown\nA = {a.info.run_id} ({a.info.strategy})   "
                  f"B = {b.info.run_id} ({b.info.strategy})", loc="left")
    for data, name, color in ((a, "A", COLORS["strategy"]), (b, "B", COLORS["b"])):
        if not len(data.equity):
            continue
        start = data.info.starting_cash
        ret = data.equity / start - 1.0
        dd = stats.drawdown(data.equity, start)
        ts, rr, deepest = _thin(data.equity_ts, ret, keep_min=dd)
        x = stats.to_datetime(ts)
        top.plot(x, rr, color=color, lw=1.3, label=f"{name}: {data.info.run_id} ({ret[-1]:+.1%})")
        bottom.plot(x, deepest, color=color, lw=1.0, label=f"{name} (max {dd.min():.1%})")
    hold = stats.buy_and_hold_curve(a)
    if hold is not None:
        ts, hh = _thin(a.equity_ts, hold / a.info.starting_cash - 1.0)
        top.plot(stats.to_datetime(ts), hh, color=COLORS["hold"], lw=1.0, ls="--", label="buy and hold (A's data)")
    top.axhline(0.0, color="black", lw=0.6)
    top.set_ylabel("return since start")
    top.yaxis.set_major_formatter(PERCENT)
    top.legend(loc="best")
    bottom.set_ylabel("drawdown")
    bottom.yaxis.set_major_formatter(PERCENT)
    bottom.legend(loc="lower left")
    bottom.set_xlabel("time (UTC)")
    _dates(bottom)
    return fig
