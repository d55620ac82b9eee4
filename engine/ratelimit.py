"""Rate limits shared by every process through Redis: a sliding window per bucket.

The window is approximated from two fixed windows: the current count plus the previous one
weighted by how much of it is still in view, rounded up so that a boundary never frees a burst.
One Lua script checks and counts, so concurrent processes neither race nor over-admit. A bucket
name never holds a client address: callers hash it first (see `Ingestor`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Final

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

RATE_LIMITED: Final = Counter(
    "rollup_rate_limited_total", "Requests refused by a rate limit", ["scope"]
)
LIMITER_ERRORS: Final = Counter(
    "rollup_rate_limiter_errors_total", "Rate limit checks that failed open (Redis unreachable)"
)

KEY_PREFIX: Final = "rollup:rl:"

# KEYS[1] current window, KEYS[2] previous; ARGV: weight of previous, limit, ttl seconds.
# Returns the count seen before this request; admitted (and counted) only if below the limit.
_SCRIPT: Final = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local prev = tonumber(redis.call('GET', KEYS[2]) or '0')
local seen = cur + math.ceil(prev * tonumber(ARGV[1]) - 1e-9)
if seen < tonumber(ARGV[2]) then
  redis.call('INCR', KEYS[1])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
end
return {cur, prev}
"""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after: int  # whole seconds, at least 1 when refused


class SharedRateLimiter:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._script = redis.register_script(_SCRIPT)

    async def hit(
        self, scope: str, bucket: str, limit: int, window: int, now: float | None = None
    ) -> Decision:
        """Count one request against `bucket` (at most `limit` per `window` seconds).
        Fails open when Redis is unreachable: analytics beats a lock-out."""
        if limit <= 0:
            return Decision(True, 0)
        now = time.time() if now is None else now
        index = int(now // window)
        elapsed = now - index * window
        weight = 1.0 - elapsed / window
        base = f"{KEY_PREFIX}{scope}:{bucket}:"
        try:
            cur, prev = await self._script(
                keys=[f"{base}{index}", f"{base}{index - 1}"],
                args=[repr(weight), limit, 2 * window + 1],
            )
        except RedisError as exc:
            LIMITER_ERRORS.inc()
            log.warning("rate limit check failed open: %s", exc)
            return Decision(True, 0)
        cur, prev = int(cur), int(prev)
        if cur + _in_view(prev, weight) < limit:
            return Decision(True, 0)
        RATE_LIMITED.labels(scope).inc()
        return Decision(False, _retry_after(cur, prev, limit, window, elapsed))


def _in_view(prev: int, weight: float) -> int:
    """The previous window's requests still counted (as the Lua script counts them)."""
    return math.ceil(prev * weight - 1e-9)


def _retry_after(cur: int, prev: int, limit: int, window: int, elapsed: float) -> int:
    """Seconds until one more request fits: the previous window's share decays linearly."""
    if cur >= limit or prev == 0:
        wait = window - elapsed  # only a new window helps
    else:
        # ceil(prev * (1 - t / window)) <= limit - cur - 1
        #   <=>  t >= window * (1 - (limit - cur - 1) / prev)
        wait = window * (1 - (limit - cur - 1) / prev) - elapsed
    return max(1, math.ceil(wait))
