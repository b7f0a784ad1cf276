"""``python -m engine train|evaluate regressor|sentiment`` end to end on the tiny backbone."""

from __future__ import annotations

import json

import pytest

from engine.cli import main
from tests.llm_helpers import torch  # noqa: F401 - skips the module without the llm extra

FAST = ["--backbone", "tiny", "--max-steps", "2", "--batch-size", "4", "--json", "--no-progress"]


def _run(capsys, *args: str) -> dict:
    assert main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


def test_train_and_evaluate_sentiment_on_the_sample_headlines(capsys, tmp_path):
    out = tmp_path / "sentiment"
    trained = _run(capsys, "train", "sentiment", *FAST, "--max-train-samples", "40", "--out", str(out))
    assert trained["task"] == "sentiment" and trained["fit"]["steps"] == 2
    assert trained["train_samples"] == 40
    report = _run(capsys, "evaluate", "sentiment", "--checkpoint", str(out), "--json", "--baselines", "majority")
    assert report["split"] == "test" and report["data"] == "synthetic"
    assert {"accuracy", "macro_f1", "weighted_f1", "confusion_matrix"} <= set(report["model"])
    assert sum(map(sum, report["model"]["confusion_matrix"])) == report["model"]["n"]
    assert "majority" in report["baselines"]


def test_train_sentiment_from_a_csv_with_a_label_map_and_a_test_file(capsys, tmp_path):
    rows = "text,label\n" + "".join(f"$X item {i} went {'down' if i % 3 == 0 else 'up'},{i % 3}\n" for i in range(60))
    (tmp_path / "train.csv").write_text(rows)
    (tmp_path / "test.csv").write_text(rows.replace("item", "thing"))
    out = tmp_path / "ckpt"
    _run(capsys, "train", "sentiment", *FAST, "--data", str(tmp_path / "train.csv"), "--label-map", "twitter",
         "--test", str(tmp_path / "test.csv"), "--out", str(out))
    report = _run(capsys, "evaluate", "sentiment", "--checkpoint", str(out), "--json", "--baselines", "none")
    assert report["model"]["n"] == 60 and report["baselines"] == {}


def test_train_and_evaluate_regressor_on_sample_bars(capsys, tmp_path):
    out = tmp_path / "regressor"
    trained = _run(capsys, "train", "regressor", *FAST, "--end", "2024-01-24", "--max-val-samples", "16",
                   "--out", str(out))
    assert trained["task"] == "regressor" and "nll" in trained["validation"]
    report = _run(capsys, "evaluate", "regressor", "--checkpoint", str(out), "--json", "--max-samples", "16",
                  "--baselines", "ridge")
    assert report["model"]["n"] == 16 and {"ridge", "zero"} == set(report["baselines"])
    assert main(["evaluate", "regressor", "--checkpoint", str(out), "--max-samples", "8", "--baselines", "none"]) == 0
    assert "hit_rate" in capsys.readouterr().out


def test_train_regressor_flags_choose_the_input_weighting_and_clip(capsys, tmp_path):
    out = tmp_path / "text"
    trained = _run(capsys, "train", "regressor", *FAST, "--end", "2024-01-24", "--max-val-samples", "16",
                   "--input", "text", "--out", str(out))
    assert "input" not in trained  # the text path's metrics
    out = tmp_path / "encoder"
    trained = _run(capsys, "train", "regressor", *FAST, "--end", "2024-01-24", "--max-val-samples", "16",
                   "--input", "encoder", "--window", "6", "--virtual-tokens", "2", "--weighting", "sqrt_density",
                   "--target-clip", "4", "--horizon", "6", "--beta", "1", "--select-metric", "ic",
                   "--out", str(out))
    assert trained["input"] == "encoder" and trained["data"]["weighting"] == "sqrt_density"
    assert trained["data"]["intercept_shift"] != 0.0  # the encoder refits its intercept by default
    config = json.loads((out / "config.json").read_text())["config"]
    assert (config["window"], config["virtual_tokens"], config["target_clip"], config["horizon"]) == (6, 2, 4.0, 6)
    assert (config["beta"], config["select_metric"], config["refit_intercept"]) == (1.0, "ic", None)
    off = _run(capsys, "train", "regressor", *FAST, "--end", "2024-01-24", "--max-val-samples", "16",
               "--input", "encoder", "--window", "6", "--virtual-tokens", "2", "--no-refit-intercept",
               "--no-center-target", "--out", str(tmp_path / "no_refit"))
    assert off["data"]["intercept_shift"] == 0.0 and off["data"]["target_center"] == 0.0
    assert trained["data"]["target_center"] != 0.0


@pytest.mark.parametrize(("args", "message"), [
    (["evaluate", "sentiment", "--checkpoint", "{tmp}/nothing"], "not a checkpoint folder"),
    (["train", "sentiment", "--backbone", "tiny", "--precision", "nf4", "--out", "{tmp}/x"], "CUDA GPU"),
    (["train", "sentiment", "--backbone", "tiny", "--data", "{tmp}/missing.csv"], "no such file"),
    (["train", "regressor", "--backbone", "no/such/dir/"], "neither a folder"),
    (["train", "sentiment", "--backbone", "tiny", "--lora-rank", "0"], "LoRA rank"),
])
def test_bad_inputs_exit_2_with_a_clear_message(capsys, tmp_path, args, message):
    if "nf4" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main([a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    assert message in capsys.readouterr().err
