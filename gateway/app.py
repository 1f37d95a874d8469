"""aiohttp application: the public capture routes plus health, readiness and metrics."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from eventpipe.config import Settings
from eventpipe.contract import stamp_teams
from eventpipe.kafka import RegistryReader, ensure_topics, producer, topics_for
from eventpipe.metrics import GatewayMetrics as Metrics
from eventpipe.teams import api_key_shape_error
from gateway import server
from gateway.batcher import Batcher
from gateway.client_ip import client_ip, parse_networks
from gateway.deadlines import Deadlines
from gateway.decode import request_form
from gateway.errors import CaptureError, invalid, key_refused, timed_out, too_large, unauthorized, unavailable
from gateway.events import RequestContext, outside_token
from gateway.openapi import CAPTURE_ROUTES, build_spec
from gateway.pool import DecodePool
from gateway.prepare import Escalate, Limits, Message, Prepared, prepare, prepare_inline
from gateway.timestamps import parse_time

log = logging.getLogger("eventpipe.gateway")


PRODUCER = web.AppKey("producer", AIOKafkaProducer)
REGISTRY = web.AppKey("registry", RegistryReader)
SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
PROXIES = web.AppKey("proxies", tuple)
POOL = web.AppKey("pool", DecodePool)
BUDGET = web.AppKey("budget", server.ByteBudget)
RAW_TOPIC = web.AppKey("raw_topic", str)
HISTORICAL_TOPIC = web.AppKey("historical_topic", str)
DEADLINES = web.AppKey("deadlines", Deadlines)
BATCHER = web.AppKey("batcher", Batcher)
HISTORICAL_BATCHER = web.AppKey("historical_batcher", Batcher)
LIMITS = web.AppKey("limits", dict)  # route -> (body limit, decode Limits), worked out once
# Five times the body limit inflated on the event routes (posthog-js sends gzip-js batches to /e/);
# on /batch as much inflated as a raw JSON body may be (PostHog allows 100 MB there, which a gateway
# that promises ~400 MB of RSS cannot parse: docs/capture.md, "Limits").
INFLATE_FACTOR = 5
# Requests with at least this many events fill their own Kafka batches (gateway/batcher.py): ~1.5 µs
# per event instead of ~10 for the producer's send; fewer go through send (measured: single-event
# requests cost more CPU handed over as batches of their own than lingering in the producer).
BATCHED_FROM = 16


_DEFAULT_ALLOW_HEADERS = "X-Requested-With, Content-Type, traceparent, request-id"
# What json_response({"status": 1}) sends, encoded once instead of per request.
_OK_BODY = b'{"status": 1}'
_JSON_TYPE = {"Content-Type": "application/json; charset=utf-8"}


def _cors(origin: str | None, requested: str | None) -> dict[str, str]:
    headers = {
        "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
        "Access-Control-Max-Age": "86400",
        "Vary": "Origin",
    }
    # Credentials are allowed only for an echoed origin: browsers refuse `*` with credentials, and
    # `*` plus credentials would be the misconfiguration every CORS checker flags.
    if origin:
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Allow-Credentials"] = "true"
    else:
        headers["Access-Control-Allow-Origin"] = "*"
    headers["Access-Control-Allow-Headers"] = requested or _DEFAULT_ALLOW_HEADERS
    return headers


# Server SDKs send neither Origin nor Access-Control-Request-Headers: their headers never change.
_CORS_ANY = MappingProxyType(_cors(None, None))
_OK_ANY = MappingProxyType({**_CORS_ANY, **_JSON_TYPE})


def cors_headers(request: web.Request) -> Mapping[str, str]:
    """The CORS headers of an answer to ``request`` (read-only: copy before adding to them)."""
    origin = request.headers.get("Origin")
    requested = request.headers.get("Access-Control-Request-Headers")
    if not origin and not requested:
        return _CORS_ANY
    return _cors(origin, requested)


def accepted(request: web.Request) -> web.Response:
    """200 ``{"status": 1}`` (json_response's bytes and headers, without encoding them per request)."""
    cors = cors_headers(request)
    return web.Response(body=_OK_BODY, headers=_OK_ANY if cors is _CORS_ANY else {**cors, **_JSON_TYPE})


def error_response(request: web.Request, err: CaptureError) -> web.Response:
    headers = dict(cors_headers(request))
    if err.retry_after is not None:
        headers["Retry-After"] = str(err.retry_after)
    resp = web.json_response(err.body(), status=err.status, headers=headers)
    if err.status == 408:
        resp.force_close()  # the client is too slow to be worth keeping
    return resp


def _busy() -> CaptureError:
    return unavailable("The gateway is holding as many request bytes as it may, please retry.", retry_after=1)


async def read_body(request: web.Request, limit: int, hold: server.Hold, timeout_s: float) -> bytes:
    """The request body, refusing more than ``limit`` bytes without buffering the excess.

    Every byte is taken from the request's :class:`~gateway.server.Hold` before it is kept (503 when
    the gateway holds too much already), and the whole body must arrive within ``timeout_s`` (408).
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise too_large(f"Request body exceeds {limit} bytes")
    if declared is not None and not hold.take(declared):
        raise _busy()
    chunks: list[bytes] = []
    size = 0
    try:
        if declared is not None and request.content.is_eof():
            # The whole body is buffered already (a small request arrives with its headers): take it
            # without a timer and an async iterator, which cost more than the rest of this function.
            body = request.content.read_nowait()
            if len(body) > limit:  # aiohttp inflated a Content-Encoding: gzip body past the limit
                raise too_large(f"Request body exceeds {limit} bytes")
            if len(body) > declared and not hold.take(len(body) - declared):
                raise _busy()
            return body
        async with asyncio.timeout(timeout_s):
            async for chunk in request.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise too_large(f"Request body exceeds {limit} bytes")
                if (declared is None or size > declared) and not hold.take(len(chunk)):
                    raise _busy()
                chunks.append(chunk)
    except TimeoutError:
        raise timed_out(f"Request body not received within {timeout_s:g} s.") from None
    except (web.RequestPayloadError, HttpProcessingError) as exc:
        # e.g. Content-Encoding: gzip on a body that isn't gzip: aiohttp fails while inflating it.
        raise invalid("invalid_payload", f"Malformed request body: {exc}") from None
    return b"".join(chunks)


def request_context(request: web.Request, route: str) -> RequestContext:
    query = request.query
    sent_at = parse_time(query.get("_")) if query.get("_") else None
    proxies = request.app[PROXIES]
    ip = client_ip(request.remote, request.headers.get("X-Forwarded-For"), proxies) if proxies else request.remote
    return RequestContext(
        now=datetime.now(UTC),
        ip=ip,
        site_url=f"{request.scheme}://{request.host}",
        route=route,
        query_token=query_key(request),
        query_sent_at=sent_at,
    )


def route_limits(settings: Settings, route: str) -> tuple[int, Limits]:
    """Body limit and decode limits of a route (the app keeps them per route in ``app[LIMITS]``)."""
    if route == "batch":
        body = settings.max_batch_body_bytes
        inflated = body
    else:
        body = settings.max_body_bytes
        inflated = INFLATE_FACTOR * body
    return body, Limits(inflated_bytes=inflated, max_event_bytes=settings.max_event_bytes)


async def check_key(app: web.Application, token: object) -> int:
    """The team of an api key; 401 for a key of the wrong shape or one no team has."""
    if reason := api_key_shape_error(token):
        raise key_refused(reason)
    # The registry judges the key by the clock now: revoked keys and keys past their grace are refused.
    team_id = await app[REGISTRY].resolve(str(token))
    if team_id is None:
        raise unauthorized(
            "invalid_api_key",
            "Project API key invalid (unknown, revoked, or past its grace after a rotation). "
            "You can find your project API key with `eventpipe teams list`.",
        )
    return team_id


def query_key(request: web.Request) -> str | None:
    """The api key of the query string: read on GET only, as PostHog's Django capture did (a POST's
    query key is ignored, by it and by the Rust capture alike); 401 when ``token`` and ``api_key`` differ."""
    return outside_token(request.query) if request.method == "GET" else None


async def decode(request: web.Request, route: str, body: bytes, limits: Limits) -> Prepared:
    """Body -> messages: inline when small, else in a decode worker after any outside key is checked."""
    content_type = request.headers.get("Content-Type", "")
    # The server leaves bodies as sent (server.SERVER_KWARGS): decode_request inflates a gzip
    # Content-Encoding by the body's bytes, so a header that lies costs nothing.
    encoding = request.headers.get("Content-Encoding", "")
    ctx = request_context(request, route)
    # The registry's dict read names the team already when the key is known, so the messages are
    # encoded with it; the key is still checked (and the registry caught up) afterwards.
    team_of = request.app[REGISTRY].team_id
    try:
        try:
            return prepare_inline(body, content_type, request.query, encoding, ctx, limits, team_of)
        except Escalate:
            pass
        if (token := outside_token(request_form(body, content_type, request.query))) is not None:
            await check_key(request.app, token)  # an unknown form key never reaches a worker
        query = dict(request.query)
        prepared: Prepared = await request.app[POOL].run(prepare, body, content_type, query, encoding, ctx, limits)
        return prepared
    except CaptureError:
        raise
    except Exception as exc:  # bad input must never become a 5xx
        log.info("unparseable capture request: %r", exc)
        raise invalid("invalid_payload", "Malformed request data.") from None


def _retrieved(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()  # so asyncio does not log "exception was never retrieved" for each message


async def publish(app: web.Application, messages: list[Message], historical: bool = False) -> None:
    """Send every message and wait for Kafka's acks (acks=all); a timeout is a retryable 503.

    ``historical``: a ``historical_migration`` batch, for the historical topic (docs/history.md)."""
    prod = app[PRODUCER]
    topic = app[HISTORICAL_TOPIC] if historical else app[RAW_TOPIC]
    batcher = app[HISTORICAL_BATCHER] if historical else app[BATCHER]
    deadlines = app[DEADLINES]  # EVENTPIPE_PRODUCE_TIMEOUT_S, one timer per 0.1 s of deadlines
    started = time.perf_counter()
    futures: list[asyncio.Future[object]] = []
    wait = deadlines.enter()
    try:
        try:
            if len(messages) < BATCHED_FROM:
                # A few messages: the producer's own accumulator, whose linger gathers the concurrent
                # single-event requests into batches better than handing each over at once would.
                # Each message's future is this request's own: awaited one after the other (the
                # producer resolves a batch's futures together, so this wakes once per batch).
                for key, value in messages:
                    futures.append(await prod.send(topic, value, key=key))
                for future in futures:
                    await future
            else:
                acks: list[asyncio.Future[None]] = []
                for start in range(0, len(messages), 1000):
                    if start:
                        await asyncio.sleep(0)  # a 10,000-event batch must not hold the loop for all its appends
                    acks += await batcher.add(prod, messages[start : start + 1000])
                await Batcher.all_acked(acks)  # the batches are shared: never await (cancel) them directly
        finally:
            in_time = deadlines.leave(wait)
    except BaseException as exc:
        for future in futures:
            future.add_done_callback(_retrieved)
        timed_out = isinstance(exc, asyncio.CancelledError) and deadlines.expired(wait, in_time)
        if not timed_out and not isinstance(exc, KafkaError):
            raise
        app[METRICS].errors.inc("server_error")
        log.warning("kafka did not acknowledge %d events: %r", len(messages), exc)
        raise unavailable("Transient error, please retry: the event queue did not acknowledge in time.") from None
    app[METRICS].produce_latency.observe(time.perf_counter() - started)


async def capture(request: web.Request) -> web.StreamResponse:
    route = request.path.strip("/")
    app = request.app
    metrics = app[METRICS]
    metrics.requests.inc(route)
    if request.method == "OPTIONS":
        return web.Response(status=200, headers=cors_headers(request))
    settings = app[SETTINGS]
    try:
        body_limit, limits = app[LIMITS][route]
        if (token := query_key(request)) is not None:
            await check_key(app, token)  # before the body is even read
        with server.Hold(app[BUDGET]) as hold:
            body = await read_body(request, body_limit, hold, settings.body_timeout_s)
            metrics.bytes.inc(route, len(body))
            prepared = await decode(request, route, body, limits)
            del body
            hold.resize(prepared.size)  # the body is gone; its messages are held until Kafka acks
            # Known when decoding (the registry's dict read, what check_key reads too), else resolved now.
            team_id = prepared.team_id if prepared.team_id is not None else await check_key(app, prepared.token)
            if prepared.messages:
                # Keyed team:distinct_id with the team inside: the processors need no registry.
                messages = prepared.messages
                if prepared.team_id != team_id:  # decoded by a worker, or the key was not known yet
                    messages = stamp_teams(messages, prepared.token, team_id)
                await publish(app, messages, prepared.historical)
        metrics.events.inc(route, len(prepared.messages))
    except CaptureError as err:
        metrics.errors.inc(err.code)
        return error_response(request, err)
    if request.query.get("beacon") == "1":
        return web.Response(status=204, headers=cors_headers(request))
    return accepted(request)


async def health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    try:
        async with asyncio.timeout(2):
            await request.app[PRODUCER].client.force_metadata_update()
    except (TimeoutError, KafkaError) as exc:
        return web.json_response({"status": "unavailable", "kafka": repr(exc)}, status=503)
    return web.json_response({"status": "ok"})


async def openapi(_request: web.Request) -> web.Response:
    return web.json_response(build_spec())


async def metrics_handler(request: web.Request) -> web.Response:
    conns = request.app.get(server.CONNECTIONS)
    figures = {} if conns is None else {
        "open_connections": len(conns), "refused": conns.refused, "header_timeouts": conns.header_timeouts
    }  # fmt: skip
    return web.Response(text=request.app[METRICS].render(**figures), content_type="text/plain")


async def _on_startup(app: web.Application) -> None:
    settings = app[SETTINGS]
    await ensure_topics(settings)
    app[REGISTRY] = RegistryReader(settings)
    await app[REGISTRY].start()
    app[PRODUCER] = producer(settings)
    await app[PRODUCER].start()


async def _start_pool(app: web.Application) -> None:
    await app[POOL].start()


async def _on_cleanup(app: web.Application) -> None:
    # Stop the producer first: it flushes what is in flight, so no acknowledged request is lost; the
    # batches still filling are handed to it before.
    await app[BATCHER].flush()
    await app[HISTORICAL_BATCHER].flush()
    if PRODUCER in app:
        await app[PRODUCER].stop()
    if REGISTRY in app:
        await app[REGISTRY].stop()
    await app[POOL].stop()


def build_app(
    settings: Settings,
    *,
    registry: RegistryReader | None = None,
    producer: AIOKafkaProducer | None = None,
) -> web.Application:
    """The gateway application; ``registry`` and ``producer`` given (tests, measurements) replace Kafka."""
    app = web.Application(client_max_size=settings.max_batch_body_bytes + 1, middlewares=[server.track_requests])
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[PROXIES] = parse_networks(settings.trusted_proxies)
    app[POOL] = DecodePool(settings.decode_workers)
    # The budget must fit the largest body a route accepts, or that body could never be read.
    app[BUDGET] = server.ByteBudget(max(settings.request_memory_bytes, 2 * settings.max_batch_body_bytes))
    app[RAW_TOPIC] = topics_for(settings).raw_events
    app[DEADLINES] = Deadlines(settings.produce_timeout_s)
    app[BATCHER] = Batcher(app[RAW_TOPIC])
    app[HISTORICAL_TOPIC] = topics_for(settings).historical_events
    app[HISTORICAL_BATCHER] = Batcher(app[HISTORICAL_TOPIC])
    app[LIMITS] = {route: route_limits(settings, route) for route in CAPTURE_ROUTES}
    for route in CAPTURE_ROUTES:
        for path in (f"/{route}", f"/{route}/"):
            for method in ("GET", "POST", "OPTIONS"):
                app.router.add_route(method, path, capture)
    app.router.add_get("/_health", health)
    app.router.add_get("/_ready", ready)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/openapi.json", openapi)
    if registry is not None and producer is not None:
        app[REGISTRY] = registry
        app[PRODUCER] = producer
    else:
        app.on_startup.append(_on_startup)
    app.on_startup.append(_start_pool)
    app.on_cleanup.append(_on_cleanup)
    return app


def serve(
    settings: Settings,
    *,
    registry: RegistryReader | None = None,
    producer: AIOKafkaProducer | None = None,
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = build_app(settings, registry=registry, producer=producer)
    # Requests allocate many short-lived objects: fewer young-generation collections, and nothing
    # imported at start-up is ever scanned again (measured: GC was 8-13% of the gateway's CPU).
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    limits = server.ServerLimits(max_connections=settings.max_connections, header_timeout_s=settings.header_timeout_s)
    log.info("capture gateway on http://%s:%d/capture/", settings.host, settings.port)
    # shutdown_timeout: deploy/ sizes the pods' grace period from it (tests/test_unit_deploy.py reads it here).
    asyncio.run(
        server.serve_forever(app, settings.host, settings.port, limits, shutdown_timeout=15, **server.SERVER_KWARGS)
    )
