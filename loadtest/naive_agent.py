"""Baseline (b) of the worker benchmark: the textbook Faust agent, one Kafka message per hit and
one RocksDB table write per hit. Prints `DONE <hits> <seconds>` once it has counted `expected`.

    python -m loadtest.naive_agent BOOTSTRAP DATADIR TOPIC EXPECTED
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import faust


def build_naive_app(bootstrap: str, datadir: str, topic: str, expected: int) -> faust.App:
    app = faust.App(
        f"naive-{topic}",
        broker=f"kafka://{bootstrap}",
        store="rocksdb://",
        datadir=datadir,
        web_enabled=False,
        topic_partitions=4,
        consumer_auto_offset_reset="earliest",
    )
    source = app.topic(topic, key_type=bytes, value_type=bytes, value_serializer="raw")
    counts = app.Table("naive-counts", default=int, partitions=4)
    seen = {"n": 0, "first": 0.0}

    @app.agent(source)
    async def count(stream: Any) -> None:
        async for event in stream.events():
            if not seen["n"]:
                seen["first"] = time.monotonic()
            site = event.key.decode()
            counts[site] += 1
            seen["n"] += 1
            if seen["n"] >= expected:
                print(f"DONE {seen['n']} {time.monotonic() - seen['first']:.3f}", flush=True)
                os._exit(0)

    return app


if __name__ == "__main__":
    bootstrap, datadir, topic, expected = sys.argv[1:5]
    naive = build_naive_app(bootstrap, datadir, topic, int(expected))
    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    naive.main()
