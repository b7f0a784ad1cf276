// The dashboard's pages, filled from the JSON API (/api). Values are written with textContent only,
// never as HTML: run ids, symbols and headlines come from the store. Charts are uPlot (served from
// /static, MIT licence in uPlot.LICENSE). A page of a daemon that runs refreshes itself every 5 s.
"use strict";
(function () {
  const REFRESH_MS = 5000;
  const DAEMON_DONE = ["stopped", "finished", "failed", "dead"];
  const $ = (id) => document.getElementById(id);
  const charts = {};

  async function api(path, options) {
    const init = Object.assign({credentials: "same-origin", headers: {"Accept": "application/json"}}, options || {});
    const response = await fetch("/api" + path, init);
    let body;
    try { body = await response.json(); } catch (e) { body = {error: response.status + " " + response.statusText}; }
    if (!response.ok) { throw new Error(body.error || ("HTTP " + response.status)); }
    return body;
  }

  function post(path, payload) {
    return api(path, {method: "POST", body: JSON.stringify(payload || {}),
      headers: {"Content-Type": "application/json", "Accept": "application/json", "X-Dashboard": "1"}});
  }

  function showError(error) {
    const el = $("error");
    el.textContent = String(error && error.message ? error.message : error);
    el.hidden = false;
  }

  function clearError() { $("error").hidden = true; }

  // -- formatting ---------------------------------------------------------------------------------
  function num(x, digits) {
    if (x === null || x === undefined || Number.isNaN(x)) { return "n/a"; }
    const d = digits === undefined ? 2 : digits;
    return Number(x).toLocaleString("en-US", {minimumFractionDigits: d, maximumFractionDigits: d});
  }
  function qty(x) { return x === null || x === undefined ? "n/a" : String(Number(x.toPrecision(10))); }
  function pct(x, signed) {
    if (x === null || x === undefined) { return "n/a"; }
    const text = (100 * x).toFixed(2) + "%";
    return signed && x > 0 ? "+" + text : text;
  }
  function when(text) { return text ? text.replace("T", " ").replace("Z", "") : "-"; }
  function sign(x) { return x > 0 ? "pos" : x < 0 ? "neg" : ""; }

  function td(tr, text, cls) {
    const cell = document.createElement("td");
    cell.textContent = text === null || text === undefined ? "" : String(text);
    if (cls) { cell.className = cls; }
    tr.appendChild(cell);
    return cell;
  }

  // rows: list of arrays of [text, class] or text
  function fillTable(table, rows, empty) {
    const body = table.tBodies[0] || table.appendChild(document.createElement("tbody"));
    body.replaceChildren();
    for (const row of rows) {
      const tr = document.createElement("tr");
      for (const c of row) {
        if (Array.isArray(c)) { td(tr, c[0], c[1]); } else { td(tr, c); }
      }
      body.appendChild(tr);
    }
    if (!rows.length && empty) {
      const tr = document.createElement("tr");
      const cell = td(tr, empty, "sub");
      cell.colSpan = table.tHead ? table.tHead.rows[0].cells.length : 2;
      body.appendChild(tr);
    }
  }

  // pairs: [label, value, class?, key?]; key becomes data-key on the value cell (tests and styles)
  function keyValues(table, pairs) {
    table.replaceChildren();
    for (const [label, value, cls, key] of pairs) {
      const tr = document.createElement("tr");
      const th = document.createElement("th");
      th.textContent = label;
      tr.appendChild(th);
      const cell = td(tr, value, "num " + (cls || ""));
      if (key) { cell.dataset.key = key; }
      table.appendChild(tr);
    }
  }

  // -- charts ---------------------------------------------------------------------------------------
  function chart(id, data, series, opts) {
    const el = $(id);
    if (!el || typeof uPlot === "undefined") { return; }
    if (charts[id]) { charts[id].destroy(); }
    const width = Math.max(300, el.clientWidth || 600);
    const options = Object.assign({width: width, height: 260, series: [{}].concat(series),
      scales: {x: {time: true}}, axes: [{}, {size: 70}], legend: {live: true},
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC")}, opts || {});  // UTC, like every time shown
    charts[id] = new uPlot(options, data, el);
  }

  window.addEventListener("resize", () => {
    for (const [id, plot] of Object.entries(charts)) {
      const el = $(id);
      if (el) { plot.setSize({width: Math.max(300, el.clientWidth), height: 260}); }
    }
  });

  const seconds = (ts) => ts.map((t) => t / 1000);

  function equityCharts(eq, equityId, drawdownId) {
    const x = seconds(eq.ts);
    const series = [{label: "equity", stroke: "#2166ac", width: 1.5}];
    const data = [x, eq.equity];
    if (eq.buy_hold) {
      series.push({label: "buy & hold", stroke: "#999", width: 1, dash: [6, 4]});
      data.push(eq.buy_hold);
    }
    chart(equityId, data, series);
    chart(drawdownId, [x, eq.drawdown.map((d) => (d === null ? null : 100 * d))],
      [{label: "drawdown %", stroke: "#c62828", fill: "rgba(198,40,40,0.15)", width: 1}]);
  }

  function priceChart(prices) {
    const symbols = Object.keys(prices.symbols);
    if (!symbols.length) { return; }
    const p = prices.symbols[symbols[0]];
    const buys = new Map();
    const sells = new Map();
    for (const f of p.fills) { (f.side === "buy" ? buys : sells).set(f.ts / 1000, f.price); }
    const tables = [[seconds(p.ts), p.close]];
    const asTable = (m) => { const k = [...m.keys()].sort((a, b) => a - b); return [k, k.map((t) => m.get(t))]; };
    tables.push(asTable(buys), asTable(sells));
    const data = uPlot.join(tables);
    const marker = (color) => ({stroke: color, fill: color, paths: () => null,
      points: {show: true, size: 7, stroke: color, fill: color}});
    chart("chart-price", data, [
      {label: symbols[0] + " close", stroke: "#444", width: 1, spanGaps: true, points: {show: false}},
      Object.assign({label: "buy"}, marker("#1a9850")), Object.assign({label: "sell"}, marker("#d73027"))]);
  }

  function signalChart(sig) {
    const s = sig.series;
    chart("chart-signals", [seconds(s.ts), s.score, s.confidence], [
      {label: "score", stroke: "#762a83", width: 1}, {label: "confidence", stroke: "#1b7837", width: 1}],
    {scales: {x: {time: true}, y: {range: [-1, 1]}}});
  }

  // -- the runs list ------------------------------------------------------------------------------------
  async function runsPage() {
    $("store").textContent = document.body.dataset.store || "";
    const compare = $("compare");
    compare.addEventListener("click", () => {
      const ticked = [...document.querySelectorAll("#runs input:checked")].map((i) => i.value);
      if (ticked.length === 2) {
        window.location.href = "/compare?" + new URLSearchParams({a: ticked[0], b: ticked[1]});
      }
    });
    async function load() {
      let anyRunning = false;
      try {
        const answer = await api("/runs?limit=200");
        const tbody = $("runs").tBodies[0];
        const ticked = new Set([...tbody.querySelectorAll("input:checked")].map((i) => i.value));
        tbody.replaceChildren();
        for (const r of answer.runs) {
          const tr = document.createElement("tr");
          tr.dataset.runId = r.run_id;
          const box = document.createElement("input");
          box.type = "checkbox";
          box.value = r.run_id;
          box.checked = ticked.has(r.run_id);
          box.addEventListener("change", () => {
            compare.disabled = document.querySelectorAll("#runs input:checked").length !== 2;
          });
          td(tr, "").appendChild(box);
          const link = document.createElement("a");
          link.href = "/runs/" + encodeURIComponent(r.run_id);
          link.textContent = r.run_id;
          td(tr, "").appendChild(link);
          td(tr, r.mode);
          td(tr, r.status, "state " + r.status);
          td(tr, r.daemon_state ? r.daemon_state + (r.halted ? " (halted)" : "") : "-");
          td(tr, r.strategy);
          td(tr, r.symbols.join(", "));
          td(tr, when(r.started));
          td(tr, num(r.bars, 0), "num");
          td(tr, num(r.fills, 0), "num");
          td(tr, num(r.final_equity), "num");
          td(tr, pct(r.total_return, true), "num " + sign(r.total_return));
          tbody.appendChild(tr);
          anyRunning = anyRunning || r.status === "running";
        }
        compare.disabled = ticked.size !== 2;
        clearError();
        document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
      } catch (e) { showError(e); }
      if (anyRunning) { setTimeout(load, REFRESH_MS); }
    }
    await load();
  }

  // -- one run ------------------------------------------------------------------------------------------
  function summaryPairs(s) {
    const m = s.metrics || {};
    return [
      [s.final_equity === null ? "equity (last close)" : "final equity",
        num(s.final_equity === null ? s.equity : s.final_equity), "", "final_equity"],
      ["starting cash", num(s.starting_cash), "", "starting_cash"],
      ["total return", pct(m.total_return, true), sign(m.total_return), "total_return"],
      ["buy & hold return", pct(m.buy_and_hold_return, true), sign(m.buy_and_hold_return), "buy_hold_return"],
      ["sharpe / sortino", num(m.sharpe) + " / " + num(m.sortino), "", "sharpe"],
      ["max drawdown", pct(m.max_drawdown), "", "max_drawdown"],
      ["round trips / win rate", num(m.round_trips, 0) + " / " + pct(m.win_rate), "", "round_trips"],
      ["exposure / turnover", pct(m.exposure) + " / " + num(m.turnover) + "x", "", "exposure"],
      ["orders / fills / rejected", s.orders + " / " + s.fills + " / " + s.rejected_orders, "", "counts"],
      ["bars / headlines", num(s.bars, 0) + " / " + num(s.news, 0), "", "bars"],
      ["fees", num(s.costs.fees), "", "fees"],
    ];
  }

  async function runPage() {
    const runId = document.body.dataset.runId;
    const enc = encodeURIComponent(runId);
    $("run-id").textContent = runId;
    let timer = null;

    async function control(action) {
      const out = $("control-result");
      try {
        const payload = action === "halt" ? {reason: $("halt-reason").value || "halted from the dashboard",
          flatten: $("halt-flatten").checked} : {};
        if (action === "stop" && !window.confirm("Stop run " + runId + "? It finishes its step and exits.")) {
          return;
        }
        const answer = await post("/runs/" + enc + "/" + action, payload);
        out.textContent = answer.message;
        await load();
      } catch (e) { out.textContent = "refused: " + e.message; }
    }
    for (const action of ["halt", "resume", "stop"]) {
      $(action).addEventListener("click", () => control(action));
    }

    async function load() {
      if (timer) { clearTimeout(timer); timer = null; }
      let live = false;
      try {
        const s = await api("/runs/" + enc);
        const badge = $("status");
        badge.textContent = s.status;
        badge.className = "badge " + s.status;
        $("what").textContent = s.mode + " · " + s.strategy + " on " + s.symbols.join(", ") + " · " + s.data +
          " · started " + when(s.started) + (s.finished ? " · finished " + when(s.finished) : "") +
          (s.error ? " · error: " + s.error : "");
        keyValues($("summary"), summaryPairs(s));
        $("config").textContent = JSON.stringify(s.config, null, 2);

        const [eq, prices, costs, positions, orders, fills] = await Promise.all([
          api("/runs/" + enc + "/equity"), api("/runs/" + enc + "/prices"), api("/runs/" + enc + "/costs"),
          api("/runs/" + enc + "/positions"), api("/runs/" + enc + "/orders?limit=50"),
          api("/runs/" + enc + "/fills?limit=50")]);
        equityCharts(eq, "chart-equity", "chart-drawdown");
        priceChart(prices);
        const rows = costs.ledgers.map((l) => [l.ledger, [num(l.amount), "num"], [pct(l.of_start), "num"]]);
        rows.push([["total", "total"], [num(costs.total), "num total"], [pct(costs.total_of_start), "num total"]]);
        fillTable($("costs"), rows);
        $("costs-note").textContent = costs.gross_return === null ? "" : "gross return " +
          pct(costs.gross_return, true) + " before costs, " + pct(costs.total_return, true) + " after; fills: " +
          costs.fills.maker + " maker, " + costs.fills.taker + " taker";
        fillTable($("positions"), positions.positions.map((p) => [p.symbol, [qty(p.quantity), "num"],
          [num(p.average_price), "num"], [num(p.last_price), "num"], [num(p.realized_pnl), "num"],
          [num(p.unrealized_pnl), "num"]]), "none");
        fillTable($("open-orders"), positions.open_orders.map((o) => [o.client_order_id, o.side, o.type,
          [qty(o.quantity), "num"], [qty(o.filled_quantity), "num"], o.status]), "none");
        $("orders-count").textContent = "(latest " + orders.orders.length + " of " + orders.total + ")";
        $("orders-count").dataset.total = orders.total;
        fillTable($("orders"), orders.orders.map((o) => [when(o.time), o.client_order_id, o.side, o.type,
          [qty(o.quantity), "num"], [qty(o.filled_quantity), "num"], o.status + (o.reject_reason ? ": " +
          o.reject_reason : ""), o.history.map((h) => h.status + " " + when(h.time)).join(" → ")]), "none");
        $("fills-count").textContent = "(latest " + fills.fills.length + " of " + fills.total + ")";
        $("fills-count").dataset.total = fills.total;
        fillTable($("fills"), fills.fills.map((f) => [when(f.time), f.side, [qty(f.quantity), "num"],
          [num(f.price), "num"], [num(f.fee, 4), "num"], f.liquidity, [num(f.spread_cost, 4), "num"],
          [num(f.slippage_cost, 4), "num"]]), "none");

        if (s.signals > 0 || s.predictions > 0) {
          $("signals").hidden = false;
          const [sig, pred] = await Promise.all([api("/runs/" + enc + "/signals?last=20"),
            api("/runs/" + enc + "/predictions?limit=20")]);
          const sm = sig.summary;
          keyValues($("signal-summary"), [["signals recorded", num(sm.signals, 0), "", "signals"],
            ["mean confidence", num(sm.mean_confidence, 3)], ["with a headline", pct(sm.news_share)],
            ["decisions", Object.entries(sm.actions).filter((kv) => kv[1]).map((kv) => kv[0] + " " + kv[1])
              .join(", ")]]);
          if (sig.points) { signalChart(sig); }
          fillTable($("signal-rows"), sig.latest.map((r) => [when(r.time), r.symbol, [num(r.score, 3), "num"],
            [num(r.confidence, 3), "num"], [num(r.regression, 3), "num"], [num(r.news, 3), "num"], r.action]), "none");
          fillTable($("prediction-rows"), pred.predictions.map((p) => [when(p.time), p.symbol, p.kind,
            [num(p.value, 5), "num"], [num(p.uncertainty, 5), "num"], [num(p.confidence, 3), "num"],
            (p.input_text || "").slice(0, 120)]), "none");
        }

        if (s.has_daemon) {
          $("daemon").hidden = false;
          const d = await api("/runs/" + enc + "/daemon");
          keyValues($("health"), [
            ["state", !d.halted ? d.state : d.state === "halted" ? "halted: " + d.halt_reason :
              d.state + " (halted: " + d.halt_reason + ")", d.halted ? "neg" : "", "state"],
            ["doing", d.note || "-"], ["process", d.pid ? "pid " + d.pid + " on " + d.host : "-", "", "process"],
            ["heartbeat", d.heartbeat_age_s === null ? "-" : num(d.heartbeat_age_s, 1) + " s ago" +
              (d.stale ? " (STALE)" : ""), d.stale ? "neg" : "", "heartbeat"],
            ["last bar closed", when(d.last_bar_close) + " (" + num(d.bars, 0) + " bars, " + d.missing_bars +
              " missing)", "", "last_bar"],
            ["equity / cash", num(d.equity) + " / " + num(d.cash), "", "equity"],
            ["today's P&L", d.today_pnl === null ? "-" : num(d.today_pnl), sign(d.today_pnl)],
            ["controls", "halted " + d.controls.halted + ", flatten " + d.controls.flatten_requested + ", stop " +
              d.controls.stop_requested, "", "controls"]]
            .concat(d.venue ? [["venue", "Bybit " + d.venue], ["last reconciliation",
              when(d.last_reconciliation) + " (" + d.reconciliation_records + " differences recorded)"]] : []));
          $("halt").disabled = d.halted || d.state === "finished";
          $("resume").disabled = !d.halted || d.state === "finished";
          $("stop").disabled = DAEMON_DONE.includes(d.state);
          live = !DAEMON_DONE.includes(d.state);
          if (s.mode === "live") {
            $("reconciliations").hidden = false;
            const rec = await api("/runs/" + enc + "/reconciliations?limit=20");
            fillTable($("reconciliation-rows"), rec.reconciliations.map((r) => [when(r.time), r.kind, r.action,
              r.symbol, r.detail]), "none");
          }
        } else {
          live = s.status === "running";
        }
        clearError();
        document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
      } catch (e) { showError(e); live = true; }
      document.body.dataset.refreshing = live ? "yes" : "no";
      if (live) { timer = setTimeout(load, REFRESH_MS); }
    }
    await load();
  }

  // -- two runs ---------------------------------------------------------------------------------------------
  async function comparePage() {
    const ids = [document.body.dataset.runA, document.body.dataset.runB];
    try {
      const [a, b] = await Promise.all(ids.map((id) => api("/runs/" + encodeURIComponent(id))));
      const [ea, eb] = await Promise.all(ids.map((id) => api("/runs/" + encodeURIComponent(id) + "/equity")));
      $("head-a").textContent = "A: " + a.run_id;
      $("head-b").textContent = "B: " + b.run_id;
      $("title-a").textContent = "A: " + a.run_id + " (" + a.strategy + ")";
      $("title-b").textContent = "B: " + b.run_id + " (" + b.strategy + ")";
      const pa = summaryPairs(a);
      const pb = summaryPairs(b);
      const rows = [["strategy", [a.strategy, "num"], [b.strategy, "num"]],
        ["data", [a.data, "num"], [b.data, "num"]], ["status", [a.status, "num"], [b.status, "num"]]];
      for (let k = 0; k < pa.length; k++) { rows.push([pa[k][0], [pa[k][1], "num"], [pb[k][1], "num"]]); }
      for (const name of ["spread", "slippage", "funding"]) {
        rows.push([name, [num(a.costs[name]), "num"], [num(b.costs[name]), "num"]]);
      }
      fillTable($("compare-table"), rows);
      equityCharts(ea, "chart-equity-a", "chart-drawdown-a");
      equityCharts(eb, "chart-equity-b", "chart-drawdown-b");
      document.body.dataset.loaded = "1";
    } catch (e) { showError(e); }
  }

  const pages = {runs: runsPage, run: runPage, compare: comparePage};
  document.addEventListener("DOMContentLoaded", () => {
    const page = pages[document.body.dataset.page];
    if (page) { page().catch(showError); }
  });
})();
