"""``python -m engine paper start|status|stop|halt``: the paper-trading daemon's command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

log = logging.getLogger("engine.daemon")

EPILOG = """examples:
  python -m engine paper start --replay ../shared/data/ohlcv/crypto/binance_BTCUSDT_1h.csv --speed max --json
  python -m engine paper start --source bybit --symbol BTC/USDT:USDT --timeframe 1h --detach
  python -m engine paper status
  python -m engine paper halt --flatten
  python -m engine paper stop

Running the same `paper start` again after a crash or a stop resumes the same run (its portfolio
and open orders from the store, its strategy state rebuilt by a replay that sends nothing); --new
starts a fresh one."""


LIVE_EPILOG = """examples (against the fake Bybit, offline: python -m engine.testing.fake_bybit --port 8123):
  export BYBIT_API_KEY=fake-key BYBIT_API_SECRET=fake-secret
  python -m engine live start --api-url http://127.0.0.1:8123 --symbol BTC/USDT:USDT --timeframe 1h
  python -m engine live status
  python -m engine live halt --flatten
  python -m engine live stop

Bybit demo trading (mainnet prices, simulated funds) is the default venue; --testnet for the testnet;
--mainnet trades real money and asks you to type the account id. Keys come from the environment
only (BYBIT_API_KEY, BYBIT_API_SECRET). The same `live start` again resumes the run: the exchange
is reconciled with the store before any order is sent."""

_ABOUT = {
    "paper": ("the paper-trading daemon: live (or replayed) bars, simulated fills, recorded in the store",
              "The paper-trading daemon: a strategy on live (or replayed) closed bars, with the backtest's fill and "
              "cost rules, every decision recorded in the store before it is acted on.", EPILOG),
    "live": ("live trading on Bybit (demo by default): the paper daemon with the Bybit broker",
             "Live trading on Bybit through ccxt: the paper daemon's strategy, bars and store, with orders sent to "
             "Bybit (demo trading unless --testnet or --mainnet), every intent committed before it is sent and the "
             "exchange reconciled with the store before the first order after every start.", LIVE_EPILOG),
}


def add_parsers(sub: Any, add_run_options: Any) -> None:
    for mode in ("paper", "live"):
        _add_daemon_parser(sub, mode, add_run_options)


def _add_daemon_parser(sub: Any, mode: str, add_run_options: Any) -> None:
    short, description, epilog = _ABOUT[mode]
    parser = sub.add_parser(mode, help=short, description=description, epilog=epilog,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    start = verbs.add_parser("start", help="start (or resume) the daemon", epilog=epilog,
                             formatter_class=argparse.RawDescriptionHelpFormatter,
                             description="Trade a strategy on closed bars as they arrive"
                             + (", with the backtest's fill and cost rules" if mode == "paper" else " on Bybit")
                             + ". Live bars come from --source bybit"
                             + (" or yfinance" if mode == "paper" else "") + " (--symbol, --timeframe); --replay "
                             "serves a recorded file through the same path on a simulated clock"
                             + (" (live: only against a fake exchange on this machine)." if mode == "live" else "."))
    add_run_options(start)
    start.add_argument("--replay", metavar="FILE", help="serve this bar CSV as if it arrived live (offline rehearsal)")
    start.add_argument("--speed", default="max", help="replay speed: 'max' or bars per second (default max)")
    start.add_argument("--warmup", type=int, help="bars replayed without orders before the first live bar "
                       "(default: paper.warmup_bars live, 0 for a replay)")
    start.add_argument("--new", action="store_true", help="start a fresh run instead of resuming this command's run")
    start.add_argument("--detach", action="store_true", help=f"run in the background, logging to logs/{mode}-*.log")
    start.add_argument("--json", action="store_true", help="print the final summary as one JSON object")
    start.add_argument("--serve", nargs="?", type=int, const=8787, metavar="PORT",  # serve's DEFAULT_PORT
                       help="also serve the dashboard (as `python -m engine serve`) on 127.0.0.1:PORT (default "
                       "8787, 0: a free one) while the daemon runs; its address, with the token, is printed on "
                       "this terminal. Not with --detach")
    if mode == "live":
        venue = start.add_mutually_exclusive_group()
        venue.add_argument("--testnet", action="store_true", help="trade on Bybit's testnet (its own keys and prices)")
        venue.add_argument("--mainnet", action="store_true", help="trade REAL money on Bybit mainnet (asks you to type "
                           "the account id; needs risk limits set)")
        start.add_argument("--api-url", help="another Bybit base URL, e.g. a fake Bybit on http://127.0.0.1:8123 "
                           "(live.api_url)")
        start.add_argument("--confirm", metavar="ACCOUNT_ID", help="mainnet without a terminal: the account id you "
                           "would have typed")
    for name, text in (("status", "the daemon's state, positions, orders and equity (exit 1 when its heartbeat "
                                  "is stale)"),
                       ("stop", "stop the daemon cleanly (it finishes its current step)"),
                       ("halt", "stop sending orders (optionally cancel and flatten); --clear resumes trading")):
        verb = verbs.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        verb.add_argument("run_id", nargs="?", help=f"the run (default: the newest {mode} run)")
        verb.add_argument("--config", type=Path, help="TOML config file (default: ./config.toml if present)")
        verb.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                          help="override a config value, e.g. --set store.url=sqlite:///other.db")
        if name == "status":
            verb.add_argument("--json", action="store_true", help="print one JSON object")
        if name == "stop":
            verb.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for it to stop (default 60)")
        if name == "halt":
            verb.add_argument("--flatten", action="store_true", help="also cancel open orders and close positions")
            verb.add_argument("--clear", action="store_true", help="lift the halt: trade again")
            verb.add_argument("--reason", default=f"halted by hand ({mode} halt)", help="recorded with the halt")


def main(args: argparse.Namespace, config_loader: Any, flags: list[str], format_summary: Any = str) -> int:
    """Dispatch the ``paper`` verbs; ``config_loader(args, flags)`` returns the checked ``Config`` and
    ``format_summary`` turns a finished replay's summary into the table ``backtest`` prints."""
    if args.verb == "start":
        return _start(args, config_loader(args, _start_flags(args, flags)), format_summary)
    config = config_loader(args)
    from engine.store.db import open_store

    store = open_store(config.store.url, create=False, busy_timeout=config.store.busy_timeout)
    try:
        daemon = _find(store, args.run_id, args.command)
        if args.verb == "status":
            return _status(store, daemon, config, args.json)
        if args.verb == "stop":
            return _stop(store, daemon, args.timeout)
        return _halt(store, daemon, args)
    finally:
        store.close()


def _start_flags(args: argparse.Namespace, flags: list[str]) -> list[str]:
    if args.command == "live":
        flags = [*flags, *_live_flags(args)]
    if args.replay:
        if args.data or (args.source and args.source not in ("csv", "auto")):
            raise ConfigError("--replay serves a bar file as if live: drop --data / --source")
        return [*flags, f"data.bars={json.dumps(args.replay)}", 'data.source="csv"']
    return flags


def _live_flags(args: argparse.Namespace) -> list[str]:
    out = []
    if args.testnet:
        out.append('live.venue="testnet"')
    if args.mainnet:
        out.append('live.venue="mainnet"')
    if args.api_url:
        out.append(f"live.api_url={json.dumps(args.api_url)}")
    return out


def _find(store: Any, run_id: str | None, mode: str = "paper") -> Any:
    from engine.store.daemons import find_daemon
    from engine.store.db import RunNotFound
    from engine.store.queries import find_run

    if run_id:
        daemon = find_daemon(store, run_id=find_run(store, run_id).run_id)
    else:
        daemon = find_daemon(store, mode=mode)
    if daemon is None:
        raise RunNotFound(f"no {mode} run {'named ' + repr(run_id) + ' ' if run_id else ''}in {store.name}; start one "
                          f"with `python -m engine {mode} start`")
    return daemon


# -- start -----------------------------------------------------------------------------------------
def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _start(args: argparse.Namespace, config: Any, format_summary: Any) -> int:
    if args.detach:
        return _detach(args.command)
    mode = args.command
    if not config.store.enabled:
        raise ConfigError(f"the {mode} daemon records everything in the store: store.enabled = false cannot run it")
    from engine.daemon.runner import Daemon
    from engine.daemon.schedule import StopSignals, run_replay, run_scheduled
    from engine.daemon.specs import daemon_spec

    speed = _speed(args.speed)
    if mode == "live":
        from engine.daemon.live_commands import live_daemon

        daemon, time_source = live_daemon(args, config, say=_say)
        spec = daemon.spec
    else:
        spec, time_source = daemon_spec(args, config, say=_say)
        daemon = Daemon(spec, new=args.new, say=_say)
    with StopSignals() as signals:
        daemon.open()
        try:
            if spec.replay:
                news_end = max((n.ts_event for n in spec.plan.news), default=None)
                summary = run_replay(daemon, time_source, speed=speed, stop=signals.event, final_news_ms=news_end)
            else:
                summary = None
                run_scheduled(daemon, signals.event, say=_say)
        except BaseException as exc:
            daemon.close("failed", error=exc)
            raise
    if summary is None:
        daemon.close("stopped")
        _say(f"run {daemon.run_id} stopped{' (' + signals.received + ')' if signals.received else ''}; "
             f"the same `{mode} start` resumes it")
        return 0
    if args.json:
        print(json.dumps(summary, allow_nan=False, default=str))
    else:
        print(format_summary(summary))
    return 0


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"--speed must be 'max' or a positive number of bars per second, got {text!r}")
    return value


def _detach(mode: str = "paper") -> int:
    argv = [a for a in sys.argv[1:] if a != "--detach"]
    logs = Path("logs")
    logs.mkdir(exist_ok=True)
    path = logs / f"{mode}-{time.strftime('%Y%m%dT%H%M%S')}.log"
    with path.open("ab") as out:
        child = subprocess.Popen([sys.executable, "-m", "engine", *argv], stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    time.sleep(2.0)
    if child.poll() is not None:
        print(f"error: the daemon exited at once (code {child.returncode}); its log: {path}", file=sys.stderr)
        print(path.read_text(errors="replace")[-2000:], file=sys.stderr)
        return 1
    print(f"{mode} daemon running in the background: pid {child.pid}, log {path}\n"
          f"`python -m engine {mode} status` shows it, `{mode} stop` stops it")
    return 0


# -- status, stop, halt ----------------------------------------------------------------------------
def stale_after_ms(config: Any, timeframe_ms: int | None) -> int:
    paper = config.paper
    if paper.stale_after_s:
        return int(paper.stale_after_s * 1000)
    return int(max(2 * (timeframe_ms or 0), 3 * paper.poll_s * 1000))


def status_of(store: Any, daemon: Any, config: Any) -> dict[str, Any]:
    from sqlalchemy import select

    from engine.domain import OrderStatus
    from engine.store.journal import now_ms
    from engine.store.models import EquityPoint, OrderRow
    from engine.store.queries import find_run
    from engine.store.restore import restore_portfolio
    from engine.timeutil import MS_PER_DAY, iso

    info = find_run(store, daemon.run_id)
    now = now_ms()
    portfolio = restore_portfolio(store, info)
    with store.read() as conn:
        open_orders = [dict(r) for r in conn.execute(
            select(OrderRow.client_order_id, OrderRow.symbol, OrderRow.side, OrderRow.type, OrderRow.quantity,
                   OrderRow.filled_quantity, OrderRow.status, OrderRow.limit_price, OrderRow.stop_price)
            .where(OrderRow.run_pk == info.pk, OrderRow.status.not_in([s.value for s in OrderStatus if s.is_terminal]))
        ).mappings()]
        last = conn.execute(select(EquityPoint.ts_event, EquityPoint.equity).where(EquityPoint.run_pk == info.pk)
                            .order_by(EquityPoint.ts_event.desc()).limit(1)).first()
        day_open = None
        if last is not None:
            day = last.ts_event // MS_PER_DAY * MS_PER_DAY
            before = conn.execute(select(EquityPoint.equity).where(EquityPoint.run_pk == info.pk,
                                                                   EquityPoint.ts_event <= day)
                                  .order_by(EquityPoint.ts_event.desc()).limit(1)).scalar()
            day_open = before if before is not None else info.starting_cash
    alive = daemon.holder_alive(now, int(config.paper.lease_stale_s * 1000))
    age = None if daemon.heartbeat_ms is None else (now - daemon.heartbeat_ms) / 1000
    stale = daemon.state not in ("stopped", "finished", "failed") and (
        not alive or age is None or age * 1000 > stale_after_ms(config, info.timeframe_ms))
    equity = last.equity if last is not None else info.starting_cash
    return {
        "run_id": info.run_id, "state": daemon.state if alive or daemon.state in ("stopped", "finished", "failed")
        else "dead", "note": daemon.note, "pid": daemon.lease_pid, "host": daemon.lease_host,
        "strategy": info.strategy, "symbols": info.symbols, "data": info.data_label,
        "last_bar_close": iso(daemon.last_bar_ms) if daemon.last_bar_ms else None,
        "heartbeat_age_s": None if age is None else round(age, 1), "stale": stale,
        "halted": daemon.halted, "halt_reason": daemon.halt_reason, "missing_bars": daemon.missing_bars,
        "bars": info.bars, "equity": equity, "starting_cash": info.starting_cash,
        "today_pnl": None if day_open is None else equity - day_open, "cash": portfolio.cash,
        "positions": {s: {"quantity": p.quantity, "average_price": p.average_price, "realized_pnl": p.realized_pnl}
                      for s, p in portfolio.positions.items() if p.quantity != 0.0},
        "open_orders": open_orders, "latency": daemon.latency,
    } | (_live_status(store, info, daemon) if info.mode == "live" else {})


def _live_status(store: Any, info: Any, daemon: Any) -> dict[str, Any]:
    """The venue, the last reconciliation and the differences it recorded (newest first)."""
    from sqlalchemy import func, select

    from engine.store.models import ReconciliationRow
    from engine.timeutil import iso

    live = daemon.live or {}
    with store.read() as conn:
        rows = [dict(r) for r in conn.execute(
            select(ReconciliationRow.ts_ms, ReconciliationRow.kind, ReconciliationRow.action, ReconciliationRow.symbol,
                   ReconciliationRow.client_order_id, ReconciliationRow.detail)
            .where(ReconciliationRow.run_pk == info.pk).order_by(ReconciliationRow.id.desc()).limit(10)).mappings()]
        count = conn.scalar(select(func.count()).select_from(ReconciliationRow).where(ReconciliationRow.run_pk == info.pk))
    last = live.get("last_reconciled_ms")
    return {"venue": live.get("venue"), "last_reconciliation": iso(last) if last else None,
            "reconciliation_records": count, "reconciliations": rows}


def _status(store: Any, daemon: Any, config: Any, as_json: bool) -> int:
    s = status_of(store, daemon, config)
    if as_json:
        print(json.dumps(s, default=str))
    else:
        lat = s["latency"] or {}
        rows = [("run", s["run_id"]), ("state", s["state"] + (f" (halted: {s['halt_reason']})" if s["halted"] else "")),
                ("doing", s["note"]), ("process", f"pid {s['pid']} on {s['host']}" if s["pid"] else "-"),
                ("strategy", f"{s['strategy']} on {', '.join(s['symbols'])} ({s['data']})"),
                ("last bar", f"closed {s['last_bar_close'] or '-'} ({s['bars']:,} bars decided, "
                             f"{s['missing_bars']} missing)"),
                ("heartbeat", "-" if s["heartbeat_age_s"] is None else f"{s['heartbeat_age_s']:.0f} s ago"
                 + (" (STALE)" if s["stale"] else "")),
                ("equity", f"{s['equity']:,.2f} (cash {s['cash']:,.2f}; start {s['starting_cash']:,.2f})"),
                ("today's P&L", "-" if s["today_pnl"] is None else f"{s['today_pnl']:+,.2f}"),
                ("positions", ", ".join(f"{k} {v['quantity']:g} @ {v['average_price']:,.2f}"
                                        for k, v in s["positions"].items()) or "none"),
                ("open orders", ", ".join(f"{o['side']} {o['quantity']:g} {o['symbol']} {o['type']} ({o['status']})"
                                          for o in s["open_orders"]) or "none"),
                ("decision time", f"p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms over {lat['bars']} bars"
                 if lat else "-")]
        if "venue" in s:
            rows.insert(1, ("venue", f"Bybit {s['venue']}"))
            rows.append(("reconciled", f"{s['last_reconciliation'] or 'never'} ({s['reconciliation_records']} "
                                       "differences recorded)"))
            rows.extend((f"  {r['kind']}", f"{r['action']}: {r['detail'][:160]}") for r in s["reconciliations"][:5])
        width = max(len(k) for k, _ in rows)
        print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    return 1 if s["stale"] else 0


def _stop(store: Any, daemon: Any, timeout: float) -> int:
    import socket

    from engine.store.daemons import find_daemon, request_stop

    if daemon.state in ("stopped", "finished", "failed") or daemon.lease_pid is None:
        print(f"run {daemon.run_id} is not running ({daemon.state})")
        return 0
    request_stop(store, daemon.run_pk)
    if daemon.lease_host == socket.gethostname():
        try:
            os.kill(daemon.lease_pid, signal.SIGTERM)
        except ProcessLookupError:
            print(f"run {daemon.run_id}: its process {daemon.lease_pid} is gone (it died); "
                  "the next `start` resumes it")
            return 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = find_daemon(store, run_id=daemon.run_id)
        if now is not None and now.state in ("stopped", "finished", "failed"):
            print(f"run {daemon.run_id} {now.state}")
            return 0
        time.sleep(0.2)
    print(f"error: run {daemon.run_id} did not stop within {timeout:g} s (pid {daemon.lease_pid})", file=sys.stderr)
    return 1


def _halt(store: Any, daemon: Any, args: argparse.Namespace) -> int:
    from engine.store.daemons import clear_halt, request_halt

    if args.clear:
        clear_halt(store, daemon.run_pk)
        print(f"run {daemon.run_id}: halt lifted; it trades again from its next step")
        return 0
    request_halt(store, daemon.run_pk, args.reason, flatten=args.flatten)
    what = "cancels its open orders, closes its positions and sends nothing more" if args.flatten else \
        "sends no new order"
    print(f"run {daemon.run_id}: halted; from its next step it {what} (`halt --clear` lifts it)")
    return 0
