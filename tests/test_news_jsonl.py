"""load_news on JSON lines files (.jsonl / .ndjson, gzipped too) and epoch-number publish times."""

from __future__ import annotations

import gzip
import json

import pytest

from engine.errors import DataError
from engine.feeds.news_files import load_news
from engine.timeutil import parse_instant


def write_lines(path, records, blank_after=None):
    lines = [json.dumps(r) if not isinstance(r, str) else r for r in records]
    if blank_after is not None:
        lines.insert(blank_after, "")
    text = "\n".join(lines) + "\n"
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["feed.jsonl", "feed.ndjson", "feed.jsonl.gz"])
def test_json_lines_use_the_same_aliases_dedupe_and_ticker_filter(tmp_path, name):
    path = write_lines(tmp_path / name, [
        {"headline": "Apple up", "published_at": "2024-01-02T15:00:00Z", "ticker": "AAPL", "extra": {"a": 1}},
        {"headline": "Apple up", "published_at": "2024-01-02T15:00:00Z", "ticker": "AAPL"},
        {"headline": "Meta down", "published_at": "2024-01-02T16:00:00Z", "ticker": "META"},
        {"headline": "", "published_at": "2024-01-02T17:00:00Z", "ticker": "AAPL"},
    ], blank_after=2)
    loaded = load_news(path, symbol="AAPL")
    assert [(n.headline, n.ts_event, n.symbol) for n in loaded.items] == [
        ("Apple up", parse_instant("2024-01-02T15:00"), "AAPL")]
    assert (loaded.duplicates_removed, loaded.empty_rows_skipped) == (1, 1)
    assert loaded.items[0].source == "feed"


@pytest.mark.parametrize(("value", "expected"), [
    (1704207600, "2024-01-02T15:00"),  # epoch seconds (a JSON number)
    (1704207600123, "2024-01-02T15:00:00.123"),  # epoch milliseconds
    ("1704207600", "2024-01-02T15:00"),  # as text
    ("2024-01-02", "2024-01-03"),  # a date: the end of that day (minus 1 ms below)
])
def test_epoch_numbers_and_dates(tmp_path, value, expected):
    path = write_lines(tmp_path / "x.jsonl", [{"title": "A", "date": value}])
    (item,) = load_news(path).items
    want = parse_instant(expected) - (1 if value == "2024-01-02" else 0)
    assert item.ts_event == want


def test_epoch_numbers_in_csv_too(tmp_path):
    (tmp_path / "x.csv").write_text("title,timestamp\nA,1704207600000\n")
    assert load_news(tmp_path / "x.csv").items[0].ts_event == parse_instant("2024-01-02T15:00")


def test_bad_json_line_is_named(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", [{"title": "A", "date": "2024-01-01"}, '{"title": "B", "date": '],
                       blank_after=1)
    with pytest.raises(DataError, match=r"x\.jsonl: line 3: not valid JSON"):
        load_news(path)


def test_non_object_line_and_empty_file(tmp_path):
    with pytest.raises(DataError, match=r"line 1: expected one JSON object per line, got list"):
        load_news(write_lines(tmp_path / "x.jsonl", ['["a", "b"]']))
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="file is empty"):
        load_news(tmp_path / "e.jsonl")


def test_unparseable_time_reports_the_json_line(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", [{"title": "A", "date": "2024-01-01"}, {"title": "B", "date": "soon"}],
                       blank_after=1)
    with pytest.raises(DataError, match=r"x\.jsonl: line 3: cannot parse time 'soon'"):
        load_news(path)
