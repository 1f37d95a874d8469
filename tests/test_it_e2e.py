"""HTTP in, SELECT out: the whole pipeline against real Kafka and the local ClickHouse 26 server."""

from __future__ import annotations

import ujson

from processors.identity import personless_id
from tests.stack import Stack, poll


def seed_event(api_key: str, distinct_id: str = "user-1") -> dict[str, object]:
    # The single-event body of the API page we implement (shared/seed/events-api.md).
    return {
        "api_key": api_key,
        "event": "signed_up",
        "properties": {"distinct_id": distinct_id, "key1": "value1", "key2": "value2"},
        "timestamp": "2020-08-16 09:03:11.913767",
    }


def test_capture_lands_in_clickhouse(stack: Stack) -> None:
    api_key = stack.create_team("e2e")
    status, body = stack.post("/capture/", seed_event(api_key))
    assert (status, body) == (200, {"status": 1})

    rows = poll(
        lambda: stack.sql("SELECT event, distinct_id, team_id, toString(timestamp) AS ts, properties FROM events"),
        timeout=30,
        what="event in ClickHouse",
    )
    assert len(rows) == 1
    row = rows[0]
    assert row["event"] == "signed_up"
    assert row["distinct_id"] == "user-1"
    assert int(row["team_id"]) == 1
    assert row["ts"] == "2020-08-16 09:03:11.913767"  # DateTime64(6): microseconds kept
    assert '"key1":"value1"' in row["properties"]


def test_bad_input_is_refused_and_gateway_keeps_serving(stack: Stack) -> None:
    api_key = stack.create_team("bad-input")
    status, body = stack.post("/capture/", b"{not json")
    assert status == 400 and body["type"] == "validation_error" and body["code"] == "invalid_payload"

    status, body = stack.post("/capture/", {"event": "x", "properties": {"distinct_id": "a"}})
    assert status == 401 and body["code"] == "missing_api_key"

    status, body = stack.post("/capture/", {"api_key": "phc_unknown", "event": "x", "distinct_id": "a"})
    assert status == 401 and body["code"] == "invalid_api_key"

    status, body = stack.post("/capture/", seed_event(api_key, "after-errors"))
    assert (status, body) == (200, {"status": 1})
    poll(lambda: stack.sql("SELECT distinct_id FROM events WHERE distinct_id = 'after-errors'"), 30)
    # The refused requests left nothing behind.
    assert [r["distinct_id"] for r in stack.sql("SELECT distinct_id FROM events")] == ["after-errors"]


def test_properties_are_stored_as_posthog_ingests_them(stack: Stack) -> None:
    """docs/capture.md, "Properties as PostHog's ingestion stores them", through the real pipeline."""
    api_key = stack.create_team("fidelity")
    link = {"tag_name": "a", "$el_text": "Sign up", "attr__href": "/signup", "attr__class": "btn big", "nth_child": 1,
            "nth_of_type": 1}
    at = "2024-05-01T10:00:0{}Z"
    batch = [
        {"event": "$pageview", "distinct_id": "anon", "timestamp": at.format(0), "$set": {"plan": "free"},
         "properties": {"$current_url": "https://x.test/?utm_source=ads", "$browser": "Chrome", "utm_source": "ads",
                        "$set": {"plan": "trial", "seats": 1}}},
        {"event": "$autocapture", "distinct_id": "anon", "timestamp": at.format(1),
         "properties": {"$event_type": "click", "$elements": [link, {"tag_name": "body", "nth_child": 1}]}},
        {"event": "$pageview", "distinct_id": "anon", "timestamp": at.format(2),
         "properties": {"$process_person_profile": False, "$browser": "Chrome"}},
        {"event": "$pageview", "distinct_id": "ghost", "timestamp": at.format(3),
         "properties": {"$process_person_profile": False}},
    ]
    status, _ = stack.post("/batch/", {"api_key": api_key, "sent_at": "2024-05-01T10:00:05.250Z", "batch": batch})
    assert status == 200
    rows = poll(lambda: (r := stack.sql("SELECT event, distinct_id, elements_chain, toString(person_id) AS person, "
                                        "properties FROM events ORDER BY timestamp")) and len(r) == 4 and r,
                30, what="four events")
    props = [ujson.loads(r["properties"]) for r in rows]
    assert props[0]["$set"] == {"plan": "free", "seats": 1, "$current_url": "https://x.test/?utm_source=ads",
                                "$browser": "Chrome", "utm_source": "ads"}
    assert props[0]["$set_once"] == {"$initial_current_url": "https://x.test/?utm_source=ads",
                                     "$initial_browser": "Chrome", "$initial_utm_source": "ads"}
    assert {p["$sent_at"] for p in props} == {"2024-05-01T10:00:05.25Z"}
    assert rows[1]["elements_chain"] == (
        'a.big.btn:attr__class="btn big"attr__href="/signup"href="/signup"nth-child="1"nth-of-type="1"text="Sign up";'
        'body:nth-child="1"nth-of-type="0"'
    )
    assert "$elements" not in props[1]
    assert "$set" not in props[2] and "$set_once" not in props[2]  # a personless event stores no person ops
    persons = poll(lambda: stack.sql("SELECT toString(id) AS id, properties FROM person_current"), 30, what="person")
    assert len(persons) == 1
    person = persons[0]
    assert rows[0]["person"] == rows[2]["person"] == person["id"]  # the personless event uses anon's person
    assert rows[3]["person"] == personless_id(1, "ghost")
    assert ujson.loads(person["properties"]) == {
        "plan": "free", "seats": 1, "$current_url": "https://x.test/?utm_source=ads", "$browser": "Chrome",
        "utm_source": "ads", "$initial_current_url": "https://x.test/?utm_source=ads", "$initial_browser": "Chrome",
        "$initial_utm_source": "ads",
    }
