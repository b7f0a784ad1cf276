"""The store's side of the command line: recording a backtest, ``runs`` and ``report``.

Everything heavy (SQLAlchemy, Alembic, matplotlib) is imported inside the functions, so that
``python -m engine --help`` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.config import Config
    from engine.plan import BacktestPlan
    from engine.store.db import Store
    from engine.store.journal import SqlJournal

ROOT = Path(__file__).resolve().parents[2]


# -- recording a backtest ------------------------------------------------------------------------
@lru_cache(maxsize=1)
def code_version() -> str:
    """``git describe --always --dirty`` of the checkout the engine runs from, else the package version.
    GIT_OPTIONAL_LOCKS=0: never take the index lock (other processes may be using the repository)."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True,
                             timeout=5, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"llmtrader {version('llmtrader')}"
    except PackageNotFoundError:
        return "unknown"


def data_fingerprint(plan: BacktestPlan) -> str:
    """sha256 of every bar array and every headline: two runs with equal fingerprints saw the same data."""
    h = hashlib.sha256()
    for s in plan.series:
        h.update(f"{s.symbol}|{s.timeframe_ms}|{len(s)}|".encode())
        for name in ("ts_open", "open", "high", "low", "close", "volume"):
            h.update(getattr(s, name).tobytes())
    for n in plan.news:
        h.update(f"{n.ts_event}|{n.symbol}|{n.source}|{n.headline}\n".encode())
    return h.hexdigest()


def config_snapshot(config: Config) -> dict[str, Any]:
    """The run's checked configuration as the store keeps it: passwords in URLs hidden and settings
    named like secrets blanked (``engine.store.redact``)."""
    from engine.store.redact import redact_settings

    return redact_settings(json.loads(json.dumps(dataclasses.asdict(config), default=str)))


class Recording:
    """One backtest being recorded: its run row and journal."""

    def __init__(self, store: Store, journal: SqlJournal) -> None:
        self.store = store
        self.journal = journal
        self.run_id = journal.run_id
        self.database = store.name

    def complete(self, summary: Mapping[str, Any]) -> None:
        try:
            self.journal.finish(summary)
        finally:
            self.store.close()

    def fail(self, error: BaseException) -> None:
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        try:
            self.journal.fail(error, status)
        finally:
            self.store.close()


def open_recording(config: Config, plan: BacktestPlan) -> Recording:
    """Open the store named by ``config.store`` and create the run's row, status "running"."""
    from engine.backtest import new_run_id
    from engine.store.db import open_store
    from engine.store.journal import start_run

    store = open_store(config.store.url, busy_timeout=config.store.busy_timeout)
    try:
        journal = start_run(
            store, run_id=new_run_id(), mode="backtest", strategy=plan.strategy_name or config.run.strategy,
            symbols=[s.symbol for s in plan.series], timeframe_ms=plan.series[0].timeframe_ms,
            starting_cash=config.run.starting_cash, config=config_snapshot(config), data_label=plan.data_label,
            data_fingerprint=data_fingerprint(plan), code_version=code_version(),
            timeframes={s.symbol: s.timeframe_ms for s in plan.series},
        )
    except BaseException:
        store.close()
        raise
    return Recording(store, journal)


def write_run_report(config: Config, run_id: str) -> Path:
    """Write the report of a recorded run into ``store.reports_dir/<run_id>`` (what
    ``report RUN_ID`` writes); returns the HTML file's path."""
    from engine.report import write_report
    from engine.store.db import open_store
    from engine.store.queries import find_run, load_run

    store = open_store(config.store.url, create=False, busy_timeout=config.store.busy_timeout)
    try:
        info = find_run(store, run_id)
        return write_report(load_run(store, info), report_folder(Path(config.store.reports_dir), info.run_id),
                            database=store.name).html
    finally:
        store.close()


def report_folder(reports_dir: Path, name: str, *run_ids: str) -> Path:
    """``reports_dir / name``, a folder named after run ids (``run_ids``, default ``name`` itself). Run
    ids come from the store, and a crafted store (``--db``) must not make a report write elsewhere: a
    name that is not one plain folder name inside ``reports_dir`` is a ``StoreError``."""
    from engine.store.db import StoreError

    for run_id in run_ids or (name,):
        if run_id in ("", ".", "..") or any(c in run_id for c in "/\\") or not run_id.isprintable():
            raise StoreError(f"the store holds a run id {run_id!r} that is not a plain folder name (a path "
                             f"separator, '..' or a control character), so its report is not written under "
                             f"{reports_dir}: name the report's folder with --out DIR")
    folder = reports_dir / name
    root = reports_dir.resolve()
    if folder.resolve().parent != root:
        raise StoreError(f"the report folder for run id {name!r} would lie outside {reports_dir}; "
                         "name the folder with --out DIR")
    return folder


# -- runs and report -----------------------------------------------------------------------------
def add_parsers(sub: Any) -> None:
    """The ``runs`` and ``report`` subcommands."""

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help="TOML config file (default: ./config.toml if present)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config value, e.g. --set store.url=sqlite:///other.db")
        p.add_argument("--db", help="the store: a SQLAlchemy URL or a SQLite file path (default: store.url)")

    runs = sub.add_parser("runs", help="list the runs recorded in the store",
                          description="List recorded runs, newest first. A run whose process died shows as "
                          "'incomplete'.")
    common(runs)
    runs.add_argument("--limit", type=int, default=20, help="how many runs to list (default 20)")
    runs.add_argument("--json", action="store_true", help="print a JSON list instead of a table")

    rep = sub.add_parser(
        "report", help="write an HTML report with PNG charts of a recorded run",
        description="Write a self-contained HTML report (charts embedded) and the PNG charts of a run,\n"
        "read from the store, under store.reports_dir/<run_id>/ (default logs/reports/<run_id>/).",
        epilog="examples:\n  python -m engine report --latest\n  python -m engine report 20250101T120000-ab12cd\n"
        "  python -m engine report --compare RUN_A RUN_B",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    common(rep)
    rep.add_argument("run_id", nargs="?", help="the run (its id, or a unique prefix)")
    rep.add_argument("--latest", action="store_true", help="the most recently started run")
    rep.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), help="two runs side by side")
    rep.add_argument("--out", type=Path, help="output folder (default: store.reports_dir/<run_id>)")
    rep.add_argument("--json", action="store_true", help="print the written paths as JSON")


def main(args: argparse.Namespace, config_loader: Any) -> int:
    """Dispatch ``runs`` / ``report``; ``config_loader(args)`` returns the checked ``Config``."""
    from engine.store.db import RunNotFound, open_store

    config = config_loader(args)
    url = args.db or config.store.url
    if args.command == "report":
        chosen = [bool(args.run_id), args.latest, bool(args.compare)]
        if sum(chosen) != 1:
            print("error: report needs exactly one of RUN_ID, --latest or --compare RUN_A RUN_B", file=sys.stderr)
            return 2
    store = open_store(url, create=False, busy_timeout=config.store.busy_timeout)
    try:
        if args.command == "runs":
            return _runs(store, args)
        return _report(store, args, Path(config.store.reports_dir))
    except RunNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()


def _runs(store: Store, args: argparse.Namespace) -> int:
    from engine.store.queries import list_runs
    from engine.timeutil import iso

    runs = list_runs(store, args.limit)
    if args.json:
        print(json.dumps([{
            "run_id": r.run_id, "status": r.status, "mode": r.mode, "strategy": r.strategy, "symbols": r.symbols,
            "data": r.data_label, "started": iso(r.started_ms), "bars": r.bars, "fills": r.fills,
            "final_equity": r.final_equity, "total_return": r.total_return} for r in runs]))
        return 0
    if not runs:
        print(f"no runs in {store.name} yet")
        return 0
    header = ("run", "status", "mode", "strategy", "data", "started (UTC)", "bars", "fills", "final equity", "return")
    rows = [header] + [(
        r.run_id, r.status, r.mode, r.strategy, _short(r.data_label), iso(r.started_ms)[:19].replace("T", " "),
        f"{r.bars:,}", f"{r.fills:,}", "" if r.final_equity is None else f"{r.final_equity:,.2f}",
        "" if r.total_return is None else f"{100 * r.total_return:+.2f}%") for r in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {6, 7, 8, 9}
    for row in rows:
        print("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    print(f"\n{store.name}")
    return 0


def _short(label: str, width: int = 32) -> str:
    name = Path(label).name if "/" in label else label
    return name if len(name) <= width else name[: width - 1] + "…"


def _report(store: Store, args: argparse.Namespace, reports_dir: Path) -> int:
    from engine.report import write_comparison, write_report
    from engine.store.queries import find_run, load_run

    if args.compare:
        a, b = (find_run(store, rid) for rid in args.compare)  # both checked before anything is written
        out = args.out or report_folder(reports_dir, f"compare-{a.run_id}-vs-{b.run_id}", a.run_id, b.run_id)
        written = write_comparison(load_run(store, a), load_run(store, b), out)
    else:
        info = find_run(store, args.run_id, latest=args.latest)
        out = args.out or report_folder(reports_dir, info.run_id)
        written = write_report(load_run(store, info), out, database=store.name)
    if args.json:
        print(json.dumps({"html": str(written.html), "charts": [str(p) for p in written.charts]}))
    else:
        print(f"report: {written.html}")
        for chart in written.charts:
            print(f"chart:  {chart}")
    return 0
