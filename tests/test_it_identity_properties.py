"""The real processors against the reference model: Hypothesis histories through the whole stack.

tests/test_unit_protocol.py runs the protocol's pure steps through a simulated pipeline; this runs the
real one - gateway, Kafka, several Faust workers, sink, ClickHouse - with one worker SIGKILLed and
replaced part-way, and checks that what ClickHouse answers is what the model (tests/identity_model.py)
says, history by history.

* **Histories.** ``N`` single-team histories of ``histories(teams=(1, 1), group_types=FIVE_TYPES)``,
  drawn up front by :func:`draw_histories`: a ``@given`` collector run for ``max_examples`` examples with
  a fixed ``@seed``, no example database and the generate phase only, so the same seed draws the same
  histories on every machine (``EVENTPIPE_PROPERTY_SEED`` picks another; the seed is printed). Only
  non-empty, distinct histories are kept. They are not shrunk: a failure prints the team's history.
* **Teams.** Each history gets its own real team. Its events take the team's id, and their uuids get the
  team id in their top 32 bits: unique across teams, in the same relative (string) order as before, which
  the model's tie-breaks between equal timestamps depend on. The model runs on the rewritten events.
* **Sending.** Each team's history is cut into ``/batch/`` bodies of 1-12 events (``to_capture_payload``)
  and the teams' bodies are interleaved at random, one request at a time, so each distinct id's events
  reach Kafka in history order. After a third of the requests one worker is SIGKILLed and a new one
  spawned (as tests/test_it_identity.py's kill test does).
* **Reading.** Once every team has its event rows (the model's count, by uuid) and the processors' and
  the sink's consumer groups have no lag, the answer is read the way tests/identity_sim.py's
  ``Sim.outcome`` reads its rows: the mapping from ``person_distinct_id`` (argMax by version), live
  persons from ``person`` (argMax, not deleted), each event's person resolved through
  ``person_distinct_id_overrides_current`` (docs/sql.md; personless rows keep their own id), groups
  (argMax), warnings as a set (at-least-once may store one twice), group types from the lanes'
  ``L:{team}:types`` keys in the identity changelog, and each team's merge order from the identity inbox
  (its ``merge`` requests, first per uuid, in offset order: a team's lane is one partition). The expected
  outcome is ``run_with_lane_order(history, merge_order)``; the two must have the same ``order_free()``.
  Two rows of one key at one version must also agree (as ``Sim.outcome`` asserts).

``make test`` runs 200 histories on 2 workers / 4 partitions and 200 on 3 workers / 8 partitions;
``make soak`` runs 2000 on each (``EVENTPIPE_SOAK_HISTORIES``).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import threading
import time
import uuid as uuidlib
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import ujson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from hypothesis import HealthCheck, Phase, given, seed, settings

from eventpipe.kafka import create_team, topics_for
from eventpipe.teams import Team
from processors.identity import personless_id
from tests.identity_model import Event, Outcome, PersonView, histories, run, run_with_lane_order, to_capture_payload
from tests.stack import Stack, poll

FIVE_TYPES = ("company", "project", "org", "team", "store")  # more make indexes depend on arrival order
SEED = int(os.environ.get("EVENTPIPE_PROPERTY_SEED", "20240601"))
HISTORIES = 200
SOAK_HISTORIES = int(os.environ.get("EVENTPIPE_SOAK_HISTORIES", "2000"))


# -- drawing -------------------------------------------------------------------------------------------------


def draw_histories(n: int, seed_: int, max_examples: int | None = None) -> list[list[Event]]:
    """``n`` non-empty, distinct single-team histories, the same ones for the same seed.

    A ``@given`` collector (not a test of its own: nothing is asserted, nothing shrunk) with a fixed seed,
    no database and only the generate phase is deterministic; ``.example()`` is not (and is meant for the
    shell). Hypothesis may skip a draw it already made, so it is asked for more than ``n``."""
    drawn: list[list[Event]] = []
    seen: set[str] = set()

    @seed(seed_)
    @settings(
        max_examples=max_examples or 2 * n + 50,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(history=histories(teams=(1, 1), group_types=FIVE_TYPES))
    def collect(history: list[Event]) -> None:
        fingerprint = repr(history)
        if history and fingerprint not in seen and len(drawn) < n:
            seen.add(fingerprint)
            drawn.append(history)

    collect()
    if len(drawn) < n:
        return draw_histories(n, seed_ + 1, None) if max_examples else draw_histories(n, seed_, 8 * n + 200)
    return drawn


def for_team(history: list[Event], team_id: int) -> list[Event]:
    """The history as the events of team ``team_id``: the team id goes into the uuids' top 32 bits, which
    keeps them unique across teams and in the same order within one."""
    return [replace(e, team_id=team_id, uuid=str(uuidlib.UUID(int=(team_id << 96) | uuidlib.UUID(e.uuid).int)))
            for e in history]


@dataclass
class Case:
    team_id: int
    api_key: str
    history: list[Event]


def make_cases(stack: Stack, drawn: list[list[Event]], at_once: int = 6) -> list[Case]:
    """A real team per history. Teams are created a few at a time (``create_team`` retries an id another
    writer took first, up to 10 times), which is several times faster than one after the other."""

    async def create() -> list[Team]:
        teams: list[Team] = []
        for start in range(0, len(drawn), at_once):
            names = [f"property-{n}" for n in range(start, min(start + at_once, len(drawn)))]
            teams += await asyncio.gather(*(create_team(stack.settings, name) for name in names))
        return teams

    teams = asyncio.run(create())
    assert len({t.team_id for t in teams}) == len(teams)
    return [Case(t.team_id, t.api_key, for_team(h, t.team_id)) for t, h in zip(teams, drawn, strict=True)]


# -- sending -------------------------------------------------------------------------------------------------


def send(stack: Stack, cases: list[Case], rng: random.Random, senders: int = 4) -> int:
    """Every team's events through the gateway, one worker SIGKILLed and replaced after a third of the
    requests. Each of ``senders`` threads owns some teams and sends their bodies one request at a time,
    its teams interleaved at random; a team's bodies go in order, so each distinct id's events reach
    Kafka in history order. Returns the number of requests."""
    queues = [[body for _, body in to_capture_payload(c.history, {c.team_id: c.api_key},
                                                       max_batch=rng.randint(1, 12))] for c in cases]
    rng.shuffle(queues)
    total = sum(map(len, queues))
    lock = threading.Lock()
    sent = [0]

    def sender(mine: list[list[dict[str, Any]]], order: random.Random) -> None:
        while ready := [q for q in mine if q]:
            body = order.choice(ready).pop(0)
            status, answer = poll(lambda b=body: _post_known(stack, b), timeout=30, what="a team the gateway knows")
            assert status == 200, answer
            with lock:
                sent[0] += 1
                kill = sent[0] == total // 3
            if kill:
                stack.kill("processor", only_one=True)
                stack.spawn("processor")

    with ThreadPoolExecutor(senders) as pool:
        futures = [pool.submit(sender, queues[i::senders], random.Random(rng.random())) for i in range(senders)]
        for future in futures:
            future.result()
    return total


def _post_known(stack: Stack, body: dict[str, Any]) -> tuple[int, Any] | None:
    """POST a body; None (try again) while the gateway does not know the brand-new team yet."""
    status, answer = stack.post("/batch/", body)
    return None if status == 401 else (status, answer)


# -- waiting -------------------------------------------------------------------------------------------------


def lag(stack: Stack) -> dict[str, int]:
    """Messages not yet committed by the processors (raw events, inbox) and by the sink (row topics)."""
    out: dict[str, int] = defaultdict(int)
    for (stage, _topic, _partition), n in lag_by_partition(stack).items():
        out[stage] += n
    return {"processors": out["processors"], "sink": out["sink"]}


def lag_by_partition(stack: Stack) -> dict[tuple[str, str, int], int]:
    """(stage, topic, partition) -> messages its consumer group has not committed, where not 0."""
    topics = topics_for(stack.settings)
    partitions = stack.settings.partitions

    async def read() -> dict[tuple[str, str, int], int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka)
        consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka)
        await admin.start()
        await consumer.start()
        try:
            out = {}
            for stage, names in (("processors", [topics.raw_events, topics.identity_inbox]),
                                 ("sink", list(topics.sink_tables()))):
                committed = await admin.list_consumer_group_offsets(topics.group(stage))
                tps = [TopicPartition(t, p) for t in names for p in range(partitions)]
                ends = await consumer.end_offsets(tps)
                for tp in tps:
                    behind = ends[tp] - (committed[tp].offset if tp in committed else 0)
                    if behind:
                        out[(stage, tp.topic[len(stack.prefix):], tp.partition)] = behind
            return out
        finally:
            await consumer.stop()
            await admin.close()

    return asyncio.run(read())


def wait_until_stored(stack: Stack, expected: dict[int, int], timeout: float) -> None:
    """Every team's event rows (by uuid) in ClickHouse, then no lag anywhere: nothing left in flight."""
    client = stack.clickhouse_client()
    try:

        def stored() -> bool:
            rows = client.execute("SELECT team_id, uniqExact(uuid) FROM events GROUP BY team_id")
            return {int(t): int(n) for t, n in rows if int(t) in expected} == {t: n for t, n in expected.items() if n}

        deadline = time.monotonic() + timeout
        try:
            poll(stored, timeout=timeout, interval=1, what="every team's events in ClickHouse")
            poll(lambda: not any(lag(stack).values()), timeout=max(deadline - time.monotonic(), 10), interval=1,
                 what="no consumer lag")
        except AssertionError:
            rows = client.execute("SELECT team_id, uniqExact(uuid) FROM events GROUP BY team_id")
            got = {int(t): int(n) for t, n in rows}
            short = {t: (got.get(t, 0), n) for t, n in expected.items() if got.get(t, 0) != n}
            raise AssertionError(
                f"teams short of events (stored, expected): {short}; lag {lag_by_partition(stack)}; "
                f"logs in {stack.home}"
            ) from None
    finally:
        client.disconnect()


# -- reading -------------------------------------------------------------------------------------------------


def read_topic(stack: Stack, topic: str, json_keys: bool = False) -> list[tuple[int, int, Any, Any]]:
    """(partition, offset, key, value) of every message of ``topic`` up to its end now, the values (and with
    ``json_keys`` the keys) JSON-decoded."""
    partitions = stack.settings.partitions

    async def read() -> list[tuple[int, int, Any, Any]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka, enable_auto_commit=False, group_id=None)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            out: list[tuple[int, int, Any, Any]] = []
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                batch = await consumer.getmany(timeout_ms=1000)
                for tp, messages in batch.items():
                    out += [(tp.partition, m.offset, ujson.loads(m.key) if json_keys and m.key else m.key,
                             None if m.value is None else ujson.loads(m.value)) for m in messages]
            return out
        finally:
            await consumer.stop()

    return asyncio.run(read())


def merge_orders(stack: Stack) -> tuple[dict[int, list[str]], dict[int, set[int]]]:
    """Per team, the uuids of its merges in the order its lane decided them (the first request of each,
    in offset order), and the inbox partitions its merge requests were on (one: the lane's)."""
    orders: dict[int, list[str]] = defaultdict(list)
    lanes: dict[int, set[int]] = defaultdict(set)
    seen: set[str] = set()
    inbox = topics_for(stack.settings).identity_inbox
    for partition, _offset, _key, message in sorted(read_topic(stack, inbox), key=lambda m: (m[0], m[1])):
        if isinstance(message, dict) and message.get("k") == "merge":
            team = int(message["team"])
            lanes[team].add(partition)
            if message["uuid"] not in seen:
                seen.add(message["uuid"])
                orders[team].append(message["uuid"])
    return orders, lanes


def identity_table(stack: Stack) -> dict[str, Any]:
    """The processors' ``identity`` table as its changelog holds it now."""
    table: dict[str, Any] = {}
    for _p, _o, key, value in read_topic(stack, f"{stack.prefix}processors-identity-changelog", json_keys=True):
        table[key] = value
    return table


def parked(stack: Stack) -> dict[str, list[str]]:
    """Ids still waiting for their lane (``i:team:id`` records with a queue): id key -> queued uuids."""
    return {k: [q["uuid"] for q in v["q"]] for k, v in identity_table(stack).items()
            if isinstance(k, str) and k.startswith("i:") and isinstance(v, dict) and v.get("q")}


def lane_group_types(stack: Stack) -> dict[int, dict[str, int]]:
    """Each team's group types as its lane holds them (``L:{team}:types`` in the identity changelog)."""
    table = identity_table(stack)
    return {int(k.split(":")[1]): dict(v) for k, v in table.items()
            if isinstance(k, str) and k.startswith("L:") and k.endswith(":types") and v}


def stored_outcomes(stack: Stack, teams: set[int]) -> tuple[dict[int, Outcome], dict[int, list[str]]]:
    """What ClickHouse answers, per team, as the model's Outcome (tests/identity_sim.py ``Sim.outcome``),
    and per team the problems an Outcome cannot show (two rows of one key at one version that differ, an
    event whose copies resolve to different persons)."""
    problems: dict[int, list[str]] = defaultdict(list)
    client = stack.clickhouse_client()
    try:
        q = client.execute
        mapping = {(int(t), d): p for t, d, p in q(
            "SELECT team_id, distinct_id, toString(person_id) FROM person_distinct_id_current")}
        overrides = {(int(t), d): p for t, d, p in q(
            "SELECT team_id, distinct_id, toString(person_id) FROM person_distinct_id_overrides_current")}
        person_rows = q("SELECT team_id, toString(id), properties, is_identified FROM person_current")
        group_rows = q("SELECT team_id, group_type_index, group_key, argMax(group_properties, version) FROM groups "
                       "GROUP BY team_id, group_type_index, group_key")
        warning_rows = q("SELECT team_id, type, details FROM ingestion_warnings")
        event_rows = q("SELECT toString(uuid), team_id, distinct_id, toString(person_id), "
                       "`$group_0`, `$group_1`, `$group_2`, `$group_3`, `$group_4` FROM events")
        for table, key, content in (
            ("person_distinct_id", "team_id, distinct_id", "person_id, is_deleted"),
            ("person_distinct_id_overrides", "team_id, distinct_id", "person_id, is_deleted"),
            ("person", "team_id, id", "properties, is_identified, is_deleted"),
            ("groups", "team_id, group_type_index, group_key", "group_properties"),
        ):
            for team, k, version in q(f"SELECT team_id, tuple({key}), version FROM {table} "
                                      f"GROUP BY {key}, version HAVING uniqExact({content}) > 1"):
                problems[int(team)].append(f"{table}: two different rows of {k} at version {version}")
    finally:
        client.disconnect()

    group_types = lane_group_types(stack)
    ids_of: dict[str, set[str]] = defaultdict(set)
    for (_t, d), p in mapping.items():
        ids_of[p].add(d)
    parts: dict[int, dict[str, Any]] = {
        t: {"mapping": {}, "persons": {}, "groups": {}, "warnings": set(), "event_person": {}, "event_groups": {},
            "team_of": {}}
        for t in teams
    }
    for (t, d), p in mapping.items():
        if t in parts:
            parts[t]["mapping"][(t, d)] = p
    for t, pid, properties, identified in person_rows:
        if int(t) in parts:
            parts[int(t)]["persons"][pid] = PersonView(int(t), json.loads(properties), bool(identified),
                                                       frozenset(ids_of.get(pid, set())))
    for t, index, key, properties in group_rows:
        if int(t) in parts:
            parts[int(t)]["groups"][(int(t), int(index), key)] = json.loads(properties)
    for t, kind, details in warning_rows:
        if int(t) in parts:
            parts[int(t)]["warnings"].add((int(t), kind, details))
    for u, t, d, person, *columns in event_rows:
        t = int(t)
        if t not in parts:
            continue
        if person != personless_id(t, d):  # the model keeps personless rows apart (SQL would not)
            person = overrides.get((t, d), person)  # how docs/sql.md resolves an event's person
        previous = parts[t]["event_person"].setdefault(u, person)
        if previous != person:
            problems[t].append(f"event {u} stored twice, resolving to {previous} and to {person}")
        parts[t]["event_groups"][u] = tuple(columns)
        parts[t]["team_of"][u] = t
    outcomes = {
        t: Outcome(mapping=v["mapping"], persons=v["persons"], groups=v["groups"],
                   group_types={t: group_types.get(t, {})},
                   warnings=[(team, kind, json.loads(details)) for team, kind, details in sorted(v["warnings"])],
                   event_person=v["event_person"], event_groups=v["event_groups"], _team_of_uuid=v["team_of"])
        for t, v in parts.items()
    }
    return outcomes, problems


def comparable(out: Outcome) -> dict[str, Any]:
    """``order_free()`` with the warnings as a set (at-least-once may store a warning twice)."""
    view = json.loads(out.order_free())
    view["warnings"] = sorted(set(view["warnings"]))
    return view


def story(case: Case, order: list[str]) -> str:
    lines = [f"team {case.team_id}, {len(case.history)} events (uuid tail, id, event, properties, top level):"]
    for e in case.history:
        top = {k: v for k, v in (("$set", e.set), ("$set_once", e.set_once), ("$unset", e.unset),
                                 ("$groups", e.groups)) if v is not None}
        lines.append(f"  {e.uuid[-4:]} {e.timestamp[11:19]} {e.distinct_id!r} {e.event} {e.properties} {top or ''}")
    lines.append(f"  lane order: {[u[-4:] for u in order]}")
    return "\n".join(lines)


def mismatches(stack: Stack, cases: list[Case]) -> list[str]:
    """One report per team whose stored outcome is not the model's (empty: all agree)."""
    orders, lanes = merge_orders(stack)
    outcomes, problems = stored_outcomes(stack, {c.team_id for c in cases})
    reports = []
    for case in cases:
        t, order = case.team_id, orders.get(case.team_id, [])
        lines = list(problems.get(t, []))
        if len(lanes.get(t, set())) > 1:
            lines.append(f"merge requests on inbox partitions {sorted(lanes[t])}, not one lane")
        try:
            want = comparable(run_with_lane_order(case.history, order))
        except ValueError as exc:
            lines.append(f"the lane's merge order fits no linearisation of the history: {exc}")
        else:
            got = comparable(outcomes[t])
            lines += [f"{k}:\n    got  {got.get(k)}\n    want {want[k]}" for k in want if got.get(k) != want[k]]
        if lines:
            reports.append("\n".join([*lines, story(case, order)]))
    return reports


# -- the property --------------------------------------------------------------------------------------------


def check(stack: Stack, n: int, seed_: int) -> None:
    started = time.monotonic()
    drawn = draw_histories(n, seed_)
    cases = make_cases(stack, drawn)
    expected = {c.team_id: len(run(c.history).event_person) for c in cases}  # which rows exist: order-free
    teams_at = time.monotonic()
    requests = send(stack, cases, random.Random(seed_))
    sent_at = time.monotonic()
    try:
        wait_until_stored(stack, expected, timeout=240)
    except AssertionError as exc:
        waiting = parked(stack)
        dump = save_failure(stack, cases, [str(exc)])
        raise AssertionError("\n".join([
            str(exc), f"ids still parked, waiting for their lane ({len(waiting)}):",
            *[f"  {k}: {[u[-4:] for u in q]}" for k, q in sorted(waiting.items())[:20]],
            "offsets skipped and read again:", *heal_lines(stack), f"artefacts: {dump}",
        ])) from None
    stored_at = time.monotonic()
    reports = poll_mismatches(stack, cases, timeout=30)
    events = sum(len(c.history) for c in cases)
    print(f"\n{n} histories (seed {seed_}), {events} events in {requests} requests; teams {teams_at - started:.1f}s, "
          f"send {sent_at - teams_at:.1f}s, stored {stored_at - sent_at:.1f}s, "
          f"compared {time.monotonic() - stored_at:.1f}s", file=sys.stderr)
    if reports:
        dump = save_failure(stack, cases, reports)
        print(f"the failing teams' histories and inbox messages: {dump}", file=sys.stderr)
    heals = "\n".join(["the processors re-read skipped offsets (processors/transport.py):", *heal_lines(stack)])
    assert not reports, f"{len(reports)} of {n} teams differ from the model (seed {seed_}):\n\n" + "\n\n".join(
        [*reports[:5], heals if heal_lines(stack) else "no offsets were skipped and read again"])


def heal_lines(stack: Stack) -> list[str]:
    """The processors' log lines about offsets they skipped and read again (processors/transport.py)."""
    return [line.strip() for log in stack.logs if log.name.startswith("processor") and log.exists()
            for line in log.read_text(errors="replace").splitlines()
            if "skipped offsets" in line or "was never processed" in line]


def save_failure(stack: Stack, cases: list[Case], reports: list[str]) -> Path:
    """The reports, every history (as the model's events), where each event landed in the raw topic and
    every inbox message, as JSON in a file that outlives the stack (the run's temporary directory)."""
    topics = topics_for(stack.settings)
    inbox = read_topic(stack, topics.identity_inbox)
    raw = [(p, o, v.get("uuid")) for p, o, _k, v in read_topic(stack, topics.raw_events)]
    path = stack.home.parent / "property-failure.json"
    path.write_text(json.dumps({
        "reports": reports,
        "heals": heal_lines(stack),
        "cases": {c.team_id: [e.__dict__ for e in c.history] for c in cases},
        "raw": raw,
        "inbox": [[p, o, k.decode(errors="replace") if k else None, v] for p, o, k, v in inbox],
    }, default=str))
    return path


def poll_mismatches(stack: Stack, cases: list[Case], timeout: float) -> list[str]:
    """The comparison, repeated for a while if it fails (a row may still be on its way in spite of the lag
    check); the last reports."""
    deadline = time.monotonic() + timeout
    while True:
        reports = mismatches(stack, cases)
        if not reports or time.monotonic() > deadline:
            return reports
        time.sleep(2)


@pytest.fixture(scope="module")
def two_workers(kafka: str, clickhouse_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(Path(tmp_path_factory.mktemp("properties-2")), processors=2) as s:
        yield s


@pytest.fixture(scope="module")
def three_workers(kafka: str, clickhouse_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = Path(tmp_path_factory.mktemp("properties-3"))
    with Stack(home, processors=3, extra_env={"EVENTPIPE_PARTITIONS": "8"}) as s:
        yield s


@pytest.mark.timeout(600)
def test_two_workers_four_partitions_end_as_the_model_says(two_workers: Stack) -> None:
    check(two_workers, HISTORIES, SEED)


@pytest.mark.timeout(600)
def test_three_workers_eight_partitions_end_as_the_model_says(three_workers: Stack) -> None:
    check(three_workers, HISTORIES, SEED + 1)


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_soak_two_workers(two_workers: Stack) -> None:
    check(two_workers, SOAK_HISTORIES, SEED + 2)


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_soak_three_workers(three_workers: Stack) -> None:
    check(three_workers, SOAK_HISTORIES, SEED + 3)
