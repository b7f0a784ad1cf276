"""Strange but legal input: names and files crafted (or damaged) to point outside their folders are
refused with a message, never followed."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from engine.cli import main
from engine.feeds.cache import CacheKey, MarketCache
from engine.timeutil import MS_PER_HOUR, parse_instant

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def one_run(tmp_path_factory) -> Path:
    """A store holding one recorded backtest."""
    folder = tmp_path_factory.mktemp("crafted")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        code, _, err = run_cli("backtest", "--json", "--no-progress", "--config", str(ROOT / "config.toml"),
                               "--set", f"store.url=sqlite:///{folder / 'store.db'}", "--set", "logging.file=''",
                               "--set", "sample.bars=300")
    finally:
        os.chdir(cwd)
    assert code == 0, err
    return folder / "store.db"


def crafted_store(one_run: Path, tmp_path: Path, run_id: str) -> Path:
    db = tmp_path / "crafted.db"
    shutil.copy(one_run, db)
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE runs SET run_id = ?", (run_id,))
    con.close()
    return db


@pytest.mark.parametrize("run_id", ["../../escaped", "/tmp/absolute", "a/b", "..", "a\\..\\b", "line\nbreak"])
def test_a_run_id_that_is_a_path_cannot_make_report_write_outside_the_reports_folder(one_run, tmp_path, run_id):
    db = crafted_store(one_run, tmp_path, run_id)
    reports = tmp_path / "deep" / "reports"
    before = set(tmp_path.rglob("*"))
    code, out, err = run_cli("report", "--latest", "--db", str(db), "--set", f"store.reports_dir='{reports}'")
    assert code != 0 and "run id" in err and repr(run_id) in err and "--out" in err, err
    assert set(tmp_path.rglob("*")) <= before  # nothing written anywhere
    assert not Path("/tmp/absolute").exists()
    code, _, err = run_cli("report", "--compare", run_id, run_id, "--db", str(db),
                           "--set", f"store.reports_dir='{reports}'")
    assert code != 0 and "run id" in err, err
    assert set(tmp_path.rglob("*")) <= before
    code, out, err = run_cli("report", "--latest", "--db", str(db), "--out", str(tmp_path / "chosen"))
    assert code == 0 and (tmp_path / "chosen" / "report.html").is_file(), err  # a folder the user names is used


H = MS_PER_HOUR
T0 = parse_instant("2024-01-01")


def bars(n: int) -> pd.DataFrame:
    ts = [T0 + i * H for i in range(n)]
    return pd.DataFrame({"timestamp": ts, "open": 100.0, "high": 101.0, "low": 99.0, "close": 100.5, "volume": 1.0})


@pytest.mark.parametrize("name", ["../../outside.csv.gz", "/abs/outside.csv.gz", "sub/data-0.csv.gz", ".."])
def test_a_cache_meta_file_field_cannot_point_outside_its_folder(tmp_path, name):
    root = tmp_path / "cache"
    cache = MarketCache(root)
    key = CacheKey("mem", "BTC/USDT", "bars", "1h")
    table, _ = cache.write(key, bars(5), [(T0, T0 + 5 * H)])
    folder = key.folder(root)
    meta = json.loads((folder / "meta.json").read_text())
    # a valid data file outside the folder, with the checksum the meta names
    outside = (folder / name) if not name.startswith("/") else Path(name)
    if name not in ("..",) and not name.startswith("/"):
        outside.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(table.path, outside)
    meta["file"] = name
    (folder / "meta.json").write_text(json.dumps(meta))
    assert cache.read(key) is None
    assert "data file" in cache.notes[-1] and repr(name) in cache.notes[-1], cache.notes
    if name not in ("..",) and not name.startswith("/"):
        assert outside.is_file()  # not read, not removed


# -- resource use: each input is bounded, with a message -----------------------------------------
MAX_HEADER_BYTES = 1 << 20  # engine.feeds.bar_files.MAX_HEADER_BYTES


def counting_opener(monkeypatch) -> list[int]:
    """Wrap the bar loader's decompressor so that the test sees how many bytes it produced."""
    from engine.feeds import bar_files

    produced: list[int] = []
    opened = bar_files._open_compressed

    class Counting:
        def __init__(self, handle):
            self.handle = handle

        def read1(self, n=-1):
            chunk = self.handle.read1(n)
            produced.append(len(chunk))
            return chunk

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(bar_files, "_open_compressed", lambda *a: Counting(opened(*a)))
    return produced


@pytest.mark.parametrize("suffix", [".csv.gz", ".csv"])
def test_a_file_whose_first_line_never_ends_is_refused_after_a_bounded_prefix(tmp_path, monkeypatch, suffix):
    from engine.errors import DataError
    from engine.feeds.bar_files import load_bars
    from engine.feeds.news_files import load_news

    produced = counting_opener(monkeypatch)
    body = b"timestamp" + b"x" * (16 * MAX_HEADER_BYTES) + b"\n1,2,3\n"  # a 16 MiB first line
    path = tmp_path / f"bomb{suffix}"
    path.write_bytes(gzip.compress(body) if suffix.endswith(".gz") else body)
    for load in (load_bars, load_news):
        produced.clear()
        with pytest.raises(DataError, match=rf"^bomb{suffix}: line 1 is longer than {MAX_HEADER_BYTES:,} bytes"):
            load(path)
        assert sum(produced) <= 2 * MAX_HEADER_BYTES  # stopped early, not 16 MiB decompressed


def test_duplicate_headline_rows_are_dropped_before_their_times_are_parsed(tmp_path, monkeypatch):
    from engine.feeds import news_files

    calls: list[str] = []
    parse = news_files._dateutil_ms
    monkeypatch.setattr(news_files, "_dateutil_ms", lambda text, *a: calls.append(text) or parse(text, *a))
    rows = ['"Friday, July 17, 2020 7:51 PM",Same story'] * 2000 + ['"Friday, July 17, 2020 8:00 PM",Other']
    path = tmp_path / "dupes.csv"
    path.write_text("date,title\n" + "\n".join(rows) + "\n")
    loaded = news_files.load_news(path)
    assert [n.headline for n in loaded.items] == ["Same story", "Other"] and loaded.duplicates_removed == 1999
    assert len(calls) == 2  # once per distinct row, not 2,001 times
    # rows equal only once parsed still count as duplicates
    same = tmp_path / "same.csv"
    same.write_text("date,title\n2020-07-17T19:51:00Z,A\n2020-07-17 19:51:00,A\n")
    assert news_files.load_news(same).duplicates_removed == 1


def test_a_headline_over_the_csv_field_limit_is_read_and_an_error_still_names_its_line(tmp_path):
    import csv

    from engine.errors import DataError
    from engine.feeds.news_files import load_news

    long = "word " * 60_000  # 300,000 characters, over csv's 131,072
    path = tmp_path / "long.csv"
    path.write_text(f'title,date\n"{long}",2020-01-02\nshort,2020-01-03\n')
    assert len(load_news(path).items) == 2
    path.write_text(f'title,date\n"{long}",2020-01-02\nshort,someday\n')
    with pytest.raises(DataError, match=r"^long\.csv: line 3: cannot parse time 'someday'"):
        load_news(path)
    assert csv.field_size_limit() == 131_072  # the process-wide limit is left as it was


@pytest.mark.parametrize(("field", "value"), [
    ("bars", 10**12), ("effect_bars", 10**9), ("headlines_per_day", 1e9),
])
def test_the_sample_markets_sizes_are_bounded(field, value):
    from engine.config import SampleMarketConfig
    from engine.feeds.sample import generate_sample_market

    with pytest.raises(ValueError, match=rf"SampleMarketConfig\.{field} must be"):
        generate_sample_market(SampleMarketConfig(**{field: value}))
    with pytest.raises(ValueError, match=r"SampleMarketConfig\.bars: 1,000 bars of 100000d .* after the year 9999"):
        generate_sample_market(SampleMarketConfig(timeframe="100000d", bars=1000))  # int64 times would wrap


def test_the_sample_markets_headline_count_is_bounded_and_named_in_the_config_error():
    from engine.config import load_config
    from engine.errors import ConfigError
    from engine.session import prepare_backtest

    with pytest.raises(ConfigError, match=r"\[sample\].*headlines_per_day"):
        prepare_backtest(load_config(None, ["sample.bars=1000000", "sample.headlines_per_day=1000"]))


RSS = ('<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
       + "".join(f"<item><title>headline {i}</title><guid>{i}</guid></item>" for i in range(200))
       + "</channel></rss>")


@pytest.fixture
def feed_server():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            body = RSS.encode()
            self.send_response(200)
            if self.path != "/chunked":
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_live_news_fetcher_reads_a_bounded_answer(feed_server, monkeypatch):
    from engine.errors import TemporaryError
    from engine.feeds import live_news

    assert live_news.fetch_url(f"{feed_server}/feed", 2.0) == RSS.encode()
    monkeypatch.setattr(live_news, "MAX_RESPONSE_BYTES", 1000)
    for path in ("/feed", "/chunked"):
        with pytest.raises(TemporaryError, match=r"larger than 1,000 bytes"):
            live_news.fetch_url(f"{feed_server}{path}", 2.0)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.invalid/feed", "/etc/passwd", "data:,x"])
def test_the_live_news_fetcher_refuses_urls_that_are_not_http(tmp_path, url):
    from engine.errors import ConfigError
    from engine.feeds.live_news import RssPoller, fetch_url

    with pytest.raises(ConfigError, match=r"http\(s\)"):
        fetch_url(url, 1.0)
    with pytest.raises(ConfigError, match=r"http\(s\)"):
        RssPoller(url)
