"""The short soak of ``benchmarks/soak_live.py`` (the long one's figures are in the issue note):
random faults at a rate of 0.3, partial fills, exchange-side cancels and random ``kill -9``
restarts, and then nothing lost, doubled or disagreeing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_soak():
    spec = importlib.util.spec_from_file_location("soak_live", ROOT / "benchmarks" / "soak_live.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_short_soak_with_faults_and_kills_loses_and_doubles_nothing(tmp_path):
    soak = load_soak()
    result = soak.soak(tmp_path, orders=80, fault_rate=0.3, seed=5, kills_per_100=4, say=lambda line: None)
    assert result["faults"] > 50 and result["restarts"] >= 2 and result["orders"] >= 40, result
    assert result["resent_orders"] > 0  # the faults reached the order path, not only the reads
    assert (result["duplicates"], result["lost_fills"], result["mismatches"]) == (0, 0, 0), result
