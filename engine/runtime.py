"""The components one process runs, by role, with their start/stop order in one place."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from config import Settings
from engine.combine import combined_health
from engine.errors import ComponentError
from engine.ingest import Ingestor, SiteDirectory
from engine.kafka import HitProducer, ensure_topics
from engine.proxy import ApiProxy
from engine.query.sql import Params
from engine.ratelimit import SharedRateLimiter
from engine.redis_conn import connect_redis
from engine.sites import Site, SiteRepository
from engine.store.client import Store
from engine.store.writer import StoreWriter
from engine.visitor import SaltStore

if TYPE_CHECKING:
    from engine.http_metrics import Scope

log = logging.getLogger(__name__)


class Role(StrEnum):
    INGEST = "ingest"
    API = "api"


@dataclass
class Runtime:
    settings: Settings
    roles: frozenset[Role]
    redis: Redis | None = None
    limiter: SharedRateLimiter | None = None
    sites_repo: SiteRepository | None = None
    sites: SiteDirectory = field(default_factory=SiteDirectory)
    site_records: dict[str, Site] = field(default_factory=dict)
    producer: HitProducer | None = None
    ingestor: Ingestor | None = None
    store: Store | None = None
    writer: StoreWriter | None = None
    # Set in an ingest-only process given `api_upstream_url` (`rollup run`'s ingest).
    proxy: ApiProxy | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        s = self.settings
        self.redis = connect_redis(s)
        try:
            await self.redis.ping()
        except Exception as exc:
            raise ComponentError("redis", f"unreachable at {s.redis_dsn}: {exc}") from exc
        self.limiter = SharedRateLimiter(self.redis)
        self.sites_repo = SiteRepository(s.sites_dsn, s.stats_rate_limit_per_hour)
        self.sites_repo.open()
        await self.refresh_sites()
        await ensure_topics(s)
        if Role.API in self.roles:
            self.store = Store(s)
            self.store.open()
            self.store.migrate()
            self.writer = StoreWriter(s, self.store)
            await self.writer.start()
        if Role.INGEST in self.roles:
            self.producer = HitProducer(s)
            await self.producer.start()
            self.ingestor = Ingestor(
                s, self.producer, SaltStore(self.redis), self.sites, limiter=self.limiter
            )
        if self.forwards:
            assert s.api_upstream_url is not None
            self.proxy = ApiProxy(
                s.api_upstream_url,
                s.trusted_proxies,
                s.api_upstream_timeout_seconds,
                after_answer=self._after_forward,
            )
        self._tasks.append(asyncio.create_task(self._refresh_loop(), name="sites-refresh"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.producer is not None:
            await self.producer.stop()
        if self.writer is not None:
            await self.writer.stop()
        if self.store is not None:
            self.store.close()
        if self.sites_repo is not None:
            self.sites_repo.close()
        if self.redis is not None:
            await self.redis.aclose()
        if self.proxy is not None:
            await self.proxy.aclose()

    @property
    def forwards(self) -> bool:
        """Whether this process forwards what it does not serve to an api process."""
        return (
            bool(self.settings.api_upstream_url)
            and Role.INGEST in self.roles
            and Role.API not in self.roles
        )

    async def _after_forward(self, scope: Scope, status: int) -> None:
        # A site or key added through the admin API (served by the api process) is known here
        # before the answer reaches the client, as it was when one process served both roles.
        if scope["method"] == "POST" and scope["path"].startswith("/api/admin/") and status < 300:
            try:
                await self.refresh_sites()
            except Exception as exc:  # the periodic refresh catches up
                log.warning("sites refresh after an admin change failed: %s", exc)

    async def refresh_sites(self) -> None:
        assert self.sites_repo is not None
        records = await asyncio.to_thread(self.sites_repo.list_sites)
        self.site_records = {site.domain: site for site in records}
        self.sites.update({site.domain: site.timezone for site in records})

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sites_refresh_seconds)
            try:
                await self.refresh_sites()
            except Exception as exc:  # keep serving from the last known list
                log.warning("sites refresh failed: %s", exc)

    async def health(self) -> dict[str, str]:
        status: dict[str, str] = {}
        status["broker"] = await self._broker_health()
        try:
            assert self.redis is not None
            await asyncio.wait_for(self.redis.ping(), 2.0)
            status["redis"] = "ok"
        except Exception as exc:
            status["redis"] = f"down: {str(exc)[:100]}"
        if self.store is not None:
            try:
                ok = await asyncio.wait_for(self.store.ping(), 5.0)
                status["clickhouse"] = "ok" if ok else "down"
            except Exception as exc:
                status["clickhouse"] = f"down: {str(exc)[:100]}"
        if self.proxy is not None:
            status = await combined_health(status, self.proxy)
        return status

    async def _broker_health(self) -> str:
        if self.producer is not None and not self.producer.healthy:
            return "down: producer not acknowledged"
        if self.writer is not None and not self.writer.healthy:
            return "down: store writer not consuming"
        return "ok"

    async def first_day(self, domain: str) -> dt.date | None:
        """The site's first day with data (imports may predate the site), for `all`."""
        site = self.site_records.get(domain)
        first = site.created_at.date() if site else None
        if self.store is not None:
            params = Params()
            first_rows = params.statement(
                f"SELECT min(day), count() FROM rollup_day WHERE site = {params.string(domain)} "
                "AND dim = ''"
            )
            rows = await self.store.query(first_rows.sql, first_rows.params)
            if rows and rows[0][1]:
                first = min(first, rows[0][0]) if first else rows[0][0]
        return first
