"""Browser, OS and device from a user-agent string, named as Plausible's dashboard names them."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import ua_parser
from ua_parser import OS, Device, Domain, UserAgent

from engine.enrich.bots import BotDetector

DEFAULT_CACHE_SIZE: Final = 50_000
# Real agents stay well under this; longer ones are classified but not cached, so that junk
# headers cannot fill memory (50,000 entries of this size is still only ~50 MB).
MAX_CACHED_UA_CHARS: Final = 1000

# ua-parser families folded into the names people look for; anything else is kept as parsed.
BROWSER_NAMES: Final[dict[str, str]] = {
    "Chrome Mobile": "Chrome",
    "Chrome Mobile iOS": "Chrome",
    "Chrome Mobile WebView": "Chrome Webview",
    "Firefox Mobile": "Firefox",
    "Firefox iOS": "Firefox",
    "Mobile Safari": "Safari",
    "Mobile Safari UI/WKWebView": "Safari",
    "Edge Mobile": "Edge",
    "Opera Mobile": "Opera",
    "IE": "Internet Explorer",
    "IE Mobile": "Internet Explorer",
    "Other": "",
}
OS_NAMES: Final[dict[str, str]] = {
    "Mac OS X": "Mac",
    "Mac OS": "Mac",
    "macOS": "Mac",
    "Other": "",
}
# Distributions show as "Linux": their UAs rarely carry a version, and one row reads better.
LINUX_DISTROS: Final[frozenset[str]] = frozenset(
    {
        "Ubuntu",
        "Kubuntu",
        "Debian",
        "Fedora",
        "Red Hat",
        "CentOS",
        "SUSE",
        "openSUSE",
        "Gentoo",
        "Arch Linux",
        "Linux Mint",
        "Mageia",
        "Mandriva",
        "Slackware",
        "PCLinuxOS",
    }
)
MOBILE_OSES: Final[frozenset[str]] = frozenset(
    {"iOS", "Windows Phone", "BlackBerry OS", "KaiOS", "Symbian OS", "Firefox OS", "Tizen"}
)


@dataclass(frozen=True, slots=True)
class UserAgentInfo:
    browser: str
    browser_version: str
    os: str
    os_version: str
    device: str  # "Desktop" | "Mobile" | "Tablet"
    is_bot: bool


class UserAgentClassifier:
    """Classifies user agents; thread-safe, with a bounded LRU cache keyed by the UA string."""

    def __init__(self, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        # A parser without ua-parser's own cache: ours sits in front of it.
        matchers = (
            ua_parser.load_lazy_builtins()
            if ua_parser.RegexResolver or ua_parser.Re2Resolver
            else ua_parser.load_builtins()
        )
        self._resolver = ua_parser.BestAvailableResolver(matchers)
        self._bots = BotDetector()
        self._cached: Callable[[str], UserAgentInfo] = functools.lru_cache(maxsize=cache_size)(
            self._classify
        )

    def classify(self, ua: str) -> UserAgentInfo:
        if len(ua) > MAX_CACHED_UA_CHARS:
            return self._classify(ua)
        return self._cached(ua)

    def _classify(self, ua: str) -> UserAgentInfo:
        parsed = self._resolver(ua, Domain.ALL)
        browser, os, device = parsed.user_agent, parsed.os, parsed.device
        # ua-parser labels known crawlers as the "Spider" device.
        spider = device is not None and device.family == "Spider"
        return UserAgentInfo(
            browser=_browser_name(browser),
            browser_version=_version(browser.major, browser.minor) if browser else "",
            os=_os_name(os),
            os_version=_os_version(os),
            device=_device(ua, os, device),
            is_bot=spider or self._bots.is_bot(ua),
        )


def _version(major: str | None, minor: str | None) -> str:
    if not major:
        return ""
    return f"{major}.{minor}" if minor else major


def _browser_name(browser: UserAgent | None) -> str:
    if browser is None:
        return ""
    return BROWSER_NAMES.get(browser.family, browser.family)


def _os_name(os: OS | None) -> str:
    if os is None:
        return ""
    if os.family in LINUX_DISTROS:
        return "Linux"
    return OS_NAMES.get(os.family, os.family)


def _os_version(os: OS | None) -> str:
    # A distribution's release number would read as a Linux kernel version under "Linux".
    if os is None or os.family in LINUX_DISTROS:
        return ""
    return _version(os.major, os.minor)


def _device(ua: str, os: OS | None, device: Device | None) -> str:
    lower = ua.lower()
    family = device.family if device else ""
    brand = (device.brand or "") if device else ""
    os_family = os.family if os else ""
    if family.startswith("iPad") or "ipad" in lower or "tablet" in brand.lower():
        return "Tablet"
    if "kindle" in lower or "silk/" in lower:
        return "Tablet"
    if os_family == "Android":
        # Android phones carry a "Mobile" token; tablets (and Firefox's "Tablet;") do not.
        return "Mobile" if "mobile" in lower and "tablet" not in lower else "Tablet"
    if os_family in MOBILE_OSES or "iphone" in lower or "ipod" in lower or "mobi" in lower:
        return "Mobile"
    return "Desktop"
