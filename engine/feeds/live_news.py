"""Live headline sources for the paper-trading daemon: Yahoo Finance per-ticker news and RSS/Atom feeds.

Each poller is called again and again (the daemon's scheduler decides how often) and returns only
the headlines it has not returned before, oldest first, as ``News`` values. De-duplication uses the
item's id (guid / link) and, as a fallback and across sources, the headline text folded to lower case
with punctuation removed, so the same story re-published or syndicated is delivered once.

A headline's time is its publish time; one without a publish time gets the moment it was first seen
(never earlier: no lookahead). Network trouble raises ``TemporaryError`` (the next poll will try again);
a malformed item is skipped and counted, never fatal. Fetching is injectable for tests. Only http(s)
URLs are fetched, and an answer larger than ``MAX_RESPONSE_BYTES`` is refused after reading that much.
"""

from __future__ import annotations

import calendar
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from engine.domain.values import News
from engine.errors import ConfigError, TemporaryError

SEEN_LIMIT = 20_000  # keys remembered per poller (oldest forgotten first)
USER_AGENT = "llmtrader/0.1 (+news poller)"
MAX_RESPONSE_BYTES = 5 << 20  # a feed's answer (feeds are tens of KB); a larger one is refused
_SCHEMES = ("http", "https")


def fold(headline: str) -> str:
    """The headline as compared for duplicates: lower case, letters and digits only, single spaces."""
    return re.sub(r"[^0-9a-z]+", " ", headline.lower()).strip()


@dataclass
class _Seen:
    """A bounded set of keys, forgetting the oldest first."""

    limit: int = SEEN_LIMIT
    keys: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def add(self, key: str) -> bool:
        """True when ``key`` is new."""
        if key in self.keys:
            self.keys.move_to_end(key)
            return False
        self.keys[key] = None
        if len(self.keys) > self.limit:
            self.keys.popitem(last=False)
        return True

    def __contains__(self, key: str) -> bool:
        return key in self.keys


@dataclass(frozen=True, slots=True)
class Item:
    """One entry as a source gives it, before de-duplication."""

    key: str  # the source's id for it ("" when it has none)
    headline: str
    published_ms: int | None


class NewsPoller:
    """Base class: ``fetch_items()`` returns the source's current items; ``poll()`` the new ones."""

    source = "news"

    def __init__(self, symbol: str | None = None, *, clock: Callable[[], float] = time.time,
                 seen_limit: int = SEEN_LIMIT) -> None:
        self.symbol = symbol
        self.clock = clock
        self._seen = _Seen(seen_limit)
        self.polls = 0
        self.skipped = 0  # malformed items ignored
        self.duplicates = 0  # items already delivered (by id or by headline)

    def fetch_items(self) -> list[Item]:
        raise NotImplementedError

    def poll(self) -> list[News]:
        """Headlines not delivered before, sorted by time then headline."""
        self.polls += 1
        now_ms = int(self.clock() * 1000)
        fresh = []
        for item in self.fetch_items():
            headline = re.sub(r"\s+", " ", item.headline or "").strip()
            if not headline:
                self.skipped += 1
                continue
            keys = [f"id:{item.key}"] if item.key else []
            keys.append(f"text:{fold(headline)}")
            if any(k in self._seen for k in keys):
                self.duplicates += 1
                for k in keys:  # remember the other key too (an id seen first under another title)
                    self._seen.add(k)
                continue
            for k in keys:
                self._seen.add(k)
            ts = item.published_ms if item.published_ms is not None else now_ms
            fresh.append(News(ts_event=ts, headline=headline, symbol=self.symbol, source=self.source))
        return sorted(fresh, key=lambda n: (n.ts_event, n.headline))


class YahooNewsPoller(NewsPoller):
    """Yahoo Finance's latest news for one ticker (through yfinance)."""

    source = "yahoo"

    def __init__(self, ticker: str, *, count: int = 20, ticker_factory: Callable[[str], Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(ticker, **kwargs)
        self.ticker = ticker
        self.count = count
        self.ticker_factory = ticker_factory

    def fetch_items(self) -> list[Item]:
        factory = self.ticker_factory
        if factory is None:
            import yfinance as yf

            factory = yf.Ticker
        try:
            raw = factory(self.ticker).get_news(count=self.count)  # a new Ticker each poll: yfinance memoises news
        except Exception as exc:  # noqa: BLE001 - any failure of the request is temporary for a poller
            raise TemporaryError(f"Yahoo Finance news for {self.ticker}: {type(exc).__name__}: {exc}") from exc
        items = []
        for entry in raw or []:
            item = parse_yahoo_item(entry)
            if item is None:
                self.skipped += 1
            else:
                items.append(item)
        return items


def parse_yahoo_item(entry: Any) -> Item | None:
    """Both shapes yfinance has returned: ``{"id", "content": {"title", "pubDate", ...}}`` (2024+) and
    the older flat ``{"uuid", "title", "providerPublishTime"}``."""
    if not isinstance(entry, dict):
        return None
    content = entry.get("content") if isinstance(entry.get("content"), dict) else None
    if content is not None:
        title = content.get("title")
        when = _iso_ms(content.get("pubDate") or content.get("displayTime"))
        url = (content.get("canonicalUrl") or {}).get("url") if isinstance(content.get("canonicalUrl"), dict) else None
        key = str(entry.get("id") or content.get("id") or url or "")
    else:
        title = entry.get("title")
        published = entry.get("providerPublishTime")
        when = int(published) * 1000 if isinstance(published, int | float) else None
        key = str(entry.get("uuid") or entry.get("link") or "")
    if not isinstance(title, str) or not title.strip():
        return None
    return Item(key=key, headline=title, published_ms=when)


class RssPoller(NewsPoller):
    """An RSS or Atom feed, parsed with feedparser; fetched with a timeout (feedparser's own fetching
    has none)."""

    source = "rss"

    def __init__(self, url: str, symbol: str | None = None, *, timeout_s: float = 10.0,
                 fetch: Callable[[str, float], bytes] | None = None, **kwargs: Any) -> None:
        super().__init__(symbol, **kwargs)
        check_feed_url(url)
        self.url = url
        self.timeout_s = timeout_s
        self.fetch = fetch or fetch_url

    def fetch_items(self) -> list[Item]:
        import feedparser

        body = self.fetch(self.url, self.timeout_s)
        feed = feedparser.parse(body)
        if feed.bozo and not feed.entries:
            raise TemporaryError(f"RSS feed {self.url}: not a feed ({feed.get('bozo_exception')})")
        title = (feed.feed or {}).get("title")
        if title:
            self.source = f"rss:{title}"
        items = []
        for entry in feed.entries:
            headline = entry.get("title")
            if not headline:
                self.skipped += 1
                continue
            when = entry.get("published_parsed") or entry.get("updated_parsed")
            items.append(Item(key=str(entry.get("id") or entry.get("link") or ""), headline=headline,
                              published_ms=calendar.timegm(when) * 1000 if when else None))
        return items


def check_feed_url(url: str) -> None:
    """Refuse (``ConfigError``) a feed URL that is not http(s): urllib would also read ``file://`` and ``ftp://``."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in _SCHEMES:
        raise ConfigError(f"news feed {url!r}: only http(s) URLs are fetched"
                          f"{f', not {scheme}:' if scheme else ' (this is no URL)'}")


def fetch_url(url: str, timeout_s: float) -> bytes:
    """GET an http(s) ``url`` with a timeout, reading at most ``MAX_RESPONSE_BYTES``; network trouble,
    a redirect away from http(s) and a larger answer become ``TemporaryError``."""
    check_feed_url(url)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - checked: http(s) only
            landed = response.geturl()
            if urllib.parse.urlsplit(landed).scheme.lower() not in _SCHEMES:
                raise TemporaryError(f"{url}: redirected to {landed!r}, not an http(s) URL; not read")
            body = response.read(MAX_RESPONSE_BYTES + 1)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise TemporaryError(f"cannot fetch {url}: {getattr(exc, 'reason', exc)}") from exc
    if len(body) > MAX_RESPONSE_BYTES:
        raise TemporaryError(f"{url}: the answer is larger than {MAX_RESPONSE_BYTES:,} bytes; not read further "
                             "(a news feed is far smaller)")
    return body


class NewsHub:
    """Polls several sources; a headline delivered by one source is not delivered again by another
    (same symbol, same folded text). A source that fails is reported to ``on_error`` and skipped for
    that round, so one dead feed does not silence the others."""

    def __init__(self, pollers: Sequence[NewsPoller],
                 on_error: Callable[[NewsPoller, Exception], None] | None = None) -> None:
        self.pollers = list(pollers)
        self.on_error = on_error
        self._seen = _Seen()
        self.errors = 0

    def poll(self) -> list[News]:
        out = []
        for poller in self.pollers:
            try:
                items = poller.poll()
            except TemporaryError as exc:
                self.errors += 1
                if self.on_error is None:
                    raise
                self.on_error(poller, exc)
                continue
            out.extend(n for n in items if self._seen.add(f"{n.symbol}|{fold(n.headline)}"))
        return sorted(out, key=lambda n: (n.ts_event, n.headline))


def _iso_ms(text: Any) -> int | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp() * 1000)
