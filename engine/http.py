"""The HTTP app: ingest, Stats API, realtime, health and metrics. `build_app(settings)` only
wires things; connections open in the lifespan, so tests can build fresh apps."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hmac
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from config import Settings
from engine.combine import combined_metrics
from engine.errors import AuthError, InputError, QueryError, UnavailableError
from engine.http_metrics import RequestMetrics
from engine.ingest import UNAVAILABLE
from engine.ingest_asgi import FastEventPath
from engine.live import live_summary, realtime_visitors
from engine.proxy import send_error
from engine.query import plan_query
from engine.query.cache import ResultCache
from engine.rejections import reason_of, reject
from engine.runtime import Role, Runtime
from engine.sites import ApiKey, KeyInfo
from engine.web import web_routes

log = logging.getLogger(__name__)

QUERIES = Counter("rollup_stats_queries_total", "Stats API queries", ["status", "table"])
QUERY_SECONDS = Histogram(
    "rollup_stats_query_seconds",
    "Stats API query latency",
    ["table"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

JSON = "application/json"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


# One answer for a wrong key, an unknown site and a site the key may not read, so that a key
# cannot probe which sites exist.
def unauthorised(site_id: Any) -> str:
    """Names the site asked for (the field at fault) and nothing the key could learn from."""
    return f"invalid API key, or the key may not read site {str(site_id)[:200]!r}"


NO_KEY = "missing API key: send Authorization: Bearer <key>"
# Realtime endpoints are polled by open dashboards every few seconds: a bucket of their own,
# this many times the key's hourly Stats API limit.
REALTIME_LIMIT_FACTOR = 10


def bearer(request: Request) -> str:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" else ""


def build_app(
    settings: Settings, roles: frozenset[Role] | None = None, manage_lifespan: bool = True
) -> Starlette:
    """The ASGI app. With `manage_lifespan=False` the caller starts and stops
    `app.state.runtime` itself (the CLI does, to report start failures in one line)."""
    runtime = Runtime(settings, roles or frozenset({Role.INGEST, Role.API}))
    forwarding = runtime.forwards
    # Exact only while this process is the store's only writer: the embedded chDB store.
    results = ResultCache(settings.query_cache_entries if settings.embedded_clickhouse else 0)

    async def read_body(request: Request, limit: int) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise InputError({"body": [f"larger than {limit} bytes"]}, status=413)
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise InputError({"body": [f"larger than {limit} bytes"]}, status=413)
            chunks.append(chunk)
        return b"".join(chunks)

    def check_admin(request: Request) -> None:
        token = settings.admin_token
        given = bearer(request)
        if not token or not given or not hmac.compare_digest(token.encode(), given.encode()):
            raise AuthError("missing or wrong admin token")

    async def bulk_import(request: Request) -> Response:
        assert runtime.ingestor is not None
        try:
            check_admin(request)
            body = await read_body(request, settings.max_import_bytes)
            result = await runtime.ingestor.bulk(body.splitlines())
        except AuthError as error:
            reject("import", "unauthorized")
            return json_response({"error": str(error)}, 401)
        except InputError as error:
            reject("import", reason_of(error))
            return json_response({"errors": error.errors}, error.status)
        except UnavailableError as error:
            UNAVAILABLE.inc()
            return json_response(
                {"error": str(error)}, 503, {"Retry-After": str(error.retry_after)}
            )
        return json_response(result.as_json(), 202)

    async def lookup_key(request: Request) -> ApiKey | None:
        """The active key sent, or None; AuthError when none was sent."""
        given = bearer(request)
        if not given:
            raise AuthError(NO_KEY)
        assert runtime.sites_repo is not None
        # Read on every request, so a revoked key stops working at once in every process.
        return await asyncio.to_thread(runtime.sites_repo.get_key, given)

    async def authorise(request: Request, site_id: Any) -> ApiKey:
        key = await lookup_key(request)
        if key is None or not isinstance(site_id, str) or site_id not in key.domains:
            raise AuthError(unauthorised(site_id))
        return key

    async def over_limit(scope: str, key: ApiKey, limit: int) -> Response | None:
        assert runtime.limiter is not None
        decision = await runtime.limiter.hit(scope, key.key_hash[:32], limit, 3600)
        if decision.allowed:
            return None
        return json_response(
            {"error": f"rate limit of this key exceeded ({limit} requests per hour)"},
            429,
            {"Retry-After": str(decision.retry_after)},
        )

    async def query(request: Request) -> Response:
        assert runtime.store is not None
        started = time.perf_counter()
        try:
            raw = await read_body(request, settings.max_body_bytes)
        except InputError as error:
            reject("query", reason_of(error))
            return json_response({"error": str(error)}, error.status)
        try:
            key = await lookup_key(request)  # the key first: nothing else for strangers
        except AuthError as error:
            key, message = None, str(error)
        else:
            message = ""
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
            if key is not None:  # only a key holder learns what is wrong with the body
                QUERIES.labels("400", "").inc()
                reject("query", "invalid_json")
                return json_response({"error": "body: invalid JSON (or not UTF-8)"}, 400)
        site_id = body.get("site_id") if isinstance(body, dict) else None
        if key is None or not isinstance(site_id, str) or site_id not in key.domains:
            QUERIES.labels("401", "").inc()
            reject("query", "unauthorized")
            return json_response({"error": message or unauthorised(site_id)}, 401)
        limited = await over_limit("stats_key", key, key.rate_limit_per_hour)
        if limited is not None:
            QUERIES.labels("429", "").inc()
            reject("query", "rate_limited")
            return limited
        site = runtime.site_records.get(str(site_id))
        timezone = site.timezone if site else "UTC"
        writer = runtime.writer
        # Read before planning and querying: an answer is stored under the version it started
        # from, so a batch landing meanwhile retires it.
        version = writer.data_version(str(site_id)) if writer is not None else None
        try:
            # Only `all` needs the site's first day, which costs a query.
            all_time = body.get("date_range") == "all"
            plan = plan_query(
                body,
                timezone=timezone,
                now=dt.datetime.now(dt.UTC),
                first_day=await runtime.first_day(str(site_id)) if all_time else None,
            )
        except QueryError as error:
            QUERIES.labels("400", "").inc()
            reject("query", "invalid_query")
            return json_response({"error": str(error)}, 400)
        cache_key = None
        if version is not None:
            shape = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
            cache_key = results.key(str(site_id), plan.statements, version, shape)
            # `Cache-Control: no-cache` asks for an answer computed now (HTTP semantics).
            if "no-cache" not in request.headers.get("cache-control", ""):
                cached = results.get(cache_key)
                if cached is not None:
                    QUERIES.labels("200", "cache").inc()
                    QUERY_SECONDS.labels("cache").observe(time.perf_counter() - started)
                    return Response(cached, media_type=JSON)
        try:
            rows = [await runtime.store.stats_query(s.sql, s.params) for s in plan.statements]
            for index, again in plan.recheck(rows).items():
                rows[index] = await runtime.store.stats_query(again.sql, again.params)
        except Exception as exc:  # the store, not the query, is at fault: say so, don't 500
            log.warning("query on %s failed: %s", plan.table, exc)
            QUERIES.labels("503", plan.table).inc()
            message = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            return json_response({"error": f"clickhouse: {message}"}, 503, {"Retry-After": "5"})
        answer = orjson.dumps(plan.render(rows))
        if cache_key is not None:
            results.put(cache_key, answer)
        QUERIES.labels("200", plan.table).inc()
        QUERY_SECONDS.labels(plan.table).observe(time.perf_counter() - started)
        return Response(answer, media_type=JSON)

    async def realtime(request: Request, detail: bool) -> Response:
        site_id = request.query_params.get("site_id")
        try:
            key = await authorise(request, site_id)
        except AuthError as error:
            reject("realtime", "unauthorized")
            return json_response({"error": str(error)}, 401)
        limit = key.rate_limit_per_hour * REALTIME_LIMIT_FACTOR
        limited = await over_limit("realtime_key", key, limit)
        if limited is not None:
            reject("realtime", "rate_limited")
            return limited
        assert runtime.redis is not None and site_id is not None
        try:
            if detail:
                return json_response(await live_summary(runtime.redis, site_id, time.time()))
            return json_response(await realtime_visitors(runtime.redis, site_id, time.time()))
        except RedisError as exc:
            return json_response(
                {"error": f"live counters unavailable: {exc}"}, 503, {"Retry-After": "5"}
            )

    async def realtime_visitors_endpoint(request: Request) -> Response:
        return await realtime(request, detail=False)

    async def realtime_live_endpoint(request: Request) -> Response:
        return await realtime(request, detail=True)

    def key_json(info: KeyInfo) -> dict[str, Any]:
        return {
            "key_id": info.key_id,
            "label": info.label,
            "sites": list(info.domains),
            "rate_limit_per_hour": info.rate_limit_per_hour,
            "created_at": info.created_at,
            "revoked": info.revoked,
        }

    async def admin(request: Request) -> Response:
        """Site and key management (admin token): the HTTP twin of `rollup sites`."""
        repo = runtime.sites_repo
        assert repo is not None
        action = request.path_params.get("action", "")
        try:
            check_admin(request)
            body: Any = {}
            if request.method == "POST":
                raw = await read_body(request, settings.max_body_bytes)
                try:
                    body = orjson.loads(raw) if raw.strip() else {}
                except orjson.JSONDecodeError:
                    raise InputError({"body": ["must be valid JSON"]}) from None
                if not isinstance(body, dict):
                    raise InputError({"body": ["must be a JSON object"]})
            answer = await asyncio.to_thread(admin_action, repo, request, action, body)
        except AuthError as error:
            reject("admin", "unauthorized")
            return json_response({"error": str(error)}, 401)
        except InputError as error:
            reject("admin", reason_of(error))
            return json_response({"errors": error.errors}, error.status)
        if request.method == "POST" and action in ("sites", "keys"):
            await runtime.refresh_sites()
            return json_response(answer, 201)
        return json_response(answer)

    def admin_action(repo: Any, request: Request, action: str, body: dict[str, Any]) -> Any:
        def text(name: str, default: str | None = None) -> str:
            value = body.get(name, default)
            if not isinstance(value, str):
                raise InputError({name: ["required, a string"]})
            return value

        def per_hour(name: str) -> int | None:
            value = body.get(name)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError({name: ["a whole number of requests per hour, at least 1"]})
            return value

        key_id = request.path_params.get("key_id", "")
        match (request.method, action):
            case ("GET", "sites"):
                return [{"domain": s.domain, "timezone": s.timezone} for s in repo.list_sites()]
            case ("POST", "sites"):
                site, key = repo.add_site(text("domain"), text("timezone", "UTC"))
                limit = per_hour("rate_limit")
                if limit:
                    repo.set_rate_limit(site.domain, limit)
                return {"domain": site.domain, "timezone": site.timezone, "key": key}
            case ("GET", "keys"):
                site_id = request.query_params.get("site_id")
                return [key_json(info) for info in repo.list_keys(site_id)]
            case ("POST", "keys"):
                sites = body.get("sites")
                if not isinstance(sites, list) or not all(isinstance(d, str) for d in sites):
                    raise InputError({"sites": ["required, a list of site domains"]})
                key = repo.add_key(sites, text("label", ""), per_hour("rate_limit"))
                return {"key": key}
            case ("POST", "revoke"):
                return {"key_id": repo.revoke_key(key_id), "revoked": True}
            case ("POST", "rotate"):
                return {"key": repo.rotate_key(key_id)}
            case ("POST", "rate-limit"):
                limit = per_hour("rate_limit_per_hour")
                if limit is None:
                    raise InputError({"rate_limit_per_hour": ["required"]})
                return {"key_id": repo.set_key_rate_limit(key_id, limit)}
        raise InputError({"path": ["unknown admin action"]}, status=404)

    async def health(request: Request) -> Response:
        if request.query_params.get("probe") == "liveness":
            # The process answers: enough for liveness. Dependencies are readiness's business,
            # or a Redis outage would restart every pod.
            return json_response({"process": "ok"})
        status = await runtime.health()
        ok = all(v == "ok" for v in status.values())
        return json_response(status, 200 if ok else 503)

    async def metrics(request: Request) -> Response:
        if runtime.proxy is not None:
            return Response(await combined_metrics(runtime.proxy), media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/api/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    if Role.INGEST in runtime.roles:
        # POST /api/event is served by FastEventPath, ahead of the router.
        routes.append(Route("/api/import", bulk_import, methods=["POST"]))
    if not forwarding:  # else the api process answers the rest (see Forwarding)
        routes += [
            Route("/api/admin/{action:str}", admin, methods=["GET", "POST"]),
            Route("/api/admin/keys/{key_id:str}/{action:str}", admin, methods=["POST"]),
        ]
        if Role.API in runtime.roles:
            routes += [
                Route("/api/v2/query", query, methods=["POST"]),
                Route(
                    "/api/v1/stats/realtime/visitors", realtime_visitors_endpoint, methods=["GET"]
                ),
                Route("/api/v1/stats/realtime/live", realtime_live_endpoint, methods=["GET"]),
            ]
        routes += web_routes(
            settings.web_dist_dir,
            dashboard=Role.API in runtime.roles,
            tracker=bool(runtime.roles & {Role.INGEST, Role.API}),
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = App(
        routes=routes,
        lifespan=lifespan if manage_lifespan else None,
        middleware=[Middleware(RequestMetrics)],
    )
    inner = Forwarding(app.starlette, runtime) if forwarding else app.starlette
    app.event_path = FastEventPath(inner, runtime, settings)
    app.state.runtime = runtime
    return app


class App(Starlette):
    """Starlette, with `POST /api/event` answered before its middleware stack: the hot path
    pays for neither Starlette's dispatch nor its error middleware's send wrapper. An exception
    there still ends in a 500 (the server's own), as every other path's does."""

    event_path: FastEventPath

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.event_path(scope, receive, send)

    async def starlette(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


# Answered by an ingest process that forwards the rest to the api process.
LOCAL_PATHS = frozenset({"/api/health", "/metrics", "/api/import"})


class Forwarding:
    """Requests an ingest-only process does not answer itself go to the api process, ahead of
    Starlette: the api's own router, middleware and metrics then see them as they would have."""

    def __init__(self, app: Any, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in LOCAL_PATHS:
            await self.app(scope, receive, send)
        elif self.runtime.proxy is None:
            await send_error(send, 503, "the ingest process is starting; retry shortly", "1")
        else:
            await self.runtime.proxy(scope, receive, send)
