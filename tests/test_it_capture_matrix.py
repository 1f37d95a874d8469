"""Every route × encoding × shape the gateway accepts, and every error code, against real Kafka.

The gateway runs as a real process; accepted events are read back from the raw-events topic.
"""

from __future__ import annotations

import base64
import gzip
import itertools
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import ujson
from lzstring import LZString

from gateway.openapi import CAPTURE_ROUTES
from tests.stack import Stack, poll

Request = tuple[str, dict[str, str], dict[str, str], bytes]  # method, query, headers, body
Encoder = Callable[[str], Request]

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# posthog-js 1.78's form base64 under ?compression=gzip-js, and the other lies of issue 13 item 2.
LIES: dict[str, Encoder] = {
    "gzip-js-query-on-form-base64": lambda t: (
        "POST", {"compression": "gzip-js"}, FORM, urllib.parse.urlencode({"data": b64(t)}).encode()),
    "gzip-js-field-on-form-base64": lambda t: (
        "POST", {}, FORM, urllib.parse.urlencode({"data": b64(t), "compression": "gzip-js"}).encode()),
    "lz64-on-json": lambda t: ("POST", {"compression": "lz64"}, {"Content-Type": "application/json"}, t.encode()),
    "base64-on-lz64": lambda t: ("POST", {"compression": "base64"}, {"Content-Type": "text/plain"},
                                 LZString().compressToBase64(t).encode()),
    "lz64-without-hint": lambda t: ("POST", {}, {"Content-Type": "text/plain"},
                                    LZString().compressToBase64(t).encode()),
    "json-type-on-form": lambda t: ("POST", {}, {"Content-Type": "application/json"},
                                    urllib.parse.urlencode({"data": b64(t)}).encode()),
    "form-type-on-gzip": lambda t: ("POST", {}, FORM, gzip.compress(t.encode())),
    "form-type-on-base64": lambda t: ("POST", {}, FORM, b64(t).encode()),
    "content-encoding-gzip-on-json": lambda t: (
        "POST", {}, {"Content-Encoding": "gzip", "Content-Type": "application/json"}, t.encode()),
    "content-encoding-gzip-on-form": lambda t: ("POST", {}, {"Content-Encoding": "gzip", **FORM},
                                                gzip.compress(urllib.parse.urlencode({"data": b64(t)}).encode())),
}

ENCODINGS: dict[str, Encoder] = {
    "json": lambda t: ("POST", {}, {"Content-Type": "application/json"}, t.encode()),
    "text-plain": lambda t: ("POST", {}, {"Content-Type": "text/plain"}, t.encode()),
    "no-content-type": lambda t: ("POST", {}, {"Content-Type": ""}, t.encode()),
    "form-json": lambda t: ("POST", {}, FORM, urllib.parse.urlencode({"data": t}).encode()),
    "form-base64": lambda t: ("POST", {}, FORM, urllib.parse.urlencode({"data": b64(t)}).encode()),
    # Browsers' form encoding turns '+' into ' ' when the sender forgot to escape it.
    "form-base64-spaces": lambda t: ("POST", {}, FORM, ("data=" + b64(t).replace("+", " ")).encode()),
    "form-compression-field": lambda t: (
        "POST", {}, FORM, urllib.parse.urlencode({"data": b64(t), "compression": "base64"}).encode()),
    "get-data": lambda t: ("GET", {"data": t}, {}, b""),
    "get-data-base64": lambda t: ("GET", {"data": b64(t)}, {}, b""),
    "get-data-wins-over-body": lambda t: ("GET", {"data": t}, {"Content-Type": "application/json"}, b"{bad"),
    "gzip-js-query": lambda t: ("POST", {"compression": "gzip-js"}, {"Content-Type": "text/plain"},
                                gzip.compress(t.encode())),
    "gzip-content-encoding": lambda t: ("POST", {}, {"Content-Encoding": "gzip", "Content-Type": "application/json"},
                                        gzip.compress(t.encode())),
    "gzip-magic-no-hint": lambda t: ("POST", {}, {"Content-Type": "text/plain"}, gzip.compress(t.encode())),
    "gzip-magic-wrong-hint": lambda t: ("POST", {"compression": "base64"}, {}, gzip.compress(t.encode())),
    "lz64-query-form": lambda t: ("POST", {"compression": "lz64"}, FORM,
                                  urllib.parse.urlencode({"data": LZString().compressToBase64(t)}).encode()),
    "lz-string-form-field": lambda t: ("POST", {}, FORM, urllib.parse.urlencode(
        {"data": LZString().compressToBase64(t), "compression": "lz64"}).encode()),
    "base64-query": lambda t: ("POST", {"compression": "base64"}, {"Content-Type": "text/plain"}, b64(t).encode()),
    # Hints that lie (docs/capture.md, "Encodings"): the bytes decide.
    **{f"lie-{name}": encode for name, encode in LIES.items()},
}


def shape(kind: str, api_key: str, distinct_id: str) -> str:
    event = {"event": f"ev-{kind}", "properties": {"distinct_id": distinct_id, "n": 1}}
    if kind == "single":
        return ujson.dumps({**event, "api_key": api_key})
    if kind == "batch":
        return ujson.dumps({"api_key": api_key, "batch": [event]})
    return ujson.dumps([{**event, "token": api_key}])


SHAPES = ("single", "batch", "list")


def send(stack: Stack, route: str, req: Request) -> tuple[int, Any]:
    method, query, headers, body = req
    path = route + ("?" + urllib.parse.urlencode(query) if query else "")
    return stack.post(path, body, headers=headers or {"Content-Type": ""}, method=method)


def test_every_route_encoding_and_shape_reaches_kafka(gateway: Stack, api_key: str) -> None:
    expected: dict[str, str] = {}
    failures = []
    cases = itertools.product(CAPTURE_ROUTES, ("", "/"), ENCODINGS.items(), SHAPES)
    for route, slash, (enc_name, encode), kind in cases:
        distinct_id = f"{route}{slash}|{enc_name}|{kind}|{uuid.uuid4().hex[:6]}"
        status, body = send(gateway, f"/{route}{slash}", encode(shape(kind, api_key, distinct_id)))
        if (status, body) != (200, {"status": 1}):
            failures.append((route + slash, enc_name, kind, status, body))
        expected[distinct_id] = f"ev-{kind}"
    assert not failures, failures[:10]
    events = gateway.raw_events(len(expected))
    got = {e["distinct_id"]: e for e in events}
    missing = set(expected) - set(got)
    assert not missing, sorted(missing)[:10]
    for distinct_id, name in expected.items():
        raw = got[distinct_id]
        assert raw["event"] == name
        assert raw["token"] == api_key
        assert raw["_key"] == f"{raw['team_id']}:{distinct_id}"  # the gateway resolved the key to its team
        assert isinstance(raw["team_id"], int) and raw["team_id"] > 0
        assert raw["data"]["properties"]["n"] == 1
    assert len(events) == len(expected)  # nothing extra, nothing twice


def test_cors_preflight_and_headers(gateway: Stack) -> None:
    import urllib.request

    for route in CAPTURE_ROUTES:
        req = urllib.request.Request(
            f"{gateway.url}/{route}/",
            method="OPTIONS",
            headers={"Origin": "https://app.example", "Access-Control-Request-Headers": "content-type, x-custom"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
            assert resp.headers["Access-Control-Allow-Credentials"] == "true"
            assert "POST" in resp.headers["Access-Control-Allow-Methods"]
            assert resp.headers["Access-Control-Allow-Headers"] == "content-type, x-custom"


def test_beacon_answers_204(gateway: Stack, api_key: str) -> None:
    status, body = gateway.post("/e/?beacon=1", shape("single", api_key, "beacon-user"))
    assert status == 204 and body is None


ERRORS: list[tuple[str, str, bytes, dict[str, str], int, str]] = [
    # (name, path, body, headers, status, code)
    ("invalid-json", "/capture/", b"{nope", {}, 400, "invalid_payload"),
    ("no-data", "/capture/", b"", {}, 400, "no_data"),
    ("form-without-data", "/capture/", b"foo=bar", FORM, 400, "no_data"),
    ("empty-batch", "/batch/", b'{"api_key": "KEY", "batch": []}', {}, 400, "invalid_payload"),
    ("null-item", "/batch/", b'{"api_key": "KEY", "batch": [null]}', {}, 400, "invalid_payload"),
    ("scalar-payload", "/capture/", b"42", {}, 400, "invalid_payload"),
    ("bad-uuid", "/capture/", b'{"api_key": "KEY", "event": "e", "distinct_id": "d", "uuid": "nope"}', {}, 400,
     "invalid_payload"),
    ("empty-distinct-id", "/capture/", b'{"api_key": "KEY", "event": "e", "distinct_id": "  "}', {}, 400,
     "invalid_payload"),
    ("missing-distinct-id", "/capture/", b'{"api_key": "KEY", "event": "e"}', {}, 400, "invalid_payload"),
    ("missing-event", "/capture/", b'{"api_key": "KEY", "distinct_id": "d"}', {}, 400, "invalid_payload"),
    ("bad-gzip", "/capture/?compression=gzip", b"\x1f\x8b\x08garbage", {}, 400, "invalid_payload"),
    ("missing-key", "/capture/", b'{"event": "e", "distinct_id": "d"}', {}, 401, "missing_api_key"),
    ("malformed-key", "/capture/", b'{"api_key": "has space", "event": "e", "distinct_id": "d"}', {}, 401,
     "invalid_api_key"),
    ("too-long-key", "/capture/", ('{"api_key": "' + "k" * 65 + '", "event": "e", "distinct_id": "d"}').encode(), {},
     401, "invalid_api_key"),
    ("unknown-key", "/capture/", b'{"api_key": "phc_unknown", "event": "e", "distinct_id": "d"}', {}, 401,
     "invalid_api_key"),
    ("two-keys", "/batch/", b'[{"api_key": "KEY", "event": "e", "distinct_id": "d"},'
     b' {"api_key": "OTHER", "event": "e", "distinct_id": "d"}]', {}, 401, "multiple_tokens"),
    ("form-key-vs-payload-key", "/e/", b"api_key=KEY&data=" + base64.b64encode(
        b'{"event": "e", "distinct_id": "d", "token": "OTHER"}').replace(b"=", b"%3D"), FORM, 401, "multiple_tokens"),
    ("garbage-under-gzip-js", "/e/?compression=gzip-js", b"neither gzip nor json", {}, 400, "invalid_payload"),
    ("form-base64-not-json", "/e/", b"data=" + base64.b64encode(b"not json at all"), FORM, 400, "invalid_payload"),
    ("body-too-large", "/capture/", b'{"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}', {}, 413, "payload_too_large"),
    ("content-encoding-gzip-on-garbage", "/capture/", b"neither gzip nor json", {"Content-Encoding": "gzip"}, 400,
     "invalid_payload"),
    ("gzip-bomb", "/capture/", gzip.compress(b" " * (11 * 1024 * 1024)), {}, 413, "payload_too_large"),
]


@pytest.mark.parametrize(("name", "path", "body", "headers", "status", "code"), ERRORS, ids=[e[0] for e in ERRORS])
def test_error_codes(gateway: Stack, api_key: str, name: str, path: str, body: bytes, headers: dict[str, str],
                     status: int, code: str) -> None:
    got_status, got = gateway.post(path, body.replace(b"KEY", api_key.encode()), headers=headers or
                                   {"Content-Type": "application/json"})
    assert got_status == status, got
    assert got["code"] == code
    assert set(got) == {"type", "code", "detail", "attr"}
    assert got["type"] == ("authentication_error" if status == 401 else "validation_error")


def test_metrics_and_health(gateway: Stack) -> None:
    import urllib.request

    with urllib.request.urlopen(gateway.url + "/_health", timeout=5) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(gateway.url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for name in ("eventpipe_gateway_requests_total", "eventpipe_gateway_events_total",
                 "eventpipe_gateway_errors_total", "eventpipe_gateway_produce_seconds_bucket"):
        assert name in text


def _event(distinct_id: str, **extra: Any) -> dict[str, Any]:
    return {"event": "stored-check", "distinct_id": distinct_id, "properties": {"n": 1}, **extra}


def _form_b64(payload: Any, **fields: str) -> bytes:
    return urllib.parse.urlencode({"data": b64(ujson.dumps(payload)), **fields}).encode()


def test_lying_hints_and_key_precedence_are_stored_in_clickhouse(stack: Stack) -> None:
    """Through the whole pipeline: each lying hint stored once, each key rule stored under the team it
    names, and each refused request (several different keys) stored nowhere."""
    a, b = stack.team("decode-a"), stack.team("decode-b")
    cases: list[tuple[str, Request, int | None]] = []  # (distinct id, request, team it must be stored under)
    for name, encode in LIES.items():
        cases.append((f"lie-{name}", encode(ujson.dumps(_event(f"lie-{name}", api_key=a.api_key))), a.team_id))
    json_type = {"Content-Type": "application/json"}

    def body(payload: Any) -> bytes:
        return ujson.dumps(payload).encode()

    precedence: list[tuple[str, Callable[[str], Request], int | None]] = [
        ("batch-key-wins-over-events", lambda d: ("POST", {}, json_type, body({"api_key": a.api_key, "batch": [
            _event(d, token=b.api_key, properties={"token": b.api_key})]})), a.team_id),
        ("event-field-over-properties", lambda d: ("POST", {}, json_type, body(
            _event(d, api_key=b.api_key, properties={"token": a.api_key}))), b.team_id),
        ("properties-token", lambda d: ("POST", {}, json_type, body(
            [_event(d, properties={"token": b.api_key}), _event(d + "-2", token=b.api_key)])), b.team_id),
        ("get-query-key-fills-in", lambda d: ("GET", {"token": a.api_key, "data": ujson.dumps(_event(d))}, {}, b""),
         a.team_id),
        ("post-query-key-is-ignored", lambda d: ("POST", {"token": a.api_key}, json_type, body(
            _event(d, api_key=b.api_key))), b.team_id),
        ("form-key-fills-in", lambda d: ("POST", {}, FORM, _form_b64([_event(d)], api_key=b.api_key)), b.team_id),
        # several different keys: 401, nothing stored
        ("events-differ", lambda d: ("POST", {}, json_type, body(
            [_event(d, token=a.api_key), _event(d + "-2", token=b.api_key)])), None),
        ("batch-api_key-vs-token", lambda d: ("POST", {}, json_type, body(
            {"api_key": a.api_key, "token": b.api_key, "batch": [_event(d)]})), None),
        ("get-query-key-vs-payload", lambda d: ("GET", {"token": a.api_key, "data": ujson.dumps(
            _event(d, api_key=b.api_key))}, {}, b""), None),
        ("form-key-vs-payload", lambda d: ("POST", {}, FORM, _form_b64(_event(d, token=b.api_key), api_key=a.api_key)),
         None),
    ]
    for name, build, team in precedence:
        cases.append((f"key-{name}", build(f"key-{name}"), team))

    for distinct_id, req, team in cases:
        status, answer = send(stack, "/e/", req)
        if team is None:
            assert (status, answer["code"]) == (401, "multiple_tokens"), (distinct_id, answer)
        else:
            assert (status, answer) == (200, {"status": 1}), (distinct_id, answer)
    stored = {distinct_id: team for distinct_id, _req, team in cases if team is not None}
    stored["key-properties-token-2"] = b.team_id

    def rows() -> dict[str, list[int]] | None:
        got: dict[str, list[int]] = {}
        for r in stack.sql("SELECT distinct_id, team_id FROM events WHERE event = 'stored-check'"):
            got.setdefault(r["distinct_id"], []).append(int(r["team_id"]))
        return got if len(got) >= len(stored) else None

    got = poll(rows, 60, what=f"{len(stored)} stored events")
    assert got == {distinct_id: [team] for distinct_id, team in stored.items()}  # once each, under its team
