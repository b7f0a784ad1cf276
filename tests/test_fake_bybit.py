"""The fake Bybit v5 exchange (engine.testing.fake_bybit) through the real ccxt client, no mocks:
markets, clocks, klines that stop at market time, fills (market, limit, partial), fees, positions,
balances and funding, the order and execution lists with Bybit's paging and 7-day rule, signing and
clock skew, every fault kind mapped to the ccxt error a broker has to handle, the hooks, the HTTP
control endpoints and the command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import ccxt
import pytest

from engine.series import BarSeries
from engine.testing.fake_bybit import FakeBybit
from engine.timeutil import MS_PER_DAY, MS_PER_HOUR, parse_instant

ROOT = Path(__file__).resolve().parents[1]
H = MS_PER_HOUR
T = parse_instant("2024-03-01T10:00")  # the open of bar 0 of every hand-written table below
PERP, SPOT = "BTC/USDT:USDT", "BTC/USDT"
TAKER, MAKER = 0.00055, 0.0002


def bars(rows: list[tuple[float, float, float, float]], start: int = T, symbol: str = "BTCUSDT") -> BarSeries:
    """Hourly bars (open, high, low, close) opening at ``start``, ``start + 1h`` ..."""
    o, h, lo, c = zip(*rows)
    return BarSeries.from_arrays(symbol, H, [start + i * H for i in range(len(rows))], o, h, lo, c, [10.0] * len(rows))


# Bars from 07:00: each opens where the one before closed, rising 100 an hour; highs/lows 150 away.
RISING = bars([(40_000 + 100 * i, 40_150 + 100 * i, 39_850 + 100 * i, 40_100 + 100 * i) for i in range(12)],
              start=T - 3 * H)


def open_at(ts: int) -> float:
    return float(RISING.open[list(RISING.ts_open).index(ts)])


@pytest.fixture
def make_fake():
    """A started fake (market time at T unless told otherwise), stopped after the test; the fake
    must not have failed on any request itself."""
    started: list[FakeBybit] = []

    def make(*, at: int | None = T, **options) -> FakeBybit:
        fake = FakeBybit(**options).start()
        if at is not None:
            fake.set_market_time(at)
        started.append(fake)
        return fake

    yield make
    for fake in started:
        fake.stop()
        assert fake.errors == []


@pytest.fixture
def fake(make_fake) -> FakeBybit:
    return make_fake(bars={"BTCUSDT": RISING})


def client(fake: FakeBybit, *, secret: str = "fake-secret", timeout_ms: int = 2000, **options) -> ccxt.bybit:
    """A private ccxt client as the project builds one, every base URL pointed at the fake (BYBIT.md 1)."""
    base = {name: fake.url for name in ("spot", "futures", "v2", "public", "private")}
    exchange = ccxt.bybit({
        "apiKey": "fake-key", "secret": secret, "enableRateLimit": False, "timeout": timeout_ms,
        "options": {"fetchMarkets": {"types": ["spot", "linear"]}, "enableUnifiedAccount": True,
                    "enableUnifiedMargin": False, **options},
        "urls": {"api": dict(base), "test": dict(base), "demotrading": dict(base)},
    })
    exchange.enable_demo_trading(True)
    return exchange


@pytest.fixture
def ex(fake) -> ccxt.bybit:
    exchange = client(fake)
    exchange.load_markets()
    return exchange


def order_by_link(ex: ccxt.bybit, symbol: str, link: str) -> dict:
    (order,) = ex.fetch_open_orders(symbol, params={"orderLinkId": link})
    return order


# ---------------------------------------------------------------- markets, clocks, public data

def test_markets_load_from_the_built_in_instruments_without_recorded_payloads(make_fake):
    fake = make_fake(at=None)
    exchange = client(fake)
    markets = exchange.load_markets()
    assert set(markets) == {"BTC/USDT", "ETH/USDT", "BTC/USDT:USDT", "ETH/USDT:USDT"}
    perp, spot = markets[PERP], markets[SPOT]
    assert perp["linear"] and perp["swap"] and perp["settle"] == "USDT"
    assert (perp["precision"]["price"], perp["precision"]["amount"], perp["limits"]["amount"]["min"],
            perp["limits"]["cost"]["min"]) == (0.1, 0.001, 0.001, 5.0)
    assert (spot["precision"]["price"], spot["precision"]["amount"], spot["limits"]["cost"]["min"]) == (0.01, 1e-06, 5.0)
    assert [q.get("category") for q in fake.paths("/v5/market/instruments-info")] == ["spot", "linear", "linear"]
    assert not fake.paths("/v5/asset/coin/query-info"), "demo mode loads no currencies"


def test_a_symbol_given_bars_gets_an_instrument(make_fake):
    fake = make_fake(bars={"SOLUSDT": bars([(150.0, 151.0, 149.0, 150.5)])})
    markets = client(fake).load_markets()
    assert markets["SOL/USDT:USDT"]["precision"]["price"] == 0.001 and markets["SOL/USDT:USDT"]["linear"]
    assert markets["SOL/USDT"]["limits"]["cost"]["min"] == 5.0


def test_fetch_time_is_the_wall_clock_not_market_time(fake, ex):
    assert abs(ex.fetch_time() - fake.wall_time()) < 1000
    assert fake.market_time() == T  # pinned in 2024 while the wall clock runs on
    fake.skew_clock(60_000)
    assert abs(ex.fetch_time() - fake.wall_time()) < 1000 and fake.market_time() == T


def test_klines_stop_at_market_time_and_the_forming_candle_shows_nothing_of_its_future(fake, ex):
    fake.set_market_time(T + 20 * 60_000)  # 10:20: bar 10:00 has started, 11:00 has not
    candles = ex.fetch_ohlcv(PERP, "1h", since=T - 3 * H, limit=10)
    assert [c[0] for c in candles] == [T - 3 * H, T - 2 * H, T - H, T]
    assert candles[0][1:5] == [40_000, 40_150, 39_850, 40_100]  # closed bars as given
    assert candles[-1][1:] == [open_at(T)] * 4 + [0.0]  # forming: open only, no volume
    assert ex.fetch_ohlcv(SPOT, "1h", limit=2)[-1][0] == T  # newest first from Bybit, ascending from ccxt
    fake.set_market_time(T + 2 * H)  # 12:00: the 4 h candle of 08:00 has closed, the 12:00 one begins
    four = ex.fetch_ohlcv(PERP, "4h", since=T - 2 * H, limit=5)
    assert [c[0] for c in four] == [T - 2 * H, T + 2 * H]
    assert four[0][1:] == [40_100, 40_550, 39_950, 40_500, 40.0]  # aggregated from the 08:00 .. 11:00 bars


def test_the_ticker_is_the_open_of_the_bar_at_market_time(fake, ex):
    linear, spot = ex.fetch_ticker(PERP), ex.fetch_ticker(SPOT)
    assert linear["last"] == spot["last"] == open_at(T)
    assert linear["info"]["fundingRate"] and int(linear["info"]["nextFundingTime"]) == parse_instant("2024-03-01T16:00")
    assert linear["info"]["openInterestValue"] and "fundingRate" not in spot["info"]
    assert linear["high"] == 40_350 and linear["low"] == 39_850  # the bars 07:00 .. 09:00 and the open now


# ---------------------------------------------------------------- fills, fees, positions, balances

def test_a_market_order_fills_at_the_next_bars_open_as_taker_and_moves_position_and_wallet(fake, ex):
    # Decided at the close of bar 09:00 (market time 10:00): filled at bar 10:00's open.
    sent = ex.create_order(PERP, "market", "buy", 0.01, params={"clientOrderId": "run1-a-1"})
    assert (sent["id"], sent["clientOrderId"], sent["status"]) == (fake.orders()[0]["orderId"], "run1-a-1", None)
    order = order_by_link(ex, PERP, "run1-a-1")
    entry = open_at(T)
    fee = round(0.01 * entry * TAKER, 8)
    assert (order["status"], order["filled"], order["average"], order["fee"]) == (
        "closed", 0.01, entry, {"cost": fee, "currency": "USDT"})
    assert fake.position("BTCUSDT") == 0.01 and fake.wallet("USDT") == pytest.approx(10_000 - fee, abs=1e-8)
    (position,) = ex.fetch_positions([PERP])
    assert (position["side"], position["contracts"], position["entryPrice"]) == ("long", 0.01, entry)
    fake.set_market_time(T + 3 * H)
    assert ex.fetch_positions([PERP])[0]["unrealizedPnl"] == pytest.approx(0.01 * (open_at(T + 3 * H) - entry))
    ex.create_order(PERP, "market", "sell", 0.01, params={"clientOrderId": "run1-a-2", "reduceOnly": True})
    exit_fee = round(0.01 * open_at(T + 3 * H) * TAKER, 8)
    realised = round(0.01 * (open_at(T + 3 * H) - entry), 8)
    assert fake.position("BTCUSDT") == 0
    assert fake.wallet("USDT") == pytest.approx(10_000 + realised - fee - exit_fee, abs=1e-8)
    balance = ex.fetch_balance()["USDT"]
    assert balance["total"] == balance["free"] == pytest.approx(fake.wallet("USDT"), abs=1e-8)
    assert fake.creates() == {"run1-a-1": 1, "run1-a-2": 1}


def test_spot_market_buys_by_base_quantity_and_by_quote_amount(fake, ex):
    price = open_at(T)
    ex.create_order(SPOT, "market", "buy", 0.001, params={"clientOrderId": "s-1"})
    ex.create_order(SPOT, "market", "buy", 0.001, 40_000, params={"clientOrderId": "s-2"})  # with a price: 40 USDT
    by_base, by_quote = fake.paths("/v5/order/create")
    assert (by_base["marketUnit"], by_base["qty"]) == ("baseCoin", "0.001")
    assert "marketUnit" not in by_quote and by_quote["qty"] == "40"
    first, second = order_by_link(ex, SPOT, "s-1"), order_by_link(ex, SPOT, "s-2")
    assert (first["filled"], first["average"]) == (0.001, price)
    got = int(40 / price * 1e6) / 1e6  # the quote amount spent on whole basePrecision steps
    assert second["filled"] == got and second["cost"] == pytest.approx(got * price)
    fees = round(0.001 * 0.001, 8) + round(got * 0.001, 8)  # a buy's fee is taken from the coin bought
    assert fake.wallet("BTC") == pytest.approx(0.001 + got - fees, abs=1e-12)
    assert fake.wallet("USDT") == pytest.approx(10_000 - (0.001 + got) * price, abs=1e-6)
    assert first["fee"]["currency"] == "BTC" and first["fee"]["cost"] == pytest.approx(0.000001)
    ex.create_order(SPOT, "market", "sell", 0.001)
    sell = round(0.001 * price, 8)
    assert fake.wallet("BTC") == pytest.approx(got - fees, abs=1e-12)
    assert fake.wallet("USDT") == pytest.approx(10_000 - (0.001 + got) * price + sell - round(sell * 0.001, 8), abs=1e-6)
    got -= fees
    assert ex.fetch_balance()["BTC"]["free"] == pytest.approx(got, abs=1e-12)


# A limit order placed at T (bar 0's open, price 40,000) and the bars that follow: the bar and the
# price it fills at, or None.
LIMIT_CASES = [
    ("buy touched", "buy", 39_900, [(40_000, 40_100, 39_950, 40_050), (40_050, 40_060, 39_880, 39_900)], (1, 39_900)),
    ("buy gapped through", "buy", 39_900, [(40_000, 40_100, 39_950, 39_800), (39_700, 39_800, 39_600, 39_750)],
     (1, 39_700)),
    ("sell in the bar it was placed", "sell", 40_200, [(40_000, 40_250, 39_950, 40_100)], (0, 40_200)),
    ("sell gapped up", "sell", 40_200, [(40_000, 40_150, 39_950, 40_100), (40_300, 40_400, 40_250, 40_350)],
     (1, 40_300)),
    ("buy never reached", "buy", 39_000, [(40_000, 40_100, 39_950, 40_050), (40_050, 40_100, 39_001, 39_100)], None),
]


@pytest.mark.parametrize(("side", "limit", "rows", "expected"), [c[1:] for c in LIMIT_CASES],
                         ids=[c[0] for c in LIMIT_CASES])
def test_a_resting_limit_order_fills_when_a_bar_reaches_it_as_maker(make_fake, side, limit, rows, expected):
    fake = make_fake(bars={"BTCUSDT": bars([(40_000, 40_000, 40_000, 40_000), *rows], start=T - H)})
    ex = client(fake)
    ex.create_order(PERP, "limit", side, 0.01, limit, params={"clientOrderId": "lim-1"})
    assert order_by_link(ex, PERP, "lim-1")["status"] == "open"
    assert ex.fetch_open_orders(PERP)[0]["clientOrderId"] == "lim-1"
    fake.set_market_time(T + len(rows) * H)
    if expected is None:
        assert order_by_link(ex, PERP, "lim-1")["status"] == "open" and fake.executions() == []
        return
    bar, price = expected
    order = order_by_link(ex, PERP, "lim-1")
    assert (order["status"], order["average"], order["fee"]["cost"]) == ("closed", price, round(0.01 * price * MAKER, 8))
    (fill,) = fake.executions()
    assert (fill["isMaker"], int(fill["execTime"])) == (True, T + (bar + 1) * H)  # timed at the bar's close
    assert fake.position("BTCUSDT") == (0.01 if side == "buy" else -0.01)
    assert ex.fetch_open_orders(PERP) == []


def test_marketable_limits_take_and_post_only_is_cancelled_instead(fake, ex):
    ex.create_order(PERP, "limit", "buy", 0.01, 40_500, params={"clientOrderId": "take-1"})
    taken = order_by_link(ex, PERP, "take-1")
    assert (taken["status"], taken["average"], taken["fee"]["cost"]) == ("closed", open_at(T), round(0.01 * open_at(T) * TAKER, 8))
    ex.create_order(PERP, "limit", "buy", 0.01, 40_500, params={"clientOrderId": "post-1", "postOnly": True})
    post = order_by_link(ex, PERP, "post-1")
    assert (post["status"], post["filled"], post["info"]["rejectReason"]) == ("canceled", 0, "EC_PostOnlyWillTakeLiquidity")


def test_order_history_rows_parse_into_orders(fake, ex):
    ex.create_order(PERP, "market", "buy", 0.002, params={"clientOrderId": "hist-1"})
    response = ex.privateGetV5OrderHistory({"category": "linear", "orderLinkId": "hist-1"})
    (row,) = response["result"]["list"]
    order = ex.parse_order(row, ex.market(PERP))
    assert (order["clientOrderId"], order["status"], order["filled"], order["symbol"]) == ("hist-1", "closed", 0.002, PERP)
    assert ex.parse_order(row)["symbol"] == PERP  # tpslMode tells ccxt it is a contract order


def test_cancel_by_order_link_id_then_again_is_order_not_found(fake, ex):
    ex.create_order(PERP, "limit", "buy", 0.01, 39_000, params={"clientOrderId": "c-1"})
    ex.cancel_order(None, PERP, {"orderLinkId": "c-1"})
    assert fake.paths("/v5/order/cancel")[-1] == {"symbol": "BTCUSDT", "orderLinkId": "c-1", "category": "linear"}
    assert order_by_link(ex, PERP, "c-1")["status"] == "canceled"
    with pytest.raises(ccxt.OrderNotFound, match="110001"):
        ex.cancel_order(None, PERP, {"orderLinkId": "c-1"})
    with pytest.raises(ccxt.OrderNotFound, match="110001"):
        ex.cancel_order("no-such-order", PERP)
    with pytest.raises(ccxt.OrderNotFound, match="170213"):
        ex.cancel_order("123", SPOT)
    assert ex.fetch_open_orders(PERP, params={"orderLinkId": "never-sent"}) == []


def test_a_duplicate_order_link_id_is_invalid_order_and_creates_nothing(fake, ex):
    ex.create_order(PERP, "market", "buy", 0.01, params={"clientOrderId": "dup-1"})
    with pytest.raises(ccxt.InvalidOrder, match="110072.*OrderLinkedID is duplicate"):
        ex.create_order(PERP, "market", "buy", 0.01, params={"clientOrderId": "dup-1"})
    ex.create_order(SPOT, "market", "buy", 0.001, params={"clientOrderId": "dup-2"})
    with pytest.raises(ccxt.InvalidOrder, match="170141"):
        ex.create_order(SPOT, "market", "buy", 0.001, params={"clientOrderId": "dup-2"})
    assert fake.creates() == {"dup-1": 1, "dup-2": 1} and fake.position("BTCUSDT") == 0.01


@pytest.mark.parametrize(("symbol", "amount", "params", "error", "code"), [
    (PERP, 10.0, {}, ccxt.InsufficientFunds, "110007"),  # 400,000 USDT at 10x: 40,000 margin
    (SPOT, 1.0, {}, ccxt.InsufficientFunds, "170131"),
    (SPOT, 0.0001, {}, ccxt.InvalidOrder, "170140"),  # 4 USDT, below the 5 USDT minimum
    (PERP, 0.01, {"reduceOnly": True}, ccxt.InvalidOrder, "110017"),  # nothing to reduce
    (PERP, 0.01, {"clientOrderId": "x" * 37}, ccxt.BadRequest, "10001"),
])
def test_orders_the_exchange_refuses(ex, fake, symbol, amount, params, error, code):
    with pytest.raises(error, match=code):
        ex.create_order(symbol, "market", "buy", amount, params=params)
    assert fake.orders() == [] and sum(fake.creates().values()) == 0


def test_a_quantity_below_one_lot_is_invalid_order(fake, ex):
    # ccxt refuses such an amount itself; a raw request shows what the exchange answers.
    with pytest.raises(ccxt.InvalidOrder, match="110017.*below the minimum order quantity 0.001"):
        ex.privatePostV5OrderCreate({"symbol": "BTCUSDT", "side": "Buy", "orderType": "Market", "category": "linear",
                                     "qty": "0.0004"})
    assert fake.orders() == []


def test_leverage_is_set_once_then_not_modified(fake, ex):
    ex.set_leverage(5, PERP)
    with pytest.raises(ccxt.BadRequest, match="110043"):
        ex.set_leverage(5, PERP)
    ex.create_order(PERP, "market", "buy", 0.01)
    assert ex.fetch_positions([PERP])[0]["leverage"] == 5
    assert ex.fetch_balance()["USDT"]["used"] == pytest.approx(0.01 * open_at(T) / 5)


# ---------------------------------------------------------------- signing and clocks

def test_a_wrong_secret_or_key_is_an_authentication_error(fake):
    with pytest.raises(ccxt.AuthenticationError, match="10004"):
        client(fake, secret="not-the-secret").fetch_balance()
    exchange = client(fake)
    exchange.apiKey = "someone-else"
    with pytest.raises(ccxt.AuthenticationError, match="10003"):
        exchange.fetch_balance()
    assert [r.processed for r in fake.requests if r.path == "/v5/account/wallet-balance"] == [False, False]


def test_a_skewed_server_clock_is_invalid_nonce_until_ccxt_loads_the_time_difference(fake, ex):
    fake.skew_clock(60_000)  # the server's clock is a minute ahead: our timestamps are stale
    with pytest.raises(ccxt.InvalidNonce, match="10002"):
        ex.create_order(PERP, "market", "buy", 0.01, params={"clientOrderId": "skew-1"})
    assert fake.creates() == {}
    # ccxt signs with milliseconds() - options['timeDifference']; load_time_difference() sets it from
    # /v5/market/time, so the resend (same id) is signed with the server's time.
    assert ex.load_time_difference() == pytest.approx(-60_000, abs=1000)
    ex.create_order(PERP, "market", "buy", 0.01, params={"clientOrderId": "skew-1"})
    assert fake.creates() == {"skew-1": 1}
    # adjustForTimeDifference only makes load_markets call load_time_difference (once, at load).
    adjusted = client(fake, adjustForTimeDifference=True)
    adjusted.load_markets()
    assert adjusted.fetch_balance()["USDT"]["total"] > 0


# ---------------------------------------------------------------- faults

@pytest.mark.parametrize(("kind", "error"), [
    (502, ccxt.ExchangeNotAvailable), (500, ccxt.ExchangeNotAvailable), (503, ccxt.ExchangeNotAvailable),
    (504, ccxt.RequestTimeout), (403, ccxt.RateLimitExceeded), (429, ccxt.RateLimitExceeded),
    (("ret", 10006), ccxt.RateLimitExceeded), (("ret", 10016, "Request timeout"), ccxt.RequestTimeout),
    (("ret", 10002), ccxt.InvalidNonce), ("drop", ccxt.NetworkError),
])
def test_a_fault_before_processing_raises_the_ccxt_error_and_creates_nothing(fake, ex, kind, error):
    fake.fault("/v5/order/create", kind)
    with pytest.raises(error):
        ex.create_order(PERP, "market", "buy", 0.01, params={"clientOrderId": "f-1"})
    assert fake.orders() == [] and fake.creates() == {} and fake.faults_fired == 1
    assert fake.requests[-1].processed is False
    ex.create_order(PERP, "market", "buy", 0.01, params={"clientOrderId": "f-1"})  # the fault fired once
    assert fake.creates() == {"f-1": 1}


def test_a_timeout_after_processing_loses_the_ack_but_the_order_exists(make_fake):
    fake = make_fake()
    fake.delay_s = 0.6
    ex = client(fake, timeout_ms=300)
    ex.load_markets()
    fake.fault("/v5/order/create", "timeout", when="after")
    with pytest.raises(ccxt.RequestTimeout):
        ex.create_order(PERP, "market", "buy", 0.01, params={"clientOrderId": "lost-ack-1"})
    assert fake.creates()["lost-ack-1"] == 1 and fake.requests[-1].processed is True
    assert order_by_link(ex, PERP, "lost-ack-1")["status"] == "closed"  # look it up by its id: it landed
    with pytest.raises(ccxt.InvalidOrder, match="110072"):  # a blind resend is refused, not doubled
        ex.create_order(PERP, "market", "buy", 0.01, params={"clientOrderId": "lost-ack-1"})
    assert fake.creates()["lost-ack-1"] == 1


def test_a_500_after_a_cancel_hides_that_the_cancel_happened(fake, ex):
    ex.create_order(PERP, "limit", "buy", 0.01, 39_000, params={"clientOrderId": "c-2"})
    fake.fault("/v5/order/cancel", 500, when="after")
    with pytest.raises(ccxt.ExchangeNotAvailable):
        ex.cancel_order(None, PERP, {"orderLinkId": "c-2"})
    assert order_by_link(ex, PERP, "c-2")["status"] == "canceled"


def test_random_faults_are_seeded_counted_and_each_one_an_error(make_fake):
    def run() -> list[bool]:
        fake = make_fake()
        fake.random_faults(0.4, seed=11, kinds=[502, ("ret", 10006), "drop"])
        ex = client(fake)
        ex.load_markets()  # public: never faulted by default
        failed = []
        for _ in range(25):
            try:
                ex.fetch_open_orders(PERP)
                failed.append(False)
            except ccxt.NetworkError:
                failed.append(True)
        assert sum(failed) == fake.faults_fired
        fake.clear_faults()
        ex.fetch_open_orders(PERP)
        return failed

    first = run()
    assert 0 < sum(first) < 25 and run() == first


def test_partial_fills_end_a_market_order_partially_filled_and_cancelled(fake, ex):
    fake.partial_fills(1.0, seed=3)
    ex.create_order(PERP, "market", "buy", 0.05, params={"clientOrderId": "pf-1"})
    order = order_by_link(ex, PERP, "pf-1")
    assert order["info"]["orderStatus"] == "PartiallyFilledCanceled" and order["status"] == "closed"
    assert 0.001 <= order["filled"] < 0.05 and order["remaining"] == 0
    assert round(order["filled"] * 1000) == order["filled"] * 1000  # whole lots
    assert fake.position("BTCUSDT") == order["filled"]


def test_partial_fills_split_a_resting_limit_over_two_bars(make_fake):
    fake = make_fake(bars={"BTCUSDT": bars([(40_000, 40_100, 39_800, 40_000)] * 4, start=T - H)})
    fake.partial_fills(1.0, seed=5)
    ex = client(fake)
    ex.create_order(PERP, "limit", "buy", 0.05, 39_900, params={"clientOrderId": "pf-2"})
    fake.set_market_time(T + H)
    first = order_by_link(ex, PERP, "pf-2")
    assert first["info"]["orderStatus"] == "PartiallyFilled" and 0 < first["filled"] < 0.05
    fake.set_market_time(T + 2 * H)
    assert order_by_link(ex, PERP, "pf-2")["filled"] == 0.05
    assert [e["orderLinkId"] for e in fake.executions()] == ["pf-2", "pf-2"]


# ---------------------------------------------------------------- executions, funding, hooks

def test_trades_page_by_cursor_and_one_query_covers_at_most_seven_days(fake, ex):
    for k in range(5):
        ex.create_order(PERP, "market", "buy" if k % 2 == 0 else "sell", 0.01, params={"clientOrderId": f"p-{k}"})
    seen, cursor = [], ""
    while True:
        page = ex.privateGetV5ExecutionList({"category": "linear", "limit": 2, **({"cursor": cursor} if cursor else {})})
        seen += [row["execId"] for row in page["result"]["list"]]
        cursor = page["result"]["nextPageCursor"]
        if not cursor:
            break
    assert seen == [e["execId"] for e in reversed(fake.executions())]  # newest first, each once
    trades = ex.fetch_my_trades(PERP, since=T - H)
    assert [t["info"]["orderLinkId"] for t in trades] == [f"p-{k}" for k in range(5)]  # ccxt trades carry no client id
    assert {t["takerOrMaker"] for t in trades} == {"taker"}
    with pytest.raises(ccxt.BadRequest, match="cannot exceed 7 days"):
        ex.fetch_my_trades(PERP, since=T - 8 * MS_PER_DAY, params={"until": T})
    assert ex.fetch_my_trades(PERP, since=T - 8 * MS_PER_DAY) == []  # the 7 days after since hold none
    with pytest.raises(ccxt.BadRequest, match="limit"):
        ex.privateGetV5ExecutionList({"category": "linear", "limit": 101})


def test_funding_is_charged_at_08_00_on_an_open_position(make_fake):
    fake = make_fake(at=parse_instant("2024-03-01T07:00"), bars={"BTCUSDT": RISING}, funding_rate=lambda ts: 0.0001)
    ex = client(fake)
    ex.create_order(PERP, "market", "buy", 0.01, params={"clientOrderId": "fund-1"})
    before = fake.wallet("USDT")
    fake.set_market_time(parse_instant("2024-03-01T09:00"))
    funding = ex.privateGetV5ExecutionList({"category": "linear", "execType": "Funding"})["result"]["list"]
    (row,) = funding
    mark = float(RISING.close[0])  # the close of the 07:00 bar, the one before the settlement
    assert (int(row["execTime"]), row["execType"], float(row["execPrice"]), row["createType"]) == (
        parse_instant("2024-03-01T08:00"), "Funding", mark, "")
    assert float(row["execFee"]) == pytest.approx(0.01 * mark * 0.0001) and row["feeRate"] == "0.0001"
    assert fake.wallet("USDT") == pytest.approx(before - 0.01 * mark * 0.0001, abs=1e-8)
    assert [t["info"]["execType"] for t in ex.fetch_my_trades(PERP, since=T - 4 * H)] == ["Trade"]


def test_wiping_recent_closed_orders_hides_them_from_realtime_not_from_history(fake, ex):
    ex.create_order(PERP, "market", "buy", 0.01, params={"clientOrderId": "w-1"})
    assert order_by_link(ex, PERP, "w-1")["status"] == "closed"
    assert ex.fetch_open_orders(PERP) == []  # a plain open-order list has no closed orders
    fake.wipe_recent_closed()
    assert ex.fetch_open_orders(PERP, params={"orderLinkId": "w-1"}) == []
    history = ex.privateGetV5OrderHistory({"category": "linear", "orderLinkId": "w-1"})["result"]["list"]
    assert [row["orderLinkId"] for row in history] == ["w-1"]


def test_recent_closed_orders_are_capped(make_fake):
    fake = make_fake(bars={"BTCUSDT": RISING}, recent_closed_limit=2)
    ex = client(fake)
    for k in range(3):
        ex.create_order(PERP, "market", "buy", 0.001, params={"clientOrderId": f"cap-{k}"})
    assert ex.fetch_open_orders(PERP, params={"orderLinkId": "cap-0"}) == []
    assert order_by_link(ex, PERP, "cap-2")["status"] == "closed"


def test_an_external_order_changes_the_position_by_hand(fake, ex):
    order_id = fake.external_order("BTCUSDT", "Buy", 0.02)
    assert fake.position("BTCUSDT") == 0.02 and fake.creates() == {}
    assert ex.fetch_positions([PERP])[0]["contracts"] == 0.02
    assert [o["orderId"] for o in fake.orders()] == [order_id]
    resting = fake.external_order("BTCUSDT", "Sell", 0.01, order_type="Limit", price=41_000, order_link_id="web-1")
    assert [o["id"] for o in ex.fetch_open_orders(PERP)] == [resting]


def test_fill_and_cancel_from_the_exchange_side(fake, ex):
    ex.create_order(PERP, "limit", "buy", 0.04, 39_000, params={"clientOrderId": "h-1"})
    exec_id = fake.fill("h-1", qty=0.01)
    order = order_by_link(ex, PERP, "h-1")
    assert (order["status"], order["filled"], order["average"]) == ("open", 0.01, 39_000)
    assert [t["id"] for t in ex.fetch_my_trades(PERP, since=T - H)] == [exec_id]
    fake.cancel_from_exchange("h-1")
    order = order_by_link(ex, PERP, "h-1")
    assert (order["info"]["orderStatus"], order["info"]["cancelType"]) == ("PartiallyFilledCanceled", "CancelByAdmin")
    with pytest.raises(ValueError, match="only a resting order"):
        fake.fill("h-1")
    with pytest.raises(KeyError, match="no order with orderLinkId 'nope'"):
        fake.cancel_from_exchange("nope")


def test_market_time_only_moves_back_before_anything_traded(fake, ex):
    fake.set_market_time(T - H)  # nothing traded yet: a rewind is fine
    ex.create_order(PERP, "market", "buy", 0.01)
    with pytest.raises(ValueError, match="only moves forward"):
        fake.set_market_time(T - 2 * H)


# ---------------------------------------------------------------- HTTP control and the command line

def _call(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_http_control_endpoints_drive_the_same_hooks(fake, ex):
    assert _call(f"{fake.url}/fake/set_market_time", {"ms": T + H}) == (200, {"result": None})
    assert ex.fetch_ticker(PERP)["last"] == open_at(T + H)
    assert _call(f"{fake.url}/fake/fault", {"path": "/v5/order/create", "kind": ["ret", 10006]})[0] == 200
    with pytest.raises(ccxt.RateLimitExceeded):
        ex.create_order(PERP, "market", "buy", 0.01, params={"clientOrderId": "http-1"})
    assert _call(f"{fake.url}/fake/external_order", {"symbol": "BTCUSDT", "side": "Sell", "qty": 0.01})[0] == 200
    status, state = _call(f"{fake.url}/fake/state")
    assert status == 200 and state["market_time"] == T + H and state["faults_fired"] == 1
    assert state["positions"] == {"BTCUSDT": -0.01} and state["creates"] == {} and len(state["executions"]) == 1
    assert _call(f"{fake.url}/fake/fill", {"order_link_id": "nope"}) == (400, {"error": "no order with orderLinkId 'nope' on the fake exchange"})
    assert _call(f"{fake.url}/fake/fault", {"path": "/x", "kind": 200})[0] == 400
    assert _call(f"{fake.url}/fake/reset", {})[0] == 404
    assert fake.paths("/fake/state") == []  # control traffic is not exchange traffic


def test_the_command_line_help_names_every_option():
    out = subprocess.run([sys.executable, "-m", "engine.testing.fake_bybit", "--help"], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    for text in ("--port", "--host", "--bars", "--symbol", "--key", "--secret", "--balance", "--fault-rate", "--seed",
                 "--market-time", "/fake/state", "set_market_time"):
        assert text in out


def test_the_command_line_serves_a_bar_file_until_terminated(tmp_path):
    csv = tmp_path / "btc.csv"
    csv.write_text("timestamp,open,high,low,close,volume\n"
                   "2024-03-01T08:00,100,102,99,101,5\n2024-03-01T09:00,101,103,100,102,6\n"
                   "2024-03-01T10:00,102,104,101,103,7\n")
    proc = subprocess.Popen([sys.executable, "-m", "engine.testing.fake_bybit", "--port", "0", "--bars", str(csv),
                             "--symbol", "BTCUSDT", "--market-time", "2024-03-01T10:00", "--key", "k1"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", first)
        assert match, first + proc.stderr.read()
        url = match.group(1)
        rest = [proc.stdout.readline() for _ in range(5)]
        assert any("export BYBIT_API_KEY=k1" in line for line in rest)
        status, body = _call(f"{url}/v5/market/time")
        assert status == 200 and body["retCode"] == 0 and int(body["result"]["timeSecond"]) > 0
        status, body = _call(f"{url}/v5/market/kline?category=linear&symbol=BTCUSDT&interval=60&limit=5")
        assert [row[0] for row in body["result"]["list"]] == [str(T), str(T - H), str(T - 2 * H)]
        assert body["result"]["list"][0][1:5] == ["102", "102", "102", "102"]  # forming at 10:00
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    assert "stopped" in proc.stdout.read()


def test_the_command_line_refuses_a_non_loopback_host():
    done = subprocess.run([sys.executable, "-m", "engine.testing.fake_bybit", "--host", "0.0.0.0", "--port", "0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert done.returncode == 2 and "loopback" in done.stderr
