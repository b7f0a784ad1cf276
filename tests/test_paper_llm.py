"""One path for the LLM strategy: a replay of recorded bars and headlines through the paper daemon
(online predictions, one per bar and per headline) gives the backtest's orders, fills, equity,
signals and predictions, on the tiny random backbone; and a daemon killed mid-run resumes to the
same record."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from engine.cli import main
from engine.feeds.sample import generate_sample_market
from engine.session import load_settings
from tests.llm_helpers import torch  # noqa: F401  (skips this module without the llm extra)
from tests.test_llm_backtest import TRADING
from tests.test_paper import record

ROOT = Path(__file__).resolve().parents[1]
TINY = {"llm.backbone": '"tiny"', "sample.bars": "1300", "llm.train_fraction": "0.9",
        "llm.regressor.optim.max_steps": "2", "llm.regressor.max_train_samples": "32",
        "llm.regressor.max_val_samples": "16", **TRADING}  # a sentiment adapter that learns, so the runs trade


def sets(values: dict[str, str]) -> list[str]:
    return [f for key, value in values.items() for f in ("--set", f"{key}={value}")]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> dict[str, object]:
    """The sample market written as a bar file and a headline file, and a sentiment adapter trained
    on its labelled headlines by a first backtest (files have no labels)."""
    root = tmp_path_factory.mktemp("llm-replay")
    cache = root / "llm"
    config = load_settings(ROOT / "config.toml", [f"{k}={v}" for k, v in TINY.items()])
    market = generate_sample_market(config.sample)
    s = market.bars
    bars = root / "SYNUSDT.csv"
    rows = ["timestamp,open,high,low,close,volume"] + [
        f"{int(t)},{o!r},{h!r},{lo!r},{c!r},{v!r}" for t, o, h, lo, c, v in
        zip(s.ts_open.tolist(), s.open.tolist(), s.high.tolist(), s.low.tolist(), s.close.tolist(), s.volume.tolist())]
    bars.write_text("\n".join(rows) + "\n")
    news = root / "news.csv"
    lines = ["published,headline"] + [
        f"{datetime.fromtimestamp(n.ts_event / 1000, UTC).isoformat(timespec='milliseconds')},\"{n.headline}\""
        for n in market.news]
    news.write_text("\n".join(lines) + "\n")
    first = subprocess.run([sys.executable, "-m", "engine", "backtest", "--strategy", "llm_signal", "--json",
                            "--no-progress", *sets({**TINY, "llm.cache_dir": f'"{cache}"'}),
                            "--set", f'store.url="sqlite:///{root / "first.db"}"', "--set", 'logging.file=""'],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    sentiment = json.loads(first.stdout)["checkpoints"]["sentiment"]["folder"]
    return {"bars": bars, "news": news, "cache": cache, "sentiment": sentiment, "root": root}


def flags(rec: dict, db: Path) -> list[str]:
    return ["--strategy", "llm_signal", "--news", str(rec["news"]), "--symbol", "SYN/USDT", "--json",
            *sets({**TINY, "llm.cache_dir": f'"{rec["cache"]}"', "llm.sentiment_checkpoint": f'"{rec["sentiment"]}"',
                   "store.url": f'"sqlite:///{db}"'})]


def llm_record(db: Path, run_id: str) -> dict[str, list[tuple]]:
    out = record(db, run_id)
    conn = sqlite3.connect(db)
    try:
        pk = conn.execute("select pk from runs where run_id = ?", (run_id,)).fetchone()[0]
        out["signals"] = conn.execute("select ts_event, value, confidence, components from signals where run_pk = ? "
                                      "order by ts_event, id", (pk,)).fetchall()
        out["predictions"] = conn.execute("select ts_event, kind, value, uncertainty, probabilities, confidence, "
                                          "input_text from predictions where run_pk = ? order by ts_event, kind, id",
                                          (pk,)).fetchall()
    finally:
        conn.close()
    return out


def test_llm_replay_through_the_daemon_equals_the_online_backtest(recorded, tmp_path, capsys):
    db = tmp_path / "runs.db"
    capsys.readouterr()
    assert main(["backtest", "--data", str(recorded["bars"]), "--set", 'llm.signal_source="online"',
                 *flags(recorded, db)]) == 0
    backtest = json.loads(capsys.readouterr().out)
    assert main(["paper", "start", "--replay", str(recorded["bars"]), *flags(recorded, db)]) == 0
    out = capsys.readouterr()
    paper = json.loads(out.out)
    assert paper["signal_source"] == "online" and "online signals" in out.err
    assert backtest["signals"] > 50 and backtest["news"] > 10
    assert backtest["fills"] > 0  # it trades, so equal orders and fills mean the same decisions, not none
    for key in ("bars", "news", "orders", "fills", "final_equity", "fees", "metrics", "signals", "signal_actions",
                "trade_period"):
        assert paper[key] == backtest[key], key
    a, b = llm_record(db, backtest["run_id"]), llm_record(db, paper["run_id"])
    for table in ("orders", "fills", "equity", "signals", "predictions"):
        assert a[table] == b[table], table


def test_llm_daemon_killed_mid_run_resumes_to_the_same_record(recorded, tmp_path):
    def start(db: Path, crash: str = "") -> subprocess.CompletedProcess:
        import os

        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("ENGINE_CRASH_AT", None)
        if crash:
            env["ENGINE_CRASH_AT"] = crash
        return subprocess.run([sys.executable, "-m", "engine", "paper", "start", "--replay", str(recorded["bars"]),
                               *flags(recorded, db), "--set", 'logging.file=""'],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)

    clean_db, crashed_db = tmp_path / "clean.db", tmp_path / "crashed.db"
    clean = start(clean_db)
    assert clean.returncode == 0, clean.stderr
    for point in ("bar_processed:40", "mid_checkpoint:30"):
        died = start(crashed_db, point)
        assert died.returncode == -signal.SIGKILL, died.stderr
    resumed = start(crashed_db)
    assert resumed.returncode == 0 and "resuming run" in resumed.stderr, resumed.stderr
    assert json.loads(clean.stdout)["fills"] > 0
    a = llm_record(clean_db, json.loads(clean.stdout)["run_id"])
    b = llm_record(crashed_db, json.loads(resumed.stdout)["run_id"])
    for table in ("orders", "fills", "equity", "signals", "predictions"):
        assert a[table] == b[table], table
