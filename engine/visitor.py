"""Salted visitor ids: a keyed hash of (user agent, client address, site), salt rotated daily.

Salts live in Redis so that every ingest process agrees; each day's salt expires 48 hours after
its day began, which keeps yesterday's salt available for sessions that span midnight.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from engine.errors import UnavailableError

SALT_BYTES = 16
SALT_KEY = "rollup:salt:{day}"


def visitor_id(salt: bytes, user_agent: str, client_ip: str, site: str) -> int:
    """Unsigned 64-bit id; irreversible without the salt, which is deleted after 48 hours."""
    digest = hashlib.blake2b(
        b"\x00".join((user_agent.encode(), client_ip.encode(), site.encode())),
        key=salt,
        digest_size=8,
    ).digest()
    return int.from_bytes(digest, "big")


def salt_expiry(day: dt.date) -> int:
    """Epoch second at which the salt of `day` must be gone: 48 hours after the day began."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    return int((start + dt.timedelta(hours=48)).timestamp())


@dataclass
class Salts:
    current: bytes
    previous: bytes | None


class SaltStore:
    """Fetches (creating on first use) the salts of today and yesterday, cached per UTC day."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._cached_day: dt.date | None = None
        self._cached: Salts | None = None
        # The cached day as epoch seconds [start, end): a request compares floats, no dates.
        self._cached_span = (0.0, 0.0)
        self._yesterday: tuple[dt.date, bytes] | None = None  # made by `yesterdays`

    async def salts_at(self, ts: float) -> Salts:
        """`salts` for an epoch second: the hot path's form, cheap within the cached day."""
        start, end = self._cached_span
        if self._cached is not None and start <= ts < end:
            return self._cached
        return await self.salts(dt.datetime.fromtimestamp(ts, dt.UTC))

    async def salts(self, now: dt.datetime) -> Salts:
        today = now.astimezone(dt.UTC).date()
        if self._cached is not None and self._cached_day == today:
            return self._cached
        try:
            current = await self._get_or_create(today)
            previous = await self._redis.get(SALT_KEY.format(day=today - dt.timedelta(days=1)))
        except RedisError as exc:
            raise UnavailableError(f"salt store (Redis) unavailable: {exc}", 5) from exc
        self._cached = Salts(current, _as_bytes(previous) if previous is not None else None)
        self._cached_day = today
        start = dt.datetime.combine(today, dt.time(), tzinfo=dt.UTC).timestamp()
        self._cached_span = (start, start + 86400.0)
        return self._cached

    async def yesterdays(self, now: dt.datetime) -> bytes:
        """Yesterday's salt, created if no hit of that day made it yet (a store started after
        midnight): imports of yesterday's hits then agree on one salt across requests. It expires
        on the same schedule as any other, 48 hours after its day began."""
        day = now.astimezone(dt.UTC).date() - dt.timedelta(days=1)
        if self._yesterday is not None and self._yesterday[0] == day:
            return self._yesterday[1]  # once a day, not once an import request
        try:
            salt = await self._get_or_create(day)
        except RedisError as exc:
            raise UnavailableError(f"salt store (Redis) unavailable: {exc}", 5) from exc
        self._yesterday = (day, salt)
        return salt

    async def _get_or_create(self, day: dt.date) -> bytes:
        key = SALT_KEY.format(day=day)
        # SET NX makes concurrent ingest processes converge on one salt.
        await self._redis.set(key, os.urandom(SALT_BYTES), nx=True, exat=salt_expiry(day))
        salt = await self._redis.get(key)
        if salt is None:  # expired between the two calls: only possible at the 48h edge
            raise RuntimeError(f"salt for {day} vanished")
        return _as_bytes(salt)


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")
