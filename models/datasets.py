"""Training data for the two tasks, in the layouts people have. numpy/pandas only (no torch).

Sentiment (labels are indices into ``heads.SENTIMENT_LABELS``: 0 bearish, 1 neutral, 2 bullish):

- Financial PhraseBank ``sentence@label`` files: Latin-1, CRLF and bare-CR line ends, split on the
  LAST ``@`` (sentences contain ``@`` too); labels negative / neutral / positive.
- ``text,label`` CSVs with a label mapping, e.g. the Twitter financial news set
  (``TWITTER_LABELS``: 0 bearish, 1 bullish, 2 neutral).
- the synthetic sample market's headlines, passed in as ``(text, tone)`` pairs with tone -1/0/+1
  (``models/`` does not import the engine; the caller gets them from ``engine.feeds.sample``).

Regression: one sample per bar t — the features at t (computed from data up to t's close) and the
target ``log(close[t+1] / close[t]) / sigma[t]``, with ``sigma[t]`` the realised volatility of the
``vol_window`` log returns up to t. Splits are by time (train, validation, test, in that order) and
drop ``purge`` samples before each boundary, so that no sample's look-back window or target
straddles it. ``density_weights`` gives inverse-density sample weights from a smoothed histogram
of the TRAIN targets, capped; validation and test are never weighted.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SENTIMENT_LABELS = ("bearish", "neutral", "bullish")  # the same order as models.heads
PHRASEBANK_LABELS = {"negative": "bearish", "neutral": "neutral", "positive": "bullish"}
TWITTER_LABELS = {"0": "bearish", "1": "bullish", "2": "neutral"}
_LABEL_SYNONYMS = {
    "bearish": "bearish", "negative": "bearish", "neg": "bearish",
    "neutral": "neutral", "neu": "neutral",
    "bullish": "bullish", "positive": "bullish", "pos": "bullish",
}


class DatasetError(ValueError):
    """A data file or array cannot be used; the message names the file, line or value."""


@dataclass(frozen=True, slots=True)
class TextDataset:
    """Labelled texts; ``labels[i]`` indexes ``SENTIMENT_LABELS``."""

    texts: tuple[str, ...]
    labels: np.ndarray  # int64
    source: str = ""
    dropped_duplicates: int = 0

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: np.ndarray) -> TextDataset:
        return TextDataset(tuple(self.texts[i] for i in index), self.labels[index], self.source)

    def counts(self) -> dict[str, int]:
        return {name: int((self.labels == k).sum()) for k, name in enumerate(SENTIMENT_LABELS)}

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for text, label in zip(self.texts, self.labels.tolist()):
            digest.update(f"{label}\t{text}\n".encode())
        return digest.hexdigest()[:24]


def _label_index(raw: str, mapping: Mapping[str, str] | None, where: str) -> int:
    key = raw.strip()
    name = mapping.get(key, mapping.get(key.lower())) if mapping else _LABEL_SYNONYMS.get(key.lower())
    if name is None or name not in SENTIMENT_LABELS:
        known = ", ".join(sorted(mapping)) if mapping else ", ".join(sorted(_LABEL_SYNONYMS))
        raise DatasetError(f"{where}: unknown label {raw!r} (expected one of: {known})")
    return SENTIMENT_LABELS.index(name)


def _finish(texts: list[str], labels: list[int], source: str, drop_duplicates: bool) -> TextDataset:
    if not texts:
        raise DatasetError(f"{source}: no labelled texts found")
    dropped = 0
    if drop_duplicates:
        seen: set[tuple[str, int]] = set()
        keep_t, keep_l = [], []
        for text, label in zip(texts, labels):
            if (text, label) in seen:
                dropped += 1
                continue
            seen.add((text, label))
            keep_t.append(text)
            keep_l.append(label)
        texts, labels = keep_t, keep_l
    return TextDataset(tuple(texts), np.asarray(labels, dtype=np.int64), source, dropped)


def load_phrasebank(path: str | Path, *, drop_duplicates: bool = True) -> TextDataset:
    """A Financial PhraseBank ``Sentences_*Agree.txt`` file (``sentence@label`` per line).

    Exact duplicate (sentence, label) lines are dropped by default (the 50% file has 6); the
    two sentences that occur with two different labels are kept as they are.
    """
    path = Path(path)
    try:
        raw = path.read_bytes().decode("latin-1")
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    texts, labels = [], []
    for number, line in enumerate(raw.replace("\r\n", "\n").replace("\r", "\n").split("\n"), start=1):
        if not line.strip():
            continue
        sentence, at, label = line.rpartition("@")
        if not at or not sentence.strip():
            raise DatasetError(f"{path.name}, line {number}: expected 'sentence@label', got {line[:60]!r}")
        texts.append(sentence.strip())
        labels.append(_label_index(label, PHRASEBANK_LABELS, f"{path.name}, line {number}"))
    return _finish(texts, labels, str(path), drop_duplicates)


def parse_label_map(spec: str | Mapping[str, str] | None) -> dict[str, str] | None:
    """``"twitter"``, ``"phrasebank"``, ``"0=bearish,1=bullish,2=neutral"`` or a mapping -> mapping."""
    if spec is None or isinstance(spec, Mapping):
        return dict(spec) if spec is not None else None
    named = {"twitter": TWITTER_LABELS, "phrasebank": PHRASEBANK_LABELS}
    if spec.lower() in named:
        return dict(named[spec.lower()])
    mapping = {}
    for part in spec.split(","):
        key, eq, value = part.partition("=")
        value = _LABEL_SYNONYMS.get(value.strip().lower(), "")
        if not eq or not value:
            raise DatasetError(f"label map {spec!r}: write it as raw=label pairs, e.g. 0=bearish,1=bullish,2=neutral")
        mapping[key.strip()] = value
    return mapping


def load_labelled_csv(path: str | Path, *, label_map: str | Mapping[str, str] | None = None,
                      text_column: str = "text", label_column: str = "label",
                      drop_duplicates: bool = False) -> TextDataset:
    """A CSV with a text and a label column. Without ``label_map`` the labels must be names
    (bearish/negative, neutral, bullish/positive); with it, raw values are mapped first."""
    import pandas as pd

    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    columns = {c.strip().lower(): c for c in frame.columns}
    for wanted in (text_column, label_column):
        if wanted.lower() not in columns:
            raise DatasetError(f"{path.name}: no {wanted!r} column (columns: {', '.join(frame.columns)})")
    mapping = parse_label_map(label_map)
    texts, labels = [], []
    for row, (text, label) in enumerate(zip(frame[columns[text_column.lower()]], frame[columns[label_column.lower()]])):
        if not text.strip():
            continue
        texts.append(text.strip())
        labels.append(_label_index(label, mapping, f"{path.name}, line {row + 2}"))
    return _finish(texts, labels, str(path), drop_duplicates)


def sample_headlines(pairs: Iterable[tuple[str, int]], *, source: str = "synthetic") -> TextDataset:
    """Headlines with a tone of -1 (bearish), 0 (neutral) or +1 (bullish), e.g. the synthetic sample's."""
    texts, labels = [], []
    for text, tone in pairs:
        if tone not in (-1, 0, 1):
            raise DatasetError(f"{source}: tone must be -1, 0 or 1, got {tone!r} for {text[:40]!r}")
        texts.append(text)
        labels.append(int(tone) + 1)
    return _finish(texts, labels, source, drop_duplicates=False)


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Index arrays, one per fraction (they must sum to 1), each with every class in proportion.

    Per class, the indices are shuffled with ``seed`` and cut at the rounded cumulative fractions;
    each part is returned sorted. The same labels and seed always give the same split.
    """
    labels = np.asarray(labels)
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-9) or any(f < 0 for f in fractions):
        raise DatasetError(f"split fractions must be non-negative and sum to 1, got {list(fractions)}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    cumulative = np.cumsum(fractions)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        cuts = np.rint(cumulative * len(members)).astype(int)
        starts = np.concatenate(([0], cuts[:-1]))
        for k, (a, b) in enumerate(zip(starts, cuts)):
            parts[k].append(members[a:b])
    return [np.sort(np.concatenate(p)) for p in parts]


# ------------------------------------------------------------------------------- regression


@dataclass(frozen=True, slots=True)
class RegressionSamples:
    """Per-sample features and targets, in time order; ``bar_index`` points into the bar arrays."""

    features: np.ndarray  # (n, n_features) float64
    targets: np.ndarray  # (n,) volatility-normalised next-period log return
    raw_returns: np.ndarray  # (n,) the next-period log return itself
    sigma: np.ndarray  # (n,) the volatility it was normalised by
    bar_index: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, index: np.ndarray) -> RegressionSamples:
        return RegressionSamples(self.features[index], self.targets[index], self.raw_returns[index],
                                 self.sigma[index], self.bar_index[index])

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for array in (self.features, self.targets, self.bar_index):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()[:24]


def realised_volatility(close: np.ndarray, window: int) -> np.ndarray:
    """Std of the last ``window`` log returns up to and including bar t (NaN before enough data)."""
    close = np.asarray(close, dtype=np.float64)
    sigma = np.full(len(close), np.nan)
    if len(close) <= window:
        return sigma
    returns = np.diff(np.log(close))
    windows = np.lib.stride_tricks.sliding_window_view(returns, window)
    sigma[window:] = windows.std(axis=1, ddof=1)
    return sigma


def regression_samples(features: np.ndarray, close: np.ndarray, *, vol_window: int = 20,
                       horizon: int = 1, min_sigma: float = 1e-8) -> RegressionSamples:
    """Samples for every bar whose features are finite and whose target exists.

    ``features[t]`` must use data up to bar t only (``models.features.compute_features`` does);
    the target is the log return from t's close to the close ``horizon`` bars later, divided by
    the realised volatility at t.
    """
    features = np.asarray(features, dtype=np.float64)
    close = np.asarray(close, dtype=np.float64)
    if features.ndim != 2 or len(features) != len(close):
        raise DatasetError(f"features must be (bars, n_features) with one row per close; got {features.shape} "
                           f"for {len(close)} closes")
    if np.any(~np.isfinite(close)) or np.any(close <= 0):
        raise DatasetError("close prices must be finite and positive")
    n = len(close)
    forward = np.full(n, np.nan)
    if n > horizon:
        forward[:-horizon] = np.log(close[horizon:] / close[:-horizon])
    sigma = realised_volatility(close, vol_window)
    ok = np.isfinite(features).all(axis=1) & np.isfinite(forward) & np.isfinite(sigma) & (sigma > min_sigma)
    index = np.flatnonzero(ok)
    if len(index) == 0:
        raise DatasetError(f"no usable samples in {n} bars (need more than vol_window={vol_window} bars with finite features)")
    return RegressionSamples(features[index], forward[index] / sigma[index], forward[index], sigma[index],
                             index.astype(np.int64))


def time_split(bar_index: np.ndarray, fractions: Sequence[float] = (0.7, 0.15, 0.15), *,
               purge: int) -> list[np.ndarray]:
    """Sample positions of consecutive time blocks (train, validation, test, ...).

    Blocks are cut by bar index at the given fractions of the sample range; samples whose bar lies
    within ``purge`` bars BEFORE a boundary are dropped, so a later block never shares a look-back
    window (nor a target bar) with an earlier one. ``purge`` should be at least the features'
    look-back plus the target horizon.
    """
    bar_index = np.asarray(bar_index)
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-9) or any(f <= 0 for f in fractions):
        raise DatasetError(f"split fractions must be positive and sum to 1, got {list(fractions)}")
    if purge < 0:
        raise DatasetError(f"purge must be >= 0, got {purge}")
    n = len(bar_index)
    cuts = np.rint(np.cumsum(fractions) * n).astype(int)
    starts = np.concatenate(([0], cuts[:-1]))
    parts = []
    for k, (a, b) in enumerate(zip(starts, cuts)):
        positions = np.arange(a, b)
        if k + 1 < len(fractions) and b < n:  # drop the tail that reaches into the next block
            positions = positions[bar_index[positions] < bar_index[b] - purge]
        parts.append(positions)
    if any(len(p) == 0 for p in parts):
        raise DatasetError(f"{n} samples are too few for splits {list(fractions)} with a purge of {purge} bars")
    return parts


def density_weights(targets: np.ndarray, *, bins: int = 50, smoothing: float = 2.0, cap: float = 10.0,
                    clip: float = 4.0, power: float = 1.0) -> np.ndarray:
    """Inverse label-density weights (label distribution smoothing, Yang et al. 2021).

    The targets (clipped to +-``clip``) are binned, the histogram is smoothed with a Gaussian kernel
    of ``smoothing`` bins, each sample gets 1 / density ** ``power`` of its bin (``power`` 0.5: the
    softer 1 / sqrt(density)); weights have mean 1 and none exceeds ``cap`` (``cap`` must be > 1).
    Compute them on the TRAIN split only.
    """
    if cap <= 1:
        raise DatasetError(f"the weight cap must be > 1 (weights have mean 1), got {cap}")
    targets = np.clip(np.asarray(targets, dtype=np.float64), -clip, clip)
    if len(targets) == 0:
        return np.ones(0)
    counts, edges = np.histogram(targets, bins=bins, range=(-clip, clip))
    if smoothing > 0:
        radius = max(1, int(math.ceil(3 * smoothing)))
        kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / smoothing) ** 2)
        density = np.convolve(counts.astype(np.float64), kernel / kernel.sum(), mode="same")
    else:
        density = counts.astype(np.float64)
    which = np.clip(np.searchsorted(edges, targets, side="right") - 1, 0, bins - 1)
    weights = np.maximum(density[which], 1e-12) ** -power
    weights /= weights.mean()
    for _ in range(100):  # cap, rescale to mean 1, until the cap holds after rescaling
        if weights.max() <= cap * (1 + 1e-9):
            break
        weights = np.minimum(weights, cap)
        weights /= weights.mean()
    return weights


WEIGHTINGS = ("none", "sqrt_density", "density")


def sample_weights(targets: np.ndarray, kind: str, *, cap: float = 3.0, bins: int = 50,
                   smoothing: float = 2.0) -> np.ndarray:
    """Training-sample weights of mean 1: ``"none"`` (all ones), ``"sqrt_density"`` (1 / sqrt of the
    smoothed label density) or ``"density"`` (1 / density), capped at ``cap``. TRAIN targets only.
    The density is that of the targets in units of their own std (binned over +-4 std), so the
    weights mean the same for every horizon (a 6-bar target's std is ~2.5 times a 1-bar one's)."""
    if kind not in WEIGHTINGS:
        raise DatasetError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {kind!r}")
    targets = np.asarray(targets, dtype=np.float64)
    if kind == "none":
        return np.ones(len(targets))
    std = targets.std() if len(targets) > 1 else 0.0
    standard = targets / std if std > 0 else targets
    return density_weights(standard, bins=bins, smoothing=smoothing, cap=cap, power=0.5 if kind == "sqrt_density" else 1.0)


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size as a share of the sample: (sum w)^2 / sum w^2 / n, in (0, 1];
    1 for equal weights. NaN for an empty sample."""
    w = np.asarray(weights, dtype=np.float64)
    if len(w) == 0:
        return float("nan")
    if np.any(w < 0) or not np.all(np.isfinite(w)) or w.sum() <= 0:
        raise DatasetError("weights must be finite, non-negative and not all zero")
    return float(w.sum() ** 2 / np.sum(w ** 2) / len(w))


def winsorise(targets: np.ndarray, clip: float) -> tuple[np.ndarray, float]:
    """``targets`` clipped to +-``clip`` standard deviations (their own std) and the bound used;
    ``clip`` 0 leaves them as they are (bound inf). Apply to the TRAIN targets only."""
    targets = np.asarray(targets, dtype=np.float64)
    if clip < 0:
        raise DatasetError(f"target_clip must be >= 0 (0: no clipping), got {clip}")
    if clip == 0 or len(targets) < 2:
        return targets.copy(), math.inf
    bound = float(clip * targets.std())
    return np.clip(targets, -bound, bound), bound
