"""The SQLite prediction cache, alone and behind the predictor."""

from __future__ import annotations

import numpy as np

from models.cache import PredictionCache
from models.prompts import headline_text
from tests.llm_helpers import tiny_predictor, torch

TEXTS = [headline_text(h) for h in ("Shares jump", "Regulator sues", "Annual meeting held")]


def test_rows_round_trip_by_fingerprint_and_text(tmp_path):
    path = tmp_path / "cache.sqlite"
    with PredictionCache(path) as cache:
        assert cache.get_many("m1", ["a", "b"]) == [None, None]
        cache.put_many("m1", ["a", "b"], np.array([[0.1, 0.2], [0.3, 0.4]]))
        cache.put_many("m2", ["a"], np.array([[9.0, 9.0]]))
    with PredictionCache(path) as cache:  # persisted
        a, b, c = cache.get_many("m1", ["a", "b", "c"])
        np.testing.assert_array_equal(a, [0.1, 0.2])
        np.testing.assert_array_equal(b, [0.3, 0.4])
        assert c is None and cache.hits == 2 and cache.misses == 1
        np.testing.assert_array_equal(cache.get_many("m2", ["a"])[0], [9.0, 9.0])
        assert cache.count() == 3 and cache.count("m1") == 2
        cache.clear("m1")
        assert cache.count() == 1
    many = [str(i) for i in range(1200)]  # more keys than one query takes
    with PredictionCache(":memory:") as cache:
        cache.put_many("m", many, np.arange(1200.0)[:, None])
        assert [float(v[0]) for v in cache.get_many("m", many[::-1])] == list(np.arange(1200.0)[::-1])


def test_the_predictor_serves_repeats_from_the_cache_and_never_stale_ones():
    predictor = tiny_predictor(seed=0)
    with PredictionCache(":memory:") as cache:
        first = predictor.predict_sentiment(TEXTS, cache=cache)
        assert cache.misses == 3 and cache.count() == 3
        again = predictor.predict_sentiment(TEXTS[::-1], cache=cache)
        assert cache.hits == 3
        np.testing.assert_array_equal(again[::-1], first)
        mean, std = predictor.predict_regression(["Asset: X, 1h bars.\nret1=0.10"], cache=cache)
        assert cache.count() == 4  # another task, another fingerprint
        with torch.no_grad():
            for param in predictor.lora_parameters("sentiment"):
                param.mul_(2.0)
        predictor.changed("sentiment")
        changed = predictor.predict_sentiment(TEXTS, cache=cache)
        assert cache.count() == 7 and np.abs(changed - first).max() > 1e-6
        np.testing.assert_allclose(changed, predictor.predict_sentiment(TEXTS), atol=1e-12)
