"""Start `rollup run` in a scratch directory for a benchmark, and stop it afterwards."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Scrape:
    """One scrape of a /metrics page (an unreachable one reads as all zeros): read several
    values from it rather than scraping once per value, which costs the scraped process."""

    def __init__(self, url: str, text: str | None = None) -> None:
        """Scrapes `url`, or reads `text` if given."""
        if text is None:
            try:
                text = httpx.get(url, timeout=2).text
            except httpx.HTTPError:
                text = ""
        self.samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The sum of the samples of `name` whose labels include `labels`."""
        return sum(
            sample.value
            for sample in self.samples
            if sample.name == name
            and all(sample.labels.get(k) == v for k, v in (labels or {}).items())
        )


def histogram_quantile(
    before: Scrape, after: Scrape, name: str, q: float, labels: dict[str, str] | None = None
) -> float | None:
    """The q-quantile of the observations a histogram took between two scrapes (the label sets
    that include `labels`, together), interpolated within its bucket as Prometheus does; None
    if it took none."""
    counts: dict[float, float] = {}
    for scrape, sign in ((after, 1), (before, -1)):
        for sample in scrape.samples:
            if sample.name == f"{name}_bucket" and all(
                sample.labels.get(k) == v for k, v in (labels or {}).items()
            ):
                le = float(sample.labels["le"])
                counts[le] = counts.get(le, 0.0) + sign * sample.value
    bounds = sorted(counts)
    if not bounds or counts[bounds[-1]] <= 0:
        return None
    rank = q * counts[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        if counts[bound] >= rank:
            if bound == float("inf"):
                return lower  # beyond the largest finite bucket: its bound is all we know
            share = (rank - below) / (counts[bound] - below) if counts[bound] > below else 1.0
            return lower + (bound - lower) * share
        lower, below = bound, counts[bound]
    return lower


def metric(url: str, name: str, labels: dict[str, str] | None = None) -> float:
    return Scrape(url).value(name, labels)


def spawn(role: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """One engine role (`python -m engine.cli <role>`) in its own session, its output
    appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "engine.cli", role],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@dataclass
class RunningStack:
    url: str
    admin_token: str
    env: dict[str, str]
    data_dir: Path
    proc: subprocess.Popen[bytes]

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
            raise AssertionError(f"rollup {' '.join(args)} failed: {out.stderr[-2000:]}")
        return out.stdout

    def add_site(self, domain: str, timezone: str = "UTC") -> str:
        return self.rollup("sites", "add", domain, "--timezone", timezone).strip().splitlines()[-1]

    @property
    def worker_metrics(self) -> str:
        return f"http://127.0.0.1:{self.env['ROLLUP_WORKER_WEB_PORT']}/metrics"

    def engine_processes(self) -> dict[str, int]:
        """The engine's role processes under `rollup run`, by role (from /proc)."""
        return {name: pid for name, pid in self.processes().items() if name in ROLES}

    def processes(self) -> dict[str, int]:
        """Every process `rollup run` started: its roles by role, the broker and Redis by
        program name."""
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if int(stat[1]) != self.proc.pid or stat[0] == "Z":
                continue
            if b"engine.cli" in argv:
                found[argv[argv.index(b"engine.cli") + 1].decode()] = int(entry.name)
            else:
                program = Path(argv[0].decode(errors="replace")).name
                for kind in ("tansu", "redis"):
                    if kind in program:
                        program = "broker" if kind == "tansu" else kind
                found[program] = int(entry.name)
        return found

    @contextmanager
    def cpu_shares(self, into: dict[str, float]) -> Iterator[None]:
        """Fills `into` with the cores each of the stack's processes used meanwhile, the
        children this script waited for (a load generator) as `load`, and the machine's idle
        cores: where a run's CPU went."""
        pids = self.processes()
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        children = _children_cpu()
        idle, started = _idle_seconds(), time.monotonic()
        yield
        wall = time.monotonic() - started
        for name, pid in pids.items():
            into[name] = round((cpu_seconds(pid) - before[name]) / wall, 2)
        into["load"] = round((_children_cpu() - children) / wall, 2)
        into["idle"] = round((_idle_seconds() - idle) / wall, 2)

    @contextmanager
    def paused(self, *roles: str) -> Iterator[None]:
        """Roles stopped (SIGSTOP) meanwhile: what the others do with the machine to
        themselves. Kafka keeps what a paused consumer has not read."""
        pids = [pid for role, pid in self.engine_processes().items() if role in roles]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)

    def logs(self) -> str:
        parts = []
        for log in sorted((self.data_dir / "logs").glob("*.log")):
            parts.append(f"--- {log.name}\n" + log.read_text(errors="replace")[-3000:])
        return "\n".join(parts)


ROLES = ("ingest", "api", "worker", "live")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process: on a shared, noisy machine a steadier figure than
    wall time."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _idle_seconds() -> float:
    """The machine's idle CPU-seconds since boot (all cores)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


def _wait_ready(stack: RunningStack, timeout: float, worker: bool) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if stack.proc.poll() is not None:
            raise RuntimeError(f"rollup run exited early:\n{stack.logs()}")
        try:
            resp = httpx.get(f"{stack.url}/api/health", timeout=2)
            last = resp.text
            worker_log = stack.data_dir / "logs" / "worker.log"
            worker_ready = worker_log.exists() and "Worker ready" in worker_log.read_text(
                errors="replace"
            )
            if resp.status_code == 200 and (worker_ready or not worker):
                return
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise RuntimeError(f"stack not ready after {timeout}s ({last}):\n{stack.logs()}")


@contextmanager
def running_stack(
    data_dir: Path,
    extra_env: dict[str, str] | None = None,
    *,
    wait_for_worker: bool = True,
    admin_token: str = "test-admin-token",
) -> Iterator[RunningStack]:
    """`rollup run` on free ports in `data_dir`, on its embedded components only (servers named
    in the environment are ignored), stopped with SIGINT on exit."""
    http_port = free_port()
    env = {
        **os.environ,
        "ROLLUP_DATA_DIR": str(data_dir),
        "ROLLUP_HTTP_PORT": str(http_port),
        "ROLLUP_BROKER_PORT": str(free_port()),
        "ROLLUP_WORKER_WEB_PORT": str(free_port()),
        "ROLLUP_LIVE_WEB_PORT": str(free_port()),
        "ROLLUP_ADMIN_TOKEN": admin_token,
        "ROLLUP_SITES_REFRESH_SECONDS": "0.5",
    }
    for name in ("KAFKA_BROKERS", "REDIS_URL", "CLICKHOUSE_URL", "DATABASE_URL"):
        env.pop(name, None)
    env.update(extra_env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "run"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    stack = RunningStack(f"http://127.0.0.1:{http_port}", admin_token, env, data_dir, proc)
    try:
        _wait_ready(stack, timeout=120, worker=wait_for_worker)
        yield stack
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def embedded_stack(extra_env: dict[str, str] | None = None) -> Iterator[RunningStack]:
    """A benchmark's stack in a scratch directory, without ingest rate limits."""
    with tempfile.TemporaryDirectory(prefix="rollup-bench-") as tmp:
        env = {"ROLLUP_INGEST_RATE_LIMIT": "0", **(extra_env or {})}
        with running_stack(Path(tmp), env, admin_token="bench") as stack:
            yield stack
