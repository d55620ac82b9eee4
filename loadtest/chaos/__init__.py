"""Fault injection: a steady stream of hits through `POST /api/event` while the engine's processes
are killed, scaled and frozen; afterwards an exact audit of what ClickHouse and Redis hold.

    python -m loadtest.chaos --mode short   # about 3 minutes; what tests/test_chaos.py runs
    python -m loadtest.chaos --mode long    # >= 30 faults over >= 200,000 hits (manual)

The harness starts the components itself, as production runs them (not `rollup run`, which
restarts its children on its own): the embedded broker and Redis (engine/stack.py), then
`rollup ingest` and `rollup api` on two ports, `rollup live`, and one to three `rollup worker`
processes, each worker with its own RocksDB directory. Faults:

- SIGKILL of a worker at random moments, restarted on the same state directory;
- scaling to two, then three workers under load (partitions move), then SIGTERM of one;
- SIGKILL of the ingest process (restarted), SIGSTOP of Redis for a few seconds, SIGSTOP of the
  `api` process (the ClickHouse writer) past its Kafka session timeout, and SIGKILL of it.

The load driver counts a hit only once it got a 202 (503s and refused connections are retried).
A request that was in flight when the ingest process died may have been forwarded without an
answer ("unknown outcome"). Around an ingest kill the driver therefore sends new hits to a
quarantine page (`QUARANTINE_PAGE`) and holds every other request until the new ingest is up, so
unknown outcomes land only on that page: every other page must match the 202 tallies exactly, per
site, per page and per minute; the quarantine page must lie between its 202s and its 202s plus
its unknown outcomes.

A hit's minute is stamped by the ingest when the request arrives; the driver knows it lies between
the minutes of the request's start and end, and the audit assigns the rare requests that straddle
a minute boundary to either side (earliest deadline first), so a per-minute mismatch is a real one.

After each fault a probe hit goes to each of four probe sites (one per `hits` partition); the
fault's recovery time is the seconds until all four are visible in `POST /api/v2/query`.
"""

from loadtest.chaos.cluster import Mode
from loadtest.chaos.run import Report, main, run_chaos

__all__ = ["Mode", "Report", "main", "run_chaos"]
