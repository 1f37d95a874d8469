"""The gateway's HTTP layer with Kafka replaced by fakes (pure unit tests: no broker)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from aiokafka.errors import KafkaTimeoutError

from eventpipe.config import Settings
from eventpipe.contract import RawEvent
from gateway import app as gw
from tests.fakes import FakeProducer


class FakeRegistry:
    def team_id(self, api_key: str) -> int | None:
        return 1 if api_key == "phc_good" else None

    async def resolve(self, api_key: str) -> int | None:
        return self.team_id(api_key)


async def _post(
    producer: FakeProducer,
    body: dict[str, Any],
    path: str = "/capture/",
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> tuple[int, Any]:
    status, _headers, payload = await _post_full(producer, body, path, headers, method)
    return status, payload


async def _post_full(
    producer: FakeProducer,
    body: dict[str, Any],
    path: str = "/capture/",
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> tuple[int, dict[str, str], Any]:
    settings = replace(Settings(), produce_timeout_s=0.2)
    app = gw.build_app(settings)
    app.on_startup.clear()
    app.on_cleanup.clear()
    app[gw.PRODUCER] = producer  # type: ignore[misc]
    app[gw.REGISTRY] = FakeRegistry()  # type: ignore[misc]
    async with TestClient(TestServer(app)) as client:
        resp = await client.request(method, path, json=body, headers=headers)
        return resp.status, dict(resp.headers), await resp.json()


EVENT = {"api_key": "phc_good", "event": "e", "distinct_id": "d"}


def test_answers_only_after_kafka_acknowledged() -> None:
    producer = FakeProducer(ack=True)
    assert asyncio.run(_post(producer, EVENT)) == (200, {"status": 1})
    assert len(producer.sent) == 1
    topic, value, key = producer.sent[0]
    assert topic == "eventpipe_events_raw" and key == b"1:d"  # team_id:distinct_id, the team resolved here
    assert RawEvent.from_json(value).team_id == 1


def test_broker_that_does_not_ack_gives_retryable_503() -> None:
    status, body = asyncio.run(_post(FakeProducer(ack=False), EVENT))
    assert status == 503
    assert body["type"] == "server_error" and body["code"] == "server_error"


def test_unknown_key_is_401_and_nothing_is_sent() -> None:
    producer = FakeProducer(ack=True)
    status, body = asyncio.run(_post(producer, {**EVENT, "api_key": "phc_other"}))
    assert status == 401 and body["code"] == "invalid_api_key"
    assert producer.sent == []


def test_batch_is_all_or_nothing() -> None:
    producer = FakeProducer(ack=True)
    batch = {"api_key": "phc_good", "batch": [{"event": "e", "distinct_id": "a"}, {"event": "e", "uuid": "bad"}]}
    status, _ = asyncio.run(_post(producer, batch, "/batch/"))
    assert status == 400
    assert producer.sent == []


def test_one_failed_ack_of_a_batch_is_a_retryable_503() -> None:
    batch = {"api_key": "phc_good", "batch": [{"event": "e", "distinct_id": str(i)} for i in range(5)]}
    status, body = asyncio.run(_post(FakeProducer(ack=True, fail={3: KafkaTimeoutError()}), batch, "/batch/"))
    assert status == 503 and body["code"] == "server_error"


def test_acks_that_never_come_time_out_once_and_later_requests_still_succeed() -> None:
    async def main() -> tuple[int, int]:
        stuck = await _post(FakeProducer(ack=False), EVENT)
        fine = await _post(FakeProducer(ack=True), EVENT)
        return stuck[0], fine[0]

    assert asyncio.run(main()) == (503, 200)


def test_accepted_answer_and_cors_headers() -> None:
    status, headers, body = asyncio.run(_post_full(FakeProducer(ack=True), EVENT))
    assert (status, body) == (200, {"status": 1})
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["Access-Control-Allow-Origin"] == "*" and "Access-Control-Allow-Credentials" not in headers
    status, headers, _ = asyncio.run(_post_full(FakeProducer(ack=True), EVENT, headers={"Origin": "https://a.example"}))
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "https://a.example"
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert headers["Content-Type"] == "application/json; charset=utf-8"


def test_a_personal_key_is_refused_in_the_body_and_in_the_query() -> None:
    producer = FakeProducer(ack=True)
    personal = "phx_" + "a" * 43
    status, body = asyncio.run(_post(producer, {**EVENT, "api_key": personal}))
    assert status == 401 and body["code"] == "personal_api_key"
    # A GET's query key is checked before the body; a POST's is not read at all (PostHog's captures ignore
    # it), so the body's key decides.
    status, body = asyncio.run(_post(producer, EVENT, f"/capture/?api_key={personal}", method="GET"))
    assert status == 401 and body["code"] == "personal_api_key" and "project API key (phc_" in body["detail"]
    assert producer.sent == []
    assert asyncio.run(_post(producer, EVENT, f"/capture/?api_key={personal}")) == (200, {"status": 1})
