"""Ray as the executor (`--executor ray`): sweeps, Optuna searches and walk-forward folds give the same
results as the serial run, point for point, and every worker records into the same store, SQLite or
PostgreSQL. One local Ray of 2 CPUs serves the module (starting one takes seconds)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from engine.cli import main
from engine.errors import ConfigError
from research.executors import RayExecutor, executor
from tests.test_sweep import FAST, SLOW, run_json, sweep_args

ray = pytest.importorskip("ray", reason="the Ray tests need the ray extra: pip install -e '.[ray]' (.ci/run installs it)")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_session():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024,
                 log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def _no_volatile(rows: list[dict]) -> list[dict]:
    """A sweep's rows without what differs between any two runs of the same point (ids, seconds)."""
    return [{k: v for k, v in r.items() if k not in ("run_id", "seconds")} for r in rows]


def test_pieces_come_back_in_input_order_and_a_pieces_error_is_raised_as_itself(ray_session):
    ex = RayExecutor(ray_session)
    seen: list[int] = []

    def slow_square(x: int) -> tuple[int, int]:
        import time

        time.sleep(0.3 if x == 0 else 0.0)  # the first finishes last
        return x * x, os.getpid()

    out = ex.map(slow_square, [0, 1, 2, 3], each=lambda k, r: seen.append(k))
    assert [v for v, _ in out] == [0, 1, 4, 9]
    assert sorted(seen) == [0, 1, 2, 3] and seen[-1] == 0
    assert os.getpid() not in {pid for _, pid in out}  # they ran in Ray's workers, not here

    def refuse(x: int) -> int:
        raise ConfigError(f"point {x}: bad setting")

    with pytest.raises(ConfigError, match="point 1: bad setting"):
        ex.map(refuse, [1])


def test_the_executor_joins_a_running_ray_and_leaves_it_running(ray_session):
    with executor("ray") as ex:
        assert ex.name == "ray"
    assert ray_session.is_initialized()
    with pytest.raises(ConfigError, match="--workers must be at least 1"), executor("ray", workers=0):
        pass


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_a_sweep_on_ray_equals_the_serial_sweep_and_records_into_one_store(tmp_path, capsys, monkeypatch, backend,
                                                                            ray_session):
    monkeypatch.chdir(tmp_path)
    store = backend.new()
    common = ["--grid", f"{FAST}=5,10,15", "--grid", f"{SLOW}=30,45", "--set", store.setting]
    serial = run_json(capsys, sweep_args(tmp_path / "serial", *common))
    on_ray = run_json(capsys, sweep_args(tmp_path / "ray", *common, "--executor", "ray"))

    assert on_ray["executor"] == "ray" and serial["executor"] == "serial"
    assert _no_volatile(on_ray["rows"]) == _no_volatile(serial["rows"])  # point for point, to the last bit
    assert len({r["metrics"]["sharpe"] for r in serial["rows"]}) == 6
    assert on_ray["best"]["params"] == serial["best"]["params"]

    ids = [r["run_id"] for r in serial["rows"] + on_ray["rows"]]
    assert len(set(ids)) == 12
    recorded = dict(store.rows("SELECT run_id, status FROM runs"))
    assert {i: recorded.get(i) for i in ids} == dict.fromkeys(ids, "completed")
    # every run holds its whole journal: as many fills in the store as its summary counts
    fills = dict(store.rows("SELECT r.run_id, count(f.id) FROM runs r LEFT JOIN fills f ON f.run_pk = r.pk "
                            "GROUP BY r.run_id"))
    assert [fills[r["run_id"]] for r in on_ray["rows"]] == [r["fills"] for r in serial["rows"]]


def test_optuna_on_ray_proposes_and_scores_the_same_points(tmp_path, capsys, monkeypatch, isolated_store,
                                                          ray_session):
    pytest.importorskip("optuna", reason="--optuna needs the sweep extra: pip install -e '.[sweep]'")
    monkeypatch.chdir(tmp_path)
    common = ["--optuna", "6", "--batch", "2", "--range", f"{FAST}=3..20", "--range", f"{SLOW}=25..80"]
    serial = run_json(capsys, sweep_args(tmp_path / "s", *common))
    on_ray = run_json(capsys, sweep_args(tmp_path / "r", *common, "--executor", "ray"))
    assert _no_volatile(on_ray["rows"]) == _no_volatile(serial["rows"])
    assert on_ray["best"] == {**serial["best"], "run_ids": on_ray["best"]["run_ids"]}


def test_a_failing_point_on_ray_fails_the_sweep_with_its_message(tmp_path, capsys, monkeypatch, isolated_store,
                                                                  ray_session):
    monkeypatch.chdir(tmp_path)
    broken = tmp_path / "broken.csv"
    broken.write_text("timestamp,open,high,low,close,volume\n1700000000000,1,2,0.5,1.5,10\n1700000000000,1,2,0.5,oops,10\n")
    assert main(sweep_args(tmp_path, "--grid", f"{FAST}=5,10", "--data", str(broken), "--executor", "ray")) == 2
    err = capsys.readouterr().err
    assert "broken.csv" in err and "Traceback" not in err


def test_walk_forward_folds_on_ray_equal_the_serial_folds(tmp_path, capsys, monkeypatch, isolated_store, ray_session):
    pytest.importorskip("torch", reason="the walk-forward needs the llm extra: pip install -e '.[llm]'")
    from tests.test_llm_backtest import pipeline_args

    monkeypatch.chdir(tmp_path)
    sets = {"llm.walk_forward.train_bars": "1000", "llm.walk_forward.test_bars": "100",
            "llm.walk_forward.in_sample_bars": "60", "llm.walk_forward.max_folds": "2",
            "store.reports_dir": f'"{tmp_path / "reports"}"',
            # a perpetual (it can short) traded for free with no size threshold, and no coefficient of the
            # expected move shrunk to 0: the tiny model's forecasts are small and of one sign, its fits are
            # rarely significant (a fold with min_t = 2 was seen to make no trade on an AVX2 CPU), and the
            # folds must trade for their equality to mean something
            "llm.calibration.min_t": "0.0", "instrument.contract": '"linear_perp"', "costs.funding_rate": "0.0",
            "costs.taker_fee": "0.0",
            "costs.maker_fee": "0.0", "costs.slippage_bps": "0.0", "costs.half_spread_bps": "0.0",
            "strategies.llm_signal.min_change": "0.0", "strategies.llm_signal.full_size_at": "0.01"}
    extra = [f for key, value in sets.items() for f in ("--set", f"{key}={value}")]
    results = {}
    for name, more in (("serial", []), ("ray", ["--executor", "ray"])):  # each trains its own adapters
        assert main(pipeline_args(tmp_path / f"llm-{name}", *extra, "--walk-forward", *more)) == 0
        results[name] = json.loads(capsys.readouterr().out)

    def comparable(result: dict) -> list[dict]:
        return [{"fold": r["fold"], "train": r["train"],
                 "trained": {t: c["trained"] for t, c in r["checkpoints"].items()},
                 **{s: {k: v for k, v in r[s].items() if k != "run_id"} for s in ("in_sample", "out_of_sample")}}
                for r in result["folds"]]

    serial, on_ray = comparable(results["serial"]), comparable(results["ray"])
    assert all(all(f["trained"].values()) for f in serial + on_ray)  # neither reused the other's checkpoints
    assert on_ray == serial
    assert all(f["out_of_sample"]["fills"] > 0 and f["in_sample"]["fills"] > 0 for f in serial)  # they trade
    assert results["ray"]["totals"] == results["serial"]["totals"]
    assert math.isfinite(results["ray"]["totals"]["out_of_sample"]["compounded_return"])
    assert Path(results["ray"]["chart"]).is_file()
