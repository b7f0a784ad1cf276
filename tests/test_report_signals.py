"""The report shows the LLM strategy's signals: `load_run` reads them back as arrays, the page gets a
signals section whose counts are the store's own, and a signals chart; a run without signals
(sma_cross) gets neither and reports as before."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main
from engine.report import stats
from engine.store.db import open_store
from engine.store.queries import find_run, load_run
from tests.llm_helpers import torch  # noqa: F401  (skips this module without the llm extra)
from tests.test_llm_backtest import pipeline_args
from tests.test_report import CHARTS, png_size, record, run_cli

# cheap costs, a perpetual and full size at a small signal: the tiny model's weak signal then trades,
# so the decisions are more than "flat"
TRADING = ("--set", 'instrument.contract="linear_perp"', "--set", "costs.taker_fee=0.0001",
           "--set", "costs.slippage_bps=0", "--set", "costs.half_spread_bps=0",
           "--set", "strategies.llm_signal.full_size_at=0.02")
SECTION = '<h2 id="signals-section">Signals</h2>'


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory) -> tuple[Path, dict]:
    """One llm_signal run on the tiny random backbone, recorded into its own store."""
    folder = tmp_path_factory.mktemp("signals")
    db = folder / "store.db"
    cwd = os.getcwd()
    os.chdir(folder)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = main(pipeline_args(folder / "llm", "--set", f"store.url=sqlite:///{db}",
                                      "--set", "logging.file=''", *TRADING))
    finally:
        os.chdir(cwd)
    assert code == 0
    return db, json.loads(out.getvalue())


def stored(db: Path, run_id: str) -> dict:
    """The figures the signals section should show, computed by SQLite from the raw rows."""
    with sqlite3.connect(db) as conn:
        (pk,) = conn.execute("SELECT pk FROM runs WHERE run_id = ?", [run_id]).fetchone()
        n, confidence, news = conn.execute(
            "SELECT COUNT(*), AVG(confidence), "
            "AVG(COALESCE(json_extract(components, '$.inputs.news.count'), "
            "json_extract(components, '$.signal.components.news.count'), 0) > 0) "
            "FROM signals WHERE run_pk = ?", [pk]).fetchone()
        actions = dict(conn.execute("SELECT json_extract(components, '$.decision.action'), COUNT(*) FROM signals "
                                    "WHERE run_pk = ? GROUP BY 1", [pk]).fetchall())
        first, last = conn.execute("SELECT MIN(ts_event), MAX(ts_event) FROM signals WHERE run_pk = ?",
                                   [pk]).fetchone()
    return {"signals": n, "mean_confidence": confidence, "news_share": news, "actions": actions,
            "first": first, "last": last}


def test_load_run_reads_the_signals_as_arrays(llm_run):
    db, summary = llm_run
    expected = stored(db, summary["run_id"])
    store = open_store(db, create=False)
    data = load_run(store, find_run(store, summary["run_id"]))
    store.close()
    signals = data.signals
    assert len(signals) == expected["signals"] == summary["signals"] > 0
    assert signals.ts.dtype == np.int64 and np.all(np.diff(signals.ts) >= 0)
    assert (signals.ts[0], signals.ts[-1]) == (expected["first"], expected["last"])
    assert set(signals.symbol) == set(summary["symbols"])
    assert np.all(np.abs(signals.score) <= 1.0) and np.array_equal(signals.strength, np.abs(signals.score))
    assert set(np.unique(signals.direction)) <= {-1.0, 0.0, 1.0}
    assert np.all((signals.confidence >= 0.0) & (signals.confidence <= 1.0))
    assert np.isfinite(signals.regression).all() and np.isfinite(signals.cost).all()
    table = stats.signal_table(data)
    assert table["actions"] == {**dict.fromkeys(stats.SIGNAL_ACTIONS, 0), **expected["actions"]}
    assert expected["actions"] == summary["signal_actions"]
    assert table["news_share"] == pytest.approx(expected["news_share"])
    assert table["mean_confidence"] == pytest.approx(expected["mean_confidence"])
    entry = stats.signal_entry_move(data)  # the band the chart draws: inside it, no decision opened
    assert entry is not None and entry.shape == signals.score.shape and np.all(entry > 0)
    assert data.info.summary["gate"]["enter_threshold"] == pytest.approx(entry[0] / signals.cost[0])
    opened = np.isin(signals.action, ["open", "resize", "flip"])  # the only actions that enter
    assert opened.any()
    assert np.all(np.abs(signals.expected_move[opened]) >= entry[opened] - 1e-12)


def test_report_of_an_llm_run_shows_its_signals(llm_run, tmp_path):
    db, summary = llm_run
    expected = stored(db, summary["run_id"])
    code, out = run_cli("report", summary["run_id"], "--db", str(db), "--out", str(tmp_path), "--json")
    assert code == 0
    written = json.loads(out)
    assert [Path(p).name for p in written["charts"]] == [f"{c}.png" for c in (*CHARTS, "signals")]
    chart = tmp_path / "signals.png"
    width, height = png_size(chart)
    assert width >= 1200 and height >= 600 and chart.stat().st_size > 30_000  # three panels with real lines
    page = Path(written["html"]).read_text(encoding="utf-8")
    assert page.count(SECTION) == 1 and page.count('src="data:image/png;base64,') == len(CHARTS) + 1
    assert 'id="signals"' in page
    section = page[page.index(SECTION):]

    def row(label: str, value: str) -> str:
        return f'<td class="">{label}</td><td class="num">{value}</td>'

    assert row("signals recorded", f"{expected['signals']:,}") in section
    assert row("mean confidence", f"{expected['mean_confidence']:.3f}") in section
    assert row("with news (a headline in the look-back)", f"{expected['news_share']:.2%}") in section
    assert sum(expected["actions"].values()) == expected["signals"]
    for action in stats.SIGNAL_ACTIONS:  # every action, those never taken as 0
        assert row(action, f"{expected['actions'].get(action, 0):,}") in section, action


def test_report_of_a_run_without_signals_has_no_signals_section(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "store.db"
    summary = record(db)  # sma_cross
    store = open_store(db, create=False)
    signals = load_run(store, find_run(store, summary["run_id"])).signals
    store.close()
    assert len(signals) == 0 and signals.ts.dtype == np.int64 and len(signals.score) == len(signals.action) == 0
    code, out = run_cli("report", "--latest", "--db", str(db), "--out", str(tmp_path / "report"), "--json")
    assert code == 0
    written = json.loads(out)
    assert [Path(p).name for p in written["charts"]] == [f"{c}.png" for c in CHARTS]
    assert not (tmp_path / "report" / "signals.png").exists()
    page = Path(written["html"]).read_text(encoding="utf-8")
    assert SECTION not in page and 'id="signals"' not in page
    assert summary["run_id"] in page and "Monthly returns" in page
