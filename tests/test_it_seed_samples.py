"""The six sample requests of the API page we implement, POSTed to /batch/, land in ClickHouse.

Bodies are copied verbatim from the "Sample Requests" section of shared/seed/events-api.md (curl
``-d`` payloads, sent with ``Content-Type: application/json``); only the api key placeholder is
replaced by a real team's key. The expected event names follow our Segment mapping rules
(gateway/events.py ``_segment``, docs/capture.md).
"""

from __future__ import annotations

from typing import Any

import ujson

from tests.stack import Stack, poll

API_KEY_PLACEHOLDER = "<INSERT YOUR API KEY>"

ALIAS = """ {
    "api_key": "<INSERT YOUR API KEY>",
    "properties": {
        "distinct_id": "123",
        "alias": "456"
    },
    "timestamp": "2020-08-16 09:03:11.913767",
    "context": "{}",
    "type": "alias",
    "event": "$create_alias"
}"""

CAPTURE = """  {
    "api_key": "<INSERT YOUR API KEY>",
    "properties": {},
    "timestamp": "2020-08-16 09:03:11.913767",
    "context": {},
    "distinct_id": "1234",
    "type": "capture",
    "event": "$event",
    "messageId": "1234"
}"""

IDENTIFY = """ {
    "api_key": "<INSERT YOUR API KEY>",
    "timestamp": "2020-08-16 09:03:11.913767",
    "context": {},
    "type": "screen",
    "distinct_id": "1234",
    "$set": {},
    "event": "$identify",
    "messageId": "123"
}"""

GROUP = """ {
    "api_key": "<INSERT YOUR API KEY>",
    "timestamp": "2020-08-16 09:03:11.913767",
    "groupId": "123",
    "context": {},
    "distinct_id": "1234",
    "traits": {},
    "type": "group",
    "event": "$group",
    "messageId": "123"
}"""

PAGE = """  {
    "api_key": "<INSERT YOUR API KEY>",
    "properties": {},
    "timestamp": "2020-08-16 09:03:11.913767",
    "category": "some category",
    "context": {},
    "distinct_id": "1234",
    "type": "page",
    "event": "$page",
    "name": "a page",
    "messageId": "123"
}"""

SCREEN = """  {
    "api_key": "<INSERT YOUR API KEY>",
    "properties": {},
    "timestamp": "2020-08-16 09:03:11.913767",
    "category": "some category",
    "context": {},
    "distinct_id": "1234",
    "type": "screen",
    "event": "$screen",
    "name": "a page",
    "messageId": "123"
}"""

# sample -> (body, expected event name, expected distinct_id)
SAMPLES: dict[str, tuple[str, str, str]] = {
    "Alias": (ALIAS, "$create_alias", "123"),
    "Capture": (CAPTURE, "$event", "1234"),
    "Identify": (IDENTIFY, "$identify", "1234"),  # type "screen", but the explicit "$identify" wins
    "Group": (GROUP, "$groupidentify", "1234"),
    "Page": (PAGE, "$pageview", "1234"),
    "Screen": (SCREEN, "$screen", "1234"),
}


def _rows(stack: Stack) -> list[dict[str, Any]]:
    return stack.sql(
        "SELECT event, distinct_id, team_id, toString(timestamp) AS ts, properties FROM events ORDER BY event"
    )


def test_seed_sample_requests_land_in_clickhouse(stack: Stack) -> None:
    api_key = stack.create_team("seed-samples")
    for sample, (body, _event, _distinct_id) in SAMPLES.items():
        assert API_KEY_PLACEHOLDER in body
        status, answer = stack.post(
            "/batch/", body.replace(API_KEY_PLACEHOLDER, api_key).encode(), {"Content-Type": "application/json"}
        )
        assert (status, answer) == (200, {"status": 1}), f"{sample} sample refused"

    rows = poll(lambda: (r := _rows(stack)) and len(r) >= len(SAMPLES) and r, 30, what="six sample events")
    ts = "2020-08-16 09:03:11.913767"  # DateTime64(6): microseconds kept
    expected = sorted((event, distinct_id, ts) for _body, event, distinct_id in SAMPLES.values())
    assert sorted((r["event"], r["distinct_id"], r["ts"]) for r in rows) == expected
    assert {int(r["team_id"]) for r in rows} == {1}

    props = {r["event"]: ujson.loads(r["properties"]) for r in rows}
    assert props["$create_alias"]["alias"] == "456"
    assert props["$event"]["messageId"] == "1234"
    assert props["$groupidentify"]["$group_key"] == "123"
    assert props["$pageview"]["name"] == "a page"
    assert props["$pageview"]["category"] == "some category"
    assert props["$screen"]["$screen_name"] == "a page"

    # Persons, distinct ids and groups the samples imply: the alias joins "456" to "123"'s person
    # (identified); "1234" has a person of its own; the group sample upserts group "123" of type "group".
    def identities() -> list[dict[str, Any]] | None:
        got = stack.sql(
            "SELECT distinct_id, toString(person_id) AS person FROM person_distinct_id_current ORDER BY distinct_id"
        )
        return got if len(got) == 3 else None

    ids = {r["distinct_id"]: r["person"] for r in poll(identities, 30, what="three distinct ids")}
    assert ids["123"] == ids["456"] != ids["1234"]
    persons = {r["id"]: r for r in stack.sql("SELECT toString(id) AS id, is_identified FROM person_current")}
    assert set(persons) == {ids["123"], ids["1234"]}
    assert int(persons[ids["123"]]["is_identified"]) == 1
    groups = stack.sql("SELECT group_type_index, group_key FROM groups")
    assert [(int(g["group_type_index"]), g["group_key"]) for g in groups] == [(0, "123")]
