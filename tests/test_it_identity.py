"""Identity across partitions and workers: anonymous -> $identify -> $create_alias ends in one person.

Real Kafka, 4 partitions, 2 processor worker processes. The three ids are chosen so their raw events
hash to three different partitions; each seeded interleaving sends the same events in a different
global order (each id's own events keep their order, as one client would send them).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ujson
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner

from processors.protocol import person_of
from tests.stack import KAFKA, Stack, poll

PARTITIONS = 4


@pytest.fixture(scope="module")
def two_workers(kafka: str, clickhouse_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(Path(tmp_path_factory.mktemp("identity")), processors=2) as s:
        yield s


def ids_on_distinct_partitions(team_id: int, tag: str) -> tuple[str, str, str]:
    """Three distinct ids whose raw events (key ``team_id:distinct_id``) land on three partitions."""
    part = DefaultPartitioner()
    chosen: dict[int, str] = {}
    n = 0
    while len(chosen) < 3:
        candidate = f"{tag}-{n}"
        p = part(f"{team_id}:{candidate}".encode(), list(range(PARTITIONS)), list(range(PARTITIONS)))
        chosen.setdefault(p, candidate)
        n += 1
    anon, user, alias = chosen.values()
    return anon, user, alias


def chain(anon: str, user: str, alias: str) -> dict[str, list[dict[str, Any]]]:
    """Per-id event sequences of one user's journey."""
    return {
        anon: [
            {"event": "$pageview", "distinct_id": anon, "properties": {"$set_once": {"first_seen": "anon"}}}
            for _ in range(3)
        ],
        user: [
            {
                "event": "$identify",
                "distinct_id": user,
                "properties": {"$anon_distinct_id": anon},
                "$set": {"email": "u@example.com"},
            },
            {"event": "$create_alias", "distinct_id": user, "properties": {"alias": alias}},
            {"event": "purchase", "distinct_id": user, "properties": {"amount": 3}},
        ],
        alias: [{"event": "app_open", "distinct_id": alias, "properties": {}} for _ in range(2)],
    }


def interleave(per_id: dict[str, list[dict[str, Any]]], seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    queues = {k: list(v) for k, v in per_id.items()}
    out = []
    while any(queues.values()):
        key = rng.choice([k for k, q in queues.items() if q])
        out.append(queues[key].pop(0))
    return out


def changelog_mapping(stack: Stack, team_id: int) -> dict[str, str]:
    """Fold the processors' identity table changelog: what the Faust tables hold now."""

    async def read() -> dict[str, Any]:
        topic = f"{stack.prefix}processors-identity-changelog"
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=KAFKA, auto_offset_reset="earliest", group_id=None)
        await consumer.start()
        table: dict[str, Any] = {}
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                if not batch:
                    return table
                for messages in batch.values():
                    for m in messages:
                        key = ujson.loads(m.key)
                        table[key] = None if m.value is None else ujson.loads(m.value)
        finally:
            await consumer.stop()

    table = asyncio.run(read())
    prefix = f"i:{team_id}:"
    ids = {k[len(prefix) :]: v for k, v in table.items() if k.startswith(prefix) and v}
    return {d: person_of(team_id, d, record) for d, record in ids.items()}


def stored_events(stack: Stack, where: str) -> dict[str, int]:
    """Rows, distinct uuids and rows after FINAL (ReplacingMergeTree's merge, applied at query time) of
    the events matching ``where``."""
    rows = stack.sql(
        "SELECT count() AS rows, uniqExact(uuid) AS uuids, any(team_id) AS team, "
        f"(SELECT count() FROM events FINAL WHERE {where}) AS final FROM events WHERE {where}"
    )
    return {k: int(v) for k, v in rows[0].items()}


def poll_all_stored(stack: Stack, where: str, expected: int, timeout: float, **kwargs: Any) -> dict[str, int]:
    """Wait until every event (by uuid) is stored; at-least-once may have stored some twice, the copies
    have the same uuid and sorting key and FINAL must leave exactly one row per event."""

    def complete() -> dict[str, int] | None:
        counts = stored_events(stack, where)
        return counts if counts["uuids"] == expected else None

    try:
        stored = poll(complete, timeout=timeout, what=f"all {expected} events in ClickHouse", **kwargs)
    except AssertionError as exc:
        stack.dump_logs()
        raise AssertionError(f"{exc}; stored: {stored_events(stack, where)}") from None
    assert stored["final"] == expected, stored
    return stored


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_chain_across_partitions_ends_in_one_person(two_workers: Stack, seed: int) -> None:
    stack = two_workers
    team = stack.team(f"identity-{seed}")
    api_key = team.api_key
    anon, user, alias = ids_on_distinct_partitions(team.team_id, f"s{seed}")
    events = interleave(chain(anon, user, alias), seed)
    for event in events:
        status, body = stack.post("/capture/", {**event, "api_key": api_key})
        assert status == 200, body

    def mapping() -> list[dict[str, Any]] | None:
        rows = stack.sql(
            "SELECT d.distinct_id AS distinct_id, toString(d.person_id) AS person_id, d.team_id AS team_id "
            "FROM person_distinct_id_current AS d "
            f"WHERE d.distinct_id IN ('{anon}', '{user}', '{alias}')"
        )
        return rows if len(rows) == 3 and len({r["person_id"] for r in rows}) == 1 else None

    rows = poll(mapping, timeout=60, what=f"one person for {anon}, {user}, {alias}")
    person_id = rows[0]["person_id"]
    team_id = int(rows[0]["team_id"])

    persons = stack.sql(
        f"SELECT toString(id) AS id, properties, is_identified FROM person_current WHERE team_id = {team_id}"
    )
    assert [p["id"] for p in persons] == [person_id]
    props = ujson.loads(persons[0]["properties"])
    assert props["email"] == "u@example.com" and props["first_seen"] == "anon"
    assert int(persons[0]["is_identified"]) == 1

    # At-least-once: a rebalance of the two workers may re-emit an event (same uuid, one row after FINAL).
    poll_all_stored(stack, f"team_id = {team_id}", len(events), timeout=30)
    # The Faust table (its changelog) agrees with ClickHouse.
    table = changelog_mapping(stack, team_id)
    assert {table[anon], table[user], table[alias]} == {person_id}


def test_worker_killed_mid_stream_changes_nothing(two_workers: Stack) -> None:
    """SIGKILL one of the two workers while users are being merged; restart it. Every user still ends
    as exactly one person holding its three ids, and every event is in ClickHouse once (by uuid)."""
    stack = two_workers
    api_key = stack.create_team("sigkill")
    users = 150
    per_id: list[dict[str, Any]] = []
    for u in range(users):
        journey = chain(f"k-anon-{u}", f"k-user-{u}", f"k-alias-{u}")
        per_id += interleave(journey, seed=u)
    batches = [per_id[i : i + 100] for i in range(0, len(per_id), 100)]
    for n, batch in enumerate(batches):
        status, body = stack.post("/batch/", {"api_key": api_key, "batch": batch})
        assert status == 200, body
        if n == len(batches) // 3:
            stack.kill("processor", only_one=True)
            stack.spawn("processor")

    stored = poll_all_stored(stack, "distinct_id LIKE 'k-%'", len(per_id), timeout=180, interval=1)
    team_id = stored["team"]

    def mapped() -> list[dict[str, Any]] | None:
        rows = stack.sql(
            "SELECT replaceRegexpOne(distinct_id, '^k-[a-z]+-', '') AS user, uniqExact(person_id) AS persons, "
            "count() AS ids FROM person_distinct_id_current "
            f"WHERE team_id = {team_id} GROUP BY user"
        )
        done = len(rows) == users and all(int(r["persons"]) == 1 and int(r["ids"]) == 3 for r in rows)
        return rows if done else None

    poll(mapped, timeout=120, interval=1, what="one person per user after the crash")
    live = stack.sql(f"SELECT count() AS n FROM person_current WHERE team_id = {team_id}")
    assert int(live[0]["n"]) == users
