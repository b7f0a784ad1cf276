"""A fake Bybit v5 public API on 127.0.0.1 for the real ccxt client (see shared BYBIT.md).

It serves ``/v5/market/instruments-info`` from the recorded ccxt market fixtures, ``/v5/market/kline``
(newest first, ``start``/``end``/``limit`` honoured, 7-string rows like Bybit's) and
``/v5/market/funding/history`` from deterministic generators, with the recorded kline rows of
``ccxt_static_response_bybit_subset.json`` served at their own timestamps. Failures can be queued per
path (HTTP status, Bybit retCode, or a delay longer than the client's timeout) and every request is
logged for assertions.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

HOUR = 3_600_000
INTERVALS = {"1": 60_000, "3": 180_000, "5": 300_000, "15": 900_000, "30": 1_800_000, "60": HOUR, "120": 2 * HOUR,
             "240": 4 * HOUR, "360": 6 * HOUR, "720": 12 * HOUR, "D": 24 * HOUR, "W": 7 * 24 * HOUR}


def recorded_klines(bybit_dir: Path) -> dict[tuple[str, int], list[str]]:
    """(category, start ms) -> the recorded Bybit kline row."""
    doc = json.loads((bybit_dir / "ccxt_static_response_bybit_subset.json").read_text())
    out = {}
    for case in doc["methods"]["fetchOHLCV"]:
        result = case["httpResponse"]["result"]
        for row in result["list"]:
            out[(result["category"], int(row[0]))] = row
    return out


def instrument_items(bybit_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Bybit instruments-info items by category, from the recorded ccxt markets."""
    markets = json.loads((bybit_dir / "ccxt_static_markets_bybit.json").read_text())
    items: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for market in markets.values():
        if market["spot"]:
            items["spot"].append(market["info"])
        elif market["swap"] and market["linear"]:
            items["linear"].append(market["info"])
    return items


class FakeBybit:
    def __init__(self, bybit_dir: Path, *, missing: set[int] | frozenset[int] = frozenset(),
                 funding_start: int = 0) -> None:
        self.klines = recorded_klines(bybit_dir)
        self.instruments = instrument_items(bybit_dir)
        self.missing = set(missing)  # kline open times the exchange has no bar for (downtime)
        self.funding_start = funding_start
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.failures: dict[str, deque[Any]] = defaultdict(deque)
        self.delay_s = 1.0  # how long a "timeout" failure stalls
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeBybit:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail(self, path: str, *failures: Any) -> None:
        """Queue failures for the next requests to ``path``: an HTTP status (502, 429, 403), a Bybit
        retCode as ``("ret", 10006)``, ``"timeout"`` (answer after ``delay_s``) or ``"ok"`` (answer normally)."""
        self.failures[path].extend(failures)

    def paths(self, path: str) -> list[dict[str, str]]:
        return [q for p, q in self.requests if p == path]

    # -- data
    @staticmethod
    def bar(category: str, ts: int) -> list[str]:
        base = 40_000 + 5_000 * math.sin(ts / (50 * HOUR)) + (0 if category == "spot" else 12.5)
        wiggle = 100 * math.sin(ts / HOUR)
        o, c = base + wiggle, base - wiggle / 2
        h, lo = max(o, c) + 25, min(o, c) - 25
        volume = 0.0 if (ts // HOUR) % 997 == 0 else 100 + (ts // HOUR) % 50
        return [str(ts), f"{o:.1f}", f"{h:.1f}", f"{lo:.1f}", f"{c:.1f}", f"{volume:.3f}", f"{volume * c:.4f}"]

    @staticmethod
    def funding_rate(ts: int) -> str:
        return f"{0.0001 + 0.00005 * math.sin(ts / (24 * HOUR)):.8f}"

    def kline(self, q: dict[str, str]) -> dict[str, Any]:
        step = INTERVALS[q["interval"]]
        limit = min(int(q.get("limit", 200)), 1000)
        end = int(q.get("end", 1_900_000_000_000))
        start = int(q.get("start", end - limit * step))
        first = -(-start // step) * step
        rows = []
        for ts in range(first, end + 1, step):
            if ts in self.missing:
                continue
            rows.append(self.klines.get((q["category"], ts)) or self.bar(q["category"], ts))
        rows = rows[-limit:] if "end" in q else rows[:limit]
        return {"symbol": q["symbol"], "category": q["category"], "list": rows[::-1]}

    def funding(self, q: dict[str, str]) -> dict[str, Any]:
        step = 8 * HOUR
        limit = min(int(q.get("limit", 200)), 200)
        start, end = int(q["startTime"]), int(q["endTime"])
        first = max(-(-start // step) * step, self.funding_start)
        items = [{"symbol": q["symbol"], "fundingRate": self.funding_rate(ts), "fundingRateTimestamp": str(ts)}
                 for ts in range(first, end + 1, step)]
        return {"category": q["category"], "list": items[-limit:][::-1]}

    def instruments_info(self, q: dict[str, str]) -> dict[str, Any]:
        items = [] if q.get("status") == "PreLaunch" else self.instruments.get(q["category"], [])
        return {"category": q["category"], "list": items, "nextPageCursor": ""}

    # -- HTTP
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server name
                parts = urlsplit(self.path)
                query = dict(parse_qsl(parts.query))
                fake.requests.append((parts.path, query))
                queue = fake.failures.get(parts.path)
                if queue:
                    failure = queue.popleft()
                    if failure == "ok":
                        pass
                    elif failure == "timeout":
                        time.sleep(fake.delay_s)
                    elif isinstance(failure, tuple):
                        return self._send(200, {"retCode": failure[1], "retMsg": "Too many visits!", "result": {},
                                                "retExtInfo": {}, "time": int(time.time() * 1000)})
                    else:
                        return self._send(int(failure), "<html>upstream trouble</html>")
                routes = {"/v5/market/kline": fake.kline, "/v5/market/funding/history": fake.funding,
                          "/v5/market/instruments-info": fake.instruments_info,
                          "/v5/market/time": lambda q: {"timeSecond": str(int(time.time()))}}
                if parts.path not in routes:
                    return self._send(404, {"retCode": 10017, "retMsg": "route not found", "result": {}})
                self._send(200, {"retCode": 0, "retMsg": "OK", "result": routes[parts.path](query), "retExtInfo": {},
                                 "time": int(time.time() * 1000)})

            def _send(self, status: int, body: Any) -> None:
                blob = (body if isinstance(body, str) else json.dumps(body)).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json" if not isinstance(body, str) else "text/html")
                    self.send_header("Content-Length", str(len(blob)))
                    self.end_headers()
                    self.wfile.write(blob)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

        return Handler
