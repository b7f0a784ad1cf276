"""A SYNTHETIC sample market: seeded, deterministic OHLCV bars and headlines for offline backtests.

Nothing here is real market data or real news. Every headline starts with ``[synthetic] ``, the
bars carry ``source="synthetic:seed=<seed>"`` and the news ``source="synthetic"``, so the sample
can never be mistaken for history. It exists so that the first backtest needs no network and so
that a news-driven strategy has a known signal to find.

The model, per bar ``i`` (log return ``r_i = log(close_i / open_i)``, and ``open_i = close_{i-1}``)::

    r_i = drift + volatility * z_i + effect_i,    z_i ~ N(0, 1)

Headlines arrive as a Poisson process (``headlines_per_day``) at uniform millisecond instants over
the whole range; a few are snapped exactly onto bar-close instants, which exercises the engine's
rule that news at the same instant as a bar close is delivered before that bar. Each headline has a
tone ``tau``: -1 bearish, 0 neutral (share ``neutral_share``), +1 bullish (the rest, split evenly).

The effect (the known signal): a headline published at ``t`` adds ``tau * tone_effect / effect_bars``
to the log return of each of the ``effect_bars`` bars whose OPEN time is at or after ``t``. So its
total impact is ``tau * tone_effect``, it begins strictly after publication (a headline stamped at a
bar's close moves only the bars that open at that instant or later), and no bar that opened before
``t`` is touched: there is no lookahead. Bars are also busier (higher volume) while any headline's
effect is running. High and low extend the open/close range by exponential wicks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.config import SampleMarketConfig
from engine.domain.values import News
from engine.series import BarSeries
from engine.timeutil import MS_PER_DAY, parse_instant, parse_timeframe

PREFIX = "[synthetic] "
NAME = "Synthcoin"

# Templates per tone; ``{name}`` is the coin's name and ``{ticker}`` the base of the symbol.
# All three tuples have the same length: a headline's template is drawn by one index for every tone.
BULLISH: tuple[str, ...] = (
    "{name} wins regulatory approval for spot ETF",
    "{name} network activity hits record high",
    "Major bank adds {name} custody for institutional clients",
    "Payments giant integrates {name} for merchant settlements",
    "{name} upgrade cuts transaction fees by 90% after smooth rollout",
    "Sovereign wealth fund discloses large {name} position",
    "{name} ({ticker}) listed on three more top-tier exchanges",
    "Court dismisses securities lawsuit against {name} foundation",
    "{name} staking deposits climb to all-time high",
    "Analysts upgrade {name} outlook on strong developer growth",
    "Fortune 500 retailer begins accepting {name} payments",
    "{name} treasury reports record quarterly revenue",
    "Regulators clarify {name} is not a security, easing compliance fears",
    "{name} whales accumulate as exchange reserves fall to multi-year low",
    "{name} partners with global cloud provider to run validator nodes",
    "Central bank pilot selects {name} for cross-border settlement trial",
    "{name} ({ticker}) futures open interest jumps as institutions pile in",
    "{name} foundation announces large token buyback program",
    "Insurance firm allocates part of its reserves to {name}",
    "{name} mainnet upgrade completes without incident, boosting throughput",
    "Top venture fund commits $500 million to the {name} ecosystem",
    "{name} exchange-traded product sees record weekly inflows",
    "Asset manager files to launch {name} ({ticker}) income fund",
    "{name} daily active addresses double in a month",
)
BEARISH: tuple[str, ...] = (
    "Exchange hack drains {name} reserves",
    "Regulators sue {name} foundation over unregistered securities sales",
    "{name} network halts for hours after critical consensus bug",
    "Major exchange delists {name} ({ticker}) citing compliance concerns",
    "{name} co-founder arrested on fraud charges",
    "Large {name} holder moves billions to exchanges, stoking sell-off fears",
    "Critical vulnerability found in {name} smart contract library",
    "Government bans {name} trading and mining nationwide",
    "{name} lending platform freezes withdrawals",
    "Stablecoin backing {name} ({ticker}) pairs loses its dollar peg",
    "Analysts downgrade {name} on collapsing network usage",
    "{name} ETF application rejected by regulators",
    "Payment processor drops {name} support after compliance review",
    "{name} validator outage causes widespread transaction failures",
    "Bankrupt fund prepares to liquidate its {name} holdings",
    "Tax authority launches crackdown on {name} traders",
    "{name} bridge exploit leads to $200 million loss",
    "{name} developers quit project amid bitter governance dispute",
    "Short sellers pile into {name} futures as funding turns negative",
    "Auditor resigns from {name} treasury engagement, citing missing records",
    "{name} transaction fees spike to record, driving users away",
    "Market maker for {name} ({ticker}) files for bankruptcy",
    "Regulators open investigation into {name} wash trading",
    "Insider sells large {name} stake ahead of token unlock",
)
NEUTRAL: tuple[str, ...] = (
    "{name} developers schedule routine maintenance call",
    "{name} foundation publishes quarterly transparency report",
    "{name} ({ticker}) trading volume in line with monthly average",
    "{name} community votes on minor fee parameter change",
    "{name} core team releases updated documentation",
    "Conference panel discusses the history of {name}",
    "{name} foundation appoints new communications director",
    "{name} testnet resets as planned for upgrade rehearsal",
    "Exchange updates {name} ({ticker}) order book tick size",
    "{name} developers publish notes from weekly call",
    "Research firm releases annual overview of {name} ecosystem",
    "{name} wallet app ships cosmetic interface update",
    "{name} foundation relocates office within the same city",
    "Analysts keep {name} rating unchanged ahead of quarterly review",
    "{name} block explorer adds dark mode",
    "University course adds a lecture on {name} consensus design",
    "{name} foundation renews website hosting contract",
    "{name} governance forum opens routine discussion thread",
    "Exchange schedules standard maintenance window for {name} deposits",
    "{name} network difficulty adjusts as expected",
    "{name} project publishes translated whitepaper",
    "Podcast interviews {name} developer about coding practices",
    "{name} foundation hosts regional community meetup",
    "{name} node software patch fixes typo in log messages",
)
TEMPLATES: dict[int, tuple[str, ...]] = {-1: BEARISH, 0: NEUTRAL, 1: BULLISH}

_AT_CLOSE_SHARE = 0.05  # share of headlines snapped exactly onto a bar close
_WICK_SCALE = 0.5  # mean wick beyond open/close, in units of volatility
_BASE_VOLUME = 1_000.0
_NEWS_VOLUME_BOOST = 0.5  # extra volume per headline whose effect is running
_MAX_ABS_LOG_PRICE = 600.0  # keeps exp() of prices and wicks finite and nonzero in float64
# Sizes: the market is built in memory (a few hundred bytes per headline, ~100 per bar).
MAX_BARS = 5_000_000  # over 500 years of hourly bars
MAX_EFFECT_BARS = 10_000
MAX_HEADLINES_PER_DAY = 10_000.0
MAX_HEADLINES = 2_000_000  # expected headlines over the whole market
_LAST_MS = 253_402_300_800_000  # 10000-01-01 UTC: the market must end before


@dataclass(frozen=True, slots=True)
class SampleMarket:
    """The generated market: bars, headlines sorted by publish time, and each headline's true tone."""

    bars: BarSeries
    news: tuple[News, ...]  # sorted by ts_event
    tones: tuple[int, ...]  # ground truth per headline: -1 bearish, 0 neutral, +1 bullish


def _validate(config: SampleMarketConfig) -> tuple[int, int]:
    """Check every field; return (timeframe_ms, start_ms). Errors name the offending field."""
    try:
        timeframe_ms = parse_timeframe(config.timeframe)
    except ValueError as exc:
        raise ValueError(f"SampleMarketConfig.timeframe: {exc}") from exc
    try:
        start_ms = parse_instant(config.start)
    except ValueError as exc:
        raise ValueError(f"SampleMarketConfig.start: {exc}") from exc
    if not config.symbol:
        raise ValueError("SampleMarketConfig.symbol must not be empty")
    for name, most in (("bars", MAX_BARS), ("effect_bars", MAX_EFFECT_BARS)):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"SampleMarketConfig.{name} must be a positive integer, got {value!r}")
        if value > most:
            raise ValueError(f"SampleMarketConfig.{name} must be at most {most:,}, got {value:,}")
    rules = {  # field -> (test, what it must be)
        "start_price": (lambda v: v > 0, "> 0"),
        "volatility": (lambda v: v > 0, "> 0"),
        "drift": (lambda v: True, "finite"),
        "headlines_per_day": (lambda v: 0 <= v <= MAX_HEADLINES_PER_DAY, f"in [0, {MAX_HEADLINES_PER_DAY:,.0f}]"),
        "tone_effect": (lambda v: v >= 0, ">= 0"),
        "neutral_share": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    }
    for name, (ok, rule) in rules.items():
        value = getattr(config, name)
        if not isinstance(value, int | float) or not math.isfinite(value) or not ok(value):
            raise ValueError(f"SampleMarketConfig.{name} must be {rule}, got {value!r}")
    if start_ms + config.bars * timeframe_ms > _LAST_MS:
        raise ValueError(f"SampleMarketConfig.bars: {config.bars:,} bars of {config.timeframe} from {config.start} "
                         "end after the year 9999; use fewer or shorter bars")
    expected = config.headlines_per_day * config.bars * timeframe_ms / MS_PER_DAY
    if expected > MAX_HEADLINES:
        raise ValueError(f"SampleMarketConfig.headlines_per_day must be lower: {config.headlines_per_day:g} a day over "
                         f"{config.bars:,} bars of {config.timeframe} is ~{expected:,.0f} headlines, at most "
                         f"{MAX_HEADLINES:,} are generated")
    return timeframe_ms, start_ms


def _window_sum(first: np.ndarray, weights: np.ndarray, width: int, n: int) -> np.ndarray:
    """Per bar, the sum of ``weights[h]`` over headlines ``h`` with ``first[h] <= i < first[h] + width``.

    A difference array: +w where a window starts, -w where it ends, then a running sum.
    """
    starts = np.bincount(first, weights=weights, minlength=n + 1)
    ends = np.bincount(np.minimum(first + width, n), weights=weights, minlength=n + 1)
    return np.cumsum(starts - ends)[:n]


def generate_sample_market(config: SampleMarketConfig | None = None) -> SampleMarket:
    """Generate the synthetic market described in the module docstring.

    The same config gives byte-identical output; the random draws are made in a fixed order that
    does not depend on ``drift``, ``volatility``, ``tone_effect`` or ``start_price``, so changing
    only those keeps the same noise and the same headlines (handy for isolating the effect).
    """
    config = config if config is not None else SampleMarketConfig()
    timeframe_ms, start_ms = _validate(config)
    n = config.bars
    rng = np.random.default_rng(config.seed)
    ts_open = start_ms + np.arange(n, dtype=np.int64) * timeframe_ms
    end_ms = start_ms + n * timeframe_ms  # the last bar's close

    noise = rng.standard_normal(n)
    wicks = rng.exponential(_WICK_SCALE, size=(2, n))
    base_volume = _BASE_VOLUME * rng.lognormal(0.0, 0.25, size=n)

    count = int(rng.poisson(config.headlines_per_day * (end_ms - start_ms) / MS_PER_DAY))
    times = rng.integers(start_ms, end_ms, size=count, dtype=np.int64)
    at_close = math.ceil(count * _AT_CLOSE_SHARE)
    times[:at_close] = ts_open[rng.integers(0, n, size=at_close)] + timeframe_ms
    bull = (1.0 - config.neutral_share) / 2.0
    tones = rng.choice(np.array([-1, 0, 1]), size=count, p=[bull, config.neutral_share, bull])
    picks = rng.integers(0, len(BULLISH), size=count)

    order = np.argsort(times, kind="stable")
    times, tones, picks = times[order], tones[order], picks[order]

    first = np.searchsorted(ts_open, times, side="left")  # first bar opening at or after publication
    width = config.effect_bars
    effect = _window_sum(first, tones * (config.tone_effect / width), width, n)
    active = _window_sum(first, np.ones(count), width, n)

    log_returns = config.drift + config.volatility * noise + effect
    log_close = math.log(config.start_price) + np.cumsum(log_returns)
    if np.abs(log_close).max() > _MAX_ABS_LOG_PRICE:
        raise ValueError("SampleMarketConfig.drift/volatility: the price path leaves float range; use smaller values")
    close = np.exp(log_close)
    open_ = np.concatenate(([config.start_price], close[:-1]))
    high = np.maximum(open_, close) * np.exp(config.volatility * wicks[0])
    low = np.minimum(open_, close) * np.exp(-config.volatility * wicks[1])
    volume = base_volume * (1.0 + _NEWS_VOLUME_BOOST * active)

    bars = BarSeries.from_arrays(
        config.symbol, timeframe_ms, ts_open, open_, high, low, close, volume, source=f"synthetic:seed={config.seed}"
    )
    ticker = config.symbol.split("/")[0]
    texts = {tone: [PREFIX + t.format(name=NAME, ticker=ticker) for t in TEMPLATES[tone]] for tone in TEMPLATES}
    tone_list = tones.tolist()
    news = tuple(
        News(ts_event=ts, headline=texts[tone][pick], symbol=config.symbol, source="synthetic")
        for ts, tone, pick in zip(times.tolist(), tone_list, picks.tolist())
    )
    return SampleMarket(bars=bars, news=news, tones=tuple(tone_list))
