"""Merging two processes' health and Prometheus expositions (engine/combine.py): pure logic."""

from __future__ import annotations

from collections import Counter

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client.parser import text_string_to_metric_families

from engine.combine import PER_PROCESS, merge_health, merge_metrics


def exposition(requests: dict[str, int], pending: float, seconds: list[float]) -> str:
    """One process's metrics, with the families both processes of `rollup run` register."""
    registry = CollectorRegistry()
    counter = PromCounter("t_requests", "requests", ["endpoint"], registry=registry)
    for endpoint, count in requests.items():
        counter.labels(endpoint).inc(count)
    Gauge("t_pending", "pending", registry=registry).set(pending)
    histogram = Histogram("t_seconds", "latency", buckets=(0.1, 1), registry=registry)
    for value in seconds:
        histogram.observe(value)
    text = generate_latest(registry).decode()
    # The default collectors' families, as a real process exposes them.
    return (
        text + "# HELP process_open_fds fds\n# TYPE process_open_fds gauge\nprocess_open_fds 12.0\n"
    )


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_each_family_once_series_summed_per_process_labelled() -> None:
    ingest = exposition({"/api/event": 22}, 0, [0.05, 0.5])
    api = exposition({"/api/v2/query": 3}, 0, [2.0])
    merged = merge_metrics([("ingest", ingest), ("api", api)]).decode()
    types = Counter(line.split()[2] for line in merged.splitlines() if line.startswith("# TYPE"))
    helps = Counter(line.split()[2] for line in merged.splitlines() if line.startswith("# HELP"))
    assert all(n == 1 for n in types.values()) and all(n == 1 for n in helps.values())
    got = samples(merged)
    assert got[("t_requests_total", frozenset({("endpoint", "/api/event")}))] == 22
    assert got[("t_requests_total", frozenset({("endpoint", "/api/v2/query")}))] == 3
    assert got[("t_pending", frozenset())] == 0
    assert got[("t_seconds_count", frozenset())] == 3
    assert got[("t_seconds_bucket", frozenset({("le", "0.1")}))] == 1
    assert got[("t_seconds_bucket", frozenset({("le", "1.0")}))] == 2
    assert got[("t_seconds_bucket", frozenset({("le", "+Inf")}))] == 3
    assert got[("t_seconds_sum", frozenset())] == 2.55
    assert got[("process_open_fds", frozenset({("process", "ingest")}))] == 12
    assert got[("process_open_fds", frozenset({("process", "api")}))] == 12
    assert ("process_open_fds", frozenset()) not in got


def test_created_is_the_earliest() -> None:
    text = "# HELP t counter\n# TYPE t counter\nt_total 1.0\nt_created {}\n"
    merged = merge_metrics([("ingest", text.format(200.0)), ("api", text.format(100.0))])
    assert samples(merged.decode())[("t_created", frozenset())] == 100.0


def test_one_process_alone_keeps_its_families() -> None:
    ingest = exposition({"/api/event": 1}, 5, [])
    got = samples(merge_metrics([("ingest", ingest)]).decode())
    assert got[("t_pending", frozenset())] == 5
    assert got[("process_open_fds", frozenset({("process", "ingest")}))] == 12


def test_default_collectors_are_per_process() -> None:
    assert {"process_resident_memory_bytes", "python_info"} <= PER_PROCESS
    assert "python_gc_objects_collected" in PER_PROCESS


def test_health_worst_state_per_part() -> None:
    ingest = {"broker": "ok", "redis": "ok"}
    api = {"broker": "ok", "redis": "ok", "clickhouse": "ok"}
    assert merge_health(ingest, api, "") == {"broker": "ok", "redis": "ok", "clickhouse": "ok"}
    down = {"broker": "down: store writer not consuming", "redis": "ok", "clickhouse": "ok"}
    assert merge_health(ingest, down, "")["broker"] == "down: store writer not consuming"
    producer_down = {"broker": "down: producer not acknowledged", "redis": "ok"}
    assert merge_health(producer_down, down, "")["broker"] == "down: producer not acknowledged"
    assert merge_health(ingest, None, "api process unreachable (ConnectError)") == {
        "broker": "ok",
        "redis": "ok",
        "api": "down: api process unreachable (ConnectError)",
    }
