"""The reference model of tests/identity_model.py: every rule by example, then its properties with Hypothesis.

The properties are what the re-partitioned pipeline may rely on: with the merge order fixed the outcome does
not depend on how the other events interleave; person properties are a CRDT (merges commute, and a person's
properties equal a time-ordered replay of everything it received); the merge decisions are the processors'.
"""

from __future__ import annotations

import itertools
import json
import random
import uuid as uuidlib
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventpipe.contract import RawEvent
from gateway.events import RequestContext, parse_events
from processors.identity import new_person_id, personless_id
from processors.transform import person_ops as processors_person_ops
from tests.identity_model import (
    GROUP_TYPES,
    KEYS,
    VALUES,
    Event,
    KeyState,
    apply_properties,
    histories,
    interleavings,
    is_merge,
    lane_linearisation,
    person_ops,
    personless,
    run,
    run_with_lane_order,
    to_capture_payload,
    ts_at,
)

TEAM = 1
_uuids = itertools.count(1)
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ev(
    distinct_id: str,
    event: str = "$pageview",
    at: int = 0,
    team: int = TEAM,
    uuid: int | None = None,
    top: dict[str, Any] | None = None,
    **properties: Any,
) -> Event:
    """An event; ``at`` in seconds after the base time; ``top`` holds top-level $set/$set_once/$unset/$groups."""
    top = top or {}
    return Event(
        team_id=team,
        distinct_id=distinct_id,
        event=event,
        uuid=str(uuidlib.UUID(int=uuid if uuid is not None else next(_uuids))),
        timestamp=ts_at(at),
        properties=properties,
        set=top.get("$set"),
        set_once=top.get("$set_once"),
        unset=top.get("$unset"),
        groups=top.get("$groups"),
    )


def identify(user: str, anon: Any, **kw: Any) -> Event:
    return ev(user, "$identify", **{"$anon_distinct_id": anon}, **kw)


def alias(user: str, other: Any, **kw: Any) -> Event:
    return ev(user, "$create_alias", alias=other, **kw)


def dangerous(user: str, other: Any, **kw: Any) -> Event:
    return ev(user, "$merge_dangerously", alias=other, **kw)


def sets(who: str, at: int = 0, **values: Any) -> Event:
    return ev(who, at=at, **{"$set": values})


def npid(d: str, team: int = TEAM) -> str:
    return new_person_id(team, d)


def strict(value: Any) -> str:
    """Type-strict rendering: 1, 1.0 and True differ."""
    return json.dumps(value, sort_keys=True)


# ---------------------------------------------------------------------------------------------------------------------
# persons and merges, by example
# ---------------------------------------------------------------------------------------------------------------------


def test_a_plain_event_creates_an_unidentified_person_named_after_its_id() -> None:
    e = ev("anon")
    out = run([e, ev("anon")])
    assert out.mapping == {(TEAM, "anon"): npid("anon")}
    assert out.persons[npid("anon")].is_identified is False
    assert out.persons[npid("anon")].distinct_ids == {"anon"}
    assert out.event_person[e.uuid] == npid("anon")


def test_merge_neither_has_a_person_creates_the_sources_person() -> None:
    out = run([identify("user", "anon")])
    assert out.mapping == {(TEAM, "user"): npid("anon"), (TEAM, "anon"): npid("anon")}
    assert npid("user") not in out.persons
    person = out.persons[npid("anon")]
    assert person.is_identified and person.distinct_ids == {"user", "anon"}


def test_merge_target_has_none_joins_the_sources_person() -> None:
    out = run([ev("anon"), identify("user", "anon")])
    assert out.mapping[(TEAM, "user")] == npid("anon")
    assert out.persons[npid("anon")].is_identified
    assert set(out.persons) == {npid("anon")}


def test_merge_target_has_none_joins_an_identified_source_too() -> None:
    out = run([identify("user", "anon"), alias("other", "user")])
    assert out.person_of(TEAM, "other").distinct_ids == {"user", "anon", "other"}
    assert out.warnings == []


def test_merge_source_has_none_joins_the_targets_person() -> None:
    out = run([ev("user"), identify("user", "anon")])
    assert out.mapping[(TEAM, "anon")] == npid("user")
    person = out.persons[npid("user")]
    assert person.is_identified and person.distinct_ids == {"user", "anon"}


def test_merge_of_ids_already_in_one_person_changes_nothing() -> None:
    first = run([identify("user", "anon")])
    again = run([identify("user", "anon"), identify("user", "anon"), alias("anon", "user")])
    assert again.mapping == first.mapping and again.persons.keys() == first.persons.keys()
    assert again.warnings == []


def test_merge_both_have_persons_source_unidentified_moves_into_the_target() -> None:
    out = run([ev("anon"), ev("user"), identify("user", "anon")])
    assert set(out.persons) == {npid("user")}
    assert out.mapping[(TEAM, "anon")] == npid("user")
    assert out.persons[npid("user")].is_identified


def test_merge_moves_every_id_of_the_source_person() -> None:
    out = run([identify("u1", "a1"), ev("u2"), dangerous("u2", "a1")])
    assert out.person_of(TEAM, "u2").distinct_ids == {"u1", "a1", "u2"}
    assert set(out.persons) == {npid("u2")}


@pytest.mark.parametrize("merge", [identify, alias])
def test_merge_of_an_identified_source_is_refused(merge: Any) -> None:
    history = [identify("u1", "a1"), identify("u2", "a2"), merge("u2", "a1", **{"$set": {"k": 1}})]
    out = run(history)
    assert out.person_of(TEAM, "u1").distinct_ids == {"u1", "a1"}
    assert out.person_of(TEAM, "u2").distinct_ids == {"u2", "a2"}
    assert out.person_of(TEAM, "u2").properties == {"k": 1}  # the event still applies to its target
    assert out.person_of(TEAM, "a1").properties == {}
    assert out.warnings == [
        (TEAM, "cannot_merge_already_identified", {"target": "u2", "source": "a1", "source_person_id": npid("a1")})
    ]


def test_merge_dangerously_merges_an_identified_source() -> None:
    out = run([identify("u1", "a1"), identify("u2", "a2"), dangerous("u2", "a1")])
    assert out.warnings == []
    assert out.person_of(TEAM, "a1").distinct_ids == {"u1", "a1", "u2", "a2"}
    assert list(out.persons) == [npid("a2")]


@pytest.mark.parametrize(
    "event", [identify("same", "same"), alias("same", "same"), identify("same", None), ev("same", "$identify")]
)
def test_no_source_or_the_target_itself_is_a_plain_event(event: Event) -> None:
    out = run([event])
    assert out.mapping == {(TEAM, "same"): npid("same")}
    assert out.persons[npid("same")].is_identified is False and out.warnings == []


ILLEGAL_SAMPLE = ["anonymous", "Guest", "null", "'undefined'", "0", "[object Object]"]
# an empty distinct id never reaches the processors (the gateway refuses the request), an empty source does
CASES = [("user", bad) for bad in [*ILLEGAL_SAMPLE, "", "  "]] + [(bad, "anon") for bad in ILLEGAL_SAMPLE]


@pytest.mark.parametrize(("target", "source"), CASES)
def test_illegal_ids_refuse_the_merge_and_the_event_is_a_plain_event_of_the_target(target: str, source: str) -> None:
    e = identify(target, source, **{"$set": {"k": 1}})
    out = run([e])
    assert out.warnings == [(TEAM, "cannot_merge_with_illegal_distinct_id", {"target": target, "source": source})]
    assert out.mapping == {(TEAM, target): npid(target)}
    assert out.persons[npid(target)].is_identified is False
    assert out.persons[npid(target)].properties == {"k": 1}


@pytest.mark.parametrize(
    ("value", "becomes", "legal"),
    [
        (42, "42", True),
        (1.5, "1.5", True),
        (True, "true", False),
        ({"a": 1}, "[object Object]", False),
        (0, "0", False),
    ],
)
def test_non_string_sources_become_their_javascript_string(value: Any, becomes: str, legal: bool) -> None:
    out = run([alias("user", value)])
    if legal:
        assert out.person_of(TEAM, becomes).distinct_ids == {"user", becomes}
    else:
        assert out.warnings[0][1:] == ("cannot_merge_with_illegal_distinct_id", {"target": "user", "source": becomes})


def test_personless_events_touch_no_person_and_never_merge() -> None:
    off = {"$process_person_profile": False}
    e1, e2 = ev("anon", **off, **{"$set": {"k": 1}}), identify("user", "anon", **off)
    out = run([e1, e2])
    assert out.mapping == {} and out.persons == {}
    assert out.event_person == {e1.uuid: personless_id(TEAM, "anon"), e2.uuid: personless_id(TEAM, "user")}
    # a later non-personless event of the id gets a person; the earlier personless row keeps its own id
    e3 = ev("anon")
    out = run([e1, e3])
    assert out.event_person == {e1.uuid: personless_id(TEAM, "anon"), e3.uuid: npid("anon")}
    assert run([ev("anon", **{"$process_person_profile": "false"})]).mapping != {}  # only False itself counts


def test_a_personless_event_uses_the_person_its_ids_own_events_gave_it() -> None:
    off = {"$process_person_profile": False}
    plain, later = ev("anon"), ev("anon", **off)
    out = run([plain, later, identify("user", "anon", at=1)])
    assert out.event_person[later.uuid] == out.mapping[(TEAM, "anon")] == npid("anon")
    # "anon" joined user's person only through user's identify: its own events gave it none
    user_first = ev("user")
    merged = ev("anon", **off)
    out = run([user_first, identify("user", "anon", at=1), merged])
    assert out.mapping[(TEAM, "anon")] == npid("user")
    assert out.event_person[merged.uuid] == personless_id(TEAM, "anon")


def test_event_rows_get_the_person_of_the_final_mapping() -> None:
    before, merge = ev("anon"), ev("user")
    out = run([before, merge, identify("user", "anon")])
    assert out.event_person[before.uuid] == npid("user")  # the override, not the person it was created with


def test_teams_are_separate() -> None:
    out = run([identify("user", "anon", team=1), ev("user", team=2)])
    assert out.mapping == {(1, "user"): npid("anon", 1), (1, "anon"): npid("anon", 1), (2, "user"): npid("user", 2)}
    assert out.persons[npid("user", 2)].is_identified is False


# ---------------------------------------------------------------------------------------------------------------------
# person properties: the CRDT, by example
# ---------------------------------------------------------------------------------------------------------------------


def props(history: list[Event], d: str = "u") -> dict[str, Any]:
    return run(history).person_of(TEAM, d).properties


def test_set_is_last_writer_wins_by_timestamp_not_by_arrival() -> None:
    assert props([sets("u", 5, k="late"), sets("u", 1, k="early")]) == {"k": "late"}


def test_equal_timestamps_are_broken_by_uuid() -> None:
    hi, lo = ev("u", uuid=9, **{"$set": {"k": "hi"}}), ev("u", uuid=2, **{"$set": {"k": "lo"}})
    assert props([hi, lo]) == props([lo, hi]) == {"k": "hi"}


def test_unset_is_a_tombstone_in_the_register() -> None:
    unset = ev("u", at=3, **{"$unset": ["k"]})
    assert props([sets("u", 1, k=1), unset]) == {}
    assert props([unset, sets("u", 1, k=1)]) == {}  # an older $set arriving later stays dead
    assert props([unset, sets("u", 5, k=1)]) == {"k": 1}
    assert props([ev("u", at=3, **{"$unset": {"k": "ignored"}}), sets("u", 1, k=1)]) == {}  # dict: its keys


def test_set_once_keeps_the_earliest_and_loses_to_any_set() -> None:
    once = [ev("u", at=at, **{"$set_once": {"k": at}}) for at in (4, 2, 7)]
    assert props(once) == {"k": 2}
    assert props([*once, sets("u", 1, k="set")]) == {"k": "set"}  # a $set wins whatever its time


def test_set_once_after_an_unset_does_not_refill_the_key() -> None:
    """Deliberately unlike PostHog's sequential rule (docstring of tests/identity_model.py): staying
    order-free with it would need every later $set_once kept."""
    unset = ev("u", at=3, **{"$unset": ["k"]})
    early_once, late_once, later_once = (ev("u", at=at, **{"$set_once": {"k": at}}) for at in (2, 5, 8))
    assert props([sets("u", 1, k="s"), unset, later_once, late_once]) == {}
    assert props([early_once, unset]) == {}  # a $set_once older than the unset is dead too
    assert props([unset, early_once, sets("u", 1, k="s")]) == {}


def test_set_then_set_once_then_unset_leaves_nothing() -> None:
    history = [sets("u", 1, k="s"), ev("u", at=2, **{"$set_once": {"k": "o"}}), ev("u", at=3, **{"$unset": ["k"]})]
    for order in itertools.permutations(history):
        assert props(list(order)) == {}


def test_ops_of_one_event_apply_set_once_then_set_then_unset() -> None:
    assert props([ev("u", **{"$set": {"k": 1}, "$unset": ["k"]})]) == {}
    assert props([ev("u", **{"$set": {"k": 1}, "$set_once": {"k": 2}})]) == {"k": 1}
    assert props([ev("u", **{"$set_once": {"k": 2}, "$unset": ["k"]})]) == {}


def test_top_level_ops_are_merged_over_the_properties_ones() -> None:
    e = ev(
        "u",
        at=1,
        top={"$set": {"a": "top"}, "$unset": ["c"]},
        **{"$set": {"a": "inner", "b": "inner"}, "$unset": ["b"]},
    )
    assert person_ops(e) == ({"a": "top", "b": "inner"}, None, ["c"])  # $unset lists are not merged: top wins
    assert props([sets("u", 0, c=1), e]) == {"a": "top", "b": "inner"}
    assert props([ev("u", top={"$set": ["x"]}, **{"$set": {"a": 1}})]) == {}  # a non-dict top level still wins


def test_types_are_kept_apart() -> None:
    out = props([sets("u", 1, a=1, b=True, c=1.0), sets("u", 2, a=True), sets("u", 3, b=1.0)])
    assert strict(out) == strict({"a": True, "b": 1.0, "c": 1.0})


def test_a_merge_joins_properties_key_by_key_the_target_does_not_win() -> None:
    history = [
        sets("user", 5, a="user-late", b="user-early"),
        ev("anon", at=1, **{"$set": {"b": "anon-early"}, "$set_once": {"c": "anon-once"}}),
        sets("anon", 9, a="anon-later"),
        ev("anon", at=6, **{"$set": {"b": "anon-late"}, "$unset": ["d"]}),
        sets("user", 4, d="user-d"),
        identify("user", "anon"),
    ]
    want = {"a": "anon-later", "b": "anon-late", "c": "anon-once"}
    assert props(history, "user") == want
    # the other way round: the same properties, another person id
    swapped = [*history[:-1], dangerous("anon", "user")]
    assert props(swapped, "anon") == want


def test_merging_with_an_unset_tombstone_kills_an_older_set_of_the_other_side() -> None:
    history = [sets("user", 1, k="v"), ev("anon", at=2, **{"$unset": ["k"]}), identify("user", "anon")]
    assert props(history, "user") == {}


# ---------------------------------------------------------------------------------------------------------------------
# groups, by example
# ---------------------------------------------------------------------------------------------------------------------


def group(d: str, type_: str, key: Any, at: int = 0, **group_set: Any) -> Event:
    return ev(d, "$groupidentify", at=at, **{"$group_type": type_, "$group_key": key, "$group_set": group_set})


def test_group_types_are_indexed_first_come_first_served_up_to_five() -> None:
    history = [group("u", t, "k") for t in ["b", "a", "b", "c", "d", "e"]] + [ev("u", top={"$groups": {"f": "k"}})]
    history.append(group("u", "g", "k"))
    out = run(history)
    assert out.group_types == {TEAM: {"b": 0, "a": 1, "c": 2, "d": 3, "e": 4}}
    assert [w[1:] for w in out.warnings] == [
        ("group_type_limit_reached", {"group_type": "f", "max": 5}),
        ("group_type_limit_reached", {"group_type": "g", "max": 5}),
    ]
    assert (TEAM, 4, "k") in out.groups and len(out.groups) == 5


def test_group_properties_are_last_writer_wins_by_timestamp() -> None:
    history = [group("u", "co", "acme", 5, a="late", b=1), group("u", "co", "acme", 1, a="early", c=True)]
    out = run(history)
    assert strict(out.groups[(TEAM, 0, "acme")]) == strict({"a": "late", "b": 1, "c": True})
    assert run([group("u", "co", 7)]).groups == {(TEAM, 0, "7"): {}}  # the key is str()-ed; no $group_set: empty


def test_a_group_key_too_long_drops_the_event_but_not_its_person_ops() -> None:
    e = group("u", "co", "x" * 401)
    e = Event(**{**e.__dict__, "properties": {**e.properties, "$set": {"k": 1}}})
    out = run([e])
    assert out.warnings == [(TEAM, "group_key_too_long", {"group_type": "co", "length": 401})]
    assert out.groups == {} and out.group_types == {TEAM: {}} and out.event_person == {}
    assert out.person_of(TEAM, "u").properties == {"k": 1}
    assert run([group("u", "co", "x" * 400)]).groups == {(TEAM, 0, "x" * 400): {}}


def test_groups_on_events_fill_the_row_columns() -> None:
    e1 = ev("u", top={"$groups": {"co": "acme", "proj": None}})
    e2 = ev("u", **{"$groups": {"proj": 5, "co": "x"}})
    out = run([e1, e2])
    assert out.group_types == {TEAM: {"co": 0, "proj": 1}}  # a null key still claims its type's index
    assert out.event_groups == {e1.uuid: ("acme", "", "", "", ""), e2.uuid: ("x", "5", "", "", "")}
    assert out.groups == {}  # $groups alone writes no group


# ---------------------------------------------------------------------------------------------------------------------
# order: what depends on it and what does not
# ---------------------------------------------------------------------------------------------------------------------


def test_the_order_of_merges_decides_refusals() -> None:
    seen = [ev("u1"), ev("u2")]
    m1, m2 = identify("u1", "anon"), identify("u2", "anon")
    first, second = run([*seen, m1, m2]), run([*seen, m2, m1])
    assert first.person_of(TEAM, "anon").distinct_ids == {"anon", "u1"}
    assert second.person_of(TEAM, "anon").distinct_ids == {"anon", "u2"}
    assert first.warnings[0][1] == second.warnings[0][1] == "cannot_merge_already_identified"
    assert run_with_lane_order([*seen, m1, m2], [m2.uuid, m1.uuid]).order_free() == second.order_free()


def test_group_type_indexes_follow_arrival_order() -> None:
    a, b = group("u1", "a", "k"), group("u2", "b", "k")
    assert run([a, b]).group_types != run([b, a]).group_types
    assert run([a, b]).order_free() == run([b, a]).order_free()  # by type name they agree


def test_naming_a_new_person_after_the_target_would_make_the_outcome_depend_on_the_interleaving() -> None:
    """Why the new-person rule names the person after the source: the merge lane cannot tell whether the
    source's own events (on another partition) were processed first."""
    seen_first = [ev("anon"), identify("user", "anon")]
    merged_first = [identify("user", "anon"), ev("anon")]
    assert run(seen_first).mapping == run(merged_first).mapping  # both npid(anon)
    old = run(seen_first, new_person_of="target"), run(merged_first, new_person_of="target")
    assert old[0].mapping[(TEAM, "user")] == npid("anon") and old[1].mapping[(TEAM, "user")] == npid("user")


def test_lane_linearisation_keeps_streams_and_merge_order() -> None:
    a, m1, b, m2, c = ev("anon"), identify("u1", "anon"), ev("u1"), identify("u2", "u1"), ev("u2")
    order = lane_linearisation([a, m1, b, m2, c], [m1.uuid, m2.uuid])
    assert order == [m1, m2, a, b, c]
    with pytest.raises(ValueError, match="exactly once"):
        lane_linearisation([a, m1, b, m2, c], [m1.uuid])
    m3 = alias("u1", "x")
    with pytest.raises(ValueError, match="precedes"):
        lane_linearisation([m1, m3], [m3.uuid, m1.uuid])


def test_interleavings_keep_each_stream_and_the_fixed_events_in_order() -> None:
    history = [ev(d, at=i) for i, d in enumerate("abcabcabc")] + [identify("a", "x"), identify("b", "y")]
    for seed in range(20):
        order = interleavings(history, random.Random(seed), fixed=is_merge)
        assert sorted(e.uuid for e in order) == sorted(e.uuid for e in history)
        for d in "abc":
            assert [e for e in order if e.distinct_id == d] == [e for e in history if e.distinct_id == d]
        assert [e for e in order if is_merge(e)] == [e for e in history if is_merge(e)]


# ---------------------------------------------------------------------------------------------------------------------
# capture payloads
# ---------------------------------------------------------------------------------------------------------------------

TOKENS = {1: "phc_team_one_000000000000000000000000000", 2: "phc_team_two_0", 3: "phc_team_three_0"}


@PROPERTY
@given(history=histories())
def test_capture_payloads_come_out_of_the_gateway_as_the_same_events(history: list[Event]) -> None:
    ctx = RequestContext(now=datetime(2024, 6, 1, tzinfo=UTC), route="batch")
    back: list[Event] = []
    for team, body in to_capture_payload(history, TOKENS, max_batch=7):
        content = json.dumps(body).encode()
        token, raws = parse_events(json.loads(content), ctx, content)
        assert token == TOKENS[team]
        back.extend(Event.from_raw(raw, team) for raw in raws)
    assert back == history


def test_capture_payload_cuts_per_team_runs() -> None:
    history = [ev("a", team=1), ev("b", team=1), ev("a", team=2), ev("c", team=1)]
    bodies = to_capture_payload(history, TOKENS, max_batch=100)
    assert [(team, len(body["batch"])) for team, body in bodies] == [(1, 2), (2, 1), (1, 1)]
    assert bodies[0][1]["api_key"] == TOKENS[1] and "sent_at" not in bodies[0][1]
    assert bodies[0][1]["batch"][0]["timestamp"] == "2024-01-01T10:00:00+00:00"


# ---------------------------------------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------------------------------------


def few_types(max_length: int = 60) -> st.SearchStrategy[list[Event]]:
    return histories(max_length=max_length, group_types=GROUP_TYPES[:5])


@PROPERTY
@given(history=few_types(), seeds=st.lists(st.integers(0, 2**32), min_size=3, max_size=3))
def test_with_the_merge_order_fixed_the_interleaving_does_not_matter(history: list[Event], seeds: list[int]) -> None:
    want = run(history).order_free()
    for seed in seeds:
        assert run(interleavings(history, random.Random(seed), fixed=is_merge)).order_free() == want


@PROPERTY
@given(history=few_types(), seed=st.integers(0, 2**32))
def test_replaying_per_id_streams_in_the_lanes_merge_order_gives_the_pipelines_outcome(
    history: list[Event], seed: int
) -> None:
    """The pipeline saw some interleaving (merges included); the integration test knows only the per-id
    streams it sent and the order the lane decided the merges in. That is enough."""
    seen = interleavings(history, random.Random(seed))
    lane = [e.uuid for e in seen if is_merge(e)]
    assert run_with_lane_order(history, lane).order_free() == run(seen).order_free()


def ops() -> st.SearchStrategy[list[tuple[int, str, Any]]]:
    """Single-key operations: (stamp, kind, value), stamps distinct."""
    op = st.tuples(st.sampled_from(("set", "set_once", "unset")), st.sampled_from(VALUES))
    return st.lists(st.tuples(st.integers(0, 30), op), max_size=8, unique_by=lambda x: x[0]).map(
        lambda xs: [(t, kind, v) for t, (kind, v) in xs]
    )


def key_state(operations: list[tuple[int, str, Any]], uuid: str) -> KeyState:
    """The state of one key after ``operations``, all of one event stream (``uuid`` keeps stamps unique)."""
    s = KeyState()
    for t, kind, v in operations:
        stamp = (ts_at(t), uuid, {"set_once": 0, "set": 1, "unset": 2}[kind])
        if kind == "set":
            s = s.with_set(stamp, v)
        elif kind == "set_once":
            s = s.with_set_once(stamp, v)
        else:
            s = s.with_unset(stamp)
    return s


@PROPERTY
@given(a=ops(), b=ops(), c=ops())
def test_property_join_is_a_semilattice(a: list[Any], b: list[Any], c: list[Any]) -> None:
    x, y, z = key_state(a, "a"), key_state(b, "b"), key_state(c, "c")
    assert x.join(y) == y.join(x)
    assert x.join(y).join(z) == x.join(y.join(z))
    assert x.join(x) == x
    # joining the states == one state that received all the operations, in any order
    ops_ab = [(t, kind, v, "a") for t, kind, v in a] + [(t, kind, v, "b") for t, kind, v in b]
    for order in (ops_ab, ops_ab[::-1]):
        s = KeyState()
        for t, kind, v, u in order:
            s = s.join(key_state([(t, kind, v)], u))
        assert s == x.join(y)
    assert strict(x.join(y).value()) == strict(sequential_value([*a, *b], ["a"] * len(a) + ["b"] * len(b)))


def sequential_value(operations: list[tuple[int, str, Any]], uuids: list[str]) -> tuple[bool, Any]:
    """One key under apply_properties, the operations applied in stamp order."""
    rank = {"set_once": 0, "set": 1, "unset": 2}
    result: dict[str, Any] = {}
    touched = False  # $set_once counts only while the key was never $set / $unset
    for (_, kind, v), _u in sorted(zip(operations, uuids, strict=True), key=lambda x: (x[0][0], x[1], rank[x[0][1]])):
        if kind == "set":
            result, _ = apply_properties(result, set_={"k": v})
        elif kind == "set_once":
            if not touched:
                result, _ = apply_properties(result, set_once={"k": v})
        else:
            result, _ = apply_properties(result, unset=["k"])
        touched |= kind != "set_once"
    return ("k" in result, result.get("k"))


@PROPERTY
@given(
    left=st.lists(
        st.tuples(st.integers(0, 20), st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES))), max_size=5
    ),
    right=st.lists(
        st.tuples(st.integers(0, 20), st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES))), max_size=5
    ),
    op=st.sampled_from(("$set", "$set_once", "$unset")),
    merge=st.sampled_from(("$identify", "$create_alias", "$merge_dangerously")),
)
def test_merges_commute_on_properties(left: list[Any], right: list[Any], op: str, merge: str) -> None:
    """Merging X into Y or Y into X (after the same events) gives the same properties."""

    def events() -> list[Event]:
        out = []
        for d, side in (("x", left), ("y", right)):
            for at, values in side:
                out.append(ev(d, at=at, **{op: list(values) if op == "$unset" else values, "$set": dict(values)}))
        return out

    base = events()
    field = "$anon_distinct_id" if merge == "$identify" else "alias"
    x_into_y = run([*base, ev("y", merge, at=0, **{field: "x"})]).person_of(TEAM, "y")
    y_into_x = run([*base, ev("x", merge, at=0, **{field: "y"})]).person_of(TEAM, "x")
    assert x_into_y.distinct_ids == y_into_x.distinct_ids
    assert strict(x_into_y.properties) == strict(y_into_x.properties)


def sequential_properties(events: list[Event]) -> dict[str, Any]:
    """The oracle: PostHog's one-event-at-a-time rules, applied in (timestamp, uuid) order, except that a
    ``$set_once`` counts only while its key was never ``$set`` / ``$unset`` (tests/identity_model.py)."""
    result: dict[str, Any] = {}
    touched: set[str] = set()
    for e in sorted(events, key=lambda e: (e.timestamp, e.uuid)):
        set_, set_once, unset = person_ops(e)
        if isinstance(set_once, dict):
            set_once = {k: v for k, v in set_once.items() if k not in touched}
        result, _ = apply_properties(result, set_, set_once, unset)
        touched |= set(set_) if isinstance(set_, dict) else set()
        keys = list(unset) if isinstance(unset, dict) else unset
        touched |= {k for k in keys if isinstance(k, str)} if isinstance(keys, list) else set()
    return result


@PROPERTY
@given(history=histories())
def test_a_persons_properties_are_a_time_ordered_replay_of_everything_its_ids_sent(history: list[Event]) -> None:
    out = run(history)
    for p in out.persons.values():
        mine = [e for e in history if (e.team_id, e.distinct_id) in {(p.team_id, d) for d in p.distinct_ids}]
        assert strict(p.properties) == strict(sequential_properties([e for e in mine if not personless(e)]))


@PROPERTY
@given(history=histories())
def test_person_ops_are_the_processors(history: list[Event]) -> None:
    for e in history:
        assert person_ops(e) == processors_person_ops(e.to_raw("phc"))


@pytest.mark.parametrize(
    "properties",
    [
        pytest.param({"$browser": None, "$set": {"$browser": 1.0}}, id="copied-key-also-set-null-value"),
        pytest.param({"$browser": "x", "$set_once": ["a"], "utm_source": None}, id="malformed-set-once"),
        pytest.param({"$os_name": "iOS", "$set": {"$os": None}, "$set_once": {"$initial_os": None}}, id="os-name"),
    ],
)
@pytest.mark.parametrize("event", ["$pageview", "$identify"])
def test_person_ops_are_the_processors_on_copied_properties(event: str, properties: dict[str, Any]) -> None:
    e = ev("u", event, **properties)
    assert person_ops(e) == processors_person_ops(e.to_raw("phc"))


def test_raw_events_round_trip() -> None:
    e = ev("u", top={"$set": {"a": 1}, "$groups": {"co": "k"}}, **{"$set_once": {"b": 2}})
    raw = e.to_raw("phc")
    assert isinstance(raw, RawEvent) and Event.from_raw(RawEvent.from_json(raw.to_json()), TEAM) == e
