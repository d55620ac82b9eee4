"""The chaos harness's load driver (hits through `POST /api/event`, tallied by their 202s) and
its Stats API client."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from loadtest.chaos.cluster import (
    CUSTOM_EVENTS,
    NORMAL_PAGES,
    QUARANTINE_PAGE,
    USER_AGENTS,
    Cluster,
    Mode,
    minute_of,
)

# ---------------------------------------------------------------------------------------------
# Load driver

Cell = tuple[str, str, str, int, int]  # site, page, kind (pageview|custom), first, last minute


@dataclass(frozen=True)
class HitSpec:
    site: str
    name: str
    page: str
    visitor: int
    ua: str
    ip: str

    @property
    def kind(self) -> str:
        return "pageview" if self.name == "pageview" else "custom"

    def body(self) -> bytes:
        body: dict[str, Any] = {"n": self.name, "u": f"https://{self.site}{self.page}"}
        body["d"] = self.site
        if self.name != "pageview":
            body["p"] = {"plan": "pro" if self.visitor % 2 else "free"}
        elif self.visitor % 5 == 0:
            body["r"] = "https://www.google.com/"
        return orjson.dumps(body)


@dataclass
class Tally:
    generated: int = 0
    attempts: int = 0
    acked: Counter[Cell] = field(default_factory=Counter)
    unknown: Counter[Cell] = field(default_factory=Counter)
    visitors: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    unknown_visitors: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    recent_visitors: dict[str, dict[int, float]] = field(default_factory=lambda: defaultdict(dict))
    retried_attempts: int = 0
    gave_up: int = 0
    dropped: int = 0
    rejected: Counter[int] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    unknown_log: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds, of the attempts answered 202

    @property
    def acked_hits(self) -> int:
        return sum(self.acked.values())

    @property
    def unknown_requests(self) -> int:
        return sum(self.unknown.values())


class Driver:
    """Sends hits at a steady rate with bounded concurrency; counts a hit once it got a 202."""

    def __init__(
        self, cluster: Cluster, load_sites: list[str], mode: Mode, rng: random.Random
    ) -> None:
        self.cluster = cluster
        self.mode = mode
        self.rng = rng
        self.load_sites = load_sites
        self.url = f"http://127.0.0.1:{cluster.ingest_port}/api/event"
        self.tally = Tally()
        self.client = self._new_client()
        self.old_clients: list[httpx.AsyncClient] = []
        # Cleared around an ingest kill: new hits go to the quarantine page, others wait.
        self.gate = asyncio.Event()
        self.gate.set()
        self.inflight_exact = 0
        self.slots = asyncio.Semaphore(mode.concurrency)
        self.tasks: set[asyncio.Task[None]] = set()
        self.max_attempts = 60
        self.visitor_pool = {
            site: self._visitors(site, n) for site, n in zip(load_sites, mode.visitors, strict=True)
        }
        self.first_send = 0.0
        self.last_send = 0.0

    def _new_client(self) -> httpx.AsyncClient:
        # Idle connections are dropped well before uvicorn's 5 s keep-alive timeout, so that a
        # request never races the server closing its connection (an unknown outcome).
        limits = httpx.Limits(
            max_connections=self.mode.concurrency + 8,
            max_keepalive_connections=self.mode.concurrency + 8,
            keepalive_expiry=1.0,
        )
        return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30.0, pool=60.0))

    def since_start(self) -> float:
        return time.monotonic() - self.cluster.t0

    def renew_client(self) -> None:
        """After an ingest restart: no pooled connection to the dead process is reused."""
        self.old_clients.append(self.client)
        self.client = self._new_client()

    def _visitors(self, site: str, count: int) -> list[tuple[str, str]]:
        rng = random.Random(f"{site}-visitors")
        out = []
        for i in range(count):
            ua = USER_AGENTS[i % len(USER_AGENTS)].format(v=100 + rng.randrange(30))
            ip = str(ipaddress.IPv4Address(rng.randrange(0x0B000000, 0xDF000000)))
            out.append((ua, ip))
        return out

    def next_hit(self) -> HitSpec:
        site = self.rng.choice(self.load_sites)
        pool = self.visitor_pool[site]
        visitor = self.rng.randrange(len(pool))
        ua, ip = pool[visitor]
        name = "pageview" if self.rng.random() < 0.7 else self.rng.choice(CUSTOM_EVENTS)
        page = self.rng.choice(NORMAL_PAGES) if self.gate.is_set() else QUARANTINE_PAGE
        return HitSpec(site, name, page, visitor, ua, ip)

    async def run(self, stop: asyncio.Event, max_hits: int) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        self.first_send = time.time()
        sent = 0
        while sent < max_hits and not stop.is_set():
            delay = t0 + sent / self.mode.rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:  # fell behind (everything retrying): do not burst
                t0 = loop.time() - sent / self.mode.rate
            await self.slots.acquire()
            self.spawn(self.next_hit())
            sent += 1
        self.last_send = time.time()

    def spawn(self, spec: HitSpec, on_ack: Callable[[], None] | None = None) -> None:
        self.tally.generated += 1

        async def go() -> None:
            try:
                if await self.send(spec) and on_ack is not None:
                    on_ack()
            finally:
                self.slots.release()

        task = asyncio.get_running_loop().create_task(go())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def drain(self, timeout: float) -> None:
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for client in [self.client, *self.old_clients]:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def send(self, spec: HitSpec) -> bool:
        """True once the hit got a 202. Retries only what certainly did not arrive."""
        tally = self.tally
        body = spec.body()
        headers = {
            "User-Agent": spec.ua,
            "X-Forwarded-For": spec.ip,
            "Content-Type": "text/plain",
        }
        exact = spec.page != QUARANTINE_PAGE
        for attempt in range(self.max_attempts):
            if attempt:
                tally.retried_attempts += 1
            if exact:
                await self.gate.wait()
                self.inflight_exact += 1
            started_down = self.cluster.ingest_down
            client = self.client
            started = time.time()
            resp: httpx.Response | None = None
            outcome = ""
            tally.attempts += 1
            try:
                resp = await client.post(self.url, content=body, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                outcome = "retry"
                tally.answers[type(exc).__name__] += 1
            except httpx.TransportError as exc:
                # Sent, no answer: unless the ingest was already known dead when this attempt
                # began, the hit may have been produced.
                outcome = "retry" if started_down else "unknown"
                tally.answers[f"{type(exc).__name__}{'' if started_down else ' (unknown)'}"] += 1
                if outcome == "unknown":
                    tally.unknown_log.append(
                        f"t={self.since_start():.1f}s {spec.site}{spec.page} {spec.kind}: "
                        f"{type(exc).__name__} after {time.time() - started:.2f}s "
                        f"(attempt {attempt + 1}, ingest pid {self.cluster.ingest_pid()})"
                    )
            finally:
                if exact:
                    self.inflight_exact -= 1
            ended = time.time()
            cell = (spec.site, spec.page, spec.kind, minute_of(started), minute_of(ended))
            if outcome == "unknown":
                tally.unknown[cell] += 1
                tally.unknown_visitors[spec.site].add(spec.visitor)
                return False
            retry_after = 0.0
            if resp is not None:
                tally.answers[str(resp.status_code)] += 1
                if resp.status_code == 202:
                    if "x-plausible-dropped" in resp.headers:
                        tally.dropped += 1
                        return False
                    tally.acked[cell] += 1
                    tally.latencies.append(ended - started)
                    if exact:
                        tally.visitors[spec.site].add(spec.visitor)
                    tally.recent_visitors[spec.site][spec.visitor] = ended
                    return True
                if resp.status_code not in (429, 503):
                    tally.rejected[resp.status_code] += 1
                    return False
                with contextlib.suppress(ValueError):
                    retry_after = float(resp.headers.get("retry-after", "0"))
            await asyncio.sleep(min(max(retry_after, 0.1 * 1.5**attempt), 2.0))
        tally.gave_up += 1
        return False


# ---------------------------------------------------------------------------------------------
# Stats API client


class StatsClient:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.client = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{cluster.api_port}", timeout=httpx.Timeout(20.0)
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def query(self, site: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = await self.client.post(
            "/api/v2/query",
            json={"site_id": site, **body},
            headers={"Authorization": f"Bearer {self.cluster.keys[site]}"},
        )
        if resp.status_code != 200:
            raise RuntimeError(f"query {body} on {site}: {resp.status_code} {resp.text[:300]}")
        return dict(resp.json())

    async def try_query(self, site: str, body: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return await self.query(site, body)
        except (httpx.HTTPError, RuntimeError):
            return None

    async def get(self, path: str, site: str) -> Any:
        resp = await self.client.get(
            path,
            params={"site_id": site},
            headers={"Authorization": f"Bearer {self.cluster.keys[site]}"},
        )
        if resp.status_code != 200:
            raise RuntimeError(f"GET {path} on {site}: {resp.status_code} {resp.text[:300]}")
        return resp.json()
