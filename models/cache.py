"""A persistent prediction cache: SQLite, keyed by model fingerprint and input hash.

A repeated backtest asks the predictor the same questions (same prompt text, same adapter); the
answers are stored here so the second run does not recompute them. The key is
``(Predictor.fingerprint(task), sha256(text))``: a different backbone, adapter, head, temperature or
prompt template changes the fingerprint, so a stale answer is never served. Values are float64
rows (regressor: mean, log-variance; sentiment: class probabilities) stored as raw bytes.
stdlib ``sqlite3`` only; WAL mode, so several readers can share one file.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_CHUNK = 500  # keys per query, well under SQLite's host-parameter limit
_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    model TEXT NOT NULL,
    input TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (model, input)
) WITHOUT ROWID
"""


def input_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class PredictionCache:
    """``get_many`` / ``put_many`` rows of predictions by (fingerprint, text). ``":memory:"`` works."""

    def __init__(self, path: str | Path = ".cache/predictions.sqlite") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._db.commit()
        self.hits = 0
        self.misses = 0

    def get_many(self, fingerprint: str, texts: Sequence[str]) -> list[np.ndarray | None]:
        """The stored row per text, or None where there is none."""
        keys = [input_hash(t) for t in texts]
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT input, value FROM predictions WHERE model = ? AND input IN ({marks})",  # noqa: S608
                [fingerprint, *chunk])
            found.update((key, np.frombuffer(value, dtype=np.float64)) for key, value in rows)
        out = [found.get(k) for k in keys]
        hits = sum(v is not None for v in out)
        self.hits += hits
        self.misses += len(out) - hits
        return out

    def put_many(self, fingerprint: str, texts: Sequence[str], rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float64)
        if len(rows) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(rows)} rows")
        self._db.executemany(
            "INSERT OR REPLACE INTO predictions (model, input, value) VALUES (?, ?, ?)",
            [(fingerprint, input_hash(t), np.ascontiguousarray(r).tobytes()) for t, r in zip(texts, rows)])
        self._db.commit()

    def count(self, fingerprint: str | None = None) -> int:
        if fingerprint is None:
            return int(self._db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])
        return int(self._db.execute("SELECT COUNT(*) FROM predictions WHERE model = ?", [fingerprint]).fetchone()[0])

    def clear(self, fingerprint: str | None = None) -> None:
        if fingerprint is None:
            self._db.execute("DELETE FROM predictions")
        else:
            self._db.execute("DELETE FROM predictions WHERE model = ?", [fingerprint])
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PredictionCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
