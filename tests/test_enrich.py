"""User agent, bot, country and source enrichment."""

from __future__ import annotations

import ipaddress
import re
import string

import iptocc
import pytest
from crawlerdetect import CrawlerDetect
from crawlerdetect.providers.crawlers import data as CRAWLER_PATTERNS
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.enrich import (
    BotDetector,
    UserAgentClassifier,
    UserAgentInfo,
    clean_referrer,
    country_of,
    referrer_and_source,
    source_of,
)
from engine.enrich.bots import _RustCrawlerMatcher, crawler_matcher

CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1.2 Mobile/15E148 Safari/604.1"
)
SAFARI_IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/16.6 Mobile/15E148 Safari/604.1"
)
CHROME_ANDROID_PHONE = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.43 Mobile Safari/537.36"
)
CHROME_ANDROID_TABLET = (
    "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/119.0.0.0 Safari/537.36"
)
FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
FIREFOX_UBUNTU = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
EDGE = CHROME_WINDOWS + " Edg/120.0.2210.61"
SAFARI_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Safari/605.1.15"
)
CHROME_IOS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) CriOS/120.0.6099.119 Mobile/15E148 Safari/604.1"
)
FIREFOX_ANDROID = "Mozilla/5.0 (Android 14; Mobile; rv:121.0) Gecko/121.0 Firefox/121.0"
FIREFOX_ANDROID_TABLET = "Mozilla/5.0 (Android 14; Tablet; rv:121.0) Gecko/121.0 Firefox/121.0"
SAMSUNG = (
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36"
)
OPERA = CHROME_WINDOWS + " OPR/106.0.0.0"
CHROMEBOOK = (
    "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
HEADLESS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/120.0.6099.28 Safari/537.36"
)
LIGHTHOUSE = CHROME_WINDOWS + " Chrome-Lighthouse"
PHANTOM = (
    "Mozilla/5.0 (Unknown; Linux x86_64) AppleWebKit/538.1 (KHTML, like Gecko) "
    "PhantomJS/2.1.1 Safari/538.1"
)


@pytest.fixture(scope="module")
def classifier() -> UserAgentClassifier:
    return UserAgentClassifier(cache_size=1000)


@pytest.mark.parametrize(
    ("ua", "expected"),
    [
        (CHROME_WINDOWS, ("Chrome", "120.0", "Windows", "10", "Desktop")),
        (SAFARI_IPHONE, ("Safari", "17.1", "iOS", "17.1", "Mobile")),
        (SAFARI_IPAD, ("Safari", "16.6", "iOS", "16.6", "Tablet")),
        (CHROME_ANDROID_PHONE, ("Chrome", "120.0", "Android", "14", "Mobile")),
        (CHROME_ANDROID_TABLET, ("Chrome", "119.0", "Android", "13", "Tablet")),
        (FIREFOX_LINUX, ("Firefox", "121.0", "Linux", "", "Desktop")),
        (FIREFOX_UBUNTU, ("Firefox", "121.0", "Linux", "", "Desktop")),
        (EDGE, ("Edge", "120.0", "Windows", "10", "Desktop")),
        (SAFARI_MAC, ("Safari", "17.1", "Mac", "10.15", "Desktop")),
        (CHROME_IOS, ("Chrome", "120.0", "iOS", "17.1", "Mobile")),
        (FIREFOX_ANDROID, ("Firefox", "121.0", "Android", "14", "Mobile")),
        (FIREFOX_ANDROID_TABLET, ("Firefox", "121.0", "Android", "14", "Tablet")),
        (SAMSUNG, ("Samsung Internet", "23.0", "Android", "14", "Mobile")),
        (OPERA, ("Opera", "106.0", "Windows", "10", "Desktop")),
        (CHROMEBOOK, ("Chrome", "120.0", "Chrome OS", "14541.0", "Desktop")),
    ],
)
def test_browsers(classifier: UserAgentClassifier, ua: str, expected: tuple[str, ...]) -> None:
    info = classifier.classify(ua)
    assert (info.browser, info.browser_version, info.os, info.os_version, info.device) == expected
    assert info.is_bot is False


@pytest.mark.parametrize(
    "ua",
    [
        GOOGLEBOT,
        HEADLESS,
        LIGHTHOUSE,
        PHANTOM,
        CHROME_WINDOWS + " Puppeteer",
        CHROME_WINDOWS + " Cypress/13.6.0",
        "curl/8.4.0",
        "python-requests/2.31.0",
        "Wget/1.21.4",
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        "",
        "   ",
    ],
)
def test_bots(classifier: UserAgentClassifier, ua: str) -> None:
    assert classifier.classify(ua).is_bot is True


def test_unknown_values_are_empty(classifier: UserAgentClassifier) -> None:
    info = classifier.classify("something/odd")
    assert (info.os, info.os_version, info.device) == ("", "", "Desktop")
    assert classifier.classify("").browser == ""


def test_cache_returns_same_object(classifier: UserAgentClassifier) -> None:
    assert classifier.classify(CHROME_WINDOWS) is classifier.classify(CHROME_WINDOWS)


def test_very_long_agents_are_classified_uncached(classifier: UserAgentClassifier) -> None:
    long_ua = CHROME_WINDOWS + " x" * 1000
    info = classifier.classify(long_ua)
    assert info.browser == "Chrome"
    assert classifier.classify(long_ua) == info


def test_bot_detector_alone() -> None:
    bots = BotDetector()
    assert bots.is_bot(HEADLESS) and bots.is_bot("") and not bots.is_bot(SAFARI_IPHONE)


@settings(max_examples=200, deadline=None)
@given(ua=st.text(max_size=300))
def test_classify_never_fails(classifier: UserAgentClassifier, ua: str) -> None:
    info = classifier.classify(ua)
    assert isinstance(info, UserAgentInfo)
    assert info.device in {"Desktop", "Mobile", "Tablet"}


# --- geo ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("8.8.8.8", "US"),
        ("81.2.69.160", "GB"),
        ("::ffff:81.2.69.160", "GB"),
        ("2a00:1450:4001:80b::200e", "IE"),
        (" 8.8.8.8 ", "US"),
        ("10.0.0.1", ""),
        ("192.168.1.1", ""),
        ("127.0.0.1", ""),
        ("::1", ""),
        ("fe80::1", ""),
        ("2001:db8::1", ""),
        ("", ""),
        ("not an ip", ""),
        ("300.1.1.1", ""),
    ],
)
def test_country_of(ip: str, expected: str) -> None:
    assert country_of(ip) == expected


@given(st.ip_addresses().map(str) | st.text(max_size=40))
def test_country_is_two_uppercase_letters_or_empty(ip: str) -> None:
    code = country_of(ip)
    assert code == "" or (len(code) == 2 and code.isalpha() and code.isupper())


def reference_country(ip: str) -> str:
    """country_of as it was before its IPv4 fast path: ipaddress's parser only."""
    try:
        addr = ipaddress.ip_address(ip.strip())
    except ValueError:
        return ""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if not addr.is_global:
        return ""
    code = iptocc.country_code(str(addr))
    if not code or len(code) != 2 or not code.isalpha() or code.upper() == "ZZ":
        return ""
    return code.upper()


@given(
    st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
    | st.ip_addresses().map(str)
    | st.from_regex(r"\A *[0-9]{1,4}(\.[0-9]{1,4}){0,4} *\Z")
    | st.text(alphabet="0123456789.:xabf \x00", max_size=24)
    | st.text(max_size=40)
)
@settings(max_examples=2000)
def test_country_fast_path_agrees_with_ipaddress(ip: str) -> None:
    assert country_of(ip) == reference_country(ip)


# --- referrer and source --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("referrer", "page_host", "expected"),
    [
        ("https://news.ycombinator.com/item?id=1", "example.com", "news.ycombinator.com/item"),
        ("https://www.google.com/", "example.com", "google.com"),
        ("https://www.google.com", "example.com", "google.com"),
        ("http://blog.test/a/b/#top", "example.com", "blog.test/a/b"),
        ("https://user:pw@Blog.Test:8080/x?y", "example.com", "blog.test/x"),
        ("https://www.example.com/other", "example.com", ""),
        ("https://example.com/other", "www.example.com", ""),
        ("https://sub.example.com/", "example.com", "sub.example.com"),
        ("", "example.com", ""),
        ("   ", "example.com", ""),
        ("android-app://com.google.android.gm/", "example.com", ""),
        ("ftp://files.test/", "example.com", ""),
        ("not a url", "example.com", ""),
        ("http://[::1", "example.com", ""),
        ("https:///nohost", "example.com", ""),
    ],
)
def test_clean_referrer(referrer: str, page_host: str, expected: str) -> None:
    assert clean_referrer(referrer, page_host) == expected


@given(
    st.sampled_from(["", "https://www.google.com/", "http://t.co/x", "https://example.com/a"])
    | st.text(max_size=60),
    st.sampled_from(["example.com", "www.example.com", ""]),
    st.sampled_from(["", "google", "news.ycombinator.com", "Newsletter"]) | st.text(max_size=10),
)
def test_cached_referrer_and_source_agree(referrer: str, page_host: str, utm: str) -> None:
    clean = clean_referrer(referrer, page_host)
    expected = (clean, source_of(utm, clean))
    assert referrer_and_source(referrer, page_host, utm) == expected
    assert referrer_and_source(referrer, page_host, utm) == expected  # from the cache


@settings(max_examples=300)
@given(
    st.one_of(
        st.text(max_size=80),
        st.builds(lambda rest: "https://" + rest, st.text(max_size=80)),
    ),
    st.text(max_size=20),
)
def test_clean_referrer_has_no_query(referrer: str, page_host: str) -> None:
    cleaned = clean_referrer(referrer, page_host)
    assert "?" not in cleaned and "#" not in cleaned
    assert not cleaned.endswith("/") and not cleaned.startswith("www.")


@pytest.mark.parametrize(
    ("referrer", "expected"),
    [
        ("google.com", "Google"),
        ("google.co.uk", "Google"),
        ("google.de/search", "Google"),
        ("google.com.br", "Google"),
        ("news.google.com", "Google"),
        ("bing.com/search", "Bing"),
        ("duckduckgo.com", "DuckDuckGo"),
        ("search.yahoo.com/search", "Yahoo!"),
        ("yahoo.co.jp", "Yahoo!"),
        ("yandex.ru", "Yandex"),
        ("baidu.com/s", "Baidu"),
        ("ecosia.org/search", "Ecosia"),
        ("search.brave.com/search", "Brave"),
        ("m.facebook.com", "Facebook"),
        ("l.facebook.com/l.php", "Facebook"),
        ("t.co/abc", "Twitter"),
        ("x.com/someone", "Twitter"),
        ("twitter.com", "Twitter"),
        ("lnkd.in/xyz", "LinkedIn"),
        ("linkedin.com/feed", "LinkedIn"),
        ("old.reddit.com/r/python", "Reddit"),
        ("news.ycombinator.com/item", "Hacker News"),
        ("github.com/org/repo", "GitHub"),
        ("youtube.com/watch", "YouTube"),
        ("instagram.com", "Instagram"),
        ("pinterest.com/pin/1", "Pinterest"),
        ("tiktok.com", "TikTok"),
        ("en.wikipedia.org/wiki/Foo", "Wikipedia"),
        ("blog.test/post", "blog.test"),
        ("www.blog.test", "blog.test"),
        ("google.evil.test", "google.evil.test"),
        ("notgoogle.com", "notgoogle.com"),
        ("ycombinator.com", "ycombinator.com"),
        ("phonex.com", "phonex.com"),
        ("", ""),
    ],
)
def test_source_from_referrer(referrer: str, expected: str) -> None:
    assert source_of("", referrer) == expected


@pytest.mark.parametrize(
    ("utm", "expected"),
    [
        ("google", "Google"),
        ("GOOGLE", "Google"),
        ("fb", "Facebook"),
        ("facebook", "Facebook"),
        ("x", "Twitter"),
        ("twitter", "Twitter"),
        ("news.ycombinator.com", "Hacker News"),
        ("www.google.co.uk", "Google"),
        ("Newsletter", "Newsletter"),
        (" Newsletter ", "Newsletter"),
        ("partner.test", "partner.test"),
    ],
)
def test_source_from_utm(utm: str, expected: str) -> None:
    assert source_of(utm, "bing.com") == expected


def test_blank_utm_falls_back_to_referrer() -> None:
    assert source_of("  ", "duckduckgo.com") == "DuckDuckGo"


# --- the Rust crawler matcher agrees with crawlerdetect ----------------------------------------

REAL_AGENTS = [
    CHROME_WINDOWS,
    SAFARI_IPHONE,
    SAFARI_IPAD,
    CHROME_ANDROID_PHONE,
    CHROME_ANDROID_TABLET,
    FIREFOX_LINUX,
    EDGE,
    SAFARI_MAC,
    CHROME_IOS,
    SAMSUNG,
    OPERA,
    GOOGLEBOT,
    HEADLESS,
    "curl/8.4.0",
    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
    "Mozilla/5.0 (Linux; Android 10) YandexSearch/8.10 Mobile Safari/537.36",
    "Go-http-client/2.0",
]


def reference_is_crawler(ua: str) -> bool:
    return bool(ua.strip()) and bool(CrawlerDetect().is_crawler(ua))


def test_rust_matcher_agrees_on_literal_patterns_and_real_agents() -> None:
    fast = _RustCrawlerMatcher()
    literals = [p for p in CRAWLER_PATTERNS if re.fullmatch(r"[A-Za-z0-9 _-]+", p)]
    assert len(literals) > 500
    corpus = REAL_AGENTS + literals + [f"{CHROME_WINDOWS} {p.upper()}" for p in literals]
    assert [fast(u) for u in corpus] == [reference_is_crawler(u) for u in corpus]


@settings(max_examples=300)
@given(st.text(alphabet=string.printable, max_size=80))
def test_rust_matcher_agrees_on_ascii_text(ua: str) -> None:
    assert crawler_matcher()(ua) == reference_is_crawler(ua)
