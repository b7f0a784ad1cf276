"""The numeric-encoder input of the regressor (after LLaMA-TTPT, Zhang 2025, and CALF, Liu et al. 2024).

Instead of writing the scaled features into a text prompt, a small trainable ``NumericEncoder`` maps
the last ``window`` bars of scaled features (window, 16) to ``virtual_tokens`` embeddings of the
backbone's hidden size. The frozen backbone reads them through ``inputs_embeds`` after a short fixed
instruction (``EncoderSettings.instruction``, whose key/value cache ``Predictor`` computes once per
adapter version at inference and at every step in training); the regression head reads the last
virtual token's final hidden state. Every sample has the same length: no padding anywhere.

Variants (the ablations, ``EncoderSettings.variant``, in ``models.settings``):

- ``llm``: encoder + LoRA adapter + head, on the pretrained backbone;
- ``random_backbone``: the same on a backbone of the same architecture with random weights (the
  caller loads it with ``BackboneConfig(random_init=True)``);
- ``head_only``: the pretrained backbone frozen, no LoRA update: encoder + head trained;
- ``no_llm``: no backbone at all: the virtual tokens are mean-pooled and fed to the head.

``feature_windows`` builds the encoder's inputs from a matrix of scaled features, one row per bar:
the window of bar t holds rows t-window+1 .. t, nothing after t.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from models.settings import EncoderSettings

ENCODER_FILE = "encoder.safetensors"


class NumericEncoder(nn.Module):
    """(batch, window, features) scaled features -> (batch, virtual_tokens, hidden) embeddings.

    An MLP over the flattened window, plus a learned position vector per virtual token; each output
    vector is rescaled to ``embed_norm`` (the backbone's mean token-embedding norm), so the virtual
    tokens enter the backbone at the scale its own embeddings have."""

    def __init__(self, settings: EncoderSettings, hidden_size: int, embed_norm: float) -> None:
        super().__init__()
        if not embed_norm > 0:
            raise ValueError(f"embed_norm must be positive, got {embed_norm}")
        self.settings = settings
        self.hidden_size = hidden_size
        k = settings.virtual_tokens
        self.net = nn.Sequential(nn.Linear(settings.window * settings.features, settings.width), nn.GELU(),
                                 nn.Linear(settings.width, k * hidden_size))
        self.position = nn.Parameter(torch.randn(k, hidden_size) * 0.02)
        self.register_buffer("embed_norm", torch.tensor(float(embed_norm)))

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        s = self.settings
        if windows.ndim != 3 or windows.shape[1:] != (s.window, s.features):
            raise ValueError(f"windows must be (batch, {s.window}, {s.features}), got {tuple(windows.shape)}")
        out = self.net(windows.flatten(1)).view(len(windows), s.virtual_tokens, self.hidden_size) + self.position
        return out * (self.embed_norm / out.norm(dim=-1, keepdim=True).clamp_min(1e-6))


def embedding_norm(model: Any) -> float:
    """The mean L2 norm of the rows of a causal LM's input embedding matrix."""
    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        return float(weight.float().norm(dim=1).mean())


def feature_windows(scaled_features: np.ndarray, index: np.ndarray | list[int], window: int) -> np.ndarray:
    """(len(index), window, n_features) float64: for each bar t in ``index``, the rows t-window+1 .. t
    of ``scaled_features`` (one row per bar, in time order). Causal: nothing after bar t enters.
    A window that starts before the first row or holds a non-finite value is an error."""
    x = np.asarray(scaled_features, dtype=np.float64)
    idx = np.asarray(index, dtype=np.int64).reshape(-1)
    if x.ndim != 2:
        raise ValueError(f"scaled_features must be (bars, features), got shape {x.shape}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if len(idx) and (idx.min() < window - 1 or idx.max() >= len(x)):
        bad = idx[(idx < window - 1) | (idx >= len(x))][0]
        raise ValueError(f"bar {bad} has no full window of {window} bars inside the {len(x)} rows")
    out = x[idx[:, None] + np.arange(1 - window, 1)[None, :]]
    if not np.isfinite(out).all():
        bad = idx[~np.isfinite(out).all(axis=(1, 2))][0]
        raise ValueError(f"the window of bar {bad} holds non-finite features (warm-up bars?); drop it "
                         "(window_ready says which bars have full windows)")
    return out


def window_ready(scaled_features: np.ndarray, window: int) -> np.ndarray:
    """Per bar, whether its window of ``window`` bars exists and is all finite (bool, one per row)."""
    finite = np.isfinite(np.asarray(scaled_features, dtype=np.float64)).all(axis=1)
    run = np.zeros(len(finite), dtype=np.int64)  # consecutive finite rows ending at each bar
    count = 0
    for i, ok in enumerate(finite):
        count = count + 1 if ok else 0
        run[i] = count
    return run >= window
