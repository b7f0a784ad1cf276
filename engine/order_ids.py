"""Client order ids: deterministic per decision, unique across restarts (``LIVE.md``).

An id is ``<run tag>-<decision time in base 36>-<k>``: the run tag is 10 characters derived from the
run id, the decision time is the event time (epoch ms) at which the strategy ordered, and ``k``
counts the orders made at that instant from 1. The same decision made again after a crash yields the
same id, so the exchange's uniqueness check (Bybit's ``orderLinkId``) is our idempotency key; a
counter that restarted at 1 would instead collide with an earlier order. Ids already recorded
(``known``, read from the store on a restart) are never handed out again. At most 36 characters of
``[0-9a-z-]``, Bybit's limit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

MAX_LENGTH = 36
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def base36(n: int) -> str:
    if n < 0:
        raise ValueError(f"base36 of a negative number: {n}")
    out = []
    while True:
        n, r = divmod(n, 36)
        out.append(_DIGITS[r])
        if n == 0:
            return "".join(reversed(out))


def run_tag(run_id: str) -> str:
    """The 10-character prefix of every order id of ``run_id``: ``"e"`` and 9 base-36 digits of its hash."""
    digest = int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:8], "big")
    return "e" + base36(digest).rjust(13, "0")[-9:]


class OrderIds:
    def __init__(self, run_id: str, known: Iterable[str] = ()) -> None:
        self.tag = run_tag(run_id)
        self._known = set(known)
        self._ts = -1
        self._k = 0

    def next(self, ts_ms: int) -> str:
        if ts_ms != self._ts:
            self._ts, self._k = ts_ms, 0
        stamp = base36(ts_ms)
        while True:
            self._k += 1
            candidate = f"{self.tag}-{stamp}-{self._k}"
            if candidate not in self._known:
                break
        if len(candidate) > MAX_LENGTH:
            raise ValueError(f"client order id {candidate!r} is longer than {MAX_LENGTH} characters")
        self._known.add(candidate)
        return candidate
