"""The real-data evaluation's pieces: the ridge baseline source (fitted before the cut only), the
no-news variant, the tweet cap, the forecast scores and the Markdown it writes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine.domain import Bar, News
from engine.feeds.sample import SampleMarketConfig, generate_sample_market
from models.aggregation import AggregationConfig, ScoredHeadline
from research.evaluation import LABELS, VARIANTS, _cap_per_day, _forecast_quality, render
from strategies.llm_signals import PrecomputedSignals, SourceIdentity, ridge_signals

AGG = AggregationConfig()


def _bar(series, i: int) -> Bar:
    return Bar(series.symbol, int(series.ts_open[i]), int(series.ts_close[i]), float(series.open[i]),
               float(series.high[i]), float(series.low[i]), float(series.close[i]), float(series.volume[i]))


def test_ridge_source_is_fitted_before_the_cut_and_never_looks_ahead():
    bars = generate_sample_market(SampleMarketConfig(bars=900)).bars
    cut = int(bars.ts_open[700])
    source = ridge_signals(bars, AGG, train_end_ms=cut, start_ms=cut)
    means = source.regression_means()
    assert sorted(means) == bars.ts_close[700:].tolist()  # every traded bar, no earlier one
    assert source.stats["train_samples"] < 700 and source.regressor_model.startswith("ridge(")

    # scrambling the traded part's later prices changes nothing before them: the fit saw none of them
    later = dataclasses.replace(bars, close=bars.close.copy(), high=bars.high.copy())
    later.close[800:] *= 1.5
    later.high[800:] *= 1.5
    again = ridge_signals(later, AGG, train_end_ms=cut, start_ms=cut).regression_means()
    assert all(again[t] == means[t] for t in bars.ts_close[700:800].tolist())
    # ...while moving the training prices does change the fit
    earlier = dataclasses.replace(bars, close=bars.close.copy())
    earlier.close[300:700] *= np.linspace(1.0, 1.3, 400)
    refit = ridge_signals(earlier, AGG, train_end_ms=cut, start_ms=cut).regression_means()
    assert any(refit[t] != means[t] for t in bars.ts_close[720:800].tolist())

    prediction = source.on_bar(_bar(bars, 750))
    assert prediction is not None and prediction.signal.direction in (-1, 0, 1)


def test_ridge_forecasts_the_strategy_horizon_from_targets_known_before_the_cut():
    bars = generate_sample_market(SampleMarketConfig(bars=900)).bars
    cut = int(bars.ts_open[700])
    one = ridge_signals(bars, AGG, train_end_ms=cut, start_ms=cut)
    six = ridge_signals(bars, AGG, train_end_ms=cut, start_ms=cut, horizon=6)
    assert "horizon=6" in six.regressor_model and "horizon=1" in one.regressor_model
    # a target six bars ahead is known before the cut for five fewer of the bars that closed by it
    assert six.stats["train_samples"] == one.stats["train_samples"] - 5
    later = dataclasses.replace(bars, close=bars.close.copy())
    later.close[701:] *= 1.2  # closes after the cut, inside the horizon of the last training bars
    t = int(bars.ts_close[700])  # its features read no changed close: only a fit that looked ahead would move it
    assert ridge_signals(later, AGG, train_end_ms=cut, start_ms=cut, horizon=6).regression_means()[t] == \
        six.regression_means()[t]


def test_ridge_source_refuses_too_few_training_bars():
    bars = generate_sample_market(SampleMarketConfig(bars=300)).bars
    with pytest.raises(ValueError, match="ridge baseline: .* training samples before the cut"):
        ridge_signals(bars, AGG, train_end_ms=int(bars.ts_open[120]), start_ms=int(bars.ts_open[120]))


def test_without_news_keeps_the_regressions_and_drops_the_headlines():
    identity = SourceIdentity("X", 3_600_000, AGG, "reg", "sent")
    rows = {3_600_000 * k: (0.4, 0.0, 0.01) for k in range(1, 4)}
    headline = ScoredHeadline(3_600_000, (0.9, 0.05, 0.05), 0.9)  # confidently bearish
    source = PrecomputedSignals(identity, rows, [headline], {"h": headline.probabilities}, {"bars": 3})
    bare = source.without_news()
    bar = Bar("X", 3_600_000, 7_200_000, 1.0, 1.0, 1.0, 1.0, 1.0)
    with_news, without = source.on_bar(bar), bare.on_bar(bar)
    assert with_news.mean == without.mean == 0.4
    assert without.signal.score > with_news.signal.score  # the bearish headline pulled the first one down
    assert bare.sentiment_model == "" and bare.regression_means() == source.regression_means()


def test_tweet_cap_keeps_the_first_distinct_texts_of_each_day():
    day = 86_400_000
    news = [News(day + 5, "b", "A"), News(day + 1, "a", "A"), News(day + 2, "a", "A"), News(day + 9, "c", "A"),
            News(2 * day + 1, "a", "A"), News(2 * day + 3, "d", "A")]
    assert [(n.ts_event, n.headline) for n in _cap_per_day(news, 2)] == [(day + 1, "a"), (day + 5, "b"),
                                                                          (2 * day + 3, "d")]


def test_forecast_quality_scores_the_return_over_the_horizon_and_the_sign_share():
    bars = generate_sample_market(SampleMarketConfig(bars=200)).bars
    nxt = np.log(bars.close[1:] / bars.close[:-1])
    perfect = dict(zip(bars.ts_close[:-1].tolist(), nxt.tolist()))
    up = float(np.mean(nxt > 0))
    assert _forecast_quality(perfect, bars) == {"n": 199, "horizon": 1, "hit_rate": 1.0, "ic": pytest.approx(1.0),
                                                "positive_share": up, "up_share": up}
    flipped = {t: -m for t, m in perfect.items()}
    got = _forecast_quality(flipped, bars)
    assert got["hit_rate"] == 0.0 and got["ic"] == pytest.approx(-1.0) and got["positive_share"] == 1.0 - up
    six = np.log(bars.close[6:] / bars.close[:-6])  # the regressions' target: the holding time's return
    ahead = dict(zip(bars.ts_close[:-6].tolist(), six.tolist()))
    got = _forecast_quality(ahead, bars, 6)
    assert (got["n"], got["hit_rate"], got["horizon"]) == (194, 1.0, 6) and got["ic"] == pytest.approx(1.0)
    assert _forecast_quality(ahead, bars)["ic"] < 0.9  # scored against the next bar it is no longer perfect
    constant = dict.fromkeys(bars.ts_close[:-6].tolist(), 0.3)  # one sign: hit rate = the up share, IC undefined
    got = _forecast_quality(constant, bars, 6)
    assert got["positive_share"] == 1.0 and got["hit_rate"] == pytest.approx(float(np.mean(six[six != 0] > 0)))
    assert got["ic"] is None


def test_evaluation_markdown_states_the_table_and_where_the_llm_does_not_help():
    def strategies(llm: float) -> dict:
        returns = {"llm": llm, "llm_no_news": 0.01, "ridge": 0.02, "sma_cross": -0.01, "buy_and_hold": 0.05}
        return {v: {"run_id": f"r-{v}", "total_return": r, "gross_return": r + 0.01, "buy_and_hold_return": 0.05,
                    "sharpe": 1.0, "max_drawdown": -0.1, "exposure": 0.5, "round_trips": 3, "fills": 6, "costs": 0.004}
                for v, r in returns.items()}

    market = {"trade": {"start": "2023-01-03T00:00:00Z", "end": "2023-12-30T00:00:00Z", "bars": 250, "headlines": 9},
              "train": {"start": "2022-01-03", "end": "2023-01-03", "headlines": 40}, "regressor": "shared NVDA daily",
              "forecasts": {"llm": {"n": 249, "hit_rate": 0.5, "ic": 0.01, "positive_share": 0.95},
                            "ridge": {"n": 249, "hit_rate": 0.52, "ic": 0.03, "positive_share": 0.5}},
              "calibration": {"regression": {"estimate": 1.8, "t": 1.2, "value": 0.0, "rows": 200},
                              "news": {"estimate": 3.0, "t": 2.5, "value": 3.0, "rows": 200}, "enter_threshold": 1.5},
              "chart": "docs/evaluation/x.png"}
    payload = {"generated": "2026-12-01T00:00:00Z", "seconds": 600.0, "machine": "x86_64, 2 CPUs", "partial": False,
               "sentiment": {"folder": "checkpoints/s", "command": "python -m engine train sentiment ...",
                             "validation": {"accuracy": 0.82, "macro_f1": 0.76}},
               "regressor": None, "walk_forward": None,
               "markets": [{**market, "market": "AAA 1d", "strategies": strategies(-0.03)},
                           {**market, "market": "BBB 1d", "strategies": strategies(0.08)}]}
    text = render(payload)
    assert ("| AAA 1d | 2023-01-03 .. 2023-12-30 | 250 | -3.00% | +1.00% | +2.00% | -1.00% | +5.00% | 0.500 / 0.010 / "
            "0.95 | 0.520 / 0.030 / 0.50 |") in text
    assert "predicted one sign on more than 80% of the traded bars in 2 of 2 markets" in text
    assert "found neither the regression nor the news score significant (|t| < 2, shrunk to 0) in 0 of 2" in text
    assert ("Calibration before the cut: regression +1.80 (t +1.20, shrunk to 0), news +3.00 (t +2.50, kept); "
            "enter threshold 1.50.") in text
    assert "Over 2 markets the LLM strategy beat buy & hold in 1, the SMA cross in 1, ridge-on-features in 1" in text
    assert "Mean return per market: LLM (bars + news) +2.50%" in text
    assert "**Where the LLM does not help:**" in text  # mean 2.5% against buy & hold's 5%
    payload["markets"][0]["strategies"] = strategies(0.1)
    better = render(payload)
    assert "**Where the LLM does not help:**" not in better and "ridge-on-features in 2" in better
    for m, share in zip(payload["markets"], (0.3, 0.62)):
        m["forecasts"] = {**m["forecasts"], "llm": {**m["forecasts"]["llm"], "positive_share": share}}
    varied = render(payload)
    assert "in 0 of 2 markets; its positive share ranged 0.30–0.62." in varied and "not skill" not in varied
    assert all(LABELS[v] in text for v in VARIANTS)


def test_the_strategy_evaluation_keeps_the_forecast_section_it_did_not_measure(tmp_path):
    from research.evaluation import _kept_forecasts
    from research.forecasts import END, START, write_section

    path = tmp_path / "EVALUATION.md"
    assert _kept_forecasts(path) == ""  # no file yet
    path.write_text("# old strategy tables\n")
    assert _kept_forecasts(path) == ""  # no section in it
    write_section(path, f"{START}\n## Forecasts\n| ic |\n{END}\n")
    kept = _kept_forecasts(path)
    assert kept == f"\n{START}\n## Forecasts\n| ic |\n{END}\n"
    path.write_text("# new strategy tables\n" + kept)  # what the evaluation writes: its render, then the section
    write_section(path, f"{START}\n## Forecasts, again\n{END}\n")  # and research.forecasts still finds its markers
    assert path.read_text() == f"# new strategy tables\n\n{START}\n## Forecasts, again\n{END}\n"


def test_an_evaluation_checkpoint_trained_with_other_settings_is_retrained(tmp_path, monkeypatch):
    import json

    import research.commands
    from research import evaluation

    monkeypatch.setattr(evaluation, "ROOT", tmp_path)
    spec = dataclasses.replace(evaluation.REGRESSOR, folder=tmp_path / "checkpoints" / "eval" / "regressor")
    trained: list[dict] = []

    def fake_train(config, description, folder, progress=False):  # the trainer itself is tested elsewhere
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({"config": config.to_dict()}))
        (folder / "metrics.json").write_text(json.dumps({"validation": {"ic": 0.01}}))
        trained.append(config.to_dict())

    monkeypatch.setattr(research.commands, "train_regressor", fake_train)
    evaluation._ensure_checkpoint(spec, tmp_path)  # missing: trained
    evaluation._ensure_checkpoint(spec, tmp_path)  # the same settings: reused
    assert len(trained) == 1 and evaluation._changed_settings(spec) == []
    stored = json.loads((spec.folder / "config.json").read_text())
    stored["config"]["center_target"] = False  # an earlier version's default
    stored["config"]["optim"]["epochs"] = 1.0
    (spec.folder / "config.json").write_text(json.dumps(stored))
    assert evaluation._changed_settings(spec) == ["center_target", "optim.epochs"]
    evaluation._ensure_checkpoint(spec, tmp_path)
    assert len(trained) == 2 and evaluation._changed_settings(spec) == []


def test_the_sentiment_spec_trains_the_top_layers_and_its_command_says_so():
    from research.evaluation import SENTIMENT

    config = SENTIMENT.config()
    assert config.lora.top_layers == 16 and config.optim.cache_lower_states
    assert config.optim.epochs == 1.0 and config.optim.eval_every == 135
    command = SENTIMENT.command().split()
    assert command[command.index("--lora-top-layers") + 1] == "16"
    every_layer = dataclasses.replace(SENTIMENT, lora_top_layers=0)
    assert every_layer.config().lora.top_layers == 0 and "--lora-top-layers" not in every_layer.command()
