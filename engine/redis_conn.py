"""One way to open Redis, so every role gets the same timeouts."""

from __future__ import annotations

from redis.asyncio import Redis

from config import Settings


def connect_redis(settings: Settings) -> Redis:
    # Without a socket timeout a frozen Redis (SIGSTOP, network partition) blocks the caller
    # forever: the worker's agent would stall instead of skipping a live-counter write.
    return Redis.from_url(
        settings.redis_dsn,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
    )
