"""`python -m engine sweep`: a grid (or an Optuna search) of settings, each point a recorded run, with a
results table, CSV/JSON, a heat map and a page. Serial here; tests/test_ray.py runs the same on Ray."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import pytest

from engine.cli import main
from engine.errors import ConfigError
from engine.testing.bars import random_walk, write_csv
from research import executors
from research.sweep import Axis, grid, parse_axis, parse_span

ROOT = Path(__file__).resolve().parents[1]
FAST, SLOW = "strategies.sma_cross.fast", "strategies.sma_cross.slow"


def sweep_args(tmp_path: Path, *more: str) -> list[str]:
    return ["sweep", "--config", str(ROOT / "config.toml"), "--strategy", "sma_cross", "--set", "sample.bars=1500",
            "--out", str(tmp_path / "out"), "--json", "--no-progress", *more]


def run_json(capsys, args: list[str]) -> dict:
    assert main(args) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


# -- parsing ----------------------------------------------------------------------------------------
def test_grid_values_are_read_as_toml_values_or_ranges():
    assert parse_axis("strategies.sma_cross.fast=5,10,20") == Axis(FAST, (5, 10, 20))
    assert parse_axis(f"{FAST}=10:50:20") == Axis(FAST, (10, 30, 50))
    assert parse_axis(f"{FAST}=10:55:20") == Axis(FAST, (10, 30, 50))  # STOP off the step is not reached
    assert parse_axis("costs.slippage_bps=0.5:1.5:0.5").values == (0.5, 1.0, 1.5)
    assert parse_axis('run.fill_mode=next_open,"close"').values == ("next_open", "close")
    assert parse_axis("llm.flag=true,false").values == (True, False)


@pytest.mark.parametrize("text, message", [
    ("fast=5,10", "expected SECTION.KEY=VALUES"),
    (f"{FAST}=", "expected SECTION.KEY=VALUES"),
    (f"{FAST}=5,,10", "an empty value"),
    (f"{FAST}=5,5", "a value is listed twice"),
    (f"{FAST}=10:5:1", "STOP >= START"),
    (f"{FAST}=1:5", "START:STOP:STEP"),
    (f"{FAST}=1:100000:1", "at most 10,000"),
])
def test_a_malformed_grid_is_refused_with_what_to_write(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_axis(text)


def test_ranges_for_optuna():
    span = parse_span(f"{FAST}=3..40")
    assert (span.low, span.high, span.kind) == (3, 40, "int")
    assert parse_span("costs.slippage_bps=0.5..4").kind == "float"
    assert parse_span("llm.lr=1e-4..1e-1:log").kind == "log"
    for bad, message in ((f"{FAST}=40..3", "HIGH must be above LOW"), (f"{FAST}=a..b", "LOW..HIGH in numbers"),
                         ("llm.lr=0..1:log", "LOW > 0"), (f"{FAST}=1..5:sqrt", "the only scale")):
        with pytest.raises(ConfigError, match=message):
            parse_span(bad)


def test_the_grid_is_every_combination_first_key_slowest():
    points = grid([Axis("a.x", (1, 2)), Axis("a.y", ("p", "q", "r"))])
    assert points == [{"a.x": x, "a.y": y} for x in (1, 2) for y in ("p", "q", "r")]
    with pytest.raises(ConfigError, match="at most 10,000"):
        grid([Axis("a.x", tuple(range(200))), Axis("a.y", tuple(range(200)))])


# -- the command --------------------------------------------------------------------------------------
def test_every_point_is_a_recorded_run_equal_to_its_own_backtest(tmp_path, capsys, monkeypatch, isolated_store):
    monkeypatch.chdir(tmp_path)
    out = run_json(capsys, sweep_args(tmp_path, "--grid", f"{FAST}=5,10", "--grid", f"{SLOW}=30:60:30"))

    rows = out["rows"]
    assert [r["params"] for r in rows] == [{FAST: f, SLOW: s} for f in (5, 10) for s in (30, 60)]
    assert len({r["metrics"]["total_return"] for r in rows}) == 4  # four different strategies, four results
    assert all(r["fills"] > 0 for r in rows)

    # each point is what a plain backtest of the same settings gives
    for r in rows[::3]:
        assert main(["backtest", "--config", str(ROOT / "config.toml"), "--strategy", "sma_cross", "--set",
                     "sample.bars=1500", "--set", f"{FAST}={r['params'][FAST]}", "--set",
                     f"{SLOW}={r['params'][SLOW]}", "--json", "--no-progress"]) == 0
        alone = json.loads(capsys.readouterr().out)
        assert alone["metrics"]["total_return"] == r["metrics"]["total_return"]
        assert alone["metrics"]["sharpe"] == pytest.approx(r["metrics"]["sharpe"], rel=1e-12)

    # recorded, complete, and tagged with the sweep and the point
    with sqlite3.connect(isolated_store) as db:
        found = {run_id: (status, json.loads(summary)) for run_id, status, summary in db.execute(
            "SELECT run_id, status, summary FROM runs WHERE run_id IN (?, ?, ?, ?)", [r["run_id"] for r in rows])}
    assert len(found) == 4 and all(status == "completed" for status, _ in found.values())
    for r in rows:
        tag = found[r["run_id"]][1]["sweep"]
        assert tag == {"id": out["sweep_id"], "point": r["point"], "params": r["params"]}

    # the best is the highest Sharpe, and the files say the same as the JSON
    best = max(rows, key=lambda r: r["metrics"]["sharpe"])
    assert out["best"]["point"] == best["point"] and out["best"]["score"] == best["metrics"]["sharpe"]
    files = {k: Path(v) for k, v in out["files"].items()}
    assert json.loads(files["json"].read_text())["rows"] == rows
    with files["csv"].open() as f:
        table = list(csv.DictReader(f))
    assert [(int(t[FAST]), int(t[SLOW]), t["run_id"]) for t in table] == \
        [(r["params"][FAST], r["params"][SLOW], r["run_id"]) for r in rows]
    assert [float(t["sharpe"]) for t in table] == [r["metrics"]["sharpe"] for r in rows]
    assert files["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and files["chart"].stat().st_size > 10_000
    page = files["html"].read_text()
    assert all(r["run_id"] in page for r in rows) and "data:image/png;base64," in page


def test_the_table_marks_the_best_point(tmp_path, capsys, monkeypatch, isolated_store):
    monkeypatch.chdir(tmp_path)
    args = [a for a in sweep_args(tmp_path, "--grid", f"{FAST}=5,20", "--metric", "total_return") if a != "--json"]
    assert main(args) == 0
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if line.startswith("*")]
    assert len(lines) == 1
    assert "best: fast=" in text and "heat map:" in text and "2 backtests in" in text


def test_several_data_files_rank_by_the_mean(tmp_path, capsys, monkeypatch, isolated_store):
    monkeypatch.chdir(tmp_path)
    files = [write_csv(random_walk(900, symbol=f"W{k}/USDT", seed=k), tmp_path / f"walk{k}.csv") for k in (1, 2)]
    out = run_json(capsys, sweep_args(tmp_path, "--grid", f"{FAST}=5,10,15", "--data", str(files[0]),
                                      "--data", str(files[1]), "--metric", "total_return"))
    rows = out["rows"]
    assert len(rows) == 6 and [Path(r["data"]).name for r in rows[:2]] == ["walk1.csv", "walk2.csv"]
    means = {p: sum(r["metrics"]["total_return"] for r in rows if r["point"] == p) / 2 for p in range(3)}
    assert [e["point"] for e in out["ranking"]] == sorted(means, key=lambda p: -means[p])
    assert out["best"]["score"] == pytest.approx(max(means.values()))
    assert out["ranking"][0]["run_ids"] == [r["run_id"] for r in rows if r["point"] == out["best"]["point"]]


@pytest.mark.parametrize("more, message", [
    (["--grid", "strategies.sma_cross.fsat=5,10"], "unknown key 'strategies.sma_cross.fsat'"),
    (["--range", f"{FAST}=3..40"], "--range is searched by Optuna: add --optuna N"),
    ([], "nothing to sweep"),
    (["--grid", f"{FAST}=5", "--data", "missing.csv"], "--data missing.csv: no such file"),
    (["--grid", f"{FAST}=5", "--grid", f"{FAST}=6"], "a key is swept twice"),
    (["--grid", f"{FAST}=5", "--workers", "2"], "--ray-address and --workers are for --executor ray"),
])
def test_bad_sweeps_are_refused_before_any_run(tmp_path, capsys, monkeypatch, isolated_store, more, message):
    monkeypatch.chdir(tmp_path)
    assert main(sweep_args(tmp_path, *more)) == 2
    assert message in capsys.readouterr().err
    if isolated_store.exists():
        with sqlite3.connect(isolated_store) as db:
            assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
    assert not (tmp_path / "out").exists()


def test_a_point_whose_settings_fail_stops_the_sweep_before_the_first_run(tmp_path, capsys, monkeypatch,
                                                                          isolated_store):
    monkeypatch.chdir(tmp_path)
    assert main(sweep_args(tmp_path, "--grid", f"{FAST}=5,40", "--grid", f"{SLOW}=30")) == 2  # fast 40 > slow 30
    assert "fast" in capsys.readouterr().err
    if isolated_store.exists():
        with sqlite3.connect(isolated_store) as db:
            assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 0


def test_ray_missing_is_a_clear_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ConfigError, match=r"--executor ray needs Ray, an optional extra: pip install -e '\.\[ray\]'"), \
            executors.executor("ray"):
        pass


def test_the_serial_executor_keeps_order_and_reports_each(capsys):
    seen: list[tuple[int, int]] = []
    lines: list[str] = []
    ex = executors.SerialExecutor()
    assert ex.map(lambda x: x * x, [3, 1, 2], labels=["a", "b", "c"], say=lines.append,
                  each=lambda k, r: seen.append((k, r))) == [9, 1, 4]
    assert seen == [(0, 9), (1, 1), (2, 4)]
    assert [line.split(" (")[0] for line in lines] == ["[1/3] done: a", "[2/3] done: b", "[3/3] done: c"]


# -- Optuna -------------------------------------------------------------------------------------------
def test_optuna_searches_the_ranges_reproducibly(tmp_path, capsys, monkeypatch, isolated_store):
    pytest.importorskip("optuna", reason="--optuna needs the sweep extra: pip install -e '.[sweep]'")
    monkeypatch.chdir(tmp_path)
    args = sweep_args(tmp_path, "--optuna", "6", "--batch", "3", "--range", f"{FAST}=3..20",
                      "--range", f"{SLOW}=25..80", "--grid", "costs.slippage_bps=1,3", "--seed", "5")
    first = run_json(capsys, args)
    rows = first["rows"]
    assert len(rows) == 6 and first["search"] == "optuna"
    assert all(3 <= r["params"][FAST] <= 20 and 25 <= r["params"][SLOW] <= 80 and
               r["params"]["costs.slippage_bps"] in (1, 3) for r in rows)
    assert len({(r["params"][FAST], r["params"][SLOW]) for r in rows}) > 1  # it explores
    assert first["best"]["score"] == max(r["metrics"]["sharpe"] for r in rows)
    again = run_json(capsys, args)
    assert [r["params"] for r in again["rows"]] == [r["params"] for r in rows]  # the same seed, the same points
    assert [r["metrics"] for r in again["rows"]] == [r["metrics"] for r in rows]
    assert Path(first["files"]["chart"]).stat().st_size > 10_000
