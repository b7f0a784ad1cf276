"""Every file under ../shared/data is accounted for: each bar file loads through ``load_bars`` and each
headline file through ``load_news``, with the row counts that ``SOURCES.md`` states (read from its
tables, not copied here); the labelled-sentence sets are counted with plain readers; a new file that
fits no rule fails the walk until it is classified."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from engine.feeds.bar_files import load_bars
from engine.feeds.news_files import load_news
from tests.conftest import SHARED_DATA

_HEADING = re.compile(r"^#{2,3}\s+(?:\d+\.\s+)?([A-Za-z0-9_]+/(?:[A-Za-z0-9_]+/)*)")


def stated_rows(sources: Path) -> dict[str, int | None]:
    """relative path -> the row count in SOURCES.md's tables (None where it gives none)."""
    out: dict[str, int | None] = {}
    folder, rows_col = "", None
    for line in sources.read_text(encoding="utf-8").splitlines():
        heading = _HEADING.match(line)
        if heading:
            folder, rows_col = heading.group(1), None
            continue
        if not line.startswith("|"):
            rows_col = None if not line.strip() else rows_col
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "file":
            rows_col = cells.index("rows") if "rows" in cells else None
            continue
        if rows_col is None or set(cells[0]) <= {"-"}:
            continue
        count = re.match(r"(\d+)", cells[rows_col])
        for name in _expand(cells[0]):
            out[folder + name] = int(count.group(1)) if count else None
    return out


def _expand(cell: str) -> list[str]:
    """``a_{X,Y}.csv`` -> a_X.csv, a_Y.csv; ``A.txt, B.txt`` -> both; backticks dropped."""
    cell = cell.replace("`", "")
    brace = re.search(r"\{([^}]*)\}", cell)
    if brace:
        return [cell[: brace.start()] + part + cell[brace.end():] for part in brace.group(1).split(",")]
    return [part.strip() for part in cell.split(",")]


def kind(relative: str) -> str:
    name = relative.rsplit("/", 1)[-1]
    if relative.startswith("ohlcv/") or re.search(r"(_daily(_\d{4}_\d{4})?\.csv|stocknet_price_[A-Z]+\.csv)$", name):
        return "bars"
    if relative.startswith("news/") and re.search(r"\.csv(\.gz)?$", name):
        return "headlines"
    if name == "StockTable.txt":
        return "table"
    if relative.startswith("sentiment/") and name not in ("License.txt", "README.txt"):
        return "sentences"
    if relative.startswith("bybit/") and name.endswith(".json"):
        return "fixture"  # recorded exchange payloads, used by tests/test_bybit_data.py
    if name in ("SOURCES.md", "License.txt", "README.txt") or name.startswith("LICENSE"):
        return "document"
    return "unclassified"


def shared_files() -> list[str]:
    if not SHARED_DATA.is_dir():
        return []
    return sorted(str(p.relative_to(SHARED_DATA)) for p in SHARED_DATA.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def stated(shared_data):
    return stated_rows(shared_data / "SOURCES.md")


def test_every_file_is_classified_and_every_data_file_has_a_stated_count(shared_data, stated):
    files = shared_files()
    assert [f for f in files if kind(f) == "unclassified"] == []
    data_files = [f for f in files if kind(f) in ("bars", "headlines", "sentences", "table")]
    assert [f for f in data_files if stated.get(f) is None] == []
    assert [f for f, n in stated.items() if n is not None and f not in files] == []  # SOURCES.md names real files
    # the sets SOURCES.md describes today: 10 ohlcv files + 12 price files beside the news, 8 headline files
    assert len([f for f in files if kind(f) == "bars"]) >= 22 and len([f for f in files if kind(f) == "headlines"]) >= 8


@pytest.mark.parametrize("relative", [f for f in shared_files() if kind(f) == "bars"])
def test_bar_file_loads_with_the_stated_row_count(shared_data, stated, relative):
    loaded = load_bars(shared_data / relative)
    assert len(loaded.series) + loaded.dropped_rows == stated[relative] and loaded.dropped_rows == 0


@pytest.mark.parametrize("relative", [f for f in shared_files() if kind(f) == "headlines"])
def test_headline_file_loads_with_the_stated_row_count(shared_data, stated, relative):
    loaded = load_news(shared_data / relative, tz="America/New_York")
    assert len(loaded.items) > 0
    assert len(loaded.items) + loaded.duplicates_removed + loaded.empty_rows_skipped == stated[relative]


@pytest.mark.parametrize("relative", [f for f in shared_files() if kind(f) in ("sentences", "table")])
def test_sentence_sets_and_tables_have_the_stated_row_count(shared_data, stated, relative):
    path = shared_data / relative
    if path.suffix == ".txt" and kind(relative) == "sentences":  # sentence@label lines, Latin-1, CR/CRLF
        rows = [line for line in re.split(r"\r\n|\r|\n", path.read_bytes().decode("latin-1")) if line.strip()]
    else:
        rows = pd.read_csv(path, sep="\t" if path.suffix == ".txt" else ",")
    assert len(rows) == stated[relative]
