"""The dashboard's HTML pages: small shells that ``static/dashboard.js`` fills from the JSON API, so
the page shows exactly what the API answers and refreshes the same way. No inline script (the
Content-Security-Policy forbids it); the only values written into the HTML are escaped."""

from __future__ import annotations

import html


def _shell(title: str, body: str, **data: str) -> str:
    attrs = "".join(f' data-{k.replace("_", "-")}="{html.escape(v)}"' for k, v in data.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<link rel="stylesheet" href="/static/uPlot.min.css"><link rel="stylesheet" href="/static/dashboard.css">
<script src="/static/uPlot.iife.min.js" defer></script><script src="/static/dashboard.js" defer></script>
</head><body{attrs}>
<header><a href="/" class="home">llmtrader</a> <span class="sub" id="store"></span></header>
<main>{body}</main>
<p id="error" class="warn" hidden></p>
<footer>Figures are read from the store (the same readers as <code>python -m engine report</code>).
JSON API: <code>/api</code>, its OpenAPI document <a href="/api/openapi.json">/api/openapi.json</a>.</footer>
</body></html>"""


def runs_page(store: str) -> str:
    return _shell("llmtrader runs", """
<h1>Runs</h1>
<p class="sub">Newest first. Tick two runs to compare them side by side.
<button id="compare" disabled>compare</button></p>
<table id="runs" class="rows"><thead><tr><th></th><th>run</th><th>mode</th><th>status</th><th>daemon</th>
<th>strategy</th><th>symbols</th><th>started (UTC)</th><th class="num">bars</th><th class="num">fills</th>
<th class="num">final equity</th><th class="num">return</th></tr></thead><tbody></tbody></table>""",
                  page="runs", store=store)


def run_page(run_id: str) -> str:
    return _shell(f"run {run_id}", """
<h1>Run <span id="run-id"></span> <span id="status" class="badge"></span></h1>
<p class="sub" id="what"></p>
<section id="daemon" hidden><h2>Daemon</h2>
<table id="health" class="kv"></table>
<p class="controls"><label>reason <input id="halt-reason" maxlength="500" value="halted from the dashboard"></label>
<label><input type="checkbox" id="halt-flatten"> flatten (cancel orders, close positions)</label>
<button id="halt" class="danger">halt</button> <button id="resume">resume</button>
<button id="stop" class="danger">stop</button></p>
<p id="control-result" class="sub"></p></section>
<div class="grid"><section><h2>Summary</h2><table id="summary" class="kv"></table></section>
<section><h2>Costs</h2><table id="costs" class="rows"><thead><tr><th>ledger</th><th class="num">amount</th>
<th class="num">of start</th></tr></thead><tbody></tbody></table><p class="sub" id="costs-note"></p></section></div>
<section><h2>Equity and buy &amp; hold</h2><div class="chart" id="chart-equity"></div></section>
<section><h2>Drawdown</h2><div class="chart" id="chart-drawdown"></div></section>
<section><h2>Price and fills</h2><div class="chart" id="chart-price"></div></section>
<section id="signals" hidden><h2>Signals</h2><table id="signal-summary" class="kv"></table>
<div class="chart" id="chart-signals"></div>
<h3>Latest signals</h3><table id="signal-rows" class="rows"><thead><tr><th>time</th><th>symbol</th>
<th class="num">score</th><th class="num">confidence</th><th class="num">regression</th><th class="num">news</th>
<th>decision</th></tr></thead><tbody></tbody></table>
<h3>Latest predictions</h3><table id="prediction-rows" class="rows"><thead><tr><th>time</th><th>symbol</th>
<th>kind</th><th class="num">value</th><th class="num">uncertainty</th><th class="num">confidence</th><th>input</th>
</tr></thead><tbody></tbody></table></section>
<div class="grid"><section><h2>Positions</h2><table id="positions" class="rows"><thead><tr><th>symbol</th>
<th class="num">quantity</th><th class="num">average price</th><th class="num">last price</th>
<th class="num">realised</th><th class="num">unrealised</th></tr></thead><tbody></tbody></table></section>
<section><h2>Open orders</h2><table id="open-orders" class="rows"><thead><tr><th>order</th><th>side</th>
<th>type</th><th class="num">quantity</th><th class="num">filled</th><th>status</th></tr></thead><tbody></tbody>
</table></section></div>
<section><h2>Orders <span class="sub" id="orders-count"></span></h2><table id="orders" class="rows"><thead><tr>
<th>time</th><th>order</th><th>side</th><th>type</th><th class="num">quantity</th><th class="num">filled</th>
<th>status</th><th>history</th></tr></thead><tbody></tbody></table></section>
<section><h2>Fills <span class="sub" id="fills-count"></span></h2><table id="fills" class="rows"><thead><tr>
<th>time</th><th>side</th><th class="num">quantity</th><th class="num">price</th><th class="num">fee</th>
<th>liquidity</th><th class="num">spread</th><th class="num">slippage</th></tr></thead><tbody></tbody></table></section>
<section id="reconciliations" hidden><h2>Reconciliations</h2><table id="reconciliation-rows" class="rows"><thead><tr>
<th>time</th><th>kind</th><th>action</th><th>symbol</th><th>detail</th></tr></thead><tbody></tbody></table></section>
<details><summary>Configuration (secrets blanked)</summary><pre id="config"></pre></details>""",
                  page="run", run_id=run_id)


def compare_page(a: str, b: str) -> str:
    return _shell(f"compare {a} and {b}", """
<h1>Two runs side by side</h1>
<table id="compare-table" class="rows"><thead><tr><th></th><th class="num" id="head-a"></th>
<th class="num" id="head-b"></th></tr></thead><tbody></tbody></table>
<div class="grid"><section><h2 id="title-a"></h2><div class="chart" id="chart-equity-a"></div>
<div class="chart" id="chart-drawdown-a"></div></section>
<section><h2 id="title-b"></h2><div class="chart" id="chart-equity-b"></div>
<div class="chart" id="chart-drawdown-b"></div></section></div>""", page="compare", run_a=a, run_b=b)


def unauthorised(why: str) -> str:
    return _message("Not signed in", f"""{html.escape(why)}. Open the address that
<code>python -m engine serve</code> printed when it started (it ends in <code>?token=...</code>); the token is
also in the token file that <code>python -m engine serve --help</code> names.""")


def error_page(status: int, message: str) -> str:
    return _message(f"Error {status}", html.escape(message))


def _message(title: str, text: str) -> str:
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<link rel="stylesheet" href="/static/dashboard.css"></head><body><main><h1>{html.escape(title)}</h1>
<p>{text}</p><p><a href="/">all runs</a></p></main></body></html>"""
