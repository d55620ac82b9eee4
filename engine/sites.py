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
        created_at TEXT NOT NULL,
        revoked_at TEXT
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

    @property
    def key_id(self) -> str:
        return key_id_of(self.key_hash)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What `sites keys` lists: never the key itself, which exists only where it was shown."""

    key_id: str
    label: str
    rate_limit_per_hour: int
    domains: tuple[str, ...]
    created_at: str
    revoked: bool


# A public handle for a key (list, revoke, rotate): a prefix of its hash, useless for auth.
KEY_ID_CHARS = 12
KEY_PREFIX = "rk_"


def key_id_of(key_hash: str) -> str:
    return key_hash[:KEY_ID_CHARS]


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
        self._add_column("api_keys", "revoked_at", "TEXT")

    def _add_column(self, table: str, column: str, kind: str) -> None:
        """Databases made before the column existed get it (both SQLite and PostgreSQL)."""
        if self._postgres:
            self._execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")
            return
        columns = {row[1] for row in self._execute(f"PRAGMA table_info({table})")}
        if column not in columns:
            self._execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

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
        """A new random key reading exactly `domains` (which must exist); returns the clear key,
        which is not stored anywhere."""
        domains = [normalise_domain(d) for d in domains]
        if not domains:
            raise InputError({"domains": ["a key needs at least one site"]})
        missing = [d for d in domains if self.get_site(d) is None]
        if missing:
            raise InputError({"domains": [f"unknown site(s): {', '.join(missing)}"]})
        if rate_limit is not None and rate_limit < 1:
            raise InputError({"rate_limit": ["must be at least 1 request per hour"]})
        key = KEY_PREFIX + secrets.token_urlsafe(32)
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
        for domain in dict.fromkeys(domains):
            self._execute(
                "INSERT INTO api_key_sites (key_hash, domain) VALUES (?, ?)", (key_hash, domain)
            )
        return key

    def _key_hashes(self, key_id: str) -> list[str]:
        if not key_id or len(key_id) < 8 or not all(c in "0123456789abcdef" for c in key_id):
            raise InputError({"key_id": ["at least 8 hex characters, as `sites keys` lists"]})
        rows = self._execute(
            "SELECT key_hash FROM api_keys WHERE key_hash LIKE ? AND revoked_at IS NULL",
            (key_id + "%",),
        )
        if not rows:
            raise InputError({"key_id": [f"no active key {key_id!r}"]})
        if len(rows) > 1:
            raise InputError({"key_id": [f"{key_id!r} matches several keys; give more of it"]})
        return [str(rows[0][0])]

    def revoke_key(self, key_id: str) -> str:
        """Revoke at once (every process reads keys from here on each request); returns the id."""
        (key_hash,) = self._key_hashes(key_id)
        self._execute(
            "UPDATE api_keys SET revoked_at = ? WHERE key_hash = ?",
            (dt.datetime.now(dt.UTC).isoformat(), key_hash),
        )
        return key_id_of(key_hash)

    def rotate_key(self, key_id: str) -> str:
        """A new key with the old one's sites, label and limit; the old one is revoked."""
        (key_hash,) = self._key_hashes(key_id)
        rows = self._execute(
            "SELECT label, rate_limit_per_hour FROM api_keys WHERE key_hash = ?", (key_hash,)
        )
        domains = self._execute("SELECT domain FROM api_key_sites WHERE key_hash = ?", (key_hash,))
        new_key = self.add_key([d for (d,) in domains], str(rows[0][0]), int(rows[0][1]))
        self.revoke_key(key_id_of(key_hash))
        return new_key

    def set_key_rate_limit(self, key_id: str, per_hour: int) -> str:
        if per_hour < 1:
            raise InputError({"rate_limit": ["must be at least 1 request per hour"]})
        (key_hash,) = self._key_hashes(key_id)
        self._execute(
            "UPDATE api_keys SET rate_limit_per_hour = ? WHERE key_hash = ?", (per_hour, key_hash)
        )
        return key_id_of(key_hash)

    def list_keys(self, domain: str | None = None) -> list[KeyInfo]:
        rows = self._execute(
            "SELECT key_hash, label, rate_limit_per_hour, created_at, revoked_at "
            "FROM api_keys ORDER BY created_at, key_hash"
        )
        links = self._execute("SELECT key_hash, domain FROM api_key_sites ORDER BY domain")
        by_key: dict[str, list[str]] = {}
        for key_hash, site in links:
            by_key.setdefault(key_hash, []).append(site)
        keys = [
            KeyInfo(
                key_id=key_id_of(key_hash),
                label=str(label),
                rate_limit_per_hour=int(limit),
                domains=tuple(by_key.get(key_hash, ())),
                created_at=str(created),
                revoked=revoked is not None,
            )
            for key_hash, label, limit, created, revoked in rows
        ]
        if domain is not None:
            keys = [k for k in keys if domain in k.domains]
        return keys

    def set_rate_limit(self, domain: str, per_hour: int) -> int:
        """Set the Stats API rate limit of every key of the site; returns how many keys."""
        if per_hour < 1:
            raise InputError({"rate_limit": ["must be at least 1 request per hour"]})
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
        """The active key, or None for an unknown or revoked one."""
        key_hash = hash_key(key)
        rows = self._execute(
            "SELECT rate_limit_per_hour FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL",
            (key_hash,),
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
