"""Metrics: hand-computed expectations on tiny curves, round trips from explicit fills, the observed
annualisation frequency, and properties (scale invariance, drawdown bounds)."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pandas.tseries.holiday import USFederalHolidayCalendar

from engine.domain import Fill, Liquidity, Side
from engine.metrics import Metrics, compute_metrics
from engine.timeutil import MS_PER_DAY, MS_PER_HOUR, MS_PER_YEAR

Q = MS_PER_YEAR // 4  # a quarter: four points span exactly one year
T0 = 1_600_000_000_000


def fill(symbol: str, side: Side, qty: float, price: float, fee: float = 0.0, ref: float | None = None) -> Fill:
    ref = price if ref is None else ref
    return Fill(
        client_order_id="o",
        symbol=symbol,
        side=side,
        quantity=qty,
        price=price,
        reference_price=ref,
        fee=fee,
        liquidity=Liquidity.TAKER,
        spread_cost=0.0,
        slippage_cost=0.0,
        ts_event=T0,
    )


def run(
    equity: list[float] | np.ndarray,
    *,
    start: float = 100.0,
    spacing: int = Q,
    exposure: list[float] | np.ndarray | None = None,
    fills: list[Fill] | None = None,
    costs: dict[str, float] | None = None,
    ts: np.ndarray | None = None,
) -> Metrics:
    equity = np.asarray(equity, dtype=np.float64)
    if ts is None:
        ts = T0 + spacing * np.arange(len(equity), dtype=np.int64)
    return compute_metrics(
        ts=ts,
        equity=equity,
        gross_exposure=np.zeros(len(equity)) if exposure is None else np.asarray(exposure, dtype=np.float64),
        fills=fills or [],
        starting_equity=start,
        costs=costs or {},
    )


# -- equity-based metrics ---------------------------------------------------------------------------


def test_hand_computed_curve() -> None:
    m = run([100, 110, 99, 121])  # quarterly, so the four returns span exactly one year
    returns = [0.0, 0.1, -0.1, 121 / 99 - 1]
    mean, std = statistics.mean(returns), statistics.stdev(returns)
    assert m.periods_per_year == pytest.approx(4.0)
    assert m.total_return == pytest.approx(0.21)
    assert m.annualized_return == pytest.approx(0.21)  # one year elapsed: CAGR == total
    assert m.volatility == pytest.approx(std * 2)
    assert m.sharpe == pytest.approx(mean / std * 2)
    assert m.sortino == pytest.approx(mean / math.sqrt(0.01 / 4) * 2)
    assert m.max_drawdown == pytest.approx(99 / 110 - 1)
    assert m.max_drawdown_duration_ms == 2 * Q  # peak 110 at ts[1], regained at ts[3]
    assert m.calmar == pytest.approx(0.21 / 0.1)


def test_cagr_over_half_a_year() -> None:
    m = run([105, 110.25])  # two quarters
    assert m.total_return == pytest.approx(0.1025)
    assert m.annualized_return == pytest.approx(1.1025**2 - 1)


def test_deepest_and_longest_drawdowns_can_differ_and_the_last_is_never_recovered() -> None:
    m = run([100, 120, 90, 130, 125, 110, 100])
    assert m.max_drawdown == pytest.approx(-0.25)  # 120 -> 90
    assert m.max_drawdown_duration_ms == 3 * Q  # 130 at ts[3] never regained by ts[6]


def test_drawdown_from_the_starting_equity_starts_one_bar_before_the_first_point() -> None:
    m = run([90, 95, 101])
    assert m.max_drawdown == pytest.approx(-0.1)
    assert m.max_drawdown_duration_ms == 3 * Q  # starting point stamped at ts[0] - spacing


def test_regaining_the_peak_exactly_ends_the_drawdown() -> None:
    m = run([110, 100, 110, 105])
    assert m.max_drawdown_duration_ms == 2 * Q


def test_never_below_peak() -> None:
    m = run([100, 101, 102])
    assert m.max_drawdown == 0.0
    assert m.max_drawdown_duration_ms == 0
    assert m.calmar is None
    assert m.sortino is None  # no negative return


def test_constant_returns_have_no_sharpe() -> None:
    assert run([100, 100, 100]).sharpe is None
    assert run(100 * 1.01 ** np.arange(1, 50)).sharpe is None  # std is float noise, not risk


def test_exposure_turnover_costs_and_gross_return() -> None:
    fills = [fill("BTC", Side.BUY, 1, 100.05, ref=100.0), fill("BTC", Side.SELL, 1, 109.9, ref=110.0)]
    costs = {"fees": 1.0, "spread": 0.5, "slippage": 0.25, "funding": -0.5}
    m = run([100, 110, 99, 121], exposure=[0, 50, 0, 20], fills=fills, costs=costs)
    assert m.exposure == 0.5
    assert m.turnover == pytest.approx(210 / 107.5)  # reference notional / mean equity
    assert m.cost_returns == pytest.approx({"fees": 0.01, "spread": 0.005, "slippage": 0.0025, "funding": -0.005})
    assert m.gross_return == pytest.approx(0.21 + 1.25 / 100)


def test_missing_cost_ledgers_count_as_zero_and_unknown_ones_are_refused() -> None:
    assert run([101], costs={"fees": 1.0}).cost_returns == {"fees": 0.01, "slippage": 0.0, "spread": 0.0, "funding": 0.0}
    with pytest.raises(ValueError, match="unknown cost ledgers"):
        run([101], costs={"fee": 1.0})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"start": 0.0}, "starting equity"),
        ({"exposure": [0.0]}, "equally long"),
        ({"ts": np.array([T0, T0, T0 + 1])}, "strictly ascending"),
    ],
)
def test_bad_inputs_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        run([100, 101, 102], **kwargs)  # type: ignore[arg-type]


def test_no_points() -> None:
    m = run([])
    assert (m.total_return, m.annualized_return, m.volatility, m.periods_per_year) == (0.0, 0.0, 0.0, 0.0)
    assert (m.sharpe, m.sortino, m.calmar, m.win_rate, m.profit_factor) == (None,) * 5
    assert (m.max_drawdown, m.max_drawdown_duration_ms, m.exposure, m.turnover) == (0.0, 0, 0.0, 0.0)


def test_one_point_has_a_return_but_nothing_annualised() -> None:
    m = run([90])
    assert m.total_return == pytest.approx(-0.1)
    assert m.max_drawdown == pytest.approx(-0.1)
    assert (m.annualized_return, m.volatility, m.periods_per_year, m.sharpe) == (0.0, 0.0, 0.0, None)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize(("equity", "total"), [([50, 0, 0], -1.0), ([80, -20, -5], -1.05)])
def test_ruined_equity_does_not_crash(equity: list[float], total: float) -> None:
    m = run(equity)
    assert m.total_return == pytest.approx(total)  # the truth, even below -100%
    assert m.annualized_return == -1.0
    assert m.max_drawdown == -1.0
    assert m.sharpe is not None and math.isfinite(m.volatility)  # returns floor at -100%
    json.dumps(m.to_dict(), allow_nan=False)


def test_to_dict_is_strict_json() -> None:
    m = run([200, 400], spacing=MS_PER_HOUR)  # doubling every hour: CAGR overflows to inf
    assert m.annualized_return == math.inf
    d = m.to_dict()
    assert d["annualized_return"] is None
    assert set(d) == {f for f in Metrics.__dataclass_fields__}
    json.loads(json.dumps(d, allow_nan=False))


def test_a_long_curve_gives_finite_metrics() -> None:
    """A long random curve (its speed on a million points: benchmarks/bench_loading.py)."""
    rng = np.random.default_rng(0)
    equity = 100 * np.cumprod(1 + rng.normal(0, 0.01, 100_000))
    m = run(equity, spacing=MS_PER_HOUR, exposure=np.abs(rng.normal(size=100_000)))
    assert m.total_return == pytest.approx(equity[-1] / 100 - 1)
    assert all(math.isfinite(v) for v in (m.sharpe, m.max_drawdown, m.volatility))


# -- annualisation frequency ------------------------------------------------------------------------


def test_hourly_crypto_bars_give_8760_periods_per_year() -> None:
    ts = pd.date_range("2021-01-01 01:00", "2023-01-01 00:00", freq="h", tz="UTC").as_unit("ms").asi8
    m = run(np.full(len(ts), 100.0), ts=ts)
    assert m.periods_per_year == pytest.approx(8760)


def test_weekday_daily_bars_give_about_252_periods_per_year() -> None:
    start, end = "2015-01-01", "2024-12-31"
    weekdays = pd.bdate_range(start, end).as_unit("ms").asi8
    # Plain weekdays are 5/7 of the calendar; exchange holidays bring the count down to ~252.
    plain = run(np.full(len(weekdays), 100.0), ts=weekdays).periods_per_year
    assert plain == pytest.approx(365 * 5 / 7, rel=0.002)
    holidays = USFederalHolidayCalendar().holidays(start, end)
    sessions = pd.bdate_range(start, end, freq="C", holidays=holidays).as_unit("ms").asi8
    assert run(np.full(len(sessions), 100.0), ts=sessions).periods_per_year == pytest.approx(252, rel=0.01)


def test_daily_24_7_bars_give_365() -> None:
    assert run(np.full(730, 100.0), spacing=MS_PER_DAY).periods_per_year == pytest.approx(365)


# -- round trips --------------------------------------------------------------------------------


def trips(*fills: Fill) -> tuple[int, float | None, float | None]:
    m = run([100], fills=list(fills))
    return m.round_trips, m.win_rate, m.profit_factor


def test_simple_long_win_includes_fees() -> None:
    count, win_rate, pf = trips(fill("BTC", Side.BUY, 1, 100, fee=0.1), fill("BTC", Side.SELL, 1, 110, fee=0.11))
    assert (count, win_rate, pf) == (1, 1.0, None)  # no losing trip


def test_a_loss() -> None:
    assert trips(fill("BTC", Side.BUY, 2, 100), fill("BTC", Side.SELL, 2, 90)) == (1, 0.0, 0.0)


def test_fees_can_turn_a_winning_price_move_into_a_loss() -> None:
    assert trips(fill("BTC", Side.BUY, 1, 100, fee=3), fill("BTC", Side.SELL, 1, 105, fee=3)) == (1, 0.0, 0.0)


def test_partial_closes_and_adds_make_one_trip_each() -> None:
    win = [fill("BTC", Side.BUY, 3, 100), fill("BTC", Side.SELL, 1, 110), fill("BTC", Side.SELL, 2, 105)]
    loss = [fill("BTC", Side.BUY, 1, 100), fill("BTC", Side.BUY, 1, 110), fill("BTC", Side.SELL, 2, 104)]
    # win: -300 + 110 + 210 = +20; loss: -210 + 208 = -2
    count, win_rate, pf = trips(*win, *loss)
    assert (count, win_rate) == (2, 0.5)
    assert pf == pytest.approx(20 / 2)


def test_flip_is_split_pro_rata() -> None:
    count, win_rate, pf = trips(
        fill("BTC", Side.BUY, 1, 100, fee=1),
        fill("BTC", Side.SELL, 1.5, 110, fee=3),  # 2/3 closes the long (+10 - 1 - 2 = 7), 1/3 opens a short
        fill("BTC", Side.BUY, 0.5, 120, fee=0.5),  # short: 55 - 1 - 60 - 0.5 = -6.5
    )
    assert (count, win_rate) == (2, 0.5)
    assert pf == pytest.approx(7 / 6.5)


def test_short_trip() -> None:
    assert trips(fill("ETH", Side.SELL, 2, 50), fill("ETH", Side.BUY, 2, 40)) == (1, 1.0, None)


def test_two_symbols_interleaved() -> None:
    count, win_rate, pf = trips(
        fill("BTC", Side.BUY, 1, 100),
        fill("ETH", Side.SELL, 10, 10),
        fill("BTC", Side.SELL, 1, 90),  # BTC -10; ETH still open
        fill("ETH", Side.BUY, 10, 8),  # ETH +20
    )
    assert (count, win_rate) == (2, 0.5)
    assert pf == pytest.approx(2.0)


def test_open_trip_at_the_end_is_not_counted() -> None:
    closed = [fill("BTC", Side.BUY, 1, 100), fill("BTC", Side.SELL, 1, 110)]
    assert trips(*closed, fill("BTC", Side.BUY, 1, 200)) == (1, 1.0, None)
    assert trips(fill("BTC", Side.BUY, 1, 100)) == (0, None, None)


def test_float_dust_closes_the_trip() -> None:
    opened = [fill("BTC", Side.BUY, 0.1, 100), fill("BTC", Side.BUY, 0.2, 100)]  # 0.30000000000000004
    assert trips(*opened, fill("BTC", Side.SELL, 0.3, 110)) == (1, 1.0, None)


# -- properties ---------------------------------------------------------------------------------

cents = st.integers(min_value=1, max_value=10**9).map(lambda c: c / 100)


@settings(max_examples=200, deadline=None)
@given(
    equity=st.lists(cents, min_size=2, max_size=40),
    start=cents,
    k=st.floats(min_value=1e-3, max_value=1e3),
)
def test_scaling_equity_changes_no_ratio(equity: list[float], start: float, k: float) -> None:
    base = run(equity, start=start, spacing=MS_PER_HOUR)
    scaled = run([e * k for e in equity], start=start * k, spacing=MS_PER_HOUR)
    ratios = ("total_return", "annualized_return", "volatility", "sharpe", "sortino", "max_drawdown", "calmar")
    for name in ratios:
        a, b = getattr(base, name), getattr(scaled, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert b == pytest.approx(a, rel=1e-9, abs=1e-12), name
    assert base.max_drawdown_duration_ms == scaled.max_drawdown_duration_ms


@settings(max_examples=200, deadline=None)
@given(equity=st.lists(st.integers(-(10**8), 10**11).map(lambda c: c / 100), max_size=40), start=cents)
def test_drawdown_is_bounded_and_nothing_crashes(equity: list[float], start: float) -> None:
    m = run(equity, start=start, spacing=MS_PER_DAY)
    assert -1.0 <= m.max_drawdown <= 0.0
    assert m.annualized_return >= -1.0
    json.dumps(m.to_dict(), allow_nan=False)
