"""How many top layers the sentiment adapter needs: accuracy and time for each K on PhraseBank.

For each K in ``--top`` it fine-tunes the sentiment adapter on a stratified subset of the
Financial PhraseBank 50-agree training split (``--samples``), LoRA on the top K of SmolLM2's 30
layers with the lower layers' states cached, the trainer's defaults otherwise (``--epochs``, early
stopping on validation), then scores the held-out test split (25%, stratified, the same for every K)
with the whole model. Prints accuracy and macro-F1 with their 95% intervals (normal approximation
for the accuracy, bootstrap for the F1), the time spent caching the lower states, the training time
and the samples/s. K = 0 means every layer (the old default; slow: pass it explicitly).

    .venv/bin/python benchmarks/sweep_top_layers.py [--top 2,4,8] [--samples 1000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHRASEBANK = ROOT.parent / "shared" / "data" / "sentiment" / "financial_phrasebank" / "Sentences_50Agree.txt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", default="2,4,8", help="K values (0: every layer) (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=1000, help="training samples (default: %(default)s)")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--lr", type=float, help="LoRA learning rate (default: the trainer's)")
    parser.add_argument("--head-lr", type=float, help="head learning rate (default: the trainer's)")
    parser.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if not PHRASEBANK.is_file():
        print(f"no {PHRASEBANK}", file=sys.stderr)
        return 2
    import numpy as np

    from models.backbone import load_backbone
    from models.datasets import load_phrasebank
    from models.prompts import headline_text
    from models.training.evaluation import classification_metrics
    from models.training.sentiment_config import SentimentTrainingConfig
    from models.training.sentiment_trainer import SentimentTrainer, load_sentiment, prepare_sentiment_data

    data = load_phrasebank(PHRASEBANK)
    base = SentimentTrainingConfig()
    rows = []
    print(f"PhraseBank 50-agree: {len(data.texts):,} sentences; {args.samples:,} training samples, "
          f"{args.epochs:g} epochs, lr {args.lr or base.optim.lr:g} / head {args.head_lr or base.optim.head_lr:g}, "
          f"dropout {args.dropout:g}", flush=True)
    print(f"{'K':>3} {'accuracy':>17} {'macro-F1':>17} {'cache s':>8} {'train s':>8} {'samples/s':>10} {'steps':>6}")
    for k in (int(x) for x in args.top.split(",")):
        optim = dataclasses.replace(base.optim, epochs=args.epochs, lr=args.lr or base.optim.lr,
                                    head_lr=args.head_lr or base.optim.head_lr)
        config = dataclasses.replace(base, max_train_samples=args.samples, optim=optim,
                                     lora=dataclasses.replace(base.lora, top_layers=k, dropout=args.dropout))
        prepared = prepare_sentiment_data(data, config)
        folder = Path(tempfile.mkdtemp(prefix=f"top{k}-")) / "ckpt"
        backbone = load_backbone(config.backbone)
        started = time.perf_counter()
        metrics = SentimentTrainer(config, backbone=backbone).train(prepared, folder)
        seconds = time.perf_counter() - started
        predictor, _ = load_sentiment(folder)
        texts = [headline_text(t) for t in prepared.test.texts]
        probs = predictor.predict_sentiment(texts, batch_size=64)
        test = classification_metrics(probs, prepared.test.labels)
        labels = np.asarray(prepared.test.labels)
        acc = float(test["accuracy"])
        half = 1.96 * math.sqrt(acc * (1 - acc) / len(labels))
        f1s = []
        rng = np.random.default_rng(0)
        for _ in range(200):
            pick = rng.integers(0, len(labels), len(labels))
            f1s.append(classification_metrics(probs[pick], labels[pick])["macro_f1"])
        lo, hi = np.percentile(f1s, [2.5, 97.5])
        cache_s = metrics["inputs"]["lower_states_seconds"]
        train_s = metrics["fit"]["seconds"]
        steps = metrics["fit"]["steps"]
        sps = steps * config.optim.batch_size / train_s
        row = {"top_layers": k, "test_accuracy": acc, "accuracy_95": [acc - half, acc + half],
               "test_macro_f1": float(test["macro_f1"]), "macro_f1_95": [float(lo), float(hi)],
               "test_n": len(labels), "cache_seconds": cache_s, "train_seconds": train_s, "total_seconds": seconds,
               "samples_per_second": sps, "steps": steps, "best_step": metrics["fit"]["best_step"],
               "validation_accuracy": metrics["validation"]["accuracy"], "epochs": args.epochs,
               "lr": optim.lr, "head_lr": optim.head_lr, "dropout": args.dropout}
        rows.append(row)
        print(f"{k:>3} {acc:.3f} [{acc - half:.3f},{acc + half:.3f}] {test['macro_f1']:.3f} [{lo:.3f},{hi:.3f}] "
              f"{cache_s:8.1f} {train_s:8.1f} {sps:10.2f} {steps:6d}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    from engine import allocator

    allocator.start()  # tcmalloc where installed: less heap held, faster steps (engine/allocator.py)
    sys.exit(main())
