"""config.toml is loaded into typed objects; unknown keys and bad values name the key path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from engine.config import Config, load_config
from engine.errors import ConfigError
from engine.session import load_settings, prepare_backtest

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_config_loads_and_matches_defaults():
    from strategies.llm_settings import LlmSettings, llm_settings

    config = load_settings(ROOT / "config.toml")
    defaults = Config()
    # Every section in the file equals the code's defaults, so the file documents what runs.
    for section in ("run", "data", "sample", "instrument", "costs", "logging", "store"):
        assert getattr(config, section) == getattr(defaults, section), section
    assert llm_settings(config) == LlmSettings()
    assert config.strategies["sma_cross"] == {"fast": 10, "slow": 30, "fraction": 0.95, "allow_short": False}
    from strategies.llm_signal import LlmSignal

    assert LlmSignal.Params(**config.strategies["llm_signal"]) == LlmSignal.Params()


@pytest.mark.parametrize(("overrides", "message"), [
    (["costs.taker_fe=0.001"], "unknown key 'costs.taker_fe' (did you mean 'costs.taker_fee'?)"),
    (["cost.taker_fee=0.001"], "unknown key 'cost' (did you mean 'costs'?)"),
    (["run.fill_mode=clse"], "expected one of 'next_open', 'close' (did you mean 'close'?)"),
    (["costs.slippage_bps=fast"], "costs.slippage_bps = 'fast': expected a number"),
    (["costs.slippage_bps=-1"], "slippage_bps and half_spread_bps must be >= 0"),
    (["costs.taker_fee=5"], "outside [-0.01, 0.05]"),
    (["costs.taker_fee=vipp0"], "costs.taker_fee = 'vipp0' is not valid"),
    (["run.starting_cash=0"], "[run] starting_cash must be a finite number in (0, 1e+12]"),
    (["instrument.max_leverage=5"], "max_leverage must be 1 for spot"),
    (["sample.bars=true"], "sample.bars = True: expected an integer"),
    (["data.drop_bad_rows=1"], "expected true or false"),
    (["run"], "expected section.key=value"),
])
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_settings(ROOT / "config.toml", overrides)
    assert message in str(info.value)


@pytest.mark.parametrize(("overrides", "message"), [
    (["llm.regressor.optim.lrr=1"], "unknown key 'llm.regressor.optim.lrr' (did you mean 'llm.regressor.optim.lr'?)"),
    (["llm.sentiment.max_train_samples=many"], "llm.sentiment.max_train_samples = 'many': expected an integer"),
    (["llm.regressor.backbone.source='x'"], "set the backbone with llm.backbone"),
    (["llm.train_fraction=1.5"], "train_fraction must be in (0, 1)"),
])
def test_the_llm_section_decodes_into_the_trainers_configs_as_strictly(overrides, message):
    from strategies.llm_settings import llm_settings

    config = load_settings(ROOT / "config.toml", overrides)  # kept as a table: decoded by its owner, on use
    with pytest.raises(ConfigError) as info:
        llm_settings(config)
    assert message in str(info.value) and "config.toml" in str(info.value)


def test_a_misspelt_section_is_refused_at_load_time_with_the_nearest_name():
    with pytest.raises(ConfigError, match="unknown key 'lm' \\(did you mean 'llm'\\?\\)"):
        load_settings(ROOT / "config.toml", ["lm.backbone='tiny'"])


def test_train_and_the_backtest_share_the_trainers_defaults():
    from models.training.sentiment_config import SentimentTrainingConfig
    from strategies.llm_settings import llm_settings

    shipped = llm_settings(load_settings(ROOT / "config.toml")).training("sentiment")
    trainer = SentimentTrainingConfig()  # what `python -m engine train sentiment` starts from
    assert (trainer.optim.lr, trainer.optim.head_lr, trainer.lora.top_layers) == (1e-3, 5e-3, 0)
    # the backtest's adapter, sized for a first run of minutes, differs only where config.toml says why:
    # the top 4 layers on cached lower states and 6 epochs at higher rates; the same memory policy
    assert shipped.lora.top_layers == 4 and shipped.optim.cache_lower_states
    assert (shipped.optim.epochs, shipped.optim.lr, shipped.optim.head_lr) == (6.0, 3e-3, 1e-2)
    assert (shipped.optim.recompute, shipped.optim.activation_budget_mb) == (False, 1024)
    assert dataclasses.replace(shipped.optim, epochs=trainer.optim.epochs, lr=trainer.optim.lr,
                               head_lr=trainer.optim.head_lr) == trainer.optim
    assert dataclasses.replace(shipped.lora, top_layers=0) == trainer.lora


def test_the_memory_policy_does_not_change_which_checkpoint_a_backtest_reuses():
    """recompute and the activation budget change memory and time, never the weights (the same gradients
    bit for bit: tests/test_training_speed.py), so the checkpoint's key leaves them out; lr does not."""
    from strategies.llm_prepare import _result_settings
    from strategies.llm_settings import llm_settings

    training = llm_settings(load_settings(ROOT / "config.toml")).training("sentiment")

    def with_optim(**changes):
        return dataclasses.replace(training, optim=dataclasses.replace(training.optim, **changes))

    key = _result_settings(training)
    assert _result_settings(with_optim(recompute=True)) == key
    assert _result_settings(with_optim(activation_budget_mb=0)) == key
    assert _result_settings(with_optim(lr=1e-4)) != key


def test_overrides_are_typed_and_win_over_the_file():
    config = load_settings(ROOT / "config.toml", ["costs.slippage_bps=5", "run.strategy=buy_and_hold",
                                               "strategies.sma_cross.fast=20"])
    assert config.costs.slippage_bps == 5.0 and isinstance(config.costs.slippage_bps, float)
    assert config.run.strategy == "buy_and_hold"
    assert config.strategies["sma_cross"]["fast"] == 20


def test_strategy_parameters_are_checked_against_the_strategy(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'strategies.sma_cross.fsat' \(did you mean 'strategies.sma_cross.fast'\?\)"):
        prepare_backtest(load_config(None, ["strategies.sma_cross.fsat=3"]))
    with pytest.raises(ConfigError, match="need 1 <= fast < slow"):
        prepare_backtest(load_config(None, ["strategies.sma_cross.fast=50"]))
    with pytest.raises(ConfigError, match="did you mean 'strategies.sma_cross'"):
        prepare_backtest(load_config(None, ["strategies.sma_crosss.fast=3"]))
    with pytest.raises(ConfigError, match="unknown strategy 'sma'; available: buy_and_hold, churn, llm_signal, sma_cross"):
        prepare_backtest(load_config(None, ["run.strategy=sma"]))
    with pytest.raises(ConfigError, match=r"unknown strategy 'sma_crss' \(did you mean 'sma_cross'\?\)"):
        prepare_backtest(load_config(None, ["run.strategy=sma_crss"]))


def test_malformed_file_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nstrategy = 'x'\n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    wrong_type = tmp_path / "wrong.toml"
    wrong_type.write_text("run = 3\n")
    with pytest.raises(ConfigError, match="run must be a table"):
        load_config(wrong_type)


def test_sample_market_settings_are_validated():
    with pytest.raises(ConfigError, match=r"\[sample\].*bars"):
        prepare_backtest(load_config(None, ["sample.bars=0"]))


@pytest.mark.parametrize("override", [
    "store.busy_timeout=inf", "run.starting_cash=inf", "run.starting_cash=nan", "data.timeout_s=inf",
    "costs.slippage_bps=inf", "costs.half_spread_bps=nan", "costs.funding_rate=inf", "sample.drift=inf",
    "instrument.tick_size=inf", "instrument.lot_step=inf", "instrument.min_quantity=nan",
    "instrument.min_notional=inf", "instrument.max_leverage=nan", "sample.volatility=inf",
    "sample.start_price=inf", "sample.headlines_per_day=inf", "paper.settle_s=nan",
])
def test_a_float_setting_must_be_finite_and_the_error_names_its_key(override):
    key = override.partition("=")[0]
    section, name = key.split(".")
    with pytest.raises(ConfigError) as info:
        load_settings(ROOT / "config.toml", [override])
    text = str(info.value)
    assert (key in text or (f"[{section}]" in text and name in text)) and "finite" in text, text


def test_a_float_strategy_or_component_parameter_must_be_finite():
    from engine.session import strategy_factory

    with pytest.raises(ConfigError, match=r"strategies\.llm_signal\.leverage = inf: expected a finite number"):
        strategy_factory(load_config(None, ["run.strategy=llm_signal", "strategies.llm_signal.leverage=inf"]))


@pytest.mark.parametrize(("override", "message"), [
    ("store.busy_timeout=1e300", "[store] busy_timeout must be"),
    ("run.starting_cash=1e300", "[run] starting_cash must be"),
    ("data.timeout_s=1e300", "[data] timeout_s must be"),
    ("costs.slippage_bps=1e9", "[costs] slippage_bps must be"),
    ("costs.half_spread_bps=1e9", "[costs] half_spread_bps must be"),
    ("costs.funding_rate=5", "[costs] funding_rate must be"),
    ("instrument.tick_size=1e300", "[instrument] tick_size must be"),
    ("instrument.min_notional=-1", "[instrument] min_notional must be"),
    ("instrument.min_quantity=1e300", "[instrument] min_quantity must be"),
    ("paper.poll_s=1e300", "[paper] poll_s must be"),
    ("paper.max_wait_s=1e300", "[paper] max_wait_s must be"),
    ("paper.warmup_bars=1000000000", "[paper] warmup_bars must be"),
    ("paper.history_capacity=1000000000000", "[paper] history_capacity must be"),
])
def test_absurd_numbers_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_settings(ROOT / "config.toml", [override])
    assert message in str(info.value)


def test_an_absurd_leverage_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"\[instrument\] max_leverage must be"):
        load_settings(ROOT / "config.toml", ["instrument.contract='linear_perp'", "instrument.max_leverage=1e9"])
