"""The on-disk cache of fetched market data (``data.cache_dir``, ``.cache/market`` by default, git-ignored).

Layout, one folder per source, symbol and table::

    .cache/market/bybit/BTC-USDT~USDT@6c7cb41c/bars-1h/meta.json
    .cache/market/bybit/BTC-USDT~USDT@6c7cb41c/bars-1h/data-3f2a9c01b7e4.csv.gz
    .cache/market/bybit/BTC-USDT~USDT@6c7cb41c/funding/...
    .cache/market/yfinance/AAPL@1eb44d62/bars-1d-adjusted/...
    .cache/market/bybit/instruments.json

A symbol's folder is a readable slug of it and the first 8 hex digits of its SHA-256 (``folder_name``),
so ``BTC/USDT`` and ``BTC-USDT`` never share a folder. An entry whose ``meta.json`` names another
symbol is never deleted, only reported; writing over it is refused.

Caches from before (the slug alone, ``bybit/BTC-USDT~USDT/``) are migrated, not re-fetched: the first
read of a table whose new folder is empty renames the old folder to the new name if, and only if, its
``meta.json`` names that very symbol (and source, kind, timeframe and variant); an old folder that
names another symbol is left for that symbol to migrate.

The data file is a gzip CSV (``timestamp,open,high,low,close,volume`` for bars, ``timestamp,fundingRate``
for funding) that ``load_bars`` / ``load_funding`` read like any other file; times are UTC epoch ms,
bars stamped at their open. ``meta.json`` records the real symbol, the conventions, the half-open
ranges ``[start, end)`` the source has answered for (so a range with no bars, such as exchange
downtime, is not asked for again), the data file's name and its SHA-256.

Writes are atomic: a new data file is written under a new content-named file (temp file + rename),
then ``meta.json`` is replaced (temp file + rename) — that rename is the commit — and only then is the
old data file removed. A run killed at any point leaves the previous state or the new one, never a
half-written file. A file that fails to parse or whose checksum differs is reported, removed and
fetched again.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import re
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.errors import DataError
from engine.feeds.quality import BAR_TIME
from engine.files import atomic_write
from engine.series import BarSeries
from engine.timeutil import iso, parse_timeframe

log = logging.getLogger(__name__)

FORMAT = 1
META = "meta.json"
LOCK = ".lock"
BAR_COLUMNS = ("timestamp", "open", "high", "low", "close", "volume")
FUNDING_COLUMNS = ("timestamp", "fundingRate")
KINDS = {"bars": BAR_COLUMNS, "funding": FUNDING_COLUMNS}
_DATA_FILE = re.compile(r"data-[0-9a-f]{1,64}\.csv\.gz")  # what ``meta.json``'s "file" may name

Range = tuple[int, int]


@dataclass(frozen=True, slots=True)
class CacheKey:
    """One cached table: ``kind`` "bars" (needs ``timeframe``) or "funding"; ``variant`` tells
    versions of the same bars apart (yfinance "adjusted" / "raw")."""

    source: str
    symbol: str
    kind: str = "bars"
    timeframe: str = ""
    variant: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown cache table kind {self.kind!r}")
        if self.kind == "bars" and not self.timeframe:
            raise ValueError("bars need a timeframe")

    @property
    def table(self) -> str:
        return "-".join(p for p in (self.kind, self.timeframe, self.variant) if p)

    def folder(self, root: Path) -> Path:
        return root / self.source / folder_name(self.symbol) / self.table

    def legacy_folder(self, root: Path) -> Path:
        """Where caches before the hashed folder names kept this table (shared by look-alike symbols)."""
        return root / self.source / safe_name(self.symbol) / self.table

    def describe(self) -> str:
        extra = " ".join(p for p in (self.timeframe, self.variant) if p)
        return f"{self.source} {self.symbol} {extra + ' ' if extra else ''}{'bars' if self.kind == 'bars' else 'funding rates'}"


@dataclass(frozen=True)
class CachedTable:
    key: CacheKey
    frame: pd.DataFrame  # ``timestamp`` (int64, ascending, unique) and the kind's value columns
    covered: tuple[Range, ...]  # merged, ascending
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # the data file

    def series(self) -> BarSeries:
        """Bars as a ``BarSeries`` (bars tables only)."""
        f = self.frame
        return BarSeries.from_arrays(
            self.key.symbol, parse_timeframe(self.key.timeframe), f["timestamp"], f["open"], f["high"], f["low"],
            f["close"], f["volume"], source=str(self.path or self.key.describe()),
        )


def safe_name(symbol: str) -> str:
    """A readable slug of a symbol: ``BTC/USDT:USDT`` -> ``BTC-USDT~USDT``. Not one-to-one
    (``BTC-USDT`` gives the same); ``folder_name`` adds what tells them apart."""
    name = symbol.replace("/", "-").replace(":", "~")
    return re.sub(r"[^A-Za-z0-9._~^=-]", "_", name) or "_"


def folder_name(symbol: str) -> str:
    """A symbol's cache folder: its slug and a short hash of the symbol itself, one folder per
    symbol (``BTC/USDT:USDT`` -> ``BTC-USDT~USDT@6c7cb41c``); the real symbol is in meta.json."""
    return f"{safe_name(symbol)}@{hashlib.sha256(symbol.encode()).hexdigest()[:8]}"


class _OtherSymbol(DataError):
    """A table folder whose meta.json names another symbol: never this key's to delete."""


# ---------------------------------------------------------------- ranges
def merge_ranges(ranges: Iterable[Range]) -> tuple[Range, ...]:
    """Sorted, with overlapping and touching ranges joined; empty ranges dropped."""
    out: list[list[int]] = []
    for a, b in sorted((int(a), int(b)) for a, b in ranges if b > a):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return tuple((a, b) for a, b in out)


def missing_ranges(covered: Iterable[Range], start: int, end: int) -> list[Range]:
    """The parts of ``[start, end)`` that ``covered`` does not contain."""
    out, cursor = [], start
    for a, b in merge_ranges(covered):
        if b <= cursor:
            continue
        if a >= end:
            break
        if a > cursor:
            out.append((cursor, min(a, end)))
        cursor = max(cursor, b)
        if cursor >= end:
            break
    if cursor < end:
        out.append((cursor, end))
    return out


def describe_ranges(ranges: Iterable[Range], limit: int = 4) -> str:
    ranges = list(ranges)
    text = ", ".join(f"{iso(a)} -> {iso(b)}" for a, b in ranges[:limit])
    return text + (f" and {len(ranges) - limit} more" if len(ranges) > limit else "") if ranges else "nothing"


# ---------------------------------------------------------------- the cache
class MarketCache:
    """Reads and writes cached tables under ``root``. ``notes`` collects what a reader should be told
    (a corrupt file that was removed, say); callers copy it into their run notes."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.notes: list[str] = []

    # -- tables
    def read(self, key: CacheKey) -> CachedTable | None:
        """The cached table, or ``None`` when there is none or it was corrupt (then removed and noted)."""
        folder = key.folder(self.root)
        if not (folder / META).exists() and not self._migrate(key):
            return None
        with _locked(folder, shared=True):
            table, problem = self._read(key, folder)
        if problem is not None and problem.startswith(_FOREIGN):
            self.notes.append(f"cache: {folder} {problem}; left it as it is (not this table's to remove)")
            log.warning(self.notes[-1])
        elif problem is not None:
            with _locked(folder, shared=False):
                self._discard(key, problem)
        return table

    def _read(self, key: CacheKey, folder: Path) -> tuple[CachedTable | None, str | None]:
        meta_path = folder / META
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            _check_owner(key, meta)
            data_path = _data_file(folder, meta["file"])
            blob = data_path.read_bytes()
            if hashlib.sha256(blob).hexdigest() != meta["sha256"]:
                raise DataError(f"{data_path.name}: checksum mismatch (the file changed after it was written)")
            frame = _parse(key, data_path)
            covered = merge_ranges((int(a), int(b)) for a, b in meta["covered"])
            if meta.get("symbol") != key.symbol or meta.get("format") != FORMAT:
                raise DataError(f"meta.json is for {meta.get('symbol')!r} format {meta.get('format')!r}")
        except _OtherSymbol as exc:
            return None, f"{_FOREIGN}{exc}"
        except FileNotFoundError as exc:
            return None, f"{Path(exc.filename or '?').name} is missing"
        except (DataError, OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, zlib.error) as exc:
            return None, str(exc) or type(exc).__name__
        return CachedTable(key, frame, covered, meta, data_path), None

    def write(self, key: CacheKey, frame: pd.DataFrame, covered: Iterable[Range],
              extra: dict[str, Any] | None = None) -> tuple[CachedTable, tuple[str, ...]]:
        """Store ``frame`` (sorted, unique ``timestamp``) as the whole table; returns the table as read
        back and the rows dropped by validation (bars only: impossible prices and the like)."""
        folder = key.folder(self.root)
        if not (folder / META).exists():
            self._migrate(key)
        folder.mkdir(parents=True, exist_ok=True)
        with _locked(folder, shared=False):
            _refuse_foreign(key, folder)
            return self._write(key, folder, frame, covered, extra)

    def _migrate(self, key: CacheKey) -> bool:
        """Rename this table's folder of the old layout (the slug alone) to its new name when its
        meta.json names this very table; whether there was one to move."""
        legacy, folder = key.legacy_folder(self.root), key.folder(self.root)
        if not (legacy / META).is_file():
            return False
        with _locked(legacy, shared=False):
            try:
                _check_owner(key, json.loads((legacy / META).read_text(encoding="utf-8")))
            except (DataError, OSError, ValueError, AttributeError):
                return False  # another symbol's (or unreadable): left where it is, for its owner
            if (folder / META).exists():
                return False
            folder.parent.mkdir(parents=True, exist_ok=True)
            if folder.is_dir():  # only a lock file in it: an earlier read found nothing
                for path in folder.iterdir():
                    if path.name == LOCK:
                        path.unlink()
                folder.rmdir()
            os.rename(legacy, folder)
        with contextlib.suppress(OSError):
            legacy.parent.rmdir()  # the old symbol folder, if nothing else is in it
        log.info("cache: moved %s to %s (one folder per symbol now)", legacy, folder)
        return True

    def _write(self, key: CacheKey, folder: Path, frame: pd.DataFrame, covered: Iterable[Range],
               extra: dict[str, Any] | None) -> tuple[CachedTable, tuple[str, ...]]:
        columns = list(KINDS[key.kind])
        frame = frame.loc[:, columns].reset_index(drop=True)
        frame["timestamp"] = frame["timestamp"].astype(np.int64)
        problems: tuple[str, ...] = ()
        if key.kind == "bars" and len(frame):
            frame, problems = _validated_bars(key, frame, folder)
        blob = _csv_gz(frame)
        digest = hashlib.sha256(blob).hexdigest()
        data_name = f"data-{digest[:12]}.csv.gz"
        atomic_write(folder / data_name, blob)
        meta = {
            "format": FORMAT, "source": key.source, "symbol": key.symbol, "kind": key.kind,
            "timeframe": key.timeframe, "variant": key.variant, "columns": columns,
            "time": "UTC epoch milliseconds", "bar_time": BAR_TIME if key.kind == "bars" else None,
            "covered": [list(r) for r in merge_ranges(covered)], "rows": len(frame),
            "file": data_name, "sha256": digest, "written_at": iso(int(time.time() * 1000)),
            **(extra or {}),
        }
        atomic_write(folder / META, json.dumps(meta, indent=1).encode())  # the commit point
        for old in folder.glob("data-*.csv.gz"):
            if old.name != data_name:
                old.unlink(missing_ok=True)
        return CachedTable(key, frame, tuple(merge_ranges(covered)), meta, folder / data_name), problems

    def tables(self) -> Iterator[CachedTable | tuple[Path, str]]:
        """Every table under the root, or (folder, problem) for one that cannot be read."""
        if not self.root.is_dir():
            return
        for meta_path in sorted(self.root.glob(f"*/*/*/{META}")):
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                key = CacheKey(meta["source"], meta["symbol"], meta["kind"], meta.get("timeframe", ""),
                               meta.get("variant", ""))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                yield meta_path.parent, f"unreadable meta.json: {exc}"
                continue
            before = len(self.notes)
            table = self.read(key)
            if table is None:
                yield meta_path.parent, self.notes[-1] if len(self.notes) > before else "missing"
            else:
                yield table

    # -- small JSON documents (instrument details)
    def read_json(self, relative: str) -> dict[str, Any] | None:
        path = self.root / relative
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            self.notes.append(f"cache: {path} was unreadable ({exc}); removed it, it will be fetched again")
            log.warning(self.notes[-1])
            path.unlink(missing_ok=True)
            return None
        if not isinstance(value, dict):
            self.notes.append(f"cache: {path} does not hold a JSON object; removed it")
            path.unlink(missing_ok=True)
            return None
        return value

    def write_json(self, relative: str, value: dict[str, Any]) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(value, indent=1, sort_keys=True).encode())
        return path

    def _discard(self, key: CacheKey, reason: str) -> None:
        folder = key.folder(self.root)
        for path in folder.iterdir() if folder.is_dir() else ():
            if path.is_file() and path.name != LOCK:
                path.unlink(missing_ok=True)
        self.notes.append(f"cache: the {key.describe()} in {folder} were unreadable ({reason}); "
                          "removed them, they will be fetched again")
        log.warning(self.notes[-1])


_FOREIGN = "belongs to another table: "


def _check_owner(key: CacheKey, meta: dict[str, Any]) -> None:
    """``_OtherSymbol`` unless ``meta`` (a table's meta.json) describes ``key``'s table."""
    found = (meta.get("source"), meta.get("symbol"), meta.get("kind"), meta.get("timeframe", ""), meta.get("variant", ""))
    wanted = (key.source, key.symbol, key.kind, key.timeframe, key.variant)
    if found != wanted:
        raise _OtherSymbol(f"meta.json holds {meta.get('symbol')} ({' '.join(str(p) for p in found if p)}), "
                           f"not {key.describe()}")


def _refuse_foreign(key: CacheKey, folder: Path) -> None:
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no table yet, or a broken one of its own: written over
    if not isinstance(meta, dict):
        return
    try:
        _check_owner(key, meta)
    except _OtherSymbol as exc:
        raise DataError(f"cache: {folder} {exc}; refusing to write over it. Move that folder away "
                        "(or delete it if the data is not needed) and run again") from None


def _data_file(folder: Path, name: object) -> Path:
    """The data file ``meta.json`` names, which must be one of this folder's ``data-<hash>.csv.gz``
    files: a damaged or crafted meta must not make the cache read (or vouch for) a file elsewhere."""
    if not isinstance(name, str) or not _DATA_FILE.fullmatch(name):
        raise DataError(f"meta.json names the data file {name!r}, not a data-<hash>.csv.gz file of its folder")
    return folder / name


@contextlib.contextmanager
def _locked(folder: Path, *, shared: bool) -> Iterator[None]:
    """An advisory lock on a table's folder, so that two processes fetching the same table cannot
    delete each other's data file; readers share it. (POSIX ``flock``; elsewhere no lock.)"""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(folder / LOCK, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def frame_from_series(series: BarSeries) -> pd.DataFrame:
    return pd.DataFrame({"timestamp": series.ts_open, "open": series.open, "high": series.high, "low": series.low,
                         "close": series.close, "volume": series.volume})


def _csv_gz(frame: pd.DataFrame) -> bytes:
    # mtime=0: the same rows always give the same bytes (and file name)
    return gzip.compress(frame.to_csv(index=False, lineterminator="\n").encode(), mtime=0)


def _parse(key: CacheKey, path: Path) -> pd.DataFrame:
    if key.kind == "bars":
        from engine.feeds.bar_files import load_bars

        series = load_bars(path, symbol=key.symbol, timeframe_ms=parse_timeframe(key.timeframe)).series
        return frame_from_series(series)
    frame = pd.read_csv(path)
    if list(frame.columns) != list(FUNDING_COLUMNS):
        raise DataError(f"{path.name}: columns {list(frame.columns)}, expected {list(FUNDING_COLUMNS)}")
    ts = frame["timestamp"].to_numpy()
    if frame.isna().any().any() or not np.issubdtype(ts.dtype, np.integer) or np.any(np.diff(ts) <= 0):
        raise DataError(f"{path.name}: empty cells, non-integer or unordered timestamps")
    return frame


def _validated_bars(key: CacheKey, frame: pd.DataFrame, folder: Path) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """Run fetched bars through ``load_bars``'s checks (the same ones every bar file gets), dropping
    and describing bad rows."""
    from engine.feeds.bar_files import load_bars

    fd, tmp = tempfile.mkstemp(prefix=".check.", suffix=".csv.gz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(_csv_gz(frame))
        loaded = load_bars(tmp, symbol=key.symbol, timeframe_ms=parse_timeframe(key.timeframe), drop_bad_rows=True)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    problems = tuple(p.replace(Path(tmp).name, key.describe()) for p in loaded.problems)
    if not loaded.dropped_rows:
        return frame, problems
    return frame_from_series(loaded.series), problems
