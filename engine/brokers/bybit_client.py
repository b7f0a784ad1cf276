"""The private side of Bybit v5 through the real ccxt client: keys, venues, error meanings, and the
few reads and writes the live broker and its reconciliation need (``LIVE.md``, ``BYBIT.md``).

- **Keys** come from the environment only (``BYBIT_API_KEY``, ``BYBIT_API_SECRET``). They live in
  the ccxt client and in ``Credentials``, whose ``repr`` hides them; ``redact`` blanks them out of
  any text before it reaches a log line, the store or an error message.
- **Venues**: ``demo`` (Bybit demo trading: mainnet prices, simulated funds, its own keys; the
  default), ``testnet`` (``set_sandbox_mode``), ``mainnet``. ``api_url`` points all three at another
  server (a fake Bybit on 127.0.0.1 to rehearse offline; ``BYBIT.md`` section 1).
- **What an error means** (``classify``): the trouble table of ``LIVE.md``. Only definitive answers
  (insufficient funds, bad quantity or price, a symbol the venue does not have, authentication)
  reject an order; a timeout, a 5xx, a rate limit or a lost connection is *unclear*: the order may
  exist and is looked up by its client id.
- **Reads** are Bybit's own endpoints through ccxt's signed implicit methods (the raw rows, which
  carry ``orderLinkId``, ``execId`` and ``cumExecQty`` exactly as Bybit sends them); orders are
  created and cancelled through ccxt's unified methods (its rounding and parameter mapping).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from engine.domain import Instrument, Order, OrderType, Side
from engine.errors import ConfigError

T = TypeVar("T")
Venue = Literal["demo", "testnet", "mainnet"]
VENUES: tuple[Venue, ...] = ("demo", "testnet", "mainnet")
KEY_VARIABLE, SECRET_VARIABLE = "BYBIT_API_KEY", "BYBIT_API_SECRET"
DUPLICATE_CODES = ("110072", "170141", "12141")  # orderLinkId already used (linear, spot, spot v3)
WINDOW_MS = 7 * 24 * 3_600_000  # Bybit answers execution and order-history queries for at most 7 days
OPEN_STATUSES = frozenset({"New", "PartiallyFilled", "Untriggered"})


@dataclass(frozen=True)
class Credentials:
    api_key: str = field(repr=False)
    secret: str = field(repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Credentials:
        env = os.environ if env is None else env
        key, secret = env.get(KEY_VARIABLE, "").strip(), env.get(SECRET_VARIABLE, "").strip()
        if not key or not secret:
            missing = [n for n, v in ((KEY_VARIABLE, key), (SECRET_VARIABLE, secret)) if not v]
            raise ConfigError(f"live trading needs the API key in the environment: set {' and '.join(missing)} "
                              "(keys are never read from the config file); demo-trading keys come from Bybit's "
                              "demo account page")
        return cls(key, secret)

    def __repr__(self) -> str:
        return "Credentials(api_key=***, secret=***)"


def redact(text: str, credentials: Credentials | None) -> str:
    """``text`` with the key and the secret blanked out (ccxt errors quote requests and answers)."""
    if credentials is None:
        return text
    for value in (credentials.secret, credentials.api_key):
        if value:
            text = text.replace(value, "***")
    return text


def make_trading_exchange(credentials: Credentials, venue: Venue = "demo", *, api_url: str = "",
                          timeout_s: float = 10.0, recv_window_ms: int = 5000,
                          rate_limit: bool = True) -> Any:
    """A signed ccxt Bybit client for ``venue``: unified trading account assumed (no account probes),
    markets limited to spot and linear, no currency listing, ccxt's rate limiter on unless
    ``rate_limit`` is False (a fake exchange on loopback), no retries of its own (the broker decides
    what a retry means)."""
    import ccxt

    if venue not in VENUES:
        raise ConfigError(f"unknown venue {venue!r}; venues: {', '.join(VENUES)}")
    config: dict[str, Any] = {
        "apiKey": credentials.api_key, "secret": credentials.secret, "enableRateLimit": rate_limit,
        "timeout": int(timeout_s * 1000),
        "options": {"fetchMarkets": {"types": ["spot", "linear"]}, "enableUnifiedAccount": True,
                    "enableUnifiedMargin": False, "recvWindow": int(recv_window_ms)},
    }
    if api_url:
        base = {name: api_url for name in ("spot", "futures", "v2", "public", "private")}
        config["urls"] = {"api": dict(base), "test": dict(base), "demotrading": dict(base)}
    exchange = ccxt.bybit(config)
    exchange.has["fetchCurrencies"] = False
    if venue == "demo":
        exchange.enable_demo_trading(True)
    elif venue == "testnet":
        exchange.set_sandbox_mode(True)
    return exchange


# -- what an error means ---------------------------------------------------------------------------
Meaning = Literal["rejected", "duplicate", "clock", "rate_limited", "banned", "not_found", "unclear"]
_RET_CODE = re.compile(r'"retCode"\s*:\s*"?(\d+)')


def ret_code(exc: BaseException) -> str | None:
    match = _RET_CODE.search(str(exc))
    return match.group(1) if match else None


def classify(exc: BaseException) -> Meaning:
    """What an exception from a create (or cancel) says about the order (``LIVE.md``'s table)."""
    import ccxt

    code = ret_code(exc)
    if code in DUPLICATE_CODES:
        return "duplicate"
    if isinstance(exc, ccxt.InvalidNonce):
        return "clock"
    if isinstance(exc, ccxt.RateLimitExceeded):
        # Bybit answers an IP ban with HTTP 403 (ccxt maps it to RateLimitExceeded); 10006/10018 are per-key limits.
        return "rate_limited" if code in ("10006", "10018") or " 429 " in str(exc) else "banned"
    if isinstance(exc, ccxt.OrderNotFound):
        return "not_found"
    if isinstance(exc, (ccxt.InsufficientFunds, ccxt.InvalidOrder, ccxt.BadSymbol, ccxt.AuthenticationError)):
        return "rejected"
    if isinstance(exc, ccxt.BadRequest) and code in ("10001",):
        return "rejected"  # malformed parameters: sending them again cannot succeed
    return "unclear"  # timeouts, 5xx, lost connections, unknown codes: the order may exist


def with_retries(call: Callable[[], T], *, what: str, tries: int = 8, backoff_s: float = 0.5, max_s: float = 30.0,
                 say: Callable[[str], None] | None = None, sleep: Callable[[float], None] = time.sleep) -> T:
    """``call()``, again with back-off (``backoff_s``, doubling to ``max_s``) while the exchange's
    answer is unclear or a rate limit; a definitive answer (or the last try's) is raised. For the
    reads a daemon needs before it can start: nothing is sent by them."""
    wait = backoff_s
    for attempt in range(1, tries + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == tries or classify(exc) not in ("unclear", "rate_limited", "clock", "banned"):
                raise
            if say is not None:
                say(f"{what}: {type(exc).__name__}; trying again in {wait:g} s")
            sleep(wait)
            wait = min(wait * 2, max_s)
    raise AssertionError("unreachable")


# -- the account -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Market:
    symbol: str  # ccxt's unified symbol, the engine's (BTC/USDT, BTC/USDT:USDT)
    id: str  # Bybit's (BTCUSDT)
    category: str  # spot, linear
    base: str
    quote: str


class BybitAccount:
    """The signed reads and writes of one Bybit account, for the symbols a run trades."""

    def __init__(self, exchange: Any, credentials: Credentials | None = None, *, read_tries: int = 3,
                 backoff_s: float = 0.5, sleep: Callable[[float], None] = time.sleep) -> None:
        self.exchange = exchange
        self.credentials = credentials
        self.read_tries = read_tries  # a read (never a create or a cancel) is asked again this many times in all
        self.backoff_s = backoff_s
        self._sleep = sleep
        self._markets: dict[str, Market] = {}

    def _read(self, method: Callable[[dict[str, Any]], Any], query: dict[str, Any]) -> Any:
        """A signed read, asked again (with back-off) while the answer is unclear: reading twice is harmless."""
        return with_retries(lambda: method(dict(query)), what="read", tries=self.read_tries,
                            backoff_s=self.backoff_s, sleep=self._sleep)

    def market(self, symbol: str) -> Market:
        market = self._markets.get(symbol)
        if market is None:
            self.exchange.load_markets()
            if symbol not in self.exchange.markets:
                raise ConfigError(f"Bybit has no market {symbol!r} (spot like BTC/USDT, perpetuals like "
                                  "BTC/USDT:USDT)")
            m = self.exchange.markets[symbol]
            category = "spot" if m.get("spot") else "linear" if m.get("linear") and m.get("swap") else ""
            if not category:
                raise ConfigError(f"{symbol}: only spot and linear perpetual markets are traded live")
            market = self._markets[symbol] = Market(symbol, m["id"], category, m["base"], m["quote"])
        return market

    def sync_time(self) -> int:
        """Measure the local clock against Bybit's, so signed requests carry its time; the offset in ms."""
        return int(self.exchange.load_time_difference())

    def server_time(self) -> int:
        return int(self.exchange.fetch_time())

    # -- writes
    def create(self, order: Order, instrument: Instrument) -> str | None:
        """Send ``order`` with its client id; the exchange's order id (None when the answer had none)."""
        if order.type is OrderType.STOP:
            raise ValueError("stop orders")
        market = self.market(order.symbol)
        params: dict[str, Any] = {"clientOrderId": order.client_order_id}
        price = order.limit_price if order.type is OrderType.LIMIT else None
        if market.category == "spot" and order.type is OrderType.MARKET and order.side is Side.BUY:
            params["marketUnit"] = "baseCoin"  # the quantity is in the base coin, as the engine counts it
        answer = self.exchange.create_order(order.symbol, str(order.type), "buy" if order.side is Side.BUY else "sell",
                                            order.quantity, price, params)
        return (answer or {}).get("id")

    def cancel(self, symbol: str, client_order_id: str) -> None:
        self.exchange.cancel_order(None, symbol, {"orderLinkId": client_order_id})

    # -- reads (raw Bybit rows)
    def find_order(self, symbol: str, client_order_id: str) -> dict[str, Any] | None:
        """The order with this client id: open (and recently closed) orders first, then the history."""
        market = self.market(symbol)
        query = {"category": market.category, "symbol": market.id, "orderLinkId": client_order_id}
        import ccxt

        for method in (self.exchange.privateGetV5OrderRealtime, self.exchange.privateGetV5OrderHistory):
            try:
                rows = _rows(self._read(method, query))
            except ccxt.OrderNotFound:  # "order does not exist" is an answer: look in the next list
                continue
            for row in rows:
                if row.get("orderLinkId") == client_order_id:
                    return row
        return None

    def open_orders(self, symbol: str) -> list[dict[str, Any]]:
        market = self.market(symbol)
        out, cursor = [], ""
        while True:
            query = {"category": market.category, "symbol": market.id, "limit": 50}
            if cursor:
                query["cursor"] = cursor
            answer = self._read(self.exchange.privateGetV5OrderRealtime, query)
            out.extend(r for r in _rows(answer) if r.get("orderStatus") in OPEN_STATUSES)
            cursor = ((answer or {}).get("result") or {}).get("nextPageCursor") or ""
            if not cursor or not _rows(answer):
                return out

    def executions(self, symbol: str, start_ms: int, end_ms: int) -> Iterator[dict[str, Any]]:
        """Every execution (trades and funding) of ``symbol`` in [start, end], oldest window first,
        paged by Bybit's 7-day windows and its cursor."""
        market = self.market(symbol)
        lo = start_ms
        while lo <= end_ms:
            hi = min(end_ms, lo + WINDOW_MS - 1)
            cursor = ""
            while True:
                query: dict[str, Any] = {"category": market.category, "symbol": market.id, "startTime": lo,
                                         "endTime": hi, "limit": 100}
                if cursor:
                    query["cursor"] = cursor
                answer = self._read(self.exchange.privateGetV5ExecutionList, query)
                rows = _rows(answer)
                yield from rows
                cursor = ((answer or {}).get("result") or {}).get("nextPageCursor") or ""
                if not cursor or not rows:
                    break
            lo = hi + 1

    def position(self, symbol: str) -> tuple[float, float]:
        """(signed size, average entry price) of a linear position; spot holds coins, not positions."""
        market = self.market(symbol)
        if market.category == "spot":
            return self.balances().get(market.base, 0.0), 0.0
        rows = _rows(self._read(self.exchange.privateGetV5PositionList, {"category": "linear", "symbol": market.id}))
        size = avg = 0.0
        for row in rows:
            qty = float(row.get("size") or 0.0)
            sign = -1.0 if row.get("side") == "Sell" else 1.0
            size += sign * qty
            avg = float(row.get("avgPrice") or 0.0) or avg
        return size, avg

    def balances(self) -> dict[str, float]:
        """walletBalance of every coin of the unified account."""
        answer = self._read(self.exchange.privateGetV5AccountWalletBalance, {"accountType": "UNIFIED"})
        out: dict[str, float] = {}
        for account in _rows(answer):
            for coin in account.get("coin") or []:
                out[coin["coin"]] = float(coin.get("walletBalance") or 0.0)
        return out


def _rows(answer: Any) -> list[dict[str, Any]]:
    result = (answer or {}).get("result") if isinstance(answer, dict) else None
    return list((result or {}).get("list") or [])
