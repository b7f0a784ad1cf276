"""load_news: column aliases, every time format seen in the shared files, end-of-day stamping,
dedupe and ticker filtering, errors, and the real headline files."""

from __future__ import annotations

import bz2
import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.cli import main
from engine.domain.values import News
from engine.errors import DataError
from engine.feeds.news_files import load_news
from engine.timeutil import parse_instant
from tests.helpers import write


def stamp(tmp_path: Path, value: str, tz: str = "UTC") -> int:
    """ts_event of a one-headline file whose time cell is ``value``."""
    escaped = value.replace('"', '""')
    (item,) = load_news(write(tmp_path, "one.csv", f'title,date\nHello,"{escaped}"'), tz=tz).items
    return item.ts_event


def end_of(day: str) -> int:
    """The last millisecond before ``day`` (an ISO instant, UTC unless it has an offset)."""
    return parse_instant(day) - 1


# ---------------------------------------------------------------- layouts


def test_basic_file_sorted_by_time_then_headline(tmp_path):
    path = write(tmp_path, "feed.csv", """
        title,published_at
        Zeta,2020-01-02T10:00:00Z
        Beta,2020-01-01T10:00:00Z
        Alpha,2020-01-02T10:00:00Z
    """)
    loaded = load_news(path)
    assert loaded.items == (
        News(parse_instant("2020-01-01T10:00"), "Beta", None, "feed"),
        News(parse_instant("2020-01-02T10:00"), "Alpha", None, "feed"),
        News(parse_instant("2020-01-02T10:00"), "Zeta", None, "feed"),
    )
    assert (loaded.duplicates_removed, loaded.empty_rows_skipped) == (0, 0)


@pytest.mark.parametrize("headline", ["title", "Headline", "HEADLINES", "text", "Tweet"])
@pytest.mark.parametrize("when", ["published", "Published Date", "published_at", "date", "Time", "datetime", "created_at", "timestamp"])
def test_column_aliases_any_case_any_order(tmp_path, headline, when):
    path = write(tmp_path, "x.csv", f'url,{when},{headline}\nhttp://a,2020-01-01T00:00:00Z,"Hi, there"')
    (item,) = load_news(path).items
    assert (item.headline, item.ts_event) == ("Hi, there", parse_instant("2020-01-01"))


def test_missing_columns_are_named(tmp_path):
    with pytest.raises(DataError, match=r"x\.csv: missing required columns: time \(found columns: title, body"):
        load_news(write(tmp_path, "x.csv", "title,body\na,b"))


def test_gz_file_and_source_is_the_stem(tmp_path):
    (item,) = load_news(write(tmp_path, "reuters_headlines.csv.gz", "date,headline\n2020-07-18,A")).items
    assert (item.source, item.ts_event) == ("reuters_headlines", end_of("2020-07-19"))


def test_headline_whitespace_and_embedded_newlines_become_single_spaces(tmp_path):
    path = write(tmp_path, "x.csv", 'Time,Headlines\n18-Jul-20,"  The shifting patterns\nof English  "')
    assert load_news(path).items[0].headline == "The shifting patterns of English"


def test_na_like_headlines_stay_text(tmp_path):
    assert load_news(write(tmp_path, "x.csv", "title,date\nNA,2020-01-01")).items[0].headline == "NA"


# ---------------------------------------------------------------- times


def test_offsets_and_z_are_used_as_they_are_whatever_tz(tmp_path):
    assert stamp(tmp_path, "2020-07-17T19:51:00Z", tz="America/New_York") == parse_instant("2020-07-17T19:51")
    assert stamp(tmp_path, "2020-07-17T21:51:00+02:00", tz="Asia/Tokyo") == parse_instant("2020-07-17T19:51")


def test_naive_datetimes_are_in_tz(tmp_path):
    assert stamp(tmp_path, "2020-07-17 15:51:00") == parse_instant("2020-07-17T15:51")
    assert stamp(tmp_path, "2020-07-17 15:51:00", tz="America/New_York") == parse_instant("2020-07-17T19:51")
    assert stamp(tmp_path, "2020-01-17 15:51", tz="US/Eastern") == parse_instant("2020-01-17T20:51")


def test_cnbc_times_are_us_eastern(tmp_path):
    assert stamp(tmp_path, " 7:51  PM ET Fri, 17 July 2020") == parse_instant("2020-07-17T23:51")  # EDT
    assert stamp(tmp_path, "10:02  AM ET Mon, 6 Jan 2020") == parse_instant("2020-01-06T15:02")  # EST
    assert stamp(tmp_path, " 4:30  PM ET Tue, 17 Sept 2019") == parse_instant("2019-09-17T20:30")


def test_date_only_is_the_last_millisecond_of_the_day_in_utc(tmp_path):
    assert stamp(tmp_path, "2022-01-03") == end_of("2022-01-04") == parse_instant("2022-01-03T23:59:59") + 999
    assert stamp(tmp_path, "17-Jul-20") == end_of("2020-07-18")
    assert stamp(tmp_path, "8-Jul-20") == end_of("2020-07-09")
    assert stamp(tmp_path, "Jun 6, 2017") == end_of("2017-06-07")


def test_date_only_is_the_end_of_the_day_in_new_york(tmp_path):
    assert stamp(tmp_path, "2022-01-03", tz="America/New_York") == end_of("2022-01-04T00:00-05:00")
    assert stamp(tmp_path, "17-Jul-20", tz="America/New_York") == end_of("2020-07-18T00:00-04:00")
    # the day on which clocks go forward still ends at local midnight (EDT by then)
    assert stamp(tmp_path, "2020-03-08", tz="America/New_York") == end_of("2020-03-09T00:00-04:00")


def test_month_only_is_the_last_millisecond_of_the_month(tmp_path):
    assert stamp(tmp_path, "Jul-18") == end_of("2018-08-01")
    assert stamp(tmp_path, "Dec-19") == end_of("2020-01-01")
    assert stamp(tmp_path, "Feb-20", tz="America/New_York") == end_of("2020-03-01T00:00-05:00")


def test_dateutil_fallback_keeps_the_granularity(tmp_path):
    assert stamp(tmp_path, "Friday, July 17, 2020 7:51 PM") == parse_instant("2020-07-17T19:51")
    assert stamp(tmp_path, "Friday, 17 July 2020") == end_of("2020-07-18")
    assert stamp(tmp_path, "July 2020") == end_of("2020-08-01")
    assert stamp(tmp_path, "17 July 2020 19:51 +0200") == parse_instant("2020-07-17T17:51")


def test_unparseable_time_names_file_line_and_value(tmp_path):
    path = write(tmp_path, "x.csv", 'title,date\n"two\nlines",2020-01-01\nok,2020-01-02\nbad,someday soon')
    with pytest.raises(DataError, match=r"^x\.csv: line 5: cannot parse time 'someday soon' in column 'date'$"):
        load_news(path)


def test_empty_time_with_a_headline_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"^x\.csv: line 3: time is empty$"):
        load_news(write(tmp_path, "x.csv", "title,date\na,2020-01-01\nb,\n"))


def test_year_less_time_is_an_error(tmp_path):
    with pytest.raises(DataError, match="cannot parse time '17 July'"):
        load_news(write(tmp_path, "x.csv", "title,date\na,17 July"))


def test_invalid_time_zone_is_named(tmp_path):
    with pytest.raises(DataError, match="unknown time zone 'Mars/Olympus'"):
        load_news(write(tmp_path, "x.csv", "title,date\na,2020-01-01"), tz="Mars/Olympus")


def test_unparseable_time_in_a_bz2_file_names_the_line(tmp_path):
    path = tmp_path / "x.csv.bz2"
    path.write_bytes(bz2.compress(b"title;date\na;2020-01-01\nbad;someday soon\n"))
    with pytest.raises(DataError, match=r"^x\.csv\.bz2: line 3: cannot parse time 'someday soon' in column 'date'$"):
        load_news(path)


# ---------------------------------------------------------------- damaged and binary files


def damaged_news(tmp_path: Path, name: str) -> Path:
    """A news file named ``name``: truncated gzip (csv or JSON lines), random bytes (.gz or plain)."""
    rng = np.random.default_rng(1)
    if name.endswith(".jsonl.gz"):
        body = "".join(f'{{"date": "2020-07-01", "title": "headline {i}"}}\n' for i in range(3000)).encode()
    else:
        body = ("date,title\n" + "".join(f"2020-07-{1 + i % 28:02d},headline {i}\n" for i in range(3000))).encode()
    data = {"truncated": gzip.compress(body)[:-200], "garbage": rng.bytes(3000)}[name.split(".")[0]]
    path = tmp_path / name
    path.write_bytes(data)
    return path


NEWS_DAMAGED = [
    ("truncated.csv.gz", "the gzip data ends early (the file is truncated): the text is readable up to line "),
    ("truncated.jsonl.gz", "the gzip data ends early (the file is truncated): the text is readable up to line "),
    ("garbage.csv.gz", "the gzip data cannot be decompressed"),
    ("garbage.jsonl.gz", "the gzip data cannot be decompressed"),
    ("garbage.csv", "binary data (a NUL byte at byte "),
    ("garbage.jsonl", "binary data (a NUL byte at byte "),
]


@pytest.mark.parametrize(("name", "problem"), NEWS_DAMAGED)
def test_damaged_or_binary_news_file_is_a_data_error_naming_the_file(tmp_path, name, problem):
    with pytest.raises(DataError) as info:
        load_news(damaged_news(tmp_path, name))
    assert str(info.value).startswith(f"{name}: ") and problem in str(info.value), str(info.value)


@pytest.mark.parametrize(("name", "problem"), [NEWS_DAMAGED[0], NEWS_DAMAGED[2], NEWS_DAMAGED[4]])
def test_damaged_news_file_through_the_cli_exits_2_naming_the_file(tmp_path, capsys, name, problem):
    path = damaged_news(tmp_path, name)
    assert main(["backtest", "--news", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {name}: ") and problem in err and "Traceback" not in err, err


# ---------------------------------------------------------------- skipping, dedupe, symbols


def test_empty_headlines_are_skipped_and_exact_duplicates_removed(tmp_path):
    path = write(tmp_path, "x.csv", """
        title,date,url
        A,2020-01-01,u1
        A,2020-01-01,u2
        A,2020-01-02,u1
        ,,
        "  ",2020-01-01,u3
        B,2020-01-01,u1
    """)
    loaded = load_news(path)
    assert [(n.headline, n.ts_event) for n in loaded.items] == [
        ("A", end_of("2020-01-02")), ("B", end_of("2020-01-02")), ("A", end_of("2020-01-03"))]
    assert (loaded.duplicates_removed, loaded.empty_rows_skipped) == (1, 2)


def test_symbol_argument_is_given_to_every_headline_without_a_ticker_column(tmp_path):
    (item,) = load_news(write(tmp_path, "AAPL_news.csv", "title,date\nA,2022-01-03"), symbol="AAPL").items
    assert item.symbol == "AAPL"


TWEETS = """
    ticker,created_at,tweet_id,text
    AAPL,2014-01-01T01:00:00Z,1,apple up
    FB,2014-01-01T02:00:00Z,2,fb down
    AAPL,2014-01-01T03:00:00Z,3,apple flat
    FB,2014-01-01T02:00:00Z,4,fb down
"""


def test_ticker_column_fills_the_symbol(tmp_path):
    loaded = load_news(write(tmp_path, "tweets.csv", TWEETS))
    assert [n.symbol for n in loaded.items] == ["AAPL", "FB", "AAPL"] and loaded.duplicates_removed == 1


def test_symbol_argument_filters_on_the_ticker_column(tmp_path):
    loaded = load_news(write(tmp_path, "tweets.csv", TWEETS), symbol="aapl")
    assert [(n.symbol, n.headline) for n in loaded.items] == [("AAPL", "apple up"), ("AAPL", "apple flat")]


def test_unknown_symbol_lists_the_symbols_in_the_file(tmp_path):
    with pytest.raises(DataError, match=r"no rows for symbol 'TSLA' \(symbols in the file: AAPL, FB\)"):
        load_news(write(tmp_path, "tweets.csv", TWEETS), symbol="TSLA")


# ---------------------------------------------------------------- shared real data

NEWS = "news/market_headlines_2017_2020"
TICKER_NEWS = "news/ticker_news_2022_2023"
TWEET_FILE = "news/stocknet_tweets_2014_2015/stocknet_tweets_8tickers.csv.gz"


def raw(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_shared_cnbc(shared_data):
    loaded = load_news(shared_data / NEWS / "cnbc_headlines.csv")
    assert (len(loaded.items), loaded.empty_rows_skipped, loaded.duplicates_removed) == (2800, 280, 0)
    assert loaded.items[0].ts_event == parse_instant("2017-12-22T18:52-05:00")
    assert loaded.items[-1].ts_event == parse_instant("2020-07-17T19:51-04:00")
    assert loaded.items[-1].headline == "Jim Cramer: A better way to invest in the Covid-19 vaccine gold rush"


def test_shared_guardian_with_month_only_rows(shared_data):
    path = shared_data / NEWS / "guardian_headlines.csv.gz"
    frame = raw(path)
    month_only = frame[frame["Time"].str.fullmatch(r"[A-Z][a-z]{2}-\d{2}")]
    assert len(frame) == 17800 and month_only["Time"].value_counts().to_dict() == {"Jul-18": 20, "Apr-18": 20}
    loaded = load_news(path)
    assert (len(loaded.items), loaded.duplicates_removed, loaded.empty_rows_skipped) == (17800, 0, 0)
    stamped = {n.headline: n.ts_event for n in loaded.items}
    for month, month_end in (("Jul-18", "2018-08-01"), ("Apr-18", "2018-05-01")):
        sample = month_only.loc[month_only["Time"] == month, "Headlines"].iloc[1]
        assert stamped[" ".join(sample.split())] == end_of(month_end)
    assert (loaded.items[0].ts_event, loaded.items[-1].ts_event) == (end_of("2017-12-18"), end_of("2020-07-19"))


def test_shared_reuters(shared_data):
    path = shared_data / NEWS / "reuters_headlines_dated.csv.gz"
    frame = raw(path)
    loaded = load_news(path)
    assert len(frame) == 32770 and loaded.duplicates_removed == frame.duplicated().sum() == 79
    assert len(loaded.items) == 32770 - 79
    assert (loaded.items[0].ts_event, loaded.items[-1].ts_event) == (end_of("2018-03-21"), end_of("2020-07-19"))


@pytest.mark.parametrize(("ticker", "rows", "full_row_duplicates"), [("AAPL", 3224, 1058), ("META", 4200, 1337), ("NVDA", 2849, 978)])
def test_shared_ticker_news(shared_data, ticker, rows, full_row_duplicates):
    path = next((shared_data / TICKER_NEWS).glob(f"{ticker}_news.csv*"))
    frame = raw(path)
    assert len(frame) == rows and frame.duplicated().sum() == full_row_duplicates  # as SOURCES.md says
    # load_news dedupes on (time, headline, symbol) only, so rows differing just in url/publisher also go
    expected = len(frame[["title", "published date"]].drop_duplicates())
    loaded = load_news(path, symbol=ticker, tz="America/New_York")
    assert len(loaded.items) == expected and loaded.duplicates_removed == rows - expected
    assert {n.symbol for n in loaded.items} == {ticker}
    assert loaded.items[-1].ts_event == end_of("2023-12-30T00:00-05:00")


def test_shared_aapl_news_has_two_duplicates_beyond_the_full_row_ones(shared_data):
    frame = raw(shared_data / TICKER_NEWS / "AAPL_news.csv")
    assert frame.duplicated(["title", "published date"]).sum() - frame.duplicated().sum() == 2


def test_shared_stocknet_tweets_with_ticker_column_and_filter(shared_data):
    path = shared_data / TWEET_FILE
    frame = raw(path)
    everything = load_news(path)
    unique = frame[["ticker", "created_at", "text"]].drop_duplicates()
    assert len(frame) == 56345 and len(everything.items) == len(unique) == 56097
    assert everything.duplicates_removed == 248  # same second, same text, different tweet ids (retweets)
    assert everything.items[0].ts_event == parse_instant("2013-12-31T23:10:08Z")
    assert everything.items[-1].ts_event == parse_instant("2016-03-31T21:34:37Z")
    fb = load_news(path, symbol="FB")
    assert len(fb.items) == int((unique["ticker"] == "FB").sum()) and {n.symbol for n in fb.items} == {"FB"}


def test_shared_crypto_headlines(shared_data):
    path = shared_data / "news/crypto_headlines/cryptocurrencynews_com_bitcoin_titles_2017_2019.csv"
    frame = raw(path)
    loaded = load_news(path, symbol="BTC")
    # no full-row duplicates, but 145 titles were scraped twice on the same day (view counts differ)
    assert frame.duplicated().sum() == 0 and frame.duplicated(["title", "date"]).sum() == 145
    assert (len(loaded.items), loaded.duplicates_removed) == (446 - 145, 145)
    assert loaded.items[0].ts_event == end_of("2017-06-07") and loaded.items[0].symbol == "BTC"
