"""The clock: what time it is for the engine, and timers that fire at a given instant.

One small interface, two implementations (``DESIGN.md``, "One kernel, three modes"):

- ``SimulatedClock`` (backtests): time jumps to each event; the event loop moves it with
  ``advance_to`` and timers due by then fire first, in time order.
- ``WallClock`` (the paper and live daemons): the system clock plus an offset that turns it into
  the exchange's time (``set_offset`` after a time sync); the daemon's step calls ``fire_due``.

Times are integer epoch milliseconds UTC. A timer is a name, an instant and a callback; setting
a timer under a name already in use moves it.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol

TimerCallback = Callable[[str, int], None]
"""Called with the timer's name and the instant it was due."""


class Clock(Protocol):
    def now(self) -> int:
        """The current instant, epoch ms UTC."""

    def set_timer(self, name: str, at_ms: int, callback: TimerCallback) -> None:
        """Call ``callback(name, at_ms)`` once the clock reaches ``at_ms``."""

    def cancel_timer(self, name: str) -> bool:
        """Forget a timer; ``False`` if none has that name."""

    def fire_due(self) -> int:
        """Fire every timer due by ``now()``, earliest first; how many fired."""


class _Timers:
    """Timers in a heap; cancelled or moved entries are skipped when they surface."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, str]] = []
        self._live: dict[str, tuple[int, int, TimerCallback]] = {}  # name -> (at, serial, callback)
        self._serial = itertools.count()

    def set_timer(self, name: str, at_ms: int, callback: TimerCallback) -> None:
        serial = next(self._serial)
        self._live[name] = (int(at_ms), serial, callback)
        heapq.heappush(self._heap, (int(at_ms), serial, name))

    def cancel_timer(self, name: str) -> bool:
        return self._live.pop(name, None) is not None

    def next_due(self) -> int | None:
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def _fire_until(self, limit_ms: int, before_each: Callable[[int], None] | None = None) -> int:
        fired = 0
        while True:
            self._drop_stale()
            if not self._heap or self._heap[0][0] > limit_ms:
                return fired
            at, _, name = heapq.heappop(self._heap)
            _, _, callback = self._live.pop(name)
            if before_each is not None:
                before_each(at)
            callback(name, at)
            fired += 1

    def _drop_stale(self) -> None:
        heap, live = self._heap, self._live
        while heap:
            at, serial, name = heap[0]
            entry = live.get(name)
            if entry is not None and entry[1] == serial:
                return
            heapq.heappop(heap)


class SimulatedClock(_Timers):
    """Backtest time: it stands still until the loop moves it to the next event."""

    def __init__(self, start_ms: int = 0) -> None:
        super().__init__()
        self._now = int(start_ms)

    def now(self) -> int:
        return self._now

    def advance_to(self, ts_ms: int) -> None:
        """Move to ``ts_ms``, firing the timers due by then (each sees the clock at its own instant)."""
        if self._heap and self._heap[0][0] <= ts_ms:
            self._fire_until(ts_ms, self._set)
        self._now = ts_ms

    def fire_due(self) -> int:
        return self._fire_until(self._now)

    def _set(self, ts_ms: int) -> None:
        self._now = max(self._now, ts_ms)


class WallClock(_Timers):
    """Daemon time: the system clock corrected to the exchange's (``offset_ms`` = exchange - local)."""

    def __init__(self, offset_ms: int = 0, source: Callable[[], int] | None = None) -> None:
        super().__init__()
        self._offset = int(offset_ms)
        self._source = source or (lambda: time.time_ns() // 1_000_000)

    def now(self) -> int:
        return self._source() + self._offset

    def set_offset(self, offset_ms: int) -> None:
        self._offset = int(offset_ms)

    def fire_due(self) -> int:
        return self._fire_until(self.now())
