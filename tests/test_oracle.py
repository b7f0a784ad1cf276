"""The oracle bound: `backtest --strategy llm_signal --oracle` trades the synthetic sample's TRUE headline
tones through the same calibration, threshold search and cost gate as the LLM, clearly labelled; it
beats the costs on the default sample, and it is refused everywhere it could be mistaken for a
strategy (a config file, paper and live, any other market)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from engine.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--set", "store.enabled=false", "--set", 'logging.file=""']


def write_bars(path: Path) -> Path:
    rows = ["timestamp,open,high,low,close,volume"] + [
        f"{1_700_000_000_000 + i * 3_600_000},100,101,99,{100 + (i % 7) * 0.1:.1f},10" for i in range(400)]
    path.write_text("\n".join(rows) + "\n")
    return path


def oracle(capsys, *more: str) -> dict:
    assert main(["backtest", "--strategy", "llm_signal", "--oracle", "--json", "--no-progress", "--config",
                 str(ROOT / "config.toml"), *QUIET, *more]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_oracle_beats_the_costs_on_the_default_sample_and_says_what_it_is(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    summary = oracle(capsys)
    metrics = summary["metrics"]
    assert summary["data"].startswith("synthetic:") and summary["bars"] == 1200  # the default run's traded part
    assert summary["fills"] > 0 and metrics["total_return"] >= 0.10  # after every cost
    assert metrics["gross_return"] > metrics["total_return"]  # costs were paid
    assert summary["signal_source"] == "oracle" and "upper bound, not a strategy" in summary["oracle"]
    assert any("ORACLE" in note for note in summary["notes"]) and summary["checkpoints"] == {}
    calibration = summary["calibration"]
    assert calibration["news"]["value"] > 0 and calibration["regression"]["value"] == 0.0  # it has no regression
    assert summary["gate"]["enter_threshold"] == calibration["enter_threshold"]["chosen"]
    assert set(calibration["enter_threshold"]["after_cost_returns"]) == {"1", "1.25", "1.5", "2", "3"}
    gate = summary["gate"]
    assert gate["bars"] == summary["signals"] and gate["share"] == pytest.approx(gate["passed"] / gate["bars"])
    assert 0 < gate["passed"] < gate["bars"]


def test_the_table_labels_the_oracle_and_ends_with_the_cost_gate(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    args = ["backtest", "--strategy", "llm_signal", "--oracle", "--no-progress", "--config", str(ROOT / "config.toml"),
            *QUIET, "--set", "sample.bars=2000"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "signal source                oracle -- ORACLE: knows the true tones" in out
    assert out.rstrip().splitlines()[-1].startswith("cost gate ")


def test_a_config_file_cannot_make_the_oracle_the_signal_source(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "oracle.toml"
    config.write_text('[run]\nstrategy = "llm_signal"\n\n[llm]\nsignal_source = "oracle"\n')
    assert main(["backtest", "--config", str(config), *QUIET]) == 2
    err = capsys.readouterr().err
    assert 'signal_source = "oracle" cannot be set in a config' in err and "pass --oracle" in err
    assert main(["backtest", "--strategy", "llm_signal", *QUIET, "--set", 'llm.signal_source="oracle"']) == 2
    assert "pass --oracle" in capsys.readouterr().err


def test_paper_and_live_refuse_the_oracle(capsys, monkeypatch, tmp_path):
    from engine.session import load_settings, prepare_backtest
    from tests.live_helpers import KEY, SECRET  # the fake exchange's test keys

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BYBIT_API_KEY", KEY)
    monkeypatch.setenv("BYBIT_API_SECRET", SECRET)
    bars = write_bars(tmp_path / "SYNUSDT.csv")
    for mode, more in (("paper", []), ("live", ["--api-url", "http://127.0.0.1:9"])):  # refused before any request
        assert main([mode, "start", *more, "--strategy", "llm_signal", "--replay", str(bars), "--set", 'logging.file=""',
                     "--set", f'store.url="sqlite:///{tmp_path / "runs.db"}"',
                     "--set", 'llm.signal_source="oracle"']) == 2
        assert "pass --oracle" in capsys.readouterr().err
    # and the daemons' own preparation (online) refuses the flag, whatever the config says
    config = load_settings(ROOT / "config.toml", ['run.strategy="llm_signal"', "store.enabled=false"])
    with pytest.raises(ConfigError, match="never for paper or live trading"):
        prepare_backtest(config, online=True, oracle=True)


def test_the_oracle_is_refused_on_any_other_market(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    bars = write_bars(tmp_path / "bars.csv")
    assert main(["backtest", "--strategy", "llm_signal", "--oracle", "--data", str(bars), *QUIET]) == 2
    assert "only the synthetic sample market has" in capsys.readouterr().err
    assert main(["backtest", "--oracle", *QUIET]) == 2  # not the LLM strategy
    assert "has no oracle signal source (add --strategy with one that has: llm_signal)" in capsys.readouterr().err
    assert main(["backtest", "--strategy", "llm_signal", "--oracle", "--walk-forward", *QUIET]) == 2
    assert "drop it or --walk-forward" in capsys.readouterr().err


def test_the_oracle_runs_without_loading_torch(tmp_path):
    """The oracle needs no model: the backtest, and the [llm] settings it decodes (models.settings), import
    no torch. Run in a fresh interpreter, since this test session may have loaded torch already."""
    args = ["backtest", "--strategy", "llm_signal", "--oracle", "--json", "--no-progress", "--config",
            str(ROOT / "config.toml"), *QUIET]
    code = f"import sys; from engine.cli import main; rc = main({args!r}); print(rc, 'torch' in sys.modules, file=sys.stderr)"
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1] == "0 False"
    assert json.loads(run.stdout)["signal_source"] == "oracle"


def test_the_llm_strategy_without_its_extra_names_what_to_install(capsys, monkeypatch, tmp_path):
    import models.settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(models.settings, "LLM_MODULES", ("torch", "no_such_module_for_this_test"))
    assert main(["backtest", "--strategy", "llm_signal", "--no-progress", *QUIET]) == 2
    err = capsys.readouterr().err
    assert "needs the llm extra (no_such_module_for_this_test is missing): pip install -e '.[llm]'" in err
