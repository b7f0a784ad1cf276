"""The optimisation loop both trainers share: AdamW on the task's LoRA weights and head, linear
warm-up then a cosine / linear / constant schedule, gradient clipping, periodic validation with
early stopping (the best weights are restored at the end), seed control and a tqdm progress bar."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from models.predictor import Predictor
from models.settings import OptimSettings

log = logging.getLogger(__name__)
NOTE_EVERY_S = 60.0  # without a progress bar, a log line this often


@dataclass(slots=True)
class FitResult:
    steps: int
    best_step: int
    best_score: float
    stopped_early: bool
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def schedule_factor(step: int, total: int, warmup: int, kind: str, floor: float = 0.0) -> float:
    """Learning-rate multiplier at ``step`` (0-based): linear warm-up, then the chosen decay down to
    ``floor`` (a fraction of the peak) instead of zero."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant" or total <= warmup:
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else max(0.0, 1.0 - progress)
    return floor + (1.0 - floor) * decay


def epoch_batches(n: int, batch_size: int, rng: np.random.Generator, lengths: np.ndarray | None = None,
                  chunk_batches: int = 50) -> list[np.ndarray]:
    """One epoch's batches: every sample exactly once. With ``lengths``, the shuffled samples are sorted
    by length within chunks of ``chunk_batches`` batches before they are cut, so a batch holds similar
    lengths (little padding), and the batches are then shuffled (the order of lengths is not learnt).
    ``ceil(n / batch_size)`` batches either way; only the last chunk's last batch may be short."""
    order = rng.permutation(n)
    if lengths is None:
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    chunk = batch_size * chunk_batches
    batches: list[np.ndarray] = []
    for first in range(0, n, chunk):
        part = order[first:first + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def micro_batches(index: np.ndarray, lengths: np.ndarray | None, max_tokens: int) -> list[np.ndarray]:
    """``index`` cut into as few runs of similar size as hold at most ``max_tokens`` padded tokens each
    (rows x the run's longest; the samples ordered longest first, a sample alone when it is longer);
    ``[index]`` when it fits, when there are no lengths or when ``max_tokens`` is 0."""
    if lengths is None or not max_tokens or len(index) * int(lengths[index].max(initial=0)) <= max_tokens:
        return [index]
    ordered = index[np.argsort(-lengths[index], kind="stable")]
    for count in range(2, len(ordered) + 1):
        parts = np.array_split(ordered, count)
        if all(len(part) == 1 or len(part) * int(lengths[part[0]]) <= max_tokens for part in parts):
            return parts
    return [ordered[i:i + 1] for i in range(len(ordered))]


def fit(predictor: Predictor, task: str, n_train: int, batch_loss: Callable[[np.ndarray], torch.Tensor],
        validate: Callable[[], dict[str, float]], score_key: str, settings: OptimSettings, *,
        higher_is_better: bool, progress: bool = False, lengths: np.ndarray | None = None,
        sample_weights: np.ndarray | None = None, tie_key: str | None = None) -> FitResult:
    """Train ``task``'s adapter and head. ``batch_loss(indices)`` returns the loss of those training
    samples (with grad): their mean, weighted by ``sample_weights`` when it is given, so that a batch
    split into micro-batches (``settings.max_batch_tokens``) adds up to the same loss and gradients;
    ``validate()`` returns metrics whose ``score_key`` drives early stopping; where two validations tie
    on it (accuracy over a few hundred texts often does), ``tie_key``'s value, in the same direction,
    decides which weights are kept. ``lengths`` (tokens per
    sample) turns on length-bucketed batches when ``settings.length_buckets``, and the splitting."""
    predictor.release_inference_caches()  # merged weights of every task: rebuilt when next predicted with
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    trainable = predictor.trainable_parameters(task)  # a numeric encoder learns at the head's rate
    lora, head = trainable["lora"], trainable["head"] + trainable["encoder"]
    optimiser = torch.optim.AdamW([group for group in (
        {"params": lora, "lr": settings.lr}, {"params": head, "lr": settings.head_lr}) if group["params"]],
        weight_decay=settings.weight_decay)
    total = settings.total_steps(n_train)
    warmup = int(settings.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: schedule_factor(s, total, warmup, settings.schedule, settings.min_lr_ratio))
    per_epoch = math.ceil(n_train / settings.batch_size)
    eval_every = settings.eval_every or per_epoch
    sign = 1.0 if higher_is_better else -1.0
    best = ((-math.inf, -math.inf), 0, _snapshot(predictor, task))
    history: list[dict[str, Any]] = []
    bad_evals, stopped, started = 0, False, time.perf_counter()
    order = np.empty(0, dtype=np.int64)
    bucketed = (lengths is not None and settings.length_buckets
                and n_train >= settings.bucket_chunk * settings.batch_size)
    if bucketed and lengths is not None and len(lengths) != n_train:
        raise ValueError(f"{len(lengths)} lengths for {n_train} training samples")
    queue: list[np.ndarray] = []
    # only training passes read it, and they give the same gradients either way: nothing to undo on an error
    predictor.recompute = settings.recompute
    predictor.activation_budget = settings.activation_budget_mb * 2**20 if settings.activation_budget_mb else None
    bar = _progress(total, task, progress)
    running = 0.0
    step = 0
    last_note = started
    for step in range(1, total + 1):
        if bucketed:
            if not queue:
                queue = epoch_batches(n_train, settings.batch_size, rng, lengths, settings.bucket_chunk)
            index = queue.pop(0)
        else:  # batches drawn from one permutation after another, crossing epochs
            if len(order) < settings.batch_size:
                order = np.concatenate([order, rng.permutation(n_train)])
            index, order = order[:settings.batch_size], order[settings.batch_size:]
        predictor.train_mode(task, True)
        optimiser.zero_grad(set_to_none=True)
        loss = _forward_backward(predictor, task, index, batch_loss, micro_batches(index, lengths, settings.max_batch_tokens),
                                 sample_weights)
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(lora + head, settings.grad_clip)
        optimiser.step()
        scheduler.step()
        predictor.changed(task)
        running = loss if step == 1 else 0.95 * running + 0.05 * loss
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        if not progress and time.perf_counter() - last_note >= NOTE_EVERY_S:  # no bar (a log file): a line now and then
            last_note = time.perf_counter()
            per_step = (last_note - started) / step
            log.info("%s step %d/%d: train loss %.4f, %.1f s/step, about %.0f min to go", task, step, total,
                     running, per_step, per_step * (total - step) / 60)
        if step % eval_every == 0 or step == total:
            predictor.train_mode(task, False)
            metrics = validate()
            score = (sign * metrics[score_key], sign * metrics[tie_key] if tie_key else 0.0)
            history.append({"step": step, "train_loss": running, **metrics})
            line = f"{task} step {step}/{total}: train loss {running:.4f}, " + ", ".join(
                f"val {k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            log.info(line)
            if progress:
                bar.write(line)
            if score > best[0]:
                best, bad_evals = (score, step, _snapshot(predictor, task)), 0
            else:
                bad_evals += 1
                if settings.patience and bad_evals >= settings.patience:
                    stopped = True
                    break
    bar.close()
    _restore(predictor, task, best[2])
    predictor.train_mode(task, False)
    predictor.recompute, predictor.activation_budget = False, None
    return_freed_memory()
    best_score = sign * best[0][0]
    return FitResult(step, best[1], float(best_score), stopped, time.perf_counter() - started, history)


def _forward_backward(predictor: Predictor, task: str, index: np.ndarray,
                      batch_loss: Callable[[np.ndarray], torch.Tensor], parts: list[np.ndarray],
                      sample_weights: np.ndarray | None) -> float:
    """The batch's loss, its gradients accumulated: in one pass, or one pass per part, each part's mean
    loss scaled by its share of the batch (of samples, or of ``sample_weights``) and the task's prompt
    prefix computed once for all of them (``Predictor.shared_prefix``)."""
    if len(parts) == 1:
        loss = batch_loss(index)
        loss.backward()
        return float(loss.item())
    weights = np.ones(len(index)) if sample_weights is None else np.asarray(sample_weights, dtype=np.float64)
    whole = float(weights[index].sum()) if sample_weights is not None else float(len(index))
    total = 0.0
    with predictor.shared_prefix(task):
        for part in parts:
            share = (float(weights[part].sum()) if sample_weights is not None else float(len(part))) / whole
            loss = batch_loss(part) * share
            loss.backward()
            total += float(loss.item())
            del loss  # this part's activations go now, before the next part's forward
    return total


def return_freed_memory() -> None:
    """Hand the heap memory freed by a training run back to the system (tcmalloc's
    ``MallocExtension_ReleaseFreeMemory`` where the process runs on it, glibc's ``malloc_trim``), so
    that the next stage (the other adapter, prediction) starts from what is really in use; nothing
    where the C library has no such call."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    process = ctypes.CDLL(None)  # the preloaded tcmalloc's symbols are the process's own
    release = getattr(process, "MallocExtension_ReleaseFreeMemory", None)
    if release is not None:
        release()
        return
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is not None:
        trim(0)


def _modules(predictor: Predictor, task: str) -> list[torch.nn.Module]:
    return [predictor.heads[task], *([predictor.numeric[task]] if task in predictor.numeric else [])]


def _snapshot(predictor: Predictor, task: str) -> list[Any]:
    return [[p.detach().clone() for p in predictor.lora_parameters(task)]] + [
        {k: t.detach().clone() for k, t in module.state_dict().items()} for module in _modules(predictor, task)]


def _restore(predictor: Predictor, task: str, saved: list[Any]) -> None:
    with torch.no_grad():
        for param, value in zip(predictor.lora_parameters(task), saved[0]):
            param.copy_(value)
        for module, state in zip(_modules(predictor, task), saved[1:]):
            module.load_state_dict(state)
    predictor.changed(task)


def _progress(total: int, task: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"training {task}", unit="step", disable=not enabled, leave=False)
