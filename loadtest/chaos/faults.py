"""The chaos harness's faults: what they do to the processes, their schedules, and the probe
hits that measure each one's recovery."""

from __future__ import annotations

import asyncio
import functools
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loadtest.chaos.cluster import PROBE_EVENT, USER_AGENTS, Cluster, Mode, iso, minute_of
from loadtest.chaos.traffic import Driver, HitSpec, StatsClient

# ---------------------------------------------------------------------------------------------
# Faults


@dataclass
class Fault:
    index: int
    kind: str
    at: float  # seconds since the load began
    detail: str = ""
    recovery: float | None = None  # seconds until probes on every partition were visible
    note: str = ""


class Injector:
    """Applies faults and measures each one's recovery with probe hits."""

    def __init__(
        self,
        cluster: Cluster,
        driver: Driver,
        stats: StatsClient,
        probe_sites: list[str],
        rng: random.Random,
    ) -> None:
        self.cluster = cluster
        self.driver = driver
        self.stats = stats
        self.probe_sites = probe_sites
        self.rng = rng
        self.faults: list[Fault] = []
        self.load_started = 0.0
        self.probe_tasks: list[asyncio.Task[None]] = []
        self.redis_back_at: float | None = None
        self.worker_sigkills = 0

    def _record(self, kind: str, detail: str) -> Fault:
        fault = Fault(len(self.faults), kind, time.monotonic() - self.load_started, detail)
        self.faults.append(fault)
        print(f"chaos: t={fault.at:6.1f}s #{fault.index} {kind} {detail}", flush=True)
        return fault

    def probe(self, fault: Fault) -> None:
        self.probe_tasks.append(asyncio.get_running_loop().create_task(self._probe(fault)))

    async def _probe(self, fault: Fault) -> None:
        started = time.monotonic()
        fault_wall = time.time()
        page = f"/chaos/probe/{fault.index}"
        acked: set[str] = set()
        for site in self.probe_sites:
            spec = HitSpec(site, PROBE_EVENT, page, 0, USER_AGENTS[0].format(v=120), "11.0.0.1")
            # Probes use a driver slot too; they are exact hits on their own sites.
            await self.driver.slots.acquire()
            self.driver.spawn(spec, on_ack=functools.partial(acked.add, site))
        start = minute_of(fault_wall) - 60
        body = {
            "metrics": ["events"],
            "date_range": [iso(start), iso(start + 3 * 3600 - 1)],
            "filters": [["is", "event:page", [page]]],
        }
        seen: set[str] = set()
        try:
            while True:
                for site in self.probe_sites:
                    if site in seen or site not in acked:
                        continue
                    got = await self.stats.try_query(site, body)
                    if got and got["results"] and got["results"][0]["metrics"][0] >= 1:
                        seen.add(site)
                if len(seen) == len(self.probe_sites):
                    fault.recovery = time.monotonic() - started
                    return
                await asyncio.sleep(0.5)
        finally:
            if fault.recovery is None:
                fault.note = (
                    f"{fault.note} probes visible on {len(seen)}/{len(self.probe_sites)} "
                    f"({len(acked)} answered 202)"
                ).strip()

    # -- the faults -----------------------------------------------------------------------------

    def live_workers(self) -> list[int]:
        return sorted(s for s, p in self.cluster.workers.items() if p.alive())

    async def worker_kill(self, slot: int | None = None) -> None:
        slots = self.live_workers()
        if not slots:
            self._record("worker SIGKILL", "skipped: no worker alive")
            return
        if slot is None:
            slot = self.rng.choice(slots)
        proc = self.cluster.workers[slot]
        age = time.monotonic() - proc.started
        state = "ready" if proc.ready_after is not None else "starting"
        proc.signal(signal.SIGKILL)
        await proc.wait_exit(10)
        self.worker_sigkills += 1
        fault = self._record(
            "worker SIGKILL", f"worker{slot} pid {proc.pid} ({state}, up {age:.0f}s); restarted"
        )
        self.probe(fault)
        await asyncio.sleep(0.5)
        self.cluster.start_worker(slot)

    async def scale_up(self) -> None:
        slot = next(i for i in range(10) if i not in self.live_workers())
        self.cluster.start_worker(slot)
        fault = self._record(
            "scale up", f"worker{slot} started ({len(self.live_workers())} workers)"
        )
        self.probe(fault)

    async def scale_down(self) -> None:
        if len(self.live_workers()) < 2:
            self._record("scale down", "skipped: fewer than two workers alive")
            return
        slot = max(self.live_workers())
        proc = self.cluster.workers[slot]
        fault = self._record("scale down", f"SIGTERM worker{slot} pid {proc.pid}")
        self.probe(fault)
        proc.signal(signal.SIGTERM)
        if not await proc.wait_exit(30):
            proc.signal(signal.SIGKILL)
            await proc.wait_exit(10)
            fault.note = "did not exit within 30 s of SIGTERM; SIGKILLed"
        else:
            fault.note = f"exited after {time.monotonic() - self.load_started - fault.at:.1f}s"
        del self.cluster.workers[slot]

    async def ingest_kill(self) -> None:
        cluster, driver = self.cluster, self.driver
        driver.gate.clear()
        waited = time.monotonic()
        while driver.inflight_exact and time.monotonic() - waited < 15:
            await asyncio.sleep(0.01)
        await asyncio.sleep(self.rng.uniform(0.05, 0.3))  # quarantine hits in flight
        stuck = driver.inflight_exact
        assert cluster.ingest is not None
        old = cluster.ingest
        old.signal(signal.SIGKILL)
        await old.wait_exit(10)
        cluster.ingest_down = True
        driver.renew_client()
        fault = self._record("ingest SIGKILL", f"pid {old.pid}; restarted")
        if stuck:
            fault.note = f"{stuck} requests to exact pages were still in flight at the kill"
        self.probe(fault)
        cluster.ingest = cluster.start_ingest()
        try:
            await cluster.wait_http(cluster.ingest, cluster.ingest_port, 90)
        finally:
            cluster.ingest_down = False
            await asyncio.sleep(0.5)
            driver.gate.set()
        fault.note = fault.note + f" new ingest healthy after {cluster.ingest.ready_after:.1f}s"

    async def redis_stop(self, seconds: float) -> None:
        self.cluster.redis_signal(signal.SIGSTOP)
        fault = self._record("Redis SIGSTOP", f"{seconds:.0f}s, then SIGCONT")
        self.probe(fault)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.cluster.redis_signal(signal.SIGCONT)
            self.redis_back_at = time.time()

    async def api_stop(self, seconds: float) -> None:
        api = self.cluster.api
        assert api is not None
        api.signal(signal.SIGSTOP)
        fault = self._record(
            "api SIGSTOP", f"ClickHouse writer frozen {seconds:.0f}s, then SIGCONT"
        )
        self.probe(fault)
        try:
            await asyncio.sleep(seconds)
        finally:
            api.signal(signal.SIGCONT)

    async def api_kill(self) -> None:
        cluster = self.cluster
        assert cluster.api is not None
        old = cluster.api
        old.signal(signal.SIGKILL)
        await old.wait_exit(10)
        fault = self._record("api SIGKILL", f"ClickHouse writer pid {old.pid}; restarted")
        self.probe(fault)
        await asyncio.sleep(0.5)
        cluster.api = cluster.start_api()
        await cluster.wait_http(cluster.api, cluster.api_port, 120)
        fault.note = f"new api healthy after {cluster.api.ready_after:.1f}s"

    async def baseline(self) -> None:
        fault = self._record("baseline", "no fault: pipeline latency")
        self.probe(fault)

    # -- schedules ------------------------------------------------------------------------------

    def short_program(self) -> list[Callable[[], Any]]:
        return [
            self.baseline,
            self.worker_kill,  # 1 worker
            self.scale_up,  # 2 workers
            lambda: self.redis_stop(5.0),
            self.worker_kill,
            self.scale_up,  # 3 workers
            self.worker_kill,
            self.scale_down,  # back to 2
            self.ingest_kill,
            self.worker_kill,
            lambda: self.api_stop(12.0),
            self.api_kill,
            self.worker_kill,
        ]

    def long_step(self) -> Callable[[], Any]:
        workers = len(self.live_workers())
        choices: list[tuple[float, Callable[[], Any]]] = [
            (0.36, self.worker_kill),
            (0.12 if workers < 3 else 0.0, self.scale_up),
            (0.12 if workers > 1 else 0.0, self.scale_down),
            (0.12, self.ingest_kill),
            (0.10, lambda: self.redis_stop(self.rng.uniform(3.0, 8.0))),
            (0.08, lambda: self.api_stop(self.rng.uniform(5.0, 15.0))),
            (0.10, self.api_kill),
        ]
        total = sum(w for w, _ in choices)
        pick = self.rng.uniform(0, total)
        for weight, action in choices:
            pick -= weight
            if pick <= 0 and weight:
                return action
        return self.worker_kill

    async def run(self, mode: Mode, stop_load: asyncio.Event) -> None:
        """Apply faults until the mode's program, duration, hits and fault count are done,
        then let the load run `mode.tail` seconds more and stop it."""
        self.load_started = time.monotonic()
        try:
            await asyncio.sleep(2.0)
            program = self.short_program() if mode.name == "short" else [self.baseline]
            step = 0
            while True:
                if step < len(program):
                    action = program[step]
                elif (
                    time.monotonic() - self.load_started >= mode.duration
                    and self.driver.tally.generated >= mode.min_hits
                    and sum(f.kind != "baseline" for f in self.faults) >= mode.min_faults
                ):
                    break
                elif mode.name == "short":
                    action = self.baseline  # load until the minimum duration
                else:
                    action = self.long_step()
                step += 1
                await action()
                await asyncio.sleep(self.rng.uniform(*mode.fault_spacing))
            await asyncio.sleep(mode.tail)
        finally:
            stop_load.set()
