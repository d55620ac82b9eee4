"""Ingest: validate, enrich, hash the visitor, drop bots and unknown sites, produce hits.

Nothing here stores or logs a client address or a clear visitor identity: the address is used
for the country lookup, the rate limiter's in-memory bucket key (hashed) and the visitor hash,
and is gone when the request ends.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import Counter

from config import Settings
from engine.enrich import UserAgentClassifier, country_of, referrer_and_source
from engine.errors import InputError
from engine.event_input import ParsedEvent, parse_event_body, parse_import_line
from engine.hits import Hit
from engine.kafka import HitProducer
from engine.ratelimit import SharedRateLimiter
from engine.rejections import reason_of, reject
from engine.visitor import Salts, SaltStore, visitor_id

ACCEPTED = Counter("rollup_ingest_accepted_total", "Hits accepted and acknowledged by the broker")
DROPPED = Counter("rollup_ingest_dropped_total", "Events dropped on purpose", ["reason"])
REJECTED = Counter("rollup_ingest_rejected_total", "Requests rejected as invalid", ["field"])
UNAVAILABLE = Counter("rollup_ingest_unavailable_total", "Requests answered 503")
VITALS_DROPPED = Counter(
    "rollup_ingest_vitals_dropped_total",
    "Web vitals dropped as invalid or absurd (the event is kept)",
    ["vital", "reason"],
)

MAX_IMPORT_ERRORS = 100


def count_rejection(error: InputError, endpoint: str = "event") -> None:
    for field_name in error.errors:
        REJECTED.labels(field_name).inc()
    reject(endpoint, reason_of(error))


def count_dropped_vitals(event: ParsedEvent) -> None:
    for vital, reason in event.dropped_vitals:
        VITALS_DROPPED.labels(vital, reason).inc()


class SiteDirectory:
    """The known sites and their timezones, refreshed in the background by the app."""

    def __init__(self) -> None:
        self.timezones: dict[str, str] = {}

    def update(self, timezones: dict[str, str]) -> None:
        self.timezones = timezones


@dataclass
class IngestResult:
    accepted: int = 0
    dropped: int = 0
    rate_limited: bool = False
    retry_after: int = 0


@dataclass
class ImportResult:
    accepted: int = 0
    dropped: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "dropped": self.dropped, "errors": self.errors}


def client_address(peer: str | None, forwarded_for: str | None, trusted: list[str]) -> str:
    """The socket address, or the first valid X-Forwarded-For entry if the peer is trusted."""
    peer = peer or ""
    if forwarded_for and peer and _in_networks(peer, trusted):
        for candidate in forwarded_for.split(","):
            candidate = candidate.strip()
            try:
                return str(ipaddress.ip_address(candidate))
            except ValueError:
                continue
    return peer


def _in_networks(address: str, networks: Iterable[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(net, strict=False) for net in networks)


class Ingestor:
    def __init__(
        self,
        settings: Settings,
        producer: HitProducer,
        salts: SaltStore,
        sites: SiteDirectory,
        classifier: UserAgentClassifier | None = None,
        limiter: SharedRateLimiter | None = None,
    ) -> None:
        self._settings = settings
        self._producer = producer
        self._salts = salts
        self._sites = sites
        self._classifier = classifier or UserAgentClassifier()
        self._limiter = limiter
        self._limited = limiter is not None and (
            settings.ingest_rate_limit > 0 or settings.ingest_site_rate_limit > 0
        )

    async def _rate_limited(
        self, event: ParsedEvent, client_ip: str, salt: bytes, result: IngestResult
    ) -> frozenset[str]:
        """The known sites of this event that the client (or the site as a whole) is over its
        limit for. Shared through Redis; the client bucket is a salted hash, never the address."""
        s = self._settings
        if self._limiter is None or (s.ingest_rate_limit <= 0 and s.ingest_site_rate_limit <= 0):
            return frozenset()
        blocked: set[str] = set()
        for domain in event.domains:
            if domain not in self._sites.timezones:
                continue  # dropped anyway; unknown names must not grow Redis
            if s.ingest_rate_limit > 0:
                bucket = hashlib.blake2b(
                    f"{client_ip}|{domain}".encode(), key=salt, digest_size=12
                ).hexdigest()
                decision = await self._limiter.hit("ingest_client", bucket, s.ingest_rate_limit, 1)
                if not decision.allowed:
                    blocked.add(domain)
                    result.retry_after = max(result.retry_after, decision.retry_after)
                    continue
            if s.ingest_site_rate_limit > 0:
                decision = await self._limiter.hit(
                    "ingest_site", domain, s.ingest_site_rate_limit, 1
                )
                if not decision.allowed:
                    blocked.add(domain)
                    result.retry_after = max(result.retry_after, decision.retry_after)
        return frozenset(blocked)

    async def event(self, body: bytes, user_agent: str | None, client_ip: str) -> IngestResult:
        """One `/api/event` request. Raises InputError (400) or UnavailableError (503)."""
        if not user_agent:
            error = InputError({"user_agent": ["the User-Agent header is required"]})
            count_rejection(error)
            raise error
        try:
            event = parse_event_body(body)
        except InputError as error:
            count_rejection(error)
            raise
        count_dropped_vitals(event)
        now = time.time()
        salts = await self._salts.salts_at(now)
        result = IngestResult()
        blocked: frozenset[str] = frozenset()
        if self._limited:  # skip the coroutine when no limit is set (the usual embedded case)
            blocked = await self._rate_limited(event, client_ip, salts.current, result)
        hits = self._hits(event, now, user_agent, client_ip, salts, result, "event", blocked)
        if hits:
            await self._producer.submit(hits)
            ACCEPTED.inc(len(hits))
            result.accepted = len(hits)
        return result

    async def bulk(self, lines: Iterable[bytes]) -> ImportResult:
        """NDJSON import: each line an event body plus timestamp, ip and user_agent."""
        result = ImportResult()
        now = dt.datetime.now(dt.UTC)
        salts = await self._salts.salts(now)
        yesterday = salts.previous or await self._salts.yesterdays(now)
        # Days older than yesterday have no salt left: each gets one that lives only for this
        # request.
        day_salts = {now.date(): salts.current, now.date() - dt.timedelta(days=1): yesterday}
        hits: list[Hit] = []
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)
                if not isinstance(obj, dict):
                    raise InputError({"body": ["each line must be a JSON object"]})
                event, ts, ip, user_agent = parse_import_line(obj, now=now.timestamp())
            except orjson.JSONDecodeError:
                self._import_error(result, number, {"body": ["invalid JSON"]})
                continue
            except InputError as error:
                self._import_error(result, number, error.errors)
                continue
            count_dropped_vitals(event)
            day = dt.datetime.fromtimestamp(ts, dt.UTC).date()
            salt = day_salts.setdefault(day, os.urandom(16))
            # The day before gets a salt too, so sessions of this import span midnight.
            previous = day_salts.setdefault(day - dt.timedelta(days=1), os.urandom(16))
            line_result = IngestResult()
            hits.extend(
                self._hits(event, ts, user_agent, ip, Salts(salt, previous), line_result, "import")
            )
            result.dropped += line_result.dropped
        for start in range(0, len(hits), 5000):
            chunk = hits[start : start + 5000]
            await self._producer.submit(chunk)
            ACCEPTED.inc(len(chunk))
        result.accepted = len(hits)
        return result

    @staticmethod
    def _import_error(result: ImportResult, line: int, errors: dict[str, list[str]]) -> None:
        count_rejection(InputError(errors), "import")
        if len(result.errors) < MAX_IMPORT_ERRORS:
            result.errors.append({"line": line, "errors": errors})

    def _hits(
        self,
        event: ParsedEvent,
        ts: float,
        user_agent: str,
        client_ip: str,
        salts: Salts,
        result: IngestResult,
        endpoint: str,
        blocked: frozenset[str] = frozenset(),
    ) -> list[Hit]:
        ua = self._classifier.classify(user_agent)
        if ua.is_bot:
            DROPPED.labels("bot").inc(len(event.domains))
            reject(endpoint, "bot", len(event.domains))
            result.dropped += len(event.domains)
            return []
        country = country_of(client_ip)
        referrer, source = referrer_and_source(event.referrer, event.hostname, event.utm_source)
        hits: list[Hit] = []
        # Whole milliseconds, as ClickHouse stores them: every table then puts a hit at
        # hh:mm:59.9996 in the same minute.
        ts = math.floor(ts * 1000) / 1000
        for domain in event.domains:
            timezone = self._sites.timezones.get(domain)
            if timezone is None:
                DROPPED.labels("unknown_site").inc()
                reject(endpoint, "unknown_site")
                result.dropped += 1
                continue
            if domain in blocked:
                reject(endpoint, "rate_limited")
                result.rate_limited = True
                result.dropped += 1
                continue
            prev = (
                visitor_id(salts.previous, user_agent, client_ip, domain) if salts.previous else 0
            )
            hits.append(
                Hit(
                    ts=ts,
                    site=domain,
                    tz=timezone,
                    name=event.name,
                    vid=visitor_id(salts.current, user_agent, client_ip, domain),
                    vid_prev=prev,
                    hostname=event.hostname,
                    page=event.page,
                    referrer=referrer,
                    source=source,
                    utm_source=event.utm_source,
                    utm_medium=event.utm_medium,
                    utm_campaign=event.utm_campaign,
                    utm_content=event.utm_content,
                    utm_term=event.utm_term,
                    device=ua.device,
                    browser=ua.browser,
                    browser_version=ua.browser_version,
                    os=ua.os,
                    os_version=ua.os_version,
                    country=country,
                    props=event.props,
                    interactive=event.interactive,
                    revenue=dict(event.revenue) if event.revenue else None,
                    vitals=event.vitals,
                )
            )
        return hits
