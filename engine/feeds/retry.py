"""Retries with exponential back-off for calls to remote data sources, counted per error class.

A source translates each exception of its client library into one of the engine's errors:

- ``SourceUnreachable``: the source could not be reached at all (no DNS, connection refused) before
  it ever answered. Retrying would only make an offline user wait, so the caller fails at once and
  says how to supply the data otherwise.
- another ``TemporaryError``: worth retrying (timeouts, HTTP 5xx, rate limits, a dropped connection
  once the source has answered); retried up to ``RetryPolicy.retries`` times with growing delays.
- any other ``EngineError`` (bad symbol, exchange rejection): raised at once, never retried.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from engine.errors import EngineError, TemporaryError

T = TypeVar("T")


class SourceUnreachable(TemporaryError):
    """The data source could not be reached at all (offline, DNS failure, connection refused)."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``retries`` further attempts after the first; the n-th waits ``base_delay * factor**n`` seconds,
    at most ``max_delay``."""

    retries: int = 5
    base_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 30.0

    def delay(self, retry: int) -> float:
        return min(self.base_delay * self.factor ** retry, self.max_delay)


class Retrying:
    """Runs calls to one source, retrying temporary failures; keeps counts for reports and tests.

    ``translate(exc, contacted)`` maps a library exception to an ``EngineError`` (or ``None`` to let
    it propagate unchanged); ``contacted`` tells whether the source has answered any call yet.
    """

    def __init__(self, service: str, translate: Callable[[BaseException, bool], EngineError | None],
                 policy: RetryPolicy | None = None, sleep: Callable[[float], Any] = time.sleep) -> None:
        self.service = service
        self.translate = translate
        self.policy = policy or RetryPolicy()
        self.sleep = sleep
        self.contacted = False
        self.calls = 0  # attempts made, retries included
        self.retries: Counter[str] = Counter()  # retries made, by the library's exception class name
        self.delays: list[float] = []  # seconds waited before each retry, in order

    def run(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``; ``what`` names the request in error messages."""
        retry = 0
        while True:
            self.calls += 1
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - every library error is translated or re-raised
                error = self.translate(exc, self.contacted)
                if error is None:
                    raise
                if isinstance(error, SourceUnreachable) or not isinstance(error, TemporaryError):
                    raise error from exc
                if retry >= self.policy.retries:
                    raise TemporaryError(
                        f"{self.service}: {what} failed {retry + 1} times (retried: {self.retry_summary()}); last error: "
                        f"{error}. Check the connection or wait for the service to recover, then run the same "
                        "command again: what was fetched before this request is kept in the cache"
                    ) from exc
                self.retries[type(exc).__name__] += 1
                delay = self.policy.delay(retry)
                self.delays.append(delay)
                self.sleep(delay)
                retry += 1
                continue
            self.contacted = True
            return result

    def retry_summary(self) -> str:
        """``"ExchangeNotAvailable x2, RequestTimeout x1"``, or ``"nothing"``."""
        return ", ".join(f"{name} x{n}" for name, n in sorted(self.retries.items()) if n) or "nothing"
