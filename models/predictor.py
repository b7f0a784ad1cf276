"""One frozen backbone, two named LoRA adapters (``regressor``, ``sentiment``), a head per adapter.

``Predictor.states(task, ...)`` is the only way to get hidden states for a head: it switches peft
to the task's adapter first (``set_adapter``) and tags the result with the task, so a head can
never be fed states made under the other adapter (see ``heads.AdapterMismatch``).

Two forward paths give the same numbers (to float rounding; ``tests/test_predictor.py`` pins it):

- per sample (``use_prefix_cache=False``): the whole prompt, prefix and suffix, through the model;
- shared prefix: the prompt's fixed prefix goes through the model once per adapter (and per
  training step, since the adapter changes), its key/value cache is expanded to the batch, and only
  the right-padded suffixes are run, with positions continuing after the prefix.

A regressor can instead read numbers (``add_numeric_encoder``, ``models.encoder``): windows of scaled
features become virtual-token embeddings that enter through ``inputs_embeds`` after a cached
instruction prefix (``window_states``, ``predict_regression_windows``: fixed-shape batches, so a window
predicted alone and inside a batch give the same numbers to float32 rounding).

Batched inference (``predict_regression`` / ``predict_sentiment``) runs under
``torch.inference_mode``, sorts samples by length to cut padding, uses the shared prefix, runs the
backbone with the task's LoRA update merged into the weights (``W + scale * B A``, computed once per
adapter version and passed through ``torch.func.functional_call``: the model itself is never
modified, so switching adapters stays exact), and can read and fill a ``PredictionCache`` keyed by
the task's fingerprint and the input text. Merging costs one extra copy of the adapted weights per
task in memory (~0.4 GB for SmolLM2-135M); ``Predictor(merge_for_inference=False)`` turns it off.

Training passes on text prompts can recompute activations in the backward pass instead of keeping
them (``Predictor.recompute``: every layer; ``Predictor.activation_budget``: only the layers that do not
fit in a budget of bytes; both set by the training loop from ``OptimSettings``; ``models.activations``):
such a layer runs under ``torch.utils.checkpoint``, reading the shared prefix through a key/value view
that stores nothing (``_PrefixKV``), so the same loss and gradients come out for less memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.backbone import Backbone, seeded
from models.encoder import ENCODER_FILE, NumericEncoder, embedding_norm
from models.heads import RegressionHead, SentimentHead, TaskState, last_token_state, make_head
from models.prompts import REGRESSION_TEMPLATE, SENTIMENT_TEMPLATE, PromptEncoder, PromptTemplate
from models.settings import EncoderSettings, LoraSettings

TASKS = ("regressor", "sentiment")
HEAD_FILE = "head.safetensors"
HEAD_CONFIG = "head.json"


@dataclass(slots=True)
class LowerStates:
    """The frozen lower layers' work on a task's prompts, done once: for a task whose adapter covers
    only the top layers (``LoraSettings.top_layers``), what enters the first adapted layer does not
    depend on the adapter, so training runs only the adapted layers on these states
    (``Predictor.states_from_lower``). Computed under ``torch.inference_mode``; fp32 by default."""

    task: str
    start: int  # the first adapted layer: these are its inputs
    prefix_hidden: torch.Tensor  # (1, P, H): the prompt prefix
    prefix_kv: tuple[torch.Tensor, ...]  # (key, value) of the prefix in layers 0 .. start-1, batch 1
    suffixes: list[torch.Tensor]  # per sample (S_i, H), computed after the prefix
    lengths: np.ndarray  # S_i

    def nbytes(self) -> int:
        tensors = [self.prefix_hidden, *self.prefix_kv, *self.suffixes]
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(slots=True)
class Batch:
    """Right-padded suffix ids with their mask (the prefix is added by the forward path)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def to(self, device: torch.device) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device))


def collate(sequences: Sequence[Sequence[int]], pad_id: int, *, left: bool = False) -> Batch:
    """Pad id lists into one batch (right padding unless ``left``)."""
    if not sequences:
        raise ValueError("an empty batch")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if not seq:
            raise ValueError(f"sample {row} has no tokens")
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, span] = 1
    return Batch(ids, mask)


def positions_from_mask(attention_mask: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Position ids counting only real tokens, so left padding does not shift positions."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0) + offset


class Predictor:
    """The backbone with its task adapters and heads. Build with ``add_task`` or ``load_task``."""

    def __init__(self, backbone: Backbone, *, merge_for_inference: bool = True) -> None:
        self.backbone = backbone
        # k-bit (bitsandbytes) weights cannot simply be added to; they run the LoRA path as it is
        self.merge_for_inference = merge_for_inference and backbone.config.precision in ("fp32", "bf16")
        self.tokenizer = backbone.tokenizer
        self.model: Any = None  # a peft PeftModel once the first adapter exists
        self.heads: dict[str, RegressionHead | SentimentHead] = {}
        self.lora: dict[str, LoraSettings] = {}
        self.encoders = {
            "regressor": PromptEncoder(self.tokenizer, REGRESSION_TEMPLATE),
            "sentiment": PromptEncoder(self.tokenizer, SENTIMENT_TEMPLATE),
        }
        self._prefix_kv: dict[tuple[str, bool], tuple[torch.Tensor, ...]] = {}
        self.numeric: dict[str, NumericEncoder] = {}  # a task's numeric encoder (input = "encoder")
        self._instruction_kv: dict[tuple[str, bool], tuple[torch.Tensor, ...]] = {}
        self._merged: dict[str, dict[str, torch.Tensor]] = {}
        self._shared_prefix: dict[str, tuple[torch.Tensor, ...]] = {}  # inside shared_prefix(task)
        self._fingerprints: dict[str, str] = {}
        # training passes on text prompts: recompute every layer's activations in the backward pass
        # (``recompute``) or keep layers while what they keep fits in ``activation_budget`` bytes and
        # recompute the rest (None: keep every layer); set by the training loop from OptimSettings
        self.recompute = False
        self.activation_budget: int | None = None
        self._layer_bytes_per_token: float | None = None  # measured by the last budgeted pass
        self.last_pass: dict[str, int] = {}  # what the last such pass kept and recomputed
        self.device = next(backbone.model.parameters()).device

    # ------------------------------------------------------------------------------- adapters

    def add_task(self, task: str, lora: LoraSettings = LoraSettings(), head_settings: dict | None = None,
                 seed: int = 0) -> None:
        """Create the task's adapter (B = 0, so the backbone is unchanged at first) and its head."""
        _check_task(task)
        if task in self.heads:
            raise ValueError(f"task {task!r} already has an adapter")
        with seeded(seed):
            self._add_adapter(task, lora.to_peft(self.num_layers))
            head = make_head(task, self.backbone.hidden_size, head_settings)
        self.heads[task] = head.to(self.device).eval()  # inference by default; fit() turns training on
        self.lora[task] = lora
        self.changed(task)

    def _add_adapter(self, task: str, peft_config: Any) -> None:
        if self.model is None:
            from peft import get_peft_model

            with warnings.catch_warnings():  # peft reads a property transformers 5 deprecated: not ours to fix
                warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
                self.model = get_peft_model(self.backbone.model, peft_config, adapter_name=task)
        else:
            self.model.add_adapter(task, peft_config)
        for name, param in self.model.named_parameters():  # only LoRA weights can ever train
            if "lora_" not in name:
                param.requires_grad_(False)
        self.model.eval()  # no LoRA dropout outside fit(), which switches training on and off

    def set_template(self, task: str, template: PromptTemplate) -> None:
        """Use ``template`` for the task's prompts (it is saved with the adapter)."""
        _check_task(task)
        self.encoders[task] = PromptEncoder(self.tokenizer, template)
        if task in self.heads:
            self.changed(task)

    def set_task(self, task: str) -> None:
        """Make ``task``'s adapter the active one."""
        self._require(task)
        if self.active_task != task:
            self.model.set_adapter(task)

    @property
    def active_task(self) -> str | None:
        if self.model is None:
            return None
        active = self.model.active_adapter
        return active if isinstance(active, str) else active[0]

    def _require(self, task: str) -> None:
        _check_task(task)
        if task not in self.heads:
            raise KeyError(f"the predictor has no {task!r} adapter; train one or load a checkpoint")

    def changed(self, task: str) -> None:
        """Forget what depends on the task's weights (prefix caches, merged weights, fingerprint):
        call after every change of the adapter or head."""
        for cache in (self._prefix_kv, self._instruction_kv):
            cache.pop((task, False), None)
            cache.pop((task, True), None)
        self._merged.pop(task, None)
        self._fingerprints.pop(task, None)

    def add_numeric_encoder(self, task: str, settings: EncoderSettings, seed: int = 0) -> None:
        """Give the task a fresh ``NumericEncoder``: its inputs become windows of scaled features
        (``predict_regression_windows``) instead of prompt texts."""
        self._require(task)
        with seeded(seed):
            encoder = NumericEncoder(settings, self.backbone.hidden_size, embedding_norm(self.backbone.model))
        self.numeric[task] = encoder.to(self.device).eval()
        self.changed(task)

    def encoder_settings(self, task: str) -> EncoderSettings | None:
        """The task's numeric-encoder settings, or None for a text-prompt task."""
        return self.numeric[task].settings if task in self.numeric else None

    def trainable_parameters(self, task: str) -> dict[str, list[torch.nn.Parameter]]:
        """What training updates: ``lora`` (empty for the head_only and no_llm variants), ``head``
        and ``encoder`` (empty for text prompts)."""
        encoder = self.numeric.get(task)
        trains_lora = encoder is None or encoder.settings.trains_lora
        return {"lora": self.lora_parameters(task) if trains_lora else [],
                "head": list(self.heads[task].parameters()),
                "encoder": list(encoder.parameters()) if encoder is not None else []}

    def lora_parameters(self, task: str) -> list[torch.nn.Parameter]:
        self._require(task)
        return [p for n, p in self.model.named_parameters() if "lora_" in n and f".{task}." in n]

    def train_mode(self, task: str, training: bool) -> None:
        """LoRA and head dropout on (training) or off; the frozen backbone has no dropout of its own."""
        self.set_task(task)
        self.model.train(training)
        self.heads[task].train(training)
        if task in self.numeric:
            self.numeric[task].train(training)

    # -------------------------------------------------------------------------------- forward

    def _decoder(self) -> Any:
        """The transformer body (no LM head) with the LoRA layers injected."""
        return self.model.get_base_model().base_model

    @property
    def num_layers(self) -> int:
        return int(self.backbone.model.config.num_hidden_layers)

    def _layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, cache: Any,
                start: int, stop: int) -> torch.Tensor:
        """Decoder layers ``start .. stop-1`` on ``hidden`` (what enters layer ``start``), as the model's
        own forward runs them (causal mask, rotary positions, the key/value cache), then the final norm
        when ``stop`` is the last layer. The task's LoRA layers run as they are (unmerged)."""
        from transformers.masking_utils import create_causal_mask

        decoder = self._decoder()
        causal = create_causal_mask(config=decoder.config, inputs_embeds=hidden, attention_mask=attention_mask,
                                    cache=cache, position_ids=position_ids)
        rotary = decoder.rotary_emb(hidden, position_ids=position_ids)
        for layer in decoder.layers[start:stop]:
            hidden = layer(hidden, attention_mask=causal, position_embeddings=rotary, position_ids=position_ids,
                           cache=cache, use_cache=cache is not None)
        return decoder.norm(hidden) if stop == self.num_layers else hidden

    def _training_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                         kv: Sequence[torch.Tensor], start: int = 0) -> torch.Tensor:
        """Decoder layers ``start ..`` and the final norm on ``hidden`` (what enters layer ``start``) after
        the prefix whose per-layer (key, value) are ``kv`` (batch 1, every layer), for a training pass
        under the memory policy (``recompute``, ``activation_budget``): each layer either keeps its
        activations or runs under ``torch.utils.checkpoint`` (``models.activations.LayerRunner``). The
        same numbers and gradients as the plain forward, bit for bit. Each layer reads the prefix
        through a ``_PrefixKV``, which stores nothing, so a layer run again sees what it saw the first
        time."""
        from transformers import DynamicCache
        from transformers.masking_utils import create_causal_mask

        from models.activations import LayerRunner

        decoder = self._decoder()
        size = hidden.shape[0]
        mask_cache = DynamicCache(ddp_cache_data=[(kv[i].expand(size, -1, -1, -1), kv[i + 1].expand(size, -1, -1, -1))
                                                  for i in range(0, len(kv), 2)], config=decoder.config)
        causal = create_causal_mask(config=decoder.config, inputs_embeds=hidden, attention_mask=attention_mask,
                                    cache=mask_cache, position_ids=position_ids)
        rotary = decoder.rotary_emb(hidden, position_ids=position_ids)
        prefix = _PrefixKV(kv, size)
        runner = LayerRunner(0 if self.recompute else self.activation_budget, self.model.parameters(),
                             tokens=size * hidden.shape[1], bytes_per_token_layer=self._layer_bytes_per_token)
        for layer in decoder.layers[start:]:
            def run(h: torch.Tensor, layer: Any = layer) -> torch.Tensor:
                return layer(h, attention_mask=causal, position_embeddings=rotary, position_ids=position_ids,
                             cache=prefix, use_cache=True)
            hidden = runner(run, hidden)
        if runner.bytes_per_token_layer is not None:
            self._layer_bytes_per_token = runner.bytes_per_token_layer
        self.last_pass = {"kept_layers": runner.kept_layers, "recomputed_layers": runner.recomputed,
                          "kept_bytes": runner.kept_bytes, "input_bytes": runner.input_bytes}
        return decoder.norm(hidden)

    @property
    def _memory_policy(self) -> bool:
        """Whether training passes run layer by layer under ``recompute`` / ``activation_budget``."""
        return self.recompute or self.activation_budget is not None

    def lower_states(self, task: str, suffixes: Sequence[Sequence[int]], *, batch_size: int = 64,
                     dtype: torch.dtype = torch.float32, progress: Any = None) -> LowerStates:
        """What the frozen layers below the task's first adapted layer make of its prompts (the prefix
        once, then each suffix after it): the inputs ``states_from_lower`` trains on. Batched by length."""
        from transformers import DynamicCache

        self._require(task)
        start = self.lora[task].first_layer(self.num_layers)
        if start == 0:
            raise ValueError(f"the {task} adapter covers every layer: nothing below it to compute once "
                             "(set LoRA top_layers)")
        self.set_task(task)
        config = self.model.get_base_model().config
        embed = self._decoder().embed_tokens
        with torch.inference_mode():
            ids = torch.tensor([self.encoders[task].prefix_ids], dtype=torch.long, device=self.device)
            prefix_cache = DynamicCache(config=config)
            mask = torch.ones_like(ids)
            prefix_hidden = self._layers(embed(ids), mask, positions_from_mask(mask), prefix_cache, 0, start)
            prefix_kv = tuple(t for layer in prefix_cache.layers[:start] for t in (layer.keys, layer.values))
            length = ids.shape[1]
            out: list[torch.Tensor | None] = [None] * len(suffixes)
            order = sorted(range(len(suffixes)), key=lambda k: len(suffixes[k]))
            for first in range(0, len(order), batch_size):
                chunk = order[first:first + batch_size]
                batch = collate([suffixes[k] for k in chunk], self.tokenizer.pad_token_id).to(self.device)
                size = len(chunk)
                cache = DynamicCache(ddp_cache_data=[(prefix_kv[i].expand(size, -1, -1, -1),
                                                      prefix_kv[i + 1].expand(size, -1, -1, -1))
                                                     for i in range(0, len(prefix_kv), 2)], config=config)
                full = torch.cat([batch.attention_mask.new_ones(size, length), batch.attention_mask], dim=1)
                hidden = self._layers(embed(batch.input_ids), full, positions_from_mask(batch.attention_mask, length),
                                      cache, 0, start)
                for row, k in enumerate(chunk):
                    out[k] = hidden[row, :len(suffixes[k])].to(dtype).clone()
                if progress is not None:
                    progress(len(chunk))
        lengths = np.array([len(s) for s in suffixes], dtype=np.int64)
        return LowerStates(task, start, prefix_hidden.to(dtype).clone(), tuple(t.clone() for t in prefix_kv),
                           [t for t in out if t is not None], lengths)

    def upper_prefix_kv(self, lower: LowerStates) -> list[torch.Tensor]:
        """(key, value) of the prompt prefix in every layer, batch 1: the frozen layers' fixed ones from
        ``lower``, the adapted layers' computed now (with grad if it is enabled: the adapter moves)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.get_base_model().config)
        prefix = lower.prefix_hidden.to(next(self._decoder().norm.parameters()).dtype)
        ones = torch.ones((1, prefix.shape[1]), dtype=torch.long, device=self.device)
        self._layers(prefix, ones, positions_from_mask(ones), cache, lower.start, self.num_layers)
        return [*lower.prefix_kv, *(t for layer in cache.layers[lower.start:] for t in (layer.keys, layer.values))]

    def states_from_lower(self, lower: LowerStates, index: Sequence[int], *, grad: bool = False) -> TaskState:
        """Last-token final hidden states of samples ``index`` of ``lower``, running only the adapted
        layers: the prefix through them (with grad when training: the adapter moves every step), then
        the suffixes after it. Equal to ``states`` on the same prompts to float rounding."""
        from transformers import DynamicCache

        task = lower.task
        self.set_task(task)
        if self.lora[task].first_layer(self.num_layers) != lower.start:
            raise ValueError(f"these lower states end at layer {lower.start}, the {task} adapter starts at "
                             f"{self.lora[task].first_layer(self.num_layers)}")
        config = self.model.get_base_model().config
        dtype = next(self._decoder().norm.parameters()).dtype
        start, n_layers = lower.start, self.num_layers
        with torch.set_grad_enabled(grad):
            kv = self.upper_prefix_kv(lower)
            length = lower.prefix_hidden.shape[1]
            rows = [lower.suffixes[i] for i in index]
            size, width = len(rows), max(len(r) for r in rows)
            hidden = torch.zeros((size, width, lower.prefix_hidden.shape[2]), dtype=dtype, device=self.device)
            mask = torch.zeros((size, width), dtype=torch.long, device=self.device)
            for row, states in enumerate(rows):
                hidden[row, :len(states)] = states.to(dtype)
                mask[row, :len(states)] = 1
            cache = DynamicCache(ddp_cache_data=[(kv[i].expand(size, -1, -1, -1), kv[i + 1].expand(size, -1, -1, -1))
                                                 for i in range(0, len(kv), 2)], config=config)
            full = torch.cat([mask.new_ones(size, length), mask], dim=1)
            if grad and self._memory_policy:
                out = self._training_layers(hidden, full, positions_from_mask(mask, length), kv, start)
            else:
                out = self._layers(hidden, full, positions_from_mask(mask, length), cache, start, n_layers)
            return TaskState(task, last_token_state(out, mask))

    def merged_weights(self, task: str) -> dict[str, torch.Tensor]:
        """The adapted weights ``W + scale * B A`` of every LoRA-wrapped layer, by parameter name
        inside the decoder; cached until ``changed(task)``."""
        self._require(task)
        if task not in self._merged:
            merged = {}
            with torch.no_grad():
                for name, module in self._decoder().named_modules():
                    if task in getattr(module, "lora_A", {}) and hasattr(module, "get_delta_weight"):
                        base = module.get_base_layer().weight
                        merged[f"{name}.base_layer.weight"] = base + module.get_delta_weight(task).to(base.dtype)
            self._merged[task] = merged
        return self._merged[task]

    def _run(self, task: str, merged: bool, **inputs: Any) -> Any:
        """The decoder on ``inputs``, through the LoRA layers or with the merged weights."""
        decoder = self._decoder()
        if not merged:
            return decoder(**inputs)
        weights = self.merged_weights(task)
        with self.model.disable_adapter():
            return torch.func.functional_call(decoder, weights, args=(), kwargs=inputs, strict=False)

    def prefix_cache(self, task: str, *, grad: bool = False, merged: bool = False) -> tuple[torch.Tensor, ...]:
        """Per-layer (key, value) tensors of the task's prompt prefix under its adapter, batch 1.

        Inference reuses one computation until the adapter changes; training (``grad=True``)
        recomputes it at every call, since the adapter moves every step.
        """
        self.set_task(task)
        key = (task, merged)
        if not grad and key in self._prefix_kv:
            return self._prefix_kv[key]
        if grad and task in self._shared_prefix:
            return self._shared_prefix[task]
        ids = torch.tensor([self.encoders[task].prefix_ids], dtype=torch.long, device=self.device)
        with torch.set_grad_enabled(grad):
            out = self._run(task, merged, input_ids=ids, use_cache=True)
        kv = tuple(t for layer in out.cache.layers for t in (layer.keys, layer.values))
        if not grad:
            self._prefix_kv[key] = kv
        return kv

    @contextlib.contextmanager
    def shared_prefix(self, task: str) -> Iterator[None]:
        """Inside: the training prefix (``prefix_cache(task, grad=True)``) is computed once and every
        forward pass reads it, as leaves that collect the gradients of all the passes; on leaving,
        those gradients go back through the prefix's own graph once. The adapter's gradients are then
        those of one pass over all the samples, for one prefix computation instead of one per pass."""
        if task in self._shared_prefix:
            raise RuntimeError(f"shared_prefix({task!r}) is already active")
        kv = self.prefix_cache(task, grad=True)
        leaves = tuple(t.detach().requires_grad_(t.requires_grad) for t in kv)
        self._shared_prefix[task] = leaves
        try:
            yield
        finally:
            del self._shared_prefix[task]
        pairs = [(t, leaf.grad) for t, leaf in zip(kv, leaves) if t.requires_grad and leaf.grad is not None]
        if pairs:
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])

    def release_inference_caches(self) -> None:
        """Drop every task's merged weights and cached prompt prefixes (rebuilt on the next prediction):
        a merged copy of SmolLM2's adapted layers is ~0.4 GB a task, not needed while another trains."""
        self._merged.clear()
        self._prefix_kv.clear()
        self._instruction_kv.clear()

    def states(self, task: str, suffixes: Sequence[Sequence[int]], *, use_prefix_cache: bool = True,
               grad: bool = False, left_padding: bool = False, merged: bool = False) -> TaskState:
        """Last-token final hidden states for the task's prompts (``suffixes`` from its encoder).
        ``merged`` runs the adapter merged into the weights (inference only, see ``merged_weights``)."""
        self.set_task(task)
        if merged and grad:
            raise ValueError("merged weights are for inference; training runs through the LoRA layers")
        pad = self.tokenizer.pad_token_id
        with torch.set_grad_enabled(grad):
            if not use_prefix_cache:
                prefix = self.encoders[task].prefix_ids
                batch = collate([prefix + list(s) for s in suffixes], pad, left=left_padding).to(self.device)
                hidden = self._run(task, merged, input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                   position_ids=positions_from_mask(batch.attention_mask), use_cache=False)
                return TaskState(task, last_token_state(hidden.last_hidden_state, batch.attention_mask))
            from transformers import DynamicCache

            kv = self.prefix_cache(task, grad=grad, merged=merged)
            batch = collate(suffixes, pad).to(self.device)
            size, length = batch.input_ids.shape[0], kv[0].shape[2]
            cache = DynamicCache(
                ddp_cache_data=[(kv[i].expand(size, -1, -1, -1), kv[i + 1].expand(size, -1, -1, -1))
                                for i in range(0, len(kv), 2)],
                config=self.model.get_base_model().config,
            )
            mask = torch.cat([batch.attention_mask.new_ones(size, length), batch.attention_mask], dim=1)
            positions = positions_from_mask(batch.attention_mask, offset=length)
            if grad and self._memory_policy:
                out = self._training_layers(self._decoder().embed_tokens(batch.input_ids), mask, positions, kv)
                return TaskState(task, last_token_state(out, batch.attention_mask))
            hidden = self._run(task, merged, input_ids=batch.input_ids, attention_mask=mask, cache=cache,
                               position_ids=positions, use_cache=True)
            return TaskState(task, last_token_state(hidden.last_hidden_state, batch.attention_mask))

    def instruction_ids(self, task: str) -> list[int]:
        settings = self.encoder_settings(task)
        if settings is None:
            raise KeyError(f"the {task} task has no numeric encoder")
        return list(self.tokenizer(settings.instruction, add_special_tokens=False)["input_ids"])

    def _window_run(self, task: str, merged: bool, **inputs: Any) -> Any:
        """The decoder for an encoder task: without any LoRA update for the head_only variant."""
        if not self.numeric[task].settings.trains_lora:
            with self.model.disable_adapter():
                return self._decoder()(**inputs)
        return self._run(task, merged, **inputs)

    def instruction_cache(self, task: str, *, grad: bool = False, merged: bool = False) -> tuple[torch.Tensor, ...]:
        """Per-layer (key, value) of the encoder task's instruction, batch 1: computed once per adapter
        version at inference, at every call in training (``grad``: the adapter moves every step)."""
        self.set_task(task)
        key = (task, merged)
        if not grad and key in self._instruction_kv:
            return self._instruction_kv[key]
        ids = torch.tensor([self.instruction_ids(task)], dtype=torch.long, device=self.device)
        with torch.set_grad_enabled(grad):
            out = self._window_run(task, merged, input_ids=ids, use_cache=True)
        kv = tuple(t for layer in out.cache.layers for t in (layer.keys, layer.values))
        if not grad:
            self._instruction_kv[key] = kv
        return kv

    def window_states(self, task: str, windows: torch.Tensor, *, grad: bool = False,
                      merged: bool = False) -> TaskState:
        """Final hidden state of the last virtual token per window (batch, window, features): the
        numeric encoder's embeddings through the backbone after the cached instruction. The no_llm
        variant skips the backbone: the mean of the virtual tokens."""
        self.set_task(task)
        if task not in self.numeric:
            raise KeyError(f"the {task} task has no numeric encoder (it reads prompt texts)")
        if merged and grad:
            raise ValueError("merged weights are for inference; training runs through the LoRA layers")
        encoder = self.numeric[task]
        with torch.set_grad_enabled(grad):
            embeds = encoder(windows.to(self.device, torch.float32))
            if not encoder.settings.uses_backbone:
                return TaskState(task, embeds.mean(dim=1))
            from transformers import DynamicCache

            dtype = self._decoder().embed_tokens.weight.dtype
            kv = self.instruction_cache(task, grad=grad, merged=merged)
            size, length, k = embeds.shape[0], kv[0].shape[2], embeds.shape[1]
            cache = DynamicCache(
                ddp_cache_data=[(kv[i].expand(size, -1, -1, -1), kv[i + 1].expand(size, -1, -1, -1))
                                for i in range(0, len(kv), 2)],
                config=self.model.get_base_model().config)
            mask = torch.ones((size, length + k), dtype=torch.long, device=self.device)
            positions = torch.arange(length, length + k, device=self.device).expand(size, -1)
            out = self._window_run(task, merged, inputs_embeds=embeds.to(dtype), attention_mask=mask, cache=cache,
                                   position_ids=positions, use_cache=True)
            return TaskState(task, out.last_hidden_state[:, -1].float())

    def regress_windows(self, windows: torch.Tensor, **kw: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) per window, through the regressor's numeric encoder."""
        self._require("regressor")
        return self.heads["regressor"](self.window_states("regressor", windows, **kw))

    def regress(self, suffixes: Sequence[Sequence[int]], **kw: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) of the normalised next-period return."""
        self._require("regressor")
        return self.heads["regressor"](self.states("regressor", suffixes, **kw))

    def classify(self, suffixes: Sequence[Sequence[int]], **kw: Any) -> torch.Tensor:
        """Raw (uncalibrated) sentiment logits."""
        self._require("sentiment")
        return self.heads["sentiment"](self.states("sentiment", suffixes, **kw))

    # ------------------------------------------------------------------------------ inference

    def predict_regression(self, texts: Sequence[str], *, batch_size: int = 32, use_prefix_cache: bool = True,
                           cache: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of the normalised next-period return per sample text (``prompts.regression_text``)."""
        if "regressor" in self.numeric:
            raise KeyError("this regressor reads windows of scaled features through its numeric encoder (input = "
                           "'encoder'), not prompt texts: use predict_regression_windows (models.encoder.feature_windows)")
        out = self._predict("regressor", texts, batch_size, use_prefix_cache, cache)
        return out[:, 0], np.exp(0.5 * out[:, 1])

    def predict_regression_windows(self, windows: np.ndarray, *, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of the normalised return per window (n, window, features) of scaled features
        (``models.encoder.feature_windows``), for a regressor with a numeric encoder.

        Runs in FIXED-SHAPE batches of ``batch_size`` rows: the last partial batch (and a single
        online window) is filled up with copies of its first row, so every forward pass has the same
        shape and a window's numbers do not depend on how many others came with it, up to float32
        rounding: with several threads the BLAS library may split a batch's rows between them, and a
        row's last bits can then depend on its place in the batch (up to 7e-7 seen on an AVX2 CPU; bit
        for bit on one thread). ``tests/test_encoder.py`` pins a window alone against the same window
        inside a batch."""
        self._require("regressor")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        settings = self.encoder_settings("regressor")
        if settings is None:
            raise KeyError("the regressor reads prompt texts (input = 'text'): use predict_regression")
        x = np.asarray(windows, dtype=np.float64)
        if x.ndim != 3 or x.shape[1:] != (settings.window, settings.features):
            raise ValueError(f"windows must be (n, {settings.window}, {settings.features}), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("windows hold non-finite values")
        out = np.empty((len(x), 2), dtype=np.float64)
        self.train_mode("regressor", False)
        with torch.inference_mode():
            for first in range(0, len(x), batch_size):
                chunk = x[first:first + batch_size]
                real = len(chunk)
                if real < batch_size:
                    chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - real, axis=0)])
                mean, logvar = self.regress_windows(torch.as_tensor(chunk, dtype=torch.float32),
                                                    merged=self.merge_for_inference)
                out[first:first + real] = torch.stack([mean, logvar], dim=1)[:real].double().cpu().numpy()
        return out[:, 0], np.exp(0.5 * out[:, 1])

    def predict_sentiment(self, texts: Sequence[str], *, batch_size: int = 32, use_prefix_cache: bool = True,
                          cache: Any = None) -> np.ndarray:
        """Calibrated class probabilities (n, 3) in ``SENTIMENT_LABELS`` order, per headline text."""
        return self._predict("sentiment", texts, batch_size, use_prefix_cache, cache)

    def _predict(self, task: str, texts: Sequence[str], batch_size: int, use_prefix_cache: bool,
                 cache: Any) -> np.ndarray:
        self._require(task)
        width = 2 if task == "regressor" else self.heads[task].config.classes
        result = np.full((len(texts), width), np.nan, dtype=np.float64)
        todo = list(range(len(texts)))
        fingerprint = self.fingerprint(task)
        if cache is not None and texts:
            found = cache.get_many(fingerprint, texts)
            for i, value in enumerate(found):
                if value is not None:
                    result[i] = value
            todo = [i for i, value in enumerate(found) if value is None]
        if todo:
            self.train_mode(task, False)
            suffixes = self.encoders[task].encode([texts[i] for i in todo])
            order = sorted(range(len(todo)), key=lambda k: len(suffixes[k]))  # similar lengths together
            with torch.inference_mode():
                for start in range(0, len(order), batch_size):
                    chunk = order[start:start + batch_size]
                    rows = self._rows(task, [suffixes[k] for k in chunk], use_prefix_cache, self.merge_for_inference)
                    for k, row in zip(chunk, rows):
                        result[todo[k]] = row
            if cache is not None:
                cache.put_many(fingerprint, [texts[i] for i in todo], result[todo])
        return result

    def _rows(self, task: str, suffixes: list[list[int]], use_prefix_cache: bool, merged: bool = False) -> np.ndarray:
        if task == "regressor":
            mean, logvar = self.regress(suffixes, use_prefix_cache=use_prefix_cache, merged=merged)
            return torch.stack([mean, logvar], dim=1).double().cpu().numpy()
        head = self.heads["sentiment"]
        logits = self.classify(suffixes, use_prefix_cache=use_prefix_cache, merged=merged)
        return head.probabilities(logits).double().cpu().numpy()

    def predict_naive(self, task: str, texts: Sequence[str]) -> np.ndarray:
        """The reference path: one sample at a time, the whole prompt, plain ``no_grad``. Rows as
        ``_predict`` returns them (regressor: mean, log-variance; sentiment: probabilities); the
        adapter runs through peft's LoRA layers, unmerged."""
        self.train_mode(task, False)
        rows = []
        with torch.no_grad():
            for ids in self.encoders[task].encode(texts):
                rows.append(self._rows(task, [ids], use_prefix_cache=False)[0])
        return np.array(rows)

    # ------------------------------------------------------------------------- save and load

    def fingerprint(self, task: str) -> str:
        """Identity of what produces the task's predictions: backbone, adapter, head, prompt."""
        self._require(task)
        if task not in self._fingerprints:
            digest = hashlib.sha256(self.backbone.fingerprint.encode())
            encoder = self.encoders[task]
            digest.update(json.dumps([encoder.prefix, encoder.closing, encoder.template.max_sample_tokens]).encode())
            tensors = {**{n: p for n, p in self.model.named_parameters() if f".{task}." in n and "lora_" in n},
                       **{f"head.{n}": t for n, t in self.heads[task].state_dict().items()}}
            if task in self.numeric:
                digest.update(json.dumps(self.numeric[task].settings.to_dict(), sort_keys=True).encode())
                tensors.update({f"encoder.{n}": t for n, t in self.numeric[task].state_dict().items()})
            for name in sorted(tensors):
                digest.update(name.encode())
                digest.update(tensors[name].detach().float().cpu().contiguous().numpy().tobytes())
            self._fingerprints[task] = digest.hexdigest()[:24]
        return self._fingerprints[task]

    def save_task(self, task: str, folder: str | Path) -> Path:
        """Write the adapter (peft format), the head (safetensors) and ``head.json`` (head, LoRA and
        prompt template settings) into ``folder``."""
        from safetensors.torch import save_file

        self._require(task)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder, selected_adapters=[task])
        nested = folder / task  # peft writes non-"default" adapters into a sub-folder
        if nested.is_dir():
            for item in nested.iterdir():
                shutil.move(str(item), folder / item.name)
            nested.rmdir()
        head = self.heads[task]
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(folder / HEAD_FILE))
        meta = {"task": task, "head": head.describe(), "lora": asdict(self.lora[task]),
                "template": asdict(self.encoders[task].template)}
        if task in self.numeric:
            encoder = self.numeric[task]
            save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(folder / ENCODER_FILE))
            meta["encoder"] = encoder.settings.to_dict()
        (folder / HEAD_CONFIG).write_text(json.dumps(meta, indent=1))
        return folder

    def load_task(self, task: str, folder: str | Path) -> None:
        """Load an adapter and head saved by ``save_task`` (replacing the task's current ones)."""
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        _check_task(task)
        folder = Path(folder)
        meta_path = folder / HEAD_CONFIG
        if not meta_path.is_file():
            raise FileNotFoundError(f"{folder} holds no {HEAD_CONFIG}: not a saved {task} adapter")
        meta = json.loads(meta_path.read_text())
        if meta.get("task") != task:
            raise ValueError(f"{folder} holds a {meta.get('task')!r} adapter, not {task!r}")
        head_meta = meta["head"]
        if head_meta["hidden_size"] != self.backbone.hidden_size:
            raise ValueError(f"{folder}: the head expects hidden size {head_meta['hidden_size']}, "
                             f"the backbone has {self.backbone.hidden_size} (a different backbone?)")
        if task in self.heads:
            self.model.delete_adapter(task)
            del self.heads[task]
        self.numeric.pop(task, None)
        lora = LoraSettings.from_dict(meta["lora"])
        self._add_adapter(task, lora.to_peft(self.num_layers))
        weights = load_file(str(folder / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(self.model, weights, adapter_name=task)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"{folder}: adapter weights do not fit this backbone: {unexpected[:3]}")
        if "template" in meta:  # the prompt is part of the model: use the one it was trained with
            self.set_template(task, PromptTemplate(**meta["template"]))
        head = make_head(task, self.backbone.hidden_size, head_meta)
        head.load_state_dict(load_file(str(folder / HEAD_FILE)))
        self.heads[task] = head.to(self.device).eval()
        self.lora[task] = lora
        if "encoder" in meta:  # a numeric-encoder regressor: its encoder, exactly as saved
            encoder = NumericEncoder(EncoderSettings.from_dict(meta["encoder"]), self.backbone.hidden_size, 1.0)
            encoder.load_state_dict(load_file(str(folder / ENCODER_FILE)))
            self.numeric[task] = encoder.to(self.device).eval()
        self.changed(task)


class _PrefixKV:
    """The key/value cache a layer sees in a recomputed training pass: ``update`` returns the prompt
    prefix's keys and values (batch 1, expanded to the batch) followed by the new ones, as
    ``DynamicCache`` does, but keeps nothing, so calling a layer twice gives the same result."""

    def __init__(self, kv: Sequence[torch.Tensor], size: int) -> None:
        self.kv, self.size = kv, size

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv[2 * layer_idx], self.kv[2 * layer_idx + 1]
        return (torch.cat([k.expand(self.size, -1, -1, -1), keys], dim=-2),
                torch.cat([v.expand(self.size, -1, -1, -1), values], dim=-2))


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks are {', '.join(TASKS)}")
