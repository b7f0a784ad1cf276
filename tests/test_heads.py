"""Heads, losses and calibration, on plain tensors."""

from __future__ import annotations

import math

import pytest

from models.heads import (
    AdapterMismatch,
    RegressionHead,
    SentimentHead,
    TaskState,
    fit_temperature,
    gaussian_nll,
    last_token_index,
    last_token_state,
)
from models.settings import RegressionHeadConfig
from tests.llm_helpers import torch


def test_last_token_index_handles_left_and_right_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 4, 0]
    hidden = torch.arange(4 * 5 * 2, dtype=torch.float32).reshape(4, 5, 2)
    assert last_token_state(hidden, mask)[:, 0].tolist() == [4.0, 18.0, 28.0, 30.0]


def test_gaussian_nll_matches_torch_and_beta_reweights():
    mean, logvar, y = torch.tensor([0.1, -0.5, 2.0]), torch.tensor([0.0, 1.0, -1.0]), torch.tensor([0.0, 0.5, 1.0])
    reference = torch.nn.GaussianNLLLoss(full=True)(mean, y, logvar.exp())
    assert gaussian_nll(mean, logvar, y).item() == pytest.approx(reference.item(), rel=1e-6)
    weights = torch.tensor([1.0, 0.0, 0.0])
    first = 0.5 * (0.0 + 0.01 + math.log(2 * math.pi))
    assert gaussian_nll(mean, logvar, y, weights).item() == pytest.approx(first, rel=1e-6)
    per = 0.5 * (logvar + (y - mean) ** 2 / logvar.exp() + math.log(2 * math.pi))
    assert gaussian_nll(mean, logvar, y, beta=0.5).item() == pytest.approx((per * logvar.exp() ** 0.5).mean().item())


def test_regression_head_clamps_log_variance_and_starts_at_zero():
    head = RegressionHead(8, RegressionHeadConfig(logvar_min=-2.0, logvar_max=1.0))
    mean, logvar = head(TaskState("regressor", torch.randn(4, 8)))
    assert torch.all(mean == 0) and torch.all(logvar == 0)
    with torch.no_grad():
        head.net[-1].bias.copy_(torch.tensor([0.0, 50.0]))
    assert torch.all(head(TaskState("regressor", torch.randn(4, 8)))[1] == 1.0)


def test_heads_refuse_states_from_the_other_adapter():
    state = TaskState("sentiment", torch.randn(2, 8))
    with pytest.raises(AdapterMismatch, match="regressor head was given states computed with the 'sentiment'"):
        RegressionHead(8)(state)
    with pytest.raises(AdapterMismatch):
        SentimentHead(8)(TaskState("regressor", torch.randn(2, 8)))


def test_temperature_scaling_recovers_the_temperature_of_overconfident_logits():
    generator = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 3, generator=generator) * 1.5
    labels = torch.multinomial(torch.softmax(true_logits, dim=1), 1, generator=generator).squeeze(1)
    fitted = fit_temperature(true_logits * 3.0, labels)  # three times too confident
    assert fitted == pytest.approx(3.0, rel=0.1)
    head = SentimentHead(4)
    head.temperature.fill_(2.0)
    probs = head.probabilities(torch.tensor([[2.0, 0.0, 0.0]]))
    assert probs.sum().item() == pytest.approx(1.0)
    assert probs[0, 0].item() == pytest.approx(math.e / (math.e + 2))
