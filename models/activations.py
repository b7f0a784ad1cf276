"""How much of a training pass's activation memory the decoder layers keep for the backward pass.

A layer run plainly keeps its activations (on SmolLM2-135M about 36 KB a token a layer (1,688 MB for 16 rows 97 tokens wide), so 16 long
PhraseBank sentences through 30 layers hold several GB); a layer run under ``torch.utils.checkpoint``
keeps only its input and computes the rest again in the backward pass, for about a third of a forward
pass more. Both give the same loss and gradients bit for bit, so the choice changes memory and time,
never the weights.

``LayerRunner`` makes that choice layer by layer within one pass, under a policy:

- ``budget=None``: keep every layer's activations (the fastest);
- ``budget=0``: recompute every layer (the least memory: ``OptimSettings.recompute``);
- ``budget=n`` bytes: keep layers while what they keep fits in ``n`` and recompute the rest
  (``OptimSettings.activation_budget_mb``). What a kept layer keeps is measured as it runs (the storage
  of every tensor autograd saves, the model's weights not counted), so a short batch keeps every layer
  and a long one recomputes just enough of them; the first layer of a pass is judged by the bytes a
  token cost in the pass before (or run plainly in the very first).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


class LayerRunner:
    """Runs one pass's decoder layers (``runner(layer_fn, hidden)``, in order) under a memory policy;
    afterwards ``kept_bytes`` is what the pass keeps for its backward pass and ``recomputed`` how many
    layers were checkpointed."""

    def __init__(self, budget: int | None, weights: Iterable[torch.Tensor], *, tokens: int,
                 bytes_per_token_layer: float | None = None) -> None:
        if budget is not None and budget < 0:
            raise ValueError(f"an activation budget is a number of bytes >= 0 (or None), got {budget}")
        self.budget, self.tokens = budget, tokens
        self._weights = {t.untyped_storage().data_ptr() for t in weights}
        self._seen: set[int] = set()
        self.kept_bytes = 0  # the kept layers' activations and the checkpointed layers' inputs
        self.input_bytes = 0  # of which the checkpointed layers' inputs
        self.kept_layers = 0
        self.recomputed = 0
        # what the next kept layer is expected to keep: from the previous pass's bytes per token, then measured
        self._next = None if bytes_per_token_layer is None else bytes_per_token_layer * tokens
        self.layer_bytes: float | None = None  # measured on a kept layer of this pass

    def __call__(self, layer: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
        if self.budget is None or not torch.is_grad_enabled():
            return layer(hidden)
        expected = self._next if self._next is not None else 0.0
        if self.budget == 0 or self.kept_bytes + expected > self.budget:
            from torch.utils.checkpoint import checkpoint

            self.recomputed += 1
            held = self._new_bytes(hidden)  # the checkpoint holds the layer's input
            self.kept_bytes += held
            self.input_bytes += held
            return checkpoint(layer, hidden, use_reentrant=False)
        before = self.kept_bytes
        with torch.autograd.graph.saved_tensors_hooks(self._count, lambda t: t):
            out = layer(hidden)
        self.kept_layers += 1
        self.layer_bytes = self._next = float(self.kept_bytes - before)
        return out

    @property
    def bytes_per_token_layer(self) -> float | None:
        """What a kept layer cost a token in this pass (None when no layer was kept)."""
        return None if self.layer_bytes is None or self.tokens <= 0 else self.layer_bytes / self.tokens

    def _count(self, tensor: torch.Tensor) -> torch.Tensor:
        self.kept_bytes += self._new_bytes(tensor)
        return tensor

    def _new_bytes(self, tensor: torch.Tensor) -> int:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in self._weights or ptr in self._seen:
            return 0
        self._seen.add(ptr)
        return int(storage.nbytes())
