"""``python -m engine.testing.fake_bybit``: run the fake Bybit v5 exchange until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

DESCRIPTION = """\
A fake Bybit v5 exchange on 127.0.0.1 for trying the engine's Bybit code without an account or a
network: public market data, signed private endpoints (orders, executions, positions, wallet) for one
unified account, a small matching engine, and faults on demand. Point ccxt at the printed URL
(every base URL: api, test and demotrading) with the printed keys.

Prices come from --bars (a bar CSV, read like `engine backtest --data`) or a built-in generator.
Market time follows the real clock unless --market-time pins it; move it, inject faults or fill
orders over HTTP while it runs (the control endpoints have no authentication: loopback only):

  curl -X POST URL/fake/set_market_time -d '{"ms": 1709280000000}'
  curl -X POST URL/fake/fault -d '{"path": "/v5/order/create", "kind": "timeout", "when": "after"}'
  curl -X POST URL/fake/fill -d '{"order_link_id": "my-order-1"}'
  curl URL/fake/state

Hooks: set_market_time, skew_clock, fault, random_faults, clear_faults, partial_fills, fill,
cancel_from_exchange, external_order, wipe_recent_closed (the keyword arguments of FakeBybit's
methods of the same names, as a JSON object).
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine.testing.fake_bybit", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8123, help="port (default 8123; 0 picks a free one)")
    parser.add_argument("--bars", action="append", default=[], metavar="FILE.csv",
                        help="bar file to serve and trade on instead of the generator (repeatable, one per --symbol)")
    parser.add_argument("--symbol", action="append", default=[], metavar="ID",
                        help="exchange id of the symbol each --bars file is (default BTCUSDT for a single file)")
    parser.add_argument("--bybit-dir", type=Path, metavar="DIR",
                        help="recorded Bybit payloads (ccxt_static_markets_bybit.json ...) for the instrument list; "
                             "default: built-in BTCUSDT and ETHUSDT")
    parser.add_argument("--key", default="fake-key", help="API key the fake accepts (default fake-key)")
    parser.add_argument("--secret", default="fake-secret", help="API secret the fake signs with (default fake-secret)")
    parser.add_argument("--balance", type=float, default=10_000.0, help="starting USDT balance (default 10000)")
    parser.add_argument("--market-time", metavar="WHEN",
                        help="pin market time at start (ISO date/time, or epoch ms); default: follow the real clock")
    parser.add_argument("--fault-rate", type=float, default=0.0, metavar="R",
                        help="probability of a random fault on each private order/execution/position/wallet request")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random faults (default 0)")
    parser.add_argument("--timeout-delay", type=float, default=12.0, metavar="S",
                        help="how long a 'timeout' fault holds the answer (default 12 s: past ccxt's default 10 s)")
    return parser


def _load_bars(files: list[str], symbols: list[str]) -> dict:
    from engine.feeds.bar_files import load_bars

    if not symbols and len(files) == 1:
        symbols = ["BTCUSDT"]
    if len(symbols) != len(files):
        raise ValueError(f"give one --symbol per --bars file ({len(files)} files, {len(symbols)} symbols)")
    return {symbol: load_bars(path, symbol=symbol).series for path, symbol in zip(files, symbols)}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from engine.errors import EngineError
    from engine.testing.fake_bybit.server import FakeBybit
    from engine.timeutil import parse_instant

    try:
        bars = _load_bars(args.bars, args.symbol)
        fake = FakeBybit(args.bybit_dir, bars=bars, api_key=args.key, api_secret=args.secret,
                         balance={"USDT": args.balance}, host=args.host, port=args.port)
        if args.market_time:
            text = args.market_time
            fake.set_market_time(int(text) if text.isdigit() else parse_instant(text))
        fake.delay_s = args.timeout_delay
        if args.fault_rate:
            fake.random_faults(args.fault_rate, args.seed)
    except (OSError, ValueError, EngineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    fake.start()
    print(f"fake Bybit v5 listening on {fake.url} (Ctrl-C stops it)\n"
          f"  symbols: {', '.join(sorted(bars) or ['BTCUSDT', 'ETHUSDT (generated prices)'])}\n"
          f"  keys (fake, for this server only):\n"
          f"    export BYBIT_API_KEY={args.key}\n"
          f"    export BYBIT_API_SECRET={args.secret}\n"
          f"  engine: --set data.api_url=\"{fake.url}\"\n"
          f"  state:  curl {fake.url}/fake/state", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    fake.stop()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
