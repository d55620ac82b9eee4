"""`rollup`: run the embedded stack, or one production role, and manage sites."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from config import Settings, load_settings
from engine.errors import ComponentError, ConfigError, InputError, RollupError
from engine.redis_conn import connect_redis
from engine.runtime import Role

log = logging.getLogger("rollup")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


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
    from prometheus_client import start_http_server

    from topologies.rollups import run_worker

    if settings.worker_web_port:
        try:
            start_http_server(settings.worker_web_port, addr="127.0.0.1")
        except OSError:
            log.warning(
                "worker metrics port %d in use; metrics not served", settings.worker_web_port
            )
    run_worker(settings)
    return 0


def _run(settings: Settings) -> int:
    """The whole embedded stack in the foreground; Ctrl-C stops it in order."""
    from engine.stack import ChildProcess, EmbeddedStack, port_in_use

    if port_in_use(settings.http_host, settings.http_port):
        raise ComponentError(
            "http", f"port {settings.http_port} is already in use (set ROLLUP_HTTP_PORT)"
        )
    data_dir = settings.data_dir.resolve()
    env = dict(os.environ)
    env["ROLLUP_DATA_DIR"] = str(data_dir)
    token = settings.admin_token
    if not token:
        token = secrets.token_urlsafe(24)
        print(f"admin token (ROLLUP_ADMIN_TOKEN): {token}", flush=True)
    env["ROLLUP_ADMIN_TOKEN"] = token
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
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        return ChildProcess(role, proc, log_path)

    try:
        engines["serve"] = spawn("serve")
        engines["worker"] = spawn("worker")
        print(
            f"rollup running: http://{settings.http_host}:{settings.http_port} "
            f"(data in {data_dir}, logs in {data_dir / 'logs'})",
            flush=True,
        )
        while not stopping:
            time.sleep(0.5)
            for child in stack.children:
                if not child.alive():
                    raise ComponentError(child.name, f"exited: {child.last_log_line()}")
            for role, child in list(engines.items()):
                if not child.alive():
                    code = child.proc.returncode
                    if role == "serve" and code == 1 and "already" in child.last_log_line():
                        raise ComponentError(role, child.last_log_line())
                    log.warning("%s exited (%s): %s; restarting", role, code, child.last_log_line())
                    engines[role] = spawn(role)
    finally:
        for child in engines.values():
            child.stop(timeout=15)
        stack.stop()
        print("rollup stopped", flush=True)
    return 0


def _sites(settings: Settings, args: argparse.Namespace) -> int:
    from engine.sites import SiteRepository

    repo = SiteRepository(settings.sites_dsn, settings.stats_rate_limit_per_hour)
    repo.open()
    try:
        if args.sites_command == "add":
            site, key = repo.add_site(args.domain, args.timezone)
            if args.rate_limit:
                repo.set_rate_limit(site.domain, args.rate_limit)
            print(f"site {site.domain} (timezone {site.timezone}); its Stats API key:")
            print(key)
        elif args.sites_command == "rate-limit":
            count = repo.set_rate_limit(args.domain, args.per_hour)
            print(f"{count} key(s) of {args.domain} now allow {args.per_hour} requests/hour")
        else:
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
        try:
            ingestor = Ingestor(settings, producer, SaltStore(redis), sites)
            with path.open("rb") as handle:
                result = await ingestor.bulk(handle)
        finally:
            await producer.stop()
            await redis.aclose()
        import orjson

        print(orjson.dumps(result.as_json()).decode())
        return 0 if not result.errors else 3

    return asyncio.run(main())


def _migrate(settings: Settings) -> int:
    from engine.store.client import Store

    store = Store(settings)
    store.open()
    store.migrate()
    store.close()
    print("ClickHouse schema is up to date")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rollup", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="the whole embedded stack in the foreground")
    sub.add_parser("ingest", help="production role: POST /api/event and /api/import")
    sub.add_parser("api", help="production role: Stats API, realtime, and the store writer")
    sub.add_parser("serve", help="ingest and api roles in one process (what `run` starts)")
    sub.add_parser("worker", help="production role: the Faust rollup worker")
    sub.add_parser("migrate", help="create or update the ClickHouse schema")
    imp = sub.add_parser("import", help="bulk import an NDJSON file")
    imp.add_argument("file", type=Path)
    sites = sub.add_parser("sites", help="manage sites and their Stats API keys")
    sites_sub = sites.add_subparsers(dest="sites_command", required=True)
    add = sites_sub.add_parser("add", help="add a site; prints its new key as the last line")
    add.add_argument("domain")
    add.add_argument("--timezone", default="UTC")
    add.add_argument("--rate-limit", type=int, default=0, help="Stats API requests per hour")
    rate = sites_sub.add_parser("rate-limit", help="set the Stats API limit of a site's keys")
    rate.add_argument("domain")
    rate.add_argument("per_hour", type=int)
    sites_sub.add_parser("list")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = load_settings()
    except Exception as exc:
        print(f"rollup: invalid configuration: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    _setup_logging(settings.log_level)
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
