"""Evaluation metrics for both tasks and the baselines an LLM has to beat.

Regression (on volatility-normalised next-period returns): MSE, MAE, directional hit rate, the
information coefficient (Spearman rank correlation of prediction and outcome) and the coverage of
the predicted 50% and 90% Gaussian intervals. Sentiment: accuracy, macro-F1, weighted F1, the
confusion matrix (rows: true class, columns: predicted) and the expected calibration error, with
95% intervals for accuracy (Wilson) and macro-F1 (a seeded bootstrap over the evaluated texts).

Baselines: ridge regression on the same sixteen scaled features (closed form, the penalty chosen on
the validation split), and the same head trained on the final states of a randomly initialised
backbone of the same architecture (no LoRA: what the head alone gets from random features). For
sentiment also TF-IDF word n-grams with logistic regression (scikit-learn), the small non-LLM model
that shows what the LLM adds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from models.datasets import SENTIMENT_LABELS

Z50, Z90 = 0.6744897501960817, 1.6448536269514722  # two-sided normal quantiles
Z95 = 1.959963984540054
BOOTSTRAP_DRAWS = 1000


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation with average ranks for ties; NaN when either side is constant."""
    import pandas as pd

    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def regression_metrics(mean: np.ndarray, std: np.ndarray | None, target: np.ndarray) -> dict[str, float]:
    mean, target = np.asarray(mean, dtype=np.float64), np.asarray(target, dtype=np.float64)
    error = mean - target
    called = (target != 0) & (mean != 0)  # a hit needs a direction on both sides
    out = {
        "n": float(len(target)),
        "mse": float(np.mean(error ** 2)),
        "mae": float(np.mean(np.abs(error))),
        "hit_rate": float(np.mean(np.sign(mean[called]) == np.sign(target[called]))) if called.any() else float("nan"),
        "ic": spearman(mean, target),
        "target_var": float(np.var(target)),
    }
    if std is not None:
        std = np.asarray(std, dtype=np.float64)
        out["coverage_50"] = float(np.mean(np.abs(error) <= Z50 * std))
        out["coverage_90"] = float(np.mean(np.abs(error) <= Z90 * std))
        out["nll"] = float(np.mean(0.5 * (np.log(2 * math.pi * std ** 2) + (error / std) ** 2)))
    return out


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray,
                           names: Sequence[str] = SENTIMENT_LABELS) -> dict[str, Any]:
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    k = len(names)
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {}
    f1s, support = [], confusion.sum(axis=1)
    for c, name in enumerate(names):
        tp = confusion[c, c]
        precision = tp / confusion[:, c].sum() if confusion[:, c].sum() else 0.0
        recall = tp / support[c] if support[c] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                           "support": int(support[c])}
        f1s.append(f1)
    present = support > 0
    return {
        "n": float(len(labels)),
        "accuracy": float(np.mean(predicted == labels)),
        "accuracy_ci95": wilson_interval(int(np.sum(predicted == labels)), len(labels)),
        "macro_f1": float(np.mean(np.array(f1s)[present])),
        "macro_f1_ci95": macro_f1_interval(labels, predicted, k),
        "weighted_f1": float(np.sum(np.array(f1s) * support) / support.sum()),
        "ece": expected_calibration_error(probabilities, labels),
        "log_loss": float(-np.mean(np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1)))),
        "confusion_matrix": confusion.tolist(),
        "labels": list(names),
        "per_class": per_class,
    }


def wilson_interval(successes: int, n: int, z: float = Z95) -> list[float]:
    """The Wilson score interval of a proportion (95% by default); [0, 1] when ``n`` is 0."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def macro_f1_of_confusions(confusions: np.ndarray) -> np.ndarray:
    """Macro-F1 of each (..., k, k) confusion matrix, over the classes present in it."""
    tp = np.diagonal(confusions, axis1=-2, axis2=-1).astype(np.float64)
    support, predicted = confusions.sum(axis=-1), confusions.sum(axis=-2)
    denominator = support + predicted  # 2tp / (2tp + fp + fn) = 2tp / (support + predicted)
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    present = support > 0
    return (f1 * present).sum(axis=-1) / np.maximum(present.sum(axis=-1), 1)


def macro_f1_interval(labels: np.ndarray, predicted: np.ndarray, k: int, *, draws: int = BOOTSTRAP_DRAWS,
                      seed: int = 0) -> list[float]:
    """The 2.5% and 97.5% quantiles of macro-F1 over ``draws`` seeded bootstrap resamples of the texts."""
    n = len(labels)
    if n == 0:
        return [0.0, 1.0]
    codes = np.asarray(labels, dtype=np.int64) * k + np.asarray(predicted, dtype=np.int64)
    sample = np.random.default_rng(seed).integers(0, n, size=(draws, n))
    offsets = (np.arange(draws) * k * k)[:, None]
    confusions = np.bincount((codes[sample] + offsets).ravel(), minlength=draws * k * k).reshape(draws, k, k)
    lo, hi = np.quantile(macro_f1_of_confusions(confusions), [0.025, 0.975])
    return [float(lo), float(hi)]


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


# ------------------------------------------------------------------------------------ baselines


def fit_ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> np.ndarray:
    """Coefficients (intercept first) of ridge regression; the intercept is not penalised."""
    design = np.column_stack([np.ones(len(x)), x])
    reg = penalty * np.eye(design.shape[1])
    reg[0, 0] = 0.0
    return np.linalg.solve(design.T @ design + reg, design.T @ y)


def predict_ridge(coef: np.ndarray, x: np.ndarray) -> np.ndarray:
    return coef[0] + x @ coef[1:]


def ridge_baseline(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                   x_test: np.ndarray, y_test: np.ndarray,
                   penalties: Sequence[float] = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)) -> dict[str, Any]:
    """Ridge on the scaled features; penalty by validation MSE; intervals from the training residual std."""
    scored = []
    for penalty in penalties:
        coef = fit_ridge(x_train, y_train, penalty)
        scored.append((float(np.mean((predict_ridge(coef, x_val) - y_val) ** 2)), penalty, coef))
    _, penalty, coef = min(scored, key=lambda item: item[0])
    residual_std = float(np.std(y_train - predict_ridge(coef, x_train)))
    mean = predict_ridge(coef, x_test)
    metrics = regression_metrics(mean, np.full(len(mean), residual_std), y_test)
    return {"penalty": penalty, **metrics}


def train_head_on_states(task: str, hidden_size: int, head_settings: dict | None, train_states: Any,
                         train_targets: np.ndarray, *, epochs: int = 30, lr: float = 1e-3, batch_size: int = 64,
                         seed: int = 0, loss_beta: float = 0.0, weights: np.ndarray | None = None) -> Any:
    """A fresh head of the task's kind trained on fixed states (a tensor (n, hidden))."""
    import torch

    from models.heads import TaskState, gaussian_nll, make_head

    torch.manual_seed(seed)
    head = make_head(task, hidden_size, head_settings)
    optimiser = torch.optim.AdamW(head.parameters(), lr=lr)
    targets = torch.as_tensor(train_targets)
    w = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    head.train()
    for _ in range(epochs):
        for index in torch.randperm(len(targets), generator=generator).split(batch_size):
            state = TaskState(task, train_states[index])
            if task == "regressor":
                mean, logvar = head(state)
                loss = gaussian_nll(mean, logvar, targets[index].float(), None if w is None else w[index], loss_beta)
            else:
                loss = torch.nn.functional.cross_entropy(head(state), targets[index].long())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    head.eval()
    return head


def random_backbone_config(backbone: Any) -> Any:
    """The same architecture with random weights (another seed for the already random ``tiny``)."""
    from dataclasses import replace

    if backbone.source == "tiny":
        return replace(backbone, seed=backbone.seed + 1000)
    return replace(backbone, random_init=True)


def bare_states(predictor: Any, task: str, texts: Sequence[str], batch_size: int) -> Any:
    """Last-token states of the task's prompts through a predictor whose adapter is still fresh
    (LoRA B = 0, so: the bare backbone), as a plain tensor a head can be trained on."""
    import torch

    suffixes = predictor.encoders[task].encode(list(texts))
    predictor.train_mode(task, False)
    out = []
    with torch.no_grad():  # not inference_mode: a head is trained on these afterwards
        for start in range(0, len(suffixes), batch_size):
            out.append(predictor.states(task, suffixes[start:start + batch_size]).values)
    return torch.cat(out) if out else torch.zeros(0, predictor.backbone.hidden_size)


def random_backbone_outputs(task: str, backbone_config: Any, head_settings: dict, train_texts: Sequence[str],
                            train_targets: np.ndarray, eval_texts: Sequence[str], *, batch_size: int = 32,
                            seed: int = 0, **train_kw: Any) -> Any:
    """Raw head outputs on ``eval_texts`` of the task's head trained on a random backbone's states:
    (mean, log-variance) for the regressor, logits for sentiment."""
    import torch

    from models.backbone import load_backbone
    from models.heads import TaskState
    from models.predictor import Predictor

    backbone = load_backbone(random_backbone_config(backbone_config))
    predictor = Predictor(backbone)
    predictor.add_task(task, seed=seed)
    states = bare_states(predictor, task, train_texts, batch_size)
    head = train_head_on_states(task, backbone.hidden_size, head_settings, states, train_targets, seed=seed, **train_kw)
    with torch.no_grad():
        return head(TaskState(task, bare_states(predictor, task, eval_texts, batch_size)))


TFIDF_C = (0.3, 1.0, 3.0, 10.0, 30.0)


def tfidf_logistic_probabilities(train_texts: Sequence[str], train_labels: np.ndarray, val_texts: Sequence[str],
                                 val_labels: np.ndarray, eval_texts: Sequence[str],
                                 c_values: Sequence[float] = TFIDF_C) -> tuple[np.ndarray, float]:
    """Class probabilities on ``eval_texts`` of TF-IDF word 1-2 grams (sublinear tf) with multinomial
    logistic regression, its inverse regularisation ``C`` chosen by validation accuracy; and that C."""
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise RuntimeError("the tfidf baseline needs scikit-learn: .venv/bin/pip install 'scikit-learn>=1.5' "
                           "(make setup installs it with the dev extra), or leave tfidf out of --baselines") from None
    vectoriser = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, lowercase=True)
    x_train = vectoriser.fit_transform(list(train_texts))
    x_val, x_eval = vectoriser.transform(list(val_texts)), vectoriser.transform(list(eval_texts))
    best: tuple[float, float, Any] | None = None
    for c in c_values:
        model = LogisticRegression(C=c, max_iter=5000).fit(x_train, train_labels)
        accuracy = float(np.mean(model.predict(x_val) == np.asarray(val_labels)))
        if best is None or accuracy > best[0]:
            best = (accuracy, c, model)
    assert best is not None
    _, c, model = best
    probabilities = np.zeros((x_eval.shape[0], len(SENTIMENT_LABELS)))
    probabilities[:, model.classes_] = model.predict_proba(x_eval)
    return probabilities, float(c)
