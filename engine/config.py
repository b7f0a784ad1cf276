"""Typed configuration: ``config.toml`` -> frozen dataclasses, with every key checked.

Unknown keys and bad values stop the run with a message naming the key path and, for a typo, the
nearest valid key. Command-line flags and ``--set section.key=value`` override the file. Secrets
(API keys) never live here: they come from the environment only.

The engine's own sections are typed fields of ``Config``. A component above the core owns its
sections (the LLM strategy's ``[llm]``, ``strategies.llm_settings``): the application names them
in ``load_config(sections=...)``, which keeps their tables, and the component decodes its table
with ``config.section(name, type)``, as strictly as the rest, before it does anything with it.
(Decoding on use keeps the predictor's settings, and torch behind them, out of runs that never
use them.)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from engine.domain import DEFAULT_FEES, ContractType
from engine.errors import ConfigError

T = TypeVar("T")

# Bounds beyond which a number is a typo, not a setting (every float is also checked to be finite: ``build``).
_MAX_NOTIONAL = 1e12  # quote currency: cash, a minimum order value or a "limit" above this is a typo (0 = no limit)
_MAX_WAIT_S = 3_600.0  # one wait for a network answer or a lock
_MAX_DAEMON_S = 86_400.0  # the daemon's periods and timeouts
_MAX_BPS = 10_000.0  # 100%
_MAX_FUNDING_RATE = 0.1  # per 8-hour settlement: 10%, far above any exchange's cap
_MAX_LEVERAGE = 1_000.0
_MAX_PRICE_STEP = 1e9  # a tick size or lot step


def _check_range(owner: object, name: str, low: float, high: float, *, open_low: bool = False) -> None:
    """``owner.name`` in ``[low, high]`` (``(low, high]`` with ``open_low``), else a ValueError naming it."""
    value = getattr(owner, name)
    if not (low < value <= high if open_low else low <= value <= high):
        raise ValueError(f"{name} must be a finite number in {'(' if open_low else '['}{low:g}, {high:g}], got {value}")


@dataclass(frozen=True)
class RunConfig:
    strategy: str = ""  # a name from the strategy registry; "" = its default (`python -m engine strategies`)
    starting_cash: float = 10_000.0
    fill_mode: Literal["next_open", "close"] = "next_open"
    start: str = ""  # ISO date or datetime (UTC); "" = from the first bar
    end: str = ""  # exclusive; "" = to the last bar

    def __post_init__(self) -> None:
        _check_range(self, "starting_cash", 0.0, _MAX_NOTIONAL, open_low=True)


@dataclass(frozen=True)
class DataConfig:
    bars: str = ""  # CSV of bars; "" = the offline synthetic sample market
    news: str = ""  # CSV of headlines; "" = none (the sample market brings its own)
    symbol: str = ""  # "" = derived from the file name
    timeframe: str = ""  # "" = inferred from the timestamps
    drop_bad_rows: bool = False
    adjusted: bool = False
    news_timezone: str = "UTC"
    # Where bars come from: "auto" = the CSV in ``bars`` when set, else the synthetic sample market;
    # "yfinance" / "bybit" = fetched into the local cache (only missing ranges) and read from it.
    source: Literal["auto", "csv", "sample", "yfinance", "bybit"] = "auto"
    cache_dir: str = ".cache/market"  # the fetched-data cache (git-ignored)
    gap_policy: Literal["keep", "ffill", "refuse"] = "keep"  # what a backtest does with missing bars
    # Suspicious prices (outlier bar returns, spikes out and back, stale stretches of identical OHLC; see
    # engine.feeds.quality): "warn" = run on them with a note; "refuse" = stop, naming the bars.
    quality_policy: Literal["warn", "refuse"] = "warn"
    timeout_s: float = 10.0  # seconds to wait for one answer from a data source
    retries: int = 5  # retries (with back-off) of a request that failed on network trouble
    api_url: str = ""  # Bybit only: another base URL (a fake Bybit on 127.0.0.1, to rehearse offline)

    def __post_init__(self) -> None:
        _check_range(self, "timeout_s", 0.0, _MAX_WAIT_S, open_low=True)
        if not 0 <= self.retries <= 20:
            raise ValueError("retries must be between 0 and 20")


@dataclass(frozen=True)
class InstrumentConfig:
    contract: Literal["spot", "linear_perp"] = "spot"
    tick_size: float = 0.01
    lot_step: float = 0.000001
    min_quantity: float = 0.0
    min_notional: float = 0.0
    max_leverage: float = 1.0

    def __post_init__(self) -> None:
        for name in ("tick_size", "lot_step"):
            _check_range(self, name, 0.0, _MAX_PRICE_STEP, open_low=True)
        for name in ("min_quantity", "min_notional"):
            _check_range(self, name, 0.0, _MAX_NOTIONAL)
        _check_range(self, "max_leverage", 0.0, _MAX_LEVERAGE, open_low=True)
        if self.contract == "spot" and self.max_leverage != 1.0:
            raise ValueError("max_leverage must be 1 for spot instruments")


@dataclass(frozen=True)
class CostsConfig:
    maker_fee: float | Literal["vip0"] = "vip0"  # "vip0" = Bybit's VIP0 rate for the contract type
    taker_fee: float | Literal["vip0"] = "vip0"
    slippage_bps: float = 2.0
    half_spread_bps: float = 1.0
    funding_rate: float = 0.0001  # per 8-hour settlement, perpetuals only
    funding_file: str = ""  # CSV of (timestamp, rate); overrides funding_rate when set

    def __post_init__(self) -> None:
        for name in ("maker_fee", "taker_fee"):
            value = getattr(self, name)
            if value != "vip0" and not -0.01 <= value <= 0.05:
                raise ValueError(f"{name} {value} is outside [-0.01, 0.05]; rates are fractions (0.001 = 0.1%)")
        if self.slippage_bps < 0 or self.half_spread_bps < 0:
            raise ValueError("slippage_bps and half_spread_bps must be >= 0")
        for name in ("slippage_bps", "half_spread_bps"):
            _check_range(self, name, 0.0, _MAX_BPS)
        _check_range(self, "funding_rate", -_MAX_FUNDING_RATE, _MAX_FUNDING_RATE)

    def fee_rates(self, contract: ContractType) -> tuple[float, float]:
        """(maker, taker) for ``contract``: the set rates, or Bybit's VIP0 schedule where "vip0"."""
        maker, taker = DEFAULT_FEES[contract]
        return (maker if self.maker_fee == "vip0" else float(self.maker_fee),
                taker if self.taker_fee == "vip0" else float(self.taker_fee))

    @property
    def vip0(self) -> bool:
        return (self.maker_fee, self.taker_fee) == ("vip0", "vip0")


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    file: str = "logs/engine.log"


@dataclass(frozen=True)
class StoreConfig:
    enabled: bool = True  # record every backtest in the store
    url: str = "sqlite:///logs/engine.db"  # SQLAlchemy URL; a relative SQLite path is relative to the working directory
    reports_dir: str = "logs/reports"  # where `python -m engine report` writes HTML and PNG files
    busy_timeout: float = 5.0  # seconds to wait for a lock held by another process before giving up

    def __post_init__(self) -> None:
        if not self.url:
            raise ValueError("url must not be empty (set enabled = false to record nothing)")
        _check_range(self, "busy_timeout", 0.0, _MAX_WAIT_S)


@dataclass(frozen=True)
class PaperConfig:
    """The paper daemon (``python -m engine paper``; live trading shares it)."""

    settle_s: float = 3.0  # seconds after a bar's close before the daemon asks for it (exchanges lag)
    max_wait_s: float = 60.0  # how long to keep asking for a bar that is due and has not come
    late_fraction: float = 0.5  # a bar taken later than this share of its length after its close does not trade
    catch_up: Literal["no_trade", "trade"] = "no_trade"  # bars missed while stopped: update state only, or trade them
    warmup_bars: int = 500  # bars before the first live one replayed (no orders) so indicators are ready
    poll_s: float = 30.0  # the news and health job's period
    stale_after_s: float = 0.0  # `paper status` fails when the heartbeat is older; 0 = 2 bars or 3 polls, the longer
    lease_stale_s: float = 300.0  # a lease held from another host is taken over after this long without a heartbeat
    retry_max_s: float = 60.0  # back-off ceiling while the exchange is unreachable
    history_capacity: int = 20_000  # bars held per symbol in memory
    news_feeds: tuple[str, ...] = ()  # live headlines: "yahoo:TICKER" or an RSS/Atom feed URL, each polled every poll_s

    def __post_init__(self) -> None:
        for name in ("settle_s", "max_wait_s", "poll_s", "lease_stale_s", "retry_max_s", "stale_after_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
            _check_range(self, name, 0.0, _MAX_DAEMON_S)
        if not 0 < self.late_fraction <= 1:
            raise ValueError(f"late_fraction must be in (0, 1], got {self.late_fraction}")
        if self.warmup_bars < 0:
            raise ValueError(f"warmup_bars must be >= 0, got {self.warmup_bars}")
        _check_range(self, "warmup_bars", 0, 1_000_000)
        if self.poll_s == 0:
            raise ValueError("poll_s must be above 0")
        if self.history_capacity < 2:
            raise ValueError("history_capacity must be >= 2")
        _check_range(self, "history_capacity", 2, 10_000_000)


@dataclass(frozen=True)
class LiveConfig:
    """Live trading on Bybit (``python -m engine live``); the daemon's timing is ``[paper]``'s. API keys
    are never here: they come from the environment (BYBIT_API_KEY, BYBIT_API_SECRET)."""

    venue: Literal["demo", "testnet", "mainnet"] = "demo"  # mainnet also needs `live start --mainnet` and a typed confirmation
    api_url: str = ""  # another Bybit base URL: a fake Bybit on 127.0.0.1 (python -m engine.testing.fake_bybit)
    timeout_s: float = 10.0  # seconds to wait for one answer; no answer is an unclear one, never a rejection
    recv_window_ms: int = 5000  # how old a signed request may be when Bybit reads it
    rate_limit: bool = True  # ccxt's client-side rate limiter (off only against a fake on loopback)
    reconcile_every_s: float = 300.0  # store and exchange compared again this often (and before the first order)
    external_orders: Literal["halt", "ignore"] = "halt"  # open orders on the account that this run did not make
    adopt: bool = False  # executions and position differences nobody here made: false = halt, true = record them
    # as reconciliation fills (so the store explains every unit held) and carry on
    max_attempts: int = 5  # sends of one order (always the same client id) before it is UNKNOWN and its symbol halts
    max_lookups: int = 5  # unanswered look-ups of an unsettled order before it is UNKNOWN
    backoff_s: float = 1.0  # first wait after a rate limit (doubles, at most 30 s), then the same id again
    stale_intent_fraction: float = 0.5  # an intent never sent, found at restart older than this share of a bar, is dropped

    def __post_init__(self) -> None:
        for name in ("timeout_s", "reconcile_every_s", "backoff_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0 or value > 86_400:
                raise ValueError(f"{name} must be a number of seconds in (0, 86400], got {value}")
        if not 1000 <= self.recv_window_ms <= 60_000:
            raise ValueError(f"recv_window_ms must be between 1000 and 60000, got {self.recv_window_ms}")
        for name in ("max_attempts", "max_lookups"):
            if not 1 <= getattr(self, name) <= 100:
                raise ValueError(f"{name} must be between 1 and 100")
        if not 0 < self.stale_intent_fraction <= 10:
            raise ValueError("stale_intent_fraction must be in (0, 10]")
        if self.api_url and not self.api_url.startswith(("http://", "https://")):
            raise ValueError(f"api_url must be an http(s) URL, got {self.api_url!r}")


_MAX_ORDERS_PER_MINUTE = 10_000


@dataclass(frozen=True)
class RiskConfig:
    """Risk limits (``engine.risk.RiskLimits``), the same in backtests, paper and live; 0 = no limit.

    A breach rejects the order and halts new orders that would grow a position; orders that only
    reduce or close one always pass. Live trading on mainnet refuses to start without a loss limit
    (``loss_limited``) and a size limit (``size_limited``)."""

    max_order_notional: float = 0.0  # quote currency per order, at its limit/stop price or the last close
    max_position_notional: float = 0.0  # |position + same-direction open orders + the order| x its price
    max_daily_loss: float = 0.0  # fraction of the equity at the start of the UTC day (0.05 = 5%)
    max_daily_loss_abs: float = 0.0  # quote currency below the equity at the start of the UTC day
    max_orders_per_minute: int = 0  # orders sent to the broker in the trailing 60 s of event time

    def __post_init__(self) -> None:
        for name in ("max_order_notional", "max_position_notional", "max_daily_loss_abs"):
            value = getattr(self, name)
            if not math.isfinite(value) or not 0 <= value <= _MAX_NOTIONAL:
                raise ValueError(f"{name} must be a finite number in [0, {_MAX_NOTIONAL:g}] (0 = no limit), got {value}")
        if not math.isfinite(self.max_daily_loss) or not 0 <= self.max_daily_loss <= 1:
            raise ValueError(f"max_daily_loss is a fraction of the day's starting equity in [0, 1] (0.05 = 5%; "
                             f"0 = no limit), got {self.max_daily_loss}")
        if not 0 <= self.max_orders_per_minute <= _MAX_ORDERS_PER_MINUTE:
            raise ValueError(f"max_orders_per_minute must be in [0, {_MAX_ORDERS_PER_MINUTE}] (0 = no limit), "
                             f"got {self.max_orders_per_minute}")

    @property
    def any(self) -> bool:
        """Is any limit set?"""
        return self.size_limited or self.loss_limited or self.max_orders_per_minute > 0

    @property
    def size_limited(self) -> bool:
        return self.max_order_notional > 0 or self.max_position_notional > 0

    @property
    def loss_limited(self) -> bool:
        return self.max_daily_loss > 0 or self.max_daily_loss_abs > 0


@dataclass(frozen=True, slots=True)
class SampleMarketConfig:
    """Knobs of the synthetic market; the defaults give ~250 days of hourly bars, ~1000 headlines."""

    seed: int = 7
    symbol: str = "SYN/USDT"
    timeframe: str = "1h"
    bars: int = 6000
    start: str = "2024-01-01"  # ISO date, UTC; first bar's open time
    start_price: float = 100.0
    volatility: float = 0.006  # per-bar standard deviation of log returns (noise)
    drift: float = 0.0  # per-bar mean log return
    headlines_per_day: float = 4.0  # Poisson rate
    tone_effect: float = 0.01  # total log-return impact of one bullish (+) / bearish (-) headline (0.004 before
    # issue 17: too small for spot costs, so even an oracle of the true tones could not trade it)
    effect_bars: int = 6  # the impact is spread evenly over the bars after publication
    neutral_share: float = 0.4  # share of neutral headlines (no effect)



@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sample: SampleMarketConfig = field(default_factory=SampleMarketConfig)
    instrument: InstrumentConfig = field(default_factory=InstrumentConfig)
    costs: CostsConfig = field(default_factory=CostsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    paper: PaperConfig = field(default_factory=PaperConfig)
    live: LiveConfig = field(default_factory=LiveConfig)
    risk: RiskConfig = field(default_factory=RiskConfig)
    # Per-strategy parameter tables, checked against the chosen strategy's Params by ``build``.
    strategies: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Tables of components above the core (raw, or decoded by ``with_section``), by name.
    sections: Mapping[str, Any] = field(default_factory=dict, metadata={"internal": True})
    origin: str = field(default="defaults", metadata={"internal": True})  # the file it was read from

    def section(self, name: str, cls: type[T]) -> T:
        """The ``[name]`` section as ``cls`` (its defaults when the config has none); a
        ``ConfigError`` names the key at fault."""
        value = self.sections.get(name)
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        return build(cls, value, where=self.origin, path=name)

    def with_section(self, name: str, value: Any) -> Config:
        return dataclasses.replace(self, sections={**self.sections, name: value})


# -- loading -----------------------------------------------------------------------------------
def load_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                sections: Sequence[str] = ()) -> Config:
    """Read ``path`` (if given), apply ``section.key=value`` overrides, and check everything;
    ``sections``: the names of tables that components above the core decode (``Config.section``)."""
    raw: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found (pass --config PATH or create it)") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for item in overrides:
        apply_override(raw, item)
    kept = {}
    for name in sections:
        if name in raw:
            kept[name] = raw.pop(name)
            if not isinstance(kept[name], Mapping):
                raise ConfigError(f"{where}: {name} must be a table, got {kept[name]!r}")
    return dataclasses.replace(build(Config, raw, where=where, also=list(sections)), sections=kept, origin=where)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``section.key=value``; the value is read as TOML (``20``, ``true``, ``"x"``),
    falling back to a plain string."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set costs.slippage_bps=5")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {part} is a value, not a section")
        node = child
    node[leaf] = value


def build(cls: type[T], table: Mapping[str, Any], *, where: str = "config", path: str = "",
          also: Mapping[str, Any] | Sequence[str] = (), base: Any = None) -> T:
    """Turn a TOML table into dataclass ``cls``, refusing unknown keys and ill-typed values.

    Keys not given keep ``base``'s values (default: ``cls``'s defaults); a nested table starts from
    the parent's value of that field, so ``[a.b]`` with one key changes one setting. ``also``: more
    names that are valid beside this table's (sections decoded elsewhere), for the typo hint only."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: {path or 'the file'} must be a table, got {table!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)  # type: ignore[arg-type]
              if f.init and not f.metadata.get("internal")}
    hints = typing.get_type_hints(cls)
    for key in table:
        if key not in fields:
            full = f"{path}.{key}" if path else key
            names = [*fields, *also]
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            hint = f" (did you mean {(path + '.' if path else '') + close[0]!r}?)" if close else ""
            valid = ", ".join(names) or "none"
            raise ConfigError(f"{where}: unknown key {full!r}{hint}; valid keys here: {valid}")
    values: dict[str, Any] = {}
    for name, value in table.items():
        full = f"{path}.{name}" if path else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            nested = getattr(base, name) if base is not None else _default(fields[name])
            values[name] = build(hint, value, where=where, path=full, base=nested)  # type: ignore[arg-type]
        else:
            values[name] = _convert(hint, value, where, full)
    try:
        built = dataclasses.replace(base, **values) if base is not None else cls(**values)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ConfigError(f"{where}: [{path or cls.__name__}] {exc}") from None
    for name, value in values.items():  # after the class's own checks, whose messages say more
        if not _finite(value):
            full = f"{path}.{name}" if path else name
            raise ConfigError(f"{where}: {full} = {value!r}: expected a finite number (inf and nan are no settings)")
    return built


def _finite(value: Any) -> bool:
    """False for a float (or an array holding one) that is inf or nan."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, tuple):
        return all(_finite(v) for v in value)
    return True


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _convert(hint: Any, value: Any, where: str, full: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(typing.cast(type, hint), value, where=where, path=full)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                return _convert(option, value, where, full)
            except ConfigError as exc:
                errors.append(str(exc).rsplit(": ", 1)[-1])
        raise ConfigError(f"{where}: {full} = {value!r} is not valid: {' or '.join(errors)}")
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint_text = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: {full} = {value!r}: expected one of {', '.join(map(repr, choices))}{hint_text}")
        return value
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: {full} = {value!r}: expected an array")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where, f"{full}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: {full} = {value!r}: expected an array of {len(args)} values")
        return tuple(_convert(a, v, where, f"{full}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (Mapping, dict) or hint is Any:
        if origin and not isinstance(value, Mapping):
            raise ConfigError(f"{where}: {full} must be a table")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {full} = {value!r}: expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {full} = {value!r}: expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: {full} = {value!r}: expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {full} = {value!r}: expected a string")
        return value
    raise ConfigError(f"{where}: {full}: unsupported setting type {hint!r}")  # a programming error, named
