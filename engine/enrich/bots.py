"""Bot detection beyond what the user-agent parser knows: crawlers and headless browsers."""

from __future__ import annotations

import re
from typing import Final

from crawlerdetect import CrawlerDetect

# Automation tools that announce themselves; crawlerdetect misses some of them, and a page load
# by a test runner or an auditing tool is not a visitor.
HEADLESS_MARKERS: Final[tuple[str, ...]] = (
    "headless",  # HeadlessChrome, HeadlessEdg, "Headless" Firefox builds
    "phantomjs",
    "slimerjs",
    "puppeteer",
    "playwright",
    "selenium",
    "webdriver",
    "cypress",
    "lighthouse",  # Chrome-Lighthouse, PageSpeed Insights
    "pagespeed",
    "gtmetrix",
    "jsdom",
    "zombie.js",
    "htmlunit",
)
_HEADLESS: Final = re.compile("|".join(map(re.escape, HEADLESS_MARKERS)), re.IGNORECASE)


class BotDetector:
    """Is a user agent a bot? Empty agents count as bots: every real browser sends one."""

    def __init__(self) -> None:
        self._crawlers = CrawlerDetect()

    def is_bot(self, ua: str) -> bool:
        if not ua.strip():
            return True
        if _HEADLESS.search(ua):
            return True
        return bool(self._crawlers.is_crawler(ua))
