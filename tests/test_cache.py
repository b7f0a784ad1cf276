"""The market-data cache: ranges, cache hits, partial-range fills, atomic writes, corrupt-file recovery,
validation of fetched rows and failing fast when the source is unreachable."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.errors import DataError, TemporaryError
from engine.feeds import cache as cache_module
from engine.feeds.cache import CacheKey, MarketCache, merge_ranges, missing_ranges
from engine.feeds.market_data import MissingDataError, ensure_bars
from engine.feeds.retry import SourceUnreachable
from engine.timeutil import MS_PER_HOUR, parse_instant

H = MS_PER_HOUR
T0 = parse_instant("2024-01-01")
NOW = parse_instant("2030-01-01")


def bar_row(ts: int) -> dict:
    price = 100 + (ts - T0) / H
    return {"timestamp": ts, "open": price, "high": price + 1, "low": price - 1, "close": price + 0.5, "volume": 10.0}


class MemorySource:
    """A source serving generated hourly bars, ``page`` bars per window, with scripted trouble."""

    name, calendar, host = "mem", "24/7", "example.invalid"

    def __init__(self, page: int = 24, *, missing: set[int] = frozenset(), unreachable_after: int | None = None,
                 extra_rows: dict[int, list[dict]] | None = None) -> None:
        self.page = page
        self.missing = set(missing)
        self.unreachable_after = unreachable_after
        self.extra_rows = extra_rows or {}
        self.log: list[tuple[int, int]] = []

    def windows(self, symbol, timeframe_ms, start, end):
        step = self.page * timeframe_ms
        return [(a, min(a + step, end)) for a in range(start, end, step)]

    def fetch_bars(self, symbol, timeframe_ms, start, end):
        if self.unreachable_after is not None and len(self.log) >= self.unreachable_after:
            raise SourceUnreachable("cannot reach example.invalid: connection refused")
        self.log.append((start, end))
        rows = [bar_row(ts) for ts in range(start, end, timeframe_ms) if ts not in self.missing]
        rows += self.extra_rows.get(start, [])
        return pd.DataFrame(rows, columns=["timestamp", "open", "high", "low", "close", "volume"])


def fetch(cache, source, start, end, symbol="BTC/USDT"):
    return ensure_bars(cache, "mem", symbol, H, start, end, source=source, now_ms=NOW)


def never():
    raise AssertionError("the source must not be needed: the cache answers")


# ---------------------------------------------------------------- ranges

@pytest.mark.parametrize(("ranges", "merged"), [
    ([], ()),
    ([(5, 10), (0, 5)], ((0, 10),)),
    ([(0, 3), (5, 8), (2, 4)], ((0, 4), (5, 8))),
    ([(3, 3), (1, 2)], ((1, 2),)),
])
def test_merge_ranges(ranges, merged):
    assert merge_ranges(ranges) == merged


@pytest.mark.parametrize(("covered", "start", "end", "missing"), [
    ([], 0, 10, [(0, 10)]),
    ([(0, 10)], 2, 8, []),
    ([(2, 4)], 0, 10, [(0, 2), (4, 10)]),
    ([(0, 3), (5, 7)], 1, 9, [(3, 5), (7, 9)]),
    ([(10, 20)], 0, 5, [(0, 5)]),
    ([(0, 5)], 5, 9, [(5, 9)]),
])
def test_missing_ranges(covered, start, end, missing):
    assert missing_ranges(covered, start, end) == missing


# ---------------------------------------------------------------- hits and partial fills

def test_second_fetch_is_a_cache_hit_without_the_source(tmp_path):
    cache = MarketCache(tmp_path)
    source = MemorySource()
    first, report = fetch(cache, source, T0, T0 + 48 * H)
    assert len(first) == 48 and report.fetched == [(T0, T0 + 48 * H)] and report.new_rows == 48
    again, report = ensure_bars(cache, "mem", "BTC/USDT", H, T0 + 5 * H, T0 + 30 * H, make=never, now_ms=NOW)
    assert report.fetched == [] and len(again) == 25 and again.ts_open[0] == T0 + 5 * H
    assert np.array_equal(again.close, first.close[5:30])


def test_only_missing_ranges_are_fetched(tmp_path):
    cache = MarketCache(tmp_path)
    fetch(cache, MemorySource(), T0 + 24 * H, T0 + 48 * H)
    source = MemorySource()
    series, report = fetch(cache, source, T0, T0 + 72 * H)
    assert source.log == [(T0, T0 + 24 * H), (T0 + 48 * H, T0 + 72 * H)]
    assert report.fetched == [(T0, T0 + 24 * H), (T0 + 48 * H, T0 + 72 * H)]
    assert len(series) == 72 and np.all(np.diff(series.ts_open) == H)
    table = cache.read(CacheKey("mem", "BTC/USDT", "bars", "1h"))
    assert table.covered == ((T0, T0 + 72 * H),)


def test_a_range_with_no_bars_is_remembered_and_not_asked_again(tmp_path):
    cache = MarketCache(tmp_path)
    downtime = {T0 + h * H for h in range(24, 48)}
    series, report = fetch(cache, MemorySource(missing=downtime), T0, T0 + 72 * H)
    assert len(series) == 48 and report.quality.missing_bars == 24 and len(report.quality.gaps) == 1
    _, report = ensure_bars(cache, "mem", "BTC/USDT", H, T0, T0 + 72 * H, make=never, now_ms=NOW)
    assert report.fetched == []


def test_start_is_aligned_to_bar_opens_and_a_future_end_stops_at_the_last_complete_bar(tmp_path):
    cache = MarketCache(tmp_path)
    now = T0 + 10 * H + 17 * 60_000  # 10:17: the 10:00 bar is still forming
    series, report = ensure_bars(cache, "mem", "X", H, T0 + 30 * 60_000, T0 + 100 * H, source=MemorySource(),
                                 now_ms=now)
    assert series.ts_open[0] == T0 and series.ts_open[-1] == T0 + 9 * H and report.end == T0 + 10 * H
    with pytest.raises(DataError, match="no complete 1h bar"):
        ensure_bars(cache, "mem", "X", H, now, now + 5 * H, source=MemorySource(), now_ms=now)


def test_meta_records_the_conventions_and_the_data_file_is_a_plain_bar_csv(tmp_path):
    from engine.feeds.bar_files import load_bars

    cache = MarketCache(tmp_path)
    fetch(cache, MemorySource(), T0, T0 + 10 * H, symbol="BTC/USDT:USDT")
    folder = CacheKey("mem", "BTC/USDT:USDT", "bars", "1h").folder(tmp_path)
    assert folder.relative_to(tmp_path).as_posix().startswith("mem/BTC-USDT~USDT@")  # readable, and one per symbol
    meta = json.loads((folder / "meta.json").read_text())
    assert (meta["symbol"], meta["bar_time"], meta["time"], meta["rows"]) == ("BTC/USDT:USDT", "open",
                                                                               "UTC epoch milliseconds", 10)
    assert meta["covered"] == [[T0, T0 + 10 * H]]
    data = folder / meta["file"]
    assert hashlib.sha256(data.read_bytes()).hexdigest() == meta["sha256"]
    assert len(load_bars(data).series) == 10  # any bar tool can read it
    assert sorted(p.name for p in folder.iterdir()) == sorted([".lock", "meta.json", meta["file"]])  # no temp files


# ---------------------------------------------------------------- validation and duplicates

def test_fetched_rows_go_through_the_bar_file_checks(tmp_path):
    cache = MarketCache(tmp_path)
    broken = bar_row(T0 + 3 * H) | {"high": 1.0}  # high below low
    source = MemorySource(missing={T0 + 3 * H}, extra_rows={T0: [broken]})
    series, report = fetch(cache, source, T0, T0 + 6 * H)
    assert len(series) == 5 and T0 + 3 * H not in series.ts_open
    assert len(report.dropped) == 1 and "high 1.0 is below low" in report.dropped[0]


def test_duplicate_and_conflicting_rows_across_pages_are_counted_latest_kept(tmp_path):
    cache = MarketCache(tmp_path)
    same = bar_row(T0 + 1 * H)
    changed = bar_row(T0 + 2 * H) | {"close": 101.75}
    source = MemorySource(page=3, extra_rows={T0 + 3 * H: [same, changed]})
    series, report = fetch(cache, source, T0, T0 + 6 * H)
    assert (report.duplicates, report.conflicts) == (1, 1)
    assert len(series) == 6 and series.close[2] == 101.75
    assert report.quality.duplicates == 1 and "1 duplicate bars removed, 1 conflicting" in report.quality.summary()


# ---------------------------------------------------------------- offline / unreachable

def test_unreachable_source_fails_at_once_keeping_what_arrived(tmp_path):
    cache = MarketCache(tmp_path)
    source = MemorySource(page=24, unreachable_after=2)
    with pytest.raises(MissingDataError) as info:
        fetch(cache, source, T0, T0 + 96 * H)
    message = str(info.value)
    assert "cannot reach example.invalid" in message
    assert "lacks the mem BTC/USDT 1h bars for 2024-01-03T00:00:00Z -> 2024-01-05T00:00:00Z" in message
    assert "python -m engine data fetch --source mem --symbol 'BTC/USDT' --timeframe 1h --start 2024-01-03 --end 2024-01-05" in message
    assert "--data PATH.csv" in message
    table = cache.read(CacheKey("mem", "BTC/USDT", "bars", "1h"))
    assert table.covered == ((T0, T0 + 48 * H),) and len(table.frame) == 48
    resumed = MemorySource()
    fetch(cache, resumed, T0, T0 + 96 * H)
    assert resumed.log == [(T0 + 48 * H, T0 + 72 * H), (T0 + 72 * H, T0 + 96 * H)]


def test_cold_cache_message_says_it_has_none(tmp_path):
    with pytest.raises(MissingDataError, match=r"\(it has none of it\)"):
        fetch(MarketCache(tmp_path), MemorySource(unreachable_after=0), T0, T0 + 5 * H)
    assert not (tmp_path / "mem").exists()


def test_other_failures_keep_the_windows_already_fetched(tmp_path):
    cache = MarketCache(tmp_path)

    class Flaky(MemorySource):
        def fetch_bars(self, symbol, timeframe_ms, start, end):
            if len(self.log) == 1:
                raise TemporaryError("Bybit: kept failing")
            return super().fetch_bars(symbol, timeframe_ms, start, end)

    with pytest.raises(TemporaryError):
        fetch(cache, Flaky(), T0, T0 + 48 * H)
    assert cache.read(CacheKey("mem", "BTC/USDT", "bars", "1h")).covered == ((T0, T0 + 24 * H),)


# ---------------------------------------------------------------- atomic writes and corruption

def key_and_folder(tmp_path):
    key = CacheKey("mem", "BTC/USDT", "bars", "1h")
    return key, key.folder(tmp_path)


def test_a_crash_before_the_meta_rename_leaves_the_previous_state(tmp_path, monkeypatch):
    cache = MarketCache(tmp_path)
    fetch(cache, MemorySource(), T0, T0 + 24 * H)
    real = cache_module.atomic_write

    def crash_on_meta(path, blob):
        if path.name == "meta.json":
            raise KeyboardInterrupt  # the run is killed between the two renames
        real(path, blob)

    monkeypatch.setattr(cache_module, "atomic_write", crash_on_meta)
    with pytest.raises(KeyboardInterrupt):
        fetch(cache, MemorySource(), T0, T0 + 48 * H)
    monkeypatch.undo()
    table = cache.read(CacheKey("mem", "BTC/USDT", "bars", "1h"))
    assert table.covered == ((T0, T0 + 24 * H),) and len(table.frame) == 24 and not cache.notes
    fetch(cache, MemorySource(), T0, T0 + 48 * H)  # the next write cleans the orphaned data file
    _, folder = key_and_folder(tmp_path)
    assert len(list(folder.glob("data-*"))) == 1


def test_atomic_write_never_leaves_a_partial_target(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    target.write_bytes(b"old")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        cache_module.atomic_write(target, b"new contents")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.json"]


def corrupt_data(folder: Path) -> None:
    (data,) = folder.glob("data-*.csv.gz")
    data.write_bytes(data.read_bytes()[:40])


def corrupt_meta(folder: Path) -> None:
    (folder / "meta.json").write_text('{"format": 1, "cover')


def delete_data(folder: Path) -> None:
    (data,) = folder.glob("data-*.csv.gz")
    data.unlink()


def impossible_prices_with_a_matching_checksum(folder: Path) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    lines = gzip.decompress((folder / meta["file"]).read_bytes()).decode().splitlines()
    cells = lines[1].split(",")
    cells[2] = "0.5"  # the first bar's high, now below its low
    lines[1] = ",".join(cells)
    blob = gzip.compress(("\n".join(lines) + "\n").encode())
    (folder / meta["file"]).write_bytes(blob)
    meta["sha256"] = hashlib.sha256(blob).hexdigest()
    (folder / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage", [corrupt_data, corrupt_meta, delete_data, impossible_prices_with_a_matching_checksum])
def test_a_corrupt_cache_is_reported_removed_and_refetched(tmp_path, damage):
    cache = MarketCache(tmp_path)
    fetch(cache, MemorySource(), T0, T0 + 24 * H)
    key, folder = key_and_folder(tmp_path)
    damage(folder)
    source = MemorySource()
    series, report = fetch(cache, source, T0, T0 + 24 * H)
    assert len(series) == 24 and source.log == [(T0, T0 + 24 * H)]
    assert any("were unreadable" in note and "fetched again" in note for note in report.notes)
    assert cache.read(key) is not None and not cache.notes


def test_corrupt_json_document_is_removed(tmp_path):
    cache = MarketCache(tmp_path)
    cache.write_json("bybit/instruments.json", {"markets": {}})
    (tmp_path / "bybit" / "instruments.json").write_text("{not json")
    assert cache.read_json("bybit/instruments.json") is None
    assert "unreadable" in cache.notes[-1] and not (tmp_path / "bybit" / "instruments.json").exists()


def test_tables_lists_good_and_broken_entries(tmp_path):
    cache = MarketCache(tmp_path)
    fetch(cache, MemorySource(), T0, T0 + 5 * H, symbol="A/USDT")
    fetch(cache, MemorySource(), T0, T0 + 5 * H, symbol="B/USDT")
    corrupt_data(CacheKey("mem", "B/USDT", "bars", "1h").folder(tmp_path))
    items = list(cache.tables())
    good = [i for i in items if not isinstance(i, tuple)]
    bad = [i for i in items if isinstance(i, tuple)]
    assert [t.key.symbol for t in good] == ["A/USDT"] and len(bad) == 1 and "unreadable" in bad[0][1]


def test_concurrent_writers_and_readers_never_see_a_broken_table(tmp_path):
    import threading

    key = CacheKey("mem", "BTC/USDT", "bars", "1h")
    frames = [pd.DataFrame([bar_row(T0 + h * H) for h in range(n)]) for n in range(5, 13)]
    errors: list[str] = []

    def writer(frame):
        for _ in range(5):
            MarketCache(tmp_path).write(key, frame, [(T0, T0 + len(frame) * H)])

    def reader():
        for _ in range(20):
            cache = MarketCache(tmp_path)
            cache.read(key)
            errors.extend(cache.notes)

    threads = [threading.Thread(target=writer, args=(f,)) for f in frames] + [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    table = MarketCache(tmp_path).read(key)
    assert errors == [] and table is not None and len(table.frame) == table.covered[0][1] // H - T0 // H
    assert len(list(key.folder(tmp_path).glob("data-*"))) == 1


# ---------------------------------------------------------------- one folder per symbol (issue 16)

def test_two_symbols_with_the_same_slug_keep_their_own_data(tmp_path):
    cache = MarketCache(tmp_path)
    fetch(cache, MemorySource(), T0, T0 + 24 * H, symbol="BTC/USDT")
    fetch(cache, MemorySource(), T0, T0 + 24 * H, symbol="BTC-USDT")  # the same readable name
    assert CacheKey("mem", "BTC/USDT", "bars", "1h").folder(tmp_path) != CacheKey("mem", "BTC-USDT", "bars",
                                                                                   "1h").folder(tmp_path)
    for symbol in ("BTC/USDT", "BTC-USDT"):  # both still cached: no source needed
        bars, report = ensure_bars(cache, "mem", symbol, H, T0, T0 + 24 * H, make=never, now_ms=NOW)
        assert len(bars) == 24 and report.fetched == [] and bars.symbol == symbol
    assert not any("unreadable" in note for note in cache.notes)


def test_an_entry_whose_meta_names_another_symbol_is_never_deleted(tmp_path):
    cache = MarketCache(tmp_path)
    fetch(cache, MemorySource(), T0, T0 + 24 * H, symbol="ETH/USDT")
    mine = CacheKey("mem", "ETH/USDT", "bars", "1h").folder(tmp_path)
    other = CacheKey("mem", "XRP/USDT", "bars", "1h")
    other.folder(tmp_path).parent.mkdir(parents=True)
    mine.rename(other.folder(tmp_path))  # as a name collision would leave it
    before = sorted(p.name for p in other.folder(tmp_path).iterdir())
    assert cache.read(other) is None
    assert sorted(p.name for p in other.folder(tmp_path).iterdir()) == before  # kept for its owner
    assert "ETH/USDT" in cache.notes[-1] and "left" in cache.notes[-1]
    with pytest.raises(DataError, match="holds ETH/USDT"):
        cache.write(other, pd.DataFrame([bar_row(T0)]), [(T0, T0 + H)])
    assert sorted(p.name for p in other.folder(tmp_path).iterdir()) == before


def test_a_cache_folder_of_the_old_layout_is_migrated_when_its_symbol_is_read(tmp_path):
    cache = MarketCache(tmp_path)
    fetch(cache, MemorySource(), T0, T0 + 24 * H, symbol="BTC/USDT")
    key = CacheKey("mem", "BTC/USDT", "bars", "1h")
    legacy = tmp_path / "mem" / "BTC-USDT" / "bars-1h"  # where the engine kept it before
    legacy.parent.mkdir(parents=True, exist_ok=True)
    key.folder(tmp_path).rename(legacy)
    # the other symbol of the same slug must neither take nor delete it
    assert cache.read(CacheKey("mem", "BTC-USDT", "bars", "1h")) is None
    assert (legacy / "meta.json").exists()
    bars, report = ensure_bars(cache, "mem", "BTC/USDT", H, T0, T0 + 24 * H, make=never, now_ms=NOW)
    assert len(bars) == 24 and report.fetched == []
    assert (key.folder(tmp_path) / "meta.json").exists() and not legacy.exists()
