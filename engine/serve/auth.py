"""The dashboard's token: where it lives, how a request proves it holds it, and which addresses may
be bound without ``--allow-remote``.

One token per user, kept in ``$XDG_CONFIG_HOME/llmtrader/serve-token`` (else
``~/.config/llmtrader/serve-token``): written once with ``secrets.token_urlsafe(32)``, the file
readable by its owner only (0600, in a 0700 folder). A file that others can read is refused (as ssh
refuses a readable key) rather than silently used. ``--rotate-token`` replaces it.

A request proves it holds the token with ``Authorization: Bearer <token>``, or with the cookie the
browser page gets on its first visit (``/?token=<token>``, answered with the cookie and a redirect
that drops the token from the address bar). The cookie is HttpOnly and SameSite=Strict. A state-changing
request (POST) carried by the cookie alone must also send the ``X-Dashboard: 1`` header, which a page
on another site cannot add without a CORS preflight, and the server answers no preflight.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import stat
from pathlib import Path

from engine.errors import ConfigError

COOKIE = "llmtrader_token"
CSRF_HEADER = "x-dashboard"
TOKEN_FILE_NAME = "serve-token"


def default_token_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "llmtrader" / TOKEN_FILE_NAME


def load_or_create_token(path: Path, *, rotate: bool = False) -> tuple[str, bool]:
    """The token in ``path`` and whether it was created now (first start, or ``rotate``)."""
    if path.exists() and not rotate:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"the token file {path} is not a regular file")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"the token file {path} can be read by other users (mode {stat.S_IMODE(mode):o}); "
                              f"run `chmod 600 {path}`, or start with --rotate-token to write a new one")
        token = path.read_text(encoding="utf-8").strip()
        if len(token) < 32:
            raise ConfigError(f"the token file {path} holds no usable token (under 32 characters); start with "
                              "--rotate-token to write a new one")
        return token, False
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(token + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(scratch, path)
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise
    return token, True


def token_matches(given: str | None, token: str) -> bool:
    """Constant-time comparison; an absent or empty token never matches."""
    return bool(given) and secrets.compare_digest(given.encode(), token.encode())  # type: ignore[union-attr]


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` listens on this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
