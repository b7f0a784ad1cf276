"""The predictor's side of the command line: ``train`` and ``evaluate`` for ``regressor`` and ``sentiment``.

Data comes through the engine's own loaders (``load_bars`` for any bar file the backtester reads,
the synthetic sample market when no file is given) and the ``models.datasets`` readers for
labelled text; ``models/`` does the rest. torch and transformers are imported inside the
functions, so ``python -m engine --help`` stays instant.

::

    python -m engine train sentiment --data ../shared/data/sentiment/financial_phrasebank/Sentences_50Agree.txt
    python -m engine train sentiment --data sent_train.csv --label-map twitter --test sent_valid.csv
    python -m engine train regressor --data ../shared/data/ohlcv/crypto/binance_BTCUSDT_1h.csv --max-train-samples 4000
    python -m engine evaluate sentiment --checkpoint checkpoints/sentiment
    python -m engine train sentiment --backbone tiny --max-steps 20 --out /tmp/smoke   # seconds, for tests
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, DataError

log = logging.getLogger("engine.ml")
TEXT_FORMATS = ("auto", "phrasebank", "csv", "sample")
DEFAULT_OUT = "checkpoints/{task}"


def add_parsers(sub: Any) -> None:
    train = sub.add_parser(
        "train", help="fine-tune the predictor's regressor or sentiment adapter (LoRA) and write a checkpoint",
        description="Fine-tune one LoRA adapter and its head on the default SmolLM2 backbone (or --backbone). "
        "Without --data, the synthetic sample market's bars or headlines are used.",
        epilog=__doc__.split("::", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    train_tasks = train.add_subparsers(dest="task", required=True, metavar="TASK")
    for task in ("regressor", "sentiment"):
        p = train_tasks.add_parser(task, help=f"train the {task} adapter")
        _data_flags(p, task)
        _backbone_flags(p)
        p.add_argument("--out", help=f"checkpoint folder (default: {DEFAULT_OUT.format(task=task)}); a checkpoint there is replaced, any other non-empty folder refused")
        g = p.add_argument_group("training")
        g.add_argument("--epochs", type=float, help="passes over the training split")
        g.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
        g.add_argument("--batch-size", type=int)
        g.add_argument("--lr", type=float, help="learning rate of the LoRA weights")
        g.add_argument("--head-lr", type=float, help="learning rate of the head")
        g.add_argument("--warmup-ratio", type=float)
        g.add_argument("--schedule", choices=["cosine", "linear", "constant"])
        g.add_argument("--grad-clip", type=float, help="max gradient norm (0: off)")
        g.add_argument("--eval-every", type=int, help="steps between validations (default: once per epoch)")
        g.add_argument("--patience", type=int, help="validations without improvement before stopping (0: never)")
        g.add_argument("--seed", type=int)
        g.add_argument("--lora-rank", type=int)
        g.add_argument("--lora-alpha", type=int)
        g.add_argument("--lora-dropout", type=float)
        g.add_argument("--lora-targets", help="comma-separated module names, e.g. q_proj,v_proj")
        g.add_argument("--lora-top-layers", type=int,
                       help="adapt only the top K decoder layers (0: all); the frozen layers below run once per sample")
        g.add_argument("--no-cache-lower-states", action="store_true",
                       help="with --lora-top-layers: run the whole model every step instead (the reference path)")
        g.add_argument("--no-length-buckets", action="store_true", help="draw batches at random, not by length")
        g.add_argument("--min-lr-ratio", type=float, help="the schedule decays to this fraction of the peak, not zero")
        g.add_argument("--max-batch-tokens", type=int,
                       help="memory: a batch over this many padded tokens runs as several passes with the same "
                            "gradients (e.g. 256 keeps a PhraseBank run near 2 GB; default 0: never split)")
        g.add_argument("--recompute", action=argparse.BooleanOptionalAction, default=None,
                       help="memory: keep only each layer's input and recompute its activations in the backward "
                            "pass (the same gradients; a PhraseBank step keeps 0.2 GB instead of 1.9 GB, ~20%% "
                            "slower)")
        g.add_argument("--activation-budget-mb", type=int,
                       help="memory: keep layers' activations while they fit in this many MB and recompute the "
                            "rest (the same gradients; short batches run at full speed; 0: no budget)")
        g.add_argument("--max-train-samples", type=int, help="train on at most this many samples")
        if task == "sentiment":
            g.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing in [0, 1)")
            g.add_argument("--class-weights", choices=["none", "balanced", "sqrt"],
                           help="weigh the loss by class: balanced (every class the same in total), sqrt (halfway) "
                                "or none (the default); for macro-F1 where a class is rare")
        if task == "regressor":
            g.add_argument("--loss", choices=["gaussian", "beta_nll"])
            g.add_argument("--beta", type=float, help="beta_nll's beta (default 0.5; 1 gives the mean MSE's gradient)")
            g.add_argument("--select-metric", choices=["mse", "nll", "ic"],
                           help="the validation metric that keeps the best step (default: mse for the encoder, nll "
                                "for text); ic ranks and ignores the validation window's drift")
            g.add_argument("--center-target", action=argparse.BooleanOptionalAction, default=None,
                           help="train on targets less their training mean, so the model forecasts the deviation "
                                "from the training window's drift (default: on)")
            g.add_argument("--refit-intercept", action=argparse.BooleanOptionalAction, default=None,
                           help="encoder: refit the head's bias after training so the mean forecast on the training "
                                "windows is their mean target (default: on for the encoder, off for text)")
            g.add_argument("--no-density-weights", action="store_true", help="do not reweight rare targets")
            g.add_argument("--max-val-samples", type=int, help="validate on the most recent this many (default 1024)")
            g.add_argument("--input", choices=["text", "encoder"], help="the model's input: prompt texts, or windows "
                           "of scaled features through the numeric encoder (default)")
            g.add_argument("--window", type=int, help="encoder: bars per sample (default 16)")
            g.add_argument("--virtual-tokens", type=int, help="encoder: embeddings handed to the backbone (default 4)")
            g.add_argument("--weighting", choices=["none", "sqrt_density", "density"], help="train-sample weights")
            g.add_argument("--target-clip", type=float, help="winsorise train targets at this many std (0: off)")
            g.add_argument("--horizon", type=int, help="bars ahead of the target (default 1); strategies.llm_signal "
                           "needs its holding_bars (6 in config.toml)")
        _output_flags(p)

    evaluate = sub.add_parser(
        "evaluate", help="report a trained adapter's held-out metrics beside baselines",
        description="Evaluate a checkpoint on its held-out split (rebuilt exactly as in training) and compare "
        "with baselines. Without --data, the data recorded in the checkpoint is used.")
    eval_tasks = evaluate.add_subparsers(dest="task", required=True, metavar="TASK")
    for task, baselines in (("regressor", "ridge,random"), ("sentiment", "majority,tfidf,random")):
        p = eval_tasks.add_parser(task, help=f"evaluate a {task} checkpoint")
        p.add_argument("--checkpoint", default=None, help=f"checkpoint folder (default: {DEFAULT_OUT.format(task=task)})")
        _data_flags(p, task)
        p.add_argument("--split", choices=["test", "val", "train"], default="test")
        p.add_argument("--baselines", default=baselines, help=f"comma-separated, or 'none' (default: {baselines})")
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--baseline-train-samples", type=int, default=2000,
                       help="training samples for the random-backbone baseline's head (0: all)")
        if task == "regressor":
            p.add_argument("--max-samples", type=int, default=0, help="only the most recent this many split samples")
        _output_flags(p)


def _data_flags(p: argparse.ArgumentParser, task: str) -> None:
    g = p.add_argument_group("data")
    if task == "regressor":
        g.add_argument("--data", help="bar file (any layout `backtest --data` reads); default: the synthetic sample")
        g.add_argument("--symbol", help="asset name for the prompt (default: from the file name)")
        g.add_argument("--timeframe", help="bar length such as 1h (default: inferred)")
        g.add_argument("--start", help="first bar open time to include, ISO (UTC)")
        g.add_argument("--end", help="bars opening before this instant are included, ISO (UTC)")
        g.add_argument("--drop-bad-rows", action="store_true")
    else:
        g.add_argument("--data", help="labelled text: a Financial PhraseBank .txt or a text,label .csv; "
                       "default: the synthetic sample's headlines")
        g.add_argument("--format", choices=TEXT_FORMATS, default=None, help="default: by file extension")
        g.add_argument("--label-map", help="raw label -> class, e.g. twitter or 0=bearish,1=bullish,2=neutral")
        g.add_argument("--test", help="a separate held-out file in the same layout (else a stratified split)")


def _backbone_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backbone")
    g.add_argument("--backbone", default=None, help="smollm2 (default), tiny (random, for smoke tests), a folder, "
                   "a .gguf file or a Hugging Face hub id")
    g.add_argument("--precision", choices=["fp32", "bf16", "int8", "nf4"], default=None)
    g.add_argument("--cache-dir", default=None, help="where converted GGUF models go (default: .cache/models)")


def _output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


# ----------------------------------------------------------------------------------- running


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if not args.json else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    from models.datasets import DatasetError
    from models.settings import BackboneError, missing_llm_module
    from models.training.checkpoint import CheckpointError

    if (missing := missing_llm_module()) is not None:
        raise ConfigError(f"the predictor needs the llm extra ({missing} is missing): pip install -e '.[llm]'")
    try:
        if args.command == "train":
            report = _train_regressor(args) if args.task == "regressor" else _train_sentiment(args)
        else:
            report = _evaluate(args)
    except (BackboneError, CheckpointError) as exc:
        raise ConfigError(str(exc)) from exc
    except DatasetError as exc:
        raise DataError(str(exc)) from exc
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if args.json:
        print(json.dumps(report, default=str))
    else:
        print(format_report(report))
    return 0


def _progress(args: argparse.Namespace) -> bool:
    return not args.json and not args.no_progress and sys.stderr.isatty()


def _backbone_config(args: argparse.Namespace, base: Any) -> Any:
    changes = {k: v for k, v in (("source", args.backbone), ("precision", args.precision),
                                 ("cache_dir", args.cache_dir)) if v is not None}
    return replace(base, **changes)


def _optim(args: argparse.Namespace, base: Any) -> Any:
    names = ("epochs", "max_steps", "batch_size", "lr", "head_lr", "warmup_ratio", "schedule", "grad_clip",
             "eval_every", "patience", "seed", "min_lr_ratio", "max_batch_tokens", "recompute",
             "activation_budget_mb")
    changes = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    if args.no_cache_lower_states:
        changes["cache_lower_states"] = False
    if args.no_length_buckets:
        changes["length_buckets"] = False
    return replace(base, **changes)


def _lora(args: argparse.Namespace, base: Any) -> Any:
    changes = {k: v for k, v in (("rank", args.lora_rank), ("alpha", args.lora_alpha),
                                 ("dropout", args.lora_dropout), ("top_layers", args.lora_top_layers)) if v is not None}
    if args.lora_targets:
        changes["target_modules"] = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    return replace(base, **changes)


def _out(args: argparse.Namespace) -> Path:
    return Path(args.out or DEFAULT_OUT.format(task=args.task))


# -- regressor


def _bars(args: argparse.Namespace, recorded: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """``BarArrays`` from the flags (or the description recorded in a checkpoint) and that description."""

    desc = {"path": args.data, "symbol": args.symbol, "timeframe": args.timeframe, "start": args.start,
            "end": args.end, "drop_bad_rows": bool(args.drop_bad_rows)}
    if args.data is None and recorded:
        desc = {k: recorded.get(k) for k in desc}
    return bars_of(desc), desc


def bars_of(desc: dict[str, Any]) -> Any:
    """``BarArrays`` of a bar description (``path`` None: the synthetic sample market)."""
    from models.training.regressor_trainer import BarArrays

    desc = {"symbol": None, "timeframe": None, "start": None, "end": None, "drop_bad_rows": False, **desc}
    if desc["path"] is None:
        from engine.feeds.sample import generate_sample_market

        series = generate_sample_market().bars
    else:
        from engine.feeds.bar_files import load_bars
        from engine.timeutil import parse_instant, parse_timeframe

        try:
            timeframe_ms = parse_timeframe(desc["timeframe"]) if desc["timeframe"] else None
            start = parse_instant(desc["start"]) if desc["start"] else None
            end = parse_instant(desc["end"]) if desc["end"] else None
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        series = load_bars(desc["path"], symbol=desc["symbol"], timeframe_ms=timeframe_ms,
                           drop_bad_rows=desc["drop_bad_rows"]).series.between(start, end)
    if len(series) == 0:
        raise DataError(f"{desc['path']}: no bars in the chosen period")
    return BarArrays(series.symbol, series.timeframe, series.timeframe_ms, series.ts_open, series.open,
                     series.high, series.low, series.close, series.volume, source=series.source or str(desc["path"]))


def _train_regressor(args: argparse.Namespace) -> dict[str, Any]:
    from models.training.regressor_config import RegressorTrainingConfig

    base = RegressorTrainingConfig()
    changes: dict[str, Any] = {"backbone": _backbone_config(args, base.backbone), "optim": _optim(args, base.optim),
                               "lora": _lora(args, base.lora)}
    if args.loss:
        changes["loss"] = args.loss
    if args.no_density_weights:
        changes["density_weighting"] = False
    for name in ("max_train_samples", "max_val_samples", "input", "window", "virtual_tokens", "weighting",
                 "target_clip", "horizon", "beta", "select_metric", "refit_intercept", "center_target"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    config = replace(base, **changes)
    _, desc = _bars(args)
    return train_regressor(config, desc, _out(args), progress=_progress(args))


def train_regressor(config: Any, data: dict[str, Any], out: Path, *, progress: bool = False) -> dict[str, Any]:
    """Fine-tune the regressor (``RegressorTrainingConfig``) on the bars ``data`` describes
    (``path``, optional ``symbol``, ``timeframe``, ``start``, ``end``) into ``out``; the metrics."""
    from models.training.regressor_trainer import RegressorTrainer

    metrics = RegressorTrainer(config, progress=progress).train(bars_of(data), out, describe=data)
    return {"command": "train", "task": "regressor", "checkpoint": str(out), **metrics}


# -- sentiment


def _texts(args: argparse.Namespace, recorded: dict[str, Any] | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """(dataset, separate test set or None, description) from the flags or a checkpoint's record."""
    desc = {"path": args.data, "format": args.format, "label_map": args.label_map, "test": args.test}
    if args.data is None and recorded:
        desc = {k: recorded.get(k) for k in desc}
    data, test = texts_of(desc)
    return data, test, desc


def texts_of(desc: dict[str, Any]) -> tuple[Any, Any]:
    """(labelled texts, separate test set or None) of a description: ``path``, ``format``,
    ``label_map``, ``test`` (``path`` None: the synthetic sample's headlines)."""
    fmt, label_map = desc.get("format"), desc.get("label_map")
    data = _read_texts(desc.get("path"), fmt, label_map)
    test = _read_texts(desc["test"], fmt, label_map) if desc.get("test") else None
    return data, test


def _read_texts(path: str | None, fmt: str | None, label_map: str | None) -> Any:
    from models.datasets import load_labelled_csv, load_phrasebank, sample_headlines

    if path is None or fmt == "sample":
        from engine.feeds.sample import generate_sample_market

        market = generate_sample_market()
        return sample_headlines([(n.headline, t) for n, t in zip(market.news, market.tones)])
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file")
    if fmt in (None, "auto"):
        fmt = "phrasebank" if Path(path).suffix.lower() == ".txt" else "csv"
    if fmt == "phrasebank":
        return load_phrasebank(path)
    return load_labelled_csv(path, label_map=label_map)


def _train_sentiment(args: argparse.Namespace) -> dict[str, Any]:
    from models.training.sentiment_config import SentimentTrainingConfig

    base = SentimentTrainingConfig()
    changes: dict[str, Any] = {"backbone": _backbone_config(args, base.backbone), "optim": _optim(args, base.optim),
                               "lora": _lora(args, base.lora)}
    if args.max_train_samples is not None:
        changes["max_train_samples"] = args.max_train_samples
    if args.label_smoothing is not None:
        changes["label_smoothing"] = args.label_smoothing
    if args.class_weights is not None:
        changes["class_weights"] = args.class_weights
    config = replace(base, **changes)
    _, _, desc = _texts(args)
    return train_sentiment(config, desc, _out(args), progress=_progress(args))


def train_sentiment(config: Any, data: dict[str, Any], out: Path, *, progress: bool = False) -> dict[str, Any]:
    """Fine-tune the sentiment adapter (``SentimentTrainingConfig``) on the labelled texts ``data``
    describes (``texts_of``) into ``out``; the metrics."""
    from models.training.sentiment_trainer import SentimentTrainer, prepare_sentiment_data

    texts, test = texts_of(data)
    prepared = prepare_sentiment_data(texts, config, test)
    metrics = SentimentTrainer(config, progress=progress).train(prepared, out, describe=data)
    return {"command": "train", "task": "sentiment", "checkpoint": str(out), **metrics}


# -- evaluate


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from models.training.checkpoint import read_checkpoint

    folder = Path(args.checkpoint or DEFAULT_OUT.format(task=args.task))
    checkpoint = read_checkpoint(folder, args.task)
    recorded = checkpoint.config.get("data", {})
    baselines = tuple(b.strip() for b in args.baselines.split(",") if b.strip() and b.strip() != "none")
    if args.task == "regressor":
        from models.training.regressor_trainer import evaluate_regressor

        bars, _ = _bars(args, recorded)
        report = evaluate_regressor(folder, bars, split=args.split, baselines=baselines,
                                    batch_size=args.batch_size, max_samples=args.max_samples,
                                    baseline_train_samples=args.baseline_train_samples)
    else:
        from models.training.sentiment_trainer import evaluate_sentiment

        data, test, _ = _texts(args, recorded)
        report = evaluate_sentiment(folder, data, test, split=args.split, baselines=baselines,
                                    batch_size=args.batch_size, baseline_train_samples=args.baseline_train_samples)
    return {"command": "evaluate", **report}


# ------------------------------------------------------------------------------------ output

_REGRESSION_KEYS = ("mse", "mae", "hit_rate", "ic", "coverage_50", "coverage_90", "nll")
_SENTIMENT_KEYS = ("accuracy", "macro_f1", "weighted_f1", "ece")


def format_report(report: dict[str, Any]) -> str:
    """A short human-readable summary of a train or evaluate report."""
    keys = _REGRESSION_KEYS if report["task"] == "regressor" else _SENTIMENT_KEYS
    lines = [f"{report['command']} {report['task']}: checkpoint {report.get('checkpoint', '')}"]
    rows: list[tuple[str, dict[str, Any]]] = []
    if report["command"] == "train":
        fit = report["fit"]
        lines.append(f"steps {fit['steps']} (best at {fit['best_step']}{', stopped early' if fit['stopped_early'] else ''}),"
                     f" {report['train_samples']} training samples, {report['seconds']:.1f} s")
        rows.append(("validation", report["validation"]))
    else:
        lines.append(f"split {report['split']} of {report['data']}")
        rows.append(("model", report["model"]))
        rows.extend((f"baseline: {name}", metrics) for name, metrics in report["baselines"].items())
    width = max(len(name) for name, _ in rows)
    lines.append(" " * width + "  " + "  ".join(f"{k:>11}" for k in keys))
    for name, metrics in rows:
        cells = [metrics.get(k) for k in keys]
        lines.append(f"{name:<{width}}  " + "  ".join(f"{c:>11.4f}" if isinstance(c, float) else f"{'-':>11}" for c in cells))
    for name, metrics in rows:
        if "accuracy_ci95" in metrics:
            (alo, ahi), (flo, fhi) = metrics["accuracy_ci95"], metrics["macro_f1_ci95"]
            lines.append(f"{name:<{width}}  95% intervals: accuracy [{alo:.3f}, {ahi:.3f}], macro-F1 [{flo:.3f}, {fhi:.3f}]")
    model = report.get("model") or report.get("validation") or {}
    if "confusion_matrix" in model:
        lines.append("confusion (rows true, columns predicted; " + ", ".join(model["labels"]) + "): "
                     + json.dumps(model["confusion_matrix"]))
    return "\n".join(lines)
