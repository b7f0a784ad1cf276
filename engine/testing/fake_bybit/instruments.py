"""The instruments the fake lists on ``/v5/market/instruments-info`` and trades.

Three sources, in this order: the recorded ccxt markets of ``bybit_dir`` (``ccxt_static_markets_bybit.json``,
every spot market and linear perpetual in it), built-in BTCUSDT and ETHUSDT definitions when there is
no recording (so ``python -m engine.testing.fake_bybit`` works on a fresh clone), and a definition
derived from the prices of any symbol the fake is given bars for. Each is kept as the item Bybit
sends, and the trading rules (tick, lot, minimums) are read back from that item, so what ccxt loads
and what the matching engine enforces can never differ.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.testing.fake_bybit.wire import BybitError, num

SPOT, LINEAR = "spot", "linear"
CATEGORIES = (SPOT, LINEAR)
QUOTES = ("USDT", "USDC", "USD", "BTC", "EUR")  # suffixes that split a symbol id into base and quote
MARKETS_FILE = "ccxt_static_markets_bybit.json"
LAUNCH_MS = "1584230400000"


@dataclass(frozen=True, slots=True)
class Instrument:
    """One tradable instrument: its trading rules and the instruments-info item they come from."""

    category: str
    symbol: str  # exchange id, "BTCUSDT"
    base: str
    quote: str
    tick: float
    lot: float  # qtyStep (linear) / basePrecision (spot)
    min_qty: float
    min_notional: float  # minNotionalValue (linear) / minOrderAmt (spot), in the quote coin
    item: dict[str, Any]

    @classmethod
    def from_item(cls, category: str, item: dict[str, Any]) -> Instrument:
        lots, prices = item["lotSizeFilter"], item["priceFilter"]
        if category == SPOT:
            lot, notional = float(lots["basePrecision"]), float(lots.get("minOrderAmt") or 0)
        else:
            lot, notional = float(lots["qtyStep"]), float(lots.get("minNotionalValue") or 0)
        return cls(category=category, symbol=item["symbol"], base=item["baseCoin"], quote=item["quoteCoin"],
                   tick=float(prices["tickSize"]), lot=lot, min_qty=float(lots.get("minOrderQty") or lot),
                   min_notional=notional, item=item)


def linear_item(symbol: str, base: str, quote: str, *, tick: float, lot: float, min_notional: float = 5.0,
                max_qty: float = 1190.0) -> dict[str, Any]:
    """A linear perpetual as instruments-info lists it (fields ccxt reads: BYBIT.md section 4)."""
    return {
        "symbol": symbol, "contractType": "LinearPerpetual", "status": "Trading", "baseCoin": base,
        "quoteCoin": quote, "settleCoin": quote, "launchTime": LAUNCH_MS, "deliveryTime": "0",
        "deliveryFeeRate": "", "priceScale": str(max(0, -round(math.log10(tick)))),
        "leverageFilter": {"minLeverage": "1", "maxLeverage": "100.00", "leverageStep": "0.01"},
        "priceFilter": {"minPrice": num(tick), "maxPrice": num(tick * 19_999_998), "tickSize": num(tick)},
        "lotSizeFilter": {"maxOrderQty": num(max_qty), "minOrderQty": num(lot), "qtyStep": num(lot),
                          "postOnlyMaxOrderQty": num(max_qty), "maxMktOrderQty": num(max_qty / 10),
                          "minNotionalValue": num(min_notional)},
        "unifiedMarginTrade": True, "fundingInterval": "480", "copyTrading": "both",
        "upperFundingRate": "0.005", "lowerFundingRate": "-0.005", "isPreListing": False, "preListingInfo": None,
        "displayName": "",
    }


def spot_item(symbol: str, base: str, quote: str, *, tick: float, lot: float, min_notional: float = 5.0,
              max_qty: float = 83.0) -> dict[str, Any]:
    """A spot pair as instruments-info lists it (amount precision is basePrecision, BYBIT.md section 4)."""
    return {
        "symbol": symbol, "baseCoin": base, "quoteCoin": quote, "innovation": "0", "status": "Trading",
        "marginTrading": "utaOnly", "stTag": "0",
        "lotSizeFilter": {"basePrecision": num(lot), "quotePrecision": "0.0000001", "minOrderQty": num(lot),
                          "maxOrderQty": num(max_qty), "minOrderAmt": num(min_notional), "maxOrderAmt": "8000000"},
        "priceFilter": {"tickSize": num(tick)},
    }


def built_in_items() -> dict[str, list[dict[str, Any]]]:
    """BTCUSDT and ETHUSDT, spot and linear, with the values of BYBIT.md section 7 (docs examples)."""
    return {
        SPOT: [spot_item("BTCUSDT", "BTC", "USDT", tick=0.01, lot=0.000001),
               spot_item("ETHUSDT", "ETH", "USDT", tick=0.01, lot=0.00001, max_qty=1400.0)],
        LINEAR: [linear_item("BTCUSDT", "BTC", "USDT", tick=0.1, lot=0.001),
                 linear_item("ETHUSDT", "ETH", "USDT", tick=0.01, lot=0.01, max_qty=7240.0)],
    }


def recorded_items(bybit_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Spot and linear-perpetual items of the recorded ccxt markets (each market keeps Bybit's item
    under ``info``); empty when the folder has no recording."""
    path = bybit_dir / MARKETS_FILE
    if not path.is_file():
        return {}
    items: dict[str, list[dict[str, Any]]] = {SPOT: [], LINEAR: []}
    for market in json.loads(path.read_text()).values():
        if market["spot"]:
            items[SPOT].append(market["info"])
        elif market["swap"] and market["linear"]:
            items[LINEAR].append(market["info"])
    return items


def split_symbol(symbol: str) -> tuple[str, str]:
    """``"SOLUSDT"`` -> ``("SOL", "USDT")``."""
    for quote in QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    raise ValueError(f"cannot tell the quote coin of symbol {symbol!r}: give an exchange id ending in one of "
                     f"{', '.join(QUOTES)} (e.g. BTCUSDT)")


def derived_items(symbol: str, price: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Spot and linear items for a symbol known only from its bars: a tick of about a hundred-thousandth
    of the price and a lot worth between 1 and 10 quote units (BTC at 40,000: tick 0.1, lot 0.0001)."""
    if not price > 0:
        raise ValueError(f"bars of {symbol} start at price {price}: cannot derive a tick and lot from it")
    base, quote = split_symbol(symbol)
    tick = 10.0 ** (math.floor(math.log10(price)) - 5)
    lot = 10.0 ** math.floor(math.log10(10.0 / price))
    return (spot_item(symbol, base, quote, tick=tick, lot=lot, max_qty=lot * 1e6),
            linear_item(symbol, base, quote, tick=tick, lot=lot, max_qty=lot * 1e6))


class Instruments:
    """The instrument list by category, and lookups that fail the way Bybit does."""

    def __init__(self, items: dict[str, list[dict[str, Any]]]) -> None:
        self._items = {category: list(items.get(category, [])) for category in CATEGORIES}
        self._by_key = {(category, item["symbol"]): Instrument.from_item(category, item)
                        for category, listed in self._items.items() for item in listed}

    @classmethod
    def build(cls, bybit_dir: Path | None, first_prices: dict[str, float]) -> Instruments:
        """The recorded markets (else the built-ins), plus a derived definition for every symbol in
        ``first_prices`` (the first open of the bars the fake was given) that they lack."""
        items = (recorded_items(bybit_dir) if bybit_dir is not None else {}) or built_in_items()
        known = {(category, item["symbol"]) for category, listed in items.items() for item in listed}
        for symbol, price in first_prices.items():
            for category, item in zip(CATEGORIES, derived_items(symbol, price)):
                if (category, symbol) not in known:
                    items.setdefault(category, []).append(item)
        return cls(items)

    def items(self, category: str) -> list[dict[str, Any]]:
        return self._items.get(category, [])

    def listed(self, category: str) -> Iterable[Instrument]:
        return (self._by_key[(category, item["symbol"])] for item in self.items(category))

    def get(self, category: str, symbol: str) -> Instrument:
        if category not in CATEGORIES:
            raise BybitError(10001, f"category {category!r} is not traded on this fake; use spot or linear")
        instrument = self._by_key.get((category, symbol))
        if instrument is None:
            raise BybitError(10001, "Not supported symbols")
        return instrument

    def find(self, category: str, symbol: str) -> Instrument | None:
        return self._by_key.get((category, symbol))
