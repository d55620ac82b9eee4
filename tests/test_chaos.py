"""Fault injection (loadtest/chaos/, short mode) on its own embedded stack: a steady stream of
hits while workers are SIGKILLed, scaled from one to three and back, and the ingest, Redis and the
ClickHouse writer fail. Nothing answered 202 may be lost or counted twice.

The fault schedule's random moments come from a seed printed in the report; set CHAOS_SEED to
replay one."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

from loadtest.chaos import Mode, run_chaos

pytestmark = pytest.mark.integration


def test_chaos_short(tmp_path: Path) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or random.randrange(1_000_000))
    report = asyncio.run(run_chaos(Mode.short(), tmp_path / "chaos", seed=seed))
    text = report.text()
    print(text)
    assert report.worker_sigkills >= 5, text
    assert report.max_workers >= 3, text
    assert report.acked > 0 and report.drained, text
    assert report.lost == 0, text
    assert report.double_counted == 0, text
    assert (report.events_table_lost, report.events_table_double) == (0, 0), text
    assert not report.crashes, text
    assert not report.problems, text
    assert report.ok, text
