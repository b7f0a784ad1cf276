"""Training loop, trainers, checkpoints and evaluation metrics (tiny random Llamas, toy data)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.datasets import sample_headlines
from models.predictor import Predictor
from models.prompts import PromptTemplate
from models.settings import BackboneConfig, OptimSettings
from models.training.checkpoint import CheckpointError, read_checkpoint
from models.training.evaluation import (
    classification_metrics,
    fit_ridge,
    macro_f1_interval,
    predict_ridge,
    regression_metrics,
    ridge_baseline,
    spearman,
    tfidf_logistic_probabilities,
    wilson_interval,
)
from models.training.loop import schedule_factor
from models.training.regressor_config import RegressorTrainingConfig
from models.training.regressor_trainer import (
    BarArrays,
    RegressorTrainer,
    evaluate_regressor,
    prepare_regression_data,
)
from models.training.sentiment_config import SentimentTrainingConfig
from models.training.sentiment_trainer import (
    SentimentTrainer,
    evaluate_sentiment,
    load_sentiment,
    prepare_sentiment_data,
)
from tests.llm_helpers import TINY, torch

TINY_BACKBONE = BackboneConfig(source="tiny", tiny=TINY)


def test_schedule_warms_up_then_decays():
    assert [schedule_factor(s, 10, 2, "cosine") for s in (0, 1)] == [0.5, 1.0]
    assert schedule_factor(2, 10, 2, "cosine") == pytest.approx(1.0)
    assert schedule_factor(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert schedule_factor(6, 10, 2, "linear") == pytest.approx(0.5)
    assert schedule_factor(9, 10, 2, "constant") == 1.0
    assert OptimSettings(epochs=2, batch_size=10).total_steps(95) == 20
    assert OptimSettings(epochs=2, batch_size=10, max_steps=7).total_steps(95) == 7
    with pytest.raises(ValueError, match="schedule must be one of"):
        OptimSettings(schedule="step")


def test_classification_metrics_on_a_known_confusion():
    labels = np.array([0, 0, 1, 1, 1, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 2, 2]]
    m = classification_metrics(probs, labels)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 1], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    f1 = [2 / 3, 2 / 3, 2 / 3]  # bearish: p 1, r .5; neutral: p 2/3, r 2/3; bullish: p .5, r 1
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    assert m["weighted_f1"] == pytest.approx(np.dot(f1, [2, 3, 1]) / 6)
    lo, hi = m["accuracy_ci95"]
    assert 0 < lo < 4 / 6 < hi < 1 and m["macro_f1_ci95"][0] <= m["macro_f1"] <= m["macro_f1_ci95"][1]


def test_intervals_match_the_textbook_and_narrow_with_more_texts():
    # Wilson 95% for 85 of 100 (Agresti & Coull's formula): [0.7672, 0.9069]
    assert wilson_interval(85, 100) == pytest.approx([0.7672, 0.9069], abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 2000)
    predicted = np.where(rng.random(2000) < 0.8, labels, rng.integers(0, 3, 2000))
    small, large = macro_f1_interval(labels[:200], predicted[:200], 3), macro_f1_interval(labels, predicted, 3)
    assert large[1] - large[0] < (small[1] - small[0]) * 0.6  # ~ 1/sqrt(10) of the width, with bootstrap noise
    point = classification_metrics(np.eye(3)[predicted], labels)["macro_f1"]
    assert large[0] < point < large[1] and large[1] - large[0] < 0.06
    assert macro_f1_interval(labels, predicted, 3) == large  # seeded
    assert macro_f1_interval(labels, labels, 3) == [1.0, 1.0]


def test_tfidf_baseline_learns_words_and_chooses_c_on_validation():
    words = {0: ["loss", "falls", "cut"], 1: ["flat", "holds", "meeting"], 2: ["profit", "rises", "record"]}
    rng = np.random.default_rng(1)

    def texts(n):
        labels = rng.integers(0, 3, n)
        return [f"company {rng.choice(words[y])} {rng.choice(words[y])} today" for y in labels], labels

    (train, y_train), (val, y_val), (test, y_test) = texts(120), texts(40), texts(60)
    probs, c = tfidf_logistic_probabilities(train, y_train, val, y_val, test)
    assert probs.shape == (60, 3) and np.allclose(probs.sum(axis=1), 1) and c > 0
    assert np.mean(probs.argmax(axis=1) == y_test) == 1.0
    shuffled, _ = tfidf_logistic_probabilities(train, rng.permutation(y_train), val, y_val, test)
    assert np.mean(shuffled.argmax(axis=1) == y_test) < 0.6  # nothing to learn from shuffled labels


def test_regression_metrics_and_ridge():
    target = np.array([1.0, -1.0, 2.0, -2.0])
    m = regression_metrics(np.array([0.5, -0.5, -1.0, -1.0]), np.array([1.0, 1.0, 1.0, 1.0]), target)
    assert m["hit_rate"] == pytest.approx(0.75)
    assert m["mse"] == pytest.approx((0.25 + 0.25 + 9 + 1) / 4)
    assert m["coverage_50"] == pytest.approx(0.5) and m["coverage_90"] == pytest.approx(0.75)
    assert np.isnan(regression_metrics(np.zeros(4), None, target)["hit_rate"])
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 45])) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3))
    y = 0.5 + x @ np.array([1.0, -2.0, 0.0]) + rng.normal(0, 0.1, 500)
    np.testing.assert_allclose(fit_ridge(x, y, 1e-6), [0.5, 1.0, -2.0, 0.0], atol=0.02)
    report = ridge_baseline(x[:300], y[:300], x[300:400], y[300:400], x[400:], y[400:])
    assert report["ic"] > 0.95 and report["penalty"] <= 10
    assert predict_ridge(np.array([1.0, 2.0]), np.array([[3.0]]))[0] == 7.0


def _toy_headlines(n: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    words = {-1: ["crash", "plunge", "fraud", "loss"], 0: ["meeting", "report", "update", "notes"],
             1: ["surge", "record", "soar", "profit"]}
    tones = rng.integers(-1, 2, n)
    return sample_headlines([(f"{rng.choice(words[t])} {rng.choice(words[t])}", int(t)) for t in tones], source="toy")


def forbid_merging(monkeypatch) -> None:
    """Fail the test if anything builds merged weights: a trainer validates through the LoRA layers,
    since a merged copy (~0.4 GB for SmolLM2) would be rebuilt at every validation."""
    def no_merge(self, task):
        pytest.fail("the trainer merged the adapter into a copy of the weights (~0.4 GB for SmolLM2)")

    monkeypatch.setattr(Predictor, "merged_weights", no_merge)


def test_sentiment_trainer_learns_a_separable_task_and_round_trips(tmp_path, monkeypatch):
    forbid_merging(monkeypatch)
    config = SentimentTrainingConfig(
        backbone=TINY_BACKBONE, template=PromptTemplate("Be brief.", "Classify."), optim=OptimSettings(epochs=10, max_steps=60, batch_size=16, lr=5e-3, head_lr=1e-2,
                                                    eval_every=30, warmup_ratio=0.1, patience=0))
    data = prepare_sentiment_data(_toy_headlines(), config)
    assert len(data.test) == 75 and set(data.test.texts) - set(data.train.texts)  # held out
    metrics = SentimentTrainer(config).train(data, tmp_path / "ckpt", describe={"path": "toy"})
    monkeypatch.undo()  # the evaluation and the reloaded predictor below merge, as inference should
    assert metrics["validation"]["accuracy"] > 0.8
    assert metrics["temperature"] > 0 and len(metrics["fit"]["history"]) == 2
    checkpoint = read_checkpoint(tmp_path / "ckpt", "sentiment")
    assert checkpoint.data_fingerprint["test_size"] == 75
    assert checkpoint.config["data"] == {"path": "toy"}
    assert checkpoint.config["config"]["template"]["instruction"] == "Classify."
    assert (tmp_path / "ckpt" / "sentiment" / "adapter_model.safetensors").is_file()
    report = evaluate_sentiment(tmp_path / "ckpt", _toy_headlines(), baselines=("majority", "tfidf"))
    assert report["model"]["accuracy"] > 0.8 > report["baselines"]["majority"]["accuracy"]
    tfidf = report["baselines"]["tfidf_logistic"]  # the toy's words give the class away
    assert tfidf["accuracy"] > 0.9 and tfidf["train_samples"] == len(data.train) and tfidf["n"] == 75
    assert json.loads((tmp_path / "ckpt" / "evaluation.json").read_text())["model"]["accuracy"] == report["model"]["accuracy"]
    predictor, _ = load_sentiment(tmp_path / "ckpt")
    assert predictor.fingerprint("sentiment") == checkpoint.config["predictor_fingerprint"]
    with pytest.raises(CheckpointError, match="not what"):
        evaluate_sentiment(tmp_path / "ckpt", _toy_headlines(seed=1))
    with pytest.raises(CheckpointError, match="holds a 'sentiment' checkpoint, not a 'regressor'"):
        read_checkpoint(tmp_path / "ckpt", "regressor")


def _bars(n: int = 420, seed: int = 0) -> BarArrays:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    high, low = np.maximum(open_, close) * 1.002, np.minimum(open_, close) * 0.998
    ts = 1_704_067_200_000 + np.arange(n) * 3_600_000
    return BarArrays("TOY/USDT", "1h", 3_600_000, ts, open_, high, low, close, rng.uniform(1, 2, n), source="toy")


def test_regression_data_is_split_in_time_with_a_purge_and_train_only_scaling():
    config = RegressorTrainingConfig(backbone=TINY_BACKBONE, input="text")
    data = prepare_regression_data(_bars(900), config)
    bars_of = {k: data.samples.bar_index[v] for k, v in data.splits.items()}
    assert config.purge_bars == 101  # the features' 100-bar look-back + the 1-bar horizon
    assert bars_of["train"].max() + config.purge_bars < bars_of["val"].min()
    assert bars_of["val"].max() + config.purge_bars < bars_of["test"].min()
    assert data.texts[0].startswith("Asset: TOY/USDT, 1h bars.\nFeatures: ")
    assert len(data.weights) == len(data.splits["train"]) and data.weights.mean() == pytest.approx(1.0)
    median = np.median(data.samples.features[data.splits["train"]], axis=0)
    np.testing.assert_allclose(data.scaler.center, median)


@pytest.mark.parametrize("input_", ["encoder", "text"])
def test_regressor_trainer_writes_a_checkpoint_and_evaluates_against_baselines(tmp_path, monkeypatch, input_):
    config = RegressorTrainingConfig(backbone=TINY_BACKBONE, splits=(0.5, 0.25, 0.25), purge=21, input=input_,
                                     max_val_samples=32, optim=OptimSettings(max_steps=3, epochs=1, batch_size=8,
                                                                             eval_every=1, patience=0))
    bars = _bars(460)
    forbid_merging(monkeypatch)
    metrics = RegressorTrainer(config).train(bars, tmp_path / "reg", describe={"path": "toy.csv"})
    monkeypatch.undo()  # the evaluation below merges, as inference should
    assert metrics["fit"]["steps"] == 3 and len(metrics["fit"]["history"]) == 3
    assert np.isfinite(metrics["validation"]["nll"])
    names = {p.name for p in (tmp_path / "reg").iterdir()}
    assert {"config.json", "data_fingerprint.json", "feature_scaler.json", "metrics.json", "regressor"} <= names
    report = evaluate_regressor(tmp_path / "reg", bars, max_samples=24, baseline_train_samples=24)
    assert set(report["baselines"]) == {"ridge", "zero", "random_backbone"}
    for metrics in (report["model"], *report["baselines"].values()):
        assert {"mse", "mae", "hit_rate", "ic", "coverage_50", "coverage_90"} <= set(metrics)
    with pytest.raises(CheckpointError, match="not the ones"):
        evaluate_regressor(tmp_path / "reg", _bars(460, seed=1), baselines=())


def test_training_is_reproducible_with_a_seed(tmp_path):
    config = SentimentTrainingConfig(backbone=TINY_BACKBONE, optim=OptimSettings(max_steps=4, epochs=1, batch_size=8))
    data = prepare_sentiment_data(_toy_headlines(120), config)
    runs = [SentimentTrainer(config).train(data, tmp_path / f"run{k}") for k in range(2)]
    assert runs[0]["fit"]["history"] == runs[1]["fit"]["history"]
    prints = [json.loads((tmp_path / f"run{k}" / "config.json").read_text())["predictor_fingerprint"] for k in range(2)]
    assert prints[0] == prints[1]
    assert torch.get_num_threads() >= 1


def test_without_a_progress_bar_training_logs_its_progress(tmp_path, monkeypatch, caplog):
    import logging

    import models.training.loop as loop

    monkeypatch.setattr(loop, "NOTE_EVERY_S", 0.0)  # a line after every step
    config = SentimentTrainingConfig(
        backbone=TINY_BACKBONE, template=PromptTemplate("Be brief.", "Classify."),
        optim=OptimSettings(max_steps=3, epochs=0, batch_size=8, eval_every=3, patience=0))
    with caplog.at_level(logging.INFO, logger="models.training.loop"):
        SentimentTrainer(config, progress=False).train(prepare_sentiment_data(_toy_headlines(), config), tmp_path / "c")
    notes = [r.getMessage() for r in caplog.records if "s/step" in r.getMessage()]
    assert [n.split(":")[0] for n in notes] == ["sentiment step 1/3", "sentiment step 2/3", "sentiment step 3/3"]
    assert "min to go" in notes[0]
