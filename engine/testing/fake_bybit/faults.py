"""Faults the fake injects per endpoint, queued or at random, before or after the request is processed.

A fault's ``kind`` is what the client sees: an HTTP status with a non-JSON body (500, 502, 503, 504,
403, 429: ccxt maps these by status), ``("ret", code)`` or ``("ret", code, message)`` Bybit's JSON
envelope with that retCode (ccxt maps it by code and message), ``"timeout"`` (the answer is held
``delay_s``, longer than the client waits) or ``"drop"`` (the connection is closed unanswered).
``when="before"``: the request is not processed. ``when="after"``: it is processed (the order exists,
the cancel happened) and then the fault replaces the answer: a lost acknowledgement.
"""

from __future__ import annotations

import random
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

WHEN = ("before", "after")
DEFAULT_PATHS = ("/v5/order/create", "/v5/order/cancel", "/v5/order/realtime", "/v5/order/history",
                 "/v5/execution/list", "/v5/position/list", "/v5/account/wallet-balance")
DEFAULT_KINDS: tuple[Any, ...] = (500, 502, 503, 504, "timeout", "drop", ("ret", 10006), ("ret", 10002),
                                  ("ret", 10016, "Request timeout"))
RET_MESSAGES = {10006: "Too many visits!", 10002: "invalid request, please check your server timestamp or recv_window param",
                10016: "System error. Please try again later.", 10000: "Server Timeout", 10018: "Exceeded IP rate limit."}
PASS = "ok"  # a queued entry that lets one request through (the earlier fake's fail(path, "ok"))


def normalise_kind(kind: Any) -> int | str | tuple[str, int, str]:
    """Check a fault kind; a JSON list ``["ret", 10006]`` becomes the tuple ``("ret", 10006, message)``."""
    if isinstance(kind, bool):
        raise ValueError(f"fault kind {kind!r} is invalid")
    if isinstance(kind, int):
        if not 400 <= kind <= 599:
            raise ValueError(f"fault status {kind} is invalid: an HTTP error status, 400..599 (e.g. 502)")
        return kind
    if kind in ("timeout", "drop", PASS):
        return kind
    if isinstance(kind, (list, tuple)) and len(kind) in (2, 3) and kind[0] == "ret" and isinstance(kind[1], int):
        code = int(kind[1])
        return ("ret", code, str(kind[2]) if len(kind) == 3 else RET_MESSAGES.get(code, "fault injected by the fake"))
    raise ValueError(f"fault kind {kind!r} is invalid: an HTTP status (502), ('ret', code[, message]), 'timeout' "
                     "or 'drop'")


@dataclass(frozen=True, slots=True)
class Fault:
    kind: int | str | tuple[str, int, str]
    when: str = "before"

    def __post_init__(self) -> None:
        if self.when not in WHEN:
            raise ValueError(f"fault when={self.when!r} is invalid: 'before' (not processed) or 'after' (processed, "
                             "answer lost)")
        object.__setattr__(self, "kind", normalise_kind(self.kind))


class Faults:
    """Queued faults per path (fired in order, one per request) and an optional random source."""

    def __init__(self) -> None:
        self.queued: defaultdict[str, deque[Fault]] = defaultdict(deque)
        self.fired = 0
        self._random: tuple[float, random.Random, frozenset[str], tuple[Any, ...]] | None = None

    def add(self, path: str, kind: Any, when: str, times: int) -> None:
        if times < 1:
            raise ValueError(f"times={times} is invalid: at least 1")
        fault = Fault(kind, when)
        self.queued[path].extend([fault] * times)

    def set_random(self, rate: float, seed: int, paths: Iterable[str] | None, kinds: Iterable[Any] | None) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate {rate} is invalid: a probability between 0 and 1")
        chosen = tuple(normalise_kind(k) for k in (kinds if kinds is not None else DEFAULT_KINDS))
        if not chosen:
            raise ValueError("random faults need at least one kind")
        self._random = (rate, random.Random(seed), frozenset(paths if paths is not None else DEFAULT_PATHS), chosen)

    def clear(self) -> None:
        self.queued.clear()
        self._random = None

    def take(self, path: str) -> Fault | None:
        """The fault for this request to ``path``, if any (counted in ``fired``); callers hold the lock."""
        queue = self.queued.get(path)
        if queue:
            fault = queue.popleft()
            if fault.kind == PASS:
                return None
            self.fired += 1
            return fault
        if self._random is not None:
            rate, rng, paths, kinds = self._random
            if path in paths and rng.random() < rate:
                self.fired += 1
                return Fault(rng.choice(kinds), rng.choice(WHEN))
        return None
