"""`rollup`: run the embedded stack, or one production role, and manage sites."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from config import Settings, load_settings
from engine.errors import ComponentError, ConfigError, InputError, RollupError
from engine.logs import setup_logging
from engine.redis_conn import connect_redis
from engine.runtime import Role

if TYPE_CHECKING:
    from rich.progress import Progress

log = logging.getLogger("rollup")


def _serve(settings: Settings, roles: frozenset[Role]) -> int:
    import uvicorn

    from engine.http import build_app
    from engine.stack import port_in_use

    if port_in_use(settings.http_host, settings.http_port):
        raise ComponentError(
            "http", f"port {settings.http_port} is already in use (set ROLLUP_HTTP_PORT)"
        )
    app = build_app(settings, roles, manage_lifespan=False)
    runtime = app.state.runtime

    async def main() -> None:
        await runtime.start()
        # What start-up made lives as long as the process: out of the collector's sight. A full
        # collection walked it all, about 50 ms with ~90k objects, a pause in some request.
        gc.collect()
        gc.freeze()
        config = uvicorn.Config(
            app,
            host=settings.http_host,
            port=settings.http_port,
            loop="uvloop",
            http="httptools",
            lifespan="off",
            proxy_headers=False,  # X-Forwarded-For is judged by the app's trusted proxies
            access_log=False,
            log_level="warning",
            backlog=4096,
        )
        server = uvicorn.Server(config)
        try:
            log.info(
                "%s listening on http://%s:%d",
                "+".join(sorted(r.value for r in roles)),
                settings.http_host,
                settings.http_port,
            )
            await server.serve()
        finally:
            await runtime.stop()

    import uvloop

    uvloop.run(main())
    return 0


def _worker(settings: Settings) -> int:
    from topologies import worker_metrics
    from topologies.rollups import run_worker

    worker_metrics.serve(settings)
    run_worker(settings)
    return 0


def _live(settings: Settings) -> int:
    from topologies.live import run_live

    run_live(settings)
    return 0


# `rollup run`'s engine processes. Stopped ingest first (no new hits; its producer flushes), then
# the live counters and the worker (hands its last rollups over), then the api (its store writer
# flushes them).
START_ORDER = ("api", "ingest", "worker", "live")
STOP_ORDER = ("ingest", "live", "worker", "api")
LOOPBACK_PROXIES = '["127.0.0.1/32", "::1/128"]'


def _run(settings: Settings) -> int:
    """The whole embedded stack in the foreground; Ctrl-C stops it in order."""
    from engine.stack import ChildProcess, EmbeddedStack, free_port, port_in_use

    if port_in_use(settings.http_host, settings.http_port):
        raise ComponentError(
            "http", f"port {settings.http_port} is already in use (set ROLLUP_HTTP_PORT)"
        )
    api_port = settings.internal_api_port or free_port("127.0.0.1")
    if port_in_use("127.0.0.1", api_port):
        raise ComponentError(
            "api", f"internal port {api_port} is already in use (set ROLLUP_INTERNAL_API_PORT)"
        )
    data_dir = settings.data_dir.resolve()
    env = dict(os.environ)
    env["ROLLUP_DATA_DIR"] = str(data_dir)
    env.pop("ROLLUP_API_UPSTREAM_URL", None)
    token = settings.admin_token
    generated = not token
    if not token:
        token = secrets.token_urlsafe(24)
    env["ROLLUP_ADMIN_TOKEN"] = token
    # The ingest process owns the public port and forwards everything it does not answer to the
    # api process, on loopback only; the api trusts its X-Forwarded-For (see engine/proxy.py).
    role_env = {
        "ingest": {"ROLLUP_API_UPSTREAM_URL": f"http://127.0.0.1:{api_port}"},
        "api": {
            "ROLLUP_HTTP_HOST": "127.0.0.1",
            "ROLLUP_HTTP_PORT": str(api_port),
            "ROLLUP_TRUSTED_PROXIES": LOOPBACK_PROXIES,
        },
        "worker": {},
        "live": {},
    }
    stack = EmbeddedStack(settings)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    stack.start()
    engines: dict[str, ChildProcess] = {}

    def spawn(role: str) -> ChildProcess:
        log_path = data_dir / "logs" / f"{role}.log"
        out = log_path.open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", role],
            env={**env, **role_env[role]},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        return ChildProcess(role, proc, log_path)

    try:
        for role in START_ORDER:
            engines[role] = spawn(role)
        print(welcome(settings, _site_domains(settings), token if generated else None), flush=True)
        while not stopping:
            time.sleep(0.5)
            for child in stack.children:
                if not child.alive():
                    raise ComponentError(child.name, f"exited: {child.last_log_line()}")
            for role, child in list(engines.items()):
                if not child.alive():
                    code = child.proc.returncode
                    in_use = code == 1 and "already" in child.last_log_line()
                    if role in ("ingest", "api") and in_use:
                        if role == "api":  # taken since the check above
                            raise ComponentError(
                                role,
                                f"internal port {api_port} is already in use "
                                "(set ROLLUP_INTERNAL_API_PORT)",
                            )
                        raise ComponentError(role, child.last_log_line())
                    log.warning("%s exited (%s): %s; restarting", role, code, child.last_log_line())
                    engines[role] = spawn(role)
    finally:
        for role in STOP_ORDER:
            if role in engines:
                engines[role].stop(timeout=15)
        stack.stop()
        print("rollup stopped", flush=True)
    return 0


def _site_domains(settings: Settings) -> list[str]:
    from engine.sites import SiteRepository

    try:
        repo = SiteRepository(settings.sites_dsn, settings.stats_rate_limit_per_hour)
        repo.open()
        try:
            return [site.domain for site in repo.list_sites()]
        finally:
            repo.close()
    except Exception as exc:  # the URLs are a courtesy; the stack runs without them
        log.warning("could not list sites: %s", exc)
        return []


def welcome(settings: Settings, domains: list[str], generated_token: str | None) -> str:
    """What `rollup run` prints once started: where to point a browser, curl and Prometheus."""
    host = settings.http_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    base = f"http://{host}:{settings.http_port}"
    rows = [
        ("ingest", f"POST {base}/api/event"),
        ("Stats API", f"POST {base}/api/v2/query"),
        ("realtime", f"{base}/api/v1/stats/realtime/visitors?site_id=SITE"),
    ]
    rows += [("dashboard", f"{base}/dashboard/{domain}") for domain in domains]
    if not domains:
        rows.append(("dashboard", f"{base}/dashboard/SITE (add one: rollup sites add DOMAIN)"))
    rows.append(("metrics", f"{base}/metrics (ingest, api)"))
    for role, role_host, port in (
        ("worker", settings.worker_web_host, settings.worker_web_port),
        ("live", settings.live_web_host, settings.live_web_port),
    ):
        if port:
            if role_host in ("0.0.0.0", "::", ""):
                role_host = "127.0.0.1"
            rows.append(("", f"http://{role_host}:{port}/metrics ({role})"))
    rows.append(("health", f"{base}/api/health"))
    data_dir = settings.data_dir.resolve()
    rows.append(("data", f"{data_dir} (logs in {data_dir / 'logs'})"))
    if generated_token:
        rows.append(
            ("admin token", f"{generated_token} (generated; set ROLLUP_ADMIN_TOKEN to keep one)")
        )
    lines = ["rollup running:"] + [f"  {name:<12} {value}" for name, value in rows]
    lines.append("Ctrl-C stops everything.")
    return "\n".join(lines)


def _sites(settings: Settings, args: argparse.Namespace) -> int:
    from engine.sites import SiteRepository

    repo = SiteRepository(settings.sites_dsn, settings.stats_rate_limit_per_hour)
    repo.open()
    try:
        match args.sites_command:
            case "add":
                site, key = repo.add_site(args.domain, args.timezone)
                if args.rate_limit:
                    repo.set_rate_limit(site.domain, args.rate_limit)
                print(f"site {site.domain} (timezone {site.timezone}); its Stats API key:")
                print(key)
            case "rate-limit":
                count = repo.set_rate_limit(args.domain, args.per_hour)
                print(f"{count} key(s) of {args.domain} now allow {args.per_hour} requests/hour")
            case "add-key":
                key = repo.add_key(args.domains, args.label or "", args.rate_limit or None)
                print(f"new key for {', '.join(args.domains)} (shown once):")
                print(key)
            case "keys":
                for info in repo.list_keys(args.domain):
                    state = "revoked" if info.revoked else "active"
                    print(
                        f"{info.key_id}\t{state}\t{info.rate_limit_per_hour}/h\t"
                        f"{','.join(info.domains)}\t{info.label}\t{info.created_at}"
                    )
            case "revoke":
                print(f"key {repo.revoke_key(args.key_id)} revoked")
            case "rotate":
                key = repo.rotate_key(args.key_id)
                print(f"key {args.key_id} revoked; its replacement (shown once):")
                print(key)
            case "key-rate-limit":
                key_id = repo.set_key_rate_limit(args.key_id, args.per_hour)
                print(f"key {key_id} now allows {args.per_hour} requests/hour")
            case _:
                for site in repo.list_sites():
                    print(f"{site.domain}\t{site.timezone}\t{site.created_at.isoformat()}")
    finally:
        repo.close()
    return 0


def _import(settings: Settings, path: Path) -> int:

    from engine.ingest import Ingestor, SiteDirectory
    from engine.kafka import HitProducer, ensure_topics
    from engine.sites import SiteRepository
    from engine.visitor import SaltStore

    async def main() -> int:
        repo = SiteRepository(settings.sites_dsn)
        repo.open()
        sites = SiteDirectory()
        sites.update({s.domain: s.timezone for s in repo.list_sites()})
        repo.close()
        await ensure_topics(settings)
        redis = connect_redis(settings)
        producer = HitProducer(settings)
        await producer.start()
        progress = _progress()
        reading = progress.add_task("reading", total=path.stat().st_size)
        acked = progress.add_task("acknowledged hits", total=None)

        def lines(handle: BinaryIO) -> Iterator[bytes]:
            for line in handle:
                progress.advance(reading, len(line))
                yield line

        async def follow_acks() -> None:
            while True:
                progress.update(acked, completed=producer.hits_sent)
                await asyncio.sleep(0.1)

        follower = asyncio.create_task(follow_acks())
        try:
            ingestor = Ingestor(settings, producer, SaltStore(redis), sites)
            with progress, path.open("rb") as handle:
                result = await ingestor.bulk(lines(handle))
                progress.update(acked, completed=producer.hits_sent, total=producer.hits_sent)
        finally:
            follower.cancel()
            await producer.stop()
            await redis.aclose()
        import orjson

        print(orjson.dumps(result.as_json()).decode())
        return 0 if not result.errors else 3

    return asyncio.run(main())


def _progress() -> Progress:
    """A progress display on stderr (stdout carries results), shown only on a terminal."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )


def _migrate(settings: Settings) -> int:
    from engine.store.client import Store

    store = Store(settings)
    store.open()
    store.migrate()
    store.close()
    print("ClickHouse schema is up to date")
    return 0


DESCRIPTION = """\
A Plausible-compatible web analytics engine: hits arrive on POST /api/event, go through
Kafka, are rolled up by Faust workers, and land in ClickHouse and Redis for the Stats API.

On one machine, `rollup run` starts everything (embedded broker, Redis and ClickHouse).
In production each role runs on its own, pointed at real servers by environment variables.
"""

EPILOG = """\
getting started:
  rollup run                                     # prints the URLs to open and the admin token
  rollup sites add example.com --timezone Europe/Berlin   # last line: the site's API key

production roles (see k8s/ and the README's "Running in production"):
  rollup migrate     once per release, before the others
  rollup ingest      stateless; scale on CPU
  rollup worker      one per group of `hits` partitions; RocksDB state on a volume
  rollup live        the realtime counters in Redis; one or more (a consumer group)
  rollup api         Stats API, realtime, dashboard and the ClickHouse writer

configuration: environment variables ROLLUP_* plus KAFKA_BROKERS, REDIS_URL, CLICKHOUSE_URL,
CLICKHOUSE_CLUSTER and DATABASE_URL (all optional; unset means embedded). Every role serves
/metrics (Prometheus) and /api/health; ROLLUP_LOG_FORMAT=json logs one JSON object per line.
"""


def parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="rollup", description=DESCRIPTION, epilog=EPILOG, formatter_class=formatter
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    def command(name: str, summary: str, details: str = "") -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=summary,
            description=f"{summary[0].upper()}{summary[1:]}.{' ' + details if details else ''}",
            formatter_class=formatter,
        )

    command(
        "run",
        "run the whole embedded stack in the foreground (Ctrl-C stops it)",
        "Starts the broker, Redis, the ingest process (on the public port; it forwards all but "
        "hits to the api process on a loopback port), the api process, a worker and the live "
        "counters, restarts "
        "one that dies, and prints the URLs to open. Data and logs go to ROLLUP_DATA_DIR "
        "(./.rollup).",
    )
    command("ingest", "production role: POST /api/event and /api/import")
    command("api", "production role: Stats API, realtime, and the ClickHouse writer")
    command("worker", "production role: the Faust rollup worker")
    command("live", "production role: the live counters (hits -> Redis) for realtime")
    command("migrate", "create or update the ClickHouse schema (cluster-aware)")
    command("serve", "the ingest and api roles in one process")
    imp = command(
        "import",
        "bulk import an NDJSON file (the pipeline of /api/import)",
        "Each line: an event body plus timestamp, ip and user_agent. Prints the result as JSON "
        "on stdout; progress goes to a terminal's stderr.",
    )
    imp.add_argument("file", type=Path, help="NDJSON file, one event per line")
    sites = command("sites", "manage sites and their Stats API keys")
    sites_sub = sites.add_subparsers(dest="sites_command", required=True, metavar="ACTION")
    add = sites_sub.add_parser("add", help="add a site; prints its new key as the last line")
    add.add_argument("domain", help="the site's domain, as sent in events")
    add.add_argument("--timezone", default="UTC", help="IANA name for day boundaries (UTC)")
    add.add_argument("--rate-limit", type=int, default=0, help="Stats API requests per hour")
    rate = sites_sub.add_parser("rate-limit", help="set the Stats API limit of a site's keys")
    rate.add_argument("domain")
    rate.add_argument("per_hour", type=int, help="requests per hour per key")
    sites_sub.add_parser("list", help="list sites: domain, timezone, created")
    add_key = sites_sub.add_parser("add-key", help="a new key reading the given sites")
    add_key.add_argument("domains", nargs="+")
    add_key.add_argument("--label", default="")
    add_key.add_argument("--rate-limit", type=int, default=0, help="Stats API requests per hour")
    keys = sites_sub.add_parser("keys", help="list keys (ids, never the keys themselves)")
    keys.add_argument("domain", nargs="?")
    revoke = sites_sub.add_parser("revoke", help="revoke a key by the id `keys` lists")
    revoke.add_argument("key_id")
    rotate = sites_sub.add_parser("rotate", help="replace a key: prints the new one, revokes it")
    rotate.add_argument("key_id")
    key_rate = sites_sub.add_parser("key-rate-limit", help="set one key's Stats API limit")
    key_rate.add_argument("key_id")
    key_rate.add_argument("per_hour", type=int)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = load_settings()
    except Exception as exc:
        print(f"rollup: invalid configuration: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    try:
        match args.command:
            case "run":
                return _run(settings)
            case "ingest":
                return _serve(settings, frozenset({Role.INGEST}))
            case "api":
                return _serve(settings, frozenset({Role.API}))
            case "serve":
                return _serve(settings, frozenset({Role.INGEST, Role.API}))
            case "worker":
                return _worker(settings)
            case "live":
                return _live(settings)
            case "migrate":
                return _migrate(settings)
            case "import":
                return _import(settings, args.file)
            case "sites":
                return _sites(settings, args)
    except InputError as exc:
        print(f"rollup: {exc}", file=sys.stderr)
        return 2
    except (ComponentError, ConfigError) as exc:
        print(f"rollup: {exc}", file=sys.stderr)
        return 1
    except RollupError as exc:
        print(f"rollup: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
