"""Training-step speed of the sentiment and regressor adapters on the real SmolLM2-135M, before and after.

For each variant it builds a fresh predictor on the same backbone, then runs ``--warmup`` untimed and
``--steps`` timed optimiser steps of ``--batch`` samples exactly as ``models.training.loop.fit`` does
(loss, backward, gradient clipping, AdamW), and prints samples/s, real tokens/s and where the time
goes:

- **prefix**: the prompt's shared prefix through the adapted layers, with grad (every step: the
  adapter moves);
- **forward**: the rest of the forward pass (the suffixes, the head, the loss);
- **backward**, and **optimiser** (clipping and the AdamW step);
- **cache**: for the cached-lower-states variants, running the frozen lower layers once over the
  ``--samples`` training samples (paid once per training run, not per step), and the samples/s of 3
  epochs over those samples with that cost included.

Variants: *before* is the default of 2026-12-01 (LoRA on all 30 layers, dropout 0.05, batches drawn at
random); then length-bucketed batches, dropout 0 (today's default), recomputed activations
(``optim.recompute``: memory for time), an activation budget (``optim.activation_budget_mb``: layers
kept while they fit, the rest recomputed), LoRA on the top K layers with the lower layers' states
cached, and bf16 autocast. Every variant times the same batches. **kept MB** is the most a timed step
kept for its backward pass (weights not counted): its activation memory; with recomputation, what
autograd keeps outside the recomputed layers plus the layers' inputs that the checkpoints hold; **recomp**
the layers a step recomputed, on average. Samples are PhraseBank sentences
(sentiment) and regression prompts of the shared BTC/USDT 1h bars (regressor). Nothing else should run
on the machine meanwhile: two torch jobs on 2 cores slow each other several times over.

The process runs on tcmalloc where it is installed (``engine.allocator``), as the engine does since
2026-12-07; ``--before-on-glibc`` adds a row for *before* timed in a child process on glibc's malloc,
as the engine ran before that, so the speed-up of the whole change is read in one run.

    .venv/bin/python benchmarks/bench_training.py [--task sentiment|regressor|both] [--steps 3] [--top 4,8]
        [--budgets 512,1024] [--only dropout,recomputed,budget] [--before-on-glibc]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PHRASEBANK = DATA / "sentiment" / "financial_phrasebank" / "Sentences_50Agree.txt"
BTC = DATA / "ohlcv" / "crypto" / "binance_BTCUSDT_1h.csv"


@dataclasses.dataclass
class Variant:
    name: str
    top_layers: int = 0
    dropout: float = 0.05
    buckets: bool = False
    bf16: bool = False
    recompute: bool = False
    budget_mb: int = 0  # optim.activation_budget_mb


class Timers:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def time(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


def texts_for(task: str, n: int) -> tuple[list[str], Any]:
    import numpy as np
    import torch

    if task == "sentiment":
        from models.datasets import load_phrasebank
        from models.prompts import headline_text

        data = load_phrasebank(PHRASEBANK)
        rng = np.random.default_rng(0)
        pick = rng.choice(len(data.texts), size=n, replace=False)
        return [headline_text(data.texts[i]) for i in pick], torch.as_tensor(np.asarray(data.labels)[pick])
    from models.training.regressor_config import RegressorTrainingConfig
    from models.training.regressor_trainer import prepare_regression_data
    from research.commands import bars_of

    bars = bars_of({"path": str(BTC)})
    config = dataclasses.replace(RegressorTrainingConfig(), feature_digits=1, max_train_samples=n)
    data = prepare_regression_data(bars, config)
    texts, _, y = data.part("train")
    return list(texts[-n:]), torch.as_tensor(y[-n:], dtype=torch.float32)


def run_variant(backbone: Any, task: str, texts: list[str], targets: Any, variant: Variant, args: Any) -> dict:
    import numpy as np
    import torch

    from models.heads import gaussian_nll
    from models.predictor import Predictor
    from models.settings import LoraSettings
    from models.training.inputs import TaskInputs
    from models.training.loop import epoch_batches, return_freed_memory

    predictor = Predictor(backbone)
    predictor.add_task(task, LoraSettings(dropout=variant.dropout, top_layers=variant.top_layers), seed=0)
    predictor.recompute = variant.recompute
    predictor.activation_budget = variant.budget_mb * 2**20 if variant.budget_mb else None
    encoder = predictor.encoders[task]
    timers = Timers()
    started = time.perf_counter()
    inputs = TaskInputs(predictor, task, encoder.encode(texts), cache_lower=variant.top_layers > 0,
                        batch_size=64)
    cache_s = time.perf_counter() - started if variant.top_layers else 0.0
    # time the prefix inside the step: wrap the two places it runs
    original = {"prefix_cache": predictor.prefix_cache, "upper_prefix_kv": predictor.upper_prefix_kv}

    def timed(name: str) -> Any:
        def call(*a: Any, **k: Any) -> Any:
            with timers.time("prefix"):
                return original[name](*a, **k)
        return call

    predictor.prefix_cache = timed("prefix_cache")  # type: ignore[method-assign]
    predictor.upper_prefix_kv = timed("upper_prefix_kv")  # type: ignore[method-assign]
    head = predictor.heads[task]
    params = predictor.lora_parameters(task) + list(head.parameters())
    optimiser = torch.optim.AdamW(params, lr=3e-4)
    rng = np.random.default_rng(0)
    lengths = inputs.lengths if variant.buckets else None
    batches = [b for _ in range(4) for b in epoch_batches(len(texts), args.batch, rng, lengths)]
    prefix_tokens = len(encoder.prefix_ids)
    tokens = 0
    kept_mb = 0.0
    recomputed: list[int] = []
    predictor.train_mode(task, True)
    def autocast() -> Any:
        return torch.autocast("cpu", dtype=torch.bfloat16) if variant.bf16 else contextlib.nullcontext()

    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            timers.seconds.clear()
            tokens = 0
        index = batches[step]
        with timers.time("step"), kept_tensors(predictor) as kept:
            with timers.time("forward+prefix"), autocast():
                state = inputs.states(index, grad=True)
                if task == "sentiment":
                    loss = torch.nn.functional.cross_entropy(head(state).float(), targets[index])
                else:
                    mean, logvar = head(state)
                    loss = gaussian_nll(mean.float(), logvar.float(), targets[index], torch.ones(len(index)), 0.5)
            with timers.time("backward"):
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
            with timers.time("optimiser"):
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimiser.step()
                predictor.changed(task)
            if args.trim:
                with timers.time("trim"):
                    del state, loss
                    return_freed_memory()
        if step >= args.warmup:
            # under a memory policy the layers' own activations are counted by the layer runner (autograd's
            # innermost hook sees them, not this one; the checkpoints' inputs this one sees too)
            layers = predictor.last_pass if (variant.recompute or variant.budget_mb) else {}
            own = layers.get("kept_bytes", 0) - layers.get("input_bytes", 0)
            kept_mb = max(kept_mb, (kept["bytes"] + own) / 2**20)
            recomputed.append(layers.get("recomputed_layers", 0))
            predictor.last_pass = {}
        tokens += int(inputs.lengths[index].sum()) + prefix_tokens * len(index)
    s = timers.seconds
    step_s = s["step"] / args.steps
    sps = args.batch / step_s
    widths = [int(inputs.lengths[b].max()) for b in batches[args.warmup:args.warmup + args.steps]]
    real = [float(inputs.lengths[b].mean()) for b in batches[args.warmup:args.warmup + args.steps]]
    predictor.model.unload()  # peft injected its layers into the shared backbone: take them out again
    epochs3 = 3 * args.samples_for_epochs
    cache_per_sample = cache_s / len(texts)
    return {"variant": variant.name, "samples_per_s": sps, "tokens_per_s": tokens / s["step"], "step_s": step_s,
            "prefix_s": s.get("prefix", 0.0) / args.steps,
            "forward_s": (s["forward+prefix"] - s.get("prefix", 0.0)) / args.steps,
            "backward_s": s["backward"] / args.steps, "optimiser_s": s["optimiser"] / args.steps,
            "padding": 1 - sum(real) / sum(widths), "cache_s": cache_s,
            "sps_3_epochs": epochs3 / (epochs3 / sps + cache_per_sample * args.samples_for_epochs),
            "prefix_tokens": prefix_tokens, "kept_mb": kept_mb,
            "recomputed": sum(recomputed) / max(1, len(recomputed)), "widths": widths}


@contextlib.contextmanager
def kept_tensors(predictor: Any) -> Iterator[dict[str, int]]:
    """What autograd keeps for the backward pass inside the block, in bytes, the model's weights (kept by
    reference) not counted: the activation memory of a step (the hook costs microseconds a tensor)."""
    import torch

    weights = {t.untyped_storage().data_ptr() for t in predictor.model.parameters()}
    seen: set[int] = set()
    out = {"bytes": 0}

    def pack(t: Any) -> Any:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights and ptr not in seen:
            seen.add(ptr)
            out["bytes"] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield out


def row_line(row: dict) -> str:
    return (f"{row['variant']:<44}{row['samples_per_s']:10.2f}{row['tokens_per_s']:10.0f}{row['step_s']:8.2f}"
            f"{row['prefix_s']:8.2f}{row['forward_s']:7.2f}{row['backward_s']:7.2f}{row['optimiser_s']:7.2f}"
            f"{100 * row['padding']:5.0f}%{row['cache_s']:9.1f}{row['sps_3_epochs']:9.2f}{row['kept_mb']:9.0f}"
            f"{row['recomputed']:7.1f}")


def before_on_glibc(task: str, args: Any) -> dict:
    """'before' timed in a child process on glibc's malloc, the same batches (the same seed and samples)."""
    import os
    import subprocess

    command = [sys.executable, str(Path(__file__).resolve()), "--row-json", "--task", task, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--batch", str(args.batch), "--samples", str(args.samples),
               "--samples-for-epochs", str(args.samples_for_epochs)]
    env = {**os.environ, "ENGINE_ALLOCATOR": "system"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    rows = [line[4:] for line in done.stdout.splitlines() if line.startswith("ROW ")]
    if done.returncode or not rows:
        raise RuntimeError(f"the glibc 'before' child failed (exit {done.returncode}): {done.stderr[-2000:]}")
    row = json.loads(rows[-1])
    row["variant"] = "before, on glibc malloc (own process)"
    return row


def main() -> int:
    from engine import allocator

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=["sentiment", "regressor", "both"], default="both")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--samples", type=int, default=256, help="training samples drawn from (and cached)")
    parser.add_argument("--samples-for-epochs", type=int, default=3876,
                        help="training-set size for the 3-epoch figure (default: PhraseBank 50-agree's training split)")
    parser.add_argument("--top", default="4,8", help="top-K layer counts to try (default: %(default)s)")
    parser.add_argument("--budgets", default="1024",
                        help="activation budgets in MB to try (optim.activation_budget_mb; default: %(default)s)")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast variant")
    parser.add_argument("--trim", action="store_true",
                        help="allocator: hand freed heap back to the system after every step (glibc malloc_trim)")
    parser.add_argument("--mmap-threshold", type=int, default=0,
                        help="allocator: glibc's mmap threshold in bytes (mallopt), so blocks this large and larger "
                             "go back to the system when freed (default 0: glibc's own, adaptive)")
    parser.add_argument("--no-before", action="store_true",
                        help="skip the 'before' reference (e.g. to read one variant's peak RSS alone)")
    parser.add_argument("--only", help="run 'before' and the variants whose names contain one of these "
                        "comma-separated words (e.g. 'dropout,recomputed'); default: all")
    parser.add_argument("--before-on-glibc", action="store_true",
                        help="also time 'before' in a child process on glibc's malloc (ENGINE_ALLOCATOR=system), "
                             "as the engine ran before it used tcmalloc; the same batches")
    parser.add_argument("--row-json", action="store_true", help=argparse.SUPPRESS)  # the child's answer
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    for path in (PHRASEBANK, BTC):
        if not path.is_file():
            print(f"no {path}: the benchmark reads the shared data next to the project", file=sys.stderr)
            return 2
    if args.mmap_threshold:
        import ctypes
        import ctypes.util

        ctypes.CDLL(ctypes.util.find_library("c")).mallopt(-3, args.mmap_threshold)  # M_MMAP_THRESHOLD
    import torch

    from models.backbone import load_backbone
    from models.settings import BackboneConfig

    torch.set_num_threads(torch.get_num_threads())
    backbone = load_backbone(BackboneConfig())
    print(f"backbone SmolLM2-135M ({backbone.model.config.num_hidden_layers} layers), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {'tcmalloc' if allocator.loaded() else 'glibc malloc'}; batch {args.batch}, "
          f"{args.warmup} warm-up + {args.steps} timed steps per variant", flush=True)
    tops = [int(k) for k in args.top.split(",") if k]
    budgets = [int(b) for b in args.budgets.split(",") if b]
    variants = [Variant("before: all layers, dropout 0.05, random batches"),
                Variant("+ length buckets", buckets=True),
                Variant("+ dropout 0", buckets=True, dropout=0.0),
                Variant("+ recomputed activations (all layers)", buckets=True, dropout=0.0, recompute=True),
                *[Variant(f"+ activation budget {b} MB (all layers)", buckets=True, dropout=0.0, budget_mb=b)
                  for b in budgets],
                *[Variant(f"+ top {k} layers, lower states cached", top_layers=k, buckets=True, dropout=0.0)
                  for k in tops]]
    if args.only:
        keys = [k.strip() for k in args.only.split(",") if k.strip()]
        variants = [v for v in variants if v.name.startswith("before") or any(k in v.name for k in keys)]
    if args.no_before:
        variants = [v for v in variants if not v.name.startswith("before")]
    if args.row_json:  # a child of --before-on-glibc: 'before' only, one JSON line
        texts, targets = texts_for(args.task, args.samples)
        print("ROW " + json.dumps(run_variant(backbone, args.task, texts, targets, variants[0], args)), flush=True)
        return 0
    if not args.no_bf16 and not args.only:
        variants.append(Variant(f"+ bf16 autocast (top {tops[0]})", top_layers=tops[0], buckets=True, dropout=0.0,
                                bf16=True))
    tasks = ["sentiment", "regressor"] if args.task == "both" else [args.task]
    for task in tasks:
        texts, targets = texts_for(task, args.samples)
        print(f"\n{task}: {len(texts)} samples")
        head = (f"{'variant':<44}{'samples/s':>10}{'tokens/s':>10}{'step s':>8}{'prefix':>8}{'fwd':>7}"
                f"{'bwd':>7}{'optim':>7}{'pad':>6}{'cache s':>9}{'3 ep s/s':>9}{'kept MB':>9}{'recomp':>7}")
        print(head)
        rows = []
        if args.before_on_glibc and not args.no_before:
            rows.append(before_on_glibc(task, args))
            print(row_line(rows[-1]), flush=True)
        for variant in variants:
            row = run_variant(backbone, task, texts, targets, variant, args)
            rows.append(row)
            print(row_line(row), flush=True)
        print(f"(prompt prefix {rows[0]['prefix_tokens']} tokens, run by every step through the adapted layers; "
              f"timed batches {rows[0]['widths']} tokens wide; kept MB: the most a timed step kept for its backward "
              "pass; recomp: layers recomputed a step, on average)")
        befores = [r for r in rows if r["variant"].startswith("before")] or rows[:1]  # rows[0] with --no-before
        best = max(rows, key=lambda r: r["sps_3_epochs"])
        whole = max((r for r in rows if not r["cache_s"]), key=lambda r: r["samples_per_s"])
        for base in befores:
            speed = base["samples_per_s"]
            print(f"{task}, against {base['variant']!r} ({speed:.2f} samples/s):")
            print(f"  best {best['variant']!r}: {best['samples_per_s']:.2f} samples/s per step "
                  f"({best['samples_per_s'] / speed:.1f}x), {best['sps_3_epochs']:.2f} over 3 epochs of "
                  f"{args.samples_for_epochs:,} samples with the cache ({best['sps_3_epochs'] / speed:.1f}x)")
            print(f"  best with every layer adapted {whole['variant']!r}: {whole['samples_per_s']:.2f} samples/s "
                  f"({whole['samples_per_s'] / speed:.2f}x)")
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")
    return 0


if __name__ == "__main__":
    from engine import allocator

    allocator.start()  # tcmalloc where installed: less heap held, faster steps (engine/allocator.py)
    sys.exit(main())
