"""A worker that loses its local state restores the visitors' sessions from the changelog the
session stage writes (topologies/changelog.py): on a stack of its own, visitors make a first
pageview, the worker's state directory is deleted and the worker SIGKILLed, and the restarted
worker, with nothing on disk, must continue each visitor's session with a second pageview
rather than start a new one."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import running_stack
from tests.test_run_processes import eventually, query

pytestmark = pytest.mark.integration

SITES = ("recover-a.test", "recover-b.test")
VISITORS = 3
AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0 visitor-{}"


def _pageview(url: str, site: str, visitor: int, page: str) -> None:
    resp = httpx.post(
        f"{url}/api/event",
        json={"n": "pageview", "u": f"https://{site}{page}"},
        headers={"User-Agent": AGENT.format(visitor), "X-Forwarded-For": f"198.51.100.{visitor}"},
    )
    assert resp.status_code == 202 and "x-plausible-dropped" not in resp.headers


def test_a_worker_without_local_state_continues_sessions_from_the_changelog(
    tmp_path: Path,
) -> None:
    # States must not expire by idleness while the worker is replaced.
    env = {"ROLLUP_SESSION_STATE_IDLE_SECONDS": "3600"}
    with running_stack(tmp_path, env) as own:
        keys = {site: own.add_site(site) for site in SITES}
        time.sleep(1.5)  # the sites refresh

        def metrics(site: str) -> list[float]:
            body = {"site_id": site, "metrics": ["pageviews", "visits"], "date_range": "day"}
            resp = query(own.url, keys[site], body)
            assert resp.status_code == 200, resp.text
            return list(resp.json()["results"][0]["metrics"])

        for site in SITES:
            for visitor in range(VISITORS):
                _pageview(own.url, site, visitor, "/first")
        eventually(lambda: all(metrics(s) == [VISITORS, VISITORS] for s in SITES), timeout=90)

        before = own.engine_processes()["worker"]
        shutil.rmtree(tmp_path / "worker")
        os.kill(before, signal.SIGKILL)
        eventually(lambda: own.engine_processes().get("worker") not in (None, before))

        for site in SITES:
            for visitor in range(VISITORS):
                _pageview(own.url, site, visitor, "/second")
        eventually(lambda: all(metrics(s)[0] == 2 * VISITORS for s in SITES), timeout=180)
        # One visit per visitor: each second pageview joined the session restored from the
        # changelog (a lost state would have started a second visit).
        for site in SITES:
            assert metrics(site) == [2 * VISITORS, VISITORS], site
