"""The fake Bybit v5 of the public-data tests: ``engine.testing.fake_bybit.FakeBybit`` (see there).

``tests/test_bybit_data.py`` and ``tests/test_paper_live.py`` drive their own clocks, the daemon's
ticking hours past the real time, and only ever read public data. This fixture therefore pins market
time at a horizon past every date they use, so the exchange has every bar they ask for, as the public
fake they were written against served them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.testing.fake_bybit import HOUR, INTERVALS
from engine.testing.fake_bybit import FakeBybit as _FakeBybit

HORIZON = 1_900_000_000_000  # 2030-03-17: the last bar open the public fake ever served

__all__ = ["HORIZON", "HOUR", "INTERVALS", "FakeBybit"]


class FakeBybit(_FakeBybit):
    def __init__(self, bybit_dir: Path | None = None, *, missing: Iterable[int] = frozenset(), funding_start: int = 0,
                 **options: Any) -> None:
        super().__init__(bybit_dir, missing=missing, funding_start=funding_start, **options)
        self.set_market_time(HORIZON)
