"""historical_migration batches reach the historical topic, by both of the gateway's produce paths."""

from __future__ import annotations

import asyncio

import pytest

from tests.fakes import FakeProducer
from tests.test_unit_gateway_app import _post


@pytest.mark.parametrize("events", [1, 40])  # the producer's send, and the gateway's own batches (16+)
@pytest.mark.parametrize(("flag", "topic"), [(True, "eventpipe_events_historical"), (False, "eventpipe_events_raw")])
def test_a_historical_migration_batch_goes_to_the_historical_topic(events: int, flag: bool, topic: str) -> None:
    producer = FakeProducer(ack=True)
    body = {
        "api_key": "phc_good",
        "historical_migration": flag,
        "batch": [{"event": "e", "distinct_id": f"d{i}", "timestamp": "2024-01-01T00:00:00Z"} for i in range(events)],
    }
    assert asyncio.run(_post(producer, body, "/batch/")) == (200, {"status": 1})
    assert [t for t, _value, _key in producer.sent] == [topic] * events
    assert sorted(key for _t, _value, key in producer.sent) == sorted(f"1:d{i}".encode() for i in range(events))
