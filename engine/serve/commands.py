"""``python -m engine serve``: the dashboard and JSON API over the store, served by uvicorn.

Light at import (argparse only): FastAPI, uvicorn and the store load when the server starts.
"""

from __future__ import annotations

import argparse
import logging
import re
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.serve.auth import default_token_file, is_loopback, load_or_create_token

DEFAULT_PORT = 8787
_TOKEN_IN_URL = re.compile(r"(token=)[^&\s\"']+")

EPILOG = f"""examples:
  python -m engine serve                         # http://127.0.0.1:{DEFAULT_PORT}, the store of config.toml
  python -m engine serve --db logs/other.db --port 9000
  curl -H "Authorization: Bearer $(cat ~/.config/llmtrader/serve-token)" http://127.0.0.1:{DEFAULT_PORT}/api/runs

The token: made on the first start (secrets.token_urlsafe), kept in {default_token_file()}
($XDG_CONFIG_HOME/llmtrader/serve-token, else ~/.config/llmtrader/serve-token; --token-file moves it),
readable by you only (0600). At start the server prints the page's address with the token once, on
this terminal; no log gets it. Opening that address sets a cookie and drops the token from the
address bar. The API takes `Authorization: Bearer <token>`; its OpenAPI document is /api/openapi.json.

Security: it listens on 127.0.0.1 only, unless --host names another address AND --allow-remote is
given (then it warns: plain HTTP, so the token crosses the network in clear; prefer an SSH tunnel).
No CORS: pages of other sites cannot read its answers. Answers never carry API keys, the token or a
store password. Halt, resume and stop write the daemon's controls, as `paper halt|stop` do."""


class RedactToken(logging.Filter):
    """Cuts ``token=...`` out of every log line (uvicorn's access log prints each request's query)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message:
            record.msg, record.args = _TOKEN_IN_URL.sub(r"\1***", message), None
        return True


LOG_CONFIG: dict[str, Any] = {
    "version": 1, "disable_existing_loggers": False,
    "filters": {"redact": {"()": RedactToken}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "plain",
                            "filters": ["redact"]}},
    "loggers": {"uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
                "uvicorn.access": {"handlers": ["stderr"], "level": "INFO", "propagate": False}},
}


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve", help=f"the dashboard and JSON API over the store (http://127.0.0.1:{DEFAULT_PORT}, token required)",
        description="Serve a dashboard of the recorded runs (equity against buy & hold, drawdown, price with fills, "
        "signals, positions, orders, costs; a running daemon's page refreshes itself and can halt, resume or stop it) "
        "and the JSON API it reads, over the store.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="TOML config file (default: ./config.toml if present)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set store.url=sqlite:///other.db")
    p.add_argument("--db", help="the store: a SQLAlchemy URL or a SQLite file path (default: store.url)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other than a "
                   "loopback address needs --allow-remote)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--allow-remote", action="store_true", help="allow --host to be an address other machines can "
                   "reach (plain HTTP: the token crosses the network in clear)")
    p.add_argument("--token-file", type=Path, help=f"where the token is kept (default {default_token_file()})")
    p.add_argument("--rotate-token", action="store_true", help="write a new token (the old one stops working)")


def main(args: argparse.Namespace, config_loader: Any) -> int:
    config = config_loader(args)
    url = args.db or config.store.url
    host = args.host
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0-65535, got {args.port}")
    remote = not is_loopback(host)
    if remote and not args.allow_remote:
        raise ConfigError(f"--host {host} would listen beyond this machine; add --allow-remote if you mean it "
                          "(or keep the default 127.0.0.1 and reach it through an SSH tunnel)")
    token_file = args.token_file or default_token_file()
    token, created = load_or_create_token(token_file, rotate=args.rotate_token)

    from engine.serve.app import create_app

    app = create_app(url, token, config=config)
    sock = _bind(host, args.port)
    port = sock.getsockname()[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else \
        f"[{host}]" if ":" in host and not host.startswith("[") else host
    if remote:
        print(f"warning: listening on {host}:{port}, reachable from other machines. The dashboard can halt and stop "
              "your daemons; it speaks plain HTTP, so the token crosses the network in clear. Prefer the default "
              "127.0.0.1 and an SSH tunnel (ssh -L).", file=sys.stderr, flush=True)
    print(f"llmtrader dashboard over {app.state.store.name}\n"
          f"  open  http://{shown}:{port}/?token={token}\n"
          f"  API   http://{shown}:{port}/api  (Authorization: Bearer <token>; /api/openapi.json)\n"
          f"The token ({'new, ' if created else ''}kept in {token_file}) is printed here once and written to no log. "
          "Ctrl+C stops the server.", flush=True)
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_config=LOG_CONFIG, server_header=False, access_log=True))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0


def serve_beside(config: Any, port: int, *, say: Callable[[str], None]) -> Callable[[], None]:
    """``paper start --serve [PORT]`` / ``live start --serve``: the dashboard on 127.0.0.1:PORT in a
    thread of the daemon's process, over the daemon's store (created now if the daemon has not yet),
    until the returned function stops it. Loopback only, the token as for ``serve``; the page's
    address goes to ``say`` (the terminal), never to a log, and the access log is off so the daemon's
    own lines stay readable."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--serve PORT must be 0-65535, got {port}")
    token_file = default_token_file()
    token, created = load_or_create_token(token_file)

    import uvicorn

    from engine.serve.app import create_app

    app = create_app(config.store.url, token, config=config, create=True)
    sock = _bind("127.0.0.1", port)
    server = uvicorn.Server(uvicorn.Config(app, log_config=LOG_CONFIG, server_header=False, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="dashboard", daemon=True)
    thread.start()
    bound = sock.getsockname()[1]
    say(f"dashboard: http://127.0.0.1:{bound}/?token={token} (the token, {'new, ' if created else ''}kept in "
        f"{token_file}, is printed here once and written to no log)")

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    return stop


def _bind(host: str, port: int) -> socket.socket:
    sock = None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
