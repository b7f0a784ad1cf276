"""Load OHLCV bar files as they come from exchanges, Yahoo Finance and Kaggle into a ``BarSeries``.

Real files differ in column order, names, case, date format and sort direction; this module accepts
those differences so nobody hand-edits data, and refuses what would silently corrupt a backtest
(impossible prices, duplicate or shuffled bars). Every error names the file, the 1-based line in the
file (the header is line 1) and the problem; a damaged compressed file (``.gz``, ``.bz2``, ``.xz``,
``.zip``) or a binary one is refused the same way, never with a decompressor's traceback. The work is
vectorised: checks run on whole columns and messages are built only for the rows that fail, so a
million-row file loads in about a second.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import re
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
from pandas.api.types import is_numeric_dtype

from engine.errors import DataError
from engine.series import BarSeries
from engine.timeutil import iso

MAX_PROBLEMS = 20  # descriptions kept in LoadedBars.problems
_PRICES = ("open", "high", "low", "close")
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zip")
_OPENERS = {".gz": (gzip.open, "gzip"), ".bz2": (bz2.open, "bzip2"), ".xz": (lzma.open, "xz")}
# What a decompressor raises on damaged input, at open or at read time.
_DECOMPRESS_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile, NotImplementedError, RuntimeError)
# Leading bytes of compressed data, to name what a file without the matching suffix holds.
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"PK\x03\x04", "zip"),
          (b"\x28\xb5\x2f\xfd", "zstd"))
_CHUNK = 1 << 20  # most bytes taken per read of a decompressed stream
MAX_HEADER_BYTES = 1 << 20  # a first line (the header) longer than this is refused before more is read
# Normalised column name (see normalise_name) -> canonical field. The first time alias found wins.
_TIME_ALIASES = ("open time", "opentime", "timestamp", "unix", "unix timestamp", "datetime", "date time", "ts")
_FIELD_ALIASES = {
    "open": ("open", "o", "open price", "opening price"),
    "high": ("high", "h", "high price"),
    "low": ("low", "l", "low price"),
    "close": ("close", "c", "close price", "closing price"),
    "volume": ("volume", "vol", "v", "base volume", "volume base"),
    "adj close": ("adj close", "adjclose", "adjusted close", "adj close price"),
}
# Text date formats tried after ISO 8601, in order (M/D/YYYY is the US convention of Yahoo/Kaggle exports).
_DATE_FORMATS = (
    "%m/%d/%Y", "%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S", "%Y/%m/%d", "%Y/%m/%d %H:%M:%S",
    "%Y.%m.%d", "%Y.%m.%d %H:%M", "%Y.%m.%d %H:%M:%S", "%Y-%m-%d %I-%p",
)
_EPOCH = pd.Timestamp(0, tz="UTC")
_MS = pd.Timedelta(milliseconds=1)
# File-name tokens that are not the symbol: sources, exchanges, data kinds, bar lengths.
_NOT_SYMBOL = frozenset({
    "binance", "bybit", "coinbase", "kraken", "bitfinex", "bitstamp", "okx", "kucoin", "ftx", "huobi",
    "gemini", "backtrader", "stocknet", "yahoo", "yf", "stooq", "kaggle", "cdd", "cryptodatadownload",
    "ccxt", "price", "prices", "ohlc", "ohlcv", "bars", "bar", "candles", "klines", "kline", "data",
    "daily", "hourly", "weekly", "monthly", "minute", "minutes", "day", "hour", "week", "month", "index",
    "historical", "history", "quotes", "stock", "stocks", "spot", "futures", "perp", "perpetual", "usdm",
    "coinm", "raw", "clean", "adjusted", "adj",
})
_TIMEFRAME_TOKEN = re.compile(r"^\d+(?:s|m|h|d|w|mo|min|mins|hr|hrs|sec)$")


@dataclass(frozen=True, slots=True)
class LoadedBars:
    """A loaded bar file and what was removed from it with ``drop_bad_rows=True``."""

    series: BarSeries
    dropped_rows: int  # rows removed because drop_bad_rows=True
    problems: tuple[str, ...]  # a description of each dropped row (first MAX_PROBLEMS kept)


@dataclass(frozen=True, slots=True)
class _Check:
    """One validation: the rows that fail it and how to describe row ``i`` (0-based data row)."""

    mask: np.ndarray
    describe: Callable[[int], str]


def load_bars(
    path: str | Path, *, symbol: str | None = None, timeframe_ms: int | None = None,
    drop_bad_rows: bool = False, adjusted: bool = False,
) -> LoadedBars:
    """Read a CSV / ``.txt`` bar file, maybe compressed (``.gz``, ``.bz2``, ``.xz``, ``.zip``), into a
    ``BarSeries`` (ascending, bar open times).

    Columns may come in any order and case; the time column may be called timestamp, time, date,
    datetime, open time, unix, ... and hold epoch seconds / milliseconds (told apart per value by
    magnitude), ISO dates or datetimes (no offset means UTC) or ``M/D/YYYY``. Times are bar OPEN
    times (a daily date is the bar opening at 00:00 UTC). Volume is optional (zeros when absent).
    Newest-first files are reversed. ``adjusted=True`` rescales open/high/low by
    ``adj_close / close`` and uses the adjusted close (volume is left as it is).

    A bad row raises ``DataError``; with ``drop_bad_rows=True`` it is dropped and described instead
    (of duplicate timestamps the first in the file is kept). A missing column or an empty file is
    always an error. ``timeframe_ms=None`` infers the most common gap between bars.
    """
    source = os.fspath(path)
    path = Path(path)
    name = path.name
    frame = _read_frame(path, name)
    columns = _map_columns(frame, name, adjusted)
    raw_time = columns.pop("time")
    ts, ts_ok = _parse_times(raw_time)
    values = {field: _numeric(raw) for field, raw in columns.items()}
    if "volume" not in values:
        values["volume"] = np.zeros(len(frame))
    index = frame.index.to_numpy()
    checks = [_Check(~ts_ok, lambda i: _bad_time(raw_time.iloc[i])), *_value_checks(columns, values)]
    descending = _is_descending(ts, ~_failing(checks))
    checks += _order_checks(ts, ~_failing(checks), descending, index)
    bad = _failing(checks)
    messages = _describe(name, checks, bad, index, limit=MAX_PROBLEMS if drop_bad_rows else 1)
    if messages and not drop_bad_rows:
        more = int(bad.sum()) - 1
        raise DataError(messages[0] + (f" (and {more} more bad rows; drop_bad_rows=True skips them)" if more else ""))
    if bad.all():
        raise DataError(f"{name}: no valid rows left after dropping {int(bad.sum())} bad rows; first: {messages[0]}")
    order = np.flatnonzero(~bad)[::-1] if descending else np.flatnonzero(~bad)
    if timeframe_ms is None:
        timeframe_ms = _infer_timeframe(name, ts[order])
    series = BarSeries.from_arrays(
        symbol or symbol_from_path(path), timeframe_ms, ts[order], *_prices(values, order, adjusted), source=source,
    )
    return LoadedBars(series=series, dropped_rows=int(bad.sum()), problems=tuple(messages))


def normalise_name(column: str) -> str:
    """``" Open_Time"`` -> ``"open time"``: lower case, runs of non-alphanumerics as one space."""
    return re.sub(r"[^a-z0-9]+", " ", str(column).lower()).strip()


def file_stem(path: str | Path) -> str:
    """File name without its compression and format suffixes: ``a/x.csv.gz`` -> ``x``."""
    name = Path(path).name
    for suffix in _COMPRESSION_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return Path(name).stem


def read_text(path: Path) -> bytes:
    """The bytes of a text data file, decompressed by its suffix (``.gz``, ``.bz2``, ``.xz``, or a
    ``.zip`` holding one file), checked to be UTF-8 text.

    Every problem is a ``DataError`` naming the file and where it is: a file that cannot be opened, a
    compressed stream that is truncated or corrupt (up to which line its text could be read), a zip
    that does not hold exactly one file, binary data (NUL bytes, or compressed data without the
    matching suffix) and bytes that are not UTF-8 (their line and byte offset).
    """
    name = path.name
    try:
        data = _decompress(path, name)
    except OSError as exc:  # missing, a directory, no permission: before a byte was read
        raise DataError(f"{name}: cannot read the file: {exc}") from exc
    _check_text(data, name)
    return data


def _decompress(path: Path, name: str) -> bytes:
    """The file's bytes, decompressed by its suffix; a damaged stream says up to which line it was read."""
    suffix = next((s for s in _COMPRESSION_SUFFIXES if name.lower().endswith(s)), "")
    if not suffix:
        with path.open("rb") as plain:
            _check_header(plain.read(MAX_HEADER_BYTES + 1), name)
            plain.seek(0)
            return plain.read()
    chunks: list[bytes] = []
    header_seen = False
    try:
        with _open_compressed(path, name, suffix) as handle:
            while chunk := handle.read1(_CHUNK):  # read1: what decompressed before a break is kept
                chunks.append(chunk)
                if not header_seen:  # a small compressed file can hold a huge first line: stop early
                    header_seen = b"\n" in chunk or sum(map(len, chunks)) > MAX_HEADER_BYTES
                    if header_seen:
                        _check_header(b"".join(chunks)[: MAX_HEADER_BYTES + 1], name)
    except (DataError, FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except _DECOMPRESS_ERRORS as exc:
        kind = _OPENERS[suffix][1] if suffix in _OPENERS else "zip"
        lines = sum(c.count(b"\n") for c in chunks)
        where = f"the text is readable up to line {lines}" if lines else "not one line of text could be read"
        problem = "ends early (the file is truncated)" if isinstance(exc, EOFError) else "cannot be decompressed"
        raise DataError(f"{name}: the {kind} data {problem}: {where} ({type(exc).__name__}: {exc})") from exc
    return b"".join(chunks)


def _check_header(head: bytes, name: str) -> None:
    """Refuse a file whose first line does not end within ``MAX_HEADER_BYTES`` (``head``: its first
    bytes, one more than that), before the rest is read: no header is that long, and parsing one
    would take memory in proportion."""
    if len(head) > MAX_HEADER_BYTES and b"\n" not in head:
        raise DataError(f"{name}: line 1 is longer than {MAX_HEADER_BYTES:,} bytes: not the header of a CSV file "
                        f"(is it one line of data, or a file of another kind?)")


def _open_compressed(path: Path, name: str, suffix: str) -> BinaryIO:
    """A binary reader of the decompressed data; a zip must hold exactly one file."""
    if suffix in _OPENERS:
        return _OPENERS[suffix][0](path, "rb")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{name}: not a readable zip archive (truncated, or not a zip file): {exc}") from exc
    with archive:  # the member keeps the file open until it is closed itself
        members = [m for m in archive.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
        if len(members) != 1:
            listed = ", ".join(m.filename for m in members[:5]) + (" ..." if len(members) > 5 else "")
            raise DataError(f"{name}: a zip archive must hold exactly one file; it holds {len(members)}"
                            + (f" ({listed})" if members else ""))
        return archive.open(members[0])


def _check_text(data: bytes, name: str) -> None:
    """Refuse binary data and bytes that are not UTF-8, naming the line and byte where they start."""
    if data.isascii() and b"\x00" not in data:
        return
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            raise DataError(f"{name}: line 1: the file holds {kind}-compressed data, not text: name it with "
                            f"its compression suffix (.gz, .bz2, .xz, .zip) or decompress it")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(f"{name}: line {_line_at(data, nul)}: binary data (a NUL byte at byte {nul}), not a "
                        "text file (UTF-16 text must be saved as UTF-8)")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: line {_line_at(data, exc.start)}: not UTF-8 text (byte {exc.start} is "
                        f"{data[exc.start:exc.start + 1]!r}); save the file as UTF-8") from None


def _line_at(data: bytes, offset: int) -> int:
    """1-based line of byte ``offset``."""
    return data.count(b"\n", 0, offset) + 1


def sniff_delimiter(data: bytes) -> str:
    """The most frequent of ``, ; tab |`` in the first line of ``data`` (comma when none occurs)."""
    first = data[:MAX_HEADER_BYTES].split(b"\n", 1)[0]
    counts = {sep: first.count(sep.encode()) for sep in (",", ";", "\t", "|")}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else ","


def symbol_from_path(path: str | Path) -> str:
    """Guess a readable symbol from a file name.

    The stem is split on ``_``, ``-``, space and ``.``; tokens that are known sources or exchanges
    (binance, backtrader, stocknet, yahoo, ...), data kinds (price, daily, index, ohlcv, ...), bar
    lengths (``1h``, ``15m``) or plain numbers (years) are dropped, and the first token left is
    upper-cased: ``binance_BTCUSDT_1h.csv`` -> ``BTCUSDT``, ``backtrader_nvda-1999-2014.txt`` ->
    ``NVDA``, ``djia_index_2008_2016.csv`` -> ``DJIA``. When nothing is left, the whole stem is used.
    """
    stem = file_stem(path)
    for token in re.split(r"[_\-\s.]+", stem):
        low = token.lower()
        if low and low not in _NOT_SYMBOL and not low.isdigit() and not _TIMEFRAME_TOKEN.match(low):
            return token.upper()
    return stem.upper()


def _read_frame(path: Path, name: str) -> pd.DataFrame:
    """The file as a DataFrame whose index is the data row number (line = index + 2).

    Blank lines are kept as all-empty rows so the index stays aligned with file lines, then removed.
    """
    data = read_text(path)
    try:
        frame = pd.read_csv(
            io.BytesIO(data), sep=sniff_delimiter(data), encoding="utf-8-sig", skip_blank_lines=False,
            index_col=False, low_memory=False,
        )
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{name}: file is empty") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{name}: cannot read as CSV: {exc}") from exc
    frame = frame[~frame.isna().all(axis=1)]
    if frame.empty:
        raise DataError(f"{name}: empty file: a header but no data rows")
    return frame


def _map_columns(frame: pd.DataFrame, name: str, adjusted: bool) -> dict[str, pd.Series]:
    """Canonical field -> raw column: ``time``, the prices, and ``volume`` / ``adj close`` if present."""
    by_name: dict[str, str] = {}
    for column in frame.columns:
        by_name.setdefault(normalise_name(column), column)
    found: dict[str, pd.Series] = {}
    time = _time_column(frame, by_name)
    if time is not None:
        found["time"] = time
    for field, aliases in _FIELD_ALIASES.items():
        match = next((by_name[a] for a in aliases if a in by_name), None)
        if match is None and field == "volume":  # CryptoDataDownload: "Volume BTC", "Volume USDT"
            match = next((by_name[n] for n in by_name if n.startswith("volume ")), None)
        if match is not None and (field != "adj close" or adjusted):
            found[field] = frame[match]
    missing = [f for f in ("time", *_PRICES) if f not in found]
    if missing:
        raise DataError(
            f"{name}: missing required columns: {', '.join(missing)} (found columns: {', '.join(map(str, frame.columns))})"
        )
    if adjusted and "adj close" not in found:
        raise DataError(f"{name}: adjusted=True needs an 'Adj Close' column (found columns: {', '.join(map(str, frame.columns))})")
    return found


def _time_column(frame: pd.DataFrame, by_name: dict[str, str]) -> pd.Series | None:
    """The bar time: a timestamp-like column, else ``date`` joined with a separate ``time`` column."""
    for alias in _TIME_ALIASES:
        if alias in by_name:
            return frame[by_name[alias]]
    if "date" in by_name and "time" in by_name:
        return frame[by_name["date"]].astype("str") + " " + frame[by_name["time"]].astype("str")
    for alias in ("date", "time"):
        if alias in by_name:
            return frame[by_name[alias]]
    return None


def _numeric(raw: pd.Series) -> np.ndarray:
    """Float column; empty, non-numeric and infinite cells become NaN."""
    values = raw if is_numeric_dtype(raw.dtype) else pd.to_numeric(raw, errors="coerce")
    out = values.to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isfinite(out), out, np.nan)


def _parse_times(raw: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(epoch ms int64, parsed mask). Numbers are epochs or YYYYMMDD; text is tried as ISO 8601,
    then as numbers, then as each of ``_DATE_FORMATS``, vectorised, on the rows still unparsed."""
    ms, ok = np.zeros(len(raw), np.int64), np.zeros(len(raw), bool)
    rows = np.flatnonzero(raw.notna().to_numpy())
    if is_numeric_dtype(raw.dtype):
        _parse_numbers(raw.iloc[rows], rows, ms, ok)
        return ms, ok
    text, rows = _parse_text(raw.iloc[rows], rows, "ISO8601", ms, ok)
    text, rows = _parse_numbers(text.astype("str").str.strip(), rows, ms, ok)
    for fmt in ("ISO8601", *_DATE_FORMATS):
        text, rows = _parse_text(text, rows, fmt, ms, ok)
    return ms, ok


def _parse_text(text: pd.Series, rows: np.ndarray, fmt: str, ms: np.ndarray, ok: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    """Parse the cells ``text`` of data rows ``rows`` with ``fmt`` into ``ms``/``ok``; return those left."""
    parsed = pd.to_datetime(text, format=fmt, utc=True, errors="coerce")
    got = parsed.notna().to_numpy()
    ms[rows[got]] = ((parsed[got] - _EPOCH) // _MS).to_numpy(np.int64)
    ok[rows[got]] = True
    return text[~got], rows[~got]


def _parse_numbers(cells: pd.Series, rows: np.ndarray, ms: np.ndarray, ok: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    """Like ``_parse_text`` for cells holding epoch numbers (or YYYYMMDD)."""
    numbers = _numeric(cells)
    got = ~np.isnan(numbers)
    ms[rows[got]] = _numbers_to_ms(numbers[got])
    ok[rows[got]] = True
    return cells[~got], rows[~got]


def _numbers_to_ms(values: np.ndarray) -> np.ndarray:
    """Epoch numbers to ms, each by magnitude: < 1e11 seconds, < 1e14 ms, < 1e17 us, else ns.
    A column made only of integers 19000101..21001231 is read as YYYYMMDD dates instead."""
    if len(values) and np.all((values >= 19000101) & (values <= 21001231) & (values == np.floor(values))):
        dates = pd.to_datetime(values.astype(np.int64).astype(str), format="%Y%m%d", utc=True, errors="coerce")
        if dates.notna().all():
            return ((dates - _EPOCH) // _MS).to_numpy(np.int64)
    scale = np.select([values < 1e11, values < 1e14, values < 1e17], [1e3, 1.0, 1e-3], 1e-6)
    return np.round(values * scale).astype(np.int64)


def _value_checks(columns: dict[str, pd.Series], values: dict[str, np.ndarray]) -> list[_Check]:
    """Per-row price/volume checks in the order problems are reported: missing numbers, signs, ranges."""
    checks = []
    numeric_fields = [f for f in (*_PRICES, "adj close", "volume") if f in columns]
    for field in numeric_fields:
        checks.append(_Check(np.isnan(values[field]), lambda i, f=field: _bad_number(f, columns[f].iloc[i])))
    for field in (f for f in numeric_fields if f != "volume"):
        checks.append(_Check(values[field] <= 0, lambda i, f=field: f"{f} {float(values[f][i])!r} is not positive"))
    o, h, lo, c, v = (values[f] for f in ("open", "high", "low", "close", "volume"))
    checks += [
        _Check(h < lo, lambda i: f"high {float(h[i])!r} is below low {float(lo[i])!r}"),
        _Check((o < lo) | (o > h), lambda i: f"open {float(o[i])!r} is outside [low {float(lo[i])!r}, high {float(h[i])!r}]"),
        _Check((c < lo) | (c > h), lambda i: f"close {float(c[i])!r} is outside [low {float(lo[i])!r}, high {float(h[i])!r}]"),
        _Check(v < 0, lambda i: f"volume {float(v[i])!r} is negative"),
    ]
    return checks


def _bad_time(raw: object) -> str:
    """Why a time cell was not understood, with the formats that would have been."""
    if pd.isna(raw) or not str(raw).strip():
        return "time is empty"
    return f"cannot parse time {str(raw).strip()!r} (expected epoch seconds or ms, ISO 8601 such as 2021-01-31T08:00, or M/D/YYYY)"


def _bad_number(field: str, raw: object) -> str:
    """Why a numeric cell is unusable: empty/NaN, or the text that is not a finite number."""
    if pd.isna(raw) or not str(raw).strip():
        return f"{field} is empty"
    return f"{field} {str(raw).strip()!r} is not a number"


def _is_descending(ms: np.ndarray, valid: np.ndarray) -> bool:
    """Newest-first file: its first valid time is later than its last one."""
    rows = np.flatnonzero(valid)
    return len(rows) > 1 and ms[rows[0]] > ms[rows[-1]]


def _order_checks(ms: np.ndarray, valid: np.ndarray, descending: bool, index: np.ndarray) -> list[_Check]:
    """Duplicate and out-of-order rows among the rows that passed the value checks.

    In file order, a row must be strictly after (newest-first file: before) every earlier row; so the
    rows kept are exactly those that move the running extreme, the first of duplicates included.
    """
    rows = np.flatnonzero(valid)
    key = -ms[rows] if descending else ms[rows]
    previous = np.empty_like(key)
    if len(key):
        previous[0] = np.iinfo(np.int64).min
        previous[1:] = np.maximum.accumulate(key)[:-1]
    late = key <= previous
    repeated = pd.Series(key).duplicated().to_numpy()
    duplicate, shuffled = np.zeros(len(ms), bool), np.zeros(len(ms), bool)
    duplicate[rows[repeated]] = True
    shuffled[rows[late & ~repeated]] = True

    def describe_duplicate(i: int) -> str:
        p = int(np.searchsorted(rows, i))
        first = rows[int(np.flatnonzero(key[:p] == key[p])[0])]
        return f"duplicate timestamp {iso(int(ms[i]))} (same as line {int(index[first]) + 2})"

    def describe_shuffled(i: int) -> str:
        p = int(np.searchsorted(rows, i))
        before = rows[int(np.argmax(key[:p]))]
        direction = "newest-first, so it must be before" if descending else "oldest-first, so it must be after"
        return (f"out-of-order timestamp {iso(int(ms[i]))}: the file is {direction} "
                f"{iso(int(ms[before]))} on line {int(index[before]) + 2}")

    return [_Check(duplicate, describe_duplicate), _Check(shuffled, describe_shuffled)]


def _failing(checks: list[_Check]) -> np.ndarray:
    """Rows that fail any of ``checks``."""
    return np.logical_or.reduce([c.mask for c in checks])


def _prices(values: dict[str, np.ndarray], order: np.ndarray, adjusted: bool) -> tuple[np.ndarray, ...]:
    """open, high, low, close, volume of the kept rows in time order, split/dividend-adjusted if asked.

    The close is scaled like the others (``close * adj / close``, equal to the adjusted close up to
    rounding) so that a bar whose close equals its high still does after adjusting.
    """
    o, h, lo, c, v = (values[f][order] for f in (*_PRICES, "volume"))
    if adjusted:
        factor = values["adj close"][order] / c
        o, h, lo, c = o * factor, h * factor, lo * factor, c * factor
    return o, h, lo, c, v


def _describe(name: str, checks: list[_Check], bad: np.ndarray, index: np.ndarray, limit: int) -> list[str]:
    """``"file: line N: problem"`` for the first ``limit`` bad rows, each by its first failing check."""
    messages = []
    for i in np.flatnonzero(bad)[:limit]:
        check = next(c for c in checks if c.mask[i])
        messages.append(f"{name}: line {int(index[i]) + 2}: {check.describe(int(i))}")
    return messages


def _infer_timeframe(name: str, ts: np.ndarray) -> int:
    """The most common gap between consecutive open times (the smallest one on a tie)."""
    if len(ts) < 2:
        raise DataError(f"{name}: cannot infer the timeframe from {len(ts)} bar; pass timeframe_ms")
    gaps, counts = np.unique(np.diff(ts), return_counts=True)
    return int(gaps[int(np.argmax(counts))])

