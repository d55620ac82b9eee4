"""Start `rollup run` in a scratch directory for a benchmark, and stop it afterwards."""

from __future__ import annotations

import os
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

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningStack:
    url: str
    env: dict[str, str]
    data_dir: Path

    def rollup(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "engine.cli", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout

    def add_site(self, domain: str, timezone: str = "UTC") -> str:
        return self.rollup("sites", "add", domain, "--timezone", timezone).strip().splitlines()[-1]


@contextmanager
def embedded_stack(extra_env: dict[str, str] | None = None) -> Iterator[RunningStack]:
    with tempfile.TemporaryDirectory(prefix="rollup-bench-") as tmp:
        port = free_port()
        env = {
            **os.environ,
            "ROLLUP_DATA_DIR": tmp,
            "ROLLUP_HTTP_PORT": str(port),
            "ROLLUP_BROKER_PORT": str(free_port()),
            "ROLLUP_WORKER_WEB_PORT": str(free_port()),
            "ROLLUP_ADMIN_TOKEN": "bench",
            "ROLLUP_SITES_REFRESH_SECONDS": "0.5",
            "ROLLUP_INGEST_RATE_LIMIT": "0",
            **(extra_env or {}),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "run"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        stack = RunningStack(f"http://127.0.0.1:{port}", env, Path(tmp))
        try:
            deadline = time.monotonic() + 120
            worker_log = Path(tmp) / "logs" / "worker.log"
            while time.monotonic() < deadline:
                try:
                    ok = httpx.get(f"{stack.url}/api/health", timeout=2).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok and worker_log.exists() and "Worker ready" in worker_log.read_text():
                    break
                time.sleep(0.5)
            else:
                raise RuntimeError("stack did not become ready")
            yield stack
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
