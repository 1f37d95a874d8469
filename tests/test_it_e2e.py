"""HTTP in, SELECT out: the whole pipeline against real Kafka and the local ClickHouse 26 server."""

from __future__ import annotations

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
