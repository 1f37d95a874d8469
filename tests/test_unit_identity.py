"""Pure unit tests of persons, merges and groups: processors/identity.py through processors/transform.py.

Plain dicts stand in for the Faust table; like production, one dict serves all three mappings of State.
The rules under test are PostHog's, as written down in the shared ingestion reference and issue 4.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import random
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from eventpipe.contract import EVENT_ROW_COLUMNS, RawEvent
from processors.identity import Emitted, Identity, State, is_illegal_id, personless_id
from processors.transform import process_with_persons

TEAM = 7
NOW = "2024-01-01 12:00:00.000000"
T0 = "2024-01-01 10:00:00.000000"

_uuids = itertools.count(1)


def ev(
    event: str,
    distinct_id: str,
    properties: dict[str, Any] | None = None,
    *,
    top: dict[str, Any] | None = None,
    at: str = T0,
) -> RawEvent:
    """A raw event as the gateway publishes it; ``top`` holds top-level keys such as ``$set`` or ``$groups``."""
    data: dict[str, Any] = {"event": event, "properties": dict(properties or {}), **(top or {})}
    return RawEvent(
        uuid=str(uuid.UUID(int=next(_uuids))),
        distinct_id=distinct_id,
        token="phc_test",
        event=event,
        timestamp=at,
        now=NOW,
        data=data,
    )


def identify(distinct_id: str, anon: Any, **kw: Any) -> RawEvent:
    return ev("$identify", distinct_id, {"$anon_distinct_id": anon, **kw.pop("properties", {})}, **kw)


def alias(distinct_id: str, other: Any, **kw: Any) -> RawEvent:
    return ev("$create_alias", distinct_id, {"alias": other, **kw.pop("properties", {})}, **kw)


def dangerous(distinct_id: str, other: Any, **kw: Any) -> RawEvent:
    return ev("$merge_dangerously", distinct_id, {"alias": other, **kw.pop("properties", {})}, **kw)


def pageview(distinct_id: str, **kw: Any) -> RawEvent:
    return ev("$pageview", distinct_id, **kw)


def new_state() -> State:
    table: dict[str, Any] = {}
    return State(distinct_ids=table, persons=table, groups=table)


@dataclass
class Result:
    events: list[dict[str, Any]]
    warnings: list[dict[str, Any]]
    persons: list[dict[str, Any]]
    distinct_ids: list[dict[str, Any]]
    groups: list[dict[str, Any]]

    @property
    def row(self) -> dict[str, Any]:
        (row,) = self.events
        return row

    @property
    def warning_types(self) -> list[str]:
        return [w["type"] for w in self.warnings]


def process(state: State, raw: RawEvent, team: int = TEAM) -> Result:
    out, emitted = process_with_persons(raw, team, state)
    assert emitted.warnings == [], "warnings travel with the event output"
    return Result(out.events, out.warnings, emitted.persons, emitted.distinct_ids, emitted.groups)


def run(state: State, events: Iterable[RawEvent], team: int = TEAM) -> list[Result]:
    return [process(state, raw, team) for raw in events]


def person(state: State, distinct_id: str, team: int = TEAM) -> dict[str, Any] | None:
    return Identity(state, team, NOW, Emitted()).person_of(distinct_id)


def pid(state: State, distinct_id: str, team: int = TEAM) -> str | None:
    found = person(state, distinct_id, team)
    return None if found is None else found["id"]


def mapping(state: State, team: int = TEAM) -> dict[str, str | None]:
    """distinct_id -> person id (None when the person record is absent), read from the state's keys."""
    prefix = f"{team}:d:"
    return {
        key[len(prefix) :]: value["person_id"] if f"{team}:p:{value['person_id']}" in state.persons else None
        for key, value in state.distinct_ids.items()
        if key.startswith(prefix)
    }


def partition(state: State, team: int = TEAM) -> tuple[frozenset[frozenset[str]], frozenset[str]]:
    """The distinct ids grouped by person (person uuids are random, the grouping is not), plus orphaned ids."""
    groups: dict[str, set[str]] = defaultdict(set)
    orphans: set[str] = set()
    for distinct_id, person_id in mapping(state, team).items():
        if person_id is None:
            orphans.add(distinct_id)
        else:
            groups[person_id].add(distinct_id)
    return frozenset(frozenset(ids) for ids in groups.values()), frozenset(orphans)


def persons_by_ids(state: State, team: int = TEAM) -> dict[frozenset[str], tuple[dict[str, Any], bool]]:
    """Each live person's (properties, is_identified), keyed by the set of its distinct ids."""
    groups: dict[str, set[str]] = defaultdict(set)
    for distinct_id, person_id in mapping(state, team).items():
        if person_id is not None:
            groups[person_id].add(distinct_id)
    out = {}
    for person_id, ids in groups.items():
        record = state.persons[f"{team}:p:{person_id}"]
        out[frozenset(ids)] = (record["properties"], record["is_identified"])
    return out


def props_of(row: dict[str, Any]) -> dict[str, Any]:
    return json.loads(row["properties"])


# ---------------------------------------------------------------------------------------------------------------------
# illegal distinct ids
# ---------------------------------------------------------------------------------------------------------------------

CASE_INSENSITIVE = [
    "anonymous",
    "guest",
    "distinctid",
    "distinct_id",
    "id",
    "not_authenticated",
    "email",
    "undefined",
    "true",
    "false",
]
CASE_SENSITIVE = ["[object Object]", "NaN", "None", "none", "null", "0", "undefined"]


def _mixed(text: str) -> str:
    return "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(text))


def _quoted(text: str) -> list[str]:
    return [text, f"'{text}'", f'"{text}"']


ILLEGAL = sorted(
    {
        *(q for bare in CASE_INSENSITIVE for v in (bare, bare.upper(), bare.title(), _mixed(bare)) for q in _quoted(v)),
        *(q for bare in CASE_SENSITIVE for q in _quoted(bare)),
        "",
        " ",
        "   ",
        "\t",
        "\n",
        " \t\r\n ",
        "\u00a0",
    }
)
LEGAL = [
    # case-sensitive-only ids in another case are fine ...
    "nan",
    "NAN",
    "Nan",
    "nAN",
    "NONE",
    "nONE",
    "NULL",
    "Null",
    "[object object]",
    "[OBJECT OBJECT]",
    "'nan'",
    '"Null"',
    "'NONE'",
    # ... and so are ids that merely contain an illegal one
    "00",
    "0.0",
    "-0",
    "user-1",
    "anonymous-123",
    "guest1",
    "my_email",
    "email@example.com",
    "idx",
    "truth",
    "null-user",
    "\"'null'\"",
    "x",
]


@pytest.mark.parametrize("distinct_id", ILLEGAL)
def test_illegal_ids(distinct_id: str) -> None:
    assert is_illegal_id(distinct_id)


@pytest.mark.parametrize("distinct_id", LEGAL)
def test_legal_ids(distinct_id: str) -> None:
    assert not is_illegal_id(distinct_id)


@pytest.mark.parametrize(
    "distinct_id", [" null ", "null ", " anonymous", "\tNaN", "'anonymous' ", "'null", 'null"', "''null''", "'''0'''"]
)
def test_near_illegal_ids_are_legal(distinct_id: str) -> None:
    assert not is_illegal_id(distinct_id)


def test_non_string_ids_are_illegal() -> None:
    assert is_illegal_id(None)
    assert is_illegal_id(0)
    assert is_illegal_id({"a": 1})


MERGE_EVENTS = {"$identify": identify, "$create_alias": alias, "$merge_dangerously": dangerous}
ILLEGAL_SAMPLES = [
    *CASE_INSENSITIVE,
    *CASE_SENSITIVE,
    "ANONYMOUS",
    "Distinct_ID",
    "TrUe",
    "'null'",
    '"NaN"',
    "'Email'",
    '"UNDEFINED"',
    "   ",
    "\t",
]


@pytest.mark.parametrize("illegal", ILLEGAL_SAMPLES)
@pytest.mark.parametrize("event", list(MERGE_EVENTS))
@pytest.mark.parametrize("side", ["source", "target"])
def test_illegal_id_on_either_side_refuses_the_merge(side: str, event: str, illegal: str) -> None:
    state = new_state()
    run(state, [pageview("user-1"), pageview(illegal)])
    user_person, illegal_person = pid(state, "user-1"), pid(state, illegal)
    assert user_person and illegal_person and user_person != illegal_person
    target, source = ("user-1", illegal) if side == "source" else (illegal, "user-1")

    result = process(state, MERGE_EVENTS[event](target, source))

    assert result.warning_types == ["cannot_merge_with_illegal_distinct_id"]
    assert result.distinct_ids == []
    assert [p for p in result.persons if p["is_deleted"]] == []
    assert pid(state, "user-1") == user_person
    assert pid(state, illegal) == illegal_person
    # the event is still ingested, with the target's own person
    assert result.row["distinct_id"] == target
    assert result.row["person_id"] == pid(state, target)


@pytest.mark.parametrize("event", list(MERGE_EVENTS))
@pytest.mark.parametrize("side", ["source", "target"])
def test_illegal_id_with_no_existing_persons_creates_no_shared_person(side: str, event: str) -> None:
    state = new_state()
    target, source = ("user-1", "null") if side == "source" else ("null", "user-1")
    result = process(state, MERGE_EVENTS[event](target, source))
    assert result.warning_types == ["cannot_merge_with_illegal_distinct_id"]
    assert pid(state, source) is None
    assert pid(state, target) == result.row["person_id"]
    assert [r["distinct_id"] for r in result.distinct_ids] == [target]


def test_identify_with_empty_anon_id_warns() -> None:
    state = new_state()
    result = process(state, identify("user-1", ""))
    assert result.warning_types == ["cannot_merge_with_illegal_distinct_id"]


@pytest.mark.parametrize("event", ["$create_alias", "$merge_dangerously"])
def test_empty_alias_is_no_merge_and_the_event_is_kept(event: str) -> None:
    state = new_state()
    result = process(state, MERGE_EVENTS[event]("user-1", ""))
    assert pid(state, "") is None
    assert result.row["person_id"] == pid(state, "user-1")


def test_object_alias_is_refused_like_posthog() -> None:
    state = new_state()
    result = process(state, alias("user-1", {"id": 1}))
    assert result.warning_types == ["cannot_merge_with_illegal_distinct_id"]


# ---------------------------------------------------------------------------------------------------------------------
# merge triggers and the merge table
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "dangerous_merge"),
    [(identify, False), (alias, False), (dangerous, True)],
    ids=["$identify/$anon_distinct_id", "$create_alias/alias", "$merge_dangerously/alias"],
)
def test_neither_exists_creates_one_identified_person_with_both_ids(make: Any, dangerous_merge: bool) -> None:
    state = new_state()
    result = process(state, make("user-1", "anon-1"))

    assert result.warnings == []
    (row,) = result.persons
    assert row["is_identified"] == 1 and row["is_deleted"] == 0 and row["version"] == 0
    assert {(r["distinct_id"], r["person_id"], r["version"]) for r in result.distinct_ids} == {
        ("user-1", row["id"], 0),
        ("anon-1", row["id"], 0),
    }
    assert pid(state, "user-1") == pid(state, "anon-1") == row["id"] == result.row["person_id"]
    assert person(state, "user-1")["is_identified"] is True  # type: ignore[index]


@pytest.mark.parametrize(
    ("event", "properties"),
    [
        ("$identify", {"alias": "anon-1"}),
        ("$create_alias", {"$anon_distinct_id": "anon-1"}),
        ("$merge_dangerously", {"$anon_distinct_id": "anon-1"}),
        ("$pageview", {"alias": "anon-1", "$anon_distinct_id": "anon-1"}),
        ("$set", {"alias": "anon-1"}),
    ],
)
def test_other_keys_or_events_do_not_merge(event: str, properties: dict[str, Any]) -> None:
    state = new_state()
    run(state, [pageview("anon-1")])
    result = process(state, ev(event, "user-1", properties))
    assert pid(state, "anon-1") != pid(state, "user-1")
    assert [r["distinct_id"] for r in result.distinct_ids] == ["user-1"]
    assert result.warnings == []


@pytest.mark.parametrize("existing", ["target", "source"])
@pytest.mark.parametrize("make", [identify, alias, dangerous], ids=list(MERGE_EVENTS))
def test_only_one_exists_the_other_id_joins_it(existing: str, make: Any) -> None:
    state = new_state()
    run(state, [pageview("user-1" if existing == "target" else "anon-1", properties={"$set": {"a": 1}})])
    before = person(state, "user-1" if existing == "target" else "anon-1")
    assert before is not None and before["version"] == 0 and not before["is_identified"]

    result = process(state, make("user-1", "anon-1"))

    joined = "anon-1" if existing == "target" else "user-1"
    assert result.warnings == []
    assert [(r["distinct_id"], r["person_id"], r["version"]) for r in result.distinct_ids] == [
        (joined, before["id"], 0)
    ]
    assert pid(state, "user-1") == pid(state, "anon-1") == before["id"] == result.row["person_id"]
    (row,) = result.persons
    assert (row["id"], row["version"], row["is_identified"], row["is_deleted"]) == (before["id"], 1, 1, 0)
    assert json.loads(row["properties"]) == {"a": 1}


@pytest.mark.parametrize("make", [identify, alias, dangerous], ids=list(MERGE_EVENTS))
def test_both_exist_same_person_does_nothing(make: Any) -> None:
    state = new_state()
    run(state, [identify("user-1", "anon-1")])
    snapshot = copy.deepcopy(dict(state.persons))

    result = process(state, make("user-1", "anon-1"))

    assert result.warnings == result.distinct_ids == result.persons == []
    assert dict(state.persons) == snapshot
    assert result.row["person_id"] == pid(state, "anon-1")


@pytest.mark.parametrize("make", [identify, alias, dangerous], ids=list(MERGE_EVENTS))
def test_same_id_on_both_sides_does_nothing(make: Any) -> None:
    state = new_state()
    run(state, [identify("user-1", "anon-1")])
    before = mapping(state)
    result = process(state, make("user-1", "user-1"))
    assert result.warnings == result.distinct_ids == result.persons == []
    assert mapping(state) == before


@pytest.mark.parametrize("make", [identify, alias, dangerous], ids=list(MERGE_EVENTS))
def test_same_illegal_id_on_both_sides_is_no_merge_and_no_warning(make: Any) -> None:
    # PostHog checks "same id" before "illegal id"
    state = new_state()
    result = process(state, make("null", "null"))
    assert result.warnings == []


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(lambda: identify("anon-1", "anon-1"), id="same-id"),
        pytest.param(lambda: ev("$identify", "anon-1"), id="no-anon-id"),
        pytest.param(lambda: identify("anon-1", "null"), id="illegal-anon-id"),
    ],
)
def test_noop_identify_leaves_is_identified(raw: Any) -> None:
    state = new_state()
    run(state, [pageview("anon-1")])
    result = process(state, raw())
    assert result.persons == []
    assert person(state, "anon-1")["is_identified"] is False  # type: ignore[index]


def _identified_pair(state: State) -> None:
    """'user-1' and 'anon-1' share an identified person; 'user-2' has its own anonymous person."""
    run(state, [identify("user-1", "anon-1", properties={"$set": {"who": "one"}}), pageview("user-2")])


@pytest.mark.parametrize(("make", "source"), [(identify, "anon-1"), (identify, "user-1"), (alias, "anon-1")])
def test_identified_source_is_not_merged(make: Any, source: str) -> None:
    state = new_state()
    _identified_pair(state)
    one, two = pid(state, "user-1"), pid(state, "user-2")

    result = process(state, make("user-2", source))

    assert result.warning_types == ["cannot_merge_already_identified"]
    assert result.distinct_ids == []
    assert [p for p in result.persons if p["is_deleted"]] == []
    assert (pid(state, "user-1"), pid(state, "anon-1"), pid(state, "user-2")) == (one, one, two)
    assert result.row["person_id"] == two  # the event goes to the target's person
    details = json.loads(result.warnings[0]["details"])
    assert (details["target"], details["source"]) == ("user-2", source)


def test_merge_dangerously_merges_an_identified_source() -> None:
    state = new_state()
    _identified_pair(state)
    one, two = pid(state, "user-1"), pid(state, "user-2")

    result = process(state, dangerous("user-2", "anon-1"))

    assert result.warnings == []
    assert pid(state, "user-1") == pid(state, "anon-1") == pid(state, "user-2") == two == result.row["person_id"]
    assert {(r["distinct_id"], r["person_id"], r["version"]) for r in result.distinct_ids} == {
        ("user-1", two, 1),
        ("anon-1", two, 1),
    }
    deleted = [p for p in result.persons if p["is_deleted"]]
    assert [p["id"] for p in deleted] == [one]
    assert "merged_into" in state.persons[f"{TEAM}:p:{one}"]  # a forward, not a live person


def test_identified_target_still_absorbs_an_anonymous_source() -> None:
    state = new_state()
    _identified_pair(state)
    result = process(state, identify("user-1", "user-2"))
    assert result.warnings == []
    assert pid(state, "user-2") == pid(state, "user-1")


@pytest.mark.parametrize(
    ("source_updates", "target_updates"),
    [(3, 0), (0, 3), (2, 2)],
    ids=["source-newer-version", "target-newer-version", "equal-versions"],
)
def test_merge_of_two_persons(source_updates: int, target_updates: int) -> None:
    state = new_state()
    run(
        state,
        [
            pageview(
                "anon-1", properties={"$set": {"shared": "source", "only_source": 1}}, at="2024-01-01 09:00:00.000000"
            ),
            pageview(
                "user-1", properties={"$set": {"shared": "target", "only_target": 2}}, at="2024-01-01 11:00:00.000000"
            ),
            *(pageview("anon-1", properties={"$set": {"s": i}}) for i in range(source_updates)),
            *(pageview("user-1", properties={"$set": {"t": i}}) for i in range(target_updates)),
        ],
    )
    source, target = person(state, "anon-1"), person(state, "user-1")
    assert source and target and source["id"] != target["id"]
    assert (source["version"], target["version"]) == (source_updates, target_updates)

    result = process(state, identify("user-1", "anon-1"))

    assert result.warnings == []
    assert [(r["distinct_id"], r["person_id"], r["version"]) for r in result.distinct_ids] == [
        ("anon-1", target["id"], 1)
    ]
    (deleted,) = [p for p in result.persons if p["is_deleted"]]
    assert deleted["id"] == source["id"]
    assert deleted["version"] == source["version"] + 100
    (merged,) = [p for p in result.persons if not p["is_deleted"]]
    assert merged["id"] == target["id"] == result.row["person_id"]
    assert merged["version"] == max(source_updates, target_updates) + 1
    assert merged["created_at"] == "2024-01-01 09:00:00.000000"  # the earlier of the two
    assert merged["is_identified"] == 1
    expected = {**source["properties"], **target["properties"]}
    assert expected["shared"] == "target"
    assert json.loads(merged["properties"]) == expected == json.loads(result.row["person_properties"])
    assert state.persons[f"{TEAM}:p:{source['id']}"] == {"id": source["id"], "merged_into": target["id"]}
    assert person(state, "anon-1") == person(state, "user-1")


def test_merge_moves_every_distinct_id_of_the_source() -> None:
    state = new_state()
    run(state, [identify("s-1", "s-2"), alias("s-1", "s-3"), pageview("t-1")])
    source_id, target_id = pid(state, "s-1"), pid(state, "t-1")
    versions = {d: state.distinct_ids[f"{TEAM}:d:{d}"]["version"] for d in ("s-1", "s-2", "s-3")}

    result = process(state, dangerous("t-1", "s-2"))

    assert sorted((r["distinct_id"], r["person_id"], r["version"]) for r in result.distinct_ids) == [
        (d, target_id, versions[d] + 1) for d in ("s-1", "s-2", "s-3")
    ]
    assert all(r["is_deleted"] == 0 for r in result.distinct_ids)
    assert {pid(state, d) for d in ("s-1", "s-2", "s-3", "t-1")} == {target_id}
    assert [p["id"] for p in result.persons if p["is_deleted"]] == [source_id]
    assert sorted(person(state, "t-1")["distinct_ids"]) == ["s-1", "s-2", "s-3", "t-1"]  # type: ignore[index]


def test_merge_applies_the_event_updates_after_the_property_merge() -> None:
    state = new_state()
    run(
        state,
        [
            pageview("anon-1", properties={"$set": {"a": "source", "b": "source"}}),
            pageview("user-1", top={"$set": {"a": "t"}}),
        ],
    )
    result = process(
        state,
        identify("user-1", "anon-1", properties={"$set": {"b": "event"}, "$set_once": {"a": "once", "c": "once"}}),
    )
    assert person(state, "user-1")["properties"] == {"a": "t", "b": "event", "c": "once"}  # type: ignore[index]
    assert len([p for p in result.persons if not p["is_deleted"]]) == 1


def test_anonymous_to_identified_to_alias_chain() -> None:
    state = new_state()
    run(
        state,
        [
            pageview("anon-1"),
            identify("user-1", "anon-1"),
            pageview("anon-2"),
            identify("user-1", "anon-2"),
            alias("user-1", "crm-42"),
            pageview("crm-42"),
        ],
    )
    assert partition(state) == (frozenset({frozenset({"anon-1", "anon-2", "user-1", "crm-42"})}), frozenset())
    assert person(state, "crm-42")["is_identified"] is True  # type: ignore[index]


# ---------------------------------------------------------------------------------------------------------------------
# person properties
# ---------------------------------------------------------------------------------------------------------------------


def _with_person(props: dict[str, Any]) -> State:
    state = new_state()
    run(state, [pageview("u", top={"$set": props})])
    assert person(state, "u")["version"] == 0  # type: ignore[index]
    return state


@pytest.mark.parametrize(
    ("start", "event_ops", "expected"),
    [
        pytest.param({"a": 1, "b": 2}, {"$set": {"b": 3}}, {"a": 1, "b": 3}, id="$set-changes"),
        pytest.param({"a": 1}, {"$set": {"c": None}}, {"a": 1, "c": None}, id="$set-null"),
        pytest.param({"a": 1}, {"$set_once": {"a": 9, "b": 2}}, {"a": 1, "b": 2}, id="$set_once-absent-only"),
        pytest.param({"a": None}, {"$set_once": {"a": 9}}, None, id="$set_once-null-is-present"),
        pytest.param({"a": 1, "b": 2, "c": 3}, {"$unset": ["a", "c"]}, {"b": 2}, id="$unset-list"),
        pytest.param({"a": 1, "b": 2}, {"$unset": {"a": None}}, {"b": 2}, id="$unset-object-keys"),
        pytest.param({"a": 1, "b": 2}, {"$set": {"a": 1}}, None, id="$set-same-value"),
        pytest.param({"a": 1}, {"$set_once": {"a": 2}}, None, id="$set_once-present"),
        pytest.param({"a": 1}, {"$unset": ["zzz"]}, None, id="$unset-absent"),
        pytest.param({"a": 1}, {}, None, id="no-ops"),
        pytest.param({"a": 1}, {"$set": "nope", "$unset": 5}, None, id="malformed-ops-ignored"),
        pytest.param(
            {"a": 1, "b": 2},
            {"$set": {"a": 5, "b": 6}, "$set_once": {"a": 0, "c": 7}, "$unset": ["b"]},
            {"a": 5, "c": 7},
            id="all-three",
        ),
    ],
)
@pytest.mark.parametrize("where", ["properties", "top"])
def test_property_updates(where: str, start: dict[str, Any], event_ops: dict[str, Any], expected: Any) -> None:
    state = _with_person(start)
    raw = pageview("u", properties=event_ops) if where == "properties" else pageview("u", top=event_ops)
    result = process(state, raw)
    after = person(state, "u")
    assert after is not None
    if expected is None:  # nothing changed: no person row, no version bump
        assert result.persons == []
        assert after["version"] == 0 and after["properties"] == start
    else:
        (row,) = result.persons
        assert json.loads(row["properties"]) == expected == after["properties"]
        assert row["version"] == after["version"] == 1
    assert json.loads(result.row["person_properties"]) == after["properties"]


def test_top_level_and_properties_ops_are_combined_top_level_wins() -> None:
    state = _with_person({})
    process(
        state,
        pageview(
            "u",
            properties={"$set": {"a": "inner", "b": "inner"}, "$set_once": {"c": "inner"}},
            top={"$set": {"a": "top"}, "$set_once": {"c": "top", "d": "top"}},
        ),
    )
    assert person(state, "u")["properties"] == {"a": "top", "b": "inner", "c": "top", "d": "top"}  # type: ignore[index]


def test_new_person_starts_with_set_once_then_set() -> None:
    state = new_state()
    result = process(
        state,
        pageview("u", properties={"$set_once": {"x": "once", "y": "once"}, "$set": {"y": "set", "z": "set"}}),
    )
    (row,) = result.persons
    assert json.loads(row["properties"]) == {"x": "once", "y": "set", "z": "set"}
    assert (row["version"], row["is_identified"], row["is_deleted"], row["team_id"]) == (0, 0, 0, TEAM)
    assert row["created_at"] == T0
    assert [(r["distinct_id"], r["person_id"], r["version"]) for r in result.distinct_ids] == [("u", row["id"], 0)]


def test_every_change_bumps_the_version() -> None:
    state = new_state()
    results = run(
        state,
        [
            pageview("u", top={"$set": {"a": 1}}),
            pageview("u", top={"$set": {"a": 2}}),
            pageview("u"),
            pageview("u", top={"$set_once": {"b": 1}}),
            pageview("u", top={"$set": {"a": 2}}),
            pageview("u", top={"$unset": ["a"]}),
        ],
    )
    assert [[p["version"] for p in r.persons] for r in results] == [[0], [1], [], [2], [], [3]]
    assert person(state, "u")["properties"] == {"b": 1}  # type: ignore[index]


def test_event_that_changes_nothing_emits_no_person_row() -> None:
    state = _with_person({"a": 1})
    result = process(state, pageview("u", properties={"plan": "free"}))
    assert result.persons == result.distinct_ids == result.warnings == []
    assert json.loads(result.row["person_properties"]) == {"a": 1}
    assert result.row["person_id"] == pid(state, "u")


@pytest.mark.parametrize(("old", "new"), [(1, True), (0, False), (True, 1), ({"k": 1}, {"k": True})])
def test_set_changes_the_json_type_of_a_value(old: Any, new: Any) -> None:
    state = _with_person({"v": old})
    result = process(state, pageview("u", top={"$set": {"v": new}}))
    assert json.dumps(person(state, "u")["properties"]["v"]) == json.dumps(new)  # type: ignore[index]
    assert len(result.persons) == 1


# ---------------------------------------------------------------------------------------------------------------------
# personless events
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(lambda: pageview("ghost", properties={"$process_person_profile": False}), id="pageview"),
        pytest.param(
            lambda: pageview(
                "ghost", properties={"$process_person_profile": False, "$set": {"a": 1}}, top={"$set": {"b": 2}}
            ),
            id="with-$set",
        ),
        pytest.param(
            lambda: identify("ghost", "anon-1", properties={"$process_person_profile": False}), id="$identify"
        ),
    ],
)
def test_personless_events(raw: Any) -> None:
    state = new_state()
    result = process(state, raw())
    assert result.row["person_id"] == personless_id(TEAM, "ghost")
    assert result.row["person_id"] == str(
        uuid.uuid5(uuid.UUID("932979b4-65c3-4424-8467-0b66ec27bc22"), f"{TEAM}:ghost")
    )
    assert json.loads(result.row["person_properties"]) == {}
    assert result.persons == result.distinct_ids == result.warnings == []
    assert dict(state.persons) == {}


def test_personless_id_is_deterministic_per_team_and_distinct_id() -> None:
    assert personless_id(1, "a") == personless_id(1, "a")
    assert len({personless_id(1, "a"), personless_id(2, "a"), personless_id(1, "b")}) == 3
    assert uuid.UUID(personless_id(1, "a")).version == 5


@pytest.mark.parametrize("value", [True, "false", 0, None])
def test_process_person_profile_other_than_false_processes_the_person(value: Any) -> None:
    state = new_state()
    result = process(state, pageview("u", properties={"$process_person_profile": value}))
    assert len(result.persons) == 1
    assert result.row["person_id"] == pid(state, "u")


# ---------------------------------------------------------------------------------------------------------------------
# groups
# ---------------------------------------------------------------------------------------------------------------------


def groupidentify(group_type: str, key: Any, group_set: dict[str, Any] | None = None, **kw: Any) -> RawEvent:
    props: dict[str, Any] = {"$group_type": group_type, "$group_key": key}
    if group_set is not None:
        props["$group_set"] = group_set
    return ev("$groupidentify", "u", props, **kw)


def test_groupidentify_upserts_with_version_and_shallow_merge() -> None:
    state = new_state()
    first = process(state, groupidentify("company", "acme", {"name": "Acme", "size": 10, "nested": {"a": 1}}))
    second = process(
        state,
        groupidentify("company", "acme", {"size": 20, "nested": {"b": 2}}, at="2024-01-02 10:00:00.000000"),
    )
    (g0,) = first.groups
    (g1,) = second.groups
    assert (g0["group_type_index"], g0["group_key"], g0["team_id"], g0["version"]) == (0, "acme", TEAM, 0)
    assert json.loads(g0["group_properties"]) == {"name": "Acme", "size": 10, "nested": {"a": 1}}
    assert (g1["group_type_index"], g1["group_key"], g1["version"]) == (0, "acme", 1)
    assert json.loads(g1["group_properties"]) == {"name": "Acme", "size": 20, "nested": {"b": 2}}
    assert g0["created_at"] == g1["created_at"] == T0
    assert first.warnings == second.warnings == []
    assert len(first.events) == len(second.events) == 1


def test_groupidentify_without_group_set_still_upserts() -> None:
    state = new_state()
    (g,) = process(state, groupidentify("company", 42)).groups
    assert (g["group_key"], json.loads(g["group_properties"])) == ("42", {})


def test_group_types_get_indexes_first_come_first_served_and_a_sixth_is_ignored() -> None:
    state = new_state()
    types = ["company", "project", "team", "org", "workspace", "sixth"]
    result = process(state, pageview("u", properties={"$groups": {t: f"{t}-key" for t in types}}))
    assert [result.row[f"$group_{i}"] for i in range(5)] == [f"{t}-key" for t in types[:5]]
    assert result.warning_types == ["group_type_limit_reached"]
    assert "sixth-key" not in result.row.values()
    assert tuple(result.row) == EVENT_ROW_COLUMNS

    # indexes stay put; the sixth type stays out, also for $groupidentify
    again = process(state, pageview("u", properties={"$groups": {"workspace": "w", "company": "c"}}))
    assert [again.row[f"$group_{i}"] for i in range(5)] == ["c", "", "", "", "w"]
    refused = process(state, groupidentify("sixth", "k", {"a": 1}))
    assert refused.groups == []
    assert refused.warning_types == ["group_type_limit_reached"]
    known = process(state, groupidentify("org", "o", {"a": 1}))
    assert [g["group_type_index"] for g in known.groups] == [3]


def test_groupidentify_registers_its_type() -> None:
    state = new_state()
    run(state, [groupidentify("project", "p1"), groupidentify("company", "c1")])
    result = process(state, pageview("u", top={"$groups": {"company": "c1", "project": "p1"}}))
    assert [result.row[f"$group_{i}"] for i in range(5)] == ["p1", "c1", "", "", ""]


def test_groups_fill_the_event_row_and_leave_properties_alone() -> None:
    state = new_state()
    result = process(state, pageview("u", properties={"$groups": {"company": "acme", "project": None}, "x": 1}))
    assert result.row["$group_0"] == "acme"
    assert [result.row[f"$group_{i}"] for i in range(1, 5)] == ["", "", "", ""]
    assert props_of(result.row)["$groups"] == {"company": "acme", "project": None}


def test_group_indexes_are_per_team() -> None:
    state = new_state()
    process(state, pageview("u", properties={"$groups": {"company": "c", "project": "p"}}), team=1)
    other = process(state, pageview("u", properties={"$groups": {"project": "p2"}}), team=2)
    assert other.row["$group_0"] == "p2"
    mine = process(state, pageview("u", properties={"$groups": {"project": "p"}}), team=1)
    assert mine.row["$group_1"] == "p"
    # groups with the same key in two teams are two groups
    a = process(state, groupidentify("project", "same", {"t": 1}), team=1)
    b = process(state, groupidentify("project", "same", {"t": 2}), team=2)
    assert [(g["team_id"], g["group_type_index"], g["version"]) for g in (*a.groups, *b.groups)] == [
        (1, 1, 0),
        (2, 0, 0),
    ]


@pytest.mark.parametrize(("length", "too_long"), [(400, False), (401, True), (5000, True)])
def test_groupidentify_key_length(length: int, too_long: bool) -> None:
    state = new_state()
    result = process(state, groupidentify("company", "k" * length, {"a": 1}))
    if too_long:
        assert result.warning_types == ["group_key_too_long"]
        assert result.groups == []
    else:
        assert result.warnings == []
        assert [g["group_key"] for g in result.groups] == ["k" * length]


def test_groupidentify_with_too_long_key_drops_the_event() -> None:
    state = new_state()
    result = process(state, groupidentify("company", "k" * 401, {"a": 1}))
    assert result.events == []


# ---------------------------------------------------------------------------------------------------------------------
# at-least-once: replays and crash prefixes
# ---------------------------------------------------------------------------------------------------------------------


def _story() -> list[RawEvent]:
    return [
        pageview("anon-1", properties={"$set_once": {"referrer": "google"}, "$set": {"plan": "free"}}),
        pageview("anon-1", top={"$set": {"plan": "trial"}}),
        identify("user-1", "anon-1", properties={"$set": {"email": "u@example.com"}}),
        pageview("anon-2", properties={"$set": {"device": "phone"}}),
        identify("user-1", "anon-2"),
        alias("user-1", "crm-42"),
        pageview("user-1", top={"$unset": ["plan"]}),
        identify("user-2", "anon-3"),
        identify("user-2", "anon-1"),  # refused: anon-1's person is identified
        identify("user-2", "null"),  # refused: illegal
        dangerous("user-2", "crm-42"),  # merges user-1's person into user-2's
        pageview("solo", properties={"$set": {"x": 1}}),
        groupidentify("company", "acme", {"name": "Acme"}),
        pageview("solo", properties={"$groups": {"company": "acme"}}),
        pageview("ghost", properties={"$process_person_profile": False}),
    ]


def test_replaying_a_sequence_is_idempotent() -> None:
    events = _story()
    state = new_state()
    run(state, events)
    once_mapping, once_persons = mapping(state), persons_by_ids(state)
    once_groups = {k: v for k, v in state.groups.items() if ":g:" in k or k.endswith("group_types")}
    assert partition(state) == (
        frozenset(
            {
                frozenset({"anon-1", "anon-2", "user-1", "crm-42", "user-2", "anon-3"}),
                frozenset({"solo"}),
                frozenset({"u"}),
            }
        ),
        frozenset(),
    )

    run(state, events)  # redelivery after a crash: every event again, over the state it already produced

    assert mapping(state) == once_mapping
    assert persons_by_ids(state) == once_persons
    assert {k: v["properties"] for k, v in state.groups.items() if ":g:" in k} == {
        k: v["properties"] for k, v in once_groups.items() if ":g:" in k
    }


def _random_events(rng: random.Random, n: int) -> list[RawEvent]:
    ids = ["a", "b", "c", "d", "e", "f", "null"]
    out = []
    for _ in range(n):
        kind = rng.choice(["pageview", "pageview", "$identify", "$create_alias", "$merge_dangerously"])
        target, source = rng.choice(ids), rng.choice(ids)
        if kind == "pageview":
            out.append(pageview(target))
        else:
            out.append(MERGE_EVENTS[kind](target, source))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_replaying_random_sequences_keeps_the_mapping(seed: int) -> None:
    events = _random_events(random.Random(seed), 20)
    state = new_state()
    run(state, events)
    once = mapping(state)
    run(state, events)
    assert mapping(state) == once


def test_replay_does_not_reapply_property_updates_after_a_merge() -> None:
    """A redelivery (same partition and offsets, as Faust re-reads after a crash) is not re-applied:
    the team's applied watermark makes the agent re-emit rows from the current state instead."""
    from processors.transform import already_applied, replay_rows

    events = [
        pageview("user-1", top={"$set": {"name": "from target"}}),
        pageview("anon-1", top={"$set": {"name": "from source"}}),
        identify("user-1", "anon-1"),
    ]
    state = new_state()

    def deliver() -> list[str]:
        people = []
        for offset, raw in enumerate(events):
            position = (0, offset)
            if already_applied(state, TEAM, position):
                rows, _ = replay_rows(raw, TEAM, state)
            else:
                rows, _ = process_with_persons(raw, TEAM, state, position)
            people.append(rows.events[0]["person_id"])
        return people

    deliver()
    assert person(state, "user-1")["properties"] == {"name": "from target"}  # type: ignore[index]
    replayed = deliver()
    assert person(state, "user-1")["properties"] == {"name": "from target"}  # type: ignore[index]
    assert set(replayed) == {pid(state, "user-1")}  # re-emitted rows carry the current person


class RecordingTable(dict):  # type: ignore[type-arg]
    """A dict that records its writes in order, like a table changelog."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.ops: list[tuple[str, str, Any]] = []

    def __setitem__(self, key: str, value: Any) -> None:
        self.ops.append(("set", key, copy.deepcopy(value)))
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.ops.append(("del", key, None))
        super().__delitem__(key)


def _state_of(table: dict[str, Any]) -> State:
    return State(distinct_ids=table, persons=table, groups=table)


def _crash_runs(setup: list[RawEvent], event: RawEvent, follow_up: list[RawEvent]) -> list[tuple[int, State, State]]:
    """For every prefix of ``event``'s writes: (k, clean run, run restored to the prefix and re-processing ``event``).

    Both runs then continue with ``follow_up``.
    """
    base = new_state()
    run(base, setup)
    before = copy.deepcopy(dict(base.persons))
    recorder = RecordingTable(copy.deepcopy(before))
    process(_state_of(recorder), event)
    writes = list(recorder.ops)
    assert writes, "the event must write something"
    clean = _state_of(recorder)
    run(clean, follow_up)

    out = []
    for k in range(len(writes) + 1):
        table = copy.deepcopy(before)
        for op, key, value in writes[:k]:
            if op == "set":
                table[key] = copy.deepcopy(value)
            else:
                del table[key]
        crashed = _state_of(table)
        process(crashed, event)  # redelivered: its offset was never committed
        run(crashed, follow_up)
        out.append((k, clean, crashed))
    return out


MERGE_CASES = {
    "neither-exists": ([], lambda: identify("t", "a", properties={"$set": {"p": 1}})),
    "target-exists": ([pageview("t", top={"$set": {"t": 1}})], lambda: alias("t", "a")),
    "source-exists": ([pageview("a", top={"$set": {"a": 1}})], lambda: identify("t", "a")),
    "two-persons": (
        [pageview("a", top={"$set": {"a": 1, "x": "a"}}), pageview("t", top={"$set": {"t": 1, "x": "t"}})],
        lambda: identify("t", "a"),
    ),
    "identified-source-dangerously": (
        [identify("s1", "s2", properties={"$set": {"s": 1}}), pageview("t", top={"$set": {"t": 1}})],
        lambda: dangerous("t", "s1"),  # s1 is the first of the source's ids to be re-pointed
    ),
}


@pytest.mark.parametrize(
    "case",
    [
        "neither-exists",
        "target-exists",
        "source-exists",
        "two-persons",
        pytest.param(
            "identified-source-dangerously",
        ),
    ],
)
def test_crash_prefix_of_a_merge_converges_to_the_same_mapping(case: str) -> None:
    setup, make = MERGE_CASES[case]
    for k, clean, crashed in _crash_runs(setup, make(), []):
        assert partition(crashed) == partition(clean), f"after {k} writes"


@pytest.mark.parametrize(
    "case",
    [
        "neither-exists",
        pytest.param(
            "two-persons",
        ),
        pytest.param(
            "identified-source-dangerously",
        ),
    ],
)
def test_crash_prefix_of_a_merge_converges_to_the_same_persons(case: str) -> None:
    setup, make = MERGE_CASES[case]
    for k, clean, crashed in _crash_runs(setup, make(), []):
        assert persons_by_ids(crashed) == persons_by_ids(clean), f"after {k} writes"
        live_persons = {
            key for key, value in crashed.persons.items() if key.startswith(f"{TEAM}:p:") and "merged_into" not in value
        }
        assert len(live_persons) == len(partition(crashed)[0]), f"after {k} writes: a merged-away person survives"


@pytest.mark.parametrize(
    ("case", "follow_up"),
    [
        pytest.param(
            "target-exists",
            # the join made t's person identified, so merging it away must be refused
            lambda: [pageview("x"), identify("x", "t")],
            id="join-then-merge",
        ),
        pytest.param(
            "two-persons",
            lambda: [pageview("x"), dangerous("x", "t")],
            id="merge-then-merge",
        ),
        pytest.param("neither-exists", lambda: [pageview("x"), dangerous("x", "t")], id="new-then-merge"),
    ],
)
def test_crash_prefix_of_a_merge_then_more_merges(case: str, follow_up: Any) -> None:
    setup, make = MERGE_CASES[case]
    for k, clean, crashed in _crash_runs(setup, make(), follow_up()):
        assert partition(crashed) == partition(clean), f"after {k} writes"


# -- the agents' batches: offsets committable only once the batch's rows are written -------------------------


class _Consumer:
    """What Message.ack reports the final ack to (Faust's consumer marks the offset committable)."""

    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, message: Any) -> bool:
        self.acked.append(message.offset)
        return True


class _App:
    def __init__(self) -> None:
        self.crashed: list[BaseException] = []

    async def crash(self, reason: BaseException) -> None:
        self.crashed.append(reason)


@dataclass
class _Event:
    message: Any


def _delivered(offsets: Iterable[int]) -> list[_Event]:
    from faust.types.tuples import ConsumerMessage

    events = []
    for offset in offsets:
        message = ConsumerMessage("events_by_team", 0, offset, 0.0, 0, None, b"k", b"v", None)
        message.incref()  # the conductor's reference: one channel (the agent's stream)
        events.append(_Event(message))
    return events


def _take_events_batch(app: _App, events: list[_Event], body: Any) -> tuple[list[int], BaseException | None]:
    """Like Faust's take_events: the body runs inside written_or_held, the batch is acked in a finally.
    Returns the offsets acked (committable) and what the body raised out of the loop."""
    from processors.app import written_or_held

    consumer = _Consumer()

    async def run() -> None:
        try:
            async with written_or_held(app, events):  # type: ignore[arg-type]
                await body()
        finally:
            for event in events:
                event.message.ack(consumer)

    try:
        asyncio.run(run())
    except BaseException as exc:
        return consumer.acked, exc
    return consumer.acked, None


def test_a_written_batch_is_acked() -> None:
    app, events = _App(), _delivered(range(3))

    async def body() -> None:
        await asyncio.sleep(0)

    assert _take_events_batch(app, events, body) == ([0, 1, 2], None)
    assert app.crashed == []


def test_a_batch_whose_flush_failed_is_held_and_the_worker_crashes() -> None:
    """take_events acks in a finally: without the hold, a failed outbox flush committed rows never written."""
    from aiokafka.errors import KafkaTimeoutError

    app, events = _App(), _delivered(range(3))
    failure = KafkaTimeoutError("send timed out")

    async def body() -> None:
        raise failure

    assert _take_events_batch(app, events, body) == ([], failure)
    assert app.crashed == [failure]


def test_a_cancelled_batch_is_held_without_crashing() -> None:
    app, events = _App(), _delivered(range(2))

    async def body() -> None:
        raise asyncio.CancelledError

    acked, raised = _take_events_batch(app, events, body)
    assert acked == [] and isinstance(raised, asyncio.CancelledError)
    assert app.crashed == []


def test_a_replayed_creation_makes_the_same_person() -> None:
    """A restored state that lacks a person whose rows were already sent (crash before the changelog
    write) re-creates it with the same id: no second, orphan person in ClickHouse."""
    first, _ = process_with_persons(identify("u", "anon"), TEAM, new_state())
    replayed, _ = process_with_persons(identify("u", "anon"), TEAM, new_state())
    assert first.events[0]["person_id"] == replayed.events[0]["person_id"]
    other_team, _ = process_with_persons(identify("u", "anon"), TEAM + 1, new_state())
    assert other_team.events[0]["person_id"] != first.events[0]["person_id"]
