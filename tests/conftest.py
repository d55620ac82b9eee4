"""Fixtures: the real embedded stack (Tansu, Redis, chDB, Faust worker), started once per session
through the real `rollup run` command."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
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

    def logs(self) -> str:
        parts = []
        for log in sorted((self.data_dir / "logs").glob("*.log")):
            parts.append(f"--- {log.name}\n" + log.read_text(errors="replace")[-3000:])
        return "\n".join(parts)


def _wait_ready(stack: Stack, timeout: float, worker: bool = True) -> None:
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
    data_dir: Path, extra_env: dict[str, str] | None = None, wait_for_worker: bool = True
) -> Iterator[Stack]:
    """`rollup run` on free ports in `data_dir`, stopped (SIGINT) on exit."""
    http_port = free_port()
    env = {
        **os.environ,
        "ROLLUP_DATA_DIR": str(data_dir),
        "ROLLUP_HTTP_PORT": str(http_port),
        "ROLLUP_BROKER_PORT": str(free_port()),
        "ROLLUP_WORKER_WEB_PORT": str(free_port()),
        "ROLLUP_ADMIN_TOKEN": "test-admin-token",
        "ROLLUP_SITES_REFRESH_SECONDS": "0.5",
        # Short enough for a test to see idle session state expire.
        "ROLLUP_SESSION_STATE_IDLE_SECONDS": "20",
        "ROLLUP_SESSION_EXPIRY_INTERVAL": "2",
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
    stack = Stack(f"http://127.0.0.1:{http_port}", "test-admin-token", env, data_dir, proc)
    try:
        _wait_ready(stack, timeout=120, worker=wait_for_worker)
        yield stack
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("rollup")) as running:
        yield running


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A bare embedded Kafka broker (Tansu), for tests of consumer and broker behaviour."""
    from config import load_settings
    from engine.stack import EmbeddedStack

    port = free_port()
    settings = load_settings(
        data_dir=tmp_path_factory.mktemp("broker"), broker_port=port, redis_url="redis://unused"
    )
    embedded = EmbeddedStack(settings)
    embedded.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A real PostgreSQL server of its own (Debian's binaries; `make postgres` installs them)."""
    from tests.postgres import postgres_cluster

    with postgres_cluster(free_port()) as dsn:
        yield dsn


# Ingest limits on, so that the stack on PostgreSQL also shows the shared rate limits.
PG_STACK_CLIENT_LIMIT = 5
PG_STACK_SITE_LIMIT = 12


@pytest.fixture(scope="session")
def pg_stack(tmp_path_factory: pytest.TempPathFactory, postgres_dsn: str) -> Iterator[Stack]:
    """A second embedded stack whose sites and keys live in PostgreSQL. Its worker is not
    waited for: the tests on it are about answers at the edge, not counts."""
    env = {
        "DATABASE_URL": postgres_dsn,
        "ROLLUP_INGEST_RATE_LIMIT": str(PG_STACK_CLIENT_LIMIT),
        "ROLLUP_INGEST_SITE_RATE_LIMIT": str(PG_STACK_SITE_LIMIT),
    }
    with running_stack(tmp_path_factory.mktemp("rollup-pg"), env, wait_for_worker=False) as s:
        yield s
