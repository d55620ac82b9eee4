"""Fault injection: a steady stream of hits through `POST /api/event` while the engine's processes
are killed, scaled and frozen; afterwards an exact audit of what ClickHouse and Redis hold.

    python -m loadtest.chaos --mode short   # about 3 minutes; what tests/test_chaos.py runs
    python -m loadtest.chaos --mode long    # >= 30 faults over >= 200,000 hits (manual)

The harness starts the components itself, as production runs them (not `rollup run`, which
restarts its children on its own): the embedded broker and Redis (engine/stack.py), then
`rollup ingest` and `rollup api` on two ports, `rollup live`, and one to three `rollup worker`
processes, each worker with its own RocksDB directory. Faults:

- SIGKILL of a worker at random moments, restarted on the same state directory;
- scaling to two, then three workers under load (partitions move), then SIGTERM of one;
- SIGKILL of the ingest process (restarted), SIGSTOP of Redis for a few seconds, SIGSTOP of the
  `api` process (the ClickHouse writer) past its Kafka session timeout, and SIGKILL of it.

The load driver counts a hit only once it got a 202 (503s and refused connections are retried).
A request that was in flight when the ingest process died may have been forwarded without an
answer ("unknown outcome"). Around an ingest kill the driver therefore sends new hits to a
quarantine page (`QUARANTINE_PAGE`) and holds every other request until the new ingest is up, so
unknown outcomes land only on that page: every other page must match the 202 tallies exactly, per
site, per page and per minute; the quarantine page must lie between its 202s and its 202s plus
its unknown outcomes.

A hit's minute is stamped by the ingest when the request arrives; the driver knows it lies between
the minutes of the request's start and end, and the audit assigns the rare requests that straddle
a minute boundary to either side (earliest deadline first), so a per-minute mismatch is a real one.

After each fault a probe hit goes to each of four probe sites (one per `hits` partition); the
fault's recovery time is the seconds until all four are visible in `POST /api/v2/query`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import heapq
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent

PARTITIONS = 4
NORMAL_PAGES = ("/", "/pricing", "/blog/chaos-engineering", "/docs/start", "/about")
QUARANTINE_PAGE = "/chaos/unknown-outcome"
CUSTOM_EVENTS = ("Signup", "Download")
PROBE_EVENT = "pageview"
ADMIN_TOKEN = "chaos-admin-token"
KEY_RATE_LIMIT = 100_000_000  # Stats API requests per hour: the audit and probes query a lot

USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{v}.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{v}.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.{v} Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{v}.0.0.0 Mobile Safari/537.36",
)


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class Mode:
    name: str
    rate: float  # hits per second offered
    duration: float  # at least this many seconds of load
    min_hits: int  # and at least this many hits
    max_hits: int
    concurrency: int
    fault_spacing: tuple[float, float]  # seconds between faults (uniform)
    min_faults: int
    tail: float  # seconds of load after the last fault
    # Visitors per load site: the last is small so that its visitor count must be exact.
    visitors: tuple[int, ...]
    drain_timeout: float

    @classmethod
    def short(cls) -> Mode:
        return cls(
            name="short",
            rate=150.0,
            duration=120.0,
            min_hits=0,
            max_hits=60_000,
            concurrency=96,
            fault_spacing=(6.0, 8.0),
            min_faults=12,
            tail=10.0,
            visitors=(2500, 1200, 400, 60),
            drain_timeout=90.0,
        )

    @classmethod
    def long(cls) -> Mode:
        return cls(
            name="long",
            rate=260.0,
            duration=800.0,
            min_hits=200_000,
            max_hits=2_000_000,
            concurrency=128,
            fault_spacing=(18.0, 30.0),
            min_faults=30,
            tail=15.0,
            visitors=(30_000, 8000, 1500, 80),
            drain_timeout=300.0,
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def partition_of(key: str, partitions: int = PARTITIONS) -> int:
    """The `hits` partition of a site: aiokafka's default partitioner on key = site."""
    from aiokafka.partitioner import murmur2

    return int(murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def sites_per_partition(prefix: str, partitions: int = PARTITIONS) -> list[str]:
    """One site name per partition, so every partition carries load (and a probe)."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < partitions:
        name = f"{prefix}{i}.chaos.test"
        found.setdefault(partition_of(name, partitions), name)
        i += 1
    return [found[p] for p in range(partitions)]


def minute_of(ts: float) -> int:
    return int(ts // 60) * 60


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def minute_label(minute: int) -> str:
    return dt.datetime.fromtimestamp(minute, dt.UTC).strftime("%Y-%m-%d %H:%M:00")


def minute_from_label(label: str) -> int:
    parsed = dt.datetime.strptime(label, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC)
    return int(parsed.timestamp())


# ---------------------------------------------------------------------------------------------
# Processes


# Runs first in every engine process the harness starts: the process is SIGKILLed when the
# harness dies (PR_SET_PDEATHSIG survives the exec), so a killed harness leaves no engine behind.
# (The broker and Redis come from engine/stack.py and are stopped by the harness's cleanup.)
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
parent = int(sys.argv[1])
if sys.platform == "linux":
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
if os.getppid() != parent:
    sys.exit(1)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


class Proc:
    """One child process with its own log file and process group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv[1:]]
                if argv[0] == sys.executable
                else argv,
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.started = time.monotonic()
        self.ready_after: float | None = None
        self.stopped = False  # SIGSTOPped
        self.expected_exit = False  # the harness killed or stopped it

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.expected_exit = True
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(sig)
        if sig == signal.SIGSTOP:
            self.stopped = True
        elif sig == signal.SIGCONT:
            self.stopped = False

    async def wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.popen.poll() is None:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def terminate(self, timeout: float = 30.0) -> None:
        if not self.alive():
            return
        if self.stopped:
            self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        if not await self.wait_exit(timeout):
            self.signal(signal.SIGKILL)
            await self.wait_exit(10)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, chars: int = 2000) -> str:
        return self.log_text()[-chars:]

    def reason(self) -> str:
        """The most telling line of the log: a crash reason, else the last error or line."""
        lines = [line for line in self.log_text().splitlines() if line.strip()]
        for pattern in ("Crashed reason", "[ERROR]", " ERROR ", "Error"):
            for line in reversed(lines):
                if pattern in line:
                    return line[-400:]
        return lines[-1][-400:] if lines else ""


class Cluster:
    """Broker and Redis (embedded), and the engine's roles as separate processes."""

    def __init__(self, data_dir: Path, sites: list[str], fresh_worker_state: bool = False) -> None:
        from config import load_settings
        from engine.stack import EmbeddedStack

        for name in ("KAFKA_BROKERS", "REDIS_URL", "CLICKHOUSE_URL", "DATABASE_URL"):
            if os.environ.get(name):
                raise SystemExit(f"chaos: unset {name}; the harness runs the embedded stack")
        self.data_dir = data_dir
        self.log_dir = data_dir / "chaos-logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.sites = sites
        self.fresh_worker_state = fresh_worker_state
        self.broker_port = free_port()
        self.ingest_port = free_port()
        self.api_port = free_port()
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("ROLLUP_")
            and k not in ("KAFKA_BROKERS", "REDIS_URL", "CLICKHOUSE_URL", "DATABASE_URL")
        }
        self.env.update(
            {
                "ROLLUP_DATA_DIR": str(data_dir),
                "ROLLUP_BROKER_PORT": str(self.broker_port),
                "ROLLUP_ADMIN_TOKEN": ADMIN_TOKEN,
                "ROLLUP_SITES_REFRESH_SECONDS": "1",
                "ROLLUP_INGEST_RATE_LIMIT": "0",
                "ROLLUP_TOPIC_PARTITIONS": str(PARTITIONS),
                "ROLLUP_WORKER_WEB_PORT": "0",
                "ROLLUP_LIVE_WEB_PORT": "0",
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.settings = load_settings(
            data_dir=data_dir, broker_port=self.broker_port, topic_partitions=PARTITIONS
        )
        self.stack = EmbeddedStack(self.settings)
        self.keys: dict[str, str] = {}
        self.ingest: Proc | None = None
        self.api: Proc | None = None
        self.live: Proc | None = None
        self.workers: dict[int, Proc] = {}
        self.incarnations: Counter[str] = Counter()
        self.ingest_down = False
        self.all_procs: list[Proc] = []
        self._watchers: set[asyncio.Task[None]] = set()
        self.crashes: list[str] = []  # processes that exited without the harness asking
        self.t0 = time.monotonic()

    # -- the embedded stack -------------------------------------------------------------------

    def ingest_pid(self) -> int | None:
        return self.ingest.pid if self.ingest is not None else None

    def child(self, name: str) -> Any:
        for c in self.stack.children:
            if c.name == name:
                return c
        raise KeyError(name)

    def redis_signal(self, sig: int) -> None:
        os.kill(self.child("redis").proc.pid, sig)

    # -- roles ----------------------------------------------------------------------------------

    def _spawn(self, role: str, tag: str, extra_env: dict[str, str]) -> Proc:
        self.incarnations[tag] += 1
        log_path = self.log_dir / f"{tag}.{self.incarnations[tag]}.log"
        proc = Proc(
            tag,
            [sys.executable, "-m", "engine.cli", role],
            {**self.env, **extra_env},
            log_path,
        )
        self.all_procs.append(proc)
        return proc

    def rollup(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "engine.cli", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if out.returncode != 0:
            raise RuntimeError(f"rollup {' '.join(args)} failed: {out.stderr[-2000:]}")
        return out.stdout

    async def start(self) -> None:
        self.stack.start()
        for site in self.sites:
            out = await asyncio.to_thread(
                self.rollup, "sites", "add", site, "--rate-limit", str(KEY_RATE_LIMIT)
            )
            self.keys[site] = out.strip().splitlines()[-1]
        self.api = self.start_api()
        self.ingest = self.start_ingest()
        self.live = self.start_live()
        self.start_worker(0)
        await asyncio.gather(
            self.wait_http(self.api, self.api_port, 120),
            self.wait_http(self.ingest, self.ingest_port, 120),
            self.wait_worker(self.workers[0], 120),
        )

    def start_api(self) -> Proc:
        return self._spawn("api", "api", {"ROLLUP_HTTP_PORT": str(self.api_port)})

    def start_ingest(self) -> Proc:
        return self._spawn("ingest", "ingest", {"ROLLUP_HTTP_PORT": str(self.ingest_port)})

    def start_live(self) -> Proc:
        return self._spawn("live", "live", {})

    def start_role(self, role: str) -> Proc:
        return {"ingest": self.start_ingest, "api": self.start_api, "live": self.start_live}[role]()

    def start_worker(self, slot: int) -> Proc:
        # The same state directory for every incarnation of a slot, as a restarted pod keeps
        # its volume; distinct directories for concurrent workers. With `fresh_worker_state`
        # every incarnation starts empty and restores its tables from the changelogs.
        wdir = self.data_dir / f"worker-{slot}"
        if self.fresh_worker_state:
            wdir = self.data_dir / f"worker-{slot}.{self.incarnations[f'worker{slot}'] + 1}"
        proc = self._spawn(
            "worker",
            f"worker{slot}",
            {
                "ROLLUP_WORKER_DATA_DIR": str(wdir),
                "ROLLUP_HTTP_PORT": str(free_port()),
                "ROLLUP_WORKER_WEB_PORT": "0",
            },
        )
        self.workers[slot] = proc
        task = asyncio.get_running_loop().create_task(self._watch_worker(proc))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        return proc

    async def _watch_worker(self, proc: Proc) -> None:
        with contextlib.suppress(RuntimeError):
            await self.wait_worker(proc, 600)

    async def wait_worker(self, proc: Proc, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.ready_after is not None:
                return
            if "Worker ready" in proc.log_text():
                proc.ready_after = time.monotonic() - proc.started
                return
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited before ready:\n{proc.tail()}")
            await asyncio.sleep(0.25)
        raise RuntimeError(f"{proc.name} not ready after {timeout}s:\n{proc.tail()}")

    async def wait_workers_settled(self, timeout: float) -> list[str]:
        """Wait until the current process of every worker slot is ready (the supervisor may
        be restarting some); returns what never became ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = [p for p in self.workers.values() if p.ready_after is None]
            if not pending:
                return []
            for proc in pending:
                if proc.alive() and "Worker ready" in proc.log_text():
                    proc.ready_after = time.monotonic() - proc.started
            await asyncio.sleep(0.5)
        return [
            f"{p.log_path.name} not ready {timeout:.0f}s after the load: {p.reason()}"
            for p in self.workers.values()
            if p.ready_after is None
        ]

    async def wait_http(self, proc: Proc, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        async with httpx.AsyncClient(timeout=3) as client:
            while time.monotonic() < deadline:
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
                try:
                    resp = await client.get(f"http://127.0.0.1:{port}/api/health")
                    last = resp.text
                    if resp.status_code == 200:
                        proc.ready_after = time.monotonic() - proc.started
                        return
                except httpx.HTTPError as exc:
                    last = repr(exc)
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{proc.name} not healthy after {timeout}s ({last}):\n{proc.tail()}")

    async def supervise(self) -> None:
        """Restart what exits on its own, as a process supervisor (or Kubernetes) would, and
        record it: an engine process must not die of the faults the harness injects."""
        while True:
            await asyncio.sleep(0.5)
            for slot, proc in list(self.workers.items()):
                if not proc.alive() and not proc.expected_exit:
                    self._crashed(proc)
                    await asyncio.sleep(2.0)
                    if self.workers.get(slot) is proc:
                        self.start_worker(slot)
            for role in ("ingest", "api", "live"):
                proc = getattr(self, role)
                if proc is not None and not proc.alive() and not proc.expected_exit:
                    self._crashed(proc)
                    await asyncio.sleep(2.0)
                    if getattr(self, role) is proc:
                        setattr(self, role, self.start_role(role))

    def _crashed(self, proc: Proc) -> None:
        proc.expected_exit = True  # recorded once
        line = (
            f"t={time.monotonic() - self.t0:.1f}s {proc.log_path.name} pid {proc.pid} exited "
            f"with {proc.popen.returncode} on its own; restarted: {proc.reason()}"
        )
        self.crashes.append(line)
        print(f"chaos: CRASH {line}", flush=True)

    async def stop(self) -> None:
        for task in list(self._watchers):
            task.cancel()
        with contextlib.suppress(Exception):
            self.redis_signal(signal.SIGCONT)
        procs = [p for p in self.all_procs if p.alive()]
        await asyncio.gather(*(p.terminate() for p in procs), return_exceptions=True)
        await asyncio.to_thread(self.stack.stop)

    def logs_excerpt(self, per_file: int = 3, files: int = 12) -> str:
        """Distinct error and warning messages per log file (timestamps and pids removed)."""
        parts = []
        for proc in self.all_procs:
            seen: dict[str, int] = {}
            for line in proc.log_text().splitlines():
                if re.search(r"ERROR|CRITICAL|WARNING|Crashed", line):
                    key = re.sub(r"^\[?[\d\- :,]+\]? (\[\d+\] )?", "", line)[:300]
                    seen[key] = seen.get(key, 0) + 1
            if seen:
                parts.append(f"--- {proc.log_path.name}")
                parts += [f"  {n}x {msg}" for msg, n in list(seen.items())[-per_file:]]
        return "\n".join(parts[: files * (per_file + 1)])


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


# ---------------------------------------------------------------------------------------------
# Faults


@dataclass
class Fault:
    index: int
    kind: str
    at: float  # seconds since the load began
    detail: str = ""
    recovery: float | None = None  # seconds until probes on every partition were visible
    note: str = ""


class Injector:
    """Applies faults and measures each one's recovery with probe hits."""

    def __init__(
        self,
        cluster: Cluster,
        driver: Driver,
        stats: StatsClient,
        probe_sites: list[str],
        rng: random.Random,
    ) -> None:
        self.cluster = cluster
        self.driver = driver
        self.stats = stats
        self.probe_sites = probe_sites
        self.rng = rng
        self.faults: list[Fault] = []
        self.load_started = 0.0
        self.probe_tasks: list[asyncio.Task[None]] = []
        self.redis_back_at: float | None = None
        self.worker_sigkills = 0

    def _record(self, kind: str, detail: str) -> Fault:
        fault = Fault(len(self.faults), kind, time.monotonic() - self.load_started, detail)
        self.faults.append(fault)
        print(f"chaos: t={fault.at:6.1f}s #{fault.index} {kind} {detail}", flush=True)
        return fault

    def probe(self, fault: Fault) -> None:
        self.probe_tasks.append(asyncio.get_running_loop().create_task(self._probe(fault)))

    async def _probe(self, fault: Fault) -> None:
        started = time.monotonic()
        fault_wall = time.time()
        page = f"/chaos/probe/{fault.index}"
        acked: set[str] = set()
        for site in self.probe_sites:
            spec = HitSpec(site, PROBE_EVENT, page, 0, USER_AGENTS[0].format(v=120), "11.0.0.1")
            # Probes use a driver slot too; they are exact hits on their own sites.
            await self.driver.slots.acquire()
            self.driver.spawn(spec, on_ack=functools.partial(acked.add, site))
        start = minute_of(fault_wall) - 60
        body = {
            "metrics": ["events"],
            "date_range": [iso(start), iso(start + 3 * 3600 - 1)],
            "filters": [["is", "event:page", [page]]],
        }
        seen: set[str] = set()
        try:
            while True:
                for site in self.probe_sites:
                    if site in seen or site not in acked:
                        continue
                    got = await self.stats.try_query(site, body)
                    if got and got["results"] and got["results"][0]["metrics"][0] >= 1:
                        seen.add(site)
                if len(seen) == len(self.probe_sites):
                    fault.recovery = time.monotonic() - started
                    return
                await asyncio.sleep(0.5)
        finally:
            if fault.recovery is None:
                fault.note = (
                    f"{fault.note} probes visible on {len(seen)}/{len(self.probe_sites)} "
                    f"({len(acked)} answered 202)"
                ).strip()

    # -- the faults -----------------------------------------------------------------------------

    def live_workers(self) -> list[int]:
        return sorted(s for s, p in self.cluster.workers.items() if p.alive())

    async def worker_kill(self, slot: int | None = None) -> None:
        slots = self.live_workers()
        if not slots:
            self._record("worker SIGKILL", "skipped: no worker alive")
            return
        if slot is None:
            slot = self.rng.choice(slots)
        proc = self.cluster.workers[slot]
        age = time.monotonic() - proc.started
        state = "ready" if proc.ready_after is not None else "starting"
        proc.signal(signal.SIGKILL)
        await proc.wait_exit(10)
        self.worker_sigkills += 1
        fault = self._record(
            "worker SIGKILL", f"worker{slot} pid {proc.pid} ({state}, up {age:.0f}s); restarted"
        )
        self.probe(fault)
        await asyncio.sleep(0.5)
        self.cluster.start_worker(slot)

    async def scale_up(self) -> None:
        slot = next(i for i in range(10) if i not in self.live_workers())
        self.cluster.start_worker(slot)
        fault = self._record(
            "scale up", f"worker{slot} started ({len(self.live_workers())} workers)"
        )
        self.probe(fault)

    async def scale_down(self) -> None:
        if len(self.live_workers()) < 2:
            self._record("scale down", "skipped: fewer than two workers alive")
            return
        slot = max(self.live_workers())
        proc = self.cluster.workers[slot]
        fault = self._record("scale down", f"SIGTERM worker{slot} pid {proc.pid}")
        self.probe(fault)
        proc.signal(signal.SIGTERM)
        if not await proc.wait_exit(30):
            proc.signal(signal.SIGKILL)
            await proc.wait_exit(10)
            fault.note = "did not exit within 30 s of SIGTERM; SIGKILLed"
        else:
            fault.note = f"exited after {time.monotonic() - self.load_started - fault.at:.1f}s"
        del self.cluster.workers[slot]

    async def ingest_kill(self) -> None:
        cluster, driver = self.cluster, self.driver
        driver.gate.clear()
        waited = time.monotonic()
        while driver.inflight_exact and time.monotonic() - waited < 15:
            await asyncio.sleep(0.01)
        await asyncio.sleep(self.rng.uniform(0.05, 0.3))  # quarantine hits in flight
        stuck = driver.inflight_exact
        assert cluster.ingest is not None
        old = cluster.ingest
        old.signal(signal.SIGKILL)
        await old.wait_exit(10)
        cluster.ingest_down = True
        driver.renew_client()
        fault = self._record("ingest SIGKILL", f"pid {old.pid}; restarted")
        if stuck:
            fault.note = f"{stuck} requests to exact pages were still in flight at the kill"
        self.probe(fault)
        cluster.ingest = cluster.start_ingest()
        try:
            await cluster.wait_http(cluster.ingest, cluster.ingest_port, 90)
        finally:
            cluster.ingest_down = False
            await asyncio.sleep(0.5)
            driver.gate.set()
        fault.note = fault.note + f" new ingest healthy after {cluster.ingest.ready_after:.1f}s"

    async def redis_stop(self, seconds: float) -> None:
        self.cluster.redis_signal(signal.SIGSTOP)
        fault = self._record("Redis SIGSTOP", f"{seconds:.0f}s, then SIGCONT")
        self.probe(fault)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.cluster.redis_signal(signal.SIGCONT)
            self.redis_back_at = time.time()

    async def api_stop(self, seconds: float) -> None:
        api = self.cluster.api
        assert api is not None
        api.signal(signal.SIGSTOP)
        fault = self._record(
            "api SIGSTOP", f"ClickHouse writer frozen {seconds:.0f}s, then SIGCONT"
        )
        self.probe(fault)
        try:
            await asyncio.sleep(seconds)
        finally:
            api.signal(signal.SIGCONT)

    async def api_kill(self) -> None:
        cluster = self.cluster
        assert cluster.api is not None
        old = cluster.api
        old.signal(signal.SIGKILL)
        await old.wait_exit(10)
        fault = self._record("api SIGKILL", f"ClickHouse writer pid {old.pid}; restarted")
        self.probe(fault)
        await asyncio.sleep(0.5)
        cluster.api = cluster.start_api()
        await cluster.wait_http(cluster.api, cluster.api_port, 120)
        fault.note = f"new api healthy after {cluster.api.ready_after:.1f}s"

    async def baseline(self) -> None:
        fault = self._record("baseline", "no fault: pipeline latency")
        self.probe(fault)

    # -- schedules ------------------------------------------------------------------------------

    def short_program(self) -> list[Callable[[], Any]]:
        return [
            self.baseline,
            self.worker_kill,  # 1 worker
            self.scale_up,  # 2 workers
            lambda: self.redis_stop(5.0),
            self.worker_kill,
            self.scale_up,  # 3 workers
            self.worker_kill,
            self.scale_down,  # back to 2
            self.ingest_kill,
            self.worker_kill,
            lambda: self.api_stop(12.0),
            self.api_kill,
            self.worker_kill,
        ]

    def long_step(self) -> Callable[[], Any]:
        workers = len(self.live_workers())
        choices: list[tuple[float, Callable[[], Any]]] = [
            (0.36, self.worker_kill),
            (0.12 if workers < 3 else 0.0, self.scale_up),
            (0.12 if workers > 1 else 0.0, self.scale_down),
            (0.12, self.ingest_kill),
            (0.10, lambda: self.redis_stop(self.rng.uniform(3.0, 8.0))),
            (0.08, lambda: self.api_stop(self.rng.uniform(5.0, 15.0))),
            (0.10, self.api_kill),
        ]
        total = sum(w for w, _ in choices)
        pick = self.rng.uniform(0, total)
        for weight, action in choices:
            pick -= weight
            if pick <= 0 and weight:
                return action
        return self.worker_kill

    async def run(self, mode: Mode, stop_load: asyncio.Event) -> None:
        """Apply faults until the mode's program, duration, hits and fault count are done,
        then let the load run `mode.tail` seconds more and stop it."""
        self.load_started = time.monotonic()
        try:
            await asyncio.sleep(2.0)
            program = self.short_program() if mode.name == "short" else [self.baseline]
            step = 0
            while True:
                if step < len(program):
                    action = program[step]
                elif (
                    time.monotonic() - self.load_started >= mode.duration
                    and self.driver.tally.generated >= mode.min_hits
                    and sum(f.kind != "baseline" for f in self.faults) >= mode.min_faults
                ):
                    break
                elif mode.name == "short":
                    action = self.baseline  # load until the minimum duration
                else:
                    action = self.long_step()
                step += 1
                await action()
                await asyncio.sleep(self.rng.uniform(*mode.fault_spacing))
            await asyncio.sleep(mode.tail)
        finally:
            stop_load.set()


# ---------------------------------------------------------------------------------------------
# Audit


def match_minutes(
    certain: Counter[int], ambiguous: Counter[tuple[int, int]], got: Counter[int]
) -> tuple[int, int, list[str]]:
    """Can `got` (per minute) be explained by the certain hits plus each ambiguous hit counted
    once in a minute of its [first, last] window? Earliest deadline first is optimal here.
    Returns (missing, surplus, mismatching minutes)."""
    minutes = set(certain) | set(got)
    for lo, hi in ambiguous:
        minutes.update(range(lo, hi + 60, 60))
    if not minutes:
        return 0, 0, []
    starts: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for (lo, hi), n in ambiguous.items():
        starts[lo].append((hi, n))
    pool: list[list[int]] = []  # heap of [deadline, count]
    missing = surplus = 0
    bad: list[str] = []
    for m in range(min(minutes), max(minutes) + 60, 60):
        for hi, n in starts.get(m, []):
            heapq.heappush(pool, [hi, n])
        need = got[m] - certain[m]
        m_missing = m_surplus = 0
        if need < 0:
            m_missing += -need
            need = 0
        while need and pool:
            take = min(need, pool[0][1])
            pool[0][1] -= take
            need -= take
            if not pool[0][1]:
                heapq.heappop(pool)
        m_surplus += need
        while pool and pool[0][0] <= m:
            m_missing += heapq.heappop(pool)[1]
        if m_missing or m_surplus:
            bad.append(
                f"{minute_label(m)}: got {got[m]}, 202s {certain[m]} certain"
                f" (+ straddling){f', missing {m_missing}' if m_missing else ''}"
                f"{f', surplus {m_surplus}' if m_surplus else ''}"
            )
        missing += m_missing
        surplus += m_surplus
    return missing, surplus, bad


@dataclass
class Audit:
    table: str
    counted: int = 0
    lost: int = 0  # answered 202, not counted (per site, page, kind and minute)
    double: int = 0  # counted more often than answered 202
    unknown_counted: int = 0  # quarantine hits counted beyond their 202s
    problems: list[str] = field(default_factory=list)
    tables_used: Counter[str] = field(default_factory=Counter)


def audit_counts(
    tally: Tally,
    results: dict[str, dict[tuple[int, str], tuple[int, int]]],
    table: str,
    tables_used: Counter[str],
) -> Audit:
    """`results[site][(minute, page)] = (pageviews, events)` against the driver's tallies."""
    audit = Audit(table, tables_used=tables_used)
    expected: dict[tuple[str, str, str], tuple[Counter[int], Counter[tuple[int, int]]]] = (
        defaultdict(lambda: (Counter(), Counter()))
    )
    unknown: Counter[tuple[str, str, str]] = Counter()
    for (site, page, kind, lo, hi), n in tally.acked.items():
        certain, ambiguous = expected[(site, page, kind)]
        if lo == hi:
            certain[lo] += n
        else:
            ambiguous[(lo, hi)] += n
    for (site, page, kind, _lo, _hi), n in tally.unknown.items():
        unknown[(site, page, kind)] += n
    got_series: dict[tuple[str, str, str], Counter[int]] = defaultdict(Counter)
    for site, rows in results.items():
        for (minute, page), (pageviews, events) in rows.items():
            got_series[(site, page, "pageview")][minute] += pageviews
            got_series[(site, page, "custom")][minute] += events - pageviews
    for key in sorted(set(expected) | set(got_series)):
        site, page, kind = key
        certain, ambiguous = expected[key]
        got = got_series[key]
        audit.counted += sum(got.values())
        acked = sum(certain.values()) + sum(ambiguous.values())
        total = sum(got.values())
        if unknown[key]:
            # Unknown outcomes: anywhere between the 202s and the 202s plus the unknowns.
            if total < acked:
                audit.lost += acked - total
                audit.problems.append(f"{table} {site} {page} {kind}: {total} < {acked} 202s")
            elif total > acked + unknown[key]:
                audit.double += total - acked - unknown[key]
                audit.problems.append(
                    f"{table} {site} {page} {kind}: {total} > {acked} 202s + {unknown[key]} unknown"
                )
            else:
                audit.unknown_counted += total - acked
            if page != QUARANTINE_PAGE:
                audit.problems.append(
                    f"note: {unknown[key]} unknown outcome(s) on exact page {site}{page}"
                )
            continue
        missing, surplus, bad = match_minutes(certain, ambiguous, got)
        audit.lost += missing
        audit.double += surplus
        for line in bad[:5]:
            audit.problems.append(f"{table} {site} {page} {kind} {line}")
    return audit


class Auditor:
    def __init__(self, stats: StatsClient, tally: Tally, sites: list[str]) -> None:
        self.stats = stats
        self.tally = tally
        self.sites = sites

    def range_for(self, table: str) -> list[str]:
        minutes = [c[3] for c in self.tally.acked] + [c[4] for c in self.tally.acked]
        minutes += [c[4] for c in self.tally.unknown]
        start, end = min(minutes) - 60, max(minutes) + 120
        if table == "events":
            # A range that is not minute-aligned: only the raw events table can answer it.
            return [iso(start - 1), iso(end - 1)]
        return [iso(start), iso(end - 1)]

    async def per_minute(
        self, table: str
    ) -> tuple[dict[str, dict[tuple[int, str], tuple[int, int]]], Counter[str]]:
        results: dict[str, dict[tuple[int, str], tuple[int, int]]] = {}
        used: Counter[str] = Counter()
        for site in self.sites:
            got = await self.stats.query(
                site,
                {
                    "metrics": ["pageviews", "events"],
                    "date_range": self.range_for(table),
                    "dimensions": ["time:minute", "event:page"],
                    "pagination": {"limit": 10000},
                },
            )
            used[got["meta"].get("table", "?")] += 1
            rows: dict[tuple[int, str], tuple[int, int]] = {}
            for row in got["results"]:
                label, page = row["dimensions"]
                rows[(minute_from_label(label), page)] = (row["metrics"][0], row["metrics"][1])
            results[site] = rows
        return results, used

    async def totals(self, table: str) -> dict[str, tuple[int, int]]:
        out = {}
        for site in self.sites:
            got = await self.stats.query(
                site, {"metrics": ["pageviews", "events"], "date_range": self.range_for(table)}
            )
            pageviews, events = got["results"][0]["metrics"]
            out[site] = (int(pageviews), int(events))
        return out

    def expected_totals(self) -> dict[str, tuple[int, int, int, int]]:
        """Per site: pageviews and events answered 202, and the unknown outcomes of each."""
        out: dict[str, list[int]] = {site: [0, 0, 0, 0] for site in self.sites}
        for (site, _page, kind, _lo, _hi), n in self.tally.acked.items():
            out[site][0] += n if kind == "pageview" else 0
            out[site][1] += n
        for (site, _page, kind, _lo, _hi), n in self.tally.unknown.items():
            out[site][2] += n if kind == "pageview" else 0
            out[site][3] += n
        return {site: (v[0], v[1], v[2], v[3]) for site, v in out.items()}

    async def wait_drained(self, timeout: float) -> tuple[float, bool]:
        """Poll until every site's totals lie in [202s, 202s + unknown] in both the rollups and
        the events table, or stop changing for 20 s."""
        started = time.monotonic()
        expected = self.expected_totals()
        last: Any = None
        last_change = time.monotonic()
        while time.monotonic() - started < timeout:
            try:
                now = (await self.totals("rollup_minute"), await self.totals("events"))
            except (httpx.HTTPError, RuntimeError):
                await asyncio.sleep(1.0)
                continue
            done = all(
                pv_ok and ev_ok
                for got in now
                for site, (pv, ev) in got.items()
                for pv_ok, ev_ok in [
                    (
                        expected[site][0] <= pv <= expected[site][0] + expected[site][2],
                        expected[site][1] <= ev <= expected[site][1] + expected[site][3],
                    )
                ]
            )
            if done:
                return time.monotonic() - started, True
            if now != last:
                last, last_change = now, time.monotonic()
            elif time.monotonic() - last_change > 20:
                return time.monotonic() - started, False
            await asyncio.sleep(1.0)
        return time.monotonic() - started, False

    async def consistency(self) -> list[str]:
        """The total rows (dim '') per minute equal the sum of the page rows."""
        problems = []
        for site in self.sites:
            got = await self.stats.query(
                site,
                {
                    "metrics": ["pageviews", "events"],
                    "date_range": self.range_for("rollup_minute"),
                    "dimensions": ["time:minute"],
                },
            )
            pages, _ = await self.per_minute_site(site)
            for row in got["results"]:
                minute = minute_from_label(row["dimensions"][0])
                if tuple(row["metrics"]) != pages.get(minute, (0, 0)):
                    problems.append(
                        f"{site} {row['dimensions'][0]}: total row {row['metrics']} "
                        f"!= sum of page rows {pages.get(minute)}"
                    )
        return problems

    async def per_minute_site(self, site: str) -> tuple[dict[int, tuple[int, int]], str]:
        got = await self.stats.query(
            site,
            {
                "metrics": ["pageviews", "events"],
                "date_range": self.range_for("rollup_minute"),
                "dimensions": ["time:minute", "event:page"],
                "pagination": {"limit": 10000},
            },
        )
        sums: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        for row in got["results"]:
            minute = minute_from_label(row["dimensions"][0])
            sums[minute][0] += row["metrics"][0]
            sums[minute][1] += row["metrics"][1]
        return {m: (v[0], v[1]) for m, v in sums.items()}, got["meta"].get("table", "?")

    async def visitors(self) -> tuple[list[str], list[str]]:
        """Unique visitors per site over exact pages (within 1%, exact below 100)."""
        lines, problems = [], []
        for site in self.sites:
            excluded = [QUARANTINE_PAGE]
            got = await self.stats.query(
                site,
                {
                    "metrics": ["visitors"],
                    "date_range": self.range_for("rollup_minute"),
                    "filters": [["is_not", "event:page", excluded]],
                },
            )
            counted = int(got["results"][0]["metrics"][0])
            expected = len(self.tally.visitors[site])
            if expected < 100:
                ok = counted == expected
            else:
                ok = abs(counted - expected) <= 0.01 * expected
            error = (counted - expected) / expected * 100 if expected else 0.0
            line = (
                f"{site}: {counted} counted, {expected} expected ({error:+.2f}%, "
                f"{got['meta'].get('table')})"
            )
            lines.append(line)
            if not ok:
                problems.append("visitors " + line)
        return lines, problems


async def live_check(
    stats: StatsClient, tally: Tally, sites: list[str], since: float, load_end: float
) -> tuple[list[str], list[str]]:
    """The realtime endpoints answer, and Redis's pageviews over the whole minutes after Redis
    came back match the 202s. A live minute follows the broker's timestamp, which lies between
    the request's start and end, like the hit's own, so only requests straddling the window's
    edges (and unknown outcomes) may fall on either side: the sum must lie between the hits
    certainly inside the window and those plus the edge cases."""
    lines: list[str] = []
    problems: list[str] = []
    now = time.time()
    first = max(minute_of(since) + 60, minute_of(now) - 29 * 60)
    last = minute_of(load_end) - 60
    for site in sites:
        try:
            realtime = await stats.get("/api/v1/stats/realtime/visitors", site)
            live = await stats.get("/api/v1/stats/realtime/live", site)
        except (httpx.HTTPError, RuntimeError) as exc:
            problems.append(f"live {site}: {exc}")
            continue
        recent = sum(1 for t in tally.recent_visitors[site].values() if t >= now - 300)
        if not isinstance(realtime, int) or (recent and realtime <= 0):
            problems.append(f"live {site}: realtime visitors answered {realtime!r}")
        per_minute = {
            int(dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()): int(n)
            for ts, n in live["pageviews_per_minute"]
        }
        window = [m for m in range(first, last + 60, 60) if m in per_minute]
        if not window:
            lines.append(f"{site}: realtime visitors {realtime}; no whole minute to compare")
            continue
        lo_m, hi_m = window[0], window[-1]
        inside = edge = 0
        certain: Counter[int] = Counter()
        for counter, is_unknown in ((tally.acked, False), (tally.unknown, True)):
            for (cell_site, _page, kind, lo, hi), n in counter.items():
                if cell_site != site or kind != "pageview" or hi < lo_m or lo > hi_m:
                    continue
                if lo >= lo_m and hi <= hi_m and not is_unknown:
                    inside += n
                else:
                    edge += n
                if lo == hi and not is_unknown:
                    certain[lo] += n
        got = sum(per_minute[m] for m in window)
        for m in window:
            if certain[m] and not per_minute[m]:
                problems.append(f"live {site} {minute_label(m)}: 0 pageviews, {certain[m]} 202s")
        if not inside <= got <= inside + edge:
            problems.append(
                f"live {site}: {got} pageviews in {len(window)} whole minutes, 202s say "
                f"{inside}..{inside + edge}"
            )
        worst = max(abs(per_minute[m] - certain[m]) for m in window)
        lines.append(
            f"{site}: realtime visitors {realtime} (202'd visitors in the last 5 min: {recent}); "
            f"{len(window)} whole minutes after Redis came back: {got} pageviews, 202s "
            f"{inside}..{inside + edge}; largest per-minute gap {worst} (straddlers included)"
        )
    return lines, problems


async def scrape_metrics(port: int, prefixes: Iterable[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    except httpx.HTTPError:
        return out
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(tuple(prefixes)):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            if name.endswith("_created") or "_created{" in name:
                continue
            out[name] = float(value)
    return out


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class Report:
    mode: str
    seed: int
    data_dir: str
    load_seconds: float = 0.0
    hits_sent: int = 0
    requests: int = 0
    acked: int = 0  # 202s
    counted: int = 0  # in the rollups, exact pages and the quarantine page
    lost: int = 0
    double_counted: int = 0
    unknown_outcome: int = 0
    unknown_counted: int = 0
    gave_up: int = 0
    dropped: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    answers: dict[str, int] = field(default_factory=dict)
    events_table_lost: int = 0
    events_table_double: int = 0
    drained: bool = False
    drain_seconds: float = 0.0
    faults: list[dict[str, Any]] = field(default_factory=list)
    worker_sigkills: int = 0
    max_workers: int = 1
    visitors: list[str] = field(default_factory=list)
    live: list[str] = field(default_factory=list)
    tables: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    worker_ready_seconds: list[float] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    unknown_log: list[str] = field(default_factory=list)
    latency: dict[str, float] = field(default_factory=dict)
    logs: str = ""

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.double_counted == 0
            and self.events_table_lost == 0
            and self.events_table_double == 0
            and not self.problems
            and not self.crashes
        )

    def text(self) -> str:
        out = [
            f"chaos {self.mode} (seed {self.seed}, data in {self.data_dir})",
            f"  load: {self.hits_sent} hits in {self.load_seconds:.0f}s "
            f"({self.hits_sent / max(self.load_seconds, 1):.0f}/s), {self.requests} requests; "
            f"latency of the 202s in ms: {self.latency}",
            f"  202s: {self.acked}   counted: {self.counted}   lost: {self.lost}   "
            f"double-counted: {self.double_counted}",
            f"  unknown outcome: {self.unknown_outcome} (of which counted: {self.unknown_counted})"
            f"   gave up: {self.gave_up}   dropped: {self.dropped}   rejected: {self.rejected}",
            *[f"    unknown: {line}" for line in self.unknown_log[:10]],
            f"  events table: lost {self.events_table_lost}, double {self.events_table_double}",
            f"  answers: {dict(sorted(self.answers.items()))}",
            f"  drained: {self.drained} after {self.drain_seconds:.1f}s; tables: {self.tables}",
            f"  worker SIGKILLs: {self.worker_sigkills}; at most {self.max_workers} workers; "
            f"worker start-to-ready: {', '.join(f'{s:.1f}' for s in self.worker_ready_seconds)}",
            "  faults (recovery = seconds until a probe on every partition was queryable):",
        ]
        for f in self.faults:
            rec = f"{f['recovery']:.1f}s" if f["recovery"] is not None else "NOT RECOVERED"
            out.append(
                f"    #{f['index']:<2} t={f['at']:6.1f}s {f['kind']:<15} recovery {rec:>8}  "
                f"{f['detail']} {f['note']}".rstrip()
            )
        out.append("  visitors:")
        out += [f"    {line}" for line in self.visitors]
        out.append("  live counters:")
        out += [f"    {line}" for line in self.live]
        if self.metrics:
            out.append("  metrics (last incarnation of each process):")
            out += [f"    {k} {v:g}" for k, v in sorted(self.metrics.items())]
        if self.crashes:
            out.append(
                f"  CRASHES: {len(self.crashes)} engine processes died without being killed "
                "(each restarted by the harness after 2 s):"
            )
            out += [f"    {c}" for c in self.crashes[:5]]
            reasons = Counter(
                re.sub(r"^.*?\] \[\d+\] ", "", c.split("restarted: ", 1)[-1])[:200]
                for c in self.crashes
            )
            out += [f"    {n}x {reason}" for reason, n in reasons.most_common(5)]
        if self.problems:
            out.append("  PROBLEMS:")
            out += [f"    {p}" for p in self.problems[:60]]
        if self.logs and not self.ok:
            out.append("  log excerpts (distinct warnings and errors, last 3 per file):")
            out += [f"    {line}" for line in self.logs.splitlines()]
        out.append(f"  result: {'OK' if self.ok else 'FAILED'}")
        return "\n".join(out)


async def run_chaos(
    mode: Mode,
    data_dir: Path,
    seed: int | None = None,
    duration: float | None = None,
    rate: float | None = None,
    fresh_worker_state: bool = False,
) -> Report:
    seed = seed if seed is not None else random.randrange(1_000_000)
    if duration is not None or rate is not None:
        mode = dataclasses.replace(mode, duration=duration or mode.duration, rate=rate or mode.rate)
    rng = random.Random(seed)
    load_sites = sites_per_partition("load")
    probe_sites = sites_per_partition("probe")
    cluster = Cluster(data_dir, load_sites + probe_sites, fresh_worker_state)
    report = Report(mode.name, seed, str(data_dir))
    driver: Driver | None = None
    stats: StatsClient | None = None
    supervisor: asyncio.Task[None] | None = None
    try:
        print(f"chaos: starting the stack in {data_dir}", flush=True)
        await cluster.start()
        supervisor = asyncio.create_task(cluster.supervise())
        await asyncio.sleep(1.5)  # the ingest's site list
        driver = Driver(cluster, load_sites, mode, rng)
        stats = StatsClient(cluster)
        injector = Injector(cluster, driver, stats, probe_sites, random.Random(seed + 1))
        stop = asyncio.Event()
        print(
            f"chaos: load {mode.rate:.0f} hits/s for {mode.duration:.0f}s on "
            f"{', '.join(load_sites)}",
            flush=True,
        )
        max_workers = 1

        async def watch_scale() -> None:
            nonlocal max_workers
            ticks = 0
            while not stop.is_set():
                max_workers = max(max_workers, len(injector.live_workers()))
                await asyncio.sleep(0.5)
                ticks += 1
                if ticks % 120 == 0:  # a progress line a minute
                    t = driver.tally
                    print(
                        f"chaos: t={time.monotonic() - load_started:6.1f}s {t.generated} hits, "
                        f"{t.acked_hits} answered 202, {len(injector.faults)} faults, "
                        f"{len(injector.live_workers())} workers",
                        flush=True,
                    )

        load_started = cluster.t0 = time.monotonic()
        faults = asyncio.create_task(injector.run(mode, stop))
        scale = asyncio.create_task(watch_scale())
        await driver.run(stop, mode.max_hits)
        stop.set()
        await faults
        await scale
        await driver.drain(timeout=120)
        report.load_seconds = time.monotonic() - load_started
        load_end = time.time()
        print("chaos: load done; waiting for probes and the pipeline to drain", flush=True)
        # One deadline for everything that follows the load (it scales with the load); the
        # drain keeps a reserve of its own, so slow probes cannot starve it.
        reserve = 30.0 + driver.tally.acked_hits / 4000
        settle_by = time.monotonic() + mode.drain_timeout + driver.tally.acked_hits / 2000

        def left(keep: float = 0.0) -> float:
            return max(5.0, settle_by - keep - time.monotonic())

        if injector.probe_tasks:
            await asyncio.wait(injector.probe_tasks, timeout=left(reserve))
        # Every worker restarted by now must come up again.
        report.problems += await cluster.wait_workers_settled(left(reserve))

        auditor = Auditor(stats, driver.tally, load_sites + probe_sites)
        report.drain_seconds, report.drained = await auditor.wait_drained(max(reserve, left()))

        tally = driver.tally
        report.hits_sent = tally.generated
        report.requests = tally.attempts
        report.acked = tally.acked_hits
        report.unknown_outcome = tally.unknown_requests
        report.gave_up = tally.gave_up
        report.dropped = tally.dropped
        report.rejected = {str(k): v for k, v in tally.rejected.items()}
        report.answers = dict(tally.answers)

        rollups, used = await auditor.per_minute("rollup_minute")
        audit = audit_counts(tally, rollups, "rollup_minute", used)
        report.counted = audit.counted
        report.lost = audit.lost
        report.double_counted = audit.double
        report.unknown_counted = audit.unknown_counted
        report.problems += audit.problems
        events, used_events = await auditor.per_minute("events")
        events_audit = audit_counts(tally, events, "events", used_events)
        report.events_table_lost = events_audit.lost
        report.events_table_double = events_audit.double
        report.problems += events_audit.problems
        report.tables = {f"per-minute {k}": v for k, v in (used + used_events).items()}
        if set(used) != {"rollup_minute"}:
            report.problems.append(f"per-minute rollup query answered from {dict(used)}")
        if set(used_events) != {"events"}:
            report.problems.append(f"unaligned query answered from {dict(used_events)}")
        report.problems += await auditor.consistency()
        report.visitors, visitor_problems = await auditor.visitors()
        report.problems += visitor_problems
        report.live, live_problems = await live_check(
            stats, tally, load_sites, injector.redis_back_at or driver.first_send, load_end
        )
        report.problems += live_problems

        for task in injector.probe_tasks:
            task.cancel()
        report.faults = [dataclasses.asdict(f) for f in injector.faults]
        for f in injector.faults:
            if f.recovery is None:
                report.problems.append(f"fault #{f.index} {f.kind}: not recovered {f.note}")
        report.worker_sigkills = injector.worker_sigkills
        report.max_workers = max_workers
        report.worker_ready_seconds = [
            p.ready_after
            for p in cluster.all_procs
            if p.name.startswith("worker") and p.ready_after is not None
        ]
        prefixes = ("rollup_store_", "rollup_ingest_")
        assert cluster.api is not None and cluster.ingest is not None
        report.metrics = {
            **await scrape_metrics(cluster.api_port, prefixes),
            **await scrape_metrics(cluster.ingest_port, prefixes),
        }
        report.logs = cluster.logs_excerpt()
        report.crashes = list(cluster.crashes)
        report.unknown_log = list(tally.unknown_log)
        lat = sorted(tally.latencies)
        if lat:
            report.latency = {
                q: round(lat[min(len(lat) - 1, int(len(lat) * f))] * 1000, 1)
                for q, f in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
            }
        return report
    finally:
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        if driver is not None:
            await driver.close()
        if stats is not None:
            await stats.close()
        await cluster.stop()


async def _until_signalled(run: Any) -> Report:
    """SIGTERM or SIGINT cancels the run, whose cleanup then stops every process it started."""
    task = asyncio.ensure_future(run)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    report: Report = await task
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.chaos", description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=("short", "long"), default="short")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--duration", type=float, default=None, help="seconds of load")
    p.add_argument("--rate", type=float, default=None, help="hits per second")
    p.add_argument("--data-dir", type=Path, default=None, help="default: a new temp directory")
    p.add_argument("--keep", action="store_true", help="keep the data directory and logs")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    p.add_argument(
        "--fresh-worker-state",
        action="store_true",
        help="start every worker incarnation on an empty state directory (default: a restarted "
        "worker keeps its slot's RocksDB directory, as a pod keeps its volume)",
    )
    args = p.parse_args(argv)
    mode = Mode.short() if args.mode == "short" else Mode.long()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix=f"rollup-chaos-{mode.name}-"))
    report: Report | None = None
    try:
        report = asyncio.run(
            _until_signalled(
                run_chaos(
                    mode,
                    data_dir,
                    args.seed,
                    args.duration,
                    args.rate,
                    fresh_worker_state=args.fresh_worker_state,
                )
            )
        )
        print(report.text(), flush=True)
        if args.json:
            args.json.write_text(json.dumps(dataclasses.asdict(report), indent=2))
        return 0 if report.ok else 1
    finally:
        if args.keep or (report is not None and not report.ok) or args.data_dir:
            print(f"chaos: data and logs kept in {data_dir}", flush=True)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
