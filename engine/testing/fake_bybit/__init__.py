"""A fault-injecting fake Bybit v5 exchange on 127.0.0.1, for the real ccxt client.

    from engine.testing.fake_bybit import FakeBybit

    with FakeBybit() as fake:               # built-in BTCUSDT / ETHUSDT, 10,000 USDT
        fake.set_market_time(ts)            # klines, prices, fills and funding follow market time
        fake.fault("/v5/order/create", "timeout", when="after")   # the order lands, the ack is lost
        ...                                 # ccxt pointed at fake.url (BYBIT.md section 1)
        assert fake.creates()["my-id-1"] == 1

Run it by hand with ``python -m engine.testing.fake_bybit --help``. The parts: ``server`` (HTTP,
routes, signing, clocks, hooks), ``matching`` (orders and fills), ``account`` (balances, positions,
funding), ``market`` (bars, klines, tickers), ``instruments``, ``queries`` (list endpoints), ``faults``,
``auth`` and ``wire`` (Bybit's number and envelope conventions).
"""

from engine.testing.fake_bybit.faults import DEFAULT_KINDS, DEFAULT_PATHS, Fault
from engine.testing.fake_bybit.market import HOUR, INTERVALS
from engine.testing.fake_bybit.server import FakeBybit, Request
from engine.testing.fake_bybit.wire import BybitError

__all__ = ["DEFAULT_KINDS", "DEFAULT_PATHS", "HOUR", "INTERVALS", "BybitError", "FakeBybit", "Fault", "Request"]
