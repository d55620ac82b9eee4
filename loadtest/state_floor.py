"""Baseline (c) of the worker benchmark: the worker's own Faust machinery with no analytics.

The same hits topic, Faust settings, batches (`take_events`, 500 messages), decoding, RocksDB
table and batched changelog as the worker, and nothing else: per batch, each visitor's state is
read once and written back once (a few bytes, smaller than a real session state), with its
changelog record. No sessions rules, no rollup rows, no output messages, no ClickHouse write.
What this reaches is a ceiling for any worker that keeps its session state in a Faust table on
this machine. Prints `DONE <hits> <seconds> <cpu seconds>` once it has read `expected` hits.

    python -m loadtest.state_floor BOOTSTRAP DATADIR EXPECTED
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import faust

from config import load_settings
from engine import codec
from engine.hits import decode_hits
from topologies.changelog import BatchedChangelog
from topologies.rollups import faust_settings, hits_and_sessions
from topologies.session_stage import event_context, state_key


def build_floor_app(bootstrap: str, datadir: str, expected: int) -> faust.App:
    # The benchmark's embedded broker, on loopback.
    settings = load_settings(data_dir=Path(datadir), broker_port=int(bootstrap.rsplit(":")[1]))
    settings.worker_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App("state-floor", **faust_settings(settings))
    hits_topic, table = hits_and_sessions(app, settings)
    changelog = BatchedChangelog(table)
    seen = {"hits": 0, "first": 0.0, "cpu": 0.0}

    async def process_batch(events: list[faust.EventT[Any]]) -> None:
        touched: dict[str, tuple[faust.EventT[Any], bytes, float]] = {}
        for event in events:
            hits = decode_hits(event.message.value or b"")
            for hit in hits:
                key = state_key(hit["site"], hit["vid"])
                known = touched.get(key)
                if known is None:
                    try:
                        stored: bytes = table.data[key]
                    except KeyError:
                        stored = b""
                    touched[key] = (event, stored, hit["ts"])
                else:
                    touched[key] = (event, known[1], hit["ts"])
            seen["hits"] += len(hits)
        for key, (event, stored, ts) in touched.items():
            value = codec.pack([event.message.partition, ts, len(stored)])
            with event_context(event):
                table.data[key] = value
                changelog.put(event.message.partition, key, value)
        await changelog.flush()

    @app.agent(hits_topic, name="floor")
    async def floor(stream: faust.StreamT[bytes]) -> None:
        async for events in stream.take_events(  # type: ignore[attr-defined]
            max_=500, within=settings.worker_flush_seconds / 4
        ):
            if not seen["hits"]:
                seen["first"], seen["cpu"] = time.monotonic(), time.process_time()
            await asyncio.shield(process_batch(list(events)))
            if seen["hits"] >= expected:
                wall = time.monotonic() - seen["first"]
                cpu = time.process_time() - seen["cpu"]
                print(f"DONE {seen['hits']} {wall:.3f} {cpu:.3f}", flush=True)
                os._exit(0)

    return app


if __name__ == "__main__":
    import gc

    import uvloop

    bootstrap, datadir, expected = sys.argv[1:4]
    # As the worker runs (topologies/rollups.py `run_worker`).
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())
    floor_app = build_floor_app(bootstrap, datadir, int(expected))
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    floor_app.main()
