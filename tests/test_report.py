"""Reports read the store: the metrics they show are the run's own, the HTML is self-contained, the
charts are real PNGs; `runs` lists what was recorded; `--compare` puts two runs side by side."""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
from pathlib import Path

import pytest

from engine.cli import main
from engine.report import stats
from engine.store.db import open_store
from engine.store.queries import find_run, load_run

ROOT = Path(__file__).resolve().parents[1]
CHARTS = ("equity", "drawdown", "price", "position", "costs", "monthly_returns")


def run_cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


def record(db: Path, *args: str) -> dict:
    code, out = run_cli("backtest", "--json", "--no-progress", "--config", str(ROOT / "config.toml"),
                        "--set", f"store.url=sqlite:///{db}", "--set", "logging.file=''", *args)
    assert code == 0
    return json.loads(out)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Path, dict, dict]:
    """A store with the default run and the same data with a faster average."""
    folder = tmp_path_factory.mktemp("report")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        db = folder / "store.db"
        default = record(db)
        faster = record(db, "--set", "strategies.sma_cross.fast=5")
    finally:
        os.chdir(cwd)
    return db, default, faster


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_report_metrics_are_the_runs_own(recorded):
    db, default, _ = recorded
    store = open_store(db, create=False)
    data = load_run(store, find_run(store, default["run_id"]))
    store.close()
    metrics = stats.run_metrics(data)
    assert metrics is not None and metrics.to_dict() == default["metrics"]
    assert stats.cost_totals(data).as_dict() == {k: default[k] for k in ("fees", "spread", "slippage", "funding")}
    assert stats.buy_and_hold_return(data) == default["buy_and_hold_return"]
    table = stats.monthly_table(data)
    assert (1 + table.iloc[:, :12].stack()).prod() - 1 == pytest.approx(default["total_return"], rel=1e-9)


def test_report_latest_writes_self_contained_html_and_pngs(recorded, tmp_path):
    db, _, faster = recorded
    code, out = run_cli("report", "--latest", "--db", str(db), "--out", str(tmp_path), "--json")
    assert code == 0
    written = json.loads(out)
    page = Path(written["html"]).read_text(encoding="utf-8")
    assert [Path(p).name for p in written["charts"]] == [f"{c}.png" for c in CHARTS]
    for chart in written["charts"]:
        width, height = png_size(Path(chart))
        assert width >= 1200 and height >= 250
    assert page.count('src="data:image/png;base64,') == len(CHARTS)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert faster["run_id"] in page and "completed" in page
    for label in ("total return", "max drawdown", "sharpe", "buy &amp; hold return", "fees", "slippage", "funding",
                  "Monthly returns", "Positions at the end", "strategies"):
        assert label in page


def test_report_goes_to_the_reports_dir_by_default(recorded, tmp_path):
    db, default, faster = recorded
    # a unique prefix will do (both runs may start in the same second: then it needs a few more characters)
    prefix = next(default["run_id"][:n] for n in range(17, len(default["run_id"]) + 1)
                  if not faster["run_id"].startswith(default["run_id"][:n]))
    code, out = run_cli("report", prefix, "--db", str(db),
                        "--set", f"store.reports_dir='{tmp_path / 'reports'}'")
    assert code == 0 and f"report: {tmp_path / 'reports' / default['run_id'] / 'report.html'}" in out
    assert (tmp_path / "reports" / default["run_id"] / "equity.png").exists()


def test_runs_lists_recorded_runs_newest_first(recorded):
    db, default, faster = recorded
    code, out = run_cli("runs", "--db", str(db), "--json")
    listed = json.loads(out)
    assert code == 0 and [r["run_id"] for r in listed] == [faster["run_id"], default["run_id"]]
    assert listed[1]["status"] == "completed" and listed[1]["fills"] == default["fills"]
    assert listed[1]["final_equity"] == default["final_equity"]
    code, out = run_cli("runs", "--db", str(db))
    assert code == 0 and "final equity" in out and default["run_id"] in out and "completed" in out


def test_compare_puts_two_runs_side_by_side(recorded, tmp_path):
    db, default, faster = recorded
    code, out = run_cli("report", "--compare", default["run_id"], faster["run_id"], "--db", str(db),
                        "--out", str(tmp_path), "--json")
    assert code == 0
    written = json.loads(out)
    page = Path(written["html"]).read_text(encoding="utf-8")
    assert png_size(Path(written["charts"][0]))[0] >= 1200
    assert "strategies.sma_cross.fast" in page and "same data" in page
    assert default["run_id"] in page and faster["run_id"] in page


@pytest.mark.slow
def test_report_of_a_real_btc_run(shared_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "btc.db"
    summary = record(db, "--data", str(shared_data / "ohlcv" / "crypto" / "binance_BTCUSDT_1h.csv"))
    code, out = run_cli("report", "--latest", "--db", str(db), "--out", str(tmp_path / "btc"), "--json")
    assert code == 0
    page = Path(json.loads(out)["html"]).read_text(encoding="utf-8")
    assert "BTCUSDT" in page and summary["run_id"] in page
    assert page.count("<tr>") > 40  # metrics, costs, orders, monthly data of several years


def test_backtest_report_flag_writes_the_report_and_says_where(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = record(tmp_path / "store.db", "--report", "--set", f"store.reports_dir='{tmp_path / 'reports'}'")
    html = tmp_path / "reports" / summary["run_id"] / "report.html"
    assert summary["report"] == str(html) and html.is_file()
    assert all(png_size(html.parent / f"{name}.png")[0] > 300 for name in CHARTS)
    code, _ = run_cli("backtest", "--report", "--set", "store.enabled=false", "--set", "logging.file=''")
    assert code == 2  # refused up front: a report needs the recorded run


def test_a_dollar_in_the_symbol_or_file_name_is_drawn_as_written(tmp_path, monkeypatch):
    """matplotlib reads ``$...$`` as maths: a symbol such as ``$X$`` or ``a$b$c.csv`` must not crash
    (or change) the charts' titles and labels."""
    from engine.report import charts
    from engine.testing.bars import random_walk, write_csv

    monkeypatch.chdir(tmp_path)
    data = write_csv(random_walk(300), tmp_path / "bars $x^{2 $.csv")
    summary = record(tmp_path / "store.db", "--data", str(data), "--set", "data.symbol='A$^$B'")
    code, out = run_cli("report", summary["run_id"], "--db", str(tmp_path / "store.db"), "--out", str(tmp_path / "r"),
                        "--json")
    assert code == 0 and [Path(p).name for p in json.loads(out)["charts"]] == [f"{c}.png" for c in CHARTS]
    store = open_store(tmp_path / "store.db", create=False)
    run = load_run(store, find_run(store, summary["run_id"]))
    store.close()
    fig = charts.equity_chart(run)
    title = fig.axes[0].title if fig.axes[0].get_title() else fig.axes[0]._left_title
    assert "bars $x^{2 $.csv" in title.get_text() and not title.get_parse_math()
