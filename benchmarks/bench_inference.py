"""Predictor inference speed: the naive per-sample path against the optimised batched path.

Both paths run in the same process on the same prompts and the same weights:

- naive: one sample at a time, the whole prompt (shared prefix + sample) through the backbone,
  ``torch.no_grad`` (``Predictor.predict_naive``);
- optimised: batches of ``--batch-size`` sorted by length, ``torch.inference_mode``, the prompt
  prefix's key/value cache computed once and expanded to each batch (``Predictor.predict_*``);
  Its one-off set-up per adapter version (merging, prefix cache) is timed apart and reported;
- cached: the optimised call repeated with a ``PredictionCache`` already filled by a first pass.

The regressor's numeric-encoder input (``--encoder``, on by default) runs beside it on a second copy of
the backbone: windows of the last ``--window`` bars of scaled features -> ``--virtual-tokens``
embeddings after the cached instruction (``Predictor.predict_regression_windows``), timed in
fixed-shape batches of 1 (one window per call: the online path at batch size 1), of
``--batch-size`` given one window per call (the online path when the backtest batches at that size)
and of ``--batch-size`` over all windows at once (the precomputed path), with a check that each
window predicted alone equals it inside the batch (bit for bit).

Regression prompts come from the synthetic sample market's bars (16 scaled features per bar);
sentiment prompts from Financial PhraseBank sentences when ../shared/data is present, else from the
sample headlines. The adapters are fresh with small random LoRA weights (or ``--checkpoint``
folders), so the adapter path is exercised and outputs vary with the input. Prints predictions per second, the speed-up and the
largest absolute difference between the two paths (regressor: mean and log-variance; sentiment:
probabilities).

    .venv/bin/python benchmarks/bench_inference.py [--backbone smollm2|tiny|PATH] [--samples 48] [--task both]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FPB = ROOT.parent / "shared" / "data" / "sentiment" / "financial_phrasebank" / "Sentences_50Agree.txt"


def regression_texts(n: int) -> list[str]:
    from engine.feeds.sample import generate_sample_market
    from models.features import FeatureScaler, compute_features
    from models.prompts import regression_text

    bars = generate_sample_market().bars
    features = compute_features(bars.ts_open, bars.open, bars.high, bars.low, bars.close, bars.volume, bars.timeframe_ms)
    features = features[~np.isnan(features).any(axis=1)]
    scaled = FeatureScaler.fit(features).transform(features[-n:])
    return [regression_text(bars.symbol, bars.timeframe, row) for row in scaled]


def regression_windows(n: int, window: int) -> np.ndarray:
    from engine.feeds.sample import generate_sample_market
    from models.encoder import feature_windows, window_ready
    from models.features import FeatureScaler, compute_features

    bars = generate_sample_market().bars
    features = compute_features(bars.ts_open, bars.open, bars.high, bars.low, bars.close, bars.volume, bars.timeframe_ms)
    ready = np.flatnonzero(window_ready(features, window))
    scaler = FeatureScaler.fit(features[ready])
    return feature_windows(scaler.transform(features), ready[-n:], window)


def headline_texts(n: int) -> list[str]:
    from models.prompts import headline_text

    if FPB.is_file():
        from models.datasets import load_phrasebank

        texts = load_phrasebank(FPB).texts
    else:
        from engine.feeds.sample import generate_sample_market

        texts = [news.headline for news in generate_sample_market().news]
    step = max(1, len(texts) // n)
    return [headline_text(t) for t in texts[::step][:n]]


def build_predictor(args: argparse.Namespace):
    import torch

    from models.backbone import load_backbone
    from models.predictor import Predictor
    from models.settings import BackboneConfig

    backbone = load_backbone(BackboneConfig(source=args.backbone))
    predictor = Predictor(backbone)
    for task in ("regressor", "sentiment"):
        checkpoint = getattr(args, f"{task}_checkpoint")
        if checkpoint:
            from models.training.checkpoint import load_into, read_checkpoint

            load_into(predictor, read_checkpoint(checkpoint, task))
            continue
        predictor.add_task(task, seed=1)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():  # LoRA B and the regression head's output layer start at zero:
            for param in [*predictor.lora_parameters(task), *predictor.heads[task].parameters()]:
                if param.abs().max() == 0:  # give them values, so outputs depend on the inputs
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        predictor.changed(task)
    return predictor, backbone


def encoder_predictor(args: argparse.Namespace):
    import torch

    from models.backbone import load_backbone
    from models.predictor import Predictor
    from models.settings import BackboneConfig, EncoderSettings

    backbone = load_backbone(BackboneConfig(source=args.backbone))
    predictor = Predictor(backbone)
    predictor.add_task("regressor", seed=1)
    predictor.add_numeric_encoder("regressor", EncoderSettings(window=args.window, virtual_tokens=args.virtual_tokens),
                                  seed=1)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in [*predictor.lora_parameters("regressor"), *predictor.heads["regressor"].parameters()]:
            if param.abs().max() == 0:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    predictor.changed("regressor")
    return predictor


def bench_encoder(predictor, windows: np.ndarray, batch_size: int) -> list[dict]:
    predictor.predict_regression_windows(windows[:1], batch_size=1)  # warm-up
    predictor.changed("regressor")
    started = time.perf_counter()  # once per adapter version: merged weights and the instruction's KV cache
    predictor.predict_regression_windows(windows[:1], batch_size=1)
    setup_s = time.perf_counter() - started
    rows = []
    batched = None
    for label, size, one_by_one in (("encoder online", 1, True), ("encoder online", batch_size, True),
                                    ("encoder batched", batch_size, False)):
        started = time.perf_counter()
        if one_by_one:
            mean = np.array([predictor.predict_regression_windows(w[None], batch_size=size)[0][0] for w in windows])
        else:
            mean = predictor.predict_regression_windows(windows, batch_size=size)[0]
            batched = mean
        seconds = time.perf_counter() - started
        rows.append({"path": label, "batch_size": size, "samples": len(windows), "per_s": len(windows) / seconds,
                     "setup_s": setup_s, "mean": mean})
    alone = rows[1]["mean"]  # one window per call at the batch's fixed shape
    for row in rows:
        row["identical_to_batched"] = bool(np.array_equal(row.pop("mean"), batched)) if row["batch_size"] == batch_size else None
    rows[1]["identical_to_batched"] = bool(np.array_equal(alone, batched))
    return rows


def bench(predictor, task: str, texts: list[str], batch_size: int) -> dict:
    from models.cache import PredictionCache

    predictor.predict_naive(task, texts[:2])  # warm-up: first-call allocations
    predictor.changed(task)
    started = time.perf_counter()  # once per adapter version: merged weights and the prefix's KV cache
    predictor._predict(task, texts[:2], batch_size, True, None)
    setup_s = time.perf_counter() - started
    started = time.perf_counter()
    naive = predictor.predict_naive(task, texts)
    naive_s = time.perf_counter() - started
    started = time.perf_counter()
    fast = predictor._predict(task, texts, batch_size, True, None)
    fast_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder, PredictionCache(Path(folder) / "cache.sqlite") as cache:
        predictor._predict(task, texts, batch_size, True, cache)
        started = time.perf_counter()
        cached = predictor._predict(task, texts, batch_size, True, cache)
        cached_s = time.perf_counter() - started
    suffix = np.mean([len(s) for s in predictor.encoders[task].encode(texts)])
    return {
        "task": task, "samples": len(texts), "prefix_tokens": len(predictor.encoders[task].prefix_ids),
        "mean_sample_tokens": round(float(suffix), 1),
        "optimised_setup_s": setup_s, "naive_per_s": len(texts) / naive_s, "optimised_per_s": len(texts) / fast_s,
        "cached_per_s": len(texts) / cached_s, "speedup": naive_s / fast_s,
        "max_abs_diff": float(np.abs(naive - fast).max()), "cache_identical": bool(np.array_equal(cached, fast)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="smollm2")
    parser.add_argument("--task", choices=["regressor", "sentiment", "both"], default="both")
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-encoder", dest="encoder", action="store_false",
                        help="skip the regressor's numeric-encoder path")
    parser.add_argument("--encoder-samples", type=int, default=0, help="windows for the encoder path (0: --samples)")
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--virtual-tokens", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--regressor-checkpoint")
    parser.add_argument("--sentiment-checkpoint")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    predictor, backbone = build_predictor(args)
    tasks = ("regressor", "sentiment") if args.task == "both" else (args.task,)
    results = []
    for task in tasks:
        texts = regression_texts(args.samples) if task == "regressor" else headline_texts(args.samples)
        results.append(bench(predictor, task, texts, args.batch_size))
    encoder_rows = []
    if args.encoder and args.task in ("regressor", "both"):
        windows = regression_windows(args.encoder_samples or args.samples, args.window)
        encoder_rows = bench_encoder(encoder_predictor(args), windows, args.batch_size)
    header = {"backbone": args.backbone, "backbone_load_s": round(backbone.load_seconds, 2),
              "threads": torch.get_num_threads(), "batch_size": args.batch_size}
    if args.json:
        print(json.dumps({**header, "results": results, "encoder": encoder_rows}))
        return 0
    print(" ".join(f"{k}={v}" for k, v in header.items()))
    print(f"{'task':10} {'samples':>7} {'prefix':>6} {'tokens':>6} {'naive/s':>9} {'optimised/s':>11} {'speed-up':>8} "
          f"{'cached/s':>10} {'max |diff|':>10} {'setup s':>7}")
    for r in results:
        print(f"{r['task']:10} {r['samples']:>7} {r['prefix_tokens']:>6} {r['mean_sample_tokens']:>6} "
              f"{r['naive_per_s']:>9.2f} {r['optimised_per_s']:>11.2f} {r['speedup']:>7.2f}x "
              f"{r['cached_per_s']:>10.0f} {r['max_abs_diff']:>10.2e} {r['optimised_setup_s']:>7.2f}")
    if encoder_rows:
        print(f"\nregressor, numeric encoder ({args.window} bars -> {args.virtual_tokens} virtual tokens), fixed-shape batches")
        print(f"{'path':16} {'batch':>5} {'samples':>7} {'per s':>8} {'== batched':>10} {'setup s':>7}")
        for r in encoder_rows:
            same = "-" if r["identical_to_batched"] is None else str(r["identical_to_batched"])
            print(f"{r['path']:16} {r['batch_size']:>5} {r['samples']:>7} {r['per_s']:>8.2f} {same:>10} {r['setup_s']:>7.2f}")
    return 0


if __name__ == "__main__":
    from engine import allocator

    allocator.start()  # tcmalloc where installed: less heap held, faster steps (engine/allocator.py)
    raise SystemExit(main())
