"""The enriched hit: what ingest writes to the `hits` topic, one MessagePack map per Kafka message.

A hit carries no client address and no clear visitor identity: only the salted 64-bit hash.
"""

from __future__ import annotations

from typing import Any, TypedDict, cast

from engine import codec

CODEC_VERSION = 1


class Hit(TypedDict):
    ts: float  # event time, epoch seconds UTC
    site: str  # the site's domain
    tz: str  # the site's IANA timezone, for day rollups in local time
    name: str
    vid: int  # salted visitor hash, unsigned 64-bit
    vid_prev: int  # the same under yesterday's salt (0 if none), so sessions span rotation
    hostname: str
    page: str
    referrer: str
    source: str
    utm_source: str
    utm_medium: str
    utm_campaign: str
    utm_content: str
    utm_term: str
    device: str
    browser: str
    browser_version: str
    os: str
    os_version: str
    country: str
    props: dict[str, str]
    interactive: bool
    revenue: dict[str, Any] | None
    vitals: dict[str, float] | None


# Web vitals a hit may carry, in the order of the store's columns.
VITALS: tuple[str, ...] = ("ttfb", "fcp", "lcp", "inp", "cls")


def encode_hits(hits: list[Hit]) -> bytes:
    return codec.pack({"v": CODEC_VERSION, "hits": hits})


def decode_hits(payload: bytes) -> list[Hit]:
    body = codec.unpack(payload)
    if not isinstance(body, dict) or body.get("v") != CODEC_VERSION:
        raise ValueError("not a hits message of codec version 1")
    return cast(list[Hit], body["hits"])
