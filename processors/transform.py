"""Pure transforms of the processors: a raw event and its team -> the rows to emit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ujson

from eventpipe.contract import NIL_UUID, RawEvent, event_row, warning_row
from processors.identity import (
    CHANGED,
    SAME,
    Emitted,
    Identity,
    State,
    already_applied,
    apply_properties,
    mark_applied,
    person_row,
    personless_id,
)

__all__ = ["already_applied", "process_with_persons", "replay_rows"]


@dataclass(slots=True)
class Output:
    """Everything one raw event turns into."""

    events: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)


def unknown_team(raw: RawEvent) -> Output:
    """An event whose api key no team owns: dropped, with a warning (team 0: no team to file it under)."""
    details = {"token": raw.token, "event": raw.event, "distinct_id": raw.distinct_id, "uuid": raw.uuid}
    return Output(warnings=[warning_row(0, "invalid_token", "processors", details, raw.now)])


def process_event(
    raw: RawEvent,
    team_id: int,
    person_id: str = NIL_UUID,
    person_properties: dict[str, Any] | None = None,
    groups: tuple[str, ...] = ("", "", "", "", ""),
) -> Output:
    """A raw event of a known team -> one event row plus the warnings the gateway attached."""
    properties: dict[str, Any] = dict(raw.data.get("properties") or {})
    for op in ("$set", "$set_once", "$unset"):
        if op in raw.data:
            properties.setdefault(op, raw.data[op])
    if raw.ip and "$ip" not in properties:
        properties["$ip"] = raw.ip
    row = event_row(
        uuid=raw.uuid,
        event=raw.event,
        properties=properties,
        timestamp=raw.timestamp,
        team_id=team_id,
        distinct_id=raw.distinct_id,
        created_at=raw.now,
        person_id=person_id,
        person_properties=person_properties,
        groups=groups,  # type: ignore[arg-type]
        elements_chain=str(raw.data.get("elements_chain") or ""),
    )
    warnings = [
        warning_row(team_id, w.get("type", "unknown"), "gateway", {**w.get("details", {}), "uuid": raw.uuid}, raw.now)
        for w in raw.warnings
    ]
    return Output(events=[row], warnings=warnings)


MERGE_EVENTS = ("$create_alias", "$merge_dangerously")


def _person_ops(raw: RawEvent) -> tuple[Any, Any, Any]:
    """``$set`` / ``$set_once`` / ``$unset`` from the event (top level wins) or its properties."""
    props = raw.data.get("properties") or {}
    ops = []
    for op in ("$set", "$set_once", "$unset"):
        top, inner = raw.data.get(op), props.get(op)
        if isinstance(top, dict) and isinstance(inner, dict):
            ops.append({**inner, **top})
        else:
            ops.append(top if top is not None else inner)
    return ops[0], ops[1], ops[2]


def process_with_persons(
    raw: RawEvent, team_id: int, state: State, position: tuple[int, ...] | None = None
) -> tuple[Output, Emitted]:
    """A raw event of a known team -> event row (with person and groups) and person/group rows.

    ``position`` (partition, offset) of the event in ``events_by_team`` is recorded as the team's
    applied watermark, the event's last state write (see :func:`replay_rows`).
    """
    out = Emitted()
    idn = Identity(state, team_id, raw.now, out)
    props: dict[str, Any] = raw.data.get("properties") or {}
    person_id, person_props = personless_id(team_id, raw.distinct_id), {}
    if props.get("$process_person_profile") is not False:
        person, status = _resolve_person(idn, raw, props)
        set_, set_once, unset = _person_ops(raw)
        new_props, changed = apply_properties(person["properties"], set_, set_once, unset)
        if changed:
            person = {**person, "properties": new_props}
            status = CHANGED if status == SAME else status
        person = idn.save(person, status)
        person_id, person_props = person["id"], person["properties"]

    keep = True
    if raw.event == "$groupidentify" and isinstance(props.get("$group_type"), str) and "$group_key" in props:
        group_set = props.get("$group_set") if isinstance(props.get("$group_set"), dict) else {}
        keep = idn.group_identify(props["$group_type"], str(props["$group_key"]), group_set, raw.timestamp)
    groups = _groups(idn, raw, props)
    if position is not None:
        mark_applied(state, team_id, position)
    if not keep:  # PostHog drops an event whose group key is too long
        return Output(warnings=out.warnings), _without_warnings(out)
    events = process_event(raw, team_id, person_id=person_id, person_properties=person_props, groups=groups)
    events.warnings.extend(out.warnings)
    return events, _without_warnings(out)


def replay_rows(raw: RawEvent, team_id: int, state: State) -> tuple[Output, Emitted]:
    """Rows for an event the state already applied (redelivered after a crash), without touching it.

    The rows it emitted the first time may not have reached Kafka, so they are emitted again from the
    current state: the event row with the id's current person, that person's row and its id rows
    (ClickHouse keeps the highest version of each, so re-sending current truth is safe).
    """
    out = Emitted()
    idn = Identity(state, team_id, raw.now, out)
    props: dict[str, Any] = raw.data.get("properties") or {}
    person_id, person_props = personless_id(team_id, raw.distinct_id), {}
    if props.get("$process_person_profile") is not False:
        person = idn.person_of(raw.distinct_id)
        if person is not None:
            person_id, person_props = person["id"], person["properties"]
            out.persons.append(person_row(team_id, person))
            out.distinct_ids.extend(idn.current_id_rows(person))
    groups = _groups(idn, raw, props, assign=False)
    out.warnings = []
    return process_event(raw, team_id, person_id=person_id, person_properties=person_props, groups=groups), out


def _without_warnings(out: Emitted) -> Emitted:
    out.warnings = []
    return out


def _groups(idn: Identity, raw: RawEvent, props: dict[str, Any], assign: bool = True) -> tuple[str, ...]:
    groups = ["", "", "", "", ""]
    declared = raw.data.get("$groups") or props.get("$groups")
    if isinstance(declared, dict):
        for group_type, key in declared.items():
            index = idn.group_index(str(group_type)) if assign else idn.known_group_index(str(group_type))
            if index is not None and key is not None:
                groups[index] = str(key)
    return tuple(groups)


def _js_string(value: Any) -> str:
    """What posthog-js / PostHog's Node ingestion would make of a non-string id (String(value))."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "[object Object]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_js_string(v) for v in value)
    return ujson.dumps(value)


def _resolve_person(idn: Identity, raw: RawEvent, props: dict[str, Any]) -> tuple[dict[str, Any], str]:
    target = raw.distinct_id
    if raw.event == "$identify" and "$anon_distinct_id" in props and props["$anon_distinct_id"] is not None:
        anon = _js_string(props["$anon_distinct_id"])
        if anon != target:
            return idn.merge(target, anon, False, raw.timestamp)
    elif raw.event in MERGE_EVENTS and props.get("alias") is not None:
        alias = _js_string(props["alias"])
        if alias != target:
            return idn.merge(target, alias, raw.event == "$merge_dangerously", raw.timestamp)
    return idn.get_or_create(target, raw.timestamp)
