"""The Grafana dashboard (k8s/grafana-dashboard.json) queries only metrics the code registers,
with label names those metrics have, and covers every role."""

from __future__ import annotations

import importlib
import json
import re
from typing import Any

import pytest
from faust.sensors.prometheus import FaustMetrics
from prometheus_client import REGISTRY, CollectorRegistry

from tests.conftest import ROOT

DASHBOARD = ROOT / "k8s" / "grafana-dashboard.json"
METRIC = re.compile(r"\b((?:rollup|faust)_[a-z0-9_]+)\b(\{[^}]*\})?")
BY = re.compile(r"\bby \(([^)]*)\)")
ROLES = (
    "engine.http",
    "engine.kafka",
    "engine.store.client",
    "engine.store.writer",
    "topologies.live",
    "topologies.rollups",
    "topologies.worker_metrics",
)
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}


def registered() -> dict[str, tuple[str, ...]]:
    """Every sample name the engine's metrics can expose, with the metric's label names."""
    for module in ROLES:  # importing a module registers its metrics
        importlib.import_module(module)

    faust_registry = CollectorRegistry()  # Faust's sensor, as the worker names it
    FaustMetrics.create(faust_registry, "faust")
    names: dict[str, tuple[str, ...]] = {}
    for registry in (REGISTRY, faust_registry):
        for collector in set(registry._collector_to_names):
            labels = tuple(getattr(collector, "_labelnames", ()))
            kind = getattr(collector, "_type", None)
            base = getattr(collector, "_name", None)
            if kind is None or base is None:
                continue
            for suffix in SUFFIXES.get(kind, ("",)):
                names[base + suffix] = labels + (("le",) if suffix == "_bucket" else ())
    return names


def expressions(dashboard: dict[str, Any]) -> list[str]:
    found = []
    for panel in dashboard["panels"]:
        found += [target["expr"] for target in panel.get("targets", [])]
    return found


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def test_every_queried_metric_exists(dashboard: dict[str, Any]) -> None:
    known = registered()
    assert "rollup_ingest_requests_total" in known  # the registry was read
    exprs = expressions(dashboard)
    assert len(exprs) >= 20
    for expr in exprs:
        metrics = METRIC.findall(expr)
        assert metrics, expr
        for name, matchers in metrics:
            assert name in known, f"{name} is not registered by the code ({expr})"
            for label in re.findall(r"(\w+)\s*=~?", matchers):
                assert label in known[name], f"{name} has no label {label!r}"
            for group in BY.findall(expr):
                for label in (part.strip() for part in group.split(",")):
                    # `by (instance)` is Prometheus's own target label.
                    assert label in (*known[name], "instance"), f"{name}: by ({label})"


def test_a_missing_metric_would_be_caught() -> None:
    assert "rollup_ingest_requests_totl" not in registered()


def test_dashboard_covers_every_role(dashboard: dict[str, Any]) -> None:
    text = " ".join(expressions(dashboard))
    for prefix in ("rollup_ingest_", "rollup_worker_", "rollup_store_", "rollup_http_", "faust_"):
        assert prefix in text, prefix
    for must in (
        "rollup_ingest_requests_total",
        "rollup_ingest_dropped_total",
        "rollup_ingest_produce_seconds_bucket",
        "rollup_worker_consumer_lag_messages",
        "rollup_worker_batch_messages_sum",
        "rollup_worker_late_hits_total",
        "rollup_worker_table_keys",
        "rollup_store_rows_total",
        "rollup_store_insert_seconds_bucket",
        "rollup_store_insert_retries_total",
        "rollup_http_request_duration_seconds_bucket",
    ):
        assert must in text, must


def test_dashboard_is_well_formed(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel.get("targets", []):
            uid = target["datasource"]["uid"]
            assert uid.removeprefix("${").removesuffix("}") in variables
