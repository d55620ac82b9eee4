"""Fixtures: the real embedded stack (Tansu, Redis, chDB, Faust worker), started once per session
through the real `rollup run` command."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from loadtest.harness import ROOT, RunningStack, free_port
from loadtest.harness import running_stack as harness_stack

__all__ = ["ROOT", "Stack", "free_port"]


Stack = RunningStack

# Longer than any one integration test takes, so none runs across UTC midnight.
MIDNIGHT_MARGIN_SECONDS = 180


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("integration") is not None:
        from tests.clock import clear_of_midnight

        clear_of_midnight(MIDNIGHT_MARGIN_SECONDS)


@contextmanager
def running_stack(
    data_dir: Path, extra_env: dict[str, str] | None = None, wait_for_worker: bool = True
) -> Iterator[Stack]:
    env = {
        # Short enough for a test to see idle session state expire.
        "ROLLUP_SESSION_STATE_IDLE_SECONDS": "20",
        "ROLLUP_SESSION_EXPIRY_INTERVAL": "2",
        **(extra_env or {}),
    }
    with harness_stack(data_dir, env, wait_for_worker=wait_for_worker) as stack:
        yield stack


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
