"""Sites and their API keys: application data, kept apart from analytics data.

SQLite in the data directory by default; PostgreSQL when DATABASE_URL points at one. Keys are
stored as SHA-256 digests only; the clear key is shown once, when it is made.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.errors import ConfigError, InputError

DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9-]{1,63}$")

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS sites (
        domain TEXT PRIMARY KEY,
        timezone TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS api_keys (
        key_hash TEXT PRIMARY KEY,
        label TEXT NOT NULL,
        rate_limit_per_hour INTEGER NOT NULL,
        created_at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS api_key_sites (
        key_hash TEXT NOT NULL,
        domain TEXT NOT NULL,
        PRIMARY KEY (key_hash, domain)
    )""",
]


@dataclass(frozen=True, slots=True)
class Site:
    domain: str
    timezone: str
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_hash: str
    rate_limit_per_hour: int
    domains: frozenset[str]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def normalise_domain(domain: str) -> str:
    domain = domain.strip().lower()
    domain = domain.removeprefix("www.")
    if not DOMAIN_RE.match(domain):
        raise InputError({"domain": [f"not a valid domain: {domain!r}"]})
    return domain


def check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InputError({"timezone": [f"unknown IANA timezone: {name!r}"]}) from exc
    return name


class SiteRepository:
    """Thread-safe, synchronous; callers on the event loop use an executor or the cache."""

    def __init__(self, dsn: str, default_rate_limit: int = 600) -> None:
        self._dsn = dsn
        self._default_rate_limit = default_rate_limit
        self._lock = threading.Lock()
        self._postgres = dsn.startswith(("postgres://", "postgresql://"))
        self._conn: Any = None

    def open(self) -> None:
        if self._postgres:
            import psycopg

            self._conn = psycopg.connect(self._dsn, autocommit=True)
        elif self._dsn.startswith("sqlite:///"):
            path = Path(self._dsn.removeprefix("sqlite:///"))
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA busy_timeout=5000")
        else:
            raise ConfigError(f"DATABASE_URL: unsupported scheme in {self._dsn.split(':')[0]!r}")
        for statement in SCHEMA:
            self._execute(statement)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self._postgres:
            sql = sql.replace("?", "%s")
        with self._lock:
            cursor = self._conn.execute(sql, params)
            try:
                return list(cursor.fetchall())
            except Exception:  # statements without a result set
                return []

    def add_site(self, domain: str, timezone: str = "UTC") -> tuple[Site, str]:
        """Create the site (or update its timezone) and a new key for it; returns the clear key."""
        domain = normalise_domain(domain)
        timezone = check_timezone(timezone)
        now = dt.datetime.now(dt.UTC)
        existing = self.get_site(domain)
        if existing is None:
            self._execute(
                "INSERT INTO sites (domain, timezone, created_at) VALUES (?, ?, ?)",
                (domain, timezone, now.isoformat()),
            )
        else:
            self._execute("UPDATE sites SET timezone = ? WHERE domain = ?", (timezone, domain))
        key = self.add_key([domain], label=f"site {domain}")
        site = self.get_site(domain)
        assert site is not None
        return site, key

    def add_key(self, domains: list[str], label: str, rate_limit: int | None = None) -> str:
        key = secrets.token_urlsafe(32)
        key_hash = hash_key(key)
        self._execute(
            "INSERT INTO api_keys (key_hash, label, rate_limit_per_hour, created_at) "
            "VALUES (?, ?, ?, ?)",
            (
                key_hash,
                label,
                rate_limit or self._default_rate_limit,
                dt.datetime.now(dt.UTC).isoformat(),
            ),
        )
        for domain in domains:
            self._execute(
                "INSERT INTO api_key_sites (key_hash, domain) VALUES (?, ?)", (key_hash, domain)
            )
        return key

    def set_rate_limit(self, domain: str, per_hour: int) -> int:
        """Set the Stats API rate limit of every key of the site; returns how many keys."""
        rows = self._execute("SELECT key_hash FROM api_key_sites WHERE domain = ?", (domain,))
        for (key_hash,) in rows:
            self._execute(
                "UPDATE api_keys SET rate_limit_per_hour = ? WHERE key_hash = ?",
                (per_hour, key_hash),
            )
        return len(rows)

    def get_site(self, domain: str) -> Site | None:
        rows = self._execute(
            "SELECT domain, timezone, created_at FROM sites WHERE domain = ?", (domain,)
        )
        return _site(rows[0]) if rows else None

    def list_sites(self) -> list[Site]:
        rows = self._execute("SELECT domain, timezone, created_at FROM sites ORDER BY domain")
        return [_site(row) for row in rows]

    def get_key(self, key: str) -> ApiKey | None:
        key_hash = hash_key(key)
        rows = self._execute(
            "SELECT rate_limit_per_hour FROM api_keys WHERE key_hash = ?", (key_hash,)
        )
        if not rows:
            return None
        domains = self._execute("SELECT domain FROM api_key_sites WHERE key_hash = ?", (key_hash,))
        return ApiKey(key_hash, int(rows[0][0]), frozenset(d for (d,) in domains))


def _site(row: tuple[Any, ...]) -> Site:
    created = row[2]
    if isinstance(created, str):
        created = dt.datetime.fromisoformat(created)
    return Site(domain=row[0], timezone=row[1], created_at=created)
