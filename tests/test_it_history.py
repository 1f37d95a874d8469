"""historical_migration batches: their own topic, their timestamps, and they never hold up live events."""

from __future__ import annotations

import pytest

from tests.stack import Stack, poll, topics

pytestmark = pytest.mark.integration

BACKLOG = 40_000  # historical events: many seconds of processing on a test machine
BATCH = 10_000


def _historical(api_key: str, start: int) -> dict[str, object]:
    return {
        "api_key": api_key,
        "historical_migration": True,
        "sent_at": "2026-01-01T00:00:00Z",  # capture's skew rule as for live batches (PostHog's capture too)
        "batch": [
            {
                "event": "old",
                "distinct_id": f"user-{i % 300}",
                "timestamp": "2026-01-01T00:00:00Z",
                "uuid": f"0190b4a2-0000-7000-8000-{i:012d}",
                "properties": {"i": i},
            }
            for i in range(start, start + BATCH)
        ],
    }


def test_a_historical_backlog_does_not_hold_up_live_events(stack: Stack) -> None:
    team = stack.team("history")
    # With the worker stopped, a large backlog of historical_migration batches and then one live event of
    # a user the backlog also has wait in Kafka: when the worker starts, it has both to choose from.
    stack.kill("processor")
    for start in range(0, BACKLOG, BATCH):
        status, body = stack.post("/batch/", _historical(team.api_key, start))
        assert status == 200, body
    status, _ = stack.post("/capture/", {"api_key": team.api_key, "event": "live", "distinct_id": "user-7"})
    assert status == 200
    t = topics(stack)
    assert len(stack.raw_events(1)) == 1  # the batches went to the historical topic, not events_raw
    assert t.historical_events != t.raw_events
    stack.spawn("processor")

    def stored(where: str) -> int:
        return int(stack.sql(f"SELECT count() AS n FROM events WHERE team_id = {team.team_id} AND {where}")[0]["n"])

    poll(lambda: stored("event = 'live'") == 1, 90, 0.2, "the live event is stored")
    poll(lambda: stored("event = 'old'") >= BACKLOG, 300, 0.5, "the whole backlog is stored")

    # Order of processing: in the live row's partition of clickhouse_events (one producer, the worker),
    # rows after it were produced after it. Most of the backlog's rows there came later: the live event
    # was processed ahead of them instead of after the backlog it arrived behind.
    [live] = stack.sql(f"SELECT _partition, _offset FROM events WHERE team_id = {team.team_id} AND event = 'live'")
    same = f"event = 'old' AND _partition = {live['_partition']}"
    later, total = stored(f"{same} AND _offset > {live['_offset']}"), stored(same)
    assert total > 0 and later >= total // 2, (later, total)
    # Both are one person's events: the same identity state whichever topic they came from.
    persons = stack.sql(
        f"SELECT uniqExact(person_id) AS n FROM events WHERE team_id = {team.team_id} AND distinct_id = 'user-7'"
    )
    assert int(persons[0]["n"]) == 1
