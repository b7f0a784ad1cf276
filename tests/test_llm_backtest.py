"""The default LLM pipeline end to end, on a tiny random backbone: `backtest --strategy llm_signal`
trains on the earlier part, trades only the later part, records every signal, and a second
identical run reuses the checkpoints and the cached predictions."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from engine.cli import main
from engine.feeds.sample import SampleMarketConfig, generate_sample_market
from engine.timeutil import parse_instant
from models.datasets import sample_headlines
from tests.llm_helpers import torch  # noqa: F401  (skips this module without the llm extra)
from tests.test_cli import REQUIRED

ROOT = Path(__file__).resolve().parents[1]
BARS, TRAIN_FRACTION = 1300, 0.9  # 1,170 bars to train on (the regressor's own time split needs ~800), 130 traded
# The tiny random backbone learns the sample's headline templates in ~300 steps (validation accuracy 0.79; at a
# few dozen steps it predicts one class and nothing trades), so the news coefficient of the calibration is
# significant and the strategy trades. The news windows (2 h half-life, 6 h look-back) suit the sample's 6-bar
# effect; the default 48 h look-back holds one position through the 130 bars.
TRADING = {"llm.sentiment.optim.epochs": "40", "llm.sentiment.optim.patience": "0",
           "llm.sentiment.max_train_samples": "0", "llm.sentiment.optim.lr": "0.003",
           "llm.sentiment.optim.head_lr": "0.01", "llm.aggregation.news_half_life_ms": "7200000",
           "llm.aggregation.news_lookback_ms": "21600000"}


def pipeline_args(cache: Path, *more: str) -> list[str]:
    sets = {"llm.backbone": '"tiny"', "llm.cache_dir": f'"{cache}"', "sample.bars": str(BARS),
            "llm.train_fraction": str(TRAIN_FRACTION), "llm.regressor.optim.max_steps": "2",
            "llm.regressor.max_train_samples": "32", "llm.regressor.max_val_samples": "16", **TRADING}
    flags = [f for key, value in sets.items() for f in ("--set", f"{key}={value}")]
    return ["backtest", "--strategy", "llm_signal", "--json", "--no-progress", "--config", str(ROOT / "config.toml"),
            *flags, *more]


def run_json(capsys, args: list[str]) -> tuple[dict, str]:
    assert main(args) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One checkpoint and prediction cache for the module: later tests reuse what the first trained."""
    return tmp_path_factory.mktemp("llm")


@pytest.mark.slow  # about a minute on 2 cores: trains twice and backtests three times
def test_default_pipeline_trains_on_the_earlier_part_and_trades_only_the_later_one(
        tmp_path, capsys, monkeypatch, isolated_store, cache):
    monkeypatch.chdir(tmp_path)
    first, err = run_json(capsys, pipeline_args(cache))
    assert "llm: fine-tuning the regressor" in err and "llm: predictions ready" in err  # progress on stderr

    # the summary: every usual key, plus which period trained and which traded
    assert first.keys() >= REQUIRED | {"signals", "train_period", "trade_period", "checkpoints", "predictions"}
    train, trade = first["train_period"], first["trade_period"]
    assert train["bars"] == round(TRAIN_FRACTION * BARS) and trade["bars"] == first["bars"] == BARS - train["bars"]
    assert train["end"] == trade["start"] == first["start"] and trade["end"] == first["end"]
    cut = parse_instant(trade["start"])
    assert first["news"] == trade["headlines"] > 0 and train["headlines"] > 0
    assert all(task["trained"] for task in first["checkpoints"].values())
    assert first["predictions"]["bars"] == trade["bars"] and first["predictions"]["regression_cached"] == 0

    # the checkpoints saw only the earlier part
    regressor = Path(first["checkpoints"]["regressor"]["folder"])
    sentiment = Path(first["checkpoints"]["sentiment"]["folder"])
    assert regressor.parent == sentiment.parent == cache / "checkpoints"
    seen = json.loads((regressor / "data_fingerprint.json").read_text())
    assert seen["bars"] == train["bars"] and max(seen[f"{s}_first_bar_ms"] for s in ("train", "val", "test")) < cut
    market = generate_sample_market(SampleMarketConfig(bars=BARS))
    earlier = [(n.headline, tone) for n, tone in zip(market.news, market.tones) if n.ts_event < cut]
    assert len(earlier) == train["headlines"]
    texts = json.loads((sentiment / "data_fingerprint.json").read_text())
    assert texts["all"] == sample_headlines(earlier).fingerprint()  # exactly the headlines before the cut

    # the store holds a signal per decision, all in the traded part, and the predictions behind them
    with sqlite3.connect(isolated_store) as db:
        (pk,) = db.execute("SELECT pk FROM runs WHERE run_id = ?", [first["run_id"]]).fetchone()
        signals = db.execute("SELECT COUNT(*), MIN(ts_event) FROM signals WHERE run_pk = ?", [pk]).fetchone()
        kinds = dict(db.execute("SELECT kind, COUNT(*) FROM predictions WHERE run_pk = ? GROUP BY kind", [pk]))
        first_news = db.execute("SELECT MIN(ts_event) FROM news_items WHERE run_pk = ?", [pk]).fetchone()[0]
        components = json.loads(db.execute("SELECT components FROM signals WHERE run_pk = ? LIMIT 1", [pk]).fetchone()[0])
    assert first["fills"] > 0 and first["orders"] >= first["fills"]  # it trades: the comparisons below mean something
    assert first["calibration"]["news"]["value"] != 0.0 and first["calibration"]["window"]["end"] == trade["start"]
    assert first["gate"]["bars"] == first["signals"] and 0 < first["gate"]["passed"] <= first["gate"]["bars"]
    assert signals[0] == first["signals"] == sum(first["signal_actions"].values()) > 0
    assert signals[1] > cut and first_news >= cut
    assert kinds == {"regression": first["signals"], "sentiment": first["news"]}
    assert {"signal", "regression", "decision"} <= components.keys()
    assert components["decision"]["round_trip_cost"] == pytest.approx(2 * (0.001 + 0.0001 + 0.0002))

    # a second identical run trains nothing and predicts nothing, and decides the same
    mtimes = {p: p.stat().st_mtime_ns for folder in (regressor, sentiment) for p in folder.rglob("*")}
    second, err = run_json(capsys, pipeline_args(cache))
    assert "fine-tuning" not in err and "reusing the regressor" in err
    assert not any(task["trained"] for task in second["checkpoints"].values())
    assert {t: c["folder"] for t, c in second["checkpoints"].items()} == {
        t: c["folder"] for t, c in first["checkpoints"].items()}
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert second["predictions"]["regression_cached"] == second["predictions"]["bars"]
    assert second["predictions"]["sentiment_cached"] == second["predictions"]["distinct_headlines"]
    for key in ("orders", "fills", "final_equity", "signals", "signal_actions", "train_period", "trade_period",
                "calibration", "gate"):
        assert second[key] == first[key], key

    # other training settings are another checkpoint
    third, _ = run_json(capsys, pipeline_args(cache, "--set", "llm.regressor.optim.lr=1e-3"))
    assert third["checkpoints"]["regressor"]["trained"] and not third["checkpoints"]["sentiment"]["trained"]
    assert third["checkpoints"]["regressor"]["folder"] != str(regressor)


def test_online_source_on_the_cli_matches_the_precomputed_run(tmp_path, capsys, monkeypatch, cache):
    monkeypatch.chdir(tmp_path)
    batch, _ = run_json(capsys, pipeline_args(cache))  # trained and predicted by the test above when it ran
    online, err = run_json(capsys, pipeline_args(cache, "--set", 'llm.signal_source="online"'))  # no cache: computed
    assert "online signals" in err and online["signal_source"] == "online"
    assert batch["fills"] > 0  # so that the two runs agree on trades, not on doing nothing
    for key in ("orders", "fills", "final_equity", "signals", "signal_actions", "calibration", "gate"):
        assert online[key] == batch[key], key
    assert main([a for a in pipeline_args(cache) if a != "--json"]) == 0  # the table says what trained and traded
    table = capsys.readouterr().out
    assert f"trained on                   {batch['train_period']['start']} -> {batch['train_period']['end']}" in table
    assert "regressor reused, sentiment reused" in table and f"signals                      {batch['signals']:,}" in table
    gate = batch["gate"]
    assert table.rstrip().splitlines()[-1].startswith(f"cost gate                    {gate['passed']:,} of "
                                                      f"{gate['bars']:,} bars passed")  # printed at the end


@pytest.mark.parametrize(("more", "message"), [
    (["--set", 'llm.regressor_checkpoint="nowhere"'],
     "llm.regressor_checkpoint = 'nowhere': nowhere is not a checkpoint folder"),
    (["--set", "llm.train_fraction=1.5"], "train_fraction must be in (0, 1)"),
    (["--set", "llm.train_fraction=0.999"], "llm.train_fraction = 0.999 leaves"),
    (["--set", "strategies.llm_signal.exit_threshold=2"], "exit_threshold must be in [0, enter_threshold)"),
    (["--set", "strategies.llm_signal.leverage=2"], "leverage = 2 needs a perpetual"),
    (["--set", "strategies.llm_signal.holding_bars=3"],
     "llm.regressor.horizon = 6 but strategies.llm_signal.holding_bars = 3"),
    (["--set", 'llm.backbone="no/such/model/here"'], "llm.backbone = 'no/such/model/here'"),
])
def test_bad_llm_settings_stop_with_the_setting_named(tmp_path, capsys, monkeypatch, more, message):
    monkeypatch.chdir(tmp_path)
    assert main(pipeline_args(tmp_path / "llm", "--set", "sample.bars=1300", *more)) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow  # two backtests on the tiny backbone, reusing the module's regressor
def test_a_given_regressor_reads_this_market_on_its_own_scale_when_asked(tmp_path, capsys, monkeypatch,
                                                                         isolated_store, cache):
    monkeypatch.chdir(tmp_path)
    first, _ = run_json(capsys, pipeline_args(cache))
    folder = first["checkpoints"]["regressor"]["folder"]
    given = ("--set", f'llm.regressor_checkpoint="{folder}"')
    kept, _ = run_json(capsys, pipeline_args(cache, *given))
    refit, _ = run_json(capsys, pipeline_args(cache, *given, "--set", 'llm.scaler="market"'))
    assert kept["checkpoints"]["regressor"]["scaler"] == "checkpoint"
    assert refit["checkpoints"]["regressor"]["scaler"] == \
        f"market: refitted on the {first['train_period']['bars']:,} bars before the cut"
    assert kept["fills"] == first["fills"]  # the checkpoint's own scaler: the run it was trained in, exactly
    assert refit["predictions"]["regression_cached"] == 0  # other scaled inputs: nothing from the cache
