"""Training data: sentiment file layouts, splits, regression samples, purge gaps, density weights."""

from __future__ import annotations

import numpy as np
import pytest

from models.datasets import (
    DatasetError,
    density_weights,
    load_labelled_csv,
    load_phrasebank,
    parse_label_map,
    realised_volatility,
    regression_samples,
    sample_headlines,
    stratified_split,
    time_split,
)


def test_phrasebank_latin1_mixed_line_ends_and_last_at(tmp_path):
    path = tmp_path / "Sentences.txt"
    lines = ["Profit rose to EUR 5 mn @positive", "Reach us @ ir@company.com for the report@neutral",
             "Caf\xe9 chain sales fell@negative", "Profit rose to EUR 5 mn @positive"]
    path.write_bytes(("\r\n".join(lines[:2]) + "\r" + "\r\n".join(lines[2:]) + "\r\n").encode("latin-1"))
    data = load_phrasebank(path)
    assert data.texts == ("Profit rose to EUR 5 mn", "Reach us @ ir@company.com for the report", "Caf\xe9 chain sales fell")
    assert data.labels.tolist() == [2, 1, 0]
    assert data.dropped_duplicates == 1
    assert len(load_phrasebank(path, drop_duplicates=False)) == 4


def test_phrasebank_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good one@neutral\r\nno label here\r\n")
    with pytest.raises(DatasetError, match=r"bad.txt, line 2: expected 'sentence@label'"):
        load_phrasebank(path)
    path.write_bytes(b"good one@neutral\r\nodd@sideways\r\n")
    with pytest.raises(DatasetError, match=r"line 2: unknown label 'sideways'"):
        load_phrasebank(path)


def test_labelled_csv_with_the_twitter_mapping(tmp_path):
    path = tmp_path / "tweets.csv"
    path.write_text('text,label\n"$ALLY - Ally pulls outlook, shares slide",0\n$TSLA up 5%,1\nFed minutes today,2\n')
    data = load_labelled_csv(path, label_map="twitter")
    assert data.labels.tolist() == [0, 2, 1]
    assert data.texts[0] == "$ALLY - Ally pulls outlook, shares slide"
    assert parse_label_map("0=negative, 1=positive,2=neutral") == {"0": "bearish", "1": "bullish", "2": "neutral"}
    with pytest.raises(DatasetError, match="line 2: unknown label '0'"):
        load_labelled_csv(path)  # raw numbers need a mapping
    with pytest.raises(DatasetError, match="no 'sentence' column"):
        load_labelled_csv(path, text_column="sentence")
    with pytest.raises(DatasetError, match="raw=label pairs"):
        parse_label_map("0:bearish")


def test_sample_headlines_from_tone_pairs():
    data = sample_headlines([("up", 1), ("flat", 0), ("down", -1)])
    assert data.labels.tolist() == [2, 1, 0]
    assert data.counts() == {"bearish": 1, "neutral": 1, "bullish": 1}
    with pytest.raises(DatasetError, match="tone must be -1, 0 or 1"):
        sample_headlines([("up", 2)])


def test_stratified_split_is_proportional_disjoint_and_seeded():
    labels = np.array([0] * 40 + [1] * 100 + [2] * 60)
    train, test = stratified_split(labels, (0.75, 0.25), seed=3)
    assert len(train) == 150 and len(test) == 50
    assert np.bincount(labels[test]).tolist() == [10, 25, 15]
    assert set(train).isdisjoint(test) and len(set(train) | set(test)) == 200
    again = stratified_split(labels, (0.75, 0.25), seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, test), again))
    assert not np.array_equal(stratified_split(labels, (0.75, 0.25), seed=4)[1], test)
    with pytest.raises(DatasetError, match="sum to 1"):
        stratified_split(labels, (0.7, 0.2), seed=0)


def _bars(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))


def test_realised_volatility_uses_only_past_returns():
    close = _bars()
    sigma = realised_volatility(close, 20)
    assert np.isnan(sigma[:20]).all() and np.isfinite(sigma[20:]).all()
    assert sigma[20] == pytest.approx(np.std(np.diff(np.log(close[:21])), ddof=1))
    changed = close.copy()
    changed[300:] *= 1.5  # a jump later must not move earlier volatilities
    np.testing.assert_array_equal(realised_volatility(changed, 20)[:300], sigma[:300])


def test_regression_samples_target_is_the_next_normalised_return():
    close = _bars()
    features = np.column_stack([np.arange(400.0), np.ones(400)])
    features[:30, 0] = np.nan  # a warm-up without features
    samples = regression_samples(features, close, vol_window=20)
    assert samples.bar_index[0] == 30 and samples.bar_index[-1] == 398  # the last bar has no next close
    t = 100
    row = int(np.flatnonzero(samples.bar_index == t)[0])
    expected = np.log(close[t + 1] / close[t]) / realised_volatility(close, 20)[t]
    assert samples.targets[row] == pytest.approx(expected)
    assert samples.features[row, 0] == t
    with pytest.raises(DatasetError, match="one row per close"):
        regression_samples(features[:-1], close)


def test_time_split_orders_blocks_and_purges_before_each_boundary():
    bar_index = np.arange(1000)
    train, val, test = time_split(bar_index, (0.6, 0.2, 0.2), purge=25)
    assert bar_index[train].max() < bar_index[val].min() < bar_index[val].max() < bar_index[test].min()
    assert bar_index[val].min() - bar_index[train].max() > 25
    assert bar_index[test].min() - bar_index[val].max() > 25
    assert len(test) == 200 and len(train) == 600 - 25
    with pytest.raises(DatasetError, match="too few"):
        time_split(np.arange(30), (0.6, 0.2, 0.2), purge=25)


def test_density_weights_favour_rare_targets_and_are_capped():
    rng = np.random.default_rng(0)
    targets = np.concatenate([rng.normal(0, 0.3, 5000), [3.5, -3.2]])
    weights = density_weights(targets, cap=5.0)
    assert weights.mean() == pytest.approx(1.0)
    assert weights[-1] > weights[np.argmin(np.abs(targets))]
    assert weights.max() == pytest.approx(5.0)
    assert len(density_weights(np.array([]))) == 0


def test_real_phrasebank_and_twitter_files(shared_data):
    fpb = load_phrasebank(shared_data / "sentiment/financial_phrasebank/Sentences_50Agree.txt")
    assert len(fpb) + fpb.dropped_duplicates == 4846 and fpb.dropped_duplicates == 6
    assert fpb.counts()["bearish"] >= 600 and fpb.counts()["bullish"] >= 1360
    every = load_phrasebank(shared_data / "sentiment/financial_phrasebank/Sentences_AllAgree.txt", drop_duplicates=False)
    assert len(every) == 2264  # needs the bare-CR line ends split
    tfns = load_labelled_csv(shared_data / "sentiment/twitter_financial_news/sent_valid.csv", label_map="twitter")
    assert tfns.counts() == {"bearish": 347, "neutral": 1566, "bullish": 475}
