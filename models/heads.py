"""Task heads on the backbone's final hidden state, their losses, and temperature scaling.

Both heads read ONE vector per sample: the final hidden state of the last non-padding token
(``last_token_state``), which works for left and right padding alike. A head only accepts a
``TaskState`` produced with its own adapter active: handing the regression head a state computed
under the ``sentiment`` adapter (the classic peft pitfall after a ``set_adapter`` elsewhere) raises
``AdapterMismatch`` instead of silently returning nonsense.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from models.settings import RegressionHeadConfig, SentimentHeadConfig


class AdapterMismatch(RuntimeError):
    """A head was given hidden states computed with another task's adapter."""


@dataclass(frozen=True, slots=True)
class TaskState:
    """Last-token hidden states (batch, hidden) and the adapter that produced them."""

    task: str
    values: torch.Tensor


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose mask is 1, per row (left or right padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * (positions + 1)).argmax(dim=1)


def last_token_state(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``hidden[b, last non-padding position of b]`` for each row b, as float32."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last_token_index(attention_mask)].float()


class _TaskHead(nn.Module):
    task = ""

    def check(self, state: TaskState) -> torch.Tensor:
        if state.task != self.task:
            raise AdapterMismatch(
                f"the {self.task} head was given states computed with the {state.task!r} adapter active; "
                f"run the backbone with the {self.task!r} adapter (Predictor.states does)"
            )
        return state.values.float()


class RegressionHead(_TaskHead):
    """MLP predicting (mean, log-variance) of the next-period volatility-normalised return."""

    task = "regressor"

    def __init__(self, hidden_size: int, config: RegressionHeadConfig = RegressionHeadConfig()) -> None:
        super().__init__()
        self.config = config
        self.hidden_size = hidden_size
        self.norm = nn.LayerNorm(hidden_size)
        self.net = nn.Sequential(
            nn.Linear(hidden_size, config.width), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(config.width, 2),
        )
        nn.init.zeros_(self.net[-1].weight)  # start at mean 0, log-variance 0 (the target's scale)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, state: TaskState) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(self.norm(self.check(state)))
        mean, logvar = out[:, 0], out[:, 1]
        return mean, logvar.clamp(self.config.logvar_min, self.config.logvar_max)

    def describe(self) -> dict:
        return {"kind": "regression", "hidden_size": self.hidden_size, **asdict(self.config)}


class SentimentHead(_TaskHead):
    """Three-class classifier (bearish, neutral, bullish) with a fitted softmax temperature."""

    task = "sentiment"

    def __init__(self, hidden_size: int, config: SentimentHeadConfig = SentimentHeadConfig()) -> None:
        super().__init__()
        self.config = config
        self.hidden_size = hidden_size
        self.norm = nn.LayerNorm(hidden_size)
        if config.width:
            self.net = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(hidden_size, config.width), nn.GELU(),
                                     nn.Dropout(config.dropout), nn.Linear(config.width, config.classes))
        else:
            self.net = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(hidden_size, config.classes))
        self.register_buffer("temperature", torch.ones(()))

    def forward(self, state: TaskState) -> torch.Tensor:
        """Raw logits (divide by ``temperature`` for calibrated probabilities: ``probabilities``)."""
        return self.net(self.norm(self.check(state)))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits / self.temperature, dim=-1)

    def describe(self) -> dict:
        return {"kind": "sentiment", "hidden_size": self.hidden_size, "temperature": float(self.temperature),
                **asdict(self.config)}


def make_head(task: str, hidden_size: int, settings: dict | None = None) -> RegressionHead | SentimentHead:
    settings = {k: v for k, v in (settings or {}).items() if k not in ("kind", "hidden_size", "temperature")}
    if task == "regressor":
        return RegressionHead(hidden_size, RegressionHeadConfig(**settings))
    if task == "sentiment":
        return SentimentHead(hidden_size, SentimentHeadConfig(**settings))
    raise ValueError(f"unknown task {task!r} (regressor or sentiment)")


# --------------------------------------------------------------------------------------- losses


def gaussian_nll(mean: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor,
                 weight: torch.Tensor | None = None, beta: float = 0.0) -> torch.Tensor:
    """Gaussian negative log-likelihood per sample, averaged (with optional sample weights).

    ``beta > 0`` gives the beta-NLL of Seitzer et al. (2022): each term is scaled by the (detached)
    predicted variance to the power beta, so badly fitted high-variance points are not simply
    written off by inflating their variance. beta = 0 is the plain NLL, beta = 1 behaves like MSE
    for the mean.
    """
    nll = 0.5 * (logvar + (target - mean) ** 2 * torch.exp(-logvar) + math.log(2 * math.pi))
    if beta:
        nll = nll * torch.exp(logvar.detach() * beta)
    if weight is None:
        return nll.mean()
    return (nll * weight).sum() / weight.sum()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 200) -> float:
    """The temperature T > 0 minimising the cross-entropy of ``softmax(logits / T)`` on a held-out
    split (Guo et al. 2017). Fitted on log T, so it stays positive; bounded to [0.05, 20]."""
    logits = logits.detach().float().clone()  # clone: may come from inference_mode
    labels = labels.detach().long().clone()
    log_t = torch.zeros((), requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))
