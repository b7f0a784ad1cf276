"""The predictor: two adapters on one backbone, shared-prefix path, save and reload (tiny Llamas)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from models.heads import AdapterMismatch
from models.predictor import Predictor, collate
from models.prompts import headline_text, regression_text
from models.settings import LoraSettings
from tests.llm_helpers import randomise_adapters, tiny_backbone, tiny_predictor, torch

FEATURES = np.random.default_rng(0).normal(0, 1.5, size=(3, 16)) * np.array([[1.0], [10.0], [0.1]])
REG_TEXTS = [regression_text(asset, "1h", f) for asset, f in zip(("BTC/USDT", "ETH/USDT", "SOL/USDT"), FEATURES)]
HEADLINES = [headline_text(h) for h in ("Shares jump after record quarter", "Regulator sues the company",
                                         "Company holds annual meeting", "Profit warning hits the stock")]


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return tiny_predictor(seed=0)


def test_the_first_adapter_raises_no_future_warning():
    backbone = tiny_backbone(4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # over pytest's filters: everything a plain run would print
        Predictor(backbone).add_task("regressor")
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []


def test_shared_prefix_path_agrees_with_the_per_sample_path(predictor):
    for task, texts in (("regressor", REG_TEXTS), ("sentiment", HEADLINES)):
        naive = predictor.predict_naive(task, texts)
        fast = predictor._predict(task, texts, batch_size=2, use_prefix_cache=True, cache=None)
        padded = predictor._predict(task, texts, batch_size=8, use_prefix_cache=False, cache=None)
        assert np.abs(naive - fast).max() < 1e-5
        assert np.abs(naive - padded).max() < 1e-5
    mean, std = predictor.predict_regression(REG_TEXTS)
    naive = predictor.predict_naive("regressor", REG_TEXTS)
    np.testing.assert_allclose(mean, naive[:, 0], atol=1e-5)
    np.testing.assert_allclose(std, np.exp(0.5 * naive[:, 1]), rtol=1e-5)
    probs = predictor.predict_sentiment(HEADLINES)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


def test_left_and_right_padding_give_the_same_last_token_state(predictor):
    suffixes = predictor.encoders["sentiment"].encode(HEADLINES)
    with torch.no_grad():
        right = predictor.states("sentiment", suffixes, use_prefix_cache=False).values
        left = predictor.states("sentiment", suffixes, use_prefix_cache=False, left_padding=True).values
        alone = torch.cat([predictor.states("sentiment", [s], use_prefix_cache=False).values for s in suffixes])
    assert torch.allclose(right, left, atol=1e-5)
    assert torch.allclose(right, alone, atol=1e-5)


def test_a_head_never_runs_on_the_other_adapters_states(predictor):
    suffixes = predictor.encoders["regressor"].encode(REG_TEXTS)
    with torch.no_grad():
        predictor.set_task("regressor")
        expected = predictor.regress(suffixes)[0]
        predictor.model.set_adapter("sentiment")  # someone switched the adapter behind our back
        again = predictor.regress(suffixes)[0]
        assert predictor.active_task == "regressor"
        assert torch.equal(expected, again)
        wrong = predictor.states("sentiment", suffixes)
        right = predictor.states("regressor", suffixes)
    assert not torch.allclose(wrong.values, right.values, atol=1e-3)  # the adapters really differ
    with pytest.raises(AdapterMismatch):
        predictor.heads["regressor"](wrong)
    predictor.set_task("sentiment")
    with torch.no_grad():
        probs = predictor.predict_regression(REG_TEXTS)[0]
    np.testing.assert_allclose(probs, expected.double().numpy(), atol=1e-5)  # merged weights: rounding only


def test_predictions_keep_input_order_whatever_the_batching(predictor):
    texts = HEADLINES * 3
    one = predictor.predict_sentiment(texts, batch_size=1)
    many = predictor.predict_sentiment(texts, batch_size=5)
    reversed_ = predictor.predict_sentiment(texts[::-1], batch_size=3)[::-1]
    np.testing.assert_allclose(one, many, atol=1e-6)
    np.testing.assert_allclose(one, reversed_, atol=1e-6)


def test_save_and_load_reproduce_outputs_exactly(tmp_path, predictor):
    for task in ("regressor", "sentiment"):
        predictor.save_task(task, tmp_path / task)
    fresh = Predictor(tiny_backbone(0))
    fresh.load_task("sentiment", tmp_path / "sentiment")
    fresh.load_task("regressor", tmp_path / "regressor")
    np.testing.assert_array_equal(fresh.predict_sentiment(HEADLINES), predictor.predict_sentiment(HEADLINES))
    np.testing.assert_array_equal(fresh.predict_regression(REG_TEXTS)[0], predictor.predict_regression(REG_TEXTS)[0])
    assert fresh.fingerprint("sentiment") == predictor.fingerprint("sentiment")
    assert (tmp_path / "sentiment" / "adapter_config.json").is_file()
    with pytest.raises(ValueError, match="holds a 'sentiment' adapter"):
        fresh.load_task("regressor", tmp_path / "sentiment")


def test_loading_into_another_backbone_size_fails_clearly(tmp_path, predictor):
    predictor.save_task("sentiment", tmp_path)
    from models.backbone import load_backbone
    from models.settings import BackboneConfig, TinyLlamaConfig

    other = Predictor(load_backbone(BackboneConfig(source="tiny", tiny=TinyLlamaConfig(hidden_size=48, num_attention_heads=4))))
    with pytest.raises(ValueError, match="hidden size 32"):
        other.load_task("sentiment", tmp_path)


def test_prefix_cache_and_fingerprint_follow_weight_changes():
    predictor = tiny_predictor(seed=1)
    before = predictor.predict_sentiment(HEADLINES)
    print_before = predictor.fingerprint("sentiment")
    with torch.no_grad():
        for param in predictor.lora_parameters("sentiment"):
            param.add_(0.5)
    predictor.changed("sentiment")
    after = predictor.predict_sentiment(HEADLINES)
    assert np.abs(after - before).max() > 1e-4
    assert predictor.fingerprint("sentiment") != print_before
    np.testing.assert_allclose(after, predictor.predict_naive("sentiment", HEADLINES), atol=1e-5)


def test_gradients_through_the_shared_prefix_equal_the_full_prompt_gradients():
    predictor = tiny_predictor(seed=2)
    suffixes = predictor.encoders["sentiment"].encode(HEADLINES)
    labels = torch.tensor([2, 0, 1, 0])
    params = predictor.lora_parameters("sentiment")
    predictor.train_mode("sentiment", False)  # no dropout, so the two paths see the same network
    grads = []
    for use_prefix in (True, False):
        for p in params:
            p.grad = None
        logits = predictor.classify(suffixes, use_prefix_cache=use_prefix, grad=True)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        grads.append(torch.cat([p.grad.flatten() for p in params]))
    assert grads[0].abs().max() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_only_the_tasks_lora_weights_are_trainable():
    predictor = Predictor(tiny_backbone(0))
    predictor.add_task("regressor", LoraSettings(rank=4, alpha=8, target_modules=("q_proj", "v_proj")))
    predictor.add_task("sentiment", LoraSettings(rank=2, alpha=4))
    trainable = {n for n, p in predictor.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    reg = predictor.lora_parameters("regressor")
    sent = predictor.lora_parameters("sentiment")
    assert len(reg) == 2 * 2 * 2 and len(sent) == 2 * 7 * 2  # layers x modules x (A, B)
    assert {id(p) for p in reg}.isdisjoint({id(p) for p in sent})
    with pytest.raises(ValueError, match="already has an adapter"):
        predictor.add_task("regressor")
    with pytest.raises(ValueError, match="unknown task"):
        predictor.set_task("price")
    with pytest.raises(ValueError, match="LoRA rank and alpha must be positive"):
        LoraSettings(rank=0)


def test_missing_task_and_empty_inputs():
    predictor = tiny_predictor(seed=0, tasks=("sentiment",))
    with pytest.raises(KeyError, match="no 'regressor' adapter"):
        predictor.predict_regression(REG_TEXTS)
    assert predictor.predict_sentiment([]).shape == (0, 3)
    with pytest.raises(ValueError, match="no tokens"):
        collate([[1, 2], []], pad_id=0)


def test_randomised_adapters_are_reproducible():
    a, b = tiny_predictor(seed=3), tiny_predictor(seed=3)
    np.testing.assert_array_equal(a.predict_sentiment(HEADLINES), b.predict_sentiment(HEADLINES))
    randomise_adapters(b, seed=4)
    assert np.abs(a.predict_sentiment(HEADLINES) - b.predict_sentiment(HEADLINES)).max() > 1e-4


def test_merged_inference_matches_the_lora_layers_and_leaves_the_model_untouched():
    predictor = tiny_predictor(seed=5)
    before = {n: p.detach().clone() for n, p in predictor.model.named_parameters()}
    suffixes = predictor.encoders["sentiment"].encode(HEADLINES)
    with torch.inference_mode():
        lora = predictor.states("sentiment", suffixes).values
        merged = predictor.states("sentiment", suffixes, merged=True).values
        again = predictor.states("sentiment", suffixes).values
    assert torch.allclose(lora, merged, atol=1e-5) and torch.equal(lora, again)
    assert all(torch.equal(p, before[n]) for n, p in predictor.model.named_parameters())
    assert len(predictor.merged_weights("sentiment")) == 2 * 7  # layers x LoRA-wrapped modules
    with pytest.raises(ValueError, match="merged weights are for inference"):
        predictor.states("sentiment", suffixes, merged=True, grad=True)


def test_the_prompt_template_travels_with_the_adapter(tmp_path):
    from models.prompts import PromptTemplate

    predictor = tiny_predictor(seed=6, tasks=("sentiment",))
    custom = PromptTemplate("Be terse.", "Up or down?", max_sample_tokens=20)
    predictor.set_template("sentiment", custom)
    predictor.save_task("sentiment", tmp_path)
    fresh = Predictor(tiny_backbone(6))
    fresh.load_task("sentiment", tmp_path)
    assert fresh.encoders["sentiment"].template == custom
    np.testing.assert_array_equal(fresh.predict_sentiment(HEADLINES), predictor.predict_sentiment(HEADLINES))
