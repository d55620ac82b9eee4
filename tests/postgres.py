"""A throwaway PostgreSQL cluster for tests: Debian's server binaries (installed by `make
postgres`), `initdb` in a temporary directory, listening on a unix socket only, as the
`postgres` user when the tests run as root (PostgreSQL refuses to run as root)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries missing: run `make postgres`")
    return Path(found[-1]).parent


def _as_owner(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@contextmanager
def postgres_cluster(port: int) -> Iterator[str]:
    """Start a cluster; yields its DSN (database `rollup`, user `rollup`, trust auth)."""
    bin_dir = _bin_dir()
    root = Path(tempfile.mkdtemp(prefix="rollup-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        root.chmod(0o755)
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(sock, "postgres", "postgres")

    def run(*args: str) -> None:
        out = subprocess.run(_as_owner(list(args)), capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {out.stdout[-1500:]}{out.stderr[-1500:]}")

    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "rollup",
            "--no-sync", "-E", "UTF8")  # fmt: skip
        options = f"-k {sock} -p {port} -c listen_addresses='' -c fsync=off"
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"),
            "-w", "start")  # fmt: skip
        run(str(bin_dir / "createdb"), "-h", str(sock), "-p", str(port), "-U", "rollup", "rollup")
        yield f"postgresql://rollup@/rollup?host={sock}&port={port}"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                _as_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)
