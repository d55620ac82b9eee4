"""Sites and keys on both application databases: the default SQLite file and a real
PostgreSQL server. Keys are random, stored only as hashes, read only their own sites, and
can be listed, revoked, rotated and limited."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from engine.errors import InputError
from engine.sites import SiteRepository, hash_key


@pytest.fixture(params=["sqlite", "postgres"])
def dsn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sites.sqlite3'}"
        return
    base: str = request.getfixturevalue("postgres_dsn")
    # A schema of its own per test, so that tests do not see each other's rows.
    schema = f"t{abs(hash(request.node.nodeid)) % 10**9}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
    yield f"{base}&options=-csearch_path%3D{schema}"


@pytest.fixture
def repo(dsn: str) -> Iterator[SiteRepository]:
    r = SiteRepository(dsn, default_rate_limit=600)
    r.open()
    yield r
    r.close()


def all_text(dsn: str) -> str:
    """Every value of every table of the application database, as one string."""
    tables = ("sites", "api_keys", "api_key_sites")
    if dsn.startswith("sqlite:///"):
        conn = sqlite3.connect(dsn.removeprefix("sqlite:///"))
        rows = [r for t in tables for r in conn.execute(f"SELECT * FROM {t}")]
        conn.close()
    else:
        with psycopg.connect(dsn) as conn:
            rows = [r for t in tables for r in conn.execute(f"SELECT * FROM {t}").fetchall()]
    return repr(rows)


def test_keys_are_random_hashed_and_read_only_their_sites(repo: SiteRepository, dsn: str) -> None:
    _, key_a = repo.add_site("a.test")
    _, key_b = repo.add_site("b.test", "Europe/Berlin")
    assert key_a != key_b and len(key_a) >= 40 and key_a.startswith("rk_")
    a, b = repo.get_key(key_a), repo.get_key(key_b)
    assert a is not None and b is not None
    assert a.domains == {"a.test"} and b.domains == {"b.test"}
    assert a.rate_limit_per_hour == 600
    assert repo.get_key("rk_" + "x" * 43) is None
    assert repo.get_key(key_a[:-1]) is None
    stored = all_text(dsn)
    assert key_a not in stored and key_b not in stored  # only hashes
    assert hash_key(key_a) in stored


def test_multi_site_key_revoke_rotate_and_limits(repo: SiteRepository) -> None:
    repo.add_site("a.test")
    repo.add_site("b.test")
    both = repo.add_key(["a.test", "b.test"], "agency", rate_limit=50)
    key = repo.get_key(both)
    assert key is not None and key.domains == {"a.test", "b.test"}
    assert key.rate_limit_per_hour == 50
    infos = {i.key_id: i for i in repo.list_keys()}
    assert infos[key.key_id].domains == ("a.test", "b.test")
    assert {i.key_id for i in repo.list_keys("b.test")} >= {key.key_id}
    assert repo.set_key_rate_limit(key.key_id, 7) == key.key_id
    assert (repo.get_key(both) or key).rate_limit_per_hour == 7

    rotated = repo.rotate_key(key.key_id)
    assert repo.get_key(both) is None
    new = repo.get_key(rotated)
    assert new is not None and new.domains == {"a.test", "b.test"}
    assert new.rate_limit_per_hour == 7
    assert {i.key_id: i.revoked for i in repo.list_keys()}[key.key_id] is True

    repo.revoke_key(new.key_id)
    assert repo.get_key(rotated) is None
    with pytest.raises(InputError, match="no active key"):
        repo.revoke_key(new.key_id)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda r: r.add_key(["nowhere.test"], "x"), "domains"),
        (lambda r: r.add_key([], "x"), "domains"),
        (lambda r: r.add_key(["a.test"], "x", rate_limit=0), "rate_limit"),
        (lambda r: r.revoke_key("zz%"), "key_id"),
        (lambda r: r.rotate_key("0123"), "key_id"),
        (lambda r: r.set_rate_limit("a.test", -1), "rate_limit"),
        (lambda r: r.add_site("not a domain"), "domain"),
        (lambda r: r.add_site("a.test", "Mars/Olympus"), "timezone"),
    ],
)
def test_bad_management_input_names_the_field(
    repo: SiteRepository, call: object, field: str
) -> None:
    repo.add_site("a.test")
    with pytest.raises(InputError) as raised:
        call(repo)  # type: ignore[operator]
    assert field in raised.value.errors


def test_old_database_gets_the_revoked_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE api_keys (key_hash TEXT PRIMARY KEY, label TEXT NOT NULL, "
        "rate_limit_per_hour INTEGER NOT NULL, created_at TEXT NOT NULL)"
    )
    conn.execute("INSERT INTO api_keys VALUES (?, 'old', 600, '2026-01-01')", (hash_key("k"),))
    conn.commit()
    conn.close()
    repo = SiteRepository(f"sqlite:///{path}")
    repo.open()
    assert repo.get_key("k") is not None
    assert [i.revoked for i in repo.list_keys()] == [False]
    repo.close()
