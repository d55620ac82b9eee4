"""Stage timings in the freshness benchmark: quantiles of what a histogram took between two
scrapes, against the exact quantiles of the observations."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from pytest import approx

from loadtest.harness import Scrape, histogram_quantile

BUCKETS = (0.1, 0.5, 1, 2, 5, 10)


def scrape_of(registry: CollectorRegistry) -> Scrape:
    return Scrape("", text=generate_latest(registry).decode())


def bucket_of(x: float) -> int:
    return next((i for i, b in enumerate(BUCKETS) if x <= b), len(BUCKETS))


@given(
    earlier=st.lists(st.floats(0, 20), max_size=30),
    between=st.lists(st.floats(0, 9.9), min_size=1, max_size=60),
    q=st.sampled_from([0.5, 0.9, 0.99]),
)
def test_quantile_lies_in_the_bucket_of_the_exact_one(
    earlier: list[float], between: list[float], q: float
) -> None:
    registry = CollectorRegistry()
    hist = Histogram("stage_seconds", "test", ["role"], buckets=BUCKETS, registry=registry)
    for i, x in enumerate(earlier):
        hist.labels(str(i % 2)).observe(x)
    before = scrape_of(registry)
    for i, x in enumerate(between):
        hist.labels(str(i % 3)).observe(x)
    got = histogram_quantile(before, scrape_of(registry), "stage_seconds", q)
    assert got is not None
    ordered = sorted(between)
    rank = q * len(ordered)
    # Prometheus' rule: the bucket holding the observation at that rank, interpolated within it.
    exact = ordered[max(0, min(len(ordered) - 1, int(rank + 0.999999) - 1))]
    index = bucket_of(exact)
    lower = BUCKETS[index - 1] if index else 0.0
    assert lower <= got <= BUCKETS[index]


def test_nothing_observed_between_is_none() -> None:
    registry = CollectorRegistry()
    hist = Histogram("stage_seconds", "test", buckets=BUCKETS, registry=registry)
    hist.observe(3)
    same = scrape_of(registry)
    assert histogram_quantile(same, same, "stage_seconds", 0.5) is None
    hist.observe(0.3)
    # The one observation lies in (0.1, 0.5]: its median is that bucket's middle.
    assert histogram_quantile(same, scrape_of(registry), "stage_seconds", 0.5) == approx(0.3)
