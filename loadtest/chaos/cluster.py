"""The chaos harness's configuration (constants, `Mode`, site and minute helpers) and its
processes: the embedded broker and Redis, and the engine's roles as separate processes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent.parent

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
