"""The one typed settings object. Built from the environment only when asked, never at import."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the engine. An unset URL selects the embedded component."""

    model_config = SettingsConfigDict(env_prefix="ROLLUP_", extra="ignore", frozen=True)

    data_dir: Path = Path(".rollup")
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # `rollup run` only: its api process listens on 127.0.0.1 at this port, behind the ingest
    # process that owns the public port; 0 picks a free port at start.
    internal_api_port: int = Field(default=0, ge=0, le=65535)
    # An ingest-only process with this set (`rollup run` sets it) forwards every request it does
    # not answer itself to this api base URL, and merges the api's health and metrics into its own.
    api_upstream_url: str | None = None
    # Seconds a forwarded request may wait for the api's answer to begin (a slow Stats API query).
    api_upstream_timeout_seconds: float = 60.0

    # External components; None means "the embedded one in data_dir".
    kafka_brokers: str | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_BROKERS", "ROLLUP_KAFKA_BROKERS")
    )
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "ROLLUP_REDIS_URL")
    )
    clickhouse_url: str | None = Field(
        default=None, validation_alias=AliasChoices("CLICKHOUSE_URL", "ROLLUP_CLICKHOUSE_URL")
    )
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "ROLLUP_DATABASE_URL")
    )

    admin_token: str | None = None
    # Seconds before a Redis call gives up (live counters are skipped, ingest answers 503).
    redis_timeout_seconds: float = 2.0
    broker_port: int = 9092
    hits_topic: str = "hits"
    rollups_topic: str = "rollups"
    topic_partitions: int = 4
    app_id: str = "rollup"

    # Ingest
    ingest_rate_limit: int = 0  # hits/s per client address and site; 0 = off
    ingest_site_rate_limit: int = 0  # hits/s per site from all clients together; 0 = off
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1/32", "::1/128"])
    max_body_bytes: int = 64 * 1024
    max_import_bytes: int = 64 * 1024 * 1024
    max_pending_hits: int = 200_000
    produce_max_hits_per_message: int = 500

    # Worker and store
    worker_flush_seconds: float = 1.0
    # Hits up to this much older than the newest hit of their visitor still shape sessions.
    session_lateness_seconds: float = 600.0
    # A visitor's session state is dropped after this long without a hit (wall clock).
    session_state_idle_seconds: float = 2400.0
    session_expiry_interval: float = 30.0
    store_flush_seconds: float = 0.5
    # How often the week, month and quarter levels take the log's new rows (and whenever the
    # writer is idle). Queries read those levels only for spans that ended before today, which
    # live hits never touch; late hits for older days reach them within this delay.
    store_coarse_levels_seconds: float = 10.0
    events_retention_days: int = 90
    live_window_minutes: int = 30
    stats_rate_limit_per_hour: int = 600  # default of a new key; each key has its own
    # Stats API answers kept per process (0 = off); used only with the embedded chDB store,
    # whose only writer is this process (see engine/query/cache.py).
    query_cache_entries: int = 2048
    # ClickHouse threads one Stats API statement may use; None: one with the embedded chDB,
    # the server's default otherwise. chDB runs one statement at a time, so a second thread
    # only competes with the store writer and the other roles for the same cores: with two,
    # a 30-day top 10 of countries took 76-86 ms instead of 65-67 (README, "Queries").
    query_max_threads: int | None = None
    sites_refresh_seconds: float = 2.0
    worker_web_port: int = 6066
    # The live role's /metrics and /api/health (`rollup live`); 0 = off.
    live_web_port: int = 6067
    # RocksDB state of one worker process; two workers on one machine need two directories.
    worker_data_dir: Path | None = None
    log_level: str = "info"
    # Built dashboard and tracker bundles (`make setup` builds web/ into web/dist).
    web_dist_dir: Path | None = None
    # `json`: one object per line, for log collectors in production; `text` reads well in a
    # terminal and in `rollup run`'s log files.
    log_format: Literal["text", "json"] = "text"
    # The worker's /metrics and /api/health listen here (on `worker_web_port`); 0.0.0.0 in a pod.
    worker_web_host: str = "127.0.0.1"
    live_web_host: str = "127.0.0.1"
    # A ClickHouse cluster name (from the servers' remote_servers): the schema becomes
    # Replicated*MergeTree tables `<name>_local` ON CLUSTER behind Distributed tables `<name>`.
    clickhouse_cluster: str | None = Field(
        default=None,
        validation_alias=AliasChoices("CLICKHOUSE_CLUSTER", "ROLLUP_CLICKHOUSE_CLUSTER"),
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for net in value:
            ipaddress.ip_network(net, strict=False)
        return value

    @property
    def embedded_kafka(self) -> bool:
        return self.kafka_brokers is None

    @property
    def embedded_redis(self) -> bool:
        return self.redis_url is None

    @property
    def embedded_clickhouse(self) -> bool:
        return self.clickhouse_url is None

    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka_brokers or f"127.0.0.1:{self.broker_port}"

    @property
    def redis_socket(self) -> Path:
        return self.data_dir.resolve() / "redis.sock"

    @property
    def redis_dsn(self) -> str:
        return self.redis_url or f"unix://{self.redis_socket}"

    @property
    def worker_dir(self) -> Path:
        return (self.worker_data_dir or self.data_dir / "worker").resolve()

    @property
    def query_settings(self) -> dict[str, int]:
        """ClickHouse settings of each Stats API statement."""
        threads = self.query_max_threads
        if threads is None and self.embedded_clickhouse:
            threads = 1
        return {} if threads is None else {"max_threads": threads}

    @property
    def chdb_path(self) -> Path:
        return self.data_dir.resolve() / "clickhouse"

    @property
    def sites_dsn(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'sites.sqlite3'}"


def load_settings(**overrides: object) -> Settings:
    """Read the environment (and explicit overrides, which win)."""
    return Settings(**overrides)  # type: ignore[arg-type]
