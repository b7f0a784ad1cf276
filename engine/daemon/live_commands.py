"""``python -m engine live start``: building the live daemon, and the gates that keep real money from
trading by accident.

- Keys come from the environment (``BYBIT_API_KEY``, ``BYBIT_API_SECRET``) and nowhere else.
- Bybit demo trading is the default venue; ``--testnet`` picks the testnet; mainnet needs
  ``--mainnet`` on the command line (a config file alone cannot choose it), loss and size limits in
  ``[risk]``, and the account's id typed at the terminal (or given with ``--confirm`` where there is
  no terminal).
- The instrument's tick, lot step and minimums are the exchange's own (read from its markets), so an
  order the engine sizes is one the exchange accepts.
- ``--replay FILE`` rehearses against a fake exchange on this machine only: its market clock
  follows the replay (``engine.daemon.live.post_market_time``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

from engine.errors import ConfigError, TemporaryError


def live_daemon(args: argparse.Namespace, config: Any, *, say: Callable[[str], None],
                environ: dict[str, str] | None = None) -> tuple[Any, Any]:
    """The ``LiveDaemon`` a ``live start`` runs, and the replay's time source (None when live)."""
    from engine.brokers.bybit_client import (
        BybitAccount,
        Credentials,
        make_trading_exchange,
        redact,
        with_retries,
    )
    from engine.daemon.live import LiveDaemon, post_market_time
    from engine.daemon.specs import daemon_spec, live_bars_spec

    live = config.live
    if live.venue == "mainnet" and not getattr(args, "mainnet", False):
        raise ConfigError("live.venue = \"mainnet\" trades real money: it also needs --mainnet on the command line")
    credentials = Credentials.from_env(environ)
    if live.venue == "mainnet":
        _require_limits(config)
    api_url = live.api_url
    loopback = api_url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]"))
    exchange = make_trading_exchange(credentials, live.venue, api_url=api_url, timeout_s=live.timeout_s,
                                     recv_window_ms=live.recv_window_ms, rate_limit=live.rate_limit and not loopback)
    account = BybitAccount(exchange, credentials, backoff_s=min(live.backoff_s, 1.0))
    if args.replay:
        if not loopback:
            raise ConfigError("live start --replay rehearses against a fake exchange: give --api-url "
                              "http://127.0.0.1:PORT (python -m engine.testing.fake_bybit)")
        spec, time_source = daemon_spec(args, config, say=say, mode="live")
        market_time: Callable[[int], None] | None = post_market_time(api_url)
    else:
        if api_url:  # the fake serves the bars too
            config = dataclasses.replace(config, data=dataclasses.replace(config.data, source="bybit", api_url=api_url))
        elif config.data.source != "bybit":
            config = dataclasses.replace(config, data=dataclasses.replace(config.data, source="bybit"))
        spec, time_source, market_time = live_bars_spec(args, config, say=say, mode="live"), None, None
    try:
        with_retries(lambda: [account.market(s) for s in spec.plan.instruments], what="loading Bybit's markets",
                     say=say, max_s=config.paper.retry_max_s)
        spec.plan = _exchange_instruments(spec.plan, account)
        if live.venue == "mainnet":
            _confirm(args, account, config, spec)
    except (TemporaryError, ConfigError):
        raise
    except Exception as exc:  # an exchange answer: say what it was, never the keys
        raise ConfigError(f"Bybit ({live.venue}) could not be read: {redact(str(exc), credentials)[:400]}") from None
    spec.data_label = f"bybit-{live.venue}" + (f"@{api_url}" if api_url else "") + (
        f"+{spec.data_label}" if args.replay else "")
    daemon = LiveDaemon(spec, account=account, venue=live.venue, new=args.new, say=say, market_time=market_time)
    return daemon, time_source


def _exchange_instruments(plan: Any, account: Any) -> Any:
    """The plan with each instrument's tick, lot step and minimums read from the exchange's market."""
    from engine.domain import ContractType

    instruments = {}
    for symbol, inst in plan.instruments.items():
        market = account.market(symbol)
        info = account.exchange.markets[symbol]
        contract = ContractType.SPOT if market.category == "spot" else ContractType.LINEAR_PERP
        precision, limits = info.get("precision") or {}, info.get("limits") or {}
        instruments[symbol] = dataclasses.replace(
            inst, contract=contract, tick_size=float(precision.get("price") or inst.tick_size),
            lot_step=float(precision.get("amount") or inst.lot_step),
            min_quantity=float((limits.get("amount") or {}).get("min") or 0.0),
            min_notional=float((limits.get("cost") or {}).get("min") or inst.min_notional),
            max_leverage=inst.max_leverage if contract is ContractType.LINEAR_PERP else 1.0)
    return dataclasses.replace(plan, instruments=instruments)


def _require_limits(config: Any) -> None:
    risk = getattr(config, "risk", None)
    missing = []
    if risk is None or not (getattr(risk, "max_daily_loss", 0) or getattr(risk, "max_daily_loss_abs", 0)):
        missing.append("risk.max_daily_loss (or risk.max_daily_loss_abs)")
    if risk is None or not getattr(risk, "max_order_notional", 0):
        missing.append("risk.max_order_notional")
    if risk is None or not getattr(risk, "max_position_notional", 0):
        missing.append("risk.max_position_notional")
    if missing:
        raise ConfigError("mainnet refuses to start without loss and size limits: set " + ", ".join(missing)
                          + " in config.toml's [risk] section")


def _confirm(args: argparse.Namespace, account: Any, config: Any, spec: Any) -> None:
    """The account id, typed (or given with --confirm), after the account and the limits are shown."""
    answer = account.exchange.privateGetV5UserQueryApi() or {}
    result = answer.get("result") or {}
    uid = str(result.get("userID") or result.get("uid") or "")
    if not uid:
        raise ConfigError("mainnet: Bybit did not say which account these keys belong to; refusing to trade")
    risk = config.risk
    lines = [f"MAINNET: real money. Account {uid} (key permissions: {result.get('permissions') or '?'}).",
             f"Strategy {spec.plan.strategy_name} on {', '.join(spec.plan.instruments)}.",
             f"Limits: order notional <= {risk.max_order_notional:,.2f}, position notional <= "
             f"{risk.max_position_notional:,.2f}, daily loss <= "
             + (f"{risk.max_daily_loss:.1%}" if risk.max_daily_loss else f"{risk.max_daily_loss_abs:,.2f}") + "."]
    print("\n".join(lines), file=sys.stderr)
    if args.confirm is not None:
        typed = args.confirm
    elif sys.stdin.isatty():
        typed = input(f"Type the account id ({uid}) to trade real money: ").strip()
    else:
        raise ConfigError("mainnet needs the account id typed at a terminal, or --confirm ACCOUNT_ID")
    if typed != uid:
        raise ConfigError(f"the confirmation {typed!r} is not the account id; nothing was started")
