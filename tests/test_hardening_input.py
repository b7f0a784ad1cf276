"""Strange but legal input: names and files crafted (or damaged) to point outside their folders are
refused with a message, never followed."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from engine.cli import main
from engine.feeds.cache import CacheKey, MarketCache
from engine.timeutil import MS_PER_HOUR, parse_instant

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def one_run(tmp_path_factory) -> Path:
    """A store holding one recorded backtest."""
    folder = tmp_path_factory.mktemp("crafted")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        code, _, err = run_cli("backtest", "--json", "--no-progress", "--config", str(ROOT / "config.toml"),
                               "--set", f"store.url=sqlite:///{folder / 'store.db'}", "--set", "logging.file=''",
                               "--set", "sample.bars=300")
    finally:
        os.chdir(cwd)
    assert code == 0, err
    return folder / "store.db"


def crafted_store(one_run: Path, tmp_path: Path, run_id: str) -> Path:
    db = tmp_path / "crafted.db"
    shutil.copy(one_run, db)
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE runs SET run_id = ?", (run_id,))
    con.close()
    return db


@pytest.mark.parametrize("run_id", ["../../escaped", "/tmp/absolute", "a/b", "..", "a\\..\\b"])
def test_a_run_id_that_is_a_path_cannot_make_report_write_outside_the_reports_folder(one_run, tmp_path, run_id):
    db = crafted_store(one_run, tmp_path, run_id)
    reports = tmp_path / "deep" / "reports"
    before = set(tmp_path.rglob("*"))
    code, out, err = run_cli("report", "--latest", "--db", str(db), "--set", f"store.reports_dir='{reports}'")
    assert code != 0 and "run id" in err and repr(run_id) in err and "--out" in err, err
    assert set(tmp_path.rglob("*")) <= before  # nothing written anywhere
    assert not Path("/tmp/absolute").exists()
    code, _, err = run_cli("report", "--compare", run_id, run_id, "--db", str(db),
                           "--set", f"store.reports_dir='{reports}'")
    assert code != 0 and "run id" in err, err
    assert set(tmp_path.rglob("*")) <= before
    code, out, err = run_cli("report", "--latest", "--db", str(db), "--out", str(tmp_path / "chosen"))
    assert code == 0 and (tmp_path / "chosen" / "report.html").is_file(), err  # a folder the user names is used


H = MS_PER_HOUR
T0 = parse_instant("2024-01-01")


def bars(n: int) -> pd.DataFrame:
    ts = [T0 + i * H for i in range(n)]
    return pd.DataFrame({"timestamp": ts, "open": 100.0, "high": 101.0, "low": 99.0, "close": 100.5, "volume": 1.0})


@pytest.mark.parametrize("name", ["../../outside.csv.gz", "/abs/outside.csv.gz", "sub/data-0.csv.gz", ".."])
def test_a_cache_meta_file_field_cannot_point_outside_its_folder(tmp_path, name):
    root = tmp_path / "cache"
    cache = MarketCache(root)
    key = CacheKey("mem", "BTC/USDT", "bars", "1h")
    table, _ = cache.write(key, bars(5), [(T0, T0 + 5 * H)])
    folder = key.folder(root)
    meta = json.loads((folder / "meta.json").read_text())
    # a valid data file outside the folder, with the checksum the meta names
    outside = (folder / name) if not name.startswith("/") else Path(name)
    if name not in ("..",) and not name.startswith("/"):
        outside.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(table.path, outside)
    meta["file"] = name
    (folder / "meta.json").write_text(json.dumps(meta))
    assert cache.read(key) is None
    assert "data file" in cache.notes[-1] and repr(name) in cache.notes[-1], cache.notes
    if name not in ("..",) and not name.startswith("/"):
        assert outside.is_file()  # not read, not removed
