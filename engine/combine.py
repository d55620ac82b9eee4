"""`/api/health` and `/metrics` of `rollup run`'s public port: the ingest process's own, merged
with the api process's, so that one scrape and one probe still cover both (as they did when one
process served both roles)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import httpx
import orjson
from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from prometheus_client.samples import Sample

from engine.proxy import ApiProxy

log = logging.getLogger(__name__)

# The api's health pings ClickHouse with a 5 s timeout: wait a little longer for its answer.
HEALTH_TIMEOUT = 8.0
METRICS_TIMEOUT = 10.0


def _per_process_families() -> frozenset[str]:
    """Families of prometheus_client's default collectors (process memory and CPU, platform,
    garbage collector): one series per process, so both processes' are kept, labelled."""
    names: set[str] = set()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        names.update(family.name for family in collector.collect())
    return frozenset(names)


PER_PROCESS = _per_process_families()


def merge_health(
    local: dict[str, str], remote: dict[str, str] | None, problem: str
) -> dict[str, str]:
    """Each part's worst state across both processes; `api` when the api did not answer."""
    merged = dict(local)
    if remote is None:
        merged["api"] = f"down: {problem}"
        return merged
    for part, state in remote.items():
        if merged.get(part, "ok") == "ok":
            merged[part] = state
    return merged


async def combined_health(local: dict[str, str], proxy: ApiProxy) -> dict[str, str]:
    try:
        resp = await proxy.get("/api/health", HEALTH_TIMEOUT)
        remote = orjson.loads(resp.content)
    except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
        return merge_health(local, None, f"api process unreachable ({type(exc).__name__})")
    if not isinstance(remote, dict) or not all(isinstance(v, str) for v in remote.values()):
        return merge_health(local, None, f"api process answered {resp.status_code}")
    return merge_health(local, remote, "")


def merge_metrics(texts: Iterable[tuple[str, str]]) -> bytes:
    """One valid exposition from several processes' (`(process, text)` pairs), each family once.

    Both processes register the same families (same code). A series both report is summed, the
    total of the stack as one process would have counted it: each series lives in one of them
    and the other holds its zero (`_created` takes the earliest). Per-process families (memory,
    CPU, GC) get a `process` label instead, since their sum would mean nothing."""
    families: dict[str, Metric] = {}
    index: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], int]] = {}
    for process, text in texts:
        for family in text_string_to_metric_families(text):
            samples = family.samples
            if family.name in PER_PROCESS:
                samples = [s._replace(labels={**s.labels, "process": process}) for s in samples]
            merged = families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = merged
                index[family.name] = {}
            elif merged.type != family.type:
                continue  # cannot happen with one codebase; never emit an invalid family
            seen = index[family.name]
            for sample in samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                at = seen.get(key)
                if at is None:
                    seen[key] = len(merged.samples)
                    merged.samples.append(sample)
                    continue
                old = merged.samples[at]
                value = (
                    min(old.value, sample.value)
                    if sample.name.endswith("_created")
                    else old.value + sample.value
                )
                merged.samples[at] = Sample(old.name, old.labels, value, old.timestamp)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


async def combined_metrics(proxy: ApiProxy) -> bytes:
    local = generate_latest().decode()
    try:
        resp = await proxy.get("/metrics", METRICS_TIMEOUT)
        resp.raise_for_status()
        return merge_metrics([("ingest", local), ("api", resp.text)])
    except httpx.HTTPError as exc:
        # The ingest's own figures still, rather than none while the api restarts.
        log.warning("api metrics unavailable: %s", type(exc).__name__)
    except ValueError as exc:  # a text the parser refuses
        log.warning("api metrics unreadable: %s", exc)
    return merge_metrics([("ingest", local)])
