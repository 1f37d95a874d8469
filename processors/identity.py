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
from collections.abc import MutableMapping
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
DELETED_VERSION_BUMP = 100  # a deleted person's row must win over any later update of it

Table = MutableMapping[str, Any]
NEW, CHANGED, SAME = "new", "changed", "same"


def is_illegal_id(distinct_id: object) -> bool:
    if not isinstance(distinct_id, str):
        return True
    text = distinct_id.strip()
    if not text:
        return True
    for candidate in (text, text.strip("'"), text.strip('"')):
        if candidate.lower() in ILLEGAL_IDS_CASE_INSENSITIVE or candidate in ILLEGAL_IDS_CASE_SENSITIVE:
            return True
    return False


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

    # -- lookups -----------------------------------------------------------------------------------
    def _dkey(self, distinct_id: str) -> str:
        return f"{self.team}:d:{distinct_id}"

    def _pkey(self, person_id: str) -> str:
        return f"{self.team}:p:{person_id}"

    def person_of(self, distinct_id: str) -> dict[str, Any] | None:
        entry = self.s.distinct_ids.get(self._dkey(distinct_id))
        return None if entry is None else self.s.persons.get(self._pkey(entry["person_id"]))

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
            "id": str(uuid.uuid4()),
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
        if target is None:
            assert source is not None
            self._point(target_id, source["id"])
            return {**source, "is_identified": True, "distinct_ids": [*source["distinct_ids"], target_id]}, CHANGED
        if source is None:
            self._point(source_id, target["id"])
            return {**target, "is_identified": True, "distinct_ids": [*target["distinct_ids"], source_id]}, CHANGED
        if source["id"] == target["id"]:
            return target, SAME
        if source["is_identified"] and not dangerous:
            self._warn(
                "cannot_merge_already_identified",
                {"target": target_id, "source": source_id, "source_person_id": source["id"]},
            )
            return target, SAME
        for d in source["distinct_ids"]:
            self._point(d, target["id"])
        merged = {
            **target,
            "properties": {**source["properties"], **target["properties"]},
            "created_at": min(target["created_at"], source["created_at"]),
            "is_identified": True,
            "version": max(target["version"], source["version"]),  # save() makes it max + 1
            "distinct_ids": [*target["distinct_ids"], *source["distinct_ids"]],
        }
        del self.s.persons[self._pkey(source["id"])]
        self.out.persons.append(person_row(self.team, source, deleted=True))
        return merged, CHANGED

    def save(self, person: dict[str, Any], status: str) -> dict[str, Any]:
        """Store a NEW person at version 0, a CHANGED one at version + 1; SAME is left alone."""
        if status == CHANGED:
            person = {**person, "version": person["version"] + 1}
        if status != SAME:
            self._save(person)
        return person

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

    def group_identify(self, group_type: str, group_key: str, group_set: dict[str, Any], timestamp: str) -> None:
        if len(group_key) > MAX_GROUP_KEY:
            self._warn("group_key_too_long", {"group_type": group_type, "length": len(group_key)})
            return
        index = self.group_index(group_type)
        if index is None:
            return
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
    return result, result != properties
