"""The dashboard's JSON API: the token on every endpoint group, the numbers equal the store's (and
``backtest --json``'s), bad requests are 4xx JSON with a message and never a traceback, controls
reach a daemon's store row and the daemon, no secret in any answer, no CORS, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the dashboard needs fastapi and uvicorn (make setup installs them)")

from fastapi.testclient import TestClient  # noqa: E402

from engine.serve.app import create_app  # noqa: E402
from tests.serve_helpers import AUTH, TOKEN, add_signal_rows, record_backtest, stepped_daemon  # noqa: E402


def client(url: str) -> TestClient:
    return TestClient(create_app(url, TOKEN), raise_server_exceptions=False, follow_redirects=False)


@pytest.fixture(scope="module")
def sqlite_run(tmp_path_factory) -> tuple[str, dict]:
    """One recorded backtest with hand-written signal rows, in a SQLite store shared by the module."""
    db = tmp_path_factory.mktemp("serve") / "store.db"
    url = f"sqlite:///{db}"
    summary = record_backtest(url)
    add_signal_rows(url, summary["run_id"])
    return url, summary


@pytest.fixture(scope="module")
def api(sqlite_run) -> TestClient:
    return client(sqlite_run[0])


def get(api: TestClient, path: str, **kw) -> dict:
    response = api.get(path, headers=AUTH, **kw)
    assert response.status_code == 200, response.text
    return response.json()


# -- the token ---------------------------------------------------------------------------------------
def endpoints(run_id: str) -> list[tuple[str, str]]:
    run = f"/api/runs/{run_id}"
    return [("GET", "/api/runs"), ("GET", run), *[("GET", f"{run}/{part}") for part in (
        "equity", "prices", "orders", "fills", "positions", "costs", "signals", "predictions", "reconciliations",
        "daemon")], ("POST", f"{run}/halt"), ("POST", f"{run}/resume"), ("POST", f"{run}/stop"),
        ("GET", "/api/openapi.json")]


def test_every_endpoint_refuses_a_missing_or_wrong_token_and_takes_the_right_one(api, sqlite_run):
    run_id = sqlite_run[1]["run_id"]
    for method, path in endpoints(run_id):
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": "Bearer"}):
            response = api.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.json()["error"].startswith("unauthorised") and response.headers["WWW-Authenticate"] == "Bearer"
        response = api.request(method, path, headers=AUTH)
        # a backtest has no daemon: its daemon and control endpoints answer 409, all else 200
        expected = 409 if path.rsplit("/", 1)[-1] in ("daemon", "halt", "resume", "stop") else 200
        assert response.status_code == expected, (method, path, response.text)
    wrong_cookie = client(sqlite_run[0])
    wrong_cookie.cookies.set("llmtrader_token", "wrong")
    for page in ("/", f"/runs/{run_id}", f"/compare?a={run_id}&b={run_id}"):
        assert api.get(page).status_code == 401
        assert wrong_cookie.get(page).status_code == 401
        assert api.get(page + ("&" if "?" in page else "?") + "token=wrong").status_code == 401


def test_the_page_token_becomes_a_cookie_and_leaves_the_address(sqlite_run):
    api = client(sqlite_run[0])
    run_id = sqlite_run[1]["run_id"]
    first = api.get(f"/runs/{run_id}?token={TOKEN}")
    assert first.status_code == 303 and first.headers["location"] == f"/runs/{run_id}"
    cookie = first.headers["set-cookie"]
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    page = api.get(f"/runs/{run_id}")  # the client keeps the cookie
    assert page.status_code == 200 and f'data-run-id="{run_id}"' in page.text
    assert TOKEN not in page.text
    assert api.get("/api/runs").status_code == 200  # the API takes the cookie too
    # ... but a POST carried by the cookie alone needs the header a cross-site form cannot send
    assert api.post(f"/api/runs/{run_id}/halt").status_code == 401
    assert api.post(f"/api/runs/{run_id}/halt", headers={"X-Dashboard": "1"}).status_code == 409  # a backtest


def test_no_cors_and_the_security_headers(api):
    evil = {"Origin": "https://evil.example"}
    pre = api.options("/api/runs", headers={**evil, "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in pre.headers and pre.status_code >= 400
    got = api.get("/api/runs", headers={**AUTH, **evil})
    assert got.status_code == 200 and "access-control-allow-origin" not in got.headers
    assert got.headers["x-frame-options"] == "DENY" and "default-src 'self'" in got.headers["content-security-policy"]
    assert got.headers["cache-control"] == "no-store"


# -- the numbers --------------------------------------------------------------------------------------
def test_the_numbers_are_the_recorded_runs(backend):
    target = backend.new()
    summary = record_backtest(target.url)
    run_id = summary["run_id"]
    api = client(target.url)
    runs = get(api, "/api/runs")["runs"]
    assert [(r["run_id"], r["mode"], r["status"], r["fills"], r["final_equity"]) for r in runs] == [
        (run_id, "backtest", "completed", summary["fills"], summary["final_equity"])]

    s = get(api, f"/api/runs/{run_id}")
    assert s["final_equity"] == s["equity"] == summary["final_equity"]
    assert s["metrics"] == summary["metrics"]  # the report's readers: the run's own metrics
    for key in ("orders", "fills", "rejected_orders", "news", "bars", "strategy", "symbols", "starting_cash"):
        assert s[key] == summary[key], key
    assert {k: s["costs"][k] for k in ("fees", "spread", "slippage", "funding")} == \
        {k: summary[k] for k in ("fees", "spread", "slippage", "funding")}
    assert s["recorded_summary"]["final_equity"] == summary["final_equity"]

    eq = get(api, f"/api/runs/{run_id}/equity", params={"max_points": 100_000})
    assert eq["points"] == len(eq["ts"]) == summary["bars"] == target.one(
        "select count(*) from equity e join runs r on r.pk = e.run_pk where r.run_id = :id", id=run_id)
    assert eq["equity"][-1] == summary["final_equity"] and eq["ts"] == sorted(eq["ts"])
    assert eq["buy_hold"][-1] == pytest.approx(summary["starting_cash"] * (1 + summary["buy_and_hold_return"]))
    assert min(eq["drawdown"]) == pytest.approx(summary["max_drawdown"])
    thinned = get(api, f"/api/runs/{run_id}/equity", params={"max_points": 50})
    assert len(thinned["ts"]) == 50 and thinned["ts"][0] == eq["ts"][0] and thinned["ts"][-1] == eq["ts"][-1]

    fills, offset = [], 0
    while True:
        page = get(api, f"/api/runs/{run_id}/fills", params={"limit": 1000, "offset": offset})
        fills += page["fills"]
        offset += 1000
        if offset >= page["total"]:
            break
    assert len(fills) == page["total"] == summary["fills"]
    assert math.fsum(f["fee"] for f in fills) == pytest.approx(summary["fees"], rel=1e-12)
    assert math.fsum(f["slippage_cost"] for f in fills) == pytest.approx(summary["slippage"], rel=1e-12)

    orders = get(api, f"/api/runs/{run_id}/orders", params={"limit": 5})
    assert orders["total"] == summary["orders"] and len(orders["orders"]) == 5
    newest = orders["orders"][0]
    assert [h["status"] for h in newest["history"]][-1] == newest["status"] == "filled"
    assert target.rows("select status from order_events where client_order_id = :c order by id",
                       c=newest["client_order_id"]) == [(h["status"],) for h in newest["history"]]
    assert get(api, f"/api/runs/{run_id}/orders", params={"status": "rejected"})["total"] == summary["rejected_orders"]

    costs = get(api, f"/api/runs/{run_id}/costs")
    assert {c["ledger"]: c["amount"] for c in costs["ledgers"]} == {k: summary[k] for k in ("fees", "spread", "slippage",
                                                                                            "funding")}
    assert costs["gross_return"] == summary["metrics"]["gross_return"]
    assert costs["fills"]["maker"] + costs["fills"]["taker"] == summary["fills"]

    prices = get(api, f"/api/runs/{run_id}/prices", params={"max_fills": 100_000})["symbols"]
    (symbol,) = summary["symbols"]
    assert prices[symbol]["points"] == summary["bars"] and len(prices[symbol]["fills"]) == summary["fills"]

    positions = get(api, f"/api/runs/{run_id}/positions")
    assert [p["symbol"] for p in positions["positions"]] == [symbol] and positions["open_orders_total"] == 0


def test_the_llm_panel_reads_the_signals_and_predictions(api, sqlite_run):
    run_id = sqlite_run[1]["run_id"]
    assert get(api, f"/api/runs/{run_id}")["signals"] == 30
    sig = get(api, f"/api/runs/{run_id}/signals", params={"last": 5, "max_points": 10})
    assert sig["points"] == 30 and sig["summary"]["signals"] == 30 and len(sig["series"]["ts"]) == 10
    assert sig["summary"]["actions"]["open"] == 10 and sig["summary"]["news_share"] == pytest.approx(24 / 30)
    newest = sig["latest"][0]
    assert len(sig["latest"]) == 5 and newest["ts"] == max(sig["series"]["ts"])
    assert newest["action"] == ("open", "hold", "flat")[29 % 3] and newest["regression"] == newest["score"] / 2
    assert any(r["news"] is None for r in get(api, f"/api/runs/{run_id}/signals", params={"last": 30})["latest"])
    pred = get(api, f"/api/runs/{run_id}/predictions", params={"limit": 4, "offset": 2})
    assert pred["total"] == 30 and len(pred["predictions"]) == 4
    assert pred["predictions"][0]["ts"] == 1_704_070_800_000 + 27 * 3_600_000  # newest first, two skipped
    sentiment = next(p for p in pred["predictions"] if p["kind"] == "sentiment")
    assert sentiment["probabilities"]["bullish"] == 0.5 and sentiment["input_text"].startswith("headline")


# -- bad requests -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "path", "status", "words"), [
    ("GET", "/api/runs/no-such-run", 404, "no run 'no-such-run'"),
    ("GET", "/api/runs/no-such-run/fills", 404, "no run"),
    ("POST", "/api/runs/no-such-run/halt", 404, "no run"),
    ("GET", "/api/runs/bad%20id", 422, "run_id"),
    ("GET", "/api/runs/" + "x" * 65, 422, "run_id"),
    ("GET", "/api/runs/..%2F..%2Fetc", 404, "no such page or endpoint"),  # the decoded path matches no route
    ("GET", "/api/runs/%3Cscript%3E", 422, "run_id"),
    ("GET", "/api/runs?limit=1000000", 422, "less than or equal to 1000"),
    ("GET", "/api/runs?limit=0", 422, "greater than or equal to 1"),
    ("GET", "/api/runs?limit=ten", 422, "valid integer"),
    ("GET", "/api/runs/{run}/fills?offset=-1", 422, "offset"),
    ("GET", "/api/runs/{run}/orders?limit=99999999999999999999", 422, "limit"),
    ("GET", "/api/runs/{run}/equity?max_points=1", 422, "max_points"),
    ("GET", "/api/runs/{run}/equity?max_points=100001", 422, "max_points"),
    ("GET", "/api/runs/{run}/orders?status=FILLED;drop", 422, "status"),
    ("GET", "/api/nothing-here", 404, "no such page or endpoint"),
    ("GET", "/api/runs/{run}/daemon", 409, "is a backtest"),
    ("POST", "/api/runs/{run}/halt", 409, "only paper and live runs have a daemon"),
    ("POST", "/api/runs/{run}/stop", 409, "only paper and live runs have a daemon"),
    ("DELETE", "/api/runs/{run}", 405, "Method Not Allowed"),
])
def test_bad_requests_are_4xx_json_with_a_message(api, sqlite_run, method, path, status, words):
    response = api.request(method, path.replace("{run}", sqlite_run[1]["run_id"]), headers=AUTH)
    assert response.status_code == status, response.text
    body = response.json()
    assert words in body["error"] and "Traceback" not in response.text


@pytest.mark.parametrize(("path", "status", "words"), [
    ("/runs/no-such-run", 404, "no run"), ("/runs/bad%20id", 422, "run_id"), ("/compare?a=x", 422, "query.b"),
    ("/compare?a=no-such&b=run", 404, "no run"), ("/nowhere", 404, "no such page"),
])
def test_a_bad_page_request_is_a_4xx_page_with_the_message(sqlite_run, path, status, words):
    browser = client(sqlite_run[0])
    browser.cookies.set("llmtrader_token", TOKEN)
    response = browser.get(path, headers={"Accept": "text/html"})
    assert response.status_code == status and response.headers["content-type"].startswith("text/html")
    assert words in response.text and "Traceback" not in response.text


@pytest.mark.parametrize("body", [b"not json", b'{"reason": ""}', b'{"reason": "' + b"x" * 501 + b'"}',
                                  b'{"flatten": "maybe"}', b'{"reason": "ok", "extra": 1}', b"[1, 2]"])
def test_a_bad_control_body_is_422(api, sqlite_run, body):
    response = api.post(f"/api/runs/{sqlite_run[1]['run_id']}/halt", content=body,
                        headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["error"] and "Traceback" not in response.text


def test_an_unexpected_error_is_a_clean_500(sqlite_run, monkeypatch):
    app = create_app(sqlite_run[0], TOKEN)

    def broken(info):
        raise RuntimeError("boom at /secret/path")

    monkeypatch.setattr(app.state.reader, "summary", broken)
    response = TestClient(app, raise_server_exceptions=False).get(f"/api/runs/{sqlite_run[1]['run_id']}", headers=AUTH)
    assert response.status_code == 500
    assert response.json() == {"error": "internal error: the server's log has the details"}
    assert "boom" not in response.text and "Traceback" not in response.text


def test_a_missing_store_stops_the_app_with_a_message(tmp_path):
    from engine.store.db import StoreError

    with pytest.raises(StoreError, match="no store at"):
        create_app(f"sqlite:///{tmp_path / 'none.db'}", TOKEN)
    with pytest.raises(ValueError, match="token"):
        create_app(f"sqlite:///{tmp_path / 'none.db'}", "short")


# -- secrets ------------------------------------------------------------------------------------------
def test_no_password_key_or_token_in_any_answer(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    run_id = record_backtest(url)["run_id"]
    from tests.stores import sqlite_target

    target = sqlite_target(tmp_path)
    # as an older version might have recorded it: a store URL with its password, a key, a secret
    config = json.loads(target.one("select config from runs"))
    config["store"]["url"] = "postgresql+psycopg://trader:hunter2-pw@db.example/engine"
    config["live"] = {"api_key": "AKIA-sekrit-key", "api_secret": "sekrit-secret", "venue": "demo"}
    target.execute("update runs set config = :c", c=json.dumps(config))
    target.dispose()
    api = client(url)
    bodies = [api.request(m, p, headers=AUTH).text for m, p in endpoints(run_id)]
    bodies.append(api.get(f"/runs/{run_id}?token={TOKEN}").text)
    for text in bodies:
        for secret in ("hunter2-pw", "AKIA-sekrit-key", "sekrit-secret", TOKEN):
            assert secret not in text
    s = get(api, f"/api/runs/{run_id}")
    assert s["config"]["store"]["url"] == "postgresql+psycopg://trader:***@db.example/engine"
    assert s["config"]["live"] == {"api_key": "***", "api_secret": "***", "venue": "demo"}


# -- daemons --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bars_file(tmp_path_factory) -> Path:
    from tests.test_paper import first_hours

    return first_hours(tmp_path_factory, 400)


def test_daemon_health_and_halt_resume_stop_reach_the_daemon(backend, bars_file):
    from engine.store.daemons import read_controls

    target = backend.new()
    daemon = stepped_daemon(target.url, bars_file, 140)  # sma_cross holds BTC from bar 137
    try:
        api = client(target.url)
        run_id = daemon.run_id
        runs = get(api, "/api/runs")["runs"]
        assert [(r["mode"], r["status"], r["daemon_state"], r["halted"]) for r in runs] == [
            ("paper", "running", "running", False)]
        health = get(api, f"/api/runs/{run_id}/daemon")
        assert health["state"] == "running" and health["pid"] == health["lease"]["pid"] and health["pid"] > 0
        assert health["heartbeat_age_s"] is not None and health["heartbeat_age_s"] < 60 and not health["stale"]
        assert health["bars"] == 140 and health["last_bar_close"] is not None
        assert health["controls"] == {"halted": False, "halt_reason": "", "flatten_requested": False,
                                      "stop_requested": False}

        halted = api.post(f"/api/runs/{run_id}/halt", json={"reason": "from the test"}, headers=AUTH)
        assert halted.status_code == 200, halted.text
        assert halted.json()["controls"]["halted"] and "sends no new order" in halted.json()["message"]
        assert read_controls(daemon.store, daemon.run_pk)["halt_reason"] == "from the test"
        daemon.step(3)  # the daemon reads its controls at its next step
        assert daemon._halted and not daemon.kernel.ctx.trading
        health = get(api, f"/api/runs/{run_id}/daemon")
        assert health["state"] == "halted" and health["halted"] and health["halt_reason"] == "from the test"
        assert get(api, "/api/runs")["runs"][0]["halted"] is True

        resumed = api.post(f"/api/runs/{run_id}/resume", headers=AUTH)
        assert resumed.status_code == 200 and not resumed.json()["controls"]["halted"]
        daemon.step(3)
        assert get(api, f"/api/runs/{run_id}/daemon")["state"] == "running"

        assert daemon.kernel.portfolio.quantity(daemon.symbol) > 0
        flatten = api.post(f"/api/runs/{run_id}/halt", json={"reason": "flat now", "flatten": True}, headers=AUTH)
        assert flatten.status_code == 200 and flatten.json()["controls"]["flatten_requested"]
        assert "closes its positions" in flatten.json()["message"]
        daemon.step(2)
        assert daemon.kernel.portfolio.quantity(daemon.symbol) == 0.0
        assert read_controls(daemon.store, daemon.run_pk)["flatten_requested"] is False  # done: the daemon cleared it
        assert get(api, f"/api/runs/{run_id}/positions")["open_orders_total"] == 0
        assert api.post(f"/api/runs/{run_id}/resume", headers=AUTH).status_code == 200
        daemon.step(1)

        stopped = api.post(f"/api/runs/{run_id}/stop", headers=AUTH)
        assert stopped.status_code == 200 and stopped.json()["controls"]["stop_requested"]
        daemon.step(1)
        assert daemon.stop_requested
        daemon.close("stopped")
        again = api.post(f"/api/runs/{run_id}/stop", headers=AUTH)
        assert again.status_code == 409 and "not running (stopped)" in again.json()["error"]
        assert get(api, f"/api/runs/{run_id}/daemon")["state"] == "stopped"
        s = get(api, f"/api/runs/{run_id}")
        assert s["mode"] == "paper" and s["has_daemon"] and s["bars"] == 149  # the step that read the stop took no bar
    finally:
        if daemon.state not in ("stopped", "finished", "failed"):
            daemon.close("stopped")
