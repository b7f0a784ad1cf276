"""`backtest --strategy llm_signal --walk-forward`: folds that retrain on rolling windows, trade the
next window out of sample and the tail of their own training window in sample (tiny backbone)."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest

from engine.cli import main
from engine.errors import ConfigError
from research.walk_forward import folds
from strategies.llm_settings import WalkForwardSettings
from tests.llm_helpers import torch  # noqa: F401  (skips this module without the llm extra)
from tests.test_llm_backtest import pipeline_args


def test_folds_tile_the_data_with_contiguous_out_of_sample_windows():
    got = folds(1250, WalkForwardSettings(train_bars=900, test_bars=100))
    assert [(f.start, f.cut, f.end) for f in got] == [(0, 900, 1000), (100, 1000, 1100), (200, 1100, 1200),
                                                      (300, 1200, 1250)]  # the last is shorter
    assert all(a.end == b.cut for a, b in zip(got, got[1:]))  # out-of-sample windows neither overlap nor skip
    latest = folds(1250, WalkForwardSettings(train_bars=900, test_bars=100, max_folds=2))
    assert [(f.index, f.cut) for f in latest] == [(0, 1100), (1, 1200)]
    assert len(folds(1001, WalkForwardSettings(train_bars=900, test_bars=100))) == 1  # 1 bar left: no 2nd fold
    with pytest.raises(ConfigError, match="a fold needs train_bars = 900 bars plus at least 2 to trade, but the data has 901"):
        folds(901, WalkForwardSettings(train_bars=900, test_bars=100))


def test_walk_forward_retrains_per_fold_and_reports_in_and_out_of_sample(tmp_path, capsys, monkeypatch,
                                                                        isolated_store):
    monkeypatch.chdir(tmp_path)
    sets = {"llm.walk_forward.train_bars": "1000", "llm.walk_forward.test_bars": "100",
            "llm.walk_forward.in_sample_bars": "60", "llm.walk_forward.max_folds": "2",
            "store.reports_dir": f'"{tmp_path / "reports"}"'}
    extra = [f for key, value in sets.items() for f in ("--set", f"{key}={value}")]
    assert main(pipeline_args(tmp_path / "llm", *extra, "--walk-forward")) == 0
    out = json.loads(capsys.readouterr().out)

    rows = out["folds"]
    assert [r["fold"] for r in rows] == [1, 2] and all(r["of"] == 2 for r in rows)
    for r in rows:
        oos, ins = r["out_of_sample"], r["in_sample"]
        assert r["train"]["bars"] == 1000 and oos["bars"] == 100 and ins["bars"] == 60
        assert oos["start"] == r["train"]["end"]  # trades right after its training window, never inside it
        assert ins["end"] == r["train"]["end"]  # the in-sample window is the training window's tail
        assert all(c["trained"] for c in r["checkpoints"].values())
    assert rows[1]["out_of_sample"]["start"] == rows[0]["out_of_sample"]["end"]  # contiguous out of sample
    assert rows[0]["checkpoints"]["regressor"]["folder"] != rows[1]["checkpoints"]["regressor"]["folder"]

    totals = out["totals"]["out_of_sample"]
    assert totals["bars"] == 200 and totals["folds"] == 2
    assert totals["compounded_return"] == pytest.approx(
        math.prod(1 + r["out_of_sample"]["total_return"] for r in rows) - 1)
    assert Path(out["chart"]).is_file() and Path(out["chart"]).stat().st_size > 10_000

    # every traded window is a recorded, complete run
    ids = [r[s]["run_id"] for r in rows for s in ("in_sample", "out_of_sample")]
    with sqlite3.connect(isolated_store) as db:
        status = dict(db.execute(f"SELECT run_id, status FROM runs WHERE run_id IN ({','.join('?' * len(ids))})", ids))
    assert status == dict.fromkeys(ids, "completed")


def test_walk_forward_needs_the_llm_strategy(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["backtest", "--strategy", "sma_cross", "--walk-forward", "--json"]) == 2
    assert "--walk-forward retrains the LLM predictor on rolling windows; it needs --strategy llm_signal" in \
        capsys.readouterr().err
