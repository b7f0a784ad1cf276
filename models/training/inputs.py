"""A task's encoded prompts as the training loop uses them: the hidden states of any batch of samples,
with gradients for training or without for validation, by one of two paths that give the same numbers
(to float rounding; ``tests/test_training_speed.py`` pins it):

- **whole model**: the prompt (shared prefix, then each suffix) through every layer, every step;
- **cached lower states**: when the adapter covers only the top ``LoraSettings.top_layers`` layers and
  ``OptimSettings.cache_lower_states`` is on, the frozen layers below it are run once per sample
  (``Predictor.lower_states``, in inference mode) and each step runs only the adapted layers on
  their output (``Predictor.states_from_lower``). With the top 4 of SmolLM2's 30 layers that is a
  step through 4 layers instead of 30, forward and backward; the cache costs the lower layers'
  output per token (576 floats of 4 bytes for SmolLM2-135M: ~2.3 KB a token, ~80 MB for 1,000
  headlines of 35 tokens).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from models.heads import TaskState
from models.predictor import LowerStates, Predictor


class TaskInputs:
    def __init__(self, predictor: Predictor, task: str, suffixes: Sequence[Sequence[int]], *, cache_lower: bool,
                 batch_size: int = 64, progress: Callable[[int], None] | None = None) -> None:
        self.predictor, self.task = predictor, task
        self.suffixes = [list(s) for s in suffixes]
        self.lengths = np.array([len(s) for s in self.suffixes], dtype=np.int64)
        self.lower: LowerStates | None = None
        self.seconds = 0.0
        adapted_from = predictor.lora[task].first_layer(predictor.num_layers)
        if cache_lower and adapted_from > 0 and self.suffixes:
            started = time.perf_counter()
            self.lower = predictor.lower_states(task, self.suffixes, batch_size=batch_size, progress=progress)
            self.seconds = time.perf_counter() - started

    def __len__(self) -> int:
        return len(self.suffixes)

    @property
    def path(self) -> str:
        return "cached lower states" if self.lower is not None else "whole model"

    def cache_bytes(self) -> int:
        return self.lower.nbytes() if self.lower is not None else 0

    def states(self, index: Sequence[int], *, grad: bool = False) -> TaskState:
        if self.lower is not None:
            return self.predictor.states_from_lower(self.lower, index, grad=grad)
        return self.predictor.states(self.task, [self.suffixes[i] for i in index], grad=grad)

    def head_outputs(self, batch_size: int = 64) -> Any:
        """The head's raw outputs for every sample, in order, without gradients and with dropout off:
        sentiment logits (n, classes), or the regressor's (mean, log-variance)."""
        self.predictor.train_mode(self.task, False)
        head = self.predictor.heads[self.task]
        order = np.argsort(self.lengths, kind="stable")  # similar lengths together
        parts: list[Any] = []
        with torch.inference_mode():
            for first in range(0, len(order), batch_size):
                parts.append(head(self.states(order[first:first + batch_size].tolist())))
        inverse = torch.as_tensor(np.argsort(order, kind="stable"))
        if parts and isinstance(parts[0], tuple):
            return tuple(torch.cat([p[k] for p in parts])[inverse] for k in range(len(parts[0])))
        return torch.cat(parts)[inverse]


def inputs_record(train: TaskInputs, val: TaskInputs) -> dict[str, Any]:
    """What a checkpoint's metrics say of the path its training took."""
    return {"path": train.path, "lower_states_seconds": round(train.seconds + val.seconds, 3),
            "lower_states_mb": round((train.cache_bytes() + val.cache_bytes()) / 2**20, 1),
            "mean_tokens": float(train.lengths.mean()) if len(train) else 0.0}
