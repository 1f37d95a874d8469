"""Pure unit tests of gateway/events.py: payload shapes, api keys, distinct ids, uuids, Segment messages."""

from __future__ import annotations

import copy
import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from eventpipe.contract import RawEvent, format_ts
from gateway.errors import CaptureError
from gateway.events import (
    MAX_BATCH_EVENTS,
    MAX_DEPTH,
    MAX_DISTINCT_ID,
    MAX_EVENT_NAME,
    RequestContext,
    outside_token,
    parse_events,
    split_batch,
)

KEY = "phc_unit_test_key"
OTHER = "phc_other_key"
NOW = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
CTX = RequestContext(now=NOW, ip="203.0.113.7", site_url="http://gw.test")
SEED_TS = "2020-08-16 09:03:11.913767"
SEED_FILE = Path("/work/shared/seed/events-api.md")


def ev(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"event": "clicked", "distinct_id": "user-1"}
    base.update(fields)
    return base


def parse(payload: Any, ctx: RequestContext = CTX) -> tuple[str, list[RawEvent]]:
    return parse_events(copy.deepcopy(payload), ctx)


def one(payload: Any, ctx: RequestContext = CTX) -> RawEvent:
    _token, events = parse(payload, ctx)
    assert len(events) == 1
    return events[0]


def refused(payload: Any, ctx: RequestContext = CTX) -> CaptureError:
    with pytest.raises(CaptureError) as info:
        parse(payload, ctx)
    return info.value


# ---------------------------------------------------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "names"),
    [
        pytest.param(ev(api_key=KEY), ["clicked"], id="single"),
        pytest.param({"api_key": KEY, "batch": [ev(event="a"), ev(event="b")]}, ["a", "b"], id="batch"),
        pytest.param([ev(event="a", api_key=KEY), ev(event="b", token=KEY)], ["a", "b"], id="top-level-list"),
        pytest.param({"api_key": KEY, "data": [ev(event="a"), ev(event="b")]}, ["a", "b"], id="old-sdk-data-list"),
        pytest.param({"api_key": KEY, "data": ev(event="a")}, ["a"], id="old-sdk-data-object"),
        pytest.param({"api_key": KEY, "data": {"batch": [ev(event="a")]}}, ["a"], id="old-sdk-data-batch"),
    ],
)
def test_shapes(payload: Any, names: list[str]) -> None:
    token, events = parse(payload)
    assert token == KEY
    assert [e.event for e in events] == names
    assert all(e.token == KEY for e in events)


def test_event_with_a_data_property_is_still_a_single_event() -> None:
    raw = one(ev(api_key=KEY, data={"x": 1}))
    assert raw.event == "clicked"


def test_batch_order_is_kept() -> None:
    _token, events = parse({"api_key": KEY, "batch": [ev(event=f"e{i}") for i in range(50)]})
    assert [e.event for e in events] == [f"e{i}" for i in range(50)]


def test_split_batch_returns_top_level_fields() -> None:
    payload = {"api_key": KEY, "sent_at": "x", "batch": [1]}
    assert split_batch(payload) == ([1], payload)
    assert split_batch([1, 2]) == ([1, 2], {})
    assert split_batch({"event": "e"}) == ([{"event": "e"}], {})


@pytest.mark.parametrize(
    ("payload", "code", "attr"),
    [
        pytest.param({"api_key": KEY, "batch": []}, "invalid_payload", "batch", id="empty-batch"),
        pytest.param([], "invalid_payload", "batch", id="empty-list"),
        pytest.param({"api_key": KEY, "batch": "nope"}, "invalid_payload", "batch", id="batch-not-list"),
        pytest.param({"api_key": KEY, "batch": None}, "invalid_payload", "batch", id="batch-null"),
        pytest.param({"api_key": KEY, "batch": [None]}, "invalid_payload", None, id="null-item"),
        pytest.param({"api_key": KEY, "batch": [ev(), None]}, "invalid_payload", None, id="null-after-valid"),
        pytest.param({"api_key": KEY, "batch": [ev(), 5]}, "invalid_payload", None, id="scalar-item"),
        pytest.param({"api_key": KEY, "batch": [ev(), [ev()]]}, "invalid_payload", None, id="nested-list-item"),
        pytest.param("just a string", "invalid_payload", None, id="string-payload"),
        pytest.param(42, "invalid_payload", None, id="number-payload"),
        pytest.param(None, "invalid_payload", None, id="null-payload"),
        pytest.param(ev(api_key=KEY, event=None), "invalid_payload", "event", id="event-null"),
        pytest.param({"api_key": KEY, "distinct_id": "u"}, "invalid_payload", "event", id="event-missing"),
        pytest.param(ev(api_key=KEY, event=""), "invalid_payload", "event", id="event-empty"),
        pytest.param(ev(api_key=KEY, event=12), "invalid_payload", "event", id="event-number"),
        pytest.param(ev(api_key=KEY, properties=[1]), "invalid_payload", "properties", id="properties-list"),
        pytest.param(ev(api_key=KEY, properties="{}"), "invalid_payload", "properties", id="properties-string"),
    ],
)
def test_invalid_payloads_are_400(payload: Any, code: str, attr: str | None) -> None:
    err = refused(payload)
    assert (err.status, err.type, err.code, err.attr) == (400, "validation_error", code, attr)


def test_one_invalid_event_refuses_the_whole_request() -> None:
    err = refused({"api_key": KEY, "batch": [ev(), ev(uuid="nope"), ev()]})
    assert err.status == 400


def test_too_many_events_is_413() -> None:
    err = refused({"api_key": KEY, "batch": [{}] * (MAX_BATCH_EVENTS + 1)})
    assert (err.status, err.code) == (413, "payload_too_large")


# ---------------------------------------------------------------------------------------------------------------------
# api key
# ---------------------------------------------------------------------------------------------------------------------


MIXED = "multiple_tokens"
# (payload, query key of a GET, form field key, expected: the key or the 401 code). PostHog's order
# (docs/capture.md, "Fields"): the batch's api_key / token, else every event's own token / $token /
# api_key, else its string properties.token; keys beside the payload fill in when it names none.
PRECEDENCE: list[Any] = [
    # batch level
    pytest.param({"api_key": KEY, "batch": [ev()]}, None, None, KEY, id="batch-api_key"),
    pytest.param({"token": KEY, "batch": [ev()]}, None, None, KEY, id="batch-token"),
    pytest.param({"api_key": KEY, "token": KEY, "batch": [ev()]}, None, None, KEY, id="batch-both-same"),
    pytest.param({"api_key": KEY, "token": OTHER, "batch": [ev()]}, None, None, MIXED, id="batch-both-differ"),
    pytest.param({"api_key": KEY, "batch": [ev(api_key=OTHER), ev(token="phc_third")]}, None, None, KEY,
                 id="batch-wins-over-its-events"),
    pytest.param({"api_key": KEY, "batch": [ev(properties={"token": OTHER})]}, None, None, KEY,
                 id="batch-wins-over-properties-token"),
    pytest.param({"api_key": KEY, "data": [ev(), ev()]}, None, None, KEY, id="old-sdk-data"),
    # one event
    pytest.param(ev(token=KEY), None, None, KEY, id="token"),
    pytest.param(ev(**{"$token": KEY}), None, None, KEY, id="$token"),
    pytest.param(ev(api_key=KEY), None, None, KEY, id="api_key"),
    pytest.param(ev(properties={"token": KEY}), None, None, KEY, id="properties.token"),
    pytest.param(ev(token=KEY, api_key=KEY, **{"$token": KEY}), None, None, KEY, id="event-fields-same"),
    pytest.param(ev(token=KEY, api_key=OTHER), None, None, MIXED, id="event-token-vs-api_key"),
    pytest.param(ev(**{"$token": KEY}, api_key=OTHER), None, None, MIXED, id="event-$token-vs-api_key"),
    pytest.param(ev(api_key=KEY, properties={"token": OTHER}), None, None, KEY, id="event-field-over-properties"),
    pytest.param(ev(api_key="", token=KEY), None, None, KEY, id="empty-field-falls-through"),
    pytest.param(ev(properties={"token": 12345}), None, None, "missing_api_key", id="properties-token-not-string"),
    # several events
    pytest.param([ev(api_key=KEY), ev(properties={"token": KEY}), ev(token=KEY)], None, None, KEY,
                 id="same-key-many-places"),
    pytest.param([ev(api_key=KEY), ev()], None, None, KEY, id="only-one-event-carries-it"),
    pytest.param([ev(api_key=KEY), ev(api_key=OTHER)], None, None, MIXED, id="events-differ"),
    pytest.param([ev(api_key=KEY), ev(token=OTHER)], None, None, MIXED, id="api_key-vs-token"),
    pytest.param([ev(token=KEY), ev(properties={"token": OTHER})], None, None, MIXED, id="token-vs-properties"),
    pytest.param({"batch": [ev(api_key=KEY), ev(**{"$token": OTHER})]}, None, None, MIXED,
                 id="batch-without-top-key"),
    # beside the payload: a GET's query, form fields
    pytest.param([ev()], KEY, None, KEY, id="query-fills-in"),
    pytest.param(ev(api_key=KEY), KEY, None, KEY, id="query-same-as-payload"),
    pytest.param(ev(api_key=OTHER), KEY, None, MIXED, id="query-differs-from-event"),
    pytest.param({"api_key": OTHER, "batch": [ev()]}, KEY, None, MIXED, id="query-differs-from-batch"),
    pytest.param([ev()], None, KEY, KEY, id="form-fills-in"),
    pytest.param(ev(properties={"token": KEY}), None, KEY, KEY, id="form-same-as-payload"),
    pytest.param(ev(properties={"token": OTHER}), None, KEY, MIXED, id="form-differs-from-payload"),
    pytest.param([ev()], KEY, KEY, KEY, id="query-and-form-same"),
    pytest.param([ev()], KEY, OTHER, MIXED, id="query-and-form-differ"),
    pytest.param(ev(), None, None, "missing_api_key", id="none-anywhere"),
]


@pytest.mark.parametrize(("payload", "query", "form", "expected"), PRECEDENCE)
def test_token_precedence(payload: Any, query: str | None, form: str | None, expected: str) -> None:
    ctx = RequestContext(now=NOW, query_token=query, form_token=form)
    if expected.startswith("phc_"):
        token, events = parse(payload, ctx)
        assert token == expected
        assert events and all(e.token == expected for e in events)
    else:
        err = refused(payload, ctx)
        assert (err.status, err.type, err.code) == (401, "authentication_error", expected)
        assert set(err.body()) == {"type", "code", "detail", "attr"}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({}, None, id="none"),
        pytest.param(None, None, id="no-form"),
        pytest.param({"token": KEY}, KEY, id="query-token"),
        pytest.param({"api_key": KEY}, KEY, id="query-api_key"),
        pytest.param({"token": [KEY]}, KEY, id="form-token"),
        pytest.param({"api_key": [KEY], "token": [KEY]}, KEY, id="both-same"),
        pytest.param({"token": [""], "data": ["{}"]}, None, id="empty"),
        pytest.param({"api_key": KEY, "token": OTHER}, MIXED, id="both-differ"),
    ],
)
def test_outside_token(fields: Any, expected: str | None) -> None:
    if expected == MIXED:
        with pytest.raises(CaptureError) as info:
            outside_token(fields)
        assert (info.value.status, info.value.code) == (401, MIXED)
    else:
        assert outside_token(fields) == expected


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        pytest.param(ev(), "missing_api_key", id="none"),
        pytest.param(ev(api_key=""), "missing_api_key", id="empty"),
        pytest.param(ev(api_key=None), "missing_api_key", id="null"),
        pytest.param({"batch": [ev()]}, "missing_api_key", id="batch-none"),
        pytest.param({"api_key": "", "batch": [ev()]}, "missing_api_key", id="batch-empty"),
        pytest.param(ev(api_key="has space"), "invalid_api_key", id="space"),
        pytest.param(ev(api_key="<INSERT YOUR API KEY>"), "invalid_api_key", id="seed-placeholder"),
        pytest.param(ev(api_key="x" * 65), "invalid_api_key", id="too-long"),
        pytest.param(ev(api_key="phc_é"), "invalid_api_key", id="non-ascii"),
        pytest.param(ev(api_key="phc\t1"), "invalid_api_key", id="control-char"),
    ],
)
def test_missing_or_malformed_key_is_401(payload: Any, code: str) -> None:
    err = refused(payload)
    assert (err.status, err.type, err.code) == (401, "authentication_error", code)


def test_key_shape_boundaries() -> None:
    assert parse(ev(api_key="x" * 64))[0] == "x" * 64
    assert parse(ev(api_key="!~"))[0] == "!~"


def test_key_is_checked_before_events() -> None:
    # an unauthenticated request learns nothing about its payload's validity
    assert refused({"batch": [None]}).status == 401


# ---------------------------------------------------------------------------------------------------------------------
# distinct_id
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({"distinct_id": "u1"}, "u1", id="distinct_id"),
        pytest.param({"$distinct_id": "u2"}, "u2", id="$distinct_id"),
        pytest.param({"properties": {"distinct_id": "u3"}}, "u3", id="properties.distinct_id"),
        pytest.param({"distinct_id": "a", "$distinct_id": "b", "properties": {"distinct_id": "c"}}, "a", id="order-1"),
        pytest.param({"$distinct_id": "b", "properties": {"distinct_id": "c"}}, "b", id="order-2"),
        pytest.param({"distinct_id": None, "$distinct_id": "b"}, "b", id="null-falls-through"),
        pytest.param({"userId": "seg-user"}, "seg-user", id="segment-userId"),
        pytest.param({"anonymousId": "seg-anon"}, "seg-anon", id="segment-anonymousId"),
        pytest.param({"userId": "u", "anonymousId": "a"}, "u", id="userId-before-anonymousId"),
        pytest.param({"distinct_id": 123}, "123", id="int"),
        pytest.param({"distinct_id": 0}, "0", id="zero"),
        pytest.param({"distinct_id": 1.5}, "1.5", id="float"),
        pytest.param({"distinct_id": True}, "true", id="bool"),
        pytest.param({"distinct_id": [1, "a"]}, '[1,"a"]', id="list"),
        pytest.param({"distinct_id": {"id": "é"}}, '{"id":"é"}', id="object-unicode"),
        pytest.param({"distinct_id": " padded "}, " padded ", id="kept-verbatim"),
        pytest.param({"distinct_id": "x" * 500}, "x" * MAX_DISTINCT_ID, id="truncated"),
        pytest.param({"distinct_id": "é" * 300}, "é" * MAX_DISTINCT_ID, id="truncated-chars-not-bytes"),
        pytest.param(
            {"distinct_id": list(range(200))},
            json.dumps(list(range(200)), separators=(",", ":"))[:200],
            id="stringified-then-truncated",
        ),
    ],
)
def test_distinct_id(fields: dict[str, Any], expected: str) -> None:
    payload = {"api_key": KEY, "event": "e", **fields}
    raw = one(payload)
    assert raw.distinct_id == expected
    assert len(raw.distinct_id) <= MAX_DISTINCT_ID


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({}, id="missing"),
        pytest.param({"distinct_id": None}, id="null"),
        pytest.param({"distinct_id": ""}, id="empty"),
        pytest.param({"distinct_id": "   "}, id="spaces"),
        pytest.param({"distinct_id": "\t\n"}, id="whitespace"),
        pytest.param({"distinct_id": "", "$distinct_id": "b"}, id="empty-does-not-fall-through"),
        pytest.param({"properties": {"distinct_id": ""}}, id="empty-in-properties"),
    ],
)
def test_missing_or_empty_distinct_id_is_400(fields: dict[str, Any]) -> None:
    err = refused({"api_key": KEY, "event": "e", **fields})
    assert (err.status, err.code, err.attr) == (400, "invalid_payload", "distinct_id")


@pytest.mark.parametrize("value", ["null", '""'])
def test_literal_null_string_is_a_valid_distinct_id(value: str) -> None:
    assert one(ev(api_key=KEY, distinct_id=value)).distinct_id == value


# ---------------------------------------------------------------------------------------------------------------------
# uuid
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("0189f7a2-5b6c-7d8e-9f00-112233445566", "0189f7a2-5b6c-7d8e-9f00-112233445566"),
        ("0189F7A2-5B6C-7D8E-9F00-112233445566", "0189f7a2-5b6c-7d8e-9f00-112233445566"),
        ("0189f7a25b6c7d8e9f00112233445566", "0189f7a2-5b6c-7d8e-9f00-112233445566"),
        ("{0189f7a2-5b6c-7d8e-9f00-112233445566}", "0189f7a2-5b6c-7d8e-9f00-112233445566"),
        ("00000000-0000-0000-0000-000000000000", "00000000-0000-0000-0000-000000000000"),
        ("6ba7b810-9dad-11d1-80b4-00c04fd430c8", "6ba7b810-9dad-11d1-80b4-00c04fd430c8"),  # v1 kept too
    ],
)
def test_valid_uuid_is_kept(given: str, expected: str) -> None:
    assert one(ev(api_key=KEY, uuid=given)).uuid == expected


@pytest.mark.parametrize("given", ["", "nope", "0189f7a2-5b6c-7d8e-9f00-11223344556", "g" * 32, 12345, [1], {"a": 1}])
def test_invalid_uuid_is_400(given: Any) -> None:
    err = refused(ev(api_key=KEY, uuid=given))
    assert (err.status, err.code, err.attr) == (400, "invalid_payload", "uuid")


def test_missing_uuid_gets_a_fresh_uuid7() -> None:
    _token, events = parse({"api_key": KEY, "batch": [ev(), ev(uuid=None), ev()]})
    uuids = [uuid.UUID(e.uuid) for e in events]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in uuids)
    assert len(set(uuids)) == 3


# ---------------------------------------------------------------------------------------------------------------------
# event names, dropped events, data carried along
# ---------------------------------------------------------------------------------------------------------------------


def test_performance_events_are_dropped() -> None:
    token, events = parse({"api_key": KEY, "batch": [ev(event="$performance_event"), ev(event="kept")]})
    assert token == KEY
    assert [e.event for e in events] == ["kept"]
    assert parse(ev(api_key=KEY, event="$performance_event")) == (KEY, [])
    # dropped before any other validation, like PostHog
    assert parse({"api_key": KEY, "event": "$performance_event"}) == (KEY, [])


def test_event_name_is_cut_to_400_chars() -> None:
    raw = one(ev(api_key=KEY, event="n" * 1000))
    assert raw.event == "n" * MAX_EVENT_NAME
    assert raw.data["event"] == raw.event


def test_raw_event_envelope() -> None:
    props = {"$current_url": "https://x.test", "nested": {"a": [1, 2]}}
    raw = one(
        ev(
            api_key=KEY,
            properties=props,
            **{"$set": {"a": 1}, "$set_once": {"b": 2}, "$unset": ["c"], "$groups": {"company": "acme"}},
            elements_chain="div:nth-child=1",
        )
    )
    assert raw.token == KEY
    assert raw.now == format_ts(NOW)
    assert raw.timestamp == format_ts(NOW)
    assert raw.ip == "203.0.113.7"
    assert raw.site_url == "http://gw.test"
    assert raw.sent_at is None
    assert raw.warnings == []
    assert raw.data == {
        "event": "clicked",
        "properties": props,
        "$set": {"a": 1},
        "$set_once": {"b": 2},
        "$unset": ["c"],
        "$groups": {"company": "acme"},
        "elements_chain": "div:nth-child=1",
    }
    assert raw.key() == f"{KEY}:user-1".encode()


def test_input_properties_are_not_shared() -> None:
    props: dict[str, Any] = {"a": 1}
    raw = parse_events(ev(api_key=KEY, type="page", properties=props, name="n"), CTX)[1][0]
    assert props == {"a": 1}
    assert raw.data["properties"] == {"a": 1, "name": "n"}


# ---------------------------------------------------------------------------------------------------------------------
# timestamps as the gateway applies them
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "ctx", "timestamp", "sent_at"),
    [
        pytest.param(ev(api_key=KEY, timestamp=SEED_TS), CTX, SEED_TS, None, id="seed-format-unchanged"),
        pytest.param(ev(api_key=KEY, timestamp="2020-08-16T09:03:11.913767Z"), CTX, SEED_TS, None, id="iso-z"),
        pytest.param(
            ev(api_key=KEY, timestamp="2024-01-01T13:00:00Z", sent_at="2024-01-01T14:00:00Z"),
            CTX,
            "2024-01-01 11:00:00.000000",
            "2024-01-01 14:00:00.000000",
            id="event-sent_at",
        ),
        pytest.param(
            {"api_key": KEY, "sent_at": "2024-01-01T14:00:00Z", "batch": [ev(timestamp="2024-01-01T13:00:00Z")]},
            CTX,
            "2024-01-01 11:00:00.000000",
            "2024-01-01 14:00:00.000000",
            id="batch-sent_at",
        ),
        pytest.param(
            {
                "api_key": KEY,
                "sent_at": "2024-01-01T14:00:00Z",
                "batch": [ev(timestamp="2024-01-01T13:00:00Z", sent_at="2024-01-01T13:30:00Z")],
            },
            CTX,
            "2024-01-01 11:00:00.000000",
            "2024-01-01 14:00:00.000000",
            id="batch-sent_at-wins",
        ),
        pytest.param(
            ev(api_key=KEY, timestamp="2024-01-01T13:00:00Z"),
            RequestContext(now=NOW, query_sent_at=datetime(2024, 1, 1, 14, tzinfo=UTC)),
            "2024-01-01 11:00:00.000000",
            "2024-01-01 14:00:00.000000",
            id="query-sent_at",
        ),
        pytest.param(
            ev(api_key=KEY, timestamp=SEED_TS, sent_at="2024-01-01T14:00:00Z", properties={"$ignore_sent_at": True}),
            CTX,
            SEED_TS,
            "2024-01-01 14:00:00.000000",
            id="ignore_sent_at",
        ),
        pytest.param(ev(api_key=KEY, offset=1500), CTX, "2024-01-01 11:59:58.500000", None, id="offset"),
        pytest.param(
            ev(api_key=KEY, properties={"time": 1597568591}),
            RequestContext(now=NOW, route="track"),
            "2020-08-16 09:03:11.000000",
            None,
            id="mixpanel-time-on-track",
        ),
        pytest.param(
            ev(api_key=KEY, properties={"time": 1597568591913}),
            RequestContext(now=NOW, route="engage"),
            "2020-08-16 09:03:11.913000",
            None,
            id="mixpanel-time-ms-on-engage",
        ),
        pytest.param(
            ev(api_key=KEY, properties={"time": 1597568591}),
            CTX,
            "2024-01-01 12:00:00.000000",
            None,
            id="time-ignored-on-capture",
        ),
    ],
)
def test_event_time(payload: Any, ctx: RequestContext, timestamp: str, sent_at: str | None) -> None:
    raw = one(payload, ctx)
    assert raw.timestamp == timestamp
    assert raw.sent_at == sent_at
    assert raw.warnings == []


@pytest.mark.parametrize(
    ("timestamp", "warning"),
    [("not a time", "ignored_invalid_timestamp"), ("2024-01-03T12:00:00Z", "event_timestamp_in_future")],
)
def test_timestamp_warnings_travel_with_the_event(timestamp: str, warning: str) -> None:
    raw = one(ev(api_key=KEY, timestamp=timestamp))
    assert raw.timestamp == format_ts(NOW)
    assert raw.warnings == [{"type": warning, "details": {"timestamp": timestamp}}]


def test_nan_offset_does_not_crash_parse_events() -> None:
    raw = one(ev(api_key=KEY, offset=float("nan")))
    assert raw.timestamp == format_ts(NOW)


# ---------------------------------------------------------------------------------------------------------------------
# nesting
# ---------------------------------------------------------------------------------------------------------------------


def nested(levels: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(levels):
        value = {"k": value} if i % 2 else [value]
    return value


@pytest.mark.parametrize("levels", [0, 1, 10, 40])
def test_reasonable_nesting_is_accepted(levels: int) -> None:
    raw = one(ev(api_key=KEY, properties={"deep": nested(levels)}))
    assert raw.data["properties"]["deep"] == nested(levels)


@pytest.mark.parametrize("leaf", [1, {}, [], "s", None])
def test_nesting_boundary(leaf: Any) -> None:
    # the event object is depth 0, properties depth 1, "deep" depth 2: nested(n) puts the leaf at n + 2
    at_limit = ev(api_key=KEY, properties={"deep": nested(MAX_DEPTH - 2, leaf)})
    over_limit = ev(api_key=KEY, properties={"deep": nested(MAX_DEPTH - 1, leaf)})
    assert one(at_limit).data["properties"]["deep"] == nested(MAX_DEPTH - 2, leaf)
    assert refused(over_limit).status == 400


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, MAX_DEPTH + 10, 200])
def test_nesting_deeper_than_max_depth_is_400(levels: int) -> None:
    err = refused(ev(api_key=KEY, properties={"deep": nested(levels)}))
    assert (err.status, err.code, err.attr) == (400, "invalid_payload", "properties")


def test_deep_nesting_in_set_is_refused_too() -> None:
    err = refused(ev(api_key=KEY, **{"$set": nested(MAX_DEPTH + 5)}))
    assert err.status == 400


# ---------------------------------------------------------------------------------------------------------------------
# Segment-style messages and /engage
# ---------------------------------------------------------------------------------------------------------------------

# The sample requests of the shared seed (/work/shared/seed/events-api.md), verbatim but for the api key.
SEED_SAMPLES: dict[str, dict[str, Any]] = {
    "Alias": {
        "api_key": "<INSERT YOUR API KEY>",
        "properties": {"distinct_id": "123", "alias": "456"},
        "timestamp": SEED_TS,
        "context": "{}",
        "type": "alias",
        "event": "$create_alias",
    },
    "Capture": {
        "api_key": "<INSERT YOUR API KEY>",
        "properties": {},
        "timestamp": SEED_TS,
        "context": {},
        "distinct_id": "1234",
        "type": "capture",
        "event": "$event",
        "messageId": "1234",
    },
    "Identify": {
        "api_key": "<INSERT YOUR API KEY>",
        "timestamp": SEED_TS,
        "context": {},
        "type": "screen",
        "distinct_id": "1234",
        "$set": {},
        "event": "$identify",
        "messageId": "123",
    },
    "Group": {
        "api_key": "<INSERT YOUR API KEY>",
        "timestamp": SEED_TS,
        "groupId": "123",
        "context": {},
        "distinct_id": "1234",
        "traits": {},
        "type": "group",
        "event": "$group",
        "messageId": "123",
    },
    "Page": {
        "api_key": "<INSERT YOUR API KEY>",
        "properties": {},
        "timestamp": SEED_TS,
        "category": "some category",
        "context": {},
        "distinct_id": "1234",
        "type": "page",
        "event": "$page",
        "name": "a page",
        "messageId": "123",
    },
    "Screen": {
        "api_key": "<INSERT YOUR API KEY>",
        "properties": {},
        "timestamp": SEED_TS,
        "category": "some category",
        "context": {},
        "distinct_id": "1234",
        "type": "screen",
        "event": "$screen",
        "name": "a page",
        "messageId": "123",
    },
}

SEED_EXPECTED: dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]] = {
    # sample: (event, distinct_id, properties, extra data fields)
    "Alias": ("$create_alias", "123", {"distinct_id": "123", "alias": "456"}, {}),
    "Capture": ("$event", "1234", {"messageId": "1234"}, {}),
    "Identify": ("$identify", "1234", {"messageId": "123"}, {"$set": {}}),
    "Group": (
        "$groupidentify",
        "1234",
        {"messageId": "123", "$group_type": "group", "$group_key": "123", "$group_set": {}},
        {},
    ),
    "Page": ("$pageview", "1234", {"messageId": "123", "category": "some category", "name": "a page"}, {}),
    "Screen": (
        "$screen",
        "1234",
        {"messageId": "123", "category": "some category", "name": "a page", "$screen_name": "a page"},
        {},
    ),
}


def _seed_file_samples() -> dict[str, dict[str, Any]]:
    text = SEED_FILE.read_text()
    samples = {}
    for title, body in re.findall(r"^### (\w+)\s*```\s*curl .*? -d '(.*?)' https://", text, re.S | re.M):
        samples[title] = json.loads(body)
    return samples


@pytest.mark.skipif(not SEED_FILE.exists(), reason="shared seed not present")
def test_inlined_samples_match_the_seed_file() -> None:
    assert _seed_file_samples() == SEED_SAMPLES


@pytest.mark.parametrize("name", list(SEED_SAMPLES))
def test_seed_samples(name: str) -> None:
    payload = {**SEED_SAMPLES[name], "api_key": KEY}
    event, distinct_id, properties, extra = SEED_EXPECTED[name]
    raw = one(payload)
    assert raw.event == event
    assert raw.distinct_id == distinct_id
    assert raw.data["properties"] == properties
    for field, value in extra.items():
        assert raw.data[field] == value
    assert raw.timestamp == SEED_TS  # 'YYYY-MM-DD HH:MM:SS.ffffff' comes out unchanged
    assert raw.warnings == []
    assert uuid.UUID(raw.uuid).version == 7


def test_seed_samples_as_one_batch() -> None:
    batch = [{k: v for k, v in s.items() if k != "api_key"} for s in SEED_SAMPLES.values()]
    _token, events = parse({"api_key": KEY, "batch": batch})
    assert [e.event for e in events] == [SEED_EXPECTED[n][0] for n in SEED_SAMPLES]
    assert {e.timestamp for e in events} == {SEED_TS}


def test_seed_samples_with_the_placeholder_key_are_401() -> None:
    assert refused(SEED_SAMPLES["Capture"]).code == "invalid_api_key"


@pytest.mark.parametrize(
    ("message", "event", "properties", "data"),
    [
        pytest.param(
            {"type": "identify", "userId": "u", "traits": {"email": "a@b.c", "plan": "free"}},
            "$identify",
            {},
            {"$set": {"email": "a@b.c", "plan": "free"}},
            id="identify-traits-to-set",
        ),
        pytest.param(
            {"type": "identify", "userId": "u", "traits": {"plan": "free"}, "$set": {"plan": "pro"}},
            "$identify",
            {},
            {"$set": {"plan": "pro"}},
            id="identify-explicit-set-wins",
        ),
        pytest.param(
            {"type": "identify", "userId": "u", "event": "$identify"}, "$identify", {}, {}, id="identify-placeholder"
        ),
        pytest.param(
            {"type": "alias", "userId": "new", "previousId": "old"},
            "$create_alias",
            {"alias": "old"},
            {},
            id="alias-previousId",
        ),
        pytest.param(
            {"type": "alias", "userId": "new", "previousId": 7, "event": "$alias"},
            "$create_alias",
            {"alias": "7"},
            {},
            id="alias-$alias-placeholder",
        ),
        pytest.param(
            {"type": "alias", "userId": "new", "previousId": "old", "properties": {"alias": "given"}},
            "$create_alias",
            {"alias": "given"},
            {},
            id="alias-explicit-alias-wins",
        ),
        pytest.param(
            {"type": "group", "userId": "u", "groupId": 42, "groupType": "company", "traits": {"name": "Acme"}},
            "$groupidentify",
            {"$group_type": "company", "$group_key": "42", "$group_set": {"name": "Acme"}},
            {},
            id="group",
        ),
        pytest.param(
            {"type": "group", "userId": "u", "groupId": "g", "properties": {"groupType": "org"}},
            "$groupidentify",
            {"groupType": "org", "$group_type": "org", "$group_key": "g", "$group_set": {}},
            {},
            id="group-type-from-properties",
        ),
        pytest.param(
            {"type": "page", "userId": "u", "name": "Home", "category": "Docs"},
            "$pageview",
            {"name": "Home", "category": "Docs"},
            {},
            id="page-no-event",
        ),
        pytest.param({"type": "page", "userId": "u", "event": "$pageview"}, "$pageview", {}, {}, id="page-$pageview"),
        pytest.param(
            {"type": "screen", "userId": "u", "name": "Settings"},
            "$screen",
            {"name": "Settings", "$screen_name": "Settings"},
            {},
            id="screen",
        ),
        pytest.param(
            {"type": "track", "userId": "u", "event": "Signed Up", "messageId": "m1"},
            "Signed Up",
            {"messageId": "m1"},
            {},
            id="track",
        ),
        pytest.param({"type": "page", "userId": "u", "event": "custom"}, "custom", {}, {}, id="explicit-event-wins"),
        pytest.param(
            {"type": "page", "userId": "u", "context": {"ip": "1.2.3.4"}},
            "$pageview",
            {"$context": {"ip": "1.2.3.4"}},
            {},
            id="context-kept",
        ),
        pytest.param(
            {"type": "page", "userId": "u", "messageId": "m", "properties": {"messageId": "given"}},
            "$pageview",
            {"messageId": "given"},
            {},
            id="properties-win-over-message-fields",
        ),
        pytest.param(
            {"type": "unknown-type", "userId": "u", "event": "e", "name": "n"}, "e", {}, {}, id="unknown-type"
        ),
    ],
)
def test_segment_messages(
    message: dict[str, Any], event: str, properties: dict[str, Any], data: dict[str, Any]
) -> None:
    raw = one({"api_key": KEY, **message})
    assert raw.event == event
    assert raw.data["properties"] == properties
    for field, value in data.items():
        assert raw.data[field] == value


@pytest.mark.parametrize("kind", ["track", "capture"])
def test_segment_track_without_event_is_400(kind: str) -> None:
    assert refused({"api_key": KEY, "type": kind, "userId": "u"}).attr == "event"


ENGAGE = RequestContext(now=NOW, route="engage")


def test_engage_without_event_becomes_identify() -> None:
    payload = {"$token": KEY, "$distinct_id": "u", "$set": {"plan": "pro"}, "$set_once": {"first": 1}, "$unset": ["x"]}
    raw = one(payload, ENGAGE)
    assert raw.event == "$identify"
    assert raw.distinct_id == "u"
    assert raw.token == KEY
    assert raw.data["$set"] == {"plan": "pro"}
    assert raw.data["properties"] == {"$set": {"plan": "pro"}, "$set_once": {"first": 1}, "$unset": ["x"]}


def test_engage_keeps_an_explicit_event_and_property_ops() -> None:
    raw = one({"$token": KEY, "$distinct_id": "u", "event": "custom", "$set": {"a": 1}}, ENGAGE)
    assert raw.event == "custom"
    raw = one({"$token": KEY, "$distinct_id": "u", "$set": {"a": 1}, "properties": {"$set": {"a": 2}}}, ENGAGE)
    assert raw.data["properties"]["$set"] == {"a": 2}


def test_people_update_outside_engage_is_400() -> None:
    assert refused({"$token": KEY, "$distinct_id": "u", "$set": {"a": 1}}).attr == "event"
