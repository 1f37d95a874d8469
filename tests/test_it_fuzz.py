"""Arbitrary bytes and JSON at every capture route: never a 5xx, never a crash, errors are JSON."""

from __future__ import annotations

import urllib.parse

import ujson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.openapi import CAPTURE_ROUTES
from tests.stack import Stack

ROUTES = st.sampled_from([f"/{r}{s}" for r in CAPTURE_ROUTES for s in ("", "/")])
CONTENT_TYPES = st.sampled_from(
    ["application/json", "text/plain", "", "application/x-www-form-urlencoded", "multipart/form-data"]
)
QUERIES = st.dictionaries(
    st.sampled_from(["compression", "data", "_", "ver", "beacon", "ip", "token"]),
    st.one_of(
        st.sampled_from(["gzip", "gzip-js", "lz64", "base64", "b64", "1", "1700000000000"]), st.text(max_size=20)
    ),
    max_size=3,
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
EVENTISH = st.fixed_dictionaries(
    {},
    optional={
        "api_key": st.one_of(st.text(max_size=70), st.integers(), st.none()),
        "event": st.one_of(st.text(max_size=20), st.integers(), st.none()),
        "distinct_id": JSON,
        "properties": JSON,
        "timestamp": st.one_of(st.text(max_size=40), st.integers(), st.floats(allow_nan=False)),
        "uuid": st.one_of(st.uuids().map(str), st.text(max_size=40)),
        "type": st.sampled_from(["alias", "identify", "group", "page", "screen", "track", "capture", "x"]),
        "batch": st.lists(JSON, max_size=3),
        "$set": JSON,
        "offset": st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=5)),
        "sent_at": st.text(max_size=30),
    },
)
BODIES = st.one_of(st.binary(max_size=300), JSON.map(lambda v: ujson.dumps(v).encode()),
                   EVENTISH.map(lambda v: ujson.dumps(v).encode()))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=ROUTES, body=BODIES, content_type=CONTENT_TYPES, query=QUERIES,
       method=st.sampled_from(["GET", "POST"]))
def test_no_input_makes_a_5xx(gateway: Stack, route: str, body: bytes, content_type: str,
                              query: dict[str, str], method: str) -> None:
    path = route + ("?" + urllib.parse.urlencode(query) if query else "")
    status, reply = gateway.post(path, body, headers={"Content-Type": content_type}, method=method)
    assert status < 500, (status, reply)
    if status >= 400:
        assert set(reply) == {"type", "code", "detail", "attr"}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(event=EVENTISH)
def test_valid_key_with_arbitrary_event_fields(gateway: Stack, api_key: str, event: dict[str, object]) -> None:
    body = ujson.dumps({**event, "api_key": api_key}).encode()
    status, reply = gateway.post("/capture/", body, headers={"Content-Type": "application/json"})
    assert status < 500, (status, reply)
    assert status in (200, 400, 413), (status, reply)


def test_gateway_still_serves_after_fuzzing(gateway: Stack, api_key: str) -> None:
    status, reply = gateway.post("/capture/", {"api_key": api_key, "event": "ok", "distinct_id": "after-fuzz"})
    assert (status, reply) == (200, {"status": 1})
