"""The faster training paths: length-bucketed batches, LoRA on the top layers only, the frozen lower
layers' states computed once (equal to the whole forward), and a learning-rate floor."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from models.backbone import load_backbone
from models.predictor import Predictor
from models.prompts import PromptTemplate
from models.settings import BackboneConfig, LoraSettings, OptimSettings
from models.training.checkpoint import read_checkpoint
from models.training.inputs import TaskInputs
from models.training.loop import epoch_batches, fit, micro_batches, schedule_factor
from models.training.sentiment_config import SentimentTrainingConfig
from models.training.sentiment_trainer import SentimentTrainer, load_sentiment, prepare_sentiment_data
from tests.llm_helpers import TINY, randomise_adapters, torch
from tests.test_training import _toy_headlines

FOUR = dataclasses.replace(TINY, num_hidden_layers=4)
FOUR_LAYERS = BackboneConfig(source="tiny", tiny=FOUR)
TEXTS = ["Shares of the company surged after record quarterly profit", "Bank cuts outlook", "flat",
         "The board met on Tuesday to discuss the annual report and the dividend", "Oil plunges 8%"]


# -- batches --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bucketed", [False, True])
def test_every_sample_is_used_exactly_once_per_epoch(bucketed):
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, 203) if bucketed else None
    batches = epoch_batches(203, 16, np.random.default_rng(1), lengths, chunk_batches=4)
    assert len(batches) == math.ceil(203 / 16)
    assert sorted(np.concatenate(batches).tolist()) == list(range(203))
    assert sum(len(b) < 16 for b in batches) == 1  # only one short batch, whatever the chunks


def test_bucketed_batches_hold_similar_lengths_but_come_in_random_order():
    lengths = np.random.default_rng(0).integers(5, 80, 800)
    random = epoch_batches(800, 16, np.random.default_rng(1))
    bucketed = epoch_batches(800, 16, np.random.default_rng(1), lengths, chunk_batches=10)

    def padding(batches):
        return 1 - sum(lengths[b].sum() for b in batches) / sum(lengths[b].max() * len(b) for b in batches)

    assert padding(bucketed) < 0.5 * padding(random)
    widths = [int(lengths[b].max()) for b in bucketed]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)  # the batches are shuffled
    again = epoch_batches(800, 16, np.random.default_rng(1), lengths, chunk_batches=10)
    assert all((a == b).all() for a, b in zip(bucketed, again, strict=True))  # seeded


def test_fit_with_lengths_draws_bucketed_epochs(tmp_path):
    predictor = Predictor(load_backbone(FOUR_LAYERS))
    predictor.add_task("sentiment", LoraSettings(dropout=0.0))
    lengths = np.random.default_rng(0).integers(3, 30, 40)
    seen: list[np.ndarray] = []

    def batch_loss(index):
        seen.append(index)
        return sum(p.sum() for p in predictor.lora_parameters("sentiment")) * 0.0 + torch.tensor(1.0, requires_grad=True)

    settings = OptimSettings(epochs=2, batch_size=8, patience=0, bucket_chunk=2)
    result = fit(predictor, "sentiment", 40, batch_loss, lambda: {"accuracy": 0.5}, "accuracy", settings,
                 higher_is_better=True, lengths=lengths)
    assert result.steps == 10
    for epoch in (seen[:5], seen[5:]):
        assert sorted(np.concatenate(epoch).tolist()) == list(range(40))
        assert all(lengths[b].max() - lengths[b].min() <= lengths.max() - lengths.min() for b in epoch)
    with pytest.raises(ValueError, match="3 lengths for 40 training samples"):
        fit(predictor, "sentiment", 40, batch_loss, lambda: {"accuracy": 0.5}, "accuracy", settings,
            higher_is_better=True, lengths=lengths[:3])


def test_a_training_set_smaller_than_one_bucket_chunk_gets_random_batches():
    """Sorting a set smaller than a chunk would give every batch one length (and, where length goes
    with the label, one class): such a set is drawn in plain random batches instead."""
    predictor = Predictor(load_backbone(FOUR_LAYERS))
    predictor.add_task("sentiment", LoraSettings(dropout=0.0))
    lengths = np.arange(40) // 4 + 3  # strongly ordered lengths
    seen: list[np.ndarray] = []

    def batch_loss(index):
        seen.append(index)
        return sum(p.sum() for p in predictor.lora_parameters("sentiment")) * 0.0 + torch.tensor(1.0, requires_grad=True)

    settings = OptimSettings(epochs=1, batch_size=8, patience=0, bucket_chunk=10)  # a chunk: 80 samples > 40
    fit(predictor, "sentiment", 40, batch_loss, lambda: {"accuracy": 0.5}, "accuracy", settings,
        higher_is_better=True, lengths=lengths)
    expected = np.random.default_rng(settings.seed).permutation(40)
    np.testing.assert_array_equal(np.concatenate(seen), expected)


@pytest.mark.parametrize("tie_key, best_step", [(None, 1), ("macro_f1", 3)])
def test_early_stopping_breaks_a_tie_on_the_score_by_the_tie_key(tie_key, best_step):
    """Accuracy over a few hundred texts ties often (PhraseBank: 0.848 at steps 140, 210 and 280 while
    macro-F1 rose): the tie goes to the better macro-F1, not to the first."""
    predictor = Predictor(load_backbone(FOUR_LAYERS))
    predictor.add_task("sentiment", LoraSettings(dropout=0.0))
    scores = iter([{"accuracy": 0.8, "macro_f1": 0.70}, {"accuracy": 0.8, "macro_f1": 0.60},
                   {"accuracy": 0.8, "macro_f1": 0.75}, {"accuracy": 0.7, "macro_f1": 0.90}])

    def batch_loss(index):
        return sum(p.sum() for p in predictor.lora_parameters("sentiment")) * 0.0 + torch.tensor(1.0, requires_grad=True)

    settings = OptimSettings(max_steps=4, epochs=0, batch_size=8, eval_every=1, patience=0)
    result = fit(predictor, "sentiment", 16, batch_loss, lambda: next(scores), "accuracy", settings,
                 higher_is_better=True, tie_key=tie_key)
    assert (result.steps, result.best_step, result.best_score) == (4, best_step, 0.8)


def test_the_schedule_decays_to_its_floor_not_to_zero():
    assert schedule_factor(99, 100, 0, "cosine") == pytest.approx(0.0, abs=1e-3)
    assert schedule_factor(99, 100, 0, "cosine", floor=0.1) == pytest.approx(0.1, abs=1e-3)
    assert schedule_factor(0, 100, 0, "linear", floor=0.1) == 1.0
    assert schedule_factor(50, 100, 0, "linear", floor=0.2) == pytest.approx(0.2 + 0.8 * 0.5)


# -- LoRA on the top layers, lower states cached --------------------------------------------------------
def _top_predictor(top: int = 2, seed: int = 0) -> Predictor:
    predictor = Predictor(load_backbone(dataclasses.replace(FOUR_LAYERS, seed=seed)))
    predictor.add_task("sentiment", LoraSettings(top_layers=top, dropout=0.0), seed=seed)
    predictor.add_task("regressor", LoraSettings(top_layers=top, dropout=0.0), seed=seed + 1)
    randomise_adapters(predictor, seed)
    return predictor


def test_top_layers_put_lora_on_those_layers_only():
    predictor = _top_predictor(top=2)
    layers = {int(n.split(".layers.")[1].split(".")[0]) for n, _ in predictor.model.named_parameters() if "lora_" in n}
    assert layers == {2, 3}
    every = Predictor(load_backbone(FOUR_LAYERS))
    every.add_task("sentiment", LoraSettings(top_layers=5))  # more than the model has: every layer
    assert {int(n.split(".layers.")[1].split(".")[0]) for n, _ in every.model.named_parameters()
            if "lora_" in n} == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="top_layers must be >= 0"):
        LoraSettings(top_layers=-1)


@pytest.mark.parametrize("task", ["sentiment", "regressor"])
def test_cached_lower_states_equal_the_whole_forward_and_its_gradients(task):
    predictor = _top_predictor()
    suffixes = predictor.encoders[task].encode(TEXTS)
    lower = predictor.lower_states(task, suffixes, batch_size=2)  # batches of mixed lengths
    index = [4, 0, 2, 1, 3]
    with torch.no_grad():
        whole = predictor.states(task, [suffixes[i] for i in index], use_prefix_cache=False).values
        cached = predictor.states_from_lower(lower, index).values
    assert torch.allclose(cached, whole, atol=1e-5, rtol=0)

    def grads(states):
        out = predictor.heads[task](states)
        loss = (out[0] if isinstance(out, tuple) else out).square().sum()
        for p in predictor.lora_parameters(task):
            p.grad = None
        loss.backward()
        return [p.grad.clone() for p in predictor.lora_parameters(task)]

    reference = grads(predictor.states(task, [suffixes[i] for i in index], grad=True, use_prefix_cache=False))
    fast = grads(predictor.states_from_lower(lower, index, grad=True))
    assert len(fast) == len(reference) and all(g.abs().sum() > 0 for g in reference)
    for a, b in zip(fast, reference, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_lower_states_need_an_adapter_on_the_top_layers_only():
    predictor = Predictor(load_backbone(FOUR_LAYERS))
    predictor.add_task("sentiment", LoraSettings())
    with pytest.raises(ValueError, match="covers every layer"):
        predictor.lower_states("sentiment", predictor.encoders["sentiment"].encode(TEXTS))
    inputs = TaskInputs(predictor, "sentiment", predictor.encoders["sentiment"].encode(TEXTS), cache_lower=True)
    assert inputs.path == "whole model" and inputs.cache_bytes() == 0
    top = _top_predictor(top=1)
    lower = top.lower_states("sentiment", top.encoders["sentiment"].encode(TEXTS))
    assert lower.start == 3 and lower.nbytes() > 0
    other = _top_predictor(top=2)
    with pytest.raises(ValueError, match="these lower states end at layer 3, the sentiment adapter starts at 2"):
        other.states_from_lower(lower, [0])


def test_a_top_layers_adapter_trains_on_cached_states_and_reloads_exactly(tmp_path):
    config = SentimentTrainingConfig(
        backbone=FOUR_LAYERS, template=PromptTemplate("Be brief.", "Classify."),
        lora=LoraSettings(top_layers=2, dropout=0.0),
        optim=OptimSettings(epochs=10, max_steps=60, batch_size=16, lr=5e-3, head_lr=1e-2, eval_every=30,
                            warmup_ratio=0.1, patience=0, min_lr_ratio=0.1))
    data = prepare_sentiment_data(_toy_headlines(), config)
    metrics = SentimentTrainer(config).train(data, tmp_path / "ckpt")
    assert metrics["inputs"]["path"] == "cached lower states" and metrics["inputs"]["lower_states_mb"] > 0
    assert metrics["validation"]["accuracy"] > 0.8  # it learns through the cached path
    checkpoint = read_checkpoint(tmp_path / "ckpt", "sentiment")
    predictor, _ = load_sentiment(tmp_path / "ckpt")
    assert predictor.lora["sentiment"].top_layers == 2
    assert predictor.fingerprint("sentiment") == checkpoint.config["predictor_fingerprint"]
    texts = [f"Headline: {t}" for t in data.test.texts[:12]]
    again, _ = load_sentiment(tmp_path / "ckpt")
    assert np.array_equal(predictor.predict_sentiment(texts), again.predict_sentiment(texts))


def test_cached_and_whole_model_training_take_the_same_steps(tmp_path):
    """The same seed, data and settings: the loss curve of the cached path follows the whole model's."""
    base = SentimentTrainingConfig(
        backbone=FOUR_LAYERS, lora=LoraSettings(top_layers=2, dropout=0.0),
        optim=OptimSettings(max_steps=6, epochs=1, batch_size=8, patience=0, eval_every=3))
    data = prepare_sentiment_data(_toy_headlines(120), base)
    runs = {}
    for cache in (True, False):
        config = dataclasses.replace(base, optim=dataclasses.replace(base.optim, cache_lower_states=cache))
        runs[cache] = SentimentTrainer(config).train(data, tmp_path / f"run-{cache}")
    fast, slow = (runs[c]["fit"]["history"] for c in (True, False))
    assert runs[True]["inputs"]["path"] == "cached lower states" and runs[False]["inputs"]["path"] == "whole model"
    for a, b in zip(fast, slow, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["log_loss"] == pytest.approx(b["log_loss"], rel=1e-4)


# -- micro-batches (memory) -----------------------------------------------------------------------------
def test_micro_batches_hold_every_sample_once_within_the_token_budget():
    lengths = np.array([3, 40, 7, 12, 90, 25, 5, 33])
    index = np.array([6, 1, 4, 0, 3])
    assert [p.tolist() for p in micro_batches(index, lengths, 0)] == [index.tolist()]  # 0: never split
    assert [p.tolist() for p in micro_batches(index, lengths, 5 * 90)] == [index.tolist()]  # fits
    parts = micro_batches(index, lengths, 100)
    assert sorted(np.concatenate(parts).tolist()) == sorted(index.tolist())
    assert all(len(p) * lengths[p].max() <= 100 or len(p) == 1 for p in parts)
    assert [p.tolist() for p in parts] == [[4], [1], [3], [6], [0]]  # 90 alone, so 40 + 12 also (5 even parts)
    assert [p.tolist() for p in micro_batches(index, lengths, 180)] == [[4, 1], [3, 6], [0]]  # even, longest first
    assert micro_batches(index, None, 10)[0] is index  # no lengths (fixed-shape input): one pass


@pytest.mark.parametrize("weighted", [False, True])
def test_a_split_batch_gives_the_one_pass_loss_and_gradients(weighted):
    """Micro-batches with the shared prefix: the same loss and LoRA/head gradients as one pass."""
    from models.training.loop import _forward_backward

    predictor = Predictor(load_backbone(FOUR_LAYERS))
    predictor.add_task("sentiment", LoraSettings(dropout=0.0))
    randomise_adapters(predictor)
    suffixes = predictor.encoders["sentiment"].encode(TEXTS * 2)
    lengths = np.array([len(s) for s in suffixes])
    labels = torch.tensor([0, 1, 2, 1, 0] * 2)
    weights = np.linspace(0.5, 2.0, len(suffixes)) if weighted else None
    head = predictor.heads["sentiment"]

    def batch_loss(index):
        losses = torch.nn.functional.cross_entropy(head(predictor.states("sentiment", [suffixes[i] for i in index],
                                                                         grad=True)), labels[index], reduction="none")
        if weights is None:
            return losses.mean()
        w = torch.as_tensor(weights[index], dtype=losses.dtype)
        return (losses * w).sum() / w.sum()

    params = predictor.lora_parameters("sentiment") + list(head.parameters())

    def run(parts):
        for p in params:
            p.grad = None
        loss = _forward_backward(predictor, "sentiment", index, batch_loss, parts, weights)
        return loss, [p.grad.clone() for p in params]

    index = np.arange(len(suffixes))
    parts = micro_batches(index, lengths, int(lengths.max()) * 3)
    assert len(parts) >= 3
    one_loss, one = run([index])
    split_loss, split = run(parts)
    assert split_loss == pytest.approx(one_loss, rel=1e-5)
    assert all(g.abs().sum() > 0 for g in one)
    for a, b in zip(split, one, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    assert not predictor._shared_prefix  # left behind by nothing


def test_training_with_a_small_token_budget_follows_the_unsplit_run(tmp_path):
    from models.settings import SentimentHeadConfig

    # head dropout off: with it, the parts draw other masks than the whole batch (the same distribution)
    base = SentimentTrainingConfig(backbone=FOUR_LAYERS, lora=LoraSettings(dropout=0.0),
                                   head=SentimentHeadConfig(dropout=0.0),
                                   optim=OptimSettings(max_steps=4, epochs=1, batch_size=8, patience=0, eval_every=2,
                                                       max_batch_tokens=0))
    data = prepare_sentiment_data(_toy_headlines(120), base)
    runs = [SentimentTrainer(dataclasses.replace(base, optim=dataclasses.replace(base.optim, max_batch_tokens=t)))
            .train(data, tmp_path / f"run-{t}") for t in (0, 20)]
    for a, b in zip(*(r["fit"]["history"] for r in runs), strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["log_loss"] == pytest.approx(b["log_loss"], rel=1e-4)


# -- recomputed activations (memory) --------------------------------------------------------------------
def _saved_bytes(predictor, run) -> int:
    """Bytes of the tensors autograd keeps for the backward pass while ``run`` executes, not counting
    the model's own weights (which are kept by reference)."""
    weights = {t.untyped_storage().data_ptr() for t in predictor.model.parameters()}
    seen: set[int] = set()
    total = 0

    def pack(t):
        nonlocal total
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights and ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return total


def test_recomputed_activations_give_the_same_loss_and_gradients_for_less_memory():
    predictor = Predictor(load_backbone(FOUR_LAYERS))
    predictor.add_task("sentiment", LoraSettings(dropout=0.0))
    randomise_adapters(predictor)
    suffixes = predictor.encoders["sentiment"].encode(TEXTS * 2)
    labels = torch.tensor([0, 1, 2, 1, 0] * 2)
    head = predictor.heads["sentiment"]
    head.eval()  # no head dropout: the same masks are not the point here
    params = predictor.lora_parameters("sentiment") + list(head.parameters())
    results, holder = {}, {}

    def forward():
        holder["loss"] = torch.nn.functional.cross_entropy(
            head(predictor.states("sentiment", suffixes, grad=True)), labels)

    for setting in (False, True):
        predictor.recompute = setting
        for p in params:
            p.grad = None
        saved = _saved_bytes(predictor, forward)
        holder["loss"].backward()
        results[setting] = (holder["loss"].item(), [p.grad.clone() for p in params], saved)
    off, on = results[False], results[True]
    assert on[0] == off[0]
    assert all(g.abs().sum() > 0 for g in off[1])
    assert all(torch.equal(a, b) for a, b in zip(on[1], off[1], strict=True))  # bit for bit
    assert on[2] < 0.35 * off[2], (on[2], off[2])
    with torch.no_grad():  # inference does not read the setting
        recomputing = predictor.states("sentiment", suffixes).values
        predictor.recompute = False
        assert torch.equal(recomputing, predictor.states("sentiment", suffixes).values)


def _budget_pass(predictor, task, run, budget):
    """Loss, gradients, saved bytes and the layer split of one training pass under ``budget`` bytes
    (None: keep every layer; 0: recompute every layer)."""
    predictor.activation_budget = budget
    params = predictor.lora_parameters(task) + list(predictor.heads[task].parameters())
    for p in params:
        p.grad = None
    holder = {}

    def forward():
        holder["loss"] = run()

    saved = _saved_bytes(predictor, forward)
    holder["loss"].backward()
    return holder["loss"].item(), [p.grad.clone() for p in params], saved, dict(predictor.last_pass)


@pytest.mark.parametrize("path", ["whole model", "cached lower states"])
def test_an_activation_budget_recomputes_only_the_layers_that_do_not_fit(path):
    """Between keeping every layer and recomputing every layer: the pass keeps layers while they fit in
    the budget, recomputes the rest, and gives the same loss and gradients bit for bit, on both training
    paths; a longer batch recomputes more layers under the same budget."""
    cached = path == "cached lower states"
    predictor = Predictor(load_backbone(dataclasses.replace(FOUR_LAYERS, tiny=dataclasses.replace(FOUR, num_hidden_layers=6))))
    predictor.add_task("sentiment", LoraSettings(dropout=0.0, top_layers=4 if cached else 0))
    randomise_adapters(predictor)
    head = predictor.heads["sentiment"]
    head.eval()
    inputs = TaskInputs(predictor, "sentiment", predictor.encoders["sentiment"].encode(TEXTS * 4), cache_lower=cached)
    assert inputs.path == path
    labels = torch.tensor([0, 1, 2, 1, 0] * 4)
    index = list(range(20))

    def loss(rows=index):
        return torch.nn.functional.cross_entropy(head(inputs.states(rows, grad=True)), labels[rows])

    plain = _budget_pass(predictor, "sentiment", loss, None)  # no policy: the model's own forward
    kept = _budget_pass(predictor, "sentiment", loss, 2**62)  # layer by layer, every one kept
    layers = 4 if cached else 6
    assert kept[3]["kept_layers"] == layers and kept[3]["recomputed_layers"] == 0
    per_layer = kept[3]["kept_bytes"] / layers
    budget = int(2.5 * per_layer)
    mixed = _budget_pass(predictor, "sentiment", loss, budget)
    assert mixed[3]["kept_layers"] == 2 and mixed[3]["recomputed_layers"] == layers - 2, mixed[3]
    assert mixed[3]["kept_bytes"] <= budget
    everything = _budget_pass(predictor, "sentiment", loss, 0)
    assert everything[3]["kept_layers"] == 0 and everything[3]["recomputed_layers"] == layers
    for other in (kept, mixed, everything):
        assert other[0] == plain[0]
        assert all(torch.equal(a, b) for a, b in zip(other[1], plain[1], strict=True))  # bit for bit
    assert all(g.abs().sum() > 0 for g in plain[1])
    # the runner counts what its kept layers hold (autograd's innermost hook sees those tensors, so an
    # outer count sees only the rest): together they are what the plain forward holds
    assert kept[2] + kept[3]["kept_bytes"] == pytest.approx(plain[2], rel=0.02)
    assert everything[3]["kept_bytes"] < mixed[3]["kept_bytes"] < kept[3]["kept_bytes"]
    short = _budget_pass(predictor, "sentiment", lambda: loss(index[:5]), budget)  # a quarter of the tokens
    assert short[3]["kept_layers"] == layers and short[3]["recomputed_layers"] == 0
    predictor.activation_budget = None


def test_an_activation_budget_is_a_whole_number_of_mb():
    assert OptimSettings(activation_budget_mb=1024).activation_budget_mb == 1024
    for bad in (-1, 1.5, True, "1024"):
        with pytest.raises(ValueError, match="activation_budget_mb must be a whole number of MB"):
            OptimSettings(activation_budget_mb=bad)


def test_training_with_recomputation_takes_the_same_steps(tmp_path):
    from models.settings import SentimentHeadConfig

    base = SentimentTrainingConfig(backbone=FOUR_LAYERS, lora=LoraSettings(dropout=0.0),
                                   head=SentimentHeadConfig(dropout=0.1),
                                   optim=OptimSettings(max_steps=4, epochs=1, batch_size=8, patience=0, eval_every=2,
                                                       max_batch_tokens=20))
    data = prepare_sentiment_data(_toy_headlines(120), base)
    modes = [{"recompute": False}, {"recompute": True}, {"activation_budget_mb": 1}]
    runs = [SentimentTrainer(dataclasses.replace(base, optim=dataclasses.replace(base.optim, **mode)))
            .train(data, tmp_path / f"run-{k}") for k, mode in enumerate(modes)]
    assert runs[0]["fit"]["history"] == runs[1]["fit"]["history"]  # head dropout, split batches and all
    assert runs[0]["fit"]["history"] == runs[2]["fit"]["history"]
    with pytest.raises(ValueError, match="recompute must be true or false"):
        OptimSettings(recompute="full")


# -- class weights ----------------------------------------------------------------------------------------
def test_class_weights_follow_the_training_counts():
    from models.training.sentiment_config import class_weights

    labels = np.array([0] * 10 + [1] * 60 + [2] * 30)
    balanced = class_weights(labels, 3, "balanced")
    assert np.allclose(balanced, [100 / 30, 100 / 180, 100 / 90])
    assert np.allclose(np.bincount(labels) * balanced, 100 / 3)  # every class the same in total
    assert np.allclose(class_weights(labels, 3, "sqrt"), np.sqrt(balanced))
    assert np.array_equal(class_weights(labels, 3, "none"), np.ones(3))
    assert np.allclose(class_weights(np.array([1, 1, 2]), 3, "balanced"), [1.5, 0.75, 1.5])  # absent: the largest
    with pytest.raises(ValueError, match="class_weights must be one of none, balanced, sqrt"):
        SentimentTrainingConfig(class_weights="inverse")


def test_class_weights_weigh_the_loss_and_a_split_batch_adds_up(tmp_path):
    """Weighted by class, a run trains differently from an unweighted one; split into micro-batches
    (max_batch_tokens) it takes the same steps as unsplit, since the weights go per sample."""
    from models.settings import SentimentHeadConfig

    base = SentimentTrainingConfig(backbone=FOUR_LAYERS, lora=LoraSettings(dropout=0.0),
                                   head=SentimentHeadConfig(dropout=0.0), class_weights="balanced",
                                   optim=OptimSettings(max_steps=3, epochs=1, batch_size=8, patience=0, eval_every=3))
    headlines = _toy_headlines(120)
    data = prepare_sentiment_data(headlines, base)
    runs = {name: SentimentTrainer(config).train(data, tmp_path / name)["fit"]["history"] for name, config in (
        ("weighted", base),
        ("split", dataclasses.replace(base, optim=dataclasses.replace(base.optim, max_batch_tokens=20))),
        ("unweighted", dataclasses.replace(base, class_weights="none")))}
    assert runs["weighted"][0]["train_loss"] == pytest.approx(runs["split"][0]["train_loss"], rel=1e-5)
    assert runs["weighted"][0]["log_loss"] == pytest.approx(runs["split"][0]["log_loss"], rel=1e-5)
    assert runs["weighted"][0]["train_loss"] != pytest.approx(runs["unweighted"][0]["train_loss"], rel=1e-4)
