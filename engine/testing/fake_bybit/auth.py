"""Bybit v5 request signing, checked the way Bybit checks it (BYBIT.md section 5).

Headers X-BAPI-API-KEY, X-BAPI-TIMESTAMP, X-BAPI-RECV-WINDOW and X-BAPI-SIGN; the signature is
HMAC-SHA256 (lowercase hex, keyed with the secret) of timestamp + key + recv window + payload, the
payload being the raw query string of a GET (as sent, not decoded or re-sorted) or the exact body of
a POST. The timestamp must lie in ``[server time - recv window, server time + 1000)``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from engine.testing.fake_bybit.wire import BybitError

DEFAULT_RECV_WINDOW = 5000
AHEAD_MS = 1000


def sign(secret: str, timestamp: str, api_key: str, recv_window: str, payload: str) -> str:
    return hmac.new(secret.encode(), (timestamp + api_key + recv_window + payload).encode(), hashlib.sha256).hexdigest()


def check(headers: Mapping[str, str], payload: str, *, api_key: str, api_secret: str, server_ms: int) -> None:
    """Raise the retCode Bybit answers an unsigned, wrongly signed or stale request with:
    10003 unknown key, 10002 timestamp outside the window, 10004 wrong signature."""
    key = headers.get("X-BAPI-API-KEY") or ""
    if key != api_key:
        raise BybitError(10003, "API key is invalid." if key else "API key is missing (header X-BAPI-API-KEY).")
    timestamp = headers.get("X-BAPI-TIMESTAMP") or ""
    recv_window = headers.get("X-BAPI-RECV-WINDOW") or str(DEFAULT_RECV_WINDOW)
    try:
        ts, window = int(timestamp), int(recv_window)
    except ValueError:
        raise BybitError(10002, f"invalid request: timestamp {timestamp!r} / recv_window {recv_window!r} must be "
                                "integers") from None
    if not server_ms - window <= ts < server_ms + AHEAD_MS:
        raise BybitError(10002, f"invalid request, please check your server timestamp or recv_window param. "
                                f"req_timestamp[{ts}],server_timestamp[{server_ms}],recv_window[{window}]")
    expected = sign(api_secret, timestamp, key, recv_window, payload)
    if not hmac.compare_digest(expected, headers.get("X-BAPI-SIGN") or ""):
        raise BybitError(10004, "error sign! the signature does not match timestamp + api key + recv_window + "
                                "payload signed with the secret")
