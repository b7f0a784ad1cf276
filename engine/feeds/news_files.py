"""Load dated headline files (news sites, Google News exports, tweets) into ``News`` values.

Headline files carry their publish time in many forms: ISO with an offset, naive local times, CNBC's
``" 7:51  PM ET Fri, 17 July 2020"``, Guardian's ``17-Jul-20`` and month-only ``Jul-20``, dates such as
``Jun 6, 2017``, epoch seconds or milliseconds. CSV files (maybe ``.gz``, ``.bz2``, ``.xz``, ``.zip``)
and JSON lines files (one object per line, ``.jsonl`` / ``.ndjson``, optionally gzipped) are read; a
damaged compressed file or a binary one is a ``DataError`` naming the file (``bar_files.read_text``).
A headline must never be visible before it existed, so a value without a time of day is stamped at
the last millisecond of its day (or month) in the file's time zone. Parsing is
vectorised with pandas, one known format at a time; only the rows no format fits go through dateutil.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
from dateutil import parser as dateutil_parser

from engine.domain.values import News
from engine.errors import DataError
from engine.feeds.bar_files import file_stem, normalise_name, read_text, sniff_delimiter
from engine.timeutil import to_ms

_HEADLINE_ALIASES = ("title", "headline", "headlines", "text", "tweet")
_TIME_ALIASES = ("published", "published date", "published at", "date", "time", "datetime", "created at", "timestamp")
_SYMBOL_ALIASES = ("ticker", "symbol")
_EASTERN = ZoneInfo("America/New_York")  # what "ET" / "EST" / "EDT" in a time string means
# Naive formats tried in order, each with its granularity: "exact" (has a time of day), "day", "month".
_FORMATS = (
    ("%Y-%m-%d", "day"),  # Google News exports, Reuters
    ("%Y-%m-%dT%H:%M:%S", "exact"),
    ("%Y-%m-%d %H:%M:%S", "exact"),
    ("%Y-%m-%d %H:%M", "exact"),
    ("%d-%b-%y", "day"),  # Guardian: 17-Jul-20
    ("%b-%y", "month"),  # Guardian: Jul-20
    ("%b %d, %Y", "day"),  # cryptocurrencynews.com: Jun 6, 2017
    ("%B %d, %Y", "day"),
    ("%b %d %Y", "day"),  # Reuters original: Jul 18 2020
    ("%I:%M %p %a, %d %B %Y", "exact"),  # CNBC, once "ET" is taken out
    ("%I:%M %p %a, %d %b %Y", "exact"),
    ("%m/%d/%Y", "day"),
    ("%m/%d/%Y %H:%M", "exact"),
    ("%m/%d/%Y %H:%M:%S", "exact"),
)
_WITH_OFFSET = r"^\d{4}-\d{2}-\d{2}[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:Z|[+-]\d{2}:?\d{2})$"
# Two dateutil defaults that differ in every field: a field that comes out different was not in the text.
_DEFAULT_A = datetime(2000, 1, 1)
_DEFAULT_B = datetime(2001, 2, 28, 1, 1, 1, 1)
_EPOCH = pd.Timestamp(0, tz="UTC")
_MS = pd.Timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class LoadedNews:
    """The headlines of one file and what was left out of it."""

    items: tuple[News, ...]  # sorted by ts_event, then headline
    duplicates_removed: int
    empty_rows_skipped: int


def load_news(path: str | Path, *, symbol: str | None = None, tz: str = "UTC") -> LoadedNews:
    """Read a headline file (``.csv``, ``.jsonl`` / ``.ndjson``, each maybe ``.gz``) into ``News`` sorted
    by time, then headline. In a JSON lines file each line is one object whose keys act as the columns.

    The headline column may be called title, headline(s), text or tweet; the time column published,
    published date / published_at, date, time, datetime, created_at or timestamp (any case, any order).
    Times with an offset or ``Z`` are used as they are; naive times are local to ``tz`` ("ET" in the
    text means America/New_York). A date without a time of day is stamped at the last millisecond of
    that day in ``tz``; a month without a day at the last millisecond of the month.

    With a ``ticker``/``symbol`` column each headline takes its row's symbol, and ``symbol`` keeps
    only that symbol's rows; without one every headline gets ``symbol``. Rows with an empty headline
    (among those kept) are skipped and exact duplicates of (time, headline, symbol) removed; both are counted. A time
    that cannot be parsed raises ``DataError`` naming the file, line and value.
    """
    path = Path(path)
    zone = _zone(tz, path.name)
    frame = _read_frame(path)
    headline_col, time_col, symbol_col = _columns(frame, path.name)
    frame, symbols = _symbols(frame, symbol_col, symbol, path.name)
    headlines = frame[headline_col].str.replace(r"\s+", " ", regex=True).str.strip()
    filled = (headlines != "").to_numpy()
    cells = pd.DataFrame({"time": frame[time_col], "headline": headlines, "symbol": symbols})[filled]
    distinct = cells[~cells.duplicated()]  # exact copies go before the (slow) time parsing
    ts = _parse_times(distinct["time"], zone, path, time_col)
    table = pd.DataFrame({"ts": ts, "headline": distinct["headline"].to_numpy(), "symbol": distinct["symbol"].to_numpy()})
    unique = table.drop_duplicates().sort_values(["ts", "headline"], kind="stable")
    source = file_stem(path)
    items = tuple(
        News(ts_event=int(t), headline=h, symbol=s or None, source=source)
        for t, h, s in zip(unique["ts"].to_numpy(), unique["headline"], unique["symbol"])
    )
    return LoadedNews(items=items, duplicates_removed=len(cells) - len(unique), empty_rows_skipped=int((~filled).sum()))


def _zone(tz: str, name: str) -> ZoneInfo:
    """The IANA zone ``tz``; a wrong name fails before any row is read."""
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise DataError(f"{name}: unknown time zone {tz!r}: use an IANA name such as 'UTC' or 'America/New_York'") from exc


def _read_frame(path: Path) -> pd.DataFrame:
    """Every cell as text ("" for empty), so headlines such as "NA" stay what they are."""
    if _is_json_lines(path):
        return _read_json_lines(path)
    data = read_text(path)
    try:
        frame = pd.read_csv(
            io.BytesIO(data), sep=sniff_delimiter(data), dtype=str, keep_default_na=False, encoding="utf-8-sig", index_col=False,
        )
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path.name}: file is empty") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path.name}: cannot read as CSV: {exc}") from exc
    return frame.reset_index(drop=True)


def _columns(frame: pd.DataFrame, name: str) -> tuple[str, str, str | None]:
    """The headline, time and (optional) symbol columns, by the first alias found."""
    by_name: dict[str, str] = {}
    for column in frame.columns:
        by_name.setdefault(normalise_name(column), column)
    headline = next((by_name[a] for a in _HEADLINE_ALIASES if a in by_name), None)
    time = next((by_name[a] for a in _TIME_ALIASES if a in by_name), None)
    missing = [label for label, col in (("headline", headline), ("time", time)) if col is None]
    if missing:
        raise DataError(
            f"{name}: missing required columns: {', '.join(missing)} (found columns: {', '.join(map(str, frame.columns))};"
            f" headline aliases: {', '.join(_HEADLINE_ALIASES)}; time aliases: {', '.join(_TIME_ALIASES)})"
        )
    return headline, time, next((by_name[a] for a in _SYMBOL_ALIASES if a in by_name), None)


def _symbols(frame: pd.DataFrame, column: str | None, symbol: str | None, name: str) -> tuple[pd.DataFrame, pd.Series]:
    """The rows to keep and each one's symbol ("" for None): the ticker column filtered to ``symbol``
    (case-insensitive; no row at all is an error listing what the file has), else ``symbol`` for all."""
    if column is None:
        return frame, pd.Series(symbol or "", index=frame.index, dtype=str)
    symbols = frame[column].str.strip()
    if symbol is None:
        return frame, symbols
    keep = (symbols.str.upper() == symbol.strip().upper()).to_numpy()
    if not keep.any():
        have = ", ".join(sorted(symbols[symbols != ""].str.upper().unique())[:20])
        raise DataError(f"{name}: no rows for symbol {symbol!r} (symbols in the file: {have or 'none'})")
    return frame[keep], symbols[keep]


def _parse_times(raw: pd.Series, zone: ZoneInfo, path: Path, column: str) -> np.ndarray:
    """Epoch ms for each cell of ``raw`` (index = 0-based data row); a cell nothing parses is an error."""
    text = (
        raw.str.replace(r"\s+", " ", regex=True).str.strip()
        .str.replace(r"\bSept\b", "Sep", regex=True)  # CNBC abbreviates September as "Sept"
    )
    eastern = text.str.contains(r"\s(?:ET|EST|EDT)\b", regex=True).to_numpy()
    text = text.str.replace(r"\s(?:ET|EST|EDT)\b", "", regex=True)
    ms, ok = np.zeros(len(text), np.int64), np.zeros(len(text), bool)
    aware = text.str.match(_WITH_OFFSET).to_numpy()
    parsed = pd.to_datetime(text[aware], format="ISO8601", utc=True, errors="coerce")
    _store(ms, ok, np.flatnonzero(aware), (parsed - _EPOCH) // _MS)
    epoch = np.flatnonzero(~ok & text.str.fullmatch(r"\d{9,19}(?:\.\d+)?").to_numpy())
    _store(ms, ok, epoch, _epoch_ms(text.iloc[epoch]))
    for fmt, granularity in _FORMATS:
        rows = np.flatnonzero(~ok & (text != "").to_numpy())
        if not len(rows):
            break
        naive = pd.to_datetime(text.iloc[rows], format=fmt, errors="coerce")
        for in_eastern, local_zone in ((False, zone), (True, _EASTERN)):
            pick = (eastern[rows] == in_eastern) & naive.notna().to_numpy()
            _store(ms, ok, rows[pick], _local_ms(naive[pick], granularity, local_zone))
    for row in np.flatnonzero(~ok):
        ms[row] = _dateutil_ms(text.iloc[row], _EASTERN if eastern[row] else zone, path, raw, row, column)
    return ms


def _store(ms: np.ndarray, ok: np.ndarray, rows: np.ndarray, values: pd.Series) -> None:
    """Write parsed epoch ms (NaN where not parsed) into ``ms`` and mark them in ``ok``."""
    got = values.notna().to_numpy()
    ms[rows[got]] = values[got].to_numpy(np.int64)
    ok[rows[got]] = True


def _local_ms(naive: pd.Series, granularity: str, zone: ZoneInfo) -> pd.Series:
    """Naive local datetimes to epoch ms; "day"/"month" values become the last ms of the day/month.

    A wall time that happens twice (DST ends) is read as the later instant, and one that never
    happens (DST starts) is moved forward: both err towards seeing the headline late, never early.
    """
    if granularity == "day":
        naive = naive.dt.normalize() + pd.Timedelta(days=1)
    elif granularity == "month":
        naive = (naive.dt.to_period("M") + 1).dt.to_timestamp()
    local = naive.dt.tz_localize(zone, ambiguous=np.zeros(len(naive), bool), nonexistent="shift_forward")
    return (local - _EPOCH) // _MS - (0 if granularity == "exact" else 1)


def _dateutil_ms(text: str, zone: ZoneInfo, path: Path, raw: pd.Series, row: int, column: str) -> int:
    """dateutil for a cell no known format fits. Parsing with two different defaults tells which
    fields the text has: no time of day means end of day, no day means end of month."""
    try:
        a = dateutil_parser.parse(text, default=_DEFAULT_A)
        b = dateutil_parser.parse(text, default=_DEFAULT_B)
    except (ValueError, OverflowError):
        a = b = None
    if a is None or b is None or (a.year, a.month) != (b.year, b.month):
        line = _line_of(path, int(raw.index[row]))
        value = raw.iloc[row]
        problem = "time is empty" if not text else f"cannot parse time {value!r} in column {column!r}"
        raise DataError(f"{path.name}: line {line}: {problem}")
    if a.tzinfo is not None:
        return to_ms(a)
    granularity = "month" if a.day != b.day else "day" if a.hour != b.hour else "exact"
    return int(_local_ms(pd.Series([pd.Timestamp(a)]), granularity, zone).iloc[0])


def _line_of(path: Path, row: int) -> int:
    """1-based line of the file where data row ``row`` (0-based) starts; quoted fields may span lines.

    Blank lines are skipped as pandas skips them. Used only to report an error, so speed is no concern.
    """
    if _is_json_lines(path):
        return _json_lines(path)[row][0]
    data = read_text(path)
    with io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="") as handle, _field_limit(len(data)):
        reader = csv.reader(handle, delimiter=sniff_delimiter(data))
        record, end = -1, 0  # the header is record -1
        for fields in reader:
            start, end = end + 1, reader.line_num
            if not fields:
                continue
            if record == row:
                return start
            record += 1
    return row + 2


@contextlib.contextmanager
def _field_limit(size: int) -> Iterator[None]:
    """csv's field size limit (131,072 characters) raised to ``size`` for one read: no field of a file
    is longer than the file, and pandas, which read the file first, has no such limit."""
    before = csv.field_size_limit()
    csv.field_size_limit(max(before, size))
    try:
        yield
    finally:
        csv.field_size_limit(before)


_JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")


def _is_json_lines(path: Path) -> bool:
    return path.name.lower().endswith(_JSON_LINES_SUFFIXES)


def _json_lines(path: Path) -> list[tuple[int, dict]]:
    """(1-based line, object) for every non-blank line of a JSON lines file."""
    records = []
    with io.TextIOWrapper(io.BytesIO(read_text(path)), encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path.name}: line {number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(value, dict):
                raise DataError(f"{path.name}: line {number}: expected one JSON object per line, got {type(value).__name__}")
            records.append((number, value))
    return records


def _read_json_lines(path: Path) -> pd.DataFrame:
    """A JSON lines file as a frame of text cells, one row per object (keys are the columns)."""
    records = _json_lines(path)
    if not records:
        raise DataError(f"{path.name}: file is empty")
    rows = [{str(k): _cell(v) for k, v in value.items()} for _, value in records]
    return pd.DataFrame(rows, dtype=str).fillna("")


def _cell(value: object) -> str:
    """A JSON value as the text a CSV cell would hold; integral numbers without a decimal point."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _epoch_ms(cells: pd.Series) -> pd.Series:
    """Epoch numbers to ms by magnitude: < 1e11 seconds, < 1e14 ms, < 1e17 us, else ns."""
    values = pd.to_numeric(cells, errors="coerce").to_numpy(np.float64)
    scale = np.select([values < 1e11, values < 1e14, values < 1e17], [1e3, 1.0, 1e-3], 1e-6)
    return pd.Series(np.round(values * scale).astype(np.int64))
