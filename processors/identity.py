"""Persons, distinct ids, merges and groups with PostHog's rules, as pure functions over a state.

The state is three mappings (in production one Faust table serves all three, so a team's state has a
single, totally ordered changelog; dicts in tests), all keyed under one team:

* ``distinct_ids``: ``"team:d:distinct_id"`` -> ``{"person_id", "version"}``
* ``persons``: ``"team:p:person_id"`` -> ``{"id", "created_at", "properties", "is_identified", "version",
  "distinct_ids"}``
* ``groups``: ``"team:g:index:key"`` -> group record, and ``"team:group_types"`` -> ``{type: index}``

A distinct id pointing at a person record that is absent counts as having no person: after a crash
the restored state may hold a prefix of one event's writes, and re-processing that event repairs it.

Every function returns the rows to emit; callers write them to Kafka. Values are replaced, never
mutated in place, because a Faust table only records an assignment in its changelog.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import ujson

from eventpipe.contract import warning_row

# PostHog refuses to merge with these ids (either side); the event is still ingested.
ILLEGAL_IDS_CASE_INSENSITIVE = frozenset(
    {
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
    }
)
ILLEGAL_IDS_CASE_SENSITIVE = frozenset({"[object Object]", "NaN", "None", "none", "null", "0", "undefined"})
MAX_GROUP_TYPES = 5
MAX_GROUP_KEY = 400
PERSONLESS_NAMESPACE = uuid.UUID("932979b4-65c3-4424-8467-0b66ec27bc22")
PERSON_NAMESPACE = uuid.UUID("5d1c3b8e-2f47-4a8e-9b0e-6f3c2a1d7e55")
DELETED_VERSION_BUMP = 100  # a deleted person's row must win over any later update of it

Table = MutableMapping[str, Any]
NEW, CHANGED, SAME = "new", "changed", "same"


def _listed(text: str) -> bool:
    return text.lower() in ILLEGAL_IDS_CASE_INSENSITIVE or text in ILLEGAL_IDS_CASE_SENSITIVE


def is_illegal_id(distinct_id: object) -> bool:
    """PostHog's refusal list, matched exactly (no trimming), plus its single/double-quoted forms."""
    if not isinstance(distinct_id, str) or not distinct_id.strip():
        return True
    if _listed(distinct_id):
        return True
    quoted = len(distinct_id) >= 2 and distinct_id[0] == distinct_id[-1] and distinct_id[0] in "'\""
    return quoted and _listed(distinct_id[1:-1])


def new_person_id(team_id: int, distinct_id: str) -> str:
    """The id of the person created for ``distinct_id`` (its first id): the same on every replay.

    A restored state may lack a person whose row already reached ClickHouse (a crash after the row was
    sent, before the changelog write); replaying the event must create *that* person again, not a
    second one (a random id left an orphan live person in ClickHouse: 154 persons for 150 users in
    the kill test). An id gets a new person only while it has none, so the id is never reused.
    """
    return str(uuid.uuid5(PERSON_NAMESPACE, f"{team_id}:{distinct_id}"))


def personless_id(team_id: int, distinct_id: str) -> str:
    """Stable person id for events sent with ``$process_person_profile: false`` (no person is stored)."""
    return str(uuid.uuid5(PERSONLESS_NAMESPACE, f"{team_id}:{distinct_id}"))


@dataclass
class State:
    distinct_ids: Table
    persons: Table
    groups: Table


@dataclass
class Emitted:
    persons: list[dict[str, Any]] = field(default_factory=list)
    distinct_ids: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)


def _dumps(obj: Any) -> str:
    return ujson.dumps(obj, ensure_ascii=False)


def person_row(team_id: int, person: dict[str, Any], deleted: bool = False) -> dict[str, Any]:
    return {
        "id": person["id"],
        "created_at": person["created_at"],
        "team_id": team_id,
        "properties": _dumps(person["properties"]),
        "is_identified": int(person["is_identified"]),
        "is_deleted": int(deleted),
        "version": person["version"] + (DELETED_VERSION_BUMP if deleted else 0),
    }


def distinct_id_row(team_id: int, distinct_id: str, person_id: str, version: int) -> dict[str, Any]:
    return {"team_id": team_id, "distinct_id": distinct_id, "person_id": person_id, "is_deleted": 0, "version": version}


class Identity:
    """One team's view of the state while one event is processed."""

    def __init__(self, state: State, team_id: int, now: str, out: Emitted) -> None:
        self.s, self.team, self.now, self.out = state, team_id, now, out
        self._after_save: list[Callable[[], None]] = []

    # -- lookups -----------------------------------------------------------------------------------
    def _dkey(self, distinct_id: str) -> str:
        return f"{self.team}:d:{distinct_id}"

    def _pkey(self, person_id: str) -> str:
        return f"{self.team}:p:{person_id}"

    def person_of(self, distinct_id: str) -> dict[str, Any] | None:
        """The live person of an id, following the forward a merged-away person leaves behind."""
        entry = self.s.distinct_ids.get(self._dkey(distinct_id))
        if entry is None:
            return None
        person = self.s.persons.get(self._pkey(entry["person_id"]))
        hops = 0
        while person is not None and "merged_into" in person and hops < 32:
            person = self.s.persons.get(self._pkey(person["merged_into"]))
            hops += 1
        if person is not None and person["id"] != entry["person_id"]:
            self._point(distinct_id, person["id"])  # heal a pointer a crash left behind
        return person

    def _save(self, person: dict[str, Any]) -> None:
        self.s.persons[self._pkey(person["id"])] = person
        self.out.persons.append(person_row(self.team, person))

    def _point(self, distinct_id: str, person_id: str) -> None:
        key = self._dkey(distinct_id)
        old = self.s.distinct_ids.get(key)
        version = 0 if old is None else old["version"] + 1
        self.s.distinct_ids[key] = {"person_id": person_id, "version": version}
        self.out.distinct_ids.append(distinct_id_row(self.team, distinct_id, person_id, version))

    def _new_person(self, distinct_ids: list[str], created_at: str, identified: bool) -> dict[str, Any]:
        person = {
            "id": new_person_id(self.team, distinct_ids[0]),
            "created_at": created_at,
            "properties": {},
            "is_identified": identified,
            "version": 0,
            "distinct_ids": list(distinct_ids),
        }
        for d in distinct_ids:
            self._point(d, person["id"])
        return person

    def _warn(self, type_: str, details: dict[str, Any]) -> None:
        self.out.warnings.append(warning_row(self.team, type_, "processors", details, self.now))

    # -- operations ----------------------------------------------------------------------------------
    def get_or_create(self, distinct_id: str, timestamp: str) -> tuple[dict[str, Any], str]:
        """The person of ``distinct_id``; a first-seen id gets a new person (not yet saved)."""
        person = self.person_of(distinct_id)
        if person is not None:
            return person, SAME
        return self._new_person([distinct_id], timestamp, False), NEW

    def merge(self, target_id: str, source_id: str, dangerous: bool, timestamp: str) -> tuple[dict[str, Any], str]:
        """``source_id`` (alias / anonymous id) joins ``target_id``'s person, by PostHog's rules.

        Returns the target's person and its status (NEW / CHANGED / SAME); the caller applies the
        event's own property updates and saves it once, which bumps the version of a changed person.
        """
        if is_illegal_id(target_id) or is_illegal_id(source_id):
            self._warn("cannot_merge_with_illegal_distinct_id", {"target": target_id, "source": source_id})
            return self.get_or_create(target_id, timestamp)
        target, source = self.person_of(target_id), self.person_of(source_id)
        if target is None and source is None:
            return self._new_person([target_id, source_id], timestamp, True), NEW
        if target is None or source is None:
            # One id has a person: the other joins it (pointer written after the person, see save()).
            person, joining = (source, target_id) if target is None else (target, source_id)
            assert person is not None
            self._after_save.append(lambda: self._point(joining, person["id"]))
            ids = list(dict.fromkeys([*person["distinct_ids"], joining]))
            return {**person, "is_identified": True, "distinct_ids": ids}, CHANGED
        if source["id"] == target["id"]:
            self._heal(target)
            return target, SAME
        if source["is_identified"] and not dangerous:
            self._warn(
                "cannot_merge_already_identified",
                {"target": target_id, "source": source_id, "source_person_id": source["id"]},
            )
            return target, SAME
        merged = {
            **target,
            "properties": {**source["properties"], **target["properties"]},
            "created_at": min(target["created_at"], source["created_at"]),
            "is_identified": True,
            "version": max(target["version"], source["version"]),  # save() makes it max + 1
            "distinct_ids": list(dict.fromkeys([*target["distinct_ids"], *source["distinct_ids"]])),
        }
        # Written after the merged target (see save()): the source becomes a forward to the target,
        # then its ids are re-pointed. A crash between any two writes leaves a state whose lookups
        # already resolve to the target, and replaying the event completes the rest.
        self._after_save.append(lambda: self._forward(source, merged["id"]))
        self._after_save.extend((lambda d=d: self._point(d, merged["id"])) for d in source["distinct_ids"])
        return merged, CHANGED

    def save(self, person: dict[str, Any], status: str) -> dict[str, Any]:
        """Store a NEW person at version 0, a CHANGED one at version + 1; SAME is left alone.
        Writes a merge deferred run after the person itself, in order."""
        if status == CHANGED:
            person = {**person, "version": person["version"] + 1}
        if status != SAME:
            self._save(person)
        pending, self._after_save = self._after_save, []
        for write in pending:
            write()
        return person

    def _forward(self, source: dict[str, Any], target_id: str) -> None:
        self.s.persons[self._pkey(source["id"])] = {"id": source["id"], "merged_into": target_id}
        self.out.persons.append(person_row(self.team, source, deleted=True))

    def current_id_rows(self, person: dict[str, Any]) -> list[dict[str, Any]]:
        """The person_distinct_id rows of ``person``'s ids as the state holds them now."""
        rows = []
        for d in person["distinct_ids"]:
            entry = self.s.distinct_ids.get(self._dkey(d))
            if entry is not None:
                rows.append(distinct_id_row(self.team, d, entry["person_id"], entry["version"]))
        return rows

    def _heal(self, person: dict[str, Any]) -> None:
        """Point every id of ``person`` at it (completes a merge a crash interrupted)."""
        for d in person["distinct_ids"]:
            entry = self.s.distinct_ids.get(self._dkey(d))
            if entry is None or entry["person_id"] != person["id"]:
                self._point(d, person["id"])

    # -- groups ------------------------------------------------------------------------------------------
    def group_index(self, group_type: str) -> int | None:
        """Index 0..4 of a group type for this team, assigned first come first served."""
        key = f"{self.team}:group_types"
        types: dict[str, int] = self.s.groups.get(key) or {}
        if group_type in types:
            return types[group_type]
        if len(types) >= MAX_GROUP_TYPES:
            self._warn("group_type_limit_reached", {"group_type": group_type, "max": MAX_GROUP_TYPES})
            return None
        index = len(types)
        self.s.groups[key] = {**types, group_type: index}
        return index

    def known_group_index(self, group_type: str) -> int | None:
        types: dict[str, int] = self.s.groups.get(f"{self.team}:group_types") or {}
        return types.get(group_type)

    def group_identify(self, group_type: str, group_key: str, group_set: dict[str, Any], timestamp: str) -> bool:
        """Upsert a group; False when the event must be dropped (its key is too long)."""
        if len(group_key) > MAX_GROUP_KEY:
            self._warn("group_key_too_long", {"group_type": group_type, "length": len(group_key)})
            return False
        index = self.group_index(group_type)
        if index is None:
            return True
        key = f"{self.team}:g:{index}:{group_key}"
        old = self.s.groups.get(key)
        record = {
            "created_at": old["created_at"] if old else timestamp,
            "properties": {**(old["properties"] if old else {}), **group_set},
            "version": (old["version"] + 1) if old else 0,
        }
        self.s.groups[key] = record
        self.out.groups.append(
            {
                "group_type_index": index,
                "group_key": group_key,
                "created_at": record["created_at"],
                "team_id": self.team,
                "group_properties": _dumps(record["properties"]),
                "version": record["version"],
            }
        )
        return True


def apply_properties(
    properties: dict[str, Any], set_: Any = None, set_once: Any = None, unset: Any = None
) -> tuple[dict[str, Any], bool]:
    """``$set`` writes changed values, ``$set_once`` only absent keys, ``$unset`` removes keys."""
    result = dict(properties)
    if isinstance(set_once, dict):
        for k, v in set_once.items():
            result.setdefault(k, v)
    if isinstance(set_, dict):
        result.update(set_)
    if isinstance(unset, dict):
        unset = list(unset)
    if isinstance(unset, list):
        for k in unset:
            if isinstance(k, str):
                result.pop(k, None)
    return result, _differs(result, properties)


def _differs(a: Any, b: Any) -> bool:
    """Inequality that also sees type changes Python's == hides (1 vs True, 1 vs 1.0)."""
    if type(a) is not type(b):
        return True
    if isinstance(a, dict):
        return a.keys() != b.keys() or any(_differs(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b, strict=True))
    return bool(a != b)


def applied_key(team_id: int) -> str:
    return f"{team_id}:applied"


def already_applied(state: State, team_id: int, position: tuple[int, ...]) -> bool:
    """Was the event at ``position`` = (partition, offset[, index in the envelope]) applied before
    (a redelivery after a crash)? Positions of one team only grow, as it lives on one partition."""
    mark = state.groups.get(applied_key(team_id))
    return mark is not None and mark[0] == position[0] and tuple(position[1:]) <= tuple(mark[1:])


def mark_applied(state: State, team_id: int, position: tuple[int, ...]) -> None:
    # The last write of an event: everything the event changed is in the changelog before it.
    state.groups[applied_key(team_id)] = list(position)
