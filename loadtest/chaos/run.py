"""The chaos run: the stack, load and faults together, then the audit and its report; and the
command line (`python -m loadtest.chaos`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import re
import shutil
import signal
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.chaos.audit import Auditor, audit_counts, live_check, scrape_metrics
from loadtest.chaos.cluster import Cluster, Mode, sites_per_partition
from loadtest.chaos.faults import Injector
from loadtest.chaos.traffic import Driver, StatsClient

# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class Report:
    mode: str
    seed: int
    data_dir: str
    load_seconds: float = 0.0
    hits_sent: int = 0
    requests: int = 0
    acked: int = 0  # 202s
    counted: int = 0  # in the rollups, exact pages and the quarantine page
    lost: int = 0
    double_counted: int = 0
    unknown_outcome: int = 0
    unknown_counted: int = 0
    gave_up: int = 0
    dropped: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    answers: dict[str, int] = field(default_factory=dict)
    events_table_lost: int = 0
    events_table_double: int = 0
    drained: bool = False
    drain_seconds: float = 0.0
    faults: list[dict[str, Any]] = field(default_factory=list)
    worker_sigkills: int = 0
    max_workers: int = 1
    visitors: list[str] = field(default_factory=list)
    live: list[str] = field(default_factory=list)
    tables: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    worker_ready_seconds: list[float] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    unknown_log: list[str] = field(default_factory=list)
    latency: dict[str, float] = field(default_factory=dict)
    logs: str = ""

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.double_counted == 0
            and self.events_table_lost == 0
            and self.events_table_double == 0
            and not self.problems
            and not self.crashes
        )

    def text(self) -> str:
        out = [
            f"chaos {self.mode} (seed {self.seed}, data in {self.data_dir})",
            f"  load: {self.hits_sent} hits in {self.load_seconds:.0f}s "
            f"({self.hits_sent / max(self.load_seconds, 1):.0f}/s), {self.requests} requests; "
            f"latency of the 202s in ms: {self.latency}",
            f"  202s: {self.acked}   counted: {self.counted}   lost: {self.lost}   "
            f"double-counted: {self.double_counted}",
            f"  unknown outcome: {self.unknown_outcome} (of which counted: {self.unknown_counted})"
            f"   gave up: {self.gave_up}   dropped: {self.dropped}   rejected: {self.rejected}",
            *[f"    unknown: {line}" for line in self.unknown_log[:10]],
            f"  events table: lost {self.events_table_lost}, double {self.events_table_double}",
            f"  answers: {dict(sorted(self.answers.items()))}",
            f"  drained: {self.drained} after {self.drain_seconds:.1f}s; tables: {self.tables}",
            f"  worker SIGKILLs: {self.worker_sigkills}; at most {self.max_workers} workers; "
            f"worker start-to-ready: {', '.join(f'{s:.1f}' for s in self.worker_ready_seconds)}",
            "  faults (recovery = seconds until a probe on every partition was queryable):",
        ]
        for f in self.faults:
            rec = f"{f['recovery']:.1f}s" if f["recovery"] is not None else "NOT RECOVERED"
            out.append(
                f"    #{f['index']:<2} t={f['at']:6.1f}s {f['kind']:<15} recovery {rec:>8}  "
                f"{f['detail']} {f['note']}".rstrip()
            )
        out.append("  visitors:")
        out += [f"    {line}" for line in self.visitors]
        out.append("  live counters:")
        out += [f"    {line}" for line in self.live]
        if self.metrics:
            out.append("  metrics (last incarnation of each process):")
            out += [f"    {k} {v:g}" for k, v in sorted(self.metrics.items())]
        if self.crashes:
            out.append(
                f"  CRASHES: {len(self.crashes)} engine processes died without being killed "
                "(each restarted by the harness after 2 s):"
            )
            out += [f"    {c}" for c in self.crashes[:5]]
            reasons = Counter(
                re.sub(r"^.*?\] \[\d+\] ", "", c.split("restarted: ", 1)[-1])[:200]
                for c in self.crashes
            )
            out += [f"    {n}x {reason}" for reason, n in reasons.most_common(5)]
        if self.problems:
            out.append("  PROBLEMS:")
            out += [f"    {p}" for p in self.problems[:60]]
        if self.logs and not self.ok:
            out.append("  log excerpts (distinct warnings and errors, last 3 per file):")
            out += [f"    {line}" for line in self.logs.splitlines()]
        out.append(f"  result: {'OK' if self.ok else 'FAILED'}")
        return "\n".join(out)


async def run_chaos(
    mode: Mode,
    data_dir: Path,
    seed: int | None = None,
    duration: float | None = None,
    rate: float | None = None,
    fresh_worker_state: bool = False,
) -> Report:
    seed = seed if seed is not None else random.randrange(1_000_000)
    if duration is not None or rate is not None:
        mode = dataclasses.replace(mode, duration=duration or mode.duration, rate=rate or mode.rate)
    rng = random.Random(seed)
    load_sites = sites_per_partition("load")
    probe_sites = sites_per_partition("probe")
    cluster = Cluster(data_dir, load_sites + probe_sites, fresh_worker_state)
    report = Report(mode.name, seed, str(data_dir))
    driver: Driver | None = None
    stats: StatsClient | None = None
    supervisor: asyncio.Task[None] | None = None
    try:
        print(f"chaos: starting the stack in {data_dir}", flush=True)
        await cluster.start()
        supervisor = asyncio.create_task(cluster.supervise())
        await asyncio.sleep(1.5)  # the ingest's site list
        driver = Driver(cluster, load_sites, mode, rng)
        stats = StatsClient(cluster)
        injector = Injector(cluster, driver, stats, probe_sites, random.Random(seed + 1))
        stop = asyncio.Event()
        print(
            f"chaos: load {mode.rate:.0f} hits/s for {mode.duration:.0f}s on "
            f"{', '.join(load_sites)}",
            flush=True,
        )
        max_workers = 1

        async def watch_scale() -> None:
            nonlocal max_workers
            ticks = 0
            while not stop.is_set():
                max_workers = max(max_workers, len(injector.live_workers()))
                await asyncio.sleep(0.5)
                ticks += 1
                if ticks % 120 == 0:  # a progress line a minute
                    t = driver.tally
                    print(
                        f"chaos: t={time.monotonic() - load_started:6.1f}s {t.generated} hits, "
                        f"{t.acked_hits} answered 202, {len(injector.faults)} faults, "
                        f"{len(injector.live_workers())} workers",
                        flush=True,
                    )

        load_started = cluster.t0 = time.monotonic()
        faults = asyncio.create_task(injector.run(mode, stop))
        scale = asyncio.create_task(watch_scale())
        await driver.run(stop, mode.max_hits)
        stop.set()
        await faults
        await scale
        await driver.drain(timeout=120)
        report.load_seconds = time.monotonic() - load_started
        load_end = time.time()
        print("chaos: load done; waiting for probes and the pipeline to drain", flush=True)
        # One deadline for everything that follows the load (it scales with the load); the
        # drain keeps a reserve of its own, so slow probes cannot starve it.
        reserve = 30.0 + driver.tally.acked_hits / 4000
        settle_by = time.monotonic() + mode.drain_timeout + driver.tally.acked_hits / 2000

        def left(keep: float = 0.0) -> float:
            return max(5.0, settle_by - keep - time.monotonic())

        if injector.probe_tasks:
            await asyncio.wait(injector.probe_tasks, timeout=left(reserve))
        # Every worker restarted by now must come up again.
        report.problems += await cluster.wait_workers_settled(left(reserve))

        auditor = Auditor(stats, driver.tally, load_sites + probe_sites)
        report.drain_seconds, report.drained = await auditor.wait_drained(max(reserve, left()))

        tally = driver.tally
        report.hits_sent = tally.generated
        report.requests = tally.attempts
        report.acked = tally.acked_hits
        report.unknown_outcome = tally.unknown_requests
        report.gave_up = tally.gave_up
        report.dropped = tally.dropped
        report.rejected = {str(k): v for k, v in tally.rejected.items()}
        report.answers = dict(tally.answers)

        rollups, used = await auditor.per_minute("rollup_minute")
        audit = audit_counts(tally, rollups, "rollup_minute", used)
        report.counted = audit.counted
        report.lost = audit.lost
        report.double_counted = audit.double
        report.unknown_counted = audit.unknown_counted
        report.problems += audit.problems
        events, used_events = await auditor.per_minute("events")
        events_audit = audit_counts(tally, events, "events", used_events)
        report.events_table_lost = events_audit.lost
        report.events_table_double = events_audit.double
        report.problems += events_audit.problems
        report.tables = {f"per-minute {k}": v for k, v in (used + used_events).items()}
        if set(used) != {"rollup_minute"}:
            report.problems.append(f"per-minute rollup query answered from {dict(used)}")
        if set(used_events) != {"events"}:
            report.problems.append(f"unaligned query answered from {dict(used_events)}")
        report.problems += await auditor.consistency()
        report.visitors, visitor_problems = await auditor.visitors()
        report.problems += visitor_problems
        report.live, live_problems = await live_check(
            stats, tally, load_sites, injector.redis_back_at or driver.first_send, load_end
        )
        report.problems += live_problems

        for task in injector.probe_tasks:
            task.cancel()
        report.faults = [dataclasses.asdict(f) for f in injector.faults]
        for f in injector.faults:
            if f.recovery is None:
                report.problems.append(f"fault #{f.index} {f.kind}: not recovered {f.note}")
        report.worker_sigkills = injector.worker_sigkills
        report.max_workers = max_workers
        report.worker_ready_seconds = [
            p.ready_after
            for p in cluster.all_procs
            if p.name.startswith("worker") and p.ready_after is not None
        ]
        prefixes = ("rollup_store_", "rollup_ingest_")
        assert cluster.api is not None and cluster.ingest is not None
        report.metrics = {
            **await scrape_metrics(cluster.api_port, prefixes),
            **await scrape_metrics(cluster.ingest_port, prefixes),
        }
        report.logs = cluster.logs_excerpt()
        report.crashes = list(cluster.crashes)
        report.unknown_log = list(tally.unknown_log)
        lat = sorted(tally.latencies)
        if lat:
            report.latency = {
                q: round(lat[min(len(lat) - 1, int(len(lat) * f))] * 1000, 1)
                for q, f in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
            }
        return report
    finally:
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        if driver is not None:
            await driver.close()
        if stats is not None:
            await stats.close()
        await cluster.stop()


async def _until_signalled(run: Any) -> Report:
    """SIGTERM or SIGINT cancels the run, whose cleanup then stops every process it started."""
    task = asyncio.ensure_future(run)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    report: Report = await task
    return report


def main(argv: list[str] | None = None) -> int:
    from loadtest import chaos  # the package's docstring is the user-facing description

    description = (chaos.__doc__ or "").split("\n")[0]
    p = argparse.ArgumentParser(prog="python -m loadtest.chaos", description=description)
    p.add_argument("--mode", choices=("short", "long"), default="short")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--duration", type=float, default=None, help="seconds of load")
    p.add_argument("--rate", type=float, default=None, help="hits per second")
    p.add_argument("--data-dir", type=Path, default=None, help="default: a new temp directory")
    p.add_argument("--keep", action="store_true", help="keep the data directory and logs")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    p.add_argument(
        "--fresh-worker-state",
        action="store_true",
        help="start every worker incarnation on an empty state directory (default: a restarted "
        "worker keeps its slot's RocksDB directory, as a pod keeps its volume)",
    )
    args = p.parse_args(argv)
    mode = Mode.short() if args.mode == "short" else Mode.long()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix=f"rollup-chaos-{mode.name}-"))
    report: Report | None = None
    try:
        report = asyncio.run(
            _until_signalled(
                run_chaos(
                    mode,
                    data_dir,
                    args.seed,
                    args.duration,
                    args.rate,
                    fresh_worker_state=args.fresh_worker_state,
                )
            )
        )
        print(report.text(), flush=True)
        if args.json:
            args.json.write_text(json.dumps(dataclasses.asdict(report), indent=2))
        return 0 if report.ok else 1
    finally:
        if args.keep or (report is not None and not report.ok) or args.data_dir:
            print(f"chaos: data and logs kept in {data_dir}", flush=True)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
