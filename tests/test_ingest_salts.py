"""The salt cache of the ingest hot path: one day's salts served from memory, the next day's
fetched as soon as the clock crosses UTC midnight."""

from __future__ import annotations

import datetime as dt
from typing import Any

from engine.visitor import SALT_KEY, SaltStore


class FakeRedis:
    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.gets = 0

    async def set(self, key: str, value: bytes, nx: bool = False, exat: int = 0) -> None:
        if not (nx and key in self.values):
            self.values[key] = value

    async def get(self, key: str) -> bytes | None:
        self.gets += 1
        return self.values.get(key)


def epoch(day: dt.date, hour: int = 0, second: float = 0.0) -> float:
    start = dt.datetime.combine(day, dt.time(hour), dt.UTC)
    return start.timestamp() + second


async def test_salts_at_serves_a_day_from_memory_and_follows_midnight() -> None:
    redis: Any = FakeRedis()
    store = SaltStore(redis)
    day = dt.date(2026, 3, 1)
    first = await store.salts_at(epoch(day, 0))
    gets = redis.gets
    assert await store.salts_at(epoch(day, 23, 3599.999)) is first
    assert redis.gets == gets  # no round trip within the day
    assert first.current == redis.values[SALT_KEY.format(day=day)]
    assert first.previous is None  # no salt for the day before yet

    following = await store.salts_at(epoch(day + dt.timedelta(days=1)))
    assert redis.gets > gets
    assert following.previous == first.current
    assert following.current == redis.values[SALT_KEY.format(day=day + dt.timedelta(days=1))]
    assert following.current != first.current


async def test_salts_at_agrees_with_salts() -> None:
    store = SaltStore(FakeRedis())  # type: ignore[arg-type]
    ts = epoch(dt.date(2026, 5, 2), 13)
    assert await store.salts_at(ts) == await store.salts(dt.datetime.fromtimestamp(ts, dt.UTC))


async def test_yesterdays_salt_is_created_once_and_then_shared() -> None:
    redis: Any = FakeRedis()
    store, other = SaltStore(redis), SaltStore(redis)
    now = dt.datetime.fromtimestamp(epoch(dt.date(2026, 11, 28), 0, 240), dt.UTC)
    assert (await store.salts(now)).previous is None  # the live path does not create it
    made = await store.yesterdays(now)
    assert made == redis.values[SALT_KEY.format(day=dt.date(2026, 11, 27))]
    assert await other.yesterdays(now) == made
    # A store that starts later sees it as yesterday's salt on the live path too.
    assert (await SaltStore(redis).salts(now)).previous == made
