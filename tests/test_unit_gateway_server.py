"""The gateway's server behaviour under slow, many and large clients, on a real socket with Kafka faked.

No broker: the registry and producer are in-memory fakes given to build_app. Each test polls with a
deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest
import ujson

from eventpipe.config import Settings, load
from gateway import app as gw
from gateway import server
from gateway.pool import DecodePool
from tests import hostile
from tests.fakes import FakeProducer

GOOD = "phc_good"


class FakeRegistry:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def team_id(self, api_key: str) -> int | None:
        return 1 if api_key == GOOD else None

    async def resolve(self, api_key: str) -> int | None:
        self.asked.append(api_key)
        return self.team_id(api_key)

    async def stop(self) -> None:
        pass


class Gateway:
    def __init__(self, running: server.Running, producer: FakeProducer, registry: FakeRegistry) -> None:
        self.running = running
        self.producer = producer
        self.registry = registry
        self.port = running.port

    async def request(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(raw)
            return await asyncio.wait_for(read_response(reader), 10)
        finally:
            writer.close()

    async def post(
        self, path: str, body: bytes, headers: dict[str, str] | None = None, method: str = "POST"
    ) -> tuple[int, dict[str, str], Any]:
        head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {"Content-Type": "application/json"}).items())
        raw = f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\nConnection: close\r\n{head}\r\n"
        status, resp_headers, payload = await self.request(raw.encode() + body)
        return status, resp_headers, ujson.loads(payload) if payload else None


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    length = int(headers.get("content-length", "0"))
    return status, headers, await reader.readexactly(length)


@asynccontextmanager
async def gateway(**overrides: Any) -> AsyncIterator[Gateway]:
    limits = server.ServerLimits(
        max_connections=overrides.pop("max_connections", 100), header_timeout_s=overrides.pop("header_timeout_s", 10)
    )
    settings = replace(Settings(), **overrides)
    producer, registry = FakeProducer(), FakeRegistry()
    app = gw.build_app(settings, registry=registry, producer=producer)  # type: ignore[arg-type]
    running = await server.start(app, "127.0.0.1", 0, limits, shutdown_timeout=1, **server.SERVER_KWARGS)
    try:
        yield Gateway(running, producer, registry)
    finally:
        await running.close()


async def until(predicate: Any) -> None:
    deadline = time.monotonic() + 10.0
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


EVENT = ujson.dumps({"api_key": GOOD, "event": "e", "distinct_id": "d"}).encode()


def test_accepts_and_produces() -> None:
    async def go() -> None:
        async with gateway() as g:
            status, _, body = await g.post("/capture/", EVENT)
            assert (status, body) == (200, {"status": 1})
            assert len(g.producer.sent) == 1

    asyncio.run(go())


def test_slow_headers_get_408_json() -> None:
    async def go() -> None:
        async with gateway(header_timeout_s=0.3) as g:
            status, headers, body = await g.request(b"POST /capture/ HTTP/1.1\r\nHost: t\r\n")
            assert status == 408
            assert ujson.loads(body)["code"] == "request_timeout"
            assert headers["connection"] == "close"

    asyncio.run(go())


def test_slow_body_gets_408_json() -> None:
    async def go() -> None:
        async with gateway(body_timeout_s=0.3) as g:
            head = b"POST /capture/ HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            head += b"Content-Length: 100\r\n\r\n"
            status, _, body = await g.request(head + b'{"api_key"')
            assert status == 408
            assert ujson.loads(body) == {
                "type": "validation_error", "code": "request_timeout",
                "detail": "Request body not received within 0.3 s.", "attr": None,
            }
            assert g.producer.sent == []

    asyncio.run(go())


def test_connections_past_the_cap_get_503_with_retry_after() -> None:
    async def go() -> None:
        async with gateway(max_connections=2) as g:
            idle = [await asyncio.open_connection("127.0.0.1", g.port) for _ in range(2)]
            await until(lambda: len(g.running.runner.server.connections) == 2)  # type: ignore[union-attr]
            reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
            writer.write(b"GET /_health HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers, body = await asyncio.wait_for(read_response(reader), 10)
            assert (status, headers["retry-after"]) == (503, "1")
            assert ujson.loads(body)["type"] == "server_error"
            writer.close()
            for _r, w in idle:
                w.close()
            # Once they are gone, the next client is served again.
            await until(lambda: len(g.running.runner.server.connections) == 0)  # type: ignore[union-attr]
            status, _, _ = await g.post("/capture/", EVENT)
            assert status == 200

    asyncio.run(go())


def test_byte_budget_spent_gives_503_with_retry_after_and_is_given_back() -> None:
    async def go() -> None:
        # max_batch_body_bytes 1000 -> a budget of 2000 bytes: two declared 1000-byte bodies hold it all.
        async with gateway(max_body_bytes=1000, max_batch_body_bytes=1000, request_memory_bytes=0) as g:
            head = b"POST /batch/ HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            slow = [await asyncio.open_connection("127.0.0.1", g.port) for _ in range(2)]
            for _r, w in slow:
                w.write(head + b"[")
            budget = g.running.runner.app[gw.BUDGET]
            await until(lambda: budget.used == 2000)
            status, headers, _body = await g.post("/capture/", EVENT)
            assert (status, headers.get("retry-after")) == (503, "1")
            for _r, w in slow:
                w.close()
            await until(lambda: budget.used == 0)
            assert (await g.post("/capture/", EVENT))[0] == 200

    asyncio.run(go())


def test_query_key_of_a_get_is_refused_before_the_body_is_read() -> None:
    async def go() -> None:
        async with gateway() as g:
            # Over the body limit: a 413 would mean the body was looked at first.
            path = f"/e/?token={hostile.UNKNOWN_KEY}"
            status, _, body = await g.post(path, b"x" * (3 * 1024 * 1024), method="GET")
            assert (status, body["code"]) == (401, "invalid_api_key")
            assert g.registry.asked == [hostile.UNKNOWN_KEY]

    asyncio.run(go())


def test_query_key_of_a_post_is_ignored_like_posthog() -> None:
    async def go() -> None:
        async with gateway() as g:
            status, _, body = await g.post(f"/e/?token={hostile.UNKNOWN_KEY}&api_key=phc_other", EVENT)
            assert (status, body) == (200, {"status": 1})
            assert hostile.UNKNOWN_KEY not in g.registry.asked

    asyncio.run(go())


FORM_B64 = b"data=" + base64.b64encode(EVENT).replace(b"+", b"%2B")


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        pytest.param("/e/?compression=gzip-js", FORM_B64, hostile.FORM, id="gzip-js-hint-on-form-base64"),
        pytest.param("/e/?compression=lz64", EVENT, hostile.JSON, id="lz64-hint-on-json"),
        pytest.param("/e/", FORM_B64, hostile.JSON, id="json-type-on-form"),
        pytest.param("/e/", gzip.compress(EVENT), hostile.TEXT, id="text-plain-on-gzip"),
        pytest.param("/e/", EVENT, {**hostile.JSON, "Content-Encoding": "gzip"}, id="content-encoding-gzip-on-json"),
        pytest.param("/e/", gzip.compress(EVENT), {**hostile.JSON, "Content-Encoding": "gzip"}, id="content-encoding"),
        pytest.param("/e/", gzip.compress(FORM_B64), {**hostile.FORM, "Content-Encoding": "gzip"}, id="gzip-form"),
        pytest.param("/e/", EVENT, {**hostile.JSON, "Content-Encoding": "br"}, id="content-encoding-br-on-json"),
    ],
)
def test_lying_hints_are_accepted_through_the_server(path: str, body: bytes, headers: dict[str, str]) -> None:
    async def go() -> None:
        async with gateway() as g:
            status, _, reply = await g.post(path, body, headers)
            assert (status, reply) == (200, {"status": 1})
            assert len(g.producer.sent) == 1

    asyncio.run(go())


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "code"),
    [
        pytest.param("POST", "/batch/", b'[{"event": "e", "distinct_id": "d", "token": "phc_good"},'
                     b' {"event": "e", "distinct_id": "d", "token": "phc_other"}]', hostile.JSON, "multiple_tokens",
                     id="two-event-keys"),
        pytest.param("GET", "/e/?token=phc_good", b'{"event": "e", "distinct_id": "d", "api_key": "phc_other"}',
                     hostile.JSON, "multiple_tokens", id="get-query-key-vs-payload-key"),
        pytest.param("POST", "/e/", b"api_key=phc_good&token=phc_other&data=e30%3D", hostile.FORM,
                     "multiple_tokens", id="two-form-keys"),
        pytest.param("POST", "/e/", b"\x1f\x8b\x08 not gzip", hostile.TEXT, "invalid_payload", id="bad-gzip"),
        pytest.param("POST", "/e/?compression=lz64", b"@@@ not anything @@@", hostile.JSON, "invalid_payload",
                     id="garbage-lz64-hint"),
        pytest.param("POST", "/e/", b"data=bm90IGpzb24%3D", hostile.FORM, "invalid_payload", id="form-base64-not-json"),
    ],
)
def test_refused_requests_get_a_4xx_json_error_and_nothing_is_produced(
    method: str, path: str, body: bytes, headers: dict[str, str], code: str
) -> None:
    async def go() -> None:
        async with gateway() as g:
            status, _, reply = await g.post(path, body, headers, method=method)
            assert 400 <= status < 500 and reply["code"] == code, reply
            assert set(reply) == {"type", "code", "detail", "attr"}
            assert g.producer.sent == []

    asyncio.run(go())


def test_form_key_is_refused_before_a_worker_inflates_the_data() -> None:
    async def go() -> None:
        async with gateway() as g:
            data = base64.b64encode(hostile.tiny_values_bomb(hostile.UNKNOWN_KEY, 30_000_000)).decode()
            body = f"api_key={hostile.UNKNOWN_KEY}&data={data.replace('+', '%2B')}".encode()
            status, _, reply = await g.post("/e/", body, hostile.FORM)
            assert (status, reply["code"]) == (401, "invalid_api_key")
            assert g.running.runner.app[gw.POOL].busy == 0

    asyncio.run(go())


def test_content_encoding_bomb_is_413() -> None:
    async def go() -> None:
        async with gateway() as g:
            bomb = hostile.tiny_values_bomb(GOOD, 50_000_000)
            status, _, body = await g.post("/e/", bomb, {**hostile.JSON, "Content-Encoding": "gzip"})
            assert (status, body["code"]) == (413, "payload_too_large")

    asyncio.run(go())


def test_large_batches_are_decoded_by_a_worker_and_produced() -> None:
    async def go() -> None:
        async with gateway() as g:
            events = [hostile.event(i, properties={"pad": "x" * 200}) for i in range(3000)]
            body = gzip.compress(hostile.batch(GOOD, events))
            status, _, reply = await g.post("/batch/?compression=gzip-js", body, hostile.TEXT)
            assert (status, reply) == (200, {"status": 1})
            produced = [ujson.loads(v)["distinct_id"] for _t, v, _k in g.producer.sent]
            assert produced == [f"user-{i}" for i in range(3000)]

    asyncio.run(go())


def test_a_retry_produces_the_same_uuids() -> None:
    async def go() -> None:
        async with gateway() as g:
            body = hostile.batch(GOOD, [hostile.event(i, timestamp="2024-06-01T12:00:00Z") for i in range(5)])
            for _ in range(2):
                assert (await g.post("/batch/", body))[0] == 200
            uuids = [ujson.loads(v)["uuid"] for _t, v, _k in g.producer.sent]
            assert len(uuids) == 10 and uuids[:5] == uuids[5:] and len(set(uuids)) == 5

    asyncio.run(go())


def test_an_event_too_large_for_kafka_is_413_before_producing() -> None:
    async def go() -> None:
        async with gateway() as g:
            body = hostile.batch(GOOD, [hostile.event(0), hostile.event(1, properties={"s": "x" * 1_100_000})])
            status, _, reply = await g.post("/batch/", body)
            assert (status, reply["code"]) == (413, "payload_too_large")
            assert "1000000 bytes" in reply["detail"]
            assert g.producer.sent == []

    asyncio.run(go())


@pytest.mark.parametrize(
    ("origin", "allow_origin", "credentials"),
    [("https://app.example", "https://app.example", "true"), (None, "*", None)],
)
def test_cors_never_pairs_a_wildcard_with_credentials(
    origin: str | None, allow_origin: str, credentials: str | None
) -> None:
    async def go() -> None:
        async with gateway() as g:
            for method, extra in (("OPTIONS", ""), ("POST", "Content-Type: application/json\r\n")):
                origin_line = f"Origin: {origin}\r\n" if origin else ""
                body = EVENT if method == "POST" else b""
                raw = (f"{method} /e/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{origin_line}{extra}"
                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body
                status, headers, _ = await g.request(raw)
                assert status == 200
                assert headers["access-control-allow-origin"] == allow_origin
                assert headers.get("access-control-allow-credentials") == credentials

    asyncio.run(go())


def test_decode_pool_sheds_load_past_its_queue_and_survives_a_dead_worker() -> None:
    async def go() -> None:
        pool = DecodePool(workers=1, max_waiting=0)
        await pool.start()
        try:
            busy = asyncio.ensure_future(pool.run(time.sleep, 1.0))
            await until(lambda: pool.busy == 1)
            with pytest.raises(gw.CaptureError) as info:
                await pool.run(time.sleep, 0)
            assert (info.value.status, info.value.retry_after) == (503, 1)
            await busy
            with pytest.raises(gw.CaptureError) as info:
                await pool.run(os._exit, 1)  # the worker dies mid-task
            assert info.value.status == 413
            assert await pool.run(abs, -3) == 3  # a new pool took its place
        finally:
            await pool.stop()

    asyncio.run(go())


def test_settings_read_the_new_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "MAX_EVENT_BYTES": "2000000", "MAX_CONNECTIONS": "50", "HEADER_TIMEOUT_S": "2.5", "BODY_TIMEOUT_S": "7",
        "DECODE_WORKERS": "3", "REQUEST_MEMORY_BYTES": "1234567",
    }
    for name, value in values.items():
        monkeypatch.setenv(f"EVENTPIPE_{name}", value)
    s = load()
    assert (s.max_event_bytes, s.max_connections, s.header_timeout_s, s.body_timeout_s, s.decode_workers,
            s.request_memory_bytes) == (2_000_000, 50, 2.5, 7.0, 3, 1_234_567)
    d = Settings()
    assert (d.max_event_bytes, d.max_connections, d.header_timeout_s, d.body_timeout_s, d.decode_workers,
            d.request_memory_bytes) == (1_000_000, 1000, 10.0, 60.0, 1, 64 * 1024 * 1024)
