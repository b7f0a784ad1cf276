"""Named crash points, for the crash-safety tests: ``ENGINE_CRASH_AT="mid_checkpoint:3"`` kills the
process with SIGKILL (no clean-up, no buffered write, as ``kill -9``) the 3rd time the daemon passes
``mid_checkpoint``. Several may be given, comma-separated; without the variable nothing happens.

Points: ``bar_processed`` (a bar decided, before its checkpoint), ``mid_checkpoint`` (the checkpoint's
rows written, its transaction not committed), ``intent_committed`` (a checkpoint holding new orders
committed), ``fill_committed`` (a checkpoint holding fills committed); live only: ``after_sending``
(``SENDING`` committed, the request not sent yet) and ``after_post`` (the exchange answered, nothing
of the answer recorded).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

POINTS = ("bar_processed", "mid_checkpoint", "intent_committed", "fill_committed", "after_sending", "after_post")
_hits: Counter[str] = Counter()


def _targets() -> dict[str, int]:
    spec = os.environ.get("ENGINE_CRASH_AT", "")
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, count = part.partition(":")
        if name not in POINTS:
            raise ValueError(f"ENGINE_CRASH_AT: unknown crash point {name!r}; points: {', '.join(POINTS)}")
        out[name] = int(count or 1)
    return out


_TARGETS = _targets()


def reached(name: str) -> None:
    if not _TARGETS:
        return
    _hits[name] += 1
    if _TARGETS.get(name) == _hits[name]:
        os.kill(os.getpid(), signal.SIGKILL)
