"""Enrichment of a validated event: user agent, bots, country and traffic source. Pure, no I/O."""

from engine.enrich.bots import BotDetector
from engine.enrich.geo import country_of
from engine.enrich.source import clean_referrer, referrer_and_source, source_of
from engine.enrich.useragent import UserAgentClassifier, UserAgentInfo

__all__ = [
    "BotDetector",
    "UserAgentClassifier",
    "UserAgentInfo",
    "clean_referrer",
    "country_of",
    "referrer_and_source",
    "source_of",
]
