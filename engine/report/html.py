"""Writing reports: PNG files plus one self-contained HTML page (the PNGs embedded as base64, the
style inline), so the page can be mailed or archived on its own.

Nothing is written until the run's record has been read and every chart drawn, and each file is
written to a temporary name, flushed to disk and renamed into place (``engine.files.atomic_write``), so a
failure never leaves a half-written report or a temporary file.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from engine.files import atomic_write
from engine.metrics import Metrics
from engine.report import charts, stats
from engine.store.queries import RunData
from engine.store.redact import redact_settings
from engine.timeutil import iso


@dataclass(frozen=True)
class Written:
    html: Path
    charts: list[Path]


CSS = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: #222;
       max-width: 1340px; margin: 24px auto; padding: 0 18px; }
h1 { font-size: 22px; margin-bottom: 2px; } h2 { font-size: 17px; margin-top: 30px; border-bottom: 1px solid #ddd; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 8px 0 12px; } td, th { padding: 3px 12px 3px 0; text-align: left; vertical-align: top; }
th { color: #555; font-weight: 600; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(380px, 1fr)); gap: 0 40px; }
img { max-width: 100%; border: 1px solid #eee; margin: 6px 0 14px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; color: white; }
.completed { background: #1a9850; } .running { background: #4575b4; } .incomplete, .failed, .interrupted { background: #d73027; }
.warn { background: #fff4e5; border-left: 4px solid #f46d43; padding: 8px 12px; }
.pos { color: #1a7f37; } .neg { color: #c62828; }
pre { background: #f6f8fa; padding: 10px; overflow-x: auto; font-size: 12px; }
footer { color: #888; font-size: 12px; margin: 30px 0; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    text = f"{x:+.2%}" if signed else f"{x:.2%}"
    cls = "pos" if x > 0 else "neg" if x < 0 else ""
    return f'<span class="{cls}">{text}</span>' if signed else text


def _num(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def _table(rows: Iterable[tuple[Any, ...]], header: tuple[str, ...] | None = None, numeric_from: int = 1) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f'<th class="{"num" if i >= numeric_from else ""}">{_e(h)}</th>'
                                     for i, h in enumerate(header)) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f'<td class="{"num" if i >= numeric_from else ""}">{c}</td>'
                                    for i, c in enumerate(row)) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _when(ms: int | None) -> str:
    return "—" if ms is None else iso(int(ms))[:19].replace("T", " ") + " UTC"


def metric_rows(data: RunData, m: Metrics | None) -> list[tuple[str, str]]:
    info = data.info
    if m is None:
        return [("equity", "nothing recorded yet")]
    final = float(data.equity[-1])
    days = m.max_drawdown_duration_ms / 86_400_000
    rows = [
        ("starting cash", _num(info.starting_cash)), ("final equity", _num(final)),
        ("total return", _pct(m.total_return, True)), ("buy & hold return (no costs)", _pct(m.buy_and_hold_return, True)),
        ("annualised return", _pct(m.annualized_return, True)), ("volatility (annualised)", _pct(m.volatility)),
        ("sharpe", _num(m.sharpe)), ("sortino", _num(m.sortino)),
        ("max drawdown", _pct(m.max_drawdown, True)), ("longest drawdown", f"{days:,.1f} days"),
        ("calmar", _num(m.calmar)), ("round trips", f"{m.round_trips:,}"), ("win rate", _pct(m.win_rate)),
        ("profit factor", _num(m.profit_factor)), ("time in the market", _pct(m.exposure)),
        ("turnover", f"{_num(m.turnover)}x"), ("gross return (before costs)", _pct(m.gross_return, True)),
        ("periods per year (observed)", _num(m.periods_per_year, 0)),
    ]
    return [(_e(label), value) for label, value in rows]


def _cost_rows(data: RunData, m: Metrics | None) -> list[tuple[str, str, str, str]]:
    totals = stats.cost_totals(data)
    start = data.info.starting_cash
    gross_pnl = (m.gross_return * start) if m is not None else None
    rows = []
    for name, value in [*totals.as_dict().items(), ("total", totals.total)]:
        share = f"{value / gross_pnl:.1%}" if gross_pnl and gross_pnl > 0 else "—"
        rows.append((f"<b>{name}</b>" if name == "total" else name, _num(value), f"{value / start:.2%}", share))
    return rows


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=charts.DPI, format="png")
    return buffer.getvalue()


def _img(name: str, png: bytes, alt: str) -> str:
    return (f'<img id="{_e(name)}" alt="{_e(alt)}" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode("ascii")}">')


def _draw(items: dict[str, Callable[[], Figure]]) -> dict[str, bytes]:
    return {name: _png(make()) for name, make in items.items()}


def _status_note(data: RunData) -> str:
    info = data.info
    badge = f'<span class="badge {_e(info.status)}">{_e(info.status)}</span>'
    if info.status == "incomplete":
        return badge + (f'<p class="warn">This run did not finish: its process ({_e(info.host)}, pid {info.pid}) is '
                        f"gone, last heard from at {_when(info.heartbeat_ms)}. Everything below covers what it "
                        f"recorded up to its last checkpoint ({info.bars:,} bars); nothing recorded is partial.</p>")
    if info.status in ("failed", "interrupted"):
        return badge + f'<p class="warn">The run stopped early: {_e(info.error or info.status)}</p>'
    if info.status == "running":
        return badge + '<p class="warn">The run is still going; this is a snapshot of what it has recorded.</p>'
    return badge


def _signal_section(data: RunData, png: bytes) -> str:
    """The strategy's signals (the LLM strategy records one per bar close): how many, what was decided,
    how sure the model was and how often headlines took part, then the chart."""
    summary = stats.signal_table(data)
    n = summary["signals"]
    rows = [("signals recorded", f"{n:,}"), ("mean confidence", _num(summary["mean_confidence"], 3)),
            ("with news (a headline in the look-back)", _pct(summary["news_share"]))]
    decisions = [(_e(action), f"{count:,}", f"{count / n:.1%}") for action, count in summary["actions"].items()]
    return (f'<h2 id="signals-section">Signals</h2><div class="grid"><div>{_table(rows)}</div>'
            f'<div>{_table(decisions, ("decision", "signals", "share"))}</div></div>'
            f'{_img("signals", png, "Signals: price, score and confidence")}')


def write_report(data: RunData, out: Path, *, database: str = "") -> Written:
    info = data.info
    m = stats.run_metrics(data)
    drawn = dict(charts.CHARTS, **({"signals": charts.signal_chart} if len(data.signals) else {}))
    pngs = _draw({name: (lambda f=f: f(data)) for name, f in drawn.items()})
    period = (f"{_when(int(data.equity_ts[0]))} → {_when(int(data.equity_ts[-1]))}"
              if len(data.equity_ts) else "—")
    run_rows = [
        ("strategy", _e(info.strategy)), ("mode", _e(info.mode)), ("symbols", _e(", ".join(info.symbols))),
        ("data", _e(info.data_label)), ("data fingerprint", f"<code>{_e(info.data_fingerprint[:16])}</code>"),
        ("period (bar closes)", period), ("bars / headlines seen", f"{info.bars:,} / {data.news:,}"),
        ("orders / fills", f"{data.orders:,} / {len(data.fills):,}"),
        ("started / finished", f"{_when(info.started_ms)} / {_when(info.finished_ms)}"),
        ("code version", f"<code>{_e(info.code_version)}</code>"), ("database", f"<code>{_e(database)}</code>"),
    ]
    status_rows = [(_e(s), f"{n:,}") for s, n in sorted(data.order_status.items())]
    reasons = _table(((_e(r), f"{n:,}") for r, n in data.reject_reasons), ("reason", "orders")) \
        if data.reject_reasons else "<p>No order was rejected.</p>"
    halts = (info.summary or {}).get("risk_halts") or []  # [risk] limits breached (the run's summary)
    halt_section = ("<h3>Risk halts</h3>" + _table(((_e(h["time"]), _e(h["reason"])) for h in halts),
                                                   ("time", "reason"), 9)) if halts else ""
    positions = _table(((_e(p["symbol"]), _num(p["quantity"], 6), _num(p["average_price"]), _num(p["last_price"]),
                         _num(p["realized_pnl"]), _num(p["unrealized_pnl"])) for p in data.positions),
                       ("symbol", "quantity", "average entry", "last price", "realised P&L", "unrealised P&L")) \
        if data.positions else "<p>No position was ever held.</p>"
    fills = data.fills[-25:]
    fill_table = _table(((_when(f.ts_event), _e(f.client_order_id), _e(f.side.name.lower()), _num(f.quantity, 6),
                          _num(f.price), _num(f.fee, 4), _e(f.liquidity), _num(f.spread_cost + f.slippage_cost, 4))
                         for f in fills),
                        ("time", "order", "side", "quantity", "price", "fee", "liquidity", "spread+slippage"), 3)
    titles = {"equity": "Equity against buy-and-hold", "drawdown": "Drawdown", "price": "Price, entries and exits",
              "position": "Position over time", "costs": "Cost breakdown", "monthly_returns": "Monthly returns"}
    body = f"""
<h1>Run {_e(info.run_id)} {_status_note(data)}</h1>
<p class="sub">{_e(info.strategy)} on {_e(", ".join(info.symbols))} · {_e(info.data_label)}</p>
<div class="grid"><div><h2>Metrics</h2>{_table(metric_rows(data, m))}</div>
<div><h2>Run</h2>{_table(run_rows, numeric_from=9)}
<h2>Costs</h2>{_table(_cost_rows(data, m), ("ledger", "amount", "of starting cash", "of gross profit"))}</div></div>
{"".join(f"<h2>{_e(titles[name])}</h2>{_img(name, png, titles[name])}" for name, png in pngs.items()
         if name != "signals")}
{_signal_section(data, pngs["signals"]) if "signals" in pngs else ""}
<div class="grid"><div><h2>Orders by status</h2>{_table(status_rows, ("status", "orders"))}
<h3>Rejections</h3>{reasons}{halt_section}</div><div><h2>Positions at the end</h2>{positions}</div></div>
<h2>Last {len(fills)} of {len(data.fills):,} fills</h2>{fill_table}
<h2>Configuration</h2><details><summary>the full configuration of this run</summary>
<pre>{_e(json.dumps(redact_settings(info.config), indent=2, sort_keys=True))}</pre></details>
"""
    return _write(out, f"Run {info.run_id}", body, pngs, database)


def write_comparison(a: RunData, b: RunData, out: Path) -> Written:
    ma, mb = stats.run_metrics(a), stats.run_metrics(b)
    pngs = _draw({"comparison": lambda: charts.comparison_chart(a, b)})
    ra, rb = dict(metric_rows(a, ma)), dict(metric_rows(b, mb))
    rows = [(k, ra.get(k, "—"), rb.get(k, "—")) for k in dict.fromkeys([*ra, *rb])]
    ca, cb = stats.cost_totals(a).as_dict(), stats.cost_totals(b).as_dict()
    cost_rows = [(name, _num(ca[name]), _num(cb[name])) for name in ca]
    fa, fb = _flatten(redact_settings(a.info.config)), _flatten(redact_settings(b.info.config))
    diffs = [(f"<code>{_e(k)}</code>", _e(fa.get(k, "—")), _e(fb.get(k, "—")))
             for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]
    same_data = a.info.data_fingerprint == b.info.data_fingerprint
    head = ("", f"A: {a.info.run_id}", f"B: {b.info.run_id}")
    body = f"""
<h1>Comparison</h1>
<p class="sub">A = {_e(a.info.run_id)} {_status_note(a)} · B = {_e(b.info.run_id)} {_status_note(b)}</p>
<p>{"Both runs saw exactly the same data (equal fingerprints)." if same_data else
    "<b>The runs saw different data</b> (fingerprints differ): compare with care."}</p>
{_img("comparison", pngs["comparison"], "A and B: return and drawdown")}
<div class="grid"><div><h2>Metrics</h2>{_table(rows, head)}</div>
<div><h2>Costs</h2>{_table(cost_rows, head)}
<h2>Settings that differ</h2>{_table(diffs, ("setting", "A", "B"), 9) if diffs else "<p>None.</p>"}
<h2>Runs</h2>{_table([("strategy", _e(a.info.strategy), _e(b.info.strategy)),
                      ("data", _e(a.info.data_label), _e(b.info.data_label)),
                      ("bars", f"{a.info.bars:,}", f"{b.info.bars:,}"),
                      ("fills", f"{len(a.fills):,}", f"{len(b.fills):,}"),
                      ("code version", _e(a.info.code_version), _e(b.info.code_version))], head, 9)}</div></div>
"""
    return _write(out, f"Compare {a.info.run_id} and {b.info.run_id}", body, pngs, "")


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _write(out: Path, title: str, body: str, pngs: dict[str, bytes], database: str) -> Written:
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{CSS}</style></head><body>{body}"
            f"<footer>Generated {generated} from the run store{f' {_e(database)}' if database else ''}. "
            "Every figure is computed from the stored record.</footer></body></html>\n")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, png in pngs.items():
        path = out / f"{name}.png"
        atomic_write(path, png)
        paths.append(path)
    target = out / "report.html"
    atomic_write(target, page.encode("utf-8"))
    return Written(html=target, charts=paths)
