"""Live headline pollers: Yahoo per-ticker news (both item shapes yfinance has returned) and RSS / Atom
through feedparser, each de-duplicated across polls and across sources; timeouts and bad feeds."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine.domain.values import News
from engine.errors import TemporaryError
from engine.feeds.live_news import NewsHub, RssPoller, YahooNewsPoller, fetch_url, fold, parse_yahoo_item
from engine.timeutil import parse_instant

NOW = parse_instant("2024-05-01T12:00") / 1000


def new_item(uid, title, when="2024-05-01T10:00:00Z"):
    return {"id": uid, "content": {"id": uid, "contentType": "STORY", "title": title, "pubDate": when,
                                   "provider": {"displayName": "Reuters"},
                                   "canonicalUrl": {"url": f"https://finance.yahoo.com/news/{uid}.html"}}}


class Ticker:
    """Stands in for yf.Ticker: each instance serves the next scripted batch from get_news."""

    batches: list[list[dict]] = []

    def __init__(self, symbol):
        self.symbol = symbol

    def get_news(self, count=10):
        return Ticker.batches.pop(0)


def yahoo_poller(*batches):
    Ticker.batches = list(batches)
    return YahooNewsPoller("AAPL", ticker_factory=Ticker, clock=lambda: NOW)


def test_yahoo_poll_returns_only_new_headlines_sorted():
    poller = yahoo_poller(
        [new_item("b", "Apple beats estimates", "2024-05-01T11:00:00Z"), new_item("a", "Apple opens store")],
        [new_item("a", "Apple opens store"), new_item("c", "Apple  recalls  cables", "2024-05-01T11:30:00Z")],
    )
    first = poller.poll()
    assert [(n.headline, n.ts_event, n.symbol, n.source) for n in first] == [
        ("Apple opens store", parse_instant("2024-05-01T10:00"), "AAPL", "yahoo"),
        ("Apple beats estimates", parse_instant("2024-05-01T11:00"), "AAPL", "yahoo"),
    ]
    assert [n.headline for n in poller.poll()] == ["Apple recalls cables"]
    assert poller.duplicates == 1 and poller.polls == 2


def test_same_story_under_a_new_id_is_a_duplicate_by_its_text():
    poller = yahoo_poller([new_item("a", "Apple opens store")], [new_item("z", "APPLE opens store!")])
    poller.poll()
    assert poller.poll() == [] and poller.duplicates == 1


def test_old_flat_yahoo_shape_and_malformed_items():
    old = {"uuid": "u1", "title": "Old shape", "publisher": "Motley Fool", "link": "https://x/1",
           "providerPublishTime": 1714557600}
    assert parse_yahoo_item(old).published_ms == 1714557600_000
    poller = yahoo_poller([old, {"content": {"title": ""}}, "junk", new_item("n", "No date", when=None)])
    items = poller.poll()
    assert [(n.headline, n.ts_event) for n in items] == [("Old shape", 1714557600_000), ("No date", int(NOW * 1000))]
    assert poller.skipped == 2


def test_yahoo_failure_is_temporary():
    class Broken:
        def __init__(self, symbol):
            pass

        def get_news(self, count=10):
            raise ConnectionError("Could not resolve host")

    with pytest.raises(TemporaryError, match="Yahoo Finance news for AAPL: ConnectionError"):
        YahooNewsPoller("AAPL", ticker_factory=Broken).poll()


RSS = """<?xml version="1.0"?>
<rss version="2.0"><channel><title>Markets</title>
<item><title>Fed holds rates</title><guid>g1</guid><pubDate>Wed, 01 May 2024 18:00:00 GMT</pubDate></item>
<item><title>Oil slips</title><link>https://news/2</link><pubDate>Wed, 01 May 2024 14:00:00 +0200</pubDate></item>
<item><title>Undated</title><guid>g3</guid></item>
<item><description>no title</description><guid>g4</guid></item>
</channel></rss>"""

ATOM = """<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Crypto</title>
<entry><title>Bitcoin rallies</title><id>urn:1</id><updated>2024-05-01T09:15:00Z</updated></entry>
<entry><title>Fed holds rates</title><id>urn:2</id><updated>2024-05-01T18:01:00Z</updated></entry>
</feed>"""


def test_rss_items_parsed_with_times_in_utc_and_deduplicated():
    bodies = [RSS.encode(), RSS.encode()]
    poller = RssPoller("https://feeds/markets", fetch=lambda url, timeout: bodies.pop(0), clock=lambda: NOW)
    items = poller.poll()
    assert [(n.headline, n.ts_event) for n in items] == [
        ("Oil slips", parse_instant("2024-05-01T12:00")),
        ("Undated", int(NOW * 1000)),
        ("Fed holds rates", parse_instant("2024-05-01T18:00")),
    ]
    assert items[0].source == "rss:Markets" and poller.skipped == 1
    assert poller.poll() == [] and poller.duplicates == 3


def test_atom_feed_and_cross_source_dedupe_in_the_hub():
    rss = RssPoller("https://a", fetch=lambda url, timeout: RSS.encode(), clock=lambda: NOW)
    atom = RssPoller("https://b", fetch=lambda url, timeout: ATOM.encode(), clock=lambda: NOW)
    hub = NewsHub([rss, atom])
    headlines = [n.headline for n in hub.poll()]
    assert headlines.count("Fed holds rates") == 1 and "Bitcoin rallies" in headlines
    assert hub.poll() == []


def test_a_failing_source_does_not_silence_the_others():
    errors = []

    def down(url, timeout):
        raise TemporaryError("cannot fetch https://down: timed out")

    hub = NewsHub([RssPoller("https://down", fetch=down), RssPoller("https://b", fetch=lambda u, t: ATOM.encode())],
                  on_error=lambda poller, exc: errors.append(str(exc)))
    assert [n.headline for n in hub.poll()] == ["Bitcoin rallies", "Fed holds rates"]
    assert errors == ["cannot fetch https://down: timed out"] and hub.errors == 1


def test_not_a_feed_is_a_temporary_error():
    with pytest.raises(TemporaryError, match="not a feed"):
        RssPoller("https://x", fetch=lambda url, timeout: b"<html><body>maintenance").poll()


def test_fold_ignores_case_punctuation_and_spacing():
    assert fold("  Apple's  Q2: BEATS!! ") == fold("apple s q2 beats") == "apple s q2 beats"


@pytest.fixture
def slow_server():
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            if self.path == "/slow":
                time.sleep(1.0)
            body = RSS.encode()
            try:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetch_url_reads_a_feed_and_times_out_quickly(slow_server):
    poller = RssPoller(f"{slow_server}/feed", timeout_s=2)
    assert len(poller.poll()) == 3
    started = time.monotonic()
    with pytest.raises(TemporaryError, match="cannot fetch"):
        fetch_url(f"{slow_server}/slow", 0.2)
    assert time.monotonic() - started < 0.9


def test_unreachable_feed_is_a_temporary_error():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TemporaryError, match="cannot fetch"):
        fetch_url(f"http://127.0.0.1:{port}/rss", 1.0)


def test_news_values_are_plain_engine_news():
    poller = yahoo_poller([new_item("a", "Apple opens store")])
    (item,) = poller.poll()
    assert isinstance(item, News)
