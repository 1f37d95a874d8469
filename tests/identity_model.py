"""A single-threaded reference model of persons, merges and groups, and Hypothesis histories for it.

The processors are being re-partitioned by distinct id (issue 11): one team's events run on many workers,
only merges are decided in one ordered lane per team. This module is the yardstick for that pipeline:
small enough to read in one sitting, with no concurrency, no versions and no crash handling. It is the
*specification*; the rules below are what the new pipeline must produce.

Input
=====
An ordered list of :class:`Event` (one or more teams). An event has a team, a distinct id (a string, as the
gateway makes it), a name, a uuid, a timestamp ``YYYY-MM-DD HH:MM:SS.ffffff``, a properties dict and the
optional top-level ``$set`` / ``$set_once`` / ``$unset`` / ``$groups`` of the captured event. The person
operations of an event are taken as ``processors/transform.py`` ``person_ops`` does: per operation, when
both the top-level and the properties' value are dicts the top-level one is merged over the other;
otherwise the top-level value if present, else the properties' one.

PostHog also copies some of the event's own properties onto its person (``$browser``, ``$current_url``,
``utm_source``, … -- ``processors.transform.EVENT_TO_PERSON_PROPERTIES``; not from ``$snapshot`` or
``$performance_event``): each non-null one as a ``$set_once`` of ``$initial_<name without its first $>``
(an explicit ``$set_once`` of that key wins), and the key itself as a ``$set`` on ``$identify``,
``$create_alias``, ``$merge_dangerously`` and ``$set`` events, as a ``$set_once`` on any other (PostHog does
not rewrite a person only because a pageview saw a new ``$current_url``); an explicit ``$set`` of the key
wins either way. ``$os_name`` stands in for a missing ``$os`` and is not copied itself. Once anything is
copied, a ``$set`` or ``$set_once`` that is not an object counts as an empty one.

Every operation of an event is stamped ``(timestamp, uuid, rank)``; rank orders the operations of one
event the way ``apply_properties`` (below: PostHog's one-event-at-a-time rule) applies them:
``$set_once`` (0) before ``$set`` (1) before ``$unset`` (2). Uuids are assumed unique per event.

Persons
=======
* ``$process_person_profile: false`` (exactly ``False``): the event touches no person and takes no part
  in a merge. Its row's person is the distinct id's person when an earlier event of that id itself (one
  not personless) gave it one -- PostHog uses an existing person -- else
  ``processors.identity.personless_id(team, distinct_id)``. Only the id's own events count: whether it
  already had a person through another id's merge would depend on the interleaving.
* Merge attempts, as the processors detect them: ``$identify`` with a non-null ``$anon_distinct_id``
  (source = that id), ``$create_alias`` / ``$merge_dangerously`` with a non-null ``properties.alias``
  (source = the alias). A non-string source becomes what JavaScript's ``String()`` makes of it
  (``processors.transform.js_string``). The target is the event's distinct id. Source equal to
  target: a plain event. Either side illegal (``processors.identity.is_illegal_id``): warning
  ``cannot_merge_with_illegal_distinct_id`` and the event is a plain event of the target.
* A plain event of an id without a person creates the person ``new_person_id(team, id)``, not
  identified. Ids never merged keep that person forever; an id never loses its person.
* A merge, target U and source A (the event's own person operations are applied afterwards, to U's
  person):

  - U has no person: U joins A's person. If A has none either, A's person is created now, with id
    ``new_person_id(team, A)`` -- the *source's* id, not the target's (see "Order" below). Identified.
  - U has a person, A none: A joins U's person. Identified.
  - Both, the same person: nothing.
  - Both, different persons: if A's person is identified and the event is not ``$merge_dangerously``,
    warning ``cannot_merge_already_identified`` and nothing changes. Otherwise every id of A's person
    moves to U's person, which becomes identified, and A's person is gone.

Person properties (a CRDT)
==========================
Properties do not depend on processing order, nor on which side of a merge a value came from. Per key a
person keeps

* a register holding the ``$set`` or ``$unset`` with the greatest stamp (an ``$unset`` is a tombstone);
* the earliest ``$set_once``.

The key's value is the register's ``$set`` value when the winner is a ``$set``; absent when it is an
``$unset``; with no ``$set``/``$unset`` at all, the earliest ``$set_once`` value (absent without one). So a
``$set_once`` counts only while the key was never ``$set`` or ``$unset``: after an ``$unset`` it does not
bring the key back (PostHog's sequential rule would; staying order-free with that rule needs every later
``$set_once`` kept, which a person store cannot afford). A merge joins the two persons key by key: the
greater register, the earlier ``$set_once``. The join is commutative, associative and idempotent.
``$set`` and ``$set_once`` apply only when they are dicts; ``$unset`` is a list of key names (strings) or a
dict (its keys).

Groups
======
* ``$groupidentify`` whose ``$group_type`` is a string and that has a ``$group_key`` (made a string with
  ``str()`` like the processors): a key longer than 400 characters gives warning ``group_key_too_long``
  and the event is dropped -- no group write and no event row, although (as in the processors) its
  person operations and ``$groups`` still apply. Otherwise the group ``(team, type index, key)`` exists,
  and each key of ``$group_set`` (a dict; else nothing) is last-writer-wins by ``(timestamp, uuid)``.
* A team's group types get indexes 0..4 first come first served, in history order, from
  ``$groupidentify`` and from ``$groups`` (top level, else properties) of any event; every use of a
  sixth type gives warning ``group_type_limit_reached`` and is ignored. The event row's ``$group_0..4``
  come from ``$groups`` (non-null keys, ``str()``-ed).

Outcome
=======
The final mapping (team, distinct id) -> person id, the live persons, groups, group types, the warnings in
history order, and for each event row its person id *in the final mapping* (the person its distinct id
ends up with, i.e. after overrides) and its group columns.

Order
=====
Only two things depend on the order of events across distinct ids: merges (whether one succeeds or is
refused depends on ``is_identified``, which earlier merges set) and group type indexes. Given the relative
order of the effective merge attempts (:func:`merge_source`), every linearisation that keeps each distinct
id's own order gives the same mapping, persons, properties, groups-by-type-name and warnings
(tests/test_unit_identity_model.py proves it with Hypothesis, up to five group types per team). That
relies on the source rule above: whether A's own plain events were processed before the merge must not
matter, and both ways A and U end in ``new_person_id(team, A)`` (or U's person when U had one). With the
processors' current rule (a new person for both is named after the target) the person id would depend on
it -- see ``new_person_of`` and the test that shows it.

:func:`run` applies a list in its order; :func:`run_with_lane_order` takes per-id streams plus the order in
which a merge lane decided the merges, and applies one linearisation consistent with both.
"""

from __future__ import annotations

import json
import random
import uuid as uuidlib
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from hypothesis import strategies as st

from eventpipe.contract import RawEvent, format_ts, parse_ts
from processors.identity import (
    ILLEGAL_IDS_CASE_INSENSITIVE,
    ILLEGAL_IDS_CASE_SENSITIVE,
    MAX_GROUP_KEY,
    MAX_GROUP_TYPES,
    is_illegal_id,
    new_person_id,
    personless_id,
)
from processors.transform import (
    EVENT_TO_PERSON_PROPERTIES,
    NO_PERSON_PROPERTIES_EVENTS,
    PERSON_EVENTS,
    js_string,
)

Stamp = tuple[str, str, int]  # (timestamp, uuid, rank within the event)
SET_ONCE, SET, UNSET = 0, 1, 2


# -----------------------------------------------------------------------------------------------------------------
# events
# -----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One captured event, as far as identity is concerned. ``set``/``set_once``/``unset``/``groups`` are
    the event's *top-level* ``$set``/``$set_once``/``$unset``/``$groups`` (None: not sent)."""

    team_id: int
    distinct_id: str
    event: str
    uuid: str
    timestamp: str
    properties: dict[str, Any] = field(default_factory=dict)
    set: Any = None
    set_once: Any = None
    unset: Any = None
    groups: Any = None

    @property
    def key(self) -> tuple[int, str]:
        """The stream the event belongs to: its order is kept by every part of the pipeline."""
        return (self.team_id, self.distinct_id)

    def data(self) -> dict[str, Any]:
        """The event as ``RawEvent.data`` holds it."""
        out: dict[str, Any] = {"event": self.event, "properties": dict(self.properties)}
        for name, value in (("$set", self.set), ("$set_once", self.set_once), ("$unset", self.unset)):
            if value is not None:
                out[name] = value
        if self.groups is not None:
            out["$groups"] = self.groups
        return out

    def to_raw(self, token: str, now: str = "2024-06-01 00:00:00.000000") -> RawEvent:
        return RawEvent(
            uuid=self.uuid,
            distinct_id=self.distinct_id,
            token=token,
            event=self.event,
            timestamp=self.timestamp,
            now=now,
            data=self.data(),
        )

    @classmethod
    def from_raw(cls, raw: RawEvent, team_id: int) -> Event:
        data = raw.data
        return cls(
            team_id=team_id,
            distinct_id=raw.distinct_id,
            event=raw.event,
            uuid=raw.uuid,
            timestamp=raw.timestamp,
            properties=dict(data.get("properties") or {}),
            set=data.get("$set"),
            set_once=data.get("$set_once"),
            unset=data.get("$unset"),
            groups=data.get("$groups"),
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


def person_ops(e: Event) -> tuple[Any, Any, Any]:
    """``$set``, ``$set_once``, ``$unset`` of an event, combined as ``transform.person_ops`` does (module
    docstring, "Persons": lifted event properties)."""
    ops = []
    for top, op in ((e.set, "$set"), (e.set_once, "$set_once"), (e.unset, "$unset")):
        inner = e.properties.get(op)
        if isinstance(top, dict) and isinstance(inner, dict):
            ops.append({**inner, **top})
        else:
            ops.append(top if top is not None else inner)
    set_, set_once, unset = ops
    lifted = {k: v for k, v in e.properties.items() if k in EVENT_TO_PERSON_PROPERTIES}
    if not lifted or e.event in NO_PERSON_PROPERTIES_EVENTS:
        return set_, set_once, unset
    explicit_set = set_ if isinstance(set_, dict) else {}
    explicit_once = set_once if isinstance(set_once, dict) else {}
    sets = {**lifted, **explicit_set}
    once = {**{"$initial_" + k.replace("$", "", 1): v for k, v in lifted.items() if v is not None}, **explicit_once}
    os_name = e.properties.get("$os_name")
    if os_name:  # JavaScript's ??=: only where the value is null or missing
        sets["$os"] = os_name if sets.get("$os") is None else sets["$os"]
        once["$initial_os"] = os_name if once.get("$initial_os") is None else once["$initial_os"]
        sets.pop("$os_name", None)
        once.pop("$initial_os_name", None)
    if e.event in PERSON_EVENTS:
        return sets, once or set_once, unset
    # elsewhere a copied key only fills what the person lacks: a $set_once, unless the client $set it itself
    copied = {k: v for k, v in sets.items() if k not in explicit_set}
    once = {**copied, **once} if copied else once or set_once
    return {k: v for k, v in sets.items() if k in explicit_set}, once, unset


def personless(e: Event) -> bool:
    return e.properties.get("$process_person_profile") is False


def merge_attempt(e: Event) -> tuple[str, bool] | None:
    """(source id, dangerous) when the event asks for a merge (legal or not); None for a plain event."""
    if personless(e):
        return None
    if e.event == "$identify":
        raw = e.properties.get("$anon_distinct_id")
    elif e.event in ("$create_alias", "$merge_dangerously"):
        raw = e.properties.get("alias")
    else:
        return None
    if raw is None:
        return None
    source = js_string(raw)
    if source == e.distinct_id:
        return None
    return source, e.event == "$merge_dangerously"


def merge_source(e: Event) -> str | None:
    """The source id of an *effective* merge attempt (one the merge lane must decide), else None.

    Attempts with an illegal id are plain events (plus a warning) and need no lane."""
    attempt = merge_attempt(e)
    if attempt is None or is_illegal_id(e.distinct_id) or is_illegal_id(attempt[0]):
        return None
    return attempt[0]


def is_merge(e: Event) -> bool:
    return merge_source(e) is not None


# -----------------------------------------------------------------------------------------------------------------
# the property CRDT
# -----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyState:
    """One person property: the $set/$unset register and the earliest $set_once."""

    register: tuple[Stamp, int, Any] | None = None  # (stamp, SET or UNSET, value)
    set_once: tuple[Stamp, Any] | None = None  # the earliest

    def with_set(self, stamp: Stamp, value: Any) -> KeyState:
        return self.join(KeyState(register=(stamp, SET, value)))

    def with_unset(self, stamp: Stamp) -> KeyState:
        return self.join(KeyState(register=(stamp, UNSET, None)))

    def with_set_once(self, stamp: Stamp, value: Any) -> KeyState:
        return self.join(KeyState(set_once=(stamp, value)))

    def join(self, other: KeyState) -> KeyState:
        regs = [r for r in (self.register, other.register) if r is not None]
        once = [o for o in (self.set_once, other.set_once) if o is not None]
        return KeyState(
            max(regs, key=lambda r: r[0]) if regs else None,
            min(once, key=lambda o: o[0]) if once else None,
        )

    def value(self) -> tuple[bool, Any]:
        """(present, value)."""
        if self.register is not None:
            return (True, self.register[2]) if self.register[1] == SET else (False, None)
        if self.set_once is not None:
            return True, self.set_once[1]
        return False, None


Registers = dict[str, KeyState]


def apply_ops(registers: Registers, timestamp: str, uuid: str, set_: Any, set_once: Any, unset: Any) -> None:
    """Add one event's person operations to ``registers`` (in place)."""
    if isinstance(set_once, dict):
        for k, v in set_once.items():
            registers[k] = registers.get(k, KeyState()).with_set_once((timestamp, uuid, SET_ONCE), v)
    if isinstance(set_, dict):
        for k, v in set_.items():
            registers[k] = registers.get(k, KeyState()).with_set((timestamp, uuid, SET), v)
    keys = list(unset) if isinstance(unset, dict) else unset
    if isinstance(keys, list):
        for k in keys:
            if isinstance(k, str):
                registers[k] = registers.get(k, KeyState()).with_unset((timestamp, uuid, UNSET))


def join_registers(a: Registers, b: Registers) -> Registers:
    return {k: a.get(k, KeyState()).join(b.get(k, KeyState())) for k in a.keys() | b.keys()}


def properties_of(registers: Registers) -> dict[str, Any]:
    out = {}
    for k in sorted(registers):
        present, value = registers[k].value()
        if present:
            out[k] = value
    return out


# -----------------------------------------------------------------------------------------------------------------
# outcome
# -----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PersonView:
    team_id: int
    properties: dict[str, Any]
    is_identified: bool
    distinct_ids: frozenset[str]


WarningRow = tuple[int, str, dict[str, Any]]


@dataclass
class Outcome:
    mapping: dict[tuple[int, str], str]
    persons: dict[str, PersonView]
    groups: dict[tuple[int, int, str], dict[str, Any]]
    group_types: dict[int, dict[str, int]]
    warnings: list[WarningRow]
    event_person: dict[str, str]  # uuid -> person id in the final mapping (events that got a row)
    event_groups: dict[str, tuple[str, ...]]  # uuid -> $group_0..4 of the row
    _team_of_uuid: dict[str, int] = field(default_factory=dict, repr=False)

    def person_of(self, team_id: int, distinct_id: str) -> PersonView:
        return self.persons[self.mapping[(team_id, distinct_id)]]

    def order_free(self) -> str:
        """Everything that must not depend on the interleaving once the merge order is fixed, as JSON.

        Type-strict (``1``, ``1.0`` and ``True`` differ); groups by type *name* (indexes are first come
        first served); warnings as a multiset."""
        names = {t: {i: n for n, i in types.items()} for t, types in self.group_types.items()}
        view = {
            "mapping": sorted([t, d, p] for (t, d), p in self.mapping.items()),
            "persons": sorted(
                [pid, p.team_id, p.properties, p.is_identified, sorted(p.distinct_ids)]
                for pid, p in self.persons.items()
            ),
            "groups": sorted([t, names[t][i], k, props] for (t, i, k), props in self.groups.items()),
            "group_types": {str(t): sorted(types) for t, types in self.group_types.items()},
            "warnings": sorted(_json([t, w, d]) for t, w, d in self.warnings),
            "event_person": sorted(self.event_person.items()),
            "event_groups": sorted(
                [u, sorted([self._team_of_uuid[u], names[self._team_of_uuid[u]][i], k] for i, k in enumerate(g) if k)]
                for u, g in self.event_groups.items()
            ),
        }
        return _json(view)

    def canonical(self) -> str:
        """The whole outcome as type-strict JSON, group indexes and warning order included."""
        view = {
            "mapping": sorted([t, d, p] for (t, d), p in self.mapping.items()),
            "persons": sorted(
                [pid, p.team_id, p.properties, p.is_identified, sorted(p.distinct_ids)]
                for pid, p in self.persons.items()
            ),
            "groups": sorted([t, i, k, props] for (t, i, k), props in self.groups.items()),
            "group_types": {str(t): types for t, types in sorted(self.group_types.items())},
            "warnings": [[t, w, d] for t, w, d in self.warnings],
            "event_person": sorted(self.event_person.items()),
            "event_groups": sorted(self.event_groups.items()),
        }
        return _json(view)


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False)


# -----------------------------------------------------------------------------------------------------------------
# the model
# -----------------------------------------------------------------------------------------------------------------


@dataclass
class _Person:
    registers: Registers
    is_identified: bool
    distinct_ids: set[str]


@dataclass
class _Team:
    mapping: dict[str, str] = field(default_factory=dict)
    persons: dict[str, _Person] = field(default_factory=dict)
    group_types: dict[str, int] = field(default_factory=dict)
    groups: dict[tuple[int, str], dict[str, tuple[tuple[str, str], Any]]] = field(default_factory=dict)
    with_person: set[str] = field(default_factory=set)  # ids that sent an event processed with their person


NewPersonOf = Literal["source", "target"]


class Model:
    """The rules of the module docstring, applied one event at a time.

    ``new_person_of="target"`` names a person created by a merge of two person-less ids after the target
    (what processors/identity.py does today); it exists only to show that this makes the outcome depend
    on the interleaving. The specification is ``"source"``."""

    def __init__(self, new_person_of: NewPersonOf = "source") -> None:
        self.teams: dict[int, _Team] = defaultdict(_Team)
        self.warnings: list[WarningRow] = []
        self.rows: dict[str, tuple[int, str, bool]] = {}  # uuid -> (team, distinct id, stored without a person)
        self.row_groups: dict[str, tuple[str, ...]] = {}
        self.new_person_of = new_person_of

    # -- persons ---------------------------------------------------------------------------------------------
    def _create(self, team_id: int, t: _Team, name_of: str, ids: Iterable[str], identified: bool) -> str:
        pid = new_person_id(team_id, name_of)
        assert pid not in t.persons, "a person id is never reused: the id it is named after has a person"
        t.persons[pid] = _Person({}, identified, set(ids))
        for d in ids:
            t.mapping[d] = pid
        return pid

    def _get_or_create(self, team_id: int, t: _Team, d: str) -> str:
        if d in t.mapping:
            return t.mapping[d]
        return self._create(team_id, t, d, [d], False)

    def _merge(self, team_id: int, t: _Team, target: str, source: str, dangerous: bool) -> str:
        u, a = t.mapping.get(target), t.mapping.get(source)
        if u is None and a is None:
            name_of = source if self.new_person_of == "source" else target
            return self._create(team_id, t, name_of, [source, target], True)
        if u is None:
            assert a is not None
            t.mapping[target] = a
            t.persons[a].distinct_ids.add(target)
            t.persons[a].is_identified = True
            return a
        if a is None:
            t.mapping[source] = u
            t.persons[u].distinct_ids.add(source)
            t.persons[u].is_identified = True
            return u
        if a == u:
            return u
        src = t.persons[a]
        if src.is_identified and not dangerous:
            self.warnings.append(
                (
                    team_id,
                    "cannot_merge_already_identified",
                    {"target": target, "source": source, "source_person_id": a},
                )
            )
            return u
        dst = t.persons[u]
        dst.registers = join_registers(dst.registers, src.registers)
        dst.is_identified = True
        dst.distinct_ids |= src.distinct_ids
        for d in src.distinct_ids:
            t.mapping[d] = u
        del t.persons[a]
        return u

    def _resolve(self, e: Event, t: _Team) -> str:
        attempt = merge_attempt(e)
        if attempt is None:
            return self._get_or_create(e.team_id, t, e.distinct_id)
        source, dangerous = attempt
        if is_illegal_id(e.distinct_id) or is_illegal_id(source):
            self.warnings.append(
                (e.team_id, "cannot_merge_with_illegal_distinct_id", {"target": e.distinct_id, "source": source})
            )
            return self._get_or_create(e.team_id, t, e.distinct_id)
        return self._merge(e.team_id, t, e.distinct_id, source, dangerous)

    # -- groups ----------------------------------------------------------------------------------------------
    def _group_index(self, team_id: int, t: _Team, group_type: str) -> int | None:
        if group_type in t.group_types:
            return t.group_types[group_type]
        if len(t.group_types) >= MAX_GROUP_TYPES:
            self.warnings.append(
                (team_id, "group_type_limit_reached", {"group_type": group_type, "max": MAX_GROUP_TYPES})
            )
            return None
        t.group_types[group_type] = len(t.group_types)
        return t.group_types[group_type]

    def _group_identify(self, e: Event, t: _Team) -> bool:
        props = e.properties
        group_type, key = props["$group_type"], str(props["$group_key"])
        if len(key) > MAX_GROUP_KEY:
            self.warnings.append((e.team_id, "group_key_too_long", {"group_type": group_type, "length": len(key)}))
            return False
        index = self._group_index(e.team_id, t, group_type)
        if index is None:
            return True
        record = t.groups.setdefault((index, key), {})
        group_set = props.get("$group_set")
        for k, v in (group_set if isinstance(group_set, dict) else {}).items():
            stamp = (e.timestamp, e.uuid)
            if k not in record or record[k][0] < stamp:
                record[k] = (stamp, v)
        return True

    def _row_groups(self, e: Event, t: _Team) -> tuple[str, ...]:
        columns = ["", "", "", "", ""]
        declared = e.groups or e.properties.get("$groups")
        if isinstance(declared, dict):
            for group_type, key in declared.items():
                index = self._group_index(e.team_id, t, str(group_type))
                if index is not None and key is not None:
                    columns[index] = str(key)
        return tuple(columns)

    # -- one event -------------------------------------------------------------------------------------------
    def apply(self, e: Event) -> None:
        t = self.teams[e.team_id]
        # a personless event of an id whose own events gave it a person is stored with that person
        without_person = personless(e) and e.distinct_id not in t.with_person
        if not personless(e):
            t.with_person.add(e.distinct_id)
            pid = self._resolve(e, t)
            apply_ops(t.persons[pid].registers, e.timestamp, e.uuid, *person_ops(e))
        keep = True
        props = e.properties
        if e.event == "$groupidentify" and isinstance(props.get("$group_type"), str) and "$group_key" in props:
            keep = self._group_identify(e, t)
        columns = self._row_groups(e, t)
        if keep:
            self.rows[e.uuid] = (e.team_id, e.distinct_id, without_person)
            self.row_groups[e.uuid] = columns

    def outcome(self) -> Outcome:
        mapping, persons, groups, group_types = {}, {}, {}, {}
        for team_id, t in sorted(self.teams.items()):
            mapping.update({(team_id, d): p for d, p in t.mapping.items()})
            for pid, p in t.persons.items():
                persons[pid] = PersonView(
                    team_id, properties_of(p.registers), p.is_identified, frozenset(p.distinct_ids)
                )
            for (index, key), record in t.groups.items():
                groups[(team_id, index, key)] = {k: v for k, (_, v) in sorted(record.items())}
            group_types[team_id] = dict(t.group_types)
        event_person = {
            u: personless_id(team, d) if pl else self.teams[team].mapping[d] for u, (team, d, pl) in self.rows.items()
        }
        return Outcome(
            mapping=mapping,
            persons=persons,
            groups=groups,
            group_types=group_types,
            warnings=list(self.warnings),
            event_person=event_person,
            event_groups=dict(self.row_groups),
            _team_of_uuid={u: team for u, (team, _, _) in self.rows.items()},
        )


def run(events: Iterable[Event], new_person_of: NewPersonOf = "source") -> Outcome:
    """Apply ``events`` in the given order."""
    model = Model(new_person_of)
    for e in events:
        model.apply(e)
    return model.outcome()


def lane_linearisation(events: Sequence[Event], merge_order: Sequence[str]) -> list[Event]:
    """One order of ``events`` that keeps each distinct id's order (as in ``events``) and puts the effective
    merges in ``merge_order`` (their uuids, as a team's merge lane decided them; teams may be mixed).

    Each merge goes as early as its own stream allows; everything else follows. Raises ValueError when
    ``merge_order`` does not name exactly the merges of ``events`` or contradicts a stream's order."""
    merges = [e.uuid for e in events if is_merge(e)]
    if sorted(merges) != sorted(merge_order) or len(set(merge_order)) != len(merge_order):
        raise ValueError("merge_order must list each merge of the history exactly once")
    streams: dict[tuple[int, str], deque[Event]] = defaultdict(deque)
    for e in events:
        streams[e.key].append(e)
    by_uuid = {e.uuid: e for e in events if is_merge(e)}
    out: list[Event] = []
    for u in merge_order:
        m = by_uuid[u]
        stream = streams[m.key]
        while stream[0] is not m:
            e = stream.popleft()
            if is_merge(e):
                raise ValueError(f"merge {e.uuid} precedes {u} in its stream but comes later in merge_order")
            out.append(e)
        out.append(stream.popleft())
    for e in events:  # the rest, in the original order
        stream = streams[e.key]
        if stream and stream[0] is e:
            out.append(stream.popleft())
    assert len(out) == len(events)
    return out


def run_with_lane_order(events: Sequence[Event], merge_order: Sequence[str]) -> Outcome:
    """The outcome of the per-id streams of ``events`` when the merges were decided in ``merge_order``.

    Any linearisation consistent with both gives the same :meth:`Outcome.order_free` (tested), so one is
    enough; group type indexes may still differ from the pipeline's (they follow its arrival order)."""
    return run(lane_linearisation(events, merge_order))


def interleavings(
    events: Sequence[Event], rng: random.Random, fixed: Callable[[Event], bool] | None = None
) -> list[Event]:
    """A random order of ``events`` keeping each (team, distinct id)'s order; with ``fixed``, the events it
    selects also keep their relative order (e.g. ``fixed=is_merge``: the order the merge lane saw)."""
    streams: dict[tuple[int, str], deque[Event]] = defaultdict(deque)
    for e in events:
        streams[e.key].append(e)
    pinned = deque(e for e in events if fixed is not None and fixed(e))
    out: list[Event] = []
    while len(out) < len(events):
        ready = [
            s for s in streams.values() if s and (fixed is None or not fixed(s[0]) or (pinned and s[0] is pinned[0]))
        ]
        stream = rng.choice(ready)
        e = stream.popleft()
        if pinned and e is pinned[0]:
            pinned.popleft()
        out.append(e)
    return out


# -----------------------------------------------------------------------------------------------------------------
# capture payloads
# -----------------------------------------------------------------------------------------------------------------


def _iso(timestamp: str) -> str:
    return parse_ts(timestamp).isoformat()


def to_capture_event(e: Event) -> dict[str, Any]:
    """The event as an SDK puts it in a /batch/ request. No ``sent_at`` is sent, so the gateway keeps the
    timestamp as given (with one it would correct the client's clock skew against its own)."""
    out: dict[str, Any] = {
        "event": e.event,
        "distinct_id": e.distinct_id,
        "uuid": e.uuid,
        "timestamp": _iso(e.timestamp),
        "properties": dict(e.properties),
    }
    for name, value in (("$set", e.set), ("$set_once", e.set_once), ("$unset", e.unset), ("$groups", e.groups)):
        if value is not None:
            out[name] = value
    return out


def to_capture_payload(
    events: Sequence[Event], token_of_team: Mapping[int, str], max_batch: int = 100
) -> list[tuple[int, dict[str, Any]]]:
    """(team, JSON body for POST /batch/) in send order. A request carries one api key, so the history is
    cut into runs of consecutive events of one team (at most ``max_batch`` each); sent one after the other,
    each distinct id's events reach the gateway in history order."""
    bodies: list[tuple[int, dict[str, Any]]] = []
    for e in events:
        if not bodies or bodies[-1][0] != e.team_id or len(bodies[-1][1]["batch"]) >= max_batch:
            bodies.append((e.team_id, {"api_key": token_of_team[e.team_id], "batch": []}))
        bodies[-1][1]["batch"].append(to_capture_event(e))
    return bodies


# -----------------------------------------------------------------------------------------------------------------
# Hypothesis strategies
# -----------------------------------------------------------------------------------------------------------------

BASE_TIME = datetime(2024, 1, 1, 10, 0, tzinfo=UTC)
ILLEGAL_POOL: tuple[str, ...] = (
    *sorted(ILLEGAL_IDS_CASE_INSENSITIVE)[:3],
    "Anonymous",
    *sorted(ILLEGAL_IDS_CASE_SENSITIVE)[:3],
    "'null'",
    "",
    "  ",
)
NON_STRING_IDS: tuple[Any, ...] = (0, 42, True, 1.0, {"a": 1}, [1, 2])  # js_string: "0" "42" "true" "1.0" …
KEYS = ("a", "b", "c", "$browser")  # $browser: also one of the properties PostHog copies onto the person
COPIED_KEYS = ("$browser", "utm_source", "$os_name", "$os")
COPIED_VALUES: tuple[Any, ...] = ("Chrome", "ads", None, 1)
VALUES: tuple[Any, ...] = (1, True, 1.0, "x", None)
GROUP_TYPES = ("company", "project", "org", "team", "store", "region", "shard")
GROUP_KEYS = ("g1", "g2", "x" * (MAX_GROUP_KEY + 1))


def ts_at(seconds: int) -> str:
    return format_ts(BASE_TIME + timedelta(seconds=seconds))


KINDS = ("plain",) * 5 + ("identify",) * 3 + ("alias", "dangerous", "groupidentify", "personless")


class _Bits:
    """Decodes one drawn integer into an event's choices (one Hypothesis draw per event keeps generation
    fast, and shrinking the integer towards 0 shrinks the event towards a plain one)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def take(self, k: int) -> int:
        self.n, r = divmod(self.n, k)
        return r

    def pick(self, options: Sequence[Any]) -> Any:
        return options[self.take(len(options))]

    def one_in(self, k: int) -> bool:
        return self.take(k) == k - 1


def _values(bits: _Bits, min_size: int = 1) -> dict[str, Any]:
    return {bits.pick(KEYS): bits.pick(VALUES) for _ in range(min_size + bits.take(3 - min_size))}


def _ops(bits: _Bits) -> tuple[dict[str, Any], dict[str, Any]]:
    """Person operations as (in properties, at the top level); both empty most of the time. Some are
    malformed on purpose (a list for $set, a non-string key to $unset) and some are sent in both places."""
    inner: dict[str, Any] = {}
    top: dict[str, Any] = {}
    for op in ("$set", "$set_once", "$unset"):
        if not bits.one_in(4):
            continue
        value: Any
        if op == "$unset":
            shape = bits.take(3)
            if shape == 0:
                value = {bits.pick(KEYS): 1}
            else:
                value = [bits.pick((*KEYS, 7)) for _ in range(shape)]
        else:
            value = ["a"] if bits.one_in(8) else _values(bits)
        where = bits.pick(("properties", "properties", "top", "both"))
        if where in ("properties", "both"):
            inner[op] = value
        if where in ("top", "both"):
            top[op] = _values(bits) if where == "both" else value
    return inner, top


@st.composite
def histories(
    draw: st.DrawFn,
    teams: tuple[int, int] = (1, 3),
    anon_ids: int = 3,
    user_ids: int = 2,
    max_length: int = 60,
    group_types: Sequence[str] = GROUP_TYPES,
    seconds: int = 30,
) -> list[Event]:
    """A history: events of 1..3 teams in the order the pipeline receives them.

    Ids per team: ``anon-<team>-<n>`` and ``user-<n>`` (the same user names in every team), ``42`` (what
    the non-string alias 42 becomes) and, as event distinct ids, a few illegal ones (never empty: the
    gateway refuses those). Sources of merges: mostly anonymous ids, also any id, illegal ones, non-string
    values, null and the target itself. Timestamps are whole seconds out of ``seconds`` values (so many are
    equal and the uuid breaks the tie) and do not follow the history order; uuid order is drawn too, so a
    tie is not always won by the later event."""
    team_ids = list(range(1, draw(st.integers(*teams)) + 1))
    length = draw(st.integers(0, max_length))
    specs = draw(st.lists(st.integers(0, 2**192 - 1), min_size=length, max_size=length))
    legal_targets = [d for d in ILLEGAL_POOL if d.strip()]
    out: list[Event] = []
    for i, spec in enumerate(specs):
        bits = _Bits(spec)
        team = bits.pick(team_ids)
        kind = bits.pick(KINDS)
        anons = [f"anon-{team}-{n}" for n in range(anon_ids)]
        ids = [*anons, *[f"user-{n}" for n in range(user_ids)], "42"]
        distinct_id = bits.pick(legal_targets) if bits.one_in(10) else bits.pick(ids)
        source_kind = bits.take(9)
        source: Any = (
            bits.pick(anons)
            if source_kind < 4
            else bits.pick(ids)
            if source_kind == 4
            else bits.pick(ILLEGAL_POOL)
            if source_kind == 5
            else bits.pick(NON_STRING_IDS)
            if source_kind == 6
            else None
            if source_kind == 7
            else distinct_id
        )
        props: dict[str, Any]
        inner, top = _ops(bits)
        props = dict(inner)
        name = bits.pick(("$pageview", "signup"))
        if kind == "identify":
            name, props["$anon_distinct_id"] = "$identify", source
        elif kind in ("alias", "dangerous"):
            name = "$create_alias" if kind == "alias" else "$merge_dangerously"
            props["alias"] = source
        elif kind == "groupidentify":
            name = "$groupidentify"
            props["$group_type"] = bits.pick(group_types)
            props["$group_key"] = GROUP_KEYS[2] if bits.one_in(10) else bits.pick(GROUP_KEYS[:2])
            props["$group_set"] = _values(bits, min_size=0)
        if kind == "personless" or bits.one_in(10):
            props["$process_person_profile"] = False
        groups = None
        if bits.one_in(5):
            declared = {bits.pick(group_types): bits.pick((*GROUP_KEYS[:2], None)) for _ in range(1 + bits.take(2))}
            if bits.take(2):
                groups = declared
            else:
                props["$groups"] = declared
        timestamp = ts_at(bits.take(seconds))
        if bits.one_in(4):  # properties PostHog copies onto the person ($initial_*), some null, some sent twice
            for key in COPIED_KEYS[: 1 + bits.take(len(COPIED_KEYS))]:
                props.setdefault(key, bits.pick(COPIED_VALUES))
        out.append(
            Event(
                team_id=team,
                distinct_id=distinct_id,
                event=name,
                uuid=str(uuidlib.UUID(int=(bits.take(1 << 16) << 64) | (i + 1))),
                timestamp=timestamp,
                properties=props,
                set=top.get("$set"),
                set_once=top.get("$set_once"),
                unset=top.get("$unset"),
                groups=groups,
            )
        )
    return out
