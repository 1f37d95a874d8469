"""Pure unit tests of processors/transform.py (process_event) and eventpipe/contract.py."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from eventpipe.contract import (
    EVENT_ROW_COLUMNS,
    NIL_UUID,
    WARNING_ROW_COLUMNS,
    RawEvent,
    format_ts,
    parse_ts,
)
from gateway.events import RequestContext, parse_events
from processors.transform import event_properties, person_ops, process_event

NOW = "2024-01-01 12:00:00.000000"
UUID = "0189f7a2-5b6c-7d8e-9f00-112233445566"


def raw_event(**overrides: Any) -> RawEvent:
    fields: dict[str, Any] = {
        "uuid": UUID,
        "distinct_id": "user-1",
        "token": "phc_k",
        "event": "clicked",
        "timestamp": "2024-01-01 11:59:59.500000",
        "now": NOW,
        "data": {"event": "clicked", "properties": {"plan": "free"}},
    }
    fields.update(overrides)
    return RawEvent(**fields)


def strict_json(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------------------------------------------------------------
# process_event
# ---------------------------------------------------------------------------------------------------------------------


def test_event_row_shape() -> None:
    out = process_event(raw_event(), 42)
    assert out.warnings == []
    (row,) = out.events
    assert tuple(row) == EVENT_ROW_COLUMNS
    assert row["uuid"] == UUID
    assert row["event"] == "clicked"
    assert row["timestamp"] == "2024-01-01 11:59:59.500000"
    assert row["created_at"] == NOW
    assert row["team_id"] == 42
    assert row["distinct_id"] == "user-1"
    assert row["elements_chain"] == ""
    assert row["person_id"] == NIL_UUID
    assert strict_json(row["person_properties"]) == {}
    assert [row[f"$group_{i}"] for i in range(5)] == [""] * 5
    assert isinstance(row["properties"], str)
    assert strict_json(row["properties"]) == {"plan": "free"}


@pytest.mark.parametrize(
    ("data", "ip", "expected"),
    [
        pytest.param({"event": "e"}, None, {}, id="no-properties"),
        pytest.param({"event": "e", "properties": None}, None, {}, id="null-properties"),
        pytest.param(
            {"event": "e", "properties": {"a": 1}, "$set": {"email": "x@y.z"}},
            None,
            {"a": 1, "$set": {"email": "x@y.z"}},
            id="$set",
        ),
        pytest.param(
            {"event": "e", "$set": {"a": 1}, "$set_once": {"b": 2}, "$unset": ["c"]},
            None,
            {"$set": {"a": 1}, "$set_once": {"b": 2}, "$unset": ["c"]},
            id="all-ops",
        ),
        pytest.param(
            {"event": "e", "properties": {"$set": {"a": "inner", "b": 1}, "$set_once": {"c": 1}},
             "$set": {"a": "top"}, "$set_once": {"d": 2}},
            None,
            {"$set": {"a": "top", "b": 1}, "$set_once": {"c": 1, "d": 2}},
            id="top-level-merged-over-properties",
        ),
        pytest.param(
            {"event": "e", "properties": {"$set": {"a": 1}, "$unset": ["x"]}, "$set": ["bad"], "$unset": ["y"]},
            None,
            {"$set": ["bad"], "$unset": ["x"]},
            id="non-object-top-level-wins-unset-not-merged",
        ),
        pytest.param({"event": "e", "properties": {"a": 1}}, "203.0.113.7", {"a": 1, "$ip": "203.0.113.7"}, id="ip"),
        pytest.param(
            {"event": "e", "properties": {"$ip": "10.0.0.1"}}, "203.0.113.7", {"$ip": "10.0.0.1"}, id="client-ip-wins"
        ),
        pytest.param(
            {"event": "e", "properties": {"nested": {"ü": [1, 2.5, None, True]}}},
            None,
            {"nested": {"ü": [1, 2.5, None, True]}},
            id="nested-unicode",
        ),
    ],
)
def test_properties_json(data: dict[str, Any], ip: str | None, expected: dict[str, Any]) -> None:
    (row,) = process_event(raw_event(data=data, ip=ip), 1).events
    assert strict_json(row["properties"]) == expected


def test_the_stored_set_is_what_the_person_gets() -> None:
    data = {"event": "e", "properties": {"$set": {"a": "inner", "b": 1}}, "$set": {"a": "top"}, "$set_once": {"c": 2}}
    (row,) = process_event(raw_event(data=data), 1).events
    stored = strict_json(row["properties"])
    set_, set_once, _unset = person_ops(raw_event(data=data))
    assert (stored["$set"], stored["$set_once"]) == (set_, set_once) == ({"a": "top", "b": 1}, {"c": 2})


PAGEVIEW = {"$current_url": "https://x.test/a", "$browser": "Chrome", "utm_source": "ads", "gclid": None,
            "plan": "free"}


def test_event_properties_are_lifted_onto_the_person_as_posthog_does() -> None:
    data = {"event": "$pageview", "properties": {**PAGEVIEW, "$set_once": {"$initial_browser": "Firefox"}},
            "$set": {"utm_source": "explicit"}}
    stored = strict_json(process_event(raw_event(data=data), 1).events[0]["properties"])
    assert stored["$set"] == {"$current_url": "https://x.test/a", "$browser": "Chrome", "utm_source": "explicit",
                              "gclid": None}
    assert stored["$set_once"] == {"$initial_current_url": "https://x.test/a", "$initial_browser": "Firefox",
                                   "$initial_utm_source": "ads"}  # an explicit value wins; a null is left out
    assert event_properties(raw_event(data=data))[1] == ("$current_url", "$browser", "gclid")


def test_on_a_plain_event_lifted_properties_only_fill_what_the_person_lacks() -> None:
    set_, set_once, _ = person_ops(raw_event(event="$pageview",
                                          data={"event": "$pageview", "properties": PAGEVIEW, "$set": {"a": 1}}))
    assert set_ == {"a": 1}
    assert set_once == {"$current_url": "https://x.test/a", "$browser": "Chrome", "utm_source": "ads",
                        "gclid": None, "$initial_current_url": "https://x.test/a", "$initial_browser": "Chrome",
                        "$initial_utm_source": "ads"}
    set_, set_once, _ = person_ops(raw_event(event="$identify", data={"event": "$identify", "properties": PAGEVIEW}))
    assert set_ == {"$current_url": "https://x.test/a", "$browser": "Chrome", "utm_source": "ads", "gclid": None}
    assert set_once == {"$initial_current_url": "https://x.test/a", "$initial_browser": "Chrome",
                        "$initial_utm_source": "ads"}


@pytest.mark.parametrize(
    ("properties", "os", "set_os", "initial_os"),
    [
        pytest.param({"$os_name": "iOS"}, "iOS", "iOS", "iOS", id="stands-in"),
        pytest.param({"$os_name": "iOS", "$os": "Mac OS X"}, "Mac OS X", "Mac OS X", "Mac OS X", id="os-wins"),
    ],
)
def test_os_name_stands_in_for_os(properties: dict[str, Any], os: str, set_os: str, initial_os: str) -> None:
    props, _ = event_properties(raw_event(data={"event": "e", "properties": properties}))
    assert (props["$os"], props["$set"], props["$set_once"]) == (os, {"$os": set_os}, {"$initial_os": initial_os})


@pytest.mark.parametrize("event", ["$snapshot", "$performance_event"])
def test_no_person_properties_are_lifted_from(event: str) -> None:
    props, lifted = event_properties(raw_event(event=event, data={"event": event, "properties": PAGEVIEW}))
    assert (props, lifted) == (PAGEVIEW, ())


@pytest.mark.parametrize(
    ("sent_at", "expected"),
    [
        ("2024-01-01 11:59:59.500000", "2024-01-01T11:59:59.5Z"),
        ("2024-01-01 11:59:59.000000", "2024-01-01T11:59:59Z"),
        ("2024-01-01 11:59:59.123456", "2024-01-01T11:59:59.123456Z"),
        ("2024-01-01 11:59:59.12", "2024-01-01T11:59:59.12Z"),  # not format_ts's shape: parsed
    ],
)
def test_sent_at_is_stored_as_posthog_does(sent_at: str, expected: str) -> None:
    data = {"event": "e", "properties": {"$sent_at": "the client's"}}
    (row,) = process_event(raw_event(data=data, sent_at=sent_at), 1).events
    assert strict_json(row["properties"])["$sent_at"] == expected


def test_no_sent_at_keeps_the_clients() -> None:
    (row,) = process_event(raw_event(data={"event": "e", "properties": {"$sent_at": "x"}}), 1).events
    assert strict_json(row["properties"]) == {"$sent_at": "x"}


def test_a_personless_event_stores_no_person_operations() -> None:
    data = {"event": "$pageview", "properties": {**PAGEVIEW, "$process_person_profile": False, "$unset": ["a"]},
            "$set": {"a": 1}, "$set_once": {"b": 2}, "$unset": ["c"]}
    stored = strict_json(process_event(raw_event(data=data), 1).events[0]["properties"])
    assert {"$set", "$set_once", "$unset"} & set(stored) == set()
    assert stored["$process_person_profile"] is False and stored["$browser"] == "Chrome"


def test_unicode_is_not_escaped() -> None:
    (row,) = process_event(raw_event(data={"event": "e", "properties": {"name": "Zoë 🚀"}}), 1).events
    assert "Zoë 🚀" in row["properties"]


@pytest.mark.parametrize(("chain", "expected"), [("a:nth-child=1", "a:nth-child=1"), (None, ""), ("", "")])
def test_elements_chain(chain: str | None, expected: str) -> None:
    (row,) = process_event(raw_event(data={"event": "e", "elements_chain": chain}), 1).events
    assert row["elements_chain"] == expected


def test_raw_event_is_not_mutated() -> None:
    raw = raw_event(data={"event": "e", "properties": {"a": 1}, "$set": {"b": 2}}, ip="1.2.3.4")
    before = json.dumps(asdict(raw), sort_keys=True)
    process_event(raw, 1)
    assert json.dumps(asdict(raw), sort_keys=True) == before


def test_gateway_warnings_become_warning_rows() -> None:
    warnings = [
        {"type": "event_timestamp_in_future", "details": {"timestamp": "2099-01-01"}},
        {"type": "ignored_invalid_timestamp", "details": {"timestamp": "nope"}},
        {"details": {}},
    ]
    out = process_event(raw_event(warnings=warnings), 7)
    assert len(out.events) == 1
    assert [tuple(w) for w in out.warnings] == [WARNING_ROW_COLUMNS] * 3
    assert [w["type"] for w in out.warnings] == ["event_timestamp_in_future", "ignored_invalid_timestamp", "unknown"]
    assert {w["team_id"] for w in out.warnings} == {7}
    assert {w["source"] for w in out.warnings} == {"gateway"}
    assert {w["timestamp"] for w in out.warnings} == {NOW}
    assert strict_json(out.warnings[0]["details"]) == {"timestamp": "2099-01-01", "uuid": UUID}
    assert strict_json(out.warnings[2]["details"]) == {"uuid": UUID}


def test_gateway_to_row_chain() -> None:
    ctx = RequestContext(now=datetime(2024, 1, 1, 12, tzinfo=UTC), ip="198.51.100.1")
    payload = {
        "api_key": "phc_k",
        "batch": [
            {"event": "$pageview", "distinct_id": 99, "properties": {"$current_url": "https://x.test"}},
            {"type": "identify", "userId": "u", "traits": {"email": "u@x.test"}, "timestamp": "2020-08-16T09:03:11Z"},
        ],
    }
    _token, events = parse_events(payload, ctx)
    rows = [process_event(RawEvent.from_json(e.to_json()), 3).events[0] for e in events]
    assert [r["event"] for r in rows] == ["$pageview", "$identify"]
    assert rows[0]["distinct_id"] == "99"
    assert strict_json(rows[0]["properties"]) == {
        "$current_url": "https://x.test", "$ip": "198.51.100.1", "$set": {"$current_url": "https://x.test"},
        "$set_once": {"$initial_current_url": "https://x.test"},
    }
    assert strict_json(rows[1]["properties"]) == {"$set": {"email": "u@x.test"}, "$ip": "198.51.100.1"}
    assert rows[1]["timestamp"] == "2020-08-16 09:03:11.000000"
    assert {r["created_at"] for r in rows} == {"2024-01-01 12:00:00.000000"}


# ---------------------------------------------------------------------------------------------------------------------
# contract: RawEvent
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(raw_event(), id="minimal"),
        pytest.param(
            raw_event(
                distinct_id="Zoë 🚀",
                data={"event": "e", "properties": {"n": [1, 2.5, None, {"x": "ü"}]}, "$set": {"a": 1}},
                sent_at="2024-01-01 11:59:59.000000",
                ip="2001:db8::1",
                site_url="https://gw.test",
                warnings=[{"type": "w", "details": {"timestamp": "x"}}],
            ),
            id="full",
        ),
    ],
)
def test_raw_event_json_round_trip(raw: RawEvent) -> None:
    encoded = raw.to_json()
    assert isinstance(encoded, bytes)
    assert RawEvent.from_json(encoded) == raw
    assert RawEvent.from_json(encoded.decode()) == raw
    assert strict_json(encoded.decode()) == asdict(raw)


@pytest.mark.parametrize(
    ("token", "distinct_id", "key"),
    [
        ("phc_k", "user-1", b"phc_k:user-1"),
        ("phc_k", "a:b", b"phc_k:a:b"),
        ("phc_k", "Zoë", "phc_k:Zoë".encode()),
    ],
)
def test_raw_event_key(token: str, distinct_id: str, key: bytes) -> None:
    assert raw_event(token=token, distinct_id=distinct_id).key() == key


@pytest.mark.parametrize("text", ["[]", "1", '"x"', "null"])
def test_raw_event_from_json_refuses_non_objects(text: str) -> None:
    with pytest.raises(ValueError):
        RawEvent.from_json(text)


def test_raw_event_from_json_refuses_unknown_fields() -> None:
    with pytest.raises(TypeError):
        RawEvent.from_json(json.dumps({**asdict(raw_event()), "surprise": 1}))


@pytest.mark.parametrize(
    ("dt", "text"),
    [
        (datetime(2020, 8, 16, 9, 3, 11, 913767, tzinfo=UTC), "2020-08-16 09:03:11.913767"),
        (datetime(2020, 8, 16, 9, 3, 11), "2020-08-16 09:03:11.000000"),
        (datetime(2020, 8, 16, 12, 3, 11, tzinfo=timezone(timedelta(hours=3))), "2020-08-16 09:03:11.000000"),
    ],
)
def test_format_ts(dt: datetime, text: str) -> None:
    assert format_ts(dt) == text
    assert format_ts(parse_ts(text)) == text
    assert parse_ts(text).tzinfo == UTC


@pytest.mark.parametrize(
    "dt",
    [
        datetime(1900, 1, 1, tzinfo=UTC),
        datetime(999, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2024, 2, 29, 12, 0, 0, 5, tzinfo=timezone(timedelta(hours=-7))),
        datetime(2024, 2, 29, 12, 0, 0),
    ],
)
def test_format_ts_is_the_strftime_layout_with_four_year_digits(dt: datetime) -> None:
    utc = dt.astimezone(UTC).replace(tzinfo=None) if dt.tzinfo else dt
    assert format_ts(dt) == f"{utc.year:04d}-{utc:%m-%d %H:%M:%S.%f}"


def test_raw_event_as_dict_is_every_field_in_order() -> None:
    event = raw_event()
    assert list(event.as_dict()) == [f.name for f in dataclasses.fields(RawEvent)]
    assert event.as_dict() == asdict(event)
    assert list(event.as_dict())[-1] == "team_id"  # eventpipe.contract.stamp_teams splices it at the end
