"""Command line: ``python -m engine backtest ...``. Run with ``--help`` for the options."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.errors import ConfigError, DataError, EngineError

log = logging.getLogger("engine")

DEFAULT_CONFIG = Path("config.toml")


def add_run_options(p: argparse.ArgumentParser, *, many_data: bool = False) -> None:
    """What to run and on which bars: shared by `backtest`, `sweep` and `paper start` (``many_data``:
    ``--data`` repeatable, for `sweep`)."""
    p.add_argument("--config", type=Path, help="TOML config file (default: ./config.toml if present)")
    p.add_argument("--strategy", help="strategy name (see `python -m engine strategies`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value; repeatable, e.g. --set costs.slippage_bps=5")
    if many_data:
        p.add_argument("--data", action="append", default=[], metavar="FILE",
                       help="CSV of bars; repeatable: every point runs on each file (default: the config's data)")
    else:
        p.add_argument("--data", help="CSV of bars (epoch ms/s, ISO or M/D/YYYY dates; any column order)")
    p.add_argument("--source", choices=["auto", "csv", "sample", "yfinance", "bybit"],
                   help="where bars come from: auto (default: --data if given, else the synthetic sample), or "
                   "yfinance / bybit: the local cache, fetching only missing ranges (needs --symbol, --timeframe, "
                   "--start, --end; see `python -m engine data --help`)")
    p.add_argument("--news", help="CSV of headlines (title/headline + date/published columns)")
    p.add_argument("--symbol", help="symbol name (default: derived from the file name)")
    p.add_argument("--timeframe", help="bar length such as 1h or 1d (default: inferred)")
    p.add_argument("--start", help="first bar open time to include, ISO (UTC), e.g. 2020-01-01")
    p.add_argument("--end", help="bars opening before this instant are included, ISO (UTC)")
    p.add_argument("--drop-bad-rows", action="store_true", help="drop malformed rows (reporting how many) instead of stopping")
    p.add_argument("--fill-mode", choices=["next_open", "close"],
                   help="next_open (default, realistic) or close (compatibility only)")


def _parser() -> argparse.ArgumentParser:
    from strategies import DEFAULT_STRATEGY

    parser = argparse.ArgumentParser(
        prog="python -m engine",
        description="Event-driven backtesting engine with cost-aware simulated execution.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bt = sub.add_parser(
        "backtest",
        help="run a strategy over bars (and headlines) with a simulated broker",
        description="Run a strategy over historical bars and headlines. Without --data it runs on the "
        "offline synthetic sample market. Settings come from config.toml; flags override it.",
        epilog="examples:\n"
        "  python -m engine backtest\n"
        f"  python -m engine backtest --data ../shared/data/ohlcv/crypto/binance_BTCUSDT_1h.csv --strategy {DEFAULT_STRATEGY} --json\n"
        f"  python -m engine backtest --data bars.csv --set strategies.{DEFAULT_STRATEGY}.fast=20 --crosscheck backtrader\n"
        "  python -m engine backtest --source bybit --symbol BTC/USDT:USDT --timeframe 1h --start 2024-01-01 --end 2024-02-01"
        ,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_options(bt)
    bt.add_argument("--report", action="store_true",
                   help="after the run, write its HTML report and PNG charts (as `report RUN_ID` does) and print where")
    bt.add_argument("--walk-forward", action="store_true",
                   help="the LLM strategy only: retrain on rolling windows ([llm.walk_forward]) and trade each following "
                         "window; prints in-sample and out-of-sample results per fold and a chart")
    bt.add_argument("--executor", choices=["serial", "ray"], default="serial",
                    help="with --walk-forward: run the folds one after another (default) or in parallel on Ray "
                    "(pip install -e '.[ray]')")
    bt.add_argument("--workers", type=int, help="with --executor ray: local CPUs to use (default: all)")
    bt.add_argument("--ray-address", help="with --executor ray: join this Ray cluster instead of starting one")
    bt.add_argument("--oracle", action="store_true",
                    help="the LLM strategy on the synthetic sample only: trade with the TRUE headline tones instead of "
                    "a model (no training): the best the strategy can do there, an upper bound, never a strategy")
    bt.add_argument("--crosscheck", choices=["backtrader"], help="rerun through backtrader and report the differences")
    bt.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    bt.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    sub.add_parser("strategies", help="list the available strategies and their parameters")

    from engine.store.commands import add_parsers  # light: the store itself is imported on use

    add_parsers(sub)

    from engine.feeds.commands import add_data_parser  # light: ccxt and yfinance are imported on use

    add_data_parser(sub)

    from research import commands as ml_commands  # light too: torch and the models are imported on use

    ml_commands.add_parsers(sub)

    from research import sweep  # light: the strategies, Ray and Optuna are imported on use

    sweep.add_parser(sub, add_run_options)

    from engine.daemon.commands import (
        add_parsers as add_paper_parsers,  # light: the daemon is imported on use
    )

    add_paper_parsers(sub, add_run_options)

    from engine.serve.commands import add_parser as add_serve_parser  # light: FastAPI is imported on use

    add_serve_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "strategies":
            return _list_strategies()
        if args.command in ("runs", "report"):
            from engine.store import commands

            return commands.main(args, _config)
        if args.command == "data":
            from engine.feeds import commands as data_commands

            return data_commands.main(args, _config)
        if args.command in ("paper", "live"):
            from engine.daemon import commands as paper_commands

            stop_serving = None
            if args.verb == "start":
                config = _config(args, _flag_overrides(args))
                _setup_logging(config)
                if args.serve is not None:
                    stop_serving = _serve_beside(args, config)
            try:
                return paper_commands.main(args, _config, _flag_overrides(args) if args.verb == "start" else [],
                                           format_summary)
            finally:
                if stop_serving is not None:
                    stop_serving()
        if args.command == "sweep":
            from research import sweep

            flags = _flag_overrides(argparse.Namespace(**{**vars(args), "data": None}))  # --data is swept
            _setup_logging(_config(args, flags))
            return sweep.main(args, _config_path(args), _config, flags)
        if args.command == "serve":
            from engine.serve import commands as serve_commands

            _setup_logging(_config(args))
            return serve_commands.main(args, _config)
        if args.command in ("train", "evaluate"):
            from research import commands as ml_commands

            return ml_commands.main(args)
        return _backtest(args)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    mapping = {
        "strategy": "run.strategy", "data": "data.bars", "news": "data.news", "symbol": "data.symbol",
        "timeframe": "data.timeframe", "start": "run.start", "end": "run.end", "fill_mode": "run.fill_mode",
        "source": "data.source",
    }
    out = [f"{key}={json.dumps(getattr(args, attr))}" for attr, key in mapping.items() if getattr(args, attr)]
    if args.drop_bad_rows:
        out.append("data.drop_bad_rows=true")
    return out


def _config_path(args: argparse.Namespace) -> Path | None:
    return args.config if args.config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)


def _serve_beside(args: argparse.Namespace, config: Config) -> Any:
    """``paper start --serve``: the dashboard in a thread beside the daemon; the function that stops it."""
    if args.detach:
        raise ConfigError("--serve prints the dashboard's address, with its token, on this terminal, which a "
                          "detached daemon has not: drop --detach, or run `python -m engine serve` beside it")
    if not config.store.enabled:
        raise ConfigError(f"the {args.command} daemon records everything in the store: store.enabled = false "
                          "cannot run it")
    from engine.serve.commands import serve_beside

    return serve_beside(config, args.serve, say=_stderr)


def _config(args: argparse.Namespace, flags: Sequence[str] = ()) -> Config:
    from engine.session import load_settings

    return load_settings(_config_path(args), [*args.overrides, *flags])


def _backtest(args: argparse.Namespace) -> int:
    from engine.session import prepare_backtest, run_recorded  # imported here so `--help` stays instant

    config = _config(args, _flag_overrides(args))
    if args.report and not config.store.enabled:  # refused before a long run, not after it
        raise ConfigError("--report reads the recorded run, but store.enabled = false; drop one of them")
    if args.walk_forward:
        from research.walk_forward import check_walk_forward

        check_walk_forward(config)
    if args.oracle and args.walk_forward:
        raise ConfigError("--oracle runs one backtest on the sample market; drop it or --walk-forward")
    if args.walk_forward and args.crosscheck:
        raise ConfigError("--crosscheck compares one run with backtrader; drop it or --walk-forward")
    if not args.walk_forward and (args.executor != "serial" or args.workers or args.ray_address):
        raise ConfigError("--executor, --workers and --ray-address spread the folds of --walk-forward; "
                          "a single backtest runs in this process")
    _setup_logging(config)
    progress = not args.json and not args.no_progress and sys.stderr.isatty()
    # A strategy prepares here (the LLM strategy trains and predicts; per fold later with --walk-forward).
    plan = prepare_backtest(config, progress=progress, say=_stderr, prepare=not args.walk_forward,
                            oracle=args.oracle)
    for note in plan.notes:
        log.info(note)
        if not args.json:
            print(note, file=sys.stderr)
    if args.walk_forward:
        return _walk_forward(args, config, plan, progress)
    _, summary = run_recorded(plan, progress=progress, crosscheck=args.crosscheck, report=args.report)
    if args.json:
        print(json.dumps(summary, allow_nan=False, default=str))
    else:
        print(format_summary(summary))
    return 0


def _walk_forward(args: argparse.Namespace, config: Config, plan: Any, progress: bool) -> int:
    from engine.session import run_recorded
    from research.walk_forward import format_walk_forward, plot_walk_forward, run_walk_forward

    def run_plan(sub: Any, label: str) -> dict[str, Any]:
        _, summary = run_recorded(sub, progress=progress, report=args.report)
        if not args.json:
            _stderr(f"{label}: run {summary['run_id']}, return {_pct(summary['metrics']['total_return'])} "
                    f"(buy & hold {_pct(summary['metrics']['buy_and_hold_return'])}), {summary['fills']} fills"
                    + (f"; report {summary['report']}" if "report" in summary else ""))
        return summary

    from research.executors import executor

    with executor(args.executor, address=args.ray_address, workers=args.workers, say=_stderr) as ex:
        result = run_walk_forward(plan, run_plan, progress=progress, say=_stderr, executor=ex)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    result["chart"] = str(plot_walk_forward(result, Path(config.store.reports_dir) / f"walk_forward-{stamp}.png"))
    if args.json:
        print(json.dumps(result, allow_nan=False, default=str))
    else:
        print(format_walk_forward(result))
    return 0


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _list_strategies() -> int:
    import dataclasses

    from strategies import STRATEGIES

    for name, cls in sorted(STRATEGIES.items()):
        params = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls.Params))
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        print(f"{name:14s} {doc}\n{'':14s} params: {params or '-'}")
    return 0


def _setup_logging(config: Config) -> None:
    path = Path(config.logging.file)
    handlers: list[logging.Handler] = []
    if config.logging.file:
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path, encoding="utf-8"))
    logging.basicConfig(level=config.logging.level.upper(), handlers=handlers or [logging.NullHandler()],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _num(x: Any, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def _llm_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """The LLM strategy's extra rows: what trained, what traded, the signals."""
    if "trade_period" not in s:
        return []
    train = s["train_period"]
    trained = ", ".join(f"{task} {'trained' if c['trained'] else 'reused'}" for task, c in s["checkpoints"].items())
    actions = ", ".join(f"{k} {v}" for k, v in s.get("signal_actions", {}).items())
    rows = [("trained on", f"{train['start']} -> {train['end']} ({train['bars']:,} bars, {train['headlines']:,} "
                           f"headlines; {trained or 'nothing trained'})"),
            ("signals", f"{s.get('signals', 0):,} ({actions or 'none'})")]
    if s.get("signal_source") == "oracle":
        rows.insert(0, ("signal source", f"oracle -- {s.get('oracle', '')}"))
    return rows


def _gate_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """The LLM strategy's cost gate: the share of bars whose expected move beat the threshold x cost."""
    gate = s.get("gate")
    if not gate:
        return []
    chosen = (s.get("calibration") or {}).get("enter_threshold", {}).get("from", "config")
    share = "n/a" if gate["share"] is None else _pct(gate["share"])
    return [("", ""), ("cost gate", f"{gate['passed']:,} of {gate['bars']:,} bars passed ({share}) at "
                                    f"enter_threshold {gate['enter_threshold']:g} ({chosen})")]


def _halt_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """The risk halts of the run ([risk]), the first few with their reasons."""
    halts = s.get("risk_halts") or []
    rows = [(f"risk halts ({len(halts)})" if k == 0 else " ", f"{h['time']}  {h['reason']}")
            for k, h in enumerate(halts[:3])]  # " ": a continuation line ("" is a blank line)
    if len(halts) > 3:
        rows.append((" ", f"... and {len(halts) - 3} more (--json lists them all)"))
    return rows


def format_summary(s: dict[str, Any]) -> str:
    """The human-readable table printed without ``--json``."""
    m = s["metrics"]
    costs = m["cost_returns"]
    rows = [
        ("run", s["run_id"]), ("strategy", s["strategy"]), ("data", s.get("data", "")),
        ("symbols", ", ".join(s["symbols"])), ("period", f"{s.get('start', '')} -> {s.get('end', '')}"),
        ("bars / news", f"{s['bars']:,} / {s['news']:,}"),
        *_llm_rows(s),
        ("orders / fills / rejected", f"{s['orders']} / {s['fills']} / {s['rejected_orders']}"),
        *_halt_rows(s),
        ("", ""),
        ("starting cash", _num(s["starting_cash"])), ("final equity", _num(s["final_equity"])),
        ("total return", _pct(m["total_return"])), ("buy & hold return", _pct(m["buy_and_hold_return"])),
        ("annualised return", _pct(m["annualized_return"])), ("volatility (ann.)", _pct(m["volatility"])),
        ("sharpe / sortino", f"{_num(m['sharpe'])} / {_num(m['sortino'])}"),
        ("max drawdown", f"{_pct(m['max_drawdown'])} (lasting {m['max_drawdown_duration_ms'] / 86_400_000:.1f} days)"),
        ("calmar", _num(m["calmar"])),
        ("round trips / win rate", f"{m['round_trips']} / {_pct(m['win_rate'])}"),
        ("profit factor", _num(m["profit_factor"])),
        ("exposure / turnover", f"{_pct(m['exposure'])} / {_num(m['turnover'])}x"),
        ("", ""),
        ("gross return (before costs)", _pct(m["gross_return"])),
        ("fees", f"{_num(s['fees'])}  ({_pct(costs['fees'])} of start)"),
        ("spread", f"{_num(s['spread'])}  ({_pct(costs['spread'])})"),
        ("slippage", f"{_num(s['slippage'])}  ({_pct(costs['slippage'])})"),
        ("funding", f"{_num(s['funding'])}  ({_pct(costs['funding'])})"),
        ("", ""),
        ("speed", f"{s['bars_per_second']:,.0f} bars/s ({s['elapsed_seconds']:.2f} s)"),
        ("recorded in", s.get("database") or "not recorded (store.enabled = false)"),
        *([("report", s["report"])] if "report" in s else []),
        *_gate_rows(s),
    ]
    if "crosscheck" in s:
        cc = s["crosscheck"]
        rows.append(("backtrader cross-check", cc["verdict"]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" if k else "" for k, v in rows)
