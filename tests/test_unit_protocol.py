"""The partitioned identity protocol (processors/protocol.py) against the reference model, no broker.

Hypothesis histories go through a simulation (tests/identity_sim.py) with 4-8 partitions, a random
schedule of every partition's two logs and, in the crash tests, workers dying mid-step with their state
rolled back to any prefix after the last commit. What ClickHouse would answer must equal the model run
in the order the merge lanes decided the merges."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors import protocol
from processors.identity import new_person_id, personless_id
from tests.identity_model import Event, Outcome, histories, run, run_with_lane_order
from tests.identity_sim import Sim

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIVE_TYPES = ("company", "project", "org", "team", "store")  # more make indexes depend on arrival order


def ev(d: str, event: str = "$pageview", at: int = 0, n: list[int] = [0], **props: Any) -> Event:  # noqa: B006
    n[0] += 1
    return Event(team_id=1, distinct_id=d, event=event, uuid=f"00000000-0000-0000-0000-{n[0]:012d}",
                 timestamp=f"2024-01-01 00:00:{at:02d}.000000", properties=props)


def simulate(history: list[Event], partitions: int, seed: int, crash_rate: float = 0.0) -> Sim:
    sim = Sim(partitions, seed, crash_rate=crash_rate)
    sim.capture(history)
    sim.run()
    return sim


def comparable(out: Outcome, with_warnings: bool = True) -> dict[str, Any]:
    view = json.loads(out.order_free())
    if not with_warnings:
        view["warnings"] = sorted(set(view["warnings"]))
    return view


def same(got: dict[str, Any], want: dict[str, Any], history: list[Event], sim: Sim) -> None:
    if got == want:
        return
    lines = [f"{k}:\n  got  {got[k]}\n  want {want[k]}" for k in want if got.get(k) != want[k]]
    story = "\n".join(f"  {e.uuid[-3:]} {e.distinct_id} {e.event} {e.properties} set={e.set}" for e in history)
    raise AssertionError("\n".join([*lines, "history:", story, f"lane order: {sim.merge_order()}"]))


def expected(history: list[Event], sim: Sim) -> Outcome:
    return run_with_lane_order(history, sim.merge_order())


def test_an_identify_merges_across_partitions() -> None:
    history = [ev("anon", **{"$set": {"a": 1}}), ev("user", "$identify", at=1, **{"$anon_distinct_id": "anon"}),
               ev("anon", at=2, **{"$set": {"b": 2}})]
    for seed in range(20):
        out = simulate(history, partitions=8, seed=seed).outcome()
        person = out.mapping[(1, "anon")]
        assert out.mapping[(1, "user")] == person == new_person_id(1, "anon")
        assert out.persons[person].properties == {"a": 1, "b": 2}
        assert out.persons[person].is_identified
        assert set(out.event_person.values()) == {person}


def test_a_merge_of_two_persons_leaves_overrides_for_the_moved_ids() -> None:
    history = [ev("anon", **{"$set": {"a": 1}}), ev("user", at=1, **{"$set": {"a": 2}}),
               ev("user", "$identify", at=2, **{"$anon_distinct_id": "anon"})]
    sim = simulate(history, partitions=4, seed=3)
    out = sim.outcome()
    user = new_person_id(1, "user")
    assert out.mapping == {(1, "anon"): user, (1, "user"): user}
    assert out.persons[user].properties == {"a": 2}  # the later $set wins, whichever side it came from
    assert [(o["distinct_id"], o["person_id"]) for o in sim.rows["overrides"]] == [("anon", user)]
    assert out.event_person[history[0].uuid] == user  # the anonymous event resolves through the override


def test_an_identified_source_is_refused() -> None:
    history = [ev("a1"), ev("u1", "$identify", at=1, **{"$anon_distinct_id": "a1"}),
               ev("u2", at=2), ev("u2", "$identify", at=3, **{"$anon_distinct_id": "u1"})]
    refused = 0
    for seed in range(20):  # which identify the lane decides first depends on the schedule
        sim = simulate(history, partitions=4, seed=seed)
        out = sim.outcome()
        assert comparable(out) == comparable(expected(history, sim))
        if sim.merge_order() == [history[1].uuid, history[3].uuid]:
            assert out.mapping[(1, "u2")] != out.mapping[(1, "u1")]
            assert [w[1] for w in out.warnings] == ["cannot_merge_already_identified"]
            refused += 1
    assert refused


def test_a_replayed_lane_request_repeats_its_decision() -> None:
    state: dict[str, Any] = {}
    request = {"k": "merge", "team": 1, "target": "u", "source": "a", "dangerous": False,
               "target_has_person": True, "uuid": "x", "now": "2024-01-01 00:00:00.000000"}
    first = protocol.on_inbox(state, 0, request)
    assert first.wal is not None
    state[first.wal] = first.to_json()  # the crash came after the record, before the writes
    again = protocol.on_inbox(state, 0, request)
    assert again.to_json() == first.to_json()
    state.update(first.writes)  # all applied: the same answer once more, but no write (it could undo a later one)
    again = protocol.on_inbox(state, 0, request)
    assert (again.sends, again.rows, again.writes) == (first.sends, first.rows, {})


@PROPERTY
@given(history=histories(group_types=FIVE_TYPES), partitions=st.integers(4, 8), seed=st.integers(0, 2**32))
def test_any_schedule_ends_as_the_model_says(history: list[Event], partitions: int, seed: int) -> None:
    sim = simulate(history, partitions, seed)
    same(comparable(sim.outcome()), comparable(expected(history, sim)), history, sim)


@PROPERTY
@given(history=histories(group_types=FIVE_TYPES), partitions=st.integers(4, 8), seed=st.integers(0, 2**32))
def test_crashes_at_any_point_end_as_the_model_says(history: list[Event], partitions: int, seed: int) -> None:
    sim = simulate(history, partitions, seed, crash_rate=0.05)
    # At-least-once: a warning may be written twice; everything else must be exactly the model's.
    same(comparable(sim.outcome(), False), comparable(expected(history, sim), False), history, sim)


def test_a_personless_event_uses_its_ids_existing_person() -> None:
    off = {"$process_person_profile": False}
    history = [ev("anon", **off), ev("anon", at=1, **{"$set": {"a": 1}}), ev("anon", at=2, **off),
               ev("user", "$identify", at=3, **{"$anon_distinct_id": "anon"}), ev("anon", at=4, **off)]
    for seed in range(10):
        sim = simulate(history, partitions=4, seed=seed)
        out = sim.outcome()
        assert comparable(out) == comparable(expected(history, sim))
        assert out.event_person[history[0].uuid] == personless_id(1, "anon")  # it had no person yet
        assert out.event_person[history[2].uuid] == out.event_person[history[4].uuid] == new_person_id(1, "anon")
        rows = {r["uuid"]: r for r in sim.rows["events"]}
        assert json.loads(rows[history[2].uuid]["person_properties"]) == {}  # PostHog keeps them off the event


def test_a_merge_source_without_events_of_its_own_stays_personless_whatever_the_schedule() -> None:
    off = {"$process_person_profile": False}
    history = [ev("user"), ev("user", "$identify", at=1, **{"$anon_distinct_id": "anon"}),
               *[ev("anon", at=2 + i, **off) for i in range(3)]]
    for seed in range(20):
        sim = simulate(history, partitions=4, seed=seed)
        out = sim.outcome()
        assert comparable(out) == comparable(expected(history, sim))
        assert {out.event_person[e.uuid] for e in history[2:]} == {personless_id(1, "anon")}


def test_without_merges_no_message_crosses_partitions() -> None:
    """Ids never merged cost no cross-partition step: the inbox carries nothing for them."""
    rng = random.Random(7)
    history = [ev(f"id-{rng.randrange(30)}", at=i % 60, **{"$set": {"k": i}}) for i in range(300)]
    sim = simulate(history, partitions=8, seed=1)
    assert sum(len(p.logs["inbox"]) for p in sim.parts) == 0
    assert comparable(sim.outcome()) == comparable(run(history))


def test_stored_rows_per_kind_are_bounded_by_the_events() -> None:
    history = [ev("anon", **{"$set": {"a": 1}}), ev("user", "$identify", at=1, **{"$anon_distinct_id": "anon"})]
    sim = simulate(history, partitions=4, seed=5)
    counts = Counter({k: len(v) for k, v in sim.rows.items()})
    assert counts["events"] == 2


def _merge(target: str, source: str, uuid: str, has_person: bool = True) -> dict[str, Any]:
    return {"k": "merge", "team": 1, "target": target, "source": source, "dangerous": False,
            "target_has_person": has_person, "uuid": uuid, "now": "2024-01-01 00:00:00.000000"}


def test_a_lane_step_records_its_merge_outcome() -> None:
    state: dict[str, Any] = {}
    assert protocol.on_inbox(state, 0, _merge("u0", "a0", "j", has_person=False)).outcome == "joined"
    merged = protocol.on_inbox(state, 0, _merge("u", "a", "m"))
    assert merged.outcome == "merged"
    state.update(merged.writes)
    assert protocol.on_inbox(state, 0, _merge("u", "a", "s")).outcome == "same"
    refused = protocol.on_inbox(state, 0, _merge("v", "u", "r"))  # u's person is identified now
    assert refused.outcome == "refused"
    assert [w["type"] for w in refused.rows["warnings"]] == ["cannot_merge_already_identified"]
    types = {"k": "types", "team": 1, "d": "u", "uuid": "t", "want": ["company"], "now": "2024-01-01"}
    assert protocol.on_inbox(state, 0, types).outcome is None  # not a merge


def test_a_recorded_merge_decision_sent_again_has_no_outcome() -> None:
    state: dict[str, Any] = {}
    first = protocol.on_inbox(state, 0, _merge("u", "a", "x"))
    assert "outcome" not in first.to_json()  # the write-ahead record is unchanged
    state[first.wal] = first.to_json()  # type: ignore[index]
    again = protocol.on_inbox(state, 0, _merge("u", "a", "x"))
    assert (again.sends, again.outcome) == (first.sends, None)
