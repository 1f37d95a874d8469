"""The hostile-input corpus (tests/hostile.py) through the pure decode path, plus uuids and encoding.

Every bomb is either refused with a 4xx naming the limit or accepted with exactly the events it
carries; refusals must not materialise more than a bounded amount (tracemalloc's peak, generous).
"""

from __future__ import annotations

import base64
import gzip
import tracemalloc
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import ujson

from eventpipe.config import Settings
from eventpipe.contract import RawEvent
from gateway.app import route_limits
from gateway.decode import request_form
from gateway.errors import CaptureError, unauthorized
from gateway.events import RequestContext, outside_token, parse_events
from gateway.prepare import (
    INLINE_BYTES,
    MAX_EVENT_BYTES,
    Escalate,
    Limits,
    Prepared,
    encode_event,
    prepare,
    prepare_inline,
)
from tests import hostile

KEY = "phc_hostile_unit"
NOW = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)


def run(bomb: hostile.Bomb, body: bytes) -> Prepared:
    """What the gateway does with the request, minus HTTP and Kafka (inline first, then a worker)."""
    parts = urlsplit(bomb.path)
    route = parts.path.strip("/")
    query = dict(parse_qsl(parts.query))
    body_limit, limits = route_limits(Settings(), route)
    if len(body) > body_limit:
        raise CaptureError(413, "validation_error", "payload_too_large", "body")
    query_token = outside_token(query) if bomb.method == "GET" else None  # gateway.app.query_key
    ctx = RequestContext(now=NOW, route=route, query_token=query_token)
    content_type = bomb.headers.get("Content-Type", "")
    if query_token not in (None, KEY):
        raise unauthorized("invalid_api_key", "query key")  # the app checks it before reading the body
    try:
        return prepare_inline(body, content_type, query, "", ctx, limits)
    except Escalate:
        if outside_token(request_form(body, content_type, query)) not in (None, KEY):
            raise unauthorized("invalid_api_key", "form key") from None  # ... and before a worker inflates
        return prepare(body, content_type, query, "", ctx, limits)


# Content-Encoding is inflated by aiohttp, not by these functions: the app test covers it. The
# biggest legitimate batches are for the measure script (seconds under tracemalloc).
PURE = [b for b in hostile.BOMBS if "Content-Encoding" not in b.headers and not b.name.startswith("biggest")]


@pytest.mark.parametrize("bomb", PURE, ids=[b.name for b in PURE])
def test_bomb_is_refused_or_stored(bomb: hostile.Bomb) -> None:
    body = bomb.build(KEY)
    tracemalloc.start()
    try:
        try:
            prepared = run(bomb, body)
        except CaptureError as err:
            outcome: Any = err
        else:
            outcome = prepared
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    if isinstance(outcome, CaptureError):
        assert outcome.status in bomb.statuses, outcome.body()
        assert 400 <= outcome.status < 500
        if bomb.code:
            assert outcome.code == bomb.code, outcome.body()
        # Bounded by the route's inflate cap (20 MB) plus ~100 B per counted value (1 M at most).
        assert peak < 160 * 1024 * 1024 + 2 * len(body), f"{bomb.name} peaked at {peak / 1e6:.0f} MB"
    elif outcome.token != KEY:
        assert 401 in bomb.statuses  # the gateway refuses the (unknown) key after the decode
    else:
        assert 200 in bomb.statuses, bomb.name
        assert len(outcome.messages) == bomb.stored
        for key, value in outcome.messages:
            raw = RawEvent.from_json(value)
            assert key == raw.key()
            value.decode("utf-8")  # strict: no lone surrogates, no invalid bytes
            assert b"NaN" not in value and b"Infinity" not in value
            assert uuid.UUID(raw.uuid)
            assert raw.timestamp[:4].isdigit() and int(raw.timestamp[:4]) >= 1900


def test_the_issue_bomb_is_small_and_refused_at_the_inflate_cap() -> None:
    body = hostile.tiny_values_bomb(hostile.UNKNOWN_KEY)
    assert len(body) < 100_000
    bomb = hostile.BOMBS[0]
    tracemalloc.start()
    try:
        with pytest.raises(CaptureError) as info:
            run(bomb, body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.status == 413
    assert str(20 * 1024 * 1024) in info.value.detail
    # The inflated bytes up to the cap (zlib's output buffer is joined from blocks: twice, briefly).
    assert peak < 3 * 20 * 1024 * 1024


def test_good_event_beside_a_bad_one_refuses_the_batch_like_posthog() -> None:
    # PostHog's capture validates every event and refuses the request: nothing half-stored that a
    # client retry would then duplicate.
    body = hostile.batch(KEY, [hostile.event(0), {"event": "no distinct id"}])
    with pytest.raises(CaptureError) as info:
        prepare(body, "application/json", {}, "", RequestContext(now=NOW), Limits(inflated_bytes=10**6))
    assert (info.value.status, info.value.attr) == (400, "distinct_id")


@pytest.mark.parametrize(
    ("body", "why"),
    [
        pytest.param(b"x" * (INLINE_BYTES + 1), "body", id="big-body"),
        pytest.param(gzip.compress(b"[" + b" " * INLINE_BYTES + b"]"), "inflated", id="big-inflated"),
        pytest.param(b"[" + b"0," * 70_000 + b"0]", "values", id="many-values"),
    ],
)
def test_what_is_not_small_goes_to_a_worker(body: bytes, why: str) -> None:
    with pytest.raises(Escalate):
        prepare_inline(body, "text/plain", {}, "", RequestContext(now=NOW), Limits(inflated_bytes=10**7))


def test_inline_limits_never_refuse_what_the_route_allows() -> None:
    events = [hostile.event(i, timestamp="2024-06-01T11:00:00Z") for i in range(20_000)]
    body = hostile.batch(KEY, events[:9000])
    _limit, limits = route_limits(Settings(), "batch")
    with pytest.raises(Escalate):
        prepare_inline(body, "application/json", {}, "", RequestContext(now=NOW), limits)
    assert len(prepare(body, "application/json", {}, "", RequestContext(now=NOW), limits).messages) == 9000


def test_posthog_js_form_base64_with_a_lying_gzip_hint() -> None:
    # posthog-js 1.78: form-encoded base64 sent with ?compression=gzip-js.
    text = hostile.batch(KEY, [hostile.event(1)])
    body = b"data=" + base64.b64encode(text).replace(b"+", b"%2B")
    out = prepare(body, hostile.FORM["Content-Type"], {"compression": "gzip-js"}, "", RequestContext(now=NOW),
                  Limits(inflated_bytes=10**6))
    assert len(out.messages) == 1


# ---------------------------------------------------------------------------------------------------------------------
# encode_event
# ---------------------------------------------------------------------------------------------------------------------


def raw_event(**data: Any) -> RawEvent:
    return RawEvent(uuid=str(uuid.uuid4()), distinct_id="d", token=KEY, event="e", timestamp="2024-01-01 00:00:00.0",
                    now="2024-01-01 00:00:00.0", data={"event": "e", "properties": data})


def test_encode_scrubs_lone_surrogates_and_non_finite_floats() -> None:
    event = raw_event(s="a\ud800b", n=float("inf"), m=float("nan"), ok=1.5, nested=[{"\udfff": -float("inf")}])
    key, value = encode_event(event)
    assert key == f"{KEY}:d".encode()
    props = ujson.loads(value)["data"]["properties"]
    assert props == {"s": "a\ufffdb", "n": None, "m": None, "ok": 1.5, "nested": [{"\ufffd": None}]}


def test_encode_keeps_text_that_merely_mentions_nan() -> None:
    event = raw_event(s="NaN and Infinity are words here")
    assert ujson.loads(encode_event(event)[1])["data"]["properties"]["s"] == "NaN and Infinity are words here"


def test_encode_refuses_an_event_larger_than_the_broker_takes() -> None:
    event = raw_event(s="x" * MAX_EVENT_BYTES)
    with pytest.raises(CaptureError) as info:
        encode_event(event)
    assert (info.value.status, info.value.code) == (413, "payload_too_large")
    assert str(MAX_EVENT_BYTES) in info.value.detail
    assert len(encode_event(raw_event(s="x" * (MAX_EVENT_BYTES - 1000)))[1]) <= MAX_EVENT_BYTES


# ---------------------------------------------------------------------------------------------------------------------
# uuids that a retry gets again
# ---------------------------------------------------------------------------------------------------------------------


def uuids(payload: dict[str, Any], now: datetime = NOW) -> list[str]:
    text = ujson.dumps(payload).encode()
    _token, events = parse_events(ujson.loads(text), RequestContext(now=now), content=text)
    return [e.uuid for e in events]


TS = "2024-06-01T11:59:58.123Z"
TS_MS = int(datetime(2024, 6, 1, 11, 59, 58, 123000, tzinfo=UTC).timestamp() * 1000)


def test_byte_identical_retry_gets_the_same_uuids_later() -> None:
    payload = {"api_key": KEY, "batch": [hostile.event(i, timestamp=TS) for i in range(3)]}
    first = uuids(payload)
    assert first == uuids(payload, now=datetime(2024, 6, 1, 12, 5, tzinfo=UTC))
    assert len(set(first)) == 3  # the index tells identical events of one request apart
    for u in map(uuid.UUID, first):
        assert u.version == 7 and u.int >> 80 == TS_MS  # time-ordered by the event's own time


def test_identical_events_in_one_request_stay_distinct() -> None:
    same = hostile.event(0, timestamp=TS)
    assert len(set(uuids({"api_key": KEY, "batch": [same, same]}))) == 2


def test_a_different_request_gets_different_uuids() -> None:
    a = uuids({"api_key": KEY, "batch": [hostile.event(0, timestamp=TS)]})
    b = uuids({"api_key": KEY, "batch": [hostile.event(0, timestamp=TS)], "sent_at": TS})
    c = uuids({"api_key": "phc_another_team", "batch": [hostile.event(0, timestamp=TS)]})
    assert len({*a, *b, *c}) == 3


def test_insert_id_gives_the_same_uuid_whatever_else_changed() -> None:
    mixpanel = {"event": "Signed up", "properties": {"distinct_id": "u1", "$insert_id": "abc123", "time": 1717243198}}
    first = uuids({"api_key": KEY, "batch": [mixpanel]})
    again = uuids({"api_key": KEY, "batch": [{"event": "x", "distinct_id": "z"}, mixpanel]})
    assert first[0] == again[1]
    other_user = {**mixpanel, "properties": {**mixpanel["properties"], "distinct_id": "u2"}}
    assert uuids({"api_key": KEY, "batch": [other_user]})[0] != first[0]


def test_client_uuid_wins() -> None:
    given = "0189f7a2-5b6c-7d8e-9f00-112233445566"
    assert uuids({"api_key": KEY, "batch": [hostile.event(0, uuid=given, timestamp=TS)]}) == [given]


def test_without_an_id_or_a_time_every_request_gets_fresh_uuids() -> None:
    # Two identical timestamp-less requests are as likely two events (a cron ping) as one retried.
    payload = {"api_key": KEY, "batch": [hostile.event(0)]}
    assert uuids(payload) != uuids(payload)


def test_without_the_content_uuids_are_fresh() -> None:
    payload = {"api_key": KEY, "batch": [hostile.event(0, timestamp=TS)]}
    a = parse_events(payload, RequestContext(now=NOW))[1][0].uuid
    b = parse_events(payload, RequestContext(now=NOW))[1][0].uuid
    assert a != b


@pytest.mark.parametrize("ts", ["0001-01-01T00:00:00Z", "1899-12-31T23:59:59Z", -62135596800000, "9999-12-31"])
def test_times_out_of_the_storable_range_fall_back_to_now(ts: object) -> None:
    text = ujson.dumps({"api_key": KEY, "batch": [hostile.event(0, timestamp=ts)]}).encode()
    (event,) = parse_events(ujson.loads(text), RequestContext(now=NOW), content=text)[1]
    assert event.timestamp.startswith("2024-06-01 12:00:00")
    assert event.warnings and event.warnings[0]["type"] in ("ignored_invalid_timestamp", "event_timestamp_in_future")


def test_encode_is_to_json_for_ordinary_events() -> None:
    text = hostile.batch(KEY, [hostile.event(i, timestamp=TS, properties={"f": 1.5, "s": "ü€😀"}) for i in range(3)])
    for event in parse_events(ujson.loads(text), RequestContext(now=NOW), content=text)[1]:
        assert encode_event(event) == (event.key(), event.to_json())
