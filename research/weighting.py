"""Which train-sample weights for the regressor: the same training run with each weighting, compared on
its validation split (issue 17: "weights that keep most of the sample ... choose on validation and report").

Each weighting trains one checkpoint with ``python -m engine train regressor`` (the same data, split,
seed and settings; only ``--weighting`` differs), and its validation metrics are read back from the
run. The test split is scored as well (``evaluate regressor``), printed beside the validation figures
but never used to choose. The rule: a weighting other than ``none`` is chosen only when its validation
IC beats ``none``'s by more than two standard errors of an IC over ``n`` targets that overlap by
``horizon`` bars (``sqrt(horizon / n)``, conservative: it ignores that the two runs' errors are paired);
otherwise ``none``, the simplest, stays.

::

    python -m research.weighting                                  # BTC/USDT 1h, 3,000 samples, 1 epoch each
    python -m research.weighting --backbone tiny --max-train-samples 200 --out /tmp/w   # seconds
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ohlcv" / "crypto" / "binance_BTCUSDT_1h.csv"
WEIGHTINGS = ("none", "sqrt_density", "density")


def _cli(args: Sequence[str]) -> dict[str, Any]:
    """One ``python -m engine`` command with ``--json``; its JSON answer (a clear error otherwise)."""
    from engine.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    if code != 0:
        raise SystemExit(f"error: `python -m engine {' '.join(args)}` exited with {code} (its message is above)")
    return json.loads(out.getvalue())


def compare(data: str | None, weightings: Sequence[str], out: Path, *, horizon: int, epochs: float,
            max_train_samples: int, test_samples: int, backbone: str | None, say=print) -> dict[str, Any]:
    """Train one checkpoint per weighting under ``out`` and return every run's figures and the choice."""
    common = [*(["--data", data] if data else []), *(["--backbone", backbone] if backbone else []),
              "--horizon", str(horizon), "--epochs", f"{epochs:g}", "--max-train-samples", str(max_train_samples),
              "--json", "--no-progress"]
    rows = []
    for weighting in weightings:
        folder = out / weighting
        say(f"weighting {weighting}: training {folder} ...")
        started = time.perf_counter()
        trained = _cli(["train", "regressor", *common, "--weighting", weighting, "--out", str(folder)])
        tested = _cli(["evaluate", "regressor", "--checkpoint", str(folder), "--max-samples", str(test_samples),
                       "--baselines", "none", "--json"])
        record = trained.get("data", {})
        rows.append({"weighting": weighting, "effective_sample_size": record.get("effective_sample_size"),
                     "train_samples": trained["train_samples"], "validation": trained["validation"],
                     "test": tested["model"], "seconds": round(time.perf_counter() - started, 1)})
        say(f"weighting {weighting}: validation IC {trained['validation']['ic']:+.4f}, MSE "
            f"{trained['validation']['mse']:.4f} ({rows[-1]['seconds']:.0f} s)")
    choice, why, se = choose(rows, horizon)
    return {"data": data or "synthetic sample", "horizon": horizon, "epochs": epochs,
            "max_train_samples": max_train_samples, "runs": rows, "ic_std_error": se, "choice": choice, "why": why}


def choose(rows: Sequence[dict[str, Any]], horizon: int) -> tuple[str, str, float]:
    """(the weighting, why, the IC standard error used) by the module docstring's rule."""
    base = next((r for r in rows if r["weighting"] == "none"), rows[0])
    n = base["validation"]["n"]
    se = math.sqrt(horizon / n) if n else math.inf
    best = max(rows, key=lambda r: r["validation"]["ic"])
    if best is not base and best["validation"]["ic"] - base["validation"]["ic"] > 2 * se:
        return best["weighting"], f"its validation IC beats {base['weighting']}'s by more than 2 x {se:.3f}", se
    return base["weighting"], (f"no weighting's validation IC beats {base['weighting']}'s by more than 2 x {se:.3f} "
                               f"(the s.e. of an IC over {n:.0f} targets overlapping by {horizon} bars)"), se


def table(result: dict[str, Any]) -> str:
    """The comparison as a Markdown table and the choice."""
    lines = ["| weighting | effective sample share | validation IC | validation MSE | validation hit rate | "
             "test IC (not used to choose) | test MSE | seconds |", "|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        v, t = r["validation"], r["test"]
        ess = r["effective_sample_size"]
        lines.append(f"| {r['weighting']} | {'' if ess is None else f'{ess:.3f}'} | {v['ic']:+.4f} | {v['mse']:.4f} | "
                     f"{v['hit_rate']:.3f} | {t['ic']:+.4f} | {t['mse']:.4f} | {r['seconds']:.0f} |")
    n = result["runs"][0]["validation"]["n"]
    lines += ["", f"{result['data']}, horizon {result['horizon']}, {result['epochs']:g} epoch(s), "
              f"{result['runs'][0]['train_samples']:,} training samples, {n:.0f} validation targets.",
              f"Choice: **{result['choice']}**: {result['why']}."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m research.weighting", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("::", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="bars to train on (default: %(default)s); '' for the synthetic sample market")
    parser.add_argument("--weightings", default=",".join(WEIGHTINGS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--horizon", type=int, default=6, help="bars ahead of the target (default: %(default)s, "
                        "the strategy's holding time)")
    parser.add_argument("--epochs", type=float, default=1.0, help="(default: %(default)s)")
    parser.add_argument("--max-train-samples", type=int, default=3000, help="the most recent this many (default: "
                        "%(default)s)")
    parser.add_argument("--test-samples", type=int, default=1000, help="test samples scored (default: %(default)s)")
    parser.add_argument("--backbone", help="as `train regressor --backbone` (default: its default, SmolLM2)")
    parser.add_argument("--out", type=Path, default=ROOT / "checkpoints" / "weighting",
                        help="one checkpoint folder per weighting under it (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    weightings = [w.strip() for w in args.weightings.split(",") if w.strip()]
    unknown = [w for w in weightings if w not in WEIGHTINGS]
    if unknown or not weightings:
        parser.error(f"--weightings: {', '.join(unknown) or 'none given'}; choose from {', '.join(WEIGHTINGS)}")
    if args.data and not Path(args.data).is_file():
        parser.error(f"--data {args.data}: no such file (the shared data sets live in ../shared/data)")
    say = (lambda line: print(line, file=sys.stderr)) if args.json else print
    result = compare(args.data or None, weightings, args.out, horizon=args.horizon, epochs=args.epochs,
                     max_train_samples=args.max_train_samples, test_samples=args.test_samples,
                     backbone=args.backbone, say=say)
    print(json.dumps(result) if args.json else table(result))
    return 0


if __name__ == "__main__":
    from engine import allocator

    allocator.start()  # tcmalloc where installed: less heap held, faster steps (engine/allocator.py)
    sys.exit(main())
