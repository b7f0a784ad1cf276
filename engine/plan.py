"""A backtest plan: everything one backtest needs, checked and loaded (``engine.session`` makes it
from a config; the LLM strategy's preparation and the walk-forward derive plans from plans)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.backtest import BacktestResult, run_backtest
from engine.config import Config
from engine.costs import CostModels
from engine.domain import Instrument, News
from engine.journal import Journal
from engine.series import BarSeries
from engine.timeutil import iso


@dataclass
class BacktestPlan:
    config: Config
    series: list[BarSeries]
    news: list[News]
    instruments: dict[str, Instrument]
    costs: CostModels
    make_strategy: Callable[[], Any]
    data_label: str
    notes: list[str] = field(default_factory=list)
    strategy_name: str = ""  # the registry name of what make_strategy builds
    extra: dict[str, Any] = field(default_factory=dict)  # more summary keys (the LLM strategy's periods, checkpoints)

    def run(self, *, progress: bool = False, check_invariants: bool = False, journal: Journal | None = None,
            run_id: str | None = None) -> BacktestResult:
        return run_backtest(self.make_strategy(), self.series, self.instruments, news=self.news,
                            starting_cash=self.config.run.starting_cash, costs=self.costs,
                            fill_mode=self.config.run.fill_mode, progress=progress,
                            check_invariants=check_invariants, journal=journal, run_id=run_id,
                            risk=self.config.risk)

    def describe(self) -> dict[str, Any]:
        s = self.series[0]
        return {
            "data": self.data_label,
            "timeframe": s.timeframe,
            "start": iso(int(s.ts_open[0])) if len(s) else None,
            "end": iso(int(s.ts_close[-1])) if len(s) else None,
            "contract": self.instruments[s.symbol].contract.value,
            "notes": self.notes,
            **self.extra,
        }
