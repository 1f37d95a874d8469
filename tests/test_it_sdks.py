"""The unmodified official SDKs, pointed at the gateway, deliver their events to ClickHouse (real Kafka).

posthog (PyPI) posts ``{"api_key", "batch": [...], "sent_at"}`` to ``/batch/`` (gzipped with
``Content-Encoding: gzip`` when ``gzip=True``); mixpanel (PyPI) posts form bodies
``data=<json>&verbose=1&ip=0`` to ``/track`` and ``/engage``. SDK failures are surfaced: posthog's
background consumer reports them to ``on_error`` (and ``debug=True`` re-raises from the public
methods), mixpanel raises ``MixpanelException``.

One stack per module and store; each test uses its own distinct ids, so they never see each other's rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ujson
from mixpanel import Consumer, Mixpanel
from posthog import Posthog

from tests.stack import Stack, poll


@pytest.fixture(scope="module")
def sdk_stack(kafka: str, clickhouse_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(Path(tmp_path_factory.mktemp("sdks"))) as s:
        yield s


@pytest.fixture(scope="module")
def api_key(sdk_stack: Stack) -> str:
    return sdk_stack.create_team("sdks")


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _events_of(stack: Stack, distinct_ids: list[str], expected: int) -> list[dict[str, Any]]:
    quoted = ", ".join(f"'{d}'" for d in distinct_ids)
    query = f"SELECT event, distinct_id, properties FROM events WHERE distinct_id IN ({quoted}) ORDER BY event"

    def fetch() -> list[dict[str, Any]] | None:
        rows = stack.sql(query)
        return rows if len(rows) >= expected else None

    rows = poll(fetch, 30, what=f"{expected} events of {distinct_ids}")
    for row in rows:
        row["properties"] = ujson.loads(row["properties"])
    return rows


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_posthog_sdk_delivers(sdk_stack: Stack, api_key: str, gzip: bool) -> None:
    user = _unique(f"ph-{'gz' if gzip else 'plain'}-user")
    new_id = _unique("ph-alias")
    company = _unique("acme")
    errors: list[tuple[Exception, list[Any]]] = []

    client = Posthog(
        api_key,
        host=sdk_stack.url,
        gzip=gzip,
        debug=True,  # public methods re-raise instead of logging
        on_error=lambda exc, batch: errors.append((exc, batch)),
        max_retries=0,  # a refused batch is reported at once, not after backoff
        flush_at=100,
        timeout=15,
    )
    try:
        client.capture("ph_signed_up", distinct_id=user, properties={"plan": "pro", "seats": 3})
        client.set(distinct_id=user, properties={"email": f"{user}@example.com"})
        client.alias(previous_id=user, distinct_id=new_id)
        client.group_identify("company", company, {"name": "Acme"}, distinct_id=user)
        client.flush()
    finally:
        client.shutdown()
    assert not errors, f"posthog SDK upload failed: {errors[0][0]!r}"

    rows = _events_of(sdk_stack, [user, new_id], 4)
    assert sorted((r["event"], r["distinct_id"]) for r in rows) == [
        ("$create_alias", user),
        ("$groupidentify", user),
        ("$set", user),
        ("ph_signed_up", user),
    ]
    props = {r["event"]: r["properties"] for r in rows}
    assert props["ph_signed_up"]["plan"] == "pro"
    assert props["ph_signed_up"]["seats"] == 3
    assert props["ph_signed_up"]["$lib"] == "posthog-python"
    assert props["$set"]["$set"] == {"email": f"{user}@example.com"}
    assert props["$create_alias"]["alias"] == new_id
    assert props["$groupidentify"]["$group_type"] == "company"
    assert props["$groupidentify"]["$group_key"] == company
    assert props["$groupidentify"]["$group_set"] == {"name": "Acme"}


def _mixpanel(stack: Stack, token: str) -> Mixpanel:
    # mixpanel 5.x has no use_ssl switch: the endpoint URLs are given whole (plain http to the gateway).
    consumer = Consumer(
        events_url=f"{stack.url}/track",
        people_url=f"{stack.url}/engage",
        request_timeout=15,
        retry_limit=0,
    )
    return Mixpanel(token, consumer=consumer)


def test_mixpanel_track_delivers(sdk_stack: Stack, api_key: str) -> None:
    user = _unique("mp-track-user")
    # Consumer.send raises MixpanelException on a transport error, a non-JSON answer or status != 1.
    _mixpanel(sdk_stack, api_key).track(user, "mp_purchase", {"item": "book", "amount": 42})

    [row] = _events_of(sdk_stack, [user], 1)
    assert (row["event"], row["distinct_id"]) == ("mp_purchase", user)
    assert row["properties"]["item"] == "book"
    assert row["properties"]["amount"] == 42
    assert row["properties"]["mp_lib"] == "python"


def test_mixpanel_people_set_becomes_identify(sdk_stack: Stack, api_key: str) -> None:
    user = _unique("mp-people-user")
    _mixpanel(sdk_stack, api_key).people_set(user, {"plan": "gold", "$email": f"{user}@example.com"})

    [row] = _events_of(sdk_stack, [user], 1)
    assert (row["event"], row["distinct_id"]) == ("$identify", user)
    assert row["properties"]["$set"] == {"plan": "gold", "$email": f"{user}@example.com"}
