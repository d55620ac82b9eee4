"""Referrer cleaning and traffic source names (`visit:referrer`, `visit:source`)."""

from __future__ import annotations

import functools
from typing import Final
from urllib.parse import urlsplit

# (referrer, page host, utm_source) triples whose answer is kept: a site's traffic comes from
# few referrers, so the cache spares both parses on almost every hit.
REFERRER_CACHE_SIZE: Final = 16_384

# Host suffix (matched at a dot boundary) -> source name as Plausible shows it.
SOURCE_BY_HOST: Final[dict[str, str]] = {
    "bing.com": "Bing",
    "duckduckgo.com": "DuckDuckGo",
    "baidu.com": "Baidu",
    "ecosia.org": "Ecosia",
    "search.brave.com": "Brave",
    "qwant.com": "Qwant",
    "startpage.com": "Startpage",
    "naver.com": "Naver",
    "seznam.cz": "Seznam",
    "ya.ru": "Yandex",
    "facebook.com": "Facebook",
    "fb.com": "Facebook",
    "fb.me": "Facebook",
    "messenger.com": "Facebook",
    "twitter.com": "Twitter",
    "t.co": "Twitter",
    "x.com": "Twitter",
    "linkedin.com": "LinkedIn",
    "lnkd.in": "LinkedIn",
    "reddit.com": "Reddit",
    "redd.it": "Reddit",
    "news.ycombinator.com": "Hacker News",
    "github.com": "GitHub",
    "youtube.com": "YouTube",
    "youtu.be": "YouTube",
    "instagram.com": "Instagram",
    "pinterest.com": "Pinterest",
    "pin.it": "Pinterest",
    "tiktok.com": "TikTok",
    "wikipedia.org": "Wikipedia",
}
# Brands that own a whole family of country domains (google.de, google.co.uk, yahoo.co.jp...):
# matched when the label is followed by a bare public suffix.
SOURCE_BY_BRAND: Final[dict[str, str]] = {
    "google": "Google",
    "bing": "Bing",
    "yahoo": "Yahoo!",
    "yandex": "Yandex",
    "baidu": "Baidu",
    "pinterest": "Pinterest",
}
# Second-level labels under a country code that form a public suffix (co.uk, com.br, ne.jp...).
_SECOND_LEVEL: Final[frozenset[str]] = frozenset(
    {"co", "com", "net", "org", "ac", "ne", "or", "gov", "edu", "gob", "go"}
)
# utm_source spellings (lowercased) -> source name; other values are kept as given.
SOURCE_BY_UTM: Final[dict[str, str]] = {
    "google": "Google",
    "adwords": "Google",
    "bing": "Bing",
    "duckduckgo": "DuckDuckGo",
    "ddg": "DuckDuckGo",
    "yahoo": "Yahoo!",
    "yandex": "Yandex",
    "baidu": "Baidu",
    "ecosia": "Ecosia",
    "brave": "Brave",
    "fb": "Facebook",
    "facebook": "Facebook",
    "twitter": "Twitter",
    "x": "Twitter",
    "linkedin": "LinkedIn",
    "reddit": "Reddit",
    "hn": "Hacker News",
    "hackernews": "Hacker News",
    "hacker news": "Hacker News",
    "hacker-news": "Hacker News",
    "github": "GitHub",
    "youtube": "YouTube",
    "yt": "YouTube",
    "ig": "Instagram",
    "instagram": "Instagram",
    "pinterest": "Pinterest",
    "tiktok": "TikTok",
    "wikipedia": "Wikipedia",
}


def _host_of(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not host:
        return None
    host = host.rstrip(".")
    return host[4:] if host.startswith("www.") else host


def clean_referrer(referrer: str, page_hostname: str) -> str:
    """`host/path` of an external http(s) referrer (no `www.`, query, fragment or trailing
    slash); "" when there is none or it is the page's own site."""
    referrer = referrer.strip()
    if not referrer:
        return ""
    host = _host_of(referrer)
    page_host = page_hostname.lower().rstrip(".")
    page_host = page_host[4:] if page_host.startswith("www.") else page_host
    if not host or host == page_host:
        return ""
    return host + urlsplit(referrer).path.rstrip("/")


def _source_of_host(host: str) -> str | None:
    labels = host.split(".")
    for i in range(len(labels)):
        name = SOURCE_BY_HOST.get(".".join(labels[i:]))
        if name:
            return name
    for i, label in enumerate(labels):
        if label in SOURCE_BY_BRAND and _is_public_suffix(labels[i + 1 :]):
            return SOURCE_BY_BRAND[label]
    return None


def _is_public_suffix(labels: list[str]) -> bool:
    # An approximation good enough for brand domains: "de", "com", "co.uk", "com.br".
    if len(labels) == 1:
        return len(labels[0]) >= 2 and labels[0].isalpha()
    if len(labels) == 2:
        return labels[0] in _SECOND_LEVEL and len(labels[1]) == 2 and labels[1].isalpha()
    return False


def source_of(utm_source: str, referrer_clean: str) -> str:
    """The visit's source: a known name for the UTM source or referrer host, else as given."""
    utm = utm_source.strip()
    if utm:
        known = SOURCE_BY_UTM.get(utm.lower())
        if known is None and "." in utm:
            # utm_source=google.com or =news.ycombinator.com names a host we know.
            host = utm.lower().rstrip(".")
            known = _source_of_host(host[4:] if host.startswith("www.") else host)
        return known or utm
    if not referrer_clean:
        return ""
    host = referrer_clean.split("/", 1)[0].lower()
    host = host[4:] if host.startswith("www.") else host
    return _source_of_host(host) or host


@functools.lru_cache(maxsize=REFERRER_CACHE_SIZE)
def referrer_and_source(referrer: str, page_hostname: str, utm_source: str) -> tuple[str, str]:
    """`clean_referrer` and the `source_of` it gives, cached (both are pure)."""
    clean = clean_referrer(referrer, page_hostname)
    return clean, source_of(utm_source, clean)
