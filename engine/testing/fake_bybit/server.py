"""``FakeBybit``: a Bybit v5 REST exchange on 127.0.0.1 for the real ccxt client, with faults and hooks.

What it serves is what ccxt 4.5.90 sends and parses (BYBIT.md): public market data (time,
instruments-info, kline, tickers, funding history) and signed private endpoints (coin info, API key
info, account info, wallet balance, fee rate, order create / cancel / realtime / history, execution
list, position list, set leverage) for one unified account.

Two clocks: *market time* (``set_market_time``; by default the real time) drives klines, prices,
fills and funding, and may be moved by hand so a test replays history; the *wall clock*
(``skew_clock``) is what ``/v5/market/time`` reports and what signatures are checked against.
Moving market time forward processes every bar passed on the way (``matching.Matching.advance``).

Faults (``fault``, ``random_faults``) and hooks (``fill``, ``cancel_from_exchange``,
``external_order``, ``wipe_recent_closed``) are methods, and for a fake run from the command line
also ``POST /fake/<hook>`` with the keyword arguments as a JSON object; ``GET /fake/state`` shows
orders, executions, positions, wallet and counters. The control endpoints are unauthenticated,
which is why the fake listens on loopback only.
"""

from __future__ import annotations

import json
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

from engine.series import BarSeries
from engine.testing.fake_bybit import auth, queries
from engine.testing.fake_bybit.account import Account
from engine.testing.fake_bybit.faults import Fault, Faults
from engine.testing.fake_bybit.instruments import LINEAR, Instruments
from engine.testing.fake_bybit.market import Market, generated_bar, generated_funding_rate, recorded_klines
from engine.testing.fake_bybit.matching import Fees, Matching
from engine.testing.fake_bybit.wire import BybitError, envelope, num

DEFAULT_BALANCE: Mapping[str, float] = MappingProxyType({"USDT": 10_000.0})
HOOKS = ("set_market_time", "skew_clock", "fault", "random_faults", "clear_faults", "partial_fills", "fill",
         "cancel_from_exchange", "external_order", "wipe_recent_closed")


class Request(NamedTuple):
    """One request the exchange received: ``params`` is the query (GET) or the JSON body (POST);
    ``processed`` says whether the endpoint ran (False: a fault fired before it, or the signature
    check refused it)."""

    method: str
    path: str
    params: dict[str, Any]
    processed: bool


def _real_ms() -> int:
    return int(time.time() * 1000)


class FakeBybit:
    """A fault-injecting fake Bybit v5 exchange; ``start()`` it, point ccxt at ``url``, ``stop()`` it.

    ``bybit_dir`` holds recorded payloads (``ccxt_static_markets_bybit.json`` for the instrument list,
    ``ccxt_static_response_bybit_subset.json`` for recorded klines); without it the built-in BTCUSDT
    and ETHUSDT are listed. ``bars`` (exchange id -> ``BarSeries``) replaces the price generator for
    those symbols; ``missing`` are bar open times the exchange has no bar for; ``funding_start`` the
    first funding settlement it has; ``funding_rate(ts) -> rate`` replaces the generated rates.
    """

    def __init__(self, bybit_dir: Path | None = None, *, missing: Iterable[int] = frozenset(), funding_start: int = 0,
                 bars: Mapping[str, BarSeries] | None = None, api_key: str = "fake-key", api_secret: str = "fake-secret",
                 balance: Mapping[str, float] = DEFAULT_BALANCE, linear_taker_fee: float = 0.00055,
                 linear_maker_fee: float = 0.0002, spot_fee: float = 0.001, half_spread_bps: float = 0.0,
                 recent_closed_limit: int = 500, funding_rate: Callable[[int], float] | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        if not host.startswith("127."):
            raise ValueError(f"host {host!r} is not a loopback address: the fake's control endpoints are "
                             "unauthenticated, so it listens on 127.x.x.x only")
        bars = dict(bars or {})
        for symbol, series in bars.items():
            if not len(series):
                raise ValueError(f"the bars given for {symbol} are empty")
        self.missing: set[int] = set(missing)  # bar open times the exchange has no bar for (downtime)
        self._funding_rate = funding_rate or generated_funding_rate
        self.market = Market(bars=bars, recorded=recorded_klines(bybit_dir), missing=self.missing,
                             funding_rate=self._funding_rate, funding_start=funding_start)
        self.instruments = Instruments.build(bybit_dir, {s: float(b.open[0]) for s, b in bars.items()})
        self.api_key, self.api_secret = api_key, api_secret
        self.account = Account(balance)
        self._pinned: int | None = None
        self._skew = 0
        self._lock = threading.RLock()
        self.matching = Matching(self.instruments, self.market, self.account,
                                 fees=Fees(linear_taker_fee, linear_maker_fee, spot_fee),
                                 half_spread=half_spread_bps / 10_000, recent_closed_limit=recent_closed_limit,
                                 now=self.market_time())
        self._faults = Faults()
        self.delay_s = 1.0  # how long a "timeout" fault holds the answer: make it longer than the client's timeout
        self.requests: list[Request] = []
        self.errors: list[str] = []  # tracebacks of requests the fake itself failed on (HTTP 500): a bug in the fake
        self._routes = self._route_table()
        self._host = host
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        # A short poll interval: stop() waits up to one interval for the serving loop to notice.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-bybit", daemon=True)

    # -- life
    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._server.server_port}"

    def start(self) -> FakeBybit:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeBybit:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- clocks
    def market_time(self) -> int:
        """The exchange's market time (ms): the pinned time, or the real time when following the clock."""
        return self._pinned if self._pinned is not None else _real_ms()

    def set_market_time(self, ms: int | None) -> None:
        """Pin market time at ``ms`` (None: follow the real time again), processing every bar passed.
        It moves backwards only on an exchange that has not traded yet: fills cannot be undone."""
        with self._lock:
            target = _real_ms() if ms is None else int(ms)
            if target < self.matching.processed_until:
                if self.matching.has_traded():
                    raise ValueError(f"market time {target} is before {self.matching.processed_until}, which this "
                                     "exchange has already traded through: market time only moves forward")
                self.matching.processed_until = target
            self._pinned = None if ms is None else target
            self.matching.advance(target)

    def skew_clock(self, ms: int) -> None:
        """Set the wall clock to real time + ``ms``: what /v5/market/time answers and signatures are
        checked against (market time is not affected)."""
        self._skew = int(ms)

    def wall_time(self) -> int:
        return _real_ms() + self._skew

    def _sync(self) -> int:
        """Process what market time has passed since the last request; returns market time."""
        now = self.market_time()
        self.matching.advance(now)
        return now

    # -- faults
    def fault(self, path: str, kind: Any, *, when: str = "before", times: int = 1) -> None:
        """Queue a fault for the next ``times`` requests to ``path`` (e.g. "/v5/order/create"); see
        ``engine.testing.fake_bybit.faults`` for the kinds."""
        with self._lock:
            self._faults.add(path, kind, when, times)

    def fail(self, path: str, *failures: Any) -> None:
        """Queue faults before processing, one per request (the earlier public fake's form): an HTTP
        status, ``("ret", code)``, ``"timeout"``, or ``"ok"`` to let one request through."""
        for failure in failures:
            self.fault(path, failure)

    def random_faults(self, rate: float, seed: int, *, paths: Iterable[str] | None = None,
                      kinds: Iterable[Any] | None = None) -> None:
        """Give each request to ``paths`` (default: the private order, execution, position and wallet
        endpoints) a fault with probability ``rate``, of a random kind, before or after processing
        (seeded: the same seed and requests give the same faults)."""
        with self._lock:
            self._faults.set_random(rate, seed, paths, kinds)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def faults_fired(self) -> int:
        """Faults injected so far, queued and random."""
        return self._faults.fired

    @property
    def failures(self) -> Any:
        """The queued faults by path (``failures.clear()`` drops them)."""
        return self._faults.queued

    def partial_fills(self, probability: float, seed: int = 0) -> None:
        """With this probability a market order fills only part (the rest cancelled) and a resting
        limit order fills in two executions."""
        with self._lock:
            self.matching.partial_fills(probability, seed)

    # -- hooks
    def fill(self, order_link_id: str, qty: float | None = None, price: float | None = None) -> str:
        """Execute (part of) a resting order now, as maker, at ``price`` (default its limit); the execId."""
        with self._lock:
            now = self._sync()
            return self.matching.fill(order_link_id, qty, price, now)

    def cancel_from_exchange(self, order_link_id: str) -> None:
        """Cancel a resting order from the exchange's side (cancelType CancelByAdmin)."""
        with self._lock:
            self.matching.cancel_from_exchange(order_link_id, self._sync())

    def external_order(self, symbol: str, side: str, qty: float, *, order_type: str = "Market",
                       price: float | None = None, order_link_id: str = "", category: str = LINEAR) -> str:
        """An order placed by someone else on this account (a person on the website): it goes through
        the same checks and matching, a market one changing the position and balance at once, but is
        not counted in ``creates()``. Returns its orderId."""
        params: dict[str, Any] = {"category": category, "symbol": symbol, "side": side.capitalize(),
                                  "orderType": order_type.capitalize(), "qty": num(float(qty)),
                                  "orderLinkId": order_link_id}
        if price is not None:
            params["price"] = num(float(price))
        with self._lock:
            return self.matching.create(params, self._sync(), by_api=False).order_id

    def wipe_recent_closed(self) -> None:
        """Forget the recently closed orders order/realtime lists, as Bybit does when it restarts its
        services; order history still has them."""
        with self._lock:
            self.matching.recent_closed.clear()

    # -- inspection
    def orders(self) -> list[dict[str, Any]]:
        """Every order ever accepted, as Bybit order objects in their current state, oldest first."""
        with self._lock:
            self._sync()
            return [o.to_bybit() for o in self.matching.orders.values()]

    def executions(self) -> list[dict[str, Any]]:
        """Every execution, trades and funding, oldest first, as execution/list rows."""
        with self._lock:
            self._sync()
            return [dict(e.row) for e in self.matching.executions]

    def creates(self) -> Counter[str]:
        """orderLinkId -> create requests accepted for it (one per intent is what a client must achieve)."""
        with self._lock:
            return Counter(self.matching.creates)

    def position(self, symbol_id: str) -> float:
        """The signed size of the linear position in ``symbol_id`` ("BTCUSDT")."""
        with self._lock:
            self._sync()
            position = self.account.positions.get(symbol_id)
            return position.size if position is not None else 0.0

    def wallet(self, coin: str) -> float:
        """walletBalance of ``coin``."""
        with self._lock:
            self._sync()
            return self.account.balance(coin)

    def paths(self, path: str) -> list[dict[str, Any]]:
        """The parameters of every request to ``path``, in arrival order."""
        return [r.params for r in self.requests if r.path == path]

    def state(self) -> dict[str, Any]:
        """Everything ``GET /fake/state`` shows."""
        with self._lock:
            now = self._sync()
            return {"market_time": now, "wall_time": self.wall_time(), "orders": self.orders(),
                    "executions": self.executions(),
                    "positions": {s: p.size for s, p in self.account.positions.items() if p.size},
                    "wallet": dict(self.account.wallet), "creates": dict(self.matching.creates),
                    "faults_fired": self.faults_fired, "errors": list(self.errors)}

    # -- the earlier public fake's data helpers
    @staticmethod
    def bar(category: str, ts: int) -> list[str]:
        """The generated BTCUSDT kline row opening at ``ts``."""
        return generated_bar(category, ts)

    def funding_rate(self, ts: int) -> str:
        """The funding rate of the settlement at ``ts``, as the fake publishes it."""
        return num(self._funding_rate(ts), 8)

    # -- endpoints
    def _route_table(self) -> dict[tuple[str, str], tuple[bool, Callable[[dict[str, Any], int], Any]]]:
        m = self.matching
        return {
            ("GET", "/v5/market/time"): (False, self._time),
            ("GET", "/v5/market/instruments-info"): (False, self._instruments_info),
            ("GET", "/v5/market/kline"): (False, self.market.kline),
            ("GET", "/v5/market/tickers"): (False, self._tickers),
            ("GET", "/v5/market/funding/history"): (False, self.market.funding_history),
            ("GET", "/v5/asset/coin/query-info"): (True, lambda q, now: {"rows": []}),
            ("GET", "/v5/user/query-api"): (True, self._query_api),
            ("GET", "/v5/account/info"): (True, lambda q, now: {
                "unifiedMarginStatus": 6, "marginMode": "REGULAR_MARGIN", "isMasterTrader": False,
                "spotHedgingStatus": "OFF", "updatedTime": str(now), "dcpStatus": "OFF", "timeWindow": 10, "smpGroup": 0}),
            ("GET", "/v5/account/wallet-balance"): (True, lambda q, now: queries.wallet_balance(m, q, now)),
            ("GET", "/v5/account/fee-rate"): (True, lambda q, now: queries.fee_rates(m, q)),
            ("POST", "/v5/order/create"): (True, self._create),
            ("POST", "/v5/order/cancel"): (True, self._cancel),
            ("GET", "/v5/order/realtime"): (True, lambda q, now: queries.realtime(m, q)),
            ("GET", "/v5/order/history"): (True, lambda q, now: queries.history(m, q, now)),
            ("GET", "/v5/execution/list"): (True, lambda q, now: queries.executions(m, q, now)),
            ("GET", "/v5/position/list"): (True, lambda q, now: queries.positions(m, q, now)),
            ("POST", "/v5/position/set-leverage"): (True, self._set_leverage),
        }

    def _time(self, q: dict[str, Any], now: int) -> dict[str, str]:
        wall = self.wall_time()
        return {"timeSecond": str(wall // 1000), "timeNano": str(wall * 1_000_000)}

    def _instruments_info(self, q: dict[str, Any], now: int) -> dict[str, Any]:
        category = q.get("category", "")
        items = [i for i in self.instruments.items(category) if (not q.get("symbol") or i["symbol"] == q["symbol"])
                 and (not q.get("status") or i.get("status") == q["status"])]
        return {"category": category, "list": items, "nextPageCursor": ""}

    def _tickers(self, q: dict[str, Any], now: int) -> dict[str, Any]:
        category = q.get("category", "")
        if q.get("symbol"):
            listed = [self.instruments.get(category, q["symbol"])]
        else:
            listed = list(self.instruments.listed(category))
        return {"category": category,
                "list": [self.market.ticker(i, now, self.matching.half_spread) for i in listed]}

    def _query_api(self, q: dict[str, Any], now: int) -> dict[str, Any]:
        return {"id": "1", "note": "fake Bybit key", "apiKey": self.api_key, "readOnly": 0, "secret": "",
                "permissions": {"ContractTrade": ["Order", "Position"], "Spot": ["SpotTrade"], "Wallet": [],
                                "Options": [], "Derivatives": [], "Exchange": [], "NFT": [], "CopyTrading": []},
                "ips": ["*"], "type": 1, "deadlineDay": 90, "expiredAt": "", "createdAt": str(now), "unified": 0,
                "uta": 1, "userID": 1, "inviterID": 0, "vipLevel": "No VIP", "mktMakerLevel": "0", "affiliateID": 0,
                "rsaPublicKey": "", "isMaster": True, "parentUid": "0", "kycLevel": "LEVEL_DEFAULT", "kycRegion": ""}

    def _create(self, body: dict[str, Any], now: int) -> dict[str, str]:
        order = self.matching.create(body, now)
        return {"orderId": order.order_id, "orderLinkId": order.link_id}

    def _cancel(self, body: dict[str, Any], now: int) -> dict[str, str]:
        order = self.matching.cancel(body, now)
        return {"orderId": order.order_id, "orderLinkId": order.link_id}

    def _set_leverage(self, body: dict[str, Any], now: int) -> dict[str, Any]:
        if body.get("category") != LINEAR:
            raise BybitError(10001, f"category {body.get('category')!r} is invalid: leverage is set on linear only")
        inst = self.instruments.get(LINEAR, str(body.get("symbol", "")))
        buy, sell = body.get("buyLeverage"), body.get("sellLeverage")
        if buy != sell:
            raise BybitError(10001, f"buyLeverage {buy!r} and sellLeverage {sell!r} must be equal on a one-way account")
        ceiling = float(inst.item["leverageFilter"]["maxLeverage"])
        try:
            leverage = float(str(buy))
        except ValueError:
            leverage = 0.0
        if not 1 <= leverage <= ceiling:
            raise BybitError(10001, f"leverage {buy!r} is invalid: between 1 and {num(ceiling)}")
        position = self.account.position(inst.symbol)
        if position.leverage == leverage:
            raise BybitError(110043, "Set leverage not modified")
        position.leverage = leverage
        return {}

    def _answer(self, method: str, path: str, headers: Any, payload: str,
                params: dict[str, Any] | None) -> tuple[int, Any, bool]:
        """(HTTP status, body, processed) for one exchange request."""
        route = self._routes.get((method, path))
        if route is None:
            return 404, envelope(None, self.wall_time(), code=10017, message=f"route not found: {method} {path}"), False
        private, handler = route
        if private:
            try:
                auth.check(headers, payload, api_key=self.api_key, api_secret=self.api_secret,
                           server_ms=self.wall_time())
            except BybitError as exc:
                return 200, envelope(None, self.wall_time(), code=exc.code, message=exc.message), False
        if params is None:
            return 200, envelope(None, self.wall_time(), code=10001, message="the request body is not a JSON object"), False
        with self._lock:
            try:
                result = handler(params, self._sync())
            except BybitError as exc:
                return 200, envelope(None, self.wall_time(), code=exc.code, message=exc.message), True
            except Exception as exc:  # a bug in the fake: say so loudly rather than answer something plausible
                self.errors.append(traceback.format_exc())
                traceback.print_exc()
                return 500, envelope(None, self.wall_time(), code=10016, message=f"fake exchange error: {exc!r}"), True
        return 200, envelope(result, self.wall_time()), True

    def _control(self, method: str, name: str, body: bytes) -> tuple[int, Any]:
        """``POST /fake/<hook>`` with the hook's keyword arguments; ``GET /fake/state``."""
        if method == "GET" and name == "state":
            return 200, self.state()
        if method != "POST" or name not in HOOKS:
            return 404, {"error": f"no control endpoint {method} /fake/{name}: POST /fake/<hook> for a hook in "
                                  f"{', '.join(HOOKS)}, or GET /fake/state"}
        try:
            kwargs = json.loads(body or b"{}")
            if not isinstance(kwargs, dict):
                raise ValueError(f"the body of /fake/{name} must be a JSON object of keyword arguments")
            return 200, {"result": getattr(self, name)(**kwargs)}
        except KeyError as exc:
            return 400, {"error": str(exc.args[0]) if exc.args else repr(exc)}
        except (TypeError, ValueError, BybitError) as exc:
            return 400, {"error": str(exc)}

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            return self._faults.take(path)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # the request log is fake.requests
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server name
                self._serve("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._serve("POST")

            def _serve(self, method: str) -> None:
                parts = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
                if parts.path.startswith("/fake/"):
                    status, answer = fake._control(method, parts.path[len("/fake/"):], body)
                    return self._send(status, answer)
                params: dict[str, Any] | None
                if method == "GET":
                    params, payload = dict(parse_qsl(parts.query, keep_blank_values=True)), parts.query
                else:
                    payload = body.decode("utf-8", "replace")
                    try:
                        params = json.loads(body or b"{}")
                    except ValueError:
                        params = None
                    params = params if isinstance(params, dict) else None
                fault = fake._take_fault(parts.path)
                if fault is not None and fault.when == "before":
                    fake.requests.append(Request(method, parts.path, params or {}, False))
                    return self._fault(fault, None)
                status, answer, processed = fake._answer(method, parts.path, self.headers, payload, params)
                fake.requests.append(Request(method, parts.path, params or {}, processed))
                if fault is not None:
                    return self._fault(fault, (status, answer))
                self._send(status, answer)

            def _fault(self, fault: Fault, answer: tuple[int, Any] | None) -> None:
                kind = fault.kind
                if kind == "timeout":
                    time.sleep(fake.delay_s)
                    if answer is not None:  # too late: the client has given up
                        self._send(*answer)
                    else:
                        self.close_connection = True
                elif kind == "drop":
                    self.close_connection = True  # returning without a word closes the socket
                elif isinstance(kind, int):
                    self._send(kind, f"<html><body><h1>{kind}</h1>upstream trouble (fake fault)</body></html>")
                elif isinstance(kind, tuple):
                    _, code, message = kind
                    self._send(200, envelope(None, fake.wall_time(), code=int(code), message=str(message)))

            def _send(self, status: int, body: Any) -> None:
                text = isinstance(body, str)
                blob = (body if text else json.dumps(body)).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/html" if text else "application/json")
                    self.send_header("Content-Length", str(len(blob)))
                    self.end_headers()
                    self.wfile.write(blob)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout fault)
                    pass

        return Handler
