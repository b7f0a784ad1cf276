"""``python -m research.weighting``: one training run per sample weighting, compared on validation
(tiny random backbone on the synthetic sample, seconds), and the rule that chooses."""

from __future__ import annotations

import json

import pytest

from research.weighting import choose, main
from tests.llm_helpers import torch  # noqa: F401 - skips the module without the llm extra


def test_each_weighting_trains_on_the_same_split_and_the_table_says_which_to_keep(tmp_path, capsys):
    assert main(["--data", "", "--backbone", "tiny", "--max-train-samples", "48", "--test-samples", "16",
                 "--out", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    runs = {r["weighting"]: r for r in result["runs"]}
    assert list(runs) == ["none", "sqrt_density", "density"]
    assert {r["train_samples"] for r in runs.values()} == {48}
    assert len({r["validation"]["n"] for r in runs.values()}) == 1  # the same validation split
    assert runs["none"]["effective_sample_size"] == pytest.approx(1.0)
    # the density weights keep less of the sample than their square root, which keeps less than none
    assert runs["density"]["effective_sample_size"] < runs["sqrt_density"]["effective_sample_size"] < 1.0
    assert result["choice"] in runs and all((tmp_path / w / "config.json").is_file() for w in runs)
    assert all(r["test"]["n"] == 16 for r in runs.values())


def row(weighting, ic, n=600.0):
    return {"weighting": weighting, "validation": {"ic": ic, "n": n}}


def test_a_weighting_is_chosen_only_when_its_ic_beats_none_by_two_standard_errors():
    se = (6 / 600) ** 0.5  # 0.1
    assert choose([row("none", 0.01), row("density", 0.01 + 1.9 * se)], 6)[0] == "none"
    assert choose([row("none", 0.01), row("density", 0.01 + 2.1 * se)], 6)[0] == "density"
    assert choose([row("none", 0.05), row("density", -0.2)], 6)[0] == "none"
    choice, why, used = choose([row("none", 0.0), row("sqrt_density", 0.05)], 6)
    assert choice == "none" and used == pytest.approx(se) and "600 targets" in why
