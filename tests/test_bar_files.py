"""load_bars: real-world layouts, every validation error (file, line, problem), drop mode, shared data."""

from __future__ import annotations

import bz2
import gzip
import lzma
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.cli import main
from engine.errors import DataError
from engine.feeds.bar_files import MAX_PROBLEMS, load_bars, symbol_from_path
from engine.timeutil import MS_PER_DAY, MS_PER_HOUR, parse_instant
from tests.helpers import write

H = MS_PER_HOUR
T0 = 1_600_000_000_000 - 1_600_000_000_000 % H  # a whole hour


def hourly(rows: int = 3, start: int = T0) -> str:
    """A valid ``timestamp,open,high,low,close,volume`` file body with ``rows`` hourly bars."""
    lines = ["timestamp,open,high,low,close,volume"]
    lines += [f"{start + i * H},{10 + i},{12 + i},{9 + i},{11 + i},{100 + i}" for i in range(rows)]
    return "\n".join(lines)


def error_of(path: Path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_bars(path, **kwargs)
    return str(info.value)


# ---------------------------------------------------------------- layouts


def test_binance_layout_loads_columns_symbol_timeframe_and_source(tmp_path):
    path = write(tmp_path, "binance_BTCUSDT_1h.csv", hourly(3))
    loaded = load_bars(path)
    s = loaded.series
    assert (s.symbol, s.timeframe, s.source, len(s)) == ("BTCUSDT", "1h", str(path), 3)
    assert s.ts_open.dtype == np.int64 and list(s.ts_open) == [T0, T0 + H, T0 + 2 * H]
    assert list(s.open) == [10, 11, 12] and list(s.high) == [12, 13, 14]
    assert list(s.low) == [9, 10, 11] and list(s.close) == [11, 12, 13] and list(s.volume) == [100, 101, 102]
    assert (loaded.dropped_rows, loaded.problems) == (0, ())


@pytest.mark.parametrize("alias", ["timestamp", "Time", "DATE", "Datetime", "Open time", "open_time", "unix", "Unix Timestamp"])
def test_time_column_aliases_any_case(tmp_path, alias):
    path = write(tmp_path, "x.csv", f"{alias},open,high,low,close,volume\n{T0},1,2,0.5,1.5,3\n{T0 + H},1,2,0.5,1.5,3")
    assert load_bars(path).series.ts_open[0] == T0


def test_any_column_order_and_case_extra_columns_ignored(tmp_path):
    path = write(tmp_path, "x.csv", f"""
        CLOSE,Volume,Quote_Volume,High,Open Time,LOW,Open
        11,5,55,12,{T0},9,10
        13,6,66,14,{T0 + H},10,12
    """)
    s = load_bars(path).series
    assert list(s.open) == [10, 12] and list(s.close) == [11, 13] and list(s.volume) == [5, 6]


def test_cryptodatadownload_layout_prefers_unix_and_base_volume(tmp_path):
    path = write(tmp_path, "Binance_BTCUSDT_1h.csv", f"""
        unix,date,symbol,open,high,low,close,Volume BTC,Volume USDT,tradecount
        {T0 + H},2020-09-13 13:00:00,BTC/USDT,10,12,9,11,2,22,7
        {T0},2020-09-13 12:00:00,BTC/USDT,10,12,9,11,1,11,7
    """)
    s = load_bars(path).series
    assert list(s.ts_open) == [T0, T0 + H] and list(s.volume) == [1, 2]


def test_date_and_time_in_separate_columns_are_joined(tmp_path):
    path = write(tmp_path, "eurusd.csv", """
        Date,Time,Open,High,Low,Close
        2020.01.02,00:00,1.1,1.2,1.0,1.15
        2020.01.02,01:00,1.1,1.2,1.0,1.15
    """)
    assert list(load_bars(path).series.ts_open) == [parse_instant("2020-01-02T00:00"), parse_instant("2020-01-02T01:00")]


def test_missing_volume_column_gives_zeros(tmp_path):
    path = write(tmp_path, "x.csv", f"time,open,high,low,close\n{T0},1,2,0.5,1\n{T0 + H},1,2,0.5,1")
    assert list(load_bars(path).series.volume) == [0.0, 0.0]


def test_semicolon_delimiter_is_detected(tmp_path):
    path = write(tmp_path, "x.csv", f"time;open;high;low;close;volume\n{T0};1;2;0.5;1;3\n{T0 + H};1;2;0.5;1;3")
    assert len(load_bars(path).series) == 2


def test_txt_and_gz_files(tmp_path):
    txt = load_bars(write(tmp_path, "nvda.txt", hourly(4))).series
    gz = load_bars(write(tmp_path, "nvda.csv.gz", hourly(4))).series
    assert np.array_equal(txt.ts_open, gz.ts_open) and np.array_equal(txt.close, gz.close)
    assert len(gz) == 4 and gz.symbol == "NVDA"


def test_bz2_xz_and_zip_files_with_a_semicolon_delimiter(tmp_path):
    body = hourly(4).replace(",", ";").encode()
    (tmp_path / "a.csv.bz2").write_bytes(bz2.compress(body))
    (tmp_path / "a.csv.xz").write_bytes(lzma.compress(body))
    with zipfile.ZipFile(tmp_path / "a.csv.zip", "w") as archive:
        archive.writestr("inner.csv", body)
    for name in ("a.csv.bz2", "a.csv.xz", "a.csv.zip"):
        s = load_bars(tmp_path / name).series
        assert len(s) == 4 and s.close[-1] == 14.0, name


# ---------------------------------------------------------------- damaged and binary files


def gz_body(rows: int = 2000) -> bytes:
    return gzip.compress(hourly(rows).encode())


def damaged(tmp_path: Path) -> dict[str, Path]:
    """A truncated .csv.gz, a .gz of random bytes, a plain-text .gz, binary .csv files, a truncated .bz2 and .xz,
    a zip of two files and a non-UTF-8 file."""
    rng = np.random.default_rng(0)
    body = hourly(2000).encode()
    gz, xz = gz_body(), lzma.compress(body)
    files = {
        "truncated.csv.gz": gz[: len(gz) // 2],
        "garbage.csv.gz": rng.bytes(4000),
        "plain.csv.gz": body,
        "binary.csv": rng.bytes(4000),
        "zeros.csv": bytes(4000),
        "gzipped.csv": gz,
        "truncated.csv.bz2": bz2.compress(body)[:-100],
        "truncated.csv.xz": xz[: len(xz) // 2],
        "latin.csv": hourly(3).encode() + b"\n# caf\xe9\n",
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    paths["two.csv.zip"] = tmp_path / "two.csv.zip"
    with zipfile.ZipFile(paths["two.csv.zip"], "w") as archive:
        archive.writestr("a.csv", body)
        archive.writestr("b.csv", body)
    return paths


DAMAGED = [
    ("truncated.csv.gz", "the gzip data ends early (the file is truncated): the text is readable up to line "),
    ("garbage.csv.gz", "the gzip data cannot be decompressed: not one line of text could be read"),
    ("plain.csv.gz", "the gzip data cannot be decompressed: not one line of text could be read"),
    ("binary.csv", "binary data (a NUL byte at byte "),
    ("zeros.csv", "line 1: binary data (a NUL byte at byte 0)"),
    ("gzipped.csv", "line 1: the file holds gzip-compressed data, not text"),
    ("truncated.csv.bz2", "the bzip2 data ends early (the file is truncated)"),
    ("truncated.csv.xz", "the xz data ends early (the file is truncated): the text is readable up to line "),
    ("two.csv.zip", "a zip archive must hold exactly one file; it holds 2 (a.csv, b.csv)"),
    ("latin.csv", "line 5: not UTF-8 text (byte "),
]


@pytest.mark.parametrize(("name", "problem"), DAMAGED)
def test_damaged_or_binary_file_is_a_data_error_naming_the_file(tmp_path, name, problem):
    message = error_of(damaged(tmp_path)[name])
    assert message.startswith(f"{name}: ") and problem in message, message


def test_truncated_gz_says_up_to_which_line_the_text_was_read(tmp_path):
    gz = gz_body()
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(gz[: len(gz) // 2])
    lines = zlib.decompressobj(wbits=31).decompress(gz[: len(gz) // 2]).count(b"\n")  # all that can be read
    assert 0 < lines < 2000
    assert f"the text is readable up to line {lines} (EOFError: " in error_of(path)


@pytest.mark.parametrize(("name", "problem"), [DAMAGED[0], DAMAGED[1], DAMAGED[3]])
def test_damaged_file_through_the_cli_exits_2_naming_the_file(tmp_path, capsys, name, problem):
    path = damaged(tmp_path)[name]
    assert main(["backtest", "--data", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {name}: ") and problem in err and "Traceback" not in err, err


# ---------------------------------------------------------------- dates


def bars_with_times(tmp_path: Path, times: list[str]) -> np.ndarray:
    rows = "\n".join(f"{t},1,2,0.5,1.5,10" for t in times)
    return load_bars(write(tmp_path, "t.csv", f"date,open,high,low,close,volume\n{rows}"), timeframe_ms=MS_PER_DAY).series.ts_open


def test_epoch_seconds_and_milliseconds_give_the_same_times(tmp_path):
    seconds = [str((T0 + i * H) // 1000) for i in range(3)]
    millis = [str(T0 + i * H) for i in range(3)]
    assert list(bars_with_times(tmp_path, seconds)) == list(bars_with_times(tmp_path, millis)) == [T0, T0 + H, T0 + 2 * H]


def test_seconds_and_milliseconds_mixed_in_one_column_are_told_apart_per_value(tmp_path):
    times = [str(T0 // 1000), str((T0 + H) // 1000), str(T0 + 2 * H)]  # CryptoDataDownload switched mid-file
    assert list(bars_with_times(tmp_path, times)) == [T0, T0 + H, T0 + 2 * H]


def test_iso_dates_mean_midnight_utc_bar_open(tmp_path):
    assert list(bars_with_times(tmp_path, ["2021-06-10", "2021-06-11"])) == [
        parse_instant("2021-06-10"), parse_instant("2021-06-11")]


def test_iso_datetimes_with_offset_z_and_naive_as_utc(tmp_path):
    times = ["2021-06-10T00:00:00Z", "2021-06-10T03:00:00+02:00", "2021-06-10 02:00:00"]
    assert list(bars_with_times(tmp_path, times)) == [
        parse_instant("2021-06-10T00:00"), parse_instant("2021-06-10T01:00"), parse_instant("2021-06-10T02:00")]


def test_us_month_day_year_dates(tmp_path):
    assert list(bars_with_times(tmp_path, ["6/29/2016", "6/30/2016", "7/1/2016"])) == [
        parse_instant(d) for d in ("2016-06-29", "2016-06-30", "2016-07-01")]


def test_yyyymmdd_integers_are_dates_not_epochs(tmp_path):
    assert list(bars_with_times(tmp_path, ["20200102", "20200103"])) == [
        parse_instant("2020-01-02"), parse_instant("2020-01-03")]


def test_descending_file_is_reversed(tmp_path):
    path = write(tmp_path, "djia_index_2008_2016.csv", """
        Date,Open,High,Low,Close,Volume,Adj Close
        7/1/2016,17924.2,18002.4,17916.9,17949.4,82160000,17949.4
        6/30/2016,17712.8,17930.6,17711.8,17930.0,133030000,17930.0
        6/29/2016,17456.0,17704.5,17456.0,17694.7,106380000,17694.7
    """)
    s = load_bars(path).series
    assert s.symbol == "DJIA" and list(s.close) == [17694.7, 17930.0, 17949.4]
    assert s.ts_open[0] == parse_instant("2016-06-29") and s.timeframe == "1d"


# ---------------------------------------------------------------- errors


def test_missing_columns_names_found_and_missing(tmp_path):
    message = error_of(write(tmp_path, "bad.csv", f"Date,Open,Price,Volume\n{T0},1,2,3"))
    assert message.startswith("bad.csv: missing required columns: high, low, close")
    assert "found columns: Date, Open, Price, Volume" in message


def test_missing_time_column(tmp_path):
    assert "missing required columns: time" in error_of(write(tmp_path, "bad.csv", "open,high,low,close\n1,2,0.5,1"))


def test_empty_file_and_header_only_file(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert error_of(empty) == "empty.csv: file is empty"
    assert "header.csv: empty file" in error_of(write(tmp_path, "header.csv", "timestamp,open,high,low,close"))
    for path in (empty, tmp_path / "header.csv"):
        with pytest.raises(DataError):
            load_bars(path, drop_bad_rows=True)


def bad_row(tmp_path: Path, row: str, row_number: int = 2) -> str:
    """Error of an hourly file whose data row ``row_number`` (0-based; line = row_number + 2) is ``row``."""
    lines = hourly(5).splitlines()
    lines[row_number + 1] = row
    return error_of(write(tmp_path, "binance_BTCUSDT_1h.csv", "\n".join(lines)))


@pytest.mark.parametrize(("row", "problem"), [
    ("yesterday,1,2,0.5,1,3", "cannot parse time 'yesterday'"),
    (",1,2,0.5,1,3", "time is empty"),
    (f"{T0 + 2 * H},,2,0.5,1,3", "open is empty"),
    (f"{T0 + 2 * H},1,abc,0.5,1,3", "high 'abc' is not a number"),
    (f"{T0 + 2 * H},1,2,NaN,1,3", "low is empty"),
    (f"{T0 + 2 * H},1,2,0.5,inf,3", "close 'inf' is not a number"),
    (f"{T0 + 2 * H},1,2,0,1,3", "low 0.0 is not positive"),
    (f"{T0 + 2 * H},1,2,-0.5,1,3", "low -0.5 is not positive"),
    (f"{T0 + 2 * H},9,9,10,9.5,3", "high 9.0 is below low 10.0"),
    (f"{T0 + 2 * H},3,2,0.5,1,3", "open 3.0 is outside [low 0.5, high 2.0]"),
    (f"{T0 + 2 * H},1,2,0.5,0.4,3", "close 0.4 is outside [low 0.5, high 2.0]"),
    (f"{T0 + 2 * H},1,2,0.5,1,-3", "volume -3.0 is negative"),
    (f"{T0 + 2 * H},1,2,0.5,1,", "volume is empty"),
])
def test_bad_row_message_names_file_line_and_problem(tmp_path, row, problem):
    message = bad_row(tmp_path, row)
    assert message.startswith(f"binance_BTCUSDT_1h.csv: line 4: {problem}"), message


def test_duplicate_timestamp_names_the_first_line(tmp_path):
    message = bad_row(tmp_path, f"{T0 + H},1,2,0.5,1,3")
    assert message.startswith("binance_BTCUSDT_1h.csv: line 4: duplicate timestamp 2020-09-13T13:00:00Z (same as line 3)")


def test_out_of_order_timestamp(tmp_path):
    message = bad_row(tmp_path, f"{T0 - H},1,2,0.5,1,3")
    assert message.startswith("binance_BTCUSDT_1h.csv: line 4: out-of-order timestamp 2020-09-13T11:00:00Z")
    assert "the file is oldest-first, so it must be after 2020-09-13T13:00:00Z on line 3" in message


def test_error_counts_the_other_bad_rows(tmp_path):
    path = write(tmp_path, "x.csv", hourly(5).replace(",12,9,11,", ",12,13,11,").replace(",14,11,13,", ",1,11,13,"))
    message = error_of(path)
    assert message.startswith("x.csv: line 2: high 12.0 is below low 13.0")
    assert "(and 1 more bad rows; drop_bad_rows=True skips them)" in message


def test_blank_lines_do_not_shift_line_numbers(tmp_path):
    lines = hourly(4).splitlines()
    lines[3] = f"{T0 + 2 * H},12,1,11,13,102"  # data row 3, on line 5 once a blank line precedes it
    path = tmp_path / "x.csv"
    path.write_text("\n".join([lines[0], lines[1], "", *lines[2:]]) + "\n")
    assert error_of(path).startswith("x.csv: line 5: high 1.0 is below low 11.0")


# ---------------------------------------------------------------- drop_bad_rows


def test_drop_bad_rows_counts_and_describes(tmp_path):
    body = f"""
        timestamp,open,high,low,close,volume
        {T0},10,12,9,11,1
        {T0 + H},10,9,12,11,1
        {T0 + 2 * H},10,12,9,11,1
        {T0 + 2 * H},99,99,99,99,1
        {T0 + H},10,12,9,11,1
        {T0 + 3 * H},10,12,9,,1
        {T0 + 4 * H},10,12,9,11,1
    """
    loaded = load_bars(write(tmp_path, "x.csv", body), drop_bad_rows=True)
    assert loaded.dropped_rows == 4
    assert list(loaded.series.ts_open) == [T0, T0 + 2 * H, T0 + 4 * H]
    assert loaded.series.close[1] == 11  # the first of the duplicates is kept
    assert [p.split(": ")[1] for p in loaded.problems] == ["line 3", "line 5", "line 6", "line 7"]
    assert "high 9.0 is below low 12.0" in loaded.problems[0]
    assert "duplicate timestamp" in loaded.problems[1] and "out-of-order" in loaded.problems[2]
    assert loaded.problems[3].endswith("close is empty")


def test_drop_bad_rows_keeps_the_first_of_duplicates_in_a_newest_first_file(tmp_path):
    path = write(tmp_path, "x.csv", """
        date,open,high,low,close
        2020-01-03,1,2,0.5,1
        2020-01-02,1,2,0.5,1.5
        2020-01-02,1,2,0.5,1.8
        2020-01-01,1,2,0.5,1
    """)
    loaded = load_bars(path, drop_bad_rows=True)
    assert loaded.dropped_rows == 1 and list(loaded.series.close) == [1, 1.5, 1]
    assert loaded.problems[0] == "x.csv: line 4: duplicate timestamp 2020-01-02T00:00:00Z (same as line 3)"


def test_drop_bad_rows_keeps_only_the_first_twenty_descriptions(tmp_path):
    lines = hourly(50).splitlines()
    lines[1:41] = [line.replace(",", ",-", 1) for line in lines[1:41]]  # negative open on 40 rows
    loaded = load_bars(write(tmp_path, "x.csv", "\n".join(lines)), drop_bad_rows=True)
    assert loaded.dropped_rows == 40 and len(loaded.problems) == MAX_PROBLEMS == 20
    assert len(loaded.series) == 10 and loaded.problems[-1].startswith("x.csv: line 21: open -29.0 is not positive")


def test_drop_bad_rows_with_every_row_bad_is_an_error(tmp_path):
    path = write(tmp_path, "x.csv", "time,open,high,low,close\nnope,1,2,0.5,1\nnever,1,2,0.5,1")
    assert "no valid rows left after dropping 2 bad rows" in error_of(path, drop_bad_rows=True)


def test_drop_bad_rows_still_refuses_missing_columns(tmp_path):
    assert "missing required columns" in error_of(write(tmp_path, "x.csv", "time,open\n1,2"), drop_bad_rows=True)


# ---------------------------------------------------------------- timeframe, adjusted, symbol


def test_timeframe_is_the_most_common_gap(tmp_path):
    days = ["2021-01-04", "2021-01-05", "2021-01-06", "2021-01-07", "2021-01-08", "2021-01-11", "2021-01-12"]
    rows = "\n".join(f"{d},1,2,0.5,1.5" for d in days)
    path = write(tmp_path, "x.csv", f"date,open,high,low,close\n{rows}")
    assert load_bars(path).series.timeframe_ms == MS_PER_DAY
    assert load_bars(path, timeframe_ms=4 * H).series.timeframe_ms == 4 * H  # given: used as is


def test_single_bar_needs_a_timeframe(tmp_path):
    path = write(tmp_path, "x.csv", hourly(1))
    assert "cannot infer the timeframe from 1 bar; pass timeframe_ms" in error_of(path)
    assert len(load_bars(path, timeframe_ms=H).series) == 1


def test_adjusted_prices_scale_by_adj_close_over_close(tmp_path):
    path = write(tmp_path, "x.csv", """
        Date,Open,High,Low,Close,Adj Close,Volume
        2014-01-02,10,12,8,10,5,100
        2014-01-03,20,24,16,22,11,100
    """)
    s = load_bars(path, adjusted=True).series
    assert list(s.open) == [5, 10] and list(s.high) == [6, 12] and list(s.low) == [4, 8] and list(s.close) == [5, 11]
    assert list(s.volume) == [100, 100]
    assert list(load_bars(path).series.close) == [10, 22]


def test_adjusted_without_adj_close_column_is_an_error(tmp_path):
    message = error_of(write(tmp_path, "x.csv", hourly(2)), adjusted=True)
    assert "x.csv: adjusted=True needs an 'Adj Close' column" in message


def test_bad_adj_close_is_reported_only_when_adjusting(tmp_path):
    path = write(tmp_path, "x.csv", "date,open,high,low,close,adj_close\n2020-01-01,1,2,0.5,1,\n2020-01-02,1,2,0.5,1,1")
    assert error_of(path, adjusted=True).startswith("x.csv: line 2: adj close is empty")
    assert len(load_bars(path).series) == 2


@pytest.mark.parametrize(("name", "symbol"), [
    ("binance_BTCUSDT_1h.csv", "BTCUSDT"),
    ("binance_ETHUSDT_1h.csv.gz", "ETHUSDT"),
    ("binance_BTCUSDT_1d_cdd.csv", "BTCUSDT"),
    ("AAPL_daily.csv", "AAPL"),
    ("backtrader_nvda-1999-2014.txt", "NVDA"),
    ("stocknet_price_AAPL.csv", "AAPL"),
    ("spy_daily_2017_2020.csv", "SPY"),
    ("djia_index_2008_2016.csv", "DJIA"),
    ("/some/dir/ohlcv_15m_solusdt.csv", "SOLUSDT"),
    ("2020.csv", "2020"),
])
def test_symbol_from_file_name(name, symbol):
    assert symbol_from_path(name) == symbol


def test_source_is_the_path_as_given(tmp_path, monkeypatch):
    write(tmp_path, "x.csv", hourly(2))
    monkeypatch.chdir(tmp_path)
    assert load_bars("./x.csv").series.source == "./x.csv"


def test_explicit_symbol_wins(tmp_path):
    assert load_bars(write(tmp_path, "binance_BTCUSDT_1h.csv", hourly(2)), symbol="BTC/USDT").series.symbol == "BTC/USDT"


def test_many_rows_load_whole(tmp_path):
    """Every row arrives, in order (the load time of a million rows: benchmarks/bench_loading.py)."""
    n = 100_000
    path = tmp_path / "big.csv"
    rows = "\n".join(f"{t},100.5,101.25,99.75,100.5,1.5" for t in range(T0, T0 + n * 60_000, 60_000))
    path.write_text(f"timestamp,open,high,low,close,volume\n{rows}\n")
    s = load_bars(path).series
    assert len(s) == n and s.timeframe == "1m" and s.ts_open[-1] == T0 + (n - 1) * 60_000


# ---------------------------------------------------------------- shared real data

SHARED_BARS = [  # path under shared/data, rows, timeframe, first and last bar open (UTC), newest-first in the file
    ("ohlcv/crypto/binance_BTCUSDT_1h.csv", 33412, "1h", "2017-08-17T05:00", "2021-06-10T00:00", False),
    ("ohlcv/crypto/binance_ETHUSDT_1h.csv.gz", 33412, "1h", "2017-08-17T05:00", "2021-06-10T00:00", False),
    ("ohlcv/crypto/binance_BTCUSDT_1d_cdd.csv", 1395, "1d", "2017-08-17", "2021-06-11", False),
    ("ohlcv/crypto/binance_ETHUSDT_1d_cdd.csv", 1232, "1d", "2017-08-17", "2020-12-30", False),
    ("ohlcv/crypto/binance_BTCUSDT_4h.csv.gz", 16149, "4h", "2018-01-01", "2025-05-18", False),
    ("ohlcv/crypto/binance_BTCUSDT_1d.csv", 2961, "1d", "2018-01-01", "2026-02-08", False),
    ("ohlcv/equities_daily/backtrader_nvda-1999-2014.txt", 4012, "1d", "1999-01-22", "2014-12-31", False),
    ("ohlcv/equities_daily/backtrader_orcl-1995-2014.txt", 5036, "1d", "1995-01-03", "2014-12-31", False),
    ("ohlcv/equities_daily/backtrader_yhoo-1996-2015.txt", 4965, "1d", "1996-04-12", "2015-12-31", False),
    ("ohlcv/equities_daily/djia_index_2008_2016.csv", 1989, "1d", "2008-08-08", "2016-07-01", True),
    ("news/market_headlines_2017_2020/spy_daily_2017_2020.csv", 653, "1d", "2017-12-18", "2020-07-23", False),
    *[(f"news/ticker_news_2022_2023/{t}_daily.csv", 501, "1d", "2022-01-03", "2023-12-29", False)
      for t in ("AAPL", "META", "NVDA")],
    *[(f"news/stocknet_tweets_2014_2015/stocknet_price_{t}.csv", 1258, "1d", "2012-09-04", "2017-09-01", False)
      for t in ("AAPL", "AMZN", "BA", "FB", "GOOG", "JPM", "MSFT", "XOM")],
]


def test_the_table_covers_every_shared_bar_file(shared_data):
    on_disk = {str(p.relative_to(shared_data)) for p in (shared_data / "ohlcv").rglob("*") if p.is_file()}
    assert on_disk <= {row[0] for row in SHARED_BARS}


@pytest.mark.parametrize(("relative", "rows", "timeframe", "first", "last", "newest_first"), SHARED_BARS)
def test_shared_bar_file_loads(shared_data, relative, rows, timeframe, first, last, newest_first):
    path = shared_data / relative
    loaded = load_bars(path)
    s = loaded.series
    assert (len(s), s.timeframe, loaded.dropped_rows) == (rows, timeframe, 0)
    assert (s.ts_open[0], s.ts_open[-1]) == (parse_instant(first), parse_instant(last))
    raw = pd.read_csv(path)
    assert len(raw) == rows
    close_column = next(c for c in raw.columns if c.lower() == "close")
    in_file_order = raw[close_column].to_numpy()
    assert np.array_equal(s.close, in_file_order[::-1] if newest_first else in_file_order)
    assert s.symbol == symbol_from_path(path) and s.source == str(path)


def test_shared_adjusted_nvda_close_is_the_adj_close_column(shared_data):
    path = shared_data / "ohlcv/equities_daily/backtrader_nvda-1999-2014.txt"
    raw = pd.read_csv(path)
    s = load_bars(path, adjusted=True).series
    assert np.allclose(s.close, raw["Adj Close"]) and np.all(s.low <= s.open) and np.all(s.open <= s.high)
