"""The ClickHouse schema: the single-node DDL is unchanged, the cluster variant has a replicated
local table plus a Distributed table for every table, and ClickHouse's own parser accepts it."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

import pytest

from engine.store.schema import ROLLUP_LEVELS, SHARDING_KEYS, cluster_client_settings, ddl

# sha256 of the single-node statements: a change here changes what every existing deployment
# runs at start. Changed deliberately once since the cluster mode: issue 8 added the vitals
# columns (rollup_log arrays, quantileDD states in the levels, and their ADD COLUMN upgrades);
# issue 5 added the session_hour rollup, then the week and month levels and small granules for
# the day and coarser levels (an existing rollup_day is rebuilt with them: Store.migrate), then
# the quarter level, then day_totals, then rollup_span.
SINGLE_NODE_SHA256 = {
    90: "216016e2ec1b766b2075930ce88702753cc0386380be8ce242fced797ccc6ce6",
    1: "61f60c0d16b851a3127d1aff2be063d4d31680b4156143b788069bc6a988b136",
    400: "a4d5c11affbbf70848e0eda4f4a401e51e688c8b749b96afff92ab4c002f0650",
}
TABLES = (
    "events",
    "sessions",
    "rollup_log",
    "rollup_minute",
    "rollup_hour",
    "rollup_day",
    "rollup_week",
    "rollup_month",
    "rollup_quarter",
    "session_hour",
    "day_totals",
    "rollup_span",
)


def columns(statement: str) -> list[str]:
    body = statement[statement.index("(") + 1 : statement.rindex(") ENGINE")]
    return [line.strip().split()[0] for line in body.strip().splitlines()]


def create_of(statements: list[str], table: str) -> str:
    (found,) = [s for s in statements if f"CREATE TABLE IF NOT EXISTS {table} " in s]
    return found


@pytest.mark.parametrize("days", sorted(SINGLE_NODE_SHA256))
def test_single_node_ddl_is_unchanged(days: int) -> None:
    digest = hashlib.sha256("\x00".join(ddl(days)).encode()).hexdigest()
    assert digest == SINGLE_NODE_SHA256[days]
    assert ddl(days) == ddl(days, None)
    assert not any("ON CLUSTER" in s or "Replicated" in s for s in ddl(days))


def test_cluster_ddl_replicates_and_distributes_every_table() -> None:
    single = ddl(30)
    cluster = ddl(30, "analytics")
    assert len(cluster) == 2 * len(TABLES)
    assert all(" ON CLUSTER analytics " in s for s in cluster)
    assert not any(s.lstrip().startswith(("DROP", "ALTER")) for s in cluster)
    for table in TABLES:
        local = create_of(cluster, f"{table}_local")
        original = create_of(single, table)
        assert columns(local) == columns(original)
        engine = re.search(r"ENGINE = (\w+)\(", local)
        assert engine is not None
        assert engine[1].startswith("Replicated") and engine[1].endswith("MergeTree")
        original_engine = re.search(r"ENGINE = (\w+)", original)
        assert original_engine is not None and engine[1] == "Replicated" + original_engine[1]
        assert f"'/clickhouse/tables/{{shard}}/{{database}}/{table}_local', '{{replica}}'" in local
        # Keys and TTL are the single node's: everything after the engine clause.
        tail = re.split(r"ENGINE = \w+(?:\([^)]*\))?", original)[1]
        assert local.endswith(tail)
        distributed = create_of(cluster, table)
        assert (
            f"AS {table}_local ENGINE = Distributed(analytics, currentDatabase(), "
            f"{table}_local, {SHARDING_KEYS[table]})" in distributed
        )
        # The local table must exist before the Distributed table that copies it.
        assert cluster.index(local) < cluster.index(distributed)
    sessions = create_of(cluster, "sessions_local")
    assert "'{replica}', version, is_deleted)" in sessions
    assert "TTL toDate(ts) + INTERVAL 30 DAY" in create_of(cluster, "events_local")
    assert "ORDER BY (site, dim, day, value)" in create_of(cluster, "rollup_day_local")
    # The vitals columns (issue 8) are carried over like every other column.
    assert "lcp Array(Float32) DEFAULT []" in create_of(cluster, "rollup_log_local")
    for level in ROLLUP_LEVELS.values():
        local = create_of(cluster, f"{level}_local")
        for vital in ("ttfb", "fcp", "lcp", "inp", "cls"):
            assert f"{vital} AggregateFunction(quantileDD(0.005, 0.75), Float64)" in local


def test_rows_that_merge_share_a_shard() -> None:
    # Rows ClickHouse folds together (the ORDER BY key) must hash to one shard.
    cluster = ddl(90, "c")
    for table in ("sessions", "day_totals", *ROLLUP_LEVELS.values()):
        order = re.search(r"ORDER BY (.*)", create_of(cluster, f"{table}_local"))
        assert order is not None
        key_columns = set(re.findall(r"\w+", SHARDING_KEYS[table])) - {"cityHash64"}
        assert key_columns <= set(re.findall(r"\w+", order[1])), table


@pytest.mark.parametrize("name", ["", "a b", "x;DROP", "1st", "c'"])
def test_cluster_name_is_an_identifier(name: str) -> None:
    with pytest.raises(ValueError):
        ddl(90, name)


def test_cluster_inserts_are_synchronous() -> None:
    assert cluster_client_settings() == {"insert_distributed_sync": 1}


def test_clickhouse_parses_the_cluster_ddl() -> None:
    """ClickHouse's own parser (chDB's formatQuery) on every statement. In a subprocess:
    chDB allows one session per process, and other tests open theirs."""
    statements = ddl(90, "analytics")
    script = (
        "import json, sys, chdb\n"
        "out = []\n"
        "for s in json.load(sys.stdin):\n"
        '    q = s.replace("\'", "\\\\\'")\n'
        "    out.append(chdb.query(f\"SELECT formatQuery('{q}')\", 'JSONCompact').data())\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(statements),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    formatted = [json.loads(r)["data"][0][0] for r in json.loads(done.stdout)]
    assert len(formatted) == len(statements)
    for text in formatted:
        assert "ON CLUSTER analytics" in text
    assert sum("ENGINE = Distributed(analytics" in t for t in formatted) == len(TABLES)
