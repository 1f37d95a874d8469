"""Pure transforms of the processors: a raw event, its team and its person -> the event row."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ujson

from eventpipe.contract import NIL_UUID, RawEvent, event_row, warning_row
from processors.elements import take_elements_chain


@dataclass(slots=True)
class Output:
    """Everything one raw event turns into."""

    events: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)


def process_event(
    raw: RawEvent,
    team_id: int,
    person_id: str = NIL_UUID,
    person_properties: dict[str, Any] | None = None,
    groups: tuple[str, ...] = ("", "", "", "", ""),
) -> Output:
    """A raw event of a known team -> one event row plus the warnings the gateway attached."""
    properties: dict[str, Any] = dict(raw.data.get("properties") or {})
    for op in ("$set", "$set_once"):
        if raw.data.get(op) is not None:
            properties[op] = _merged_op(raw.data[op], properties.get(op))
    if "$unset" in raw.data:  # PostHog does not copy it; eventpipe always stored it when the properties had none
        properties.setdefault("$unset", raw.data["$unset"])
    if raw.ip and "$ip" not in properties:
        properties["$ip"] = raw.ip
    elements_chain = take_elements_chain(properties, raw.data.get("elements_chain"))
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
        elements_chain=elements_chain,
    )
    warnings = [
        warning_row(team_id, w.get("type", "unknown"), "gateway", {**w.get("details", {}), "uuid": raw.uuid}, raw.now)
        for w in raw.warnings
    ]
    return Output(events=[row], warnings=warnings)


MERGE_EVENTS = ("$create_alias", "$merge_dangerously")


def _merged_op(top: Any, inner: Any) -> Any:
    """One person operation sent both at the event's top level and in its properties: two objects merge,
    the top level's value winning a key both name (PostHog's ``normalizeEvent``,
    plugin-server/src/utils/event.ts: ``{...properties.$set, ...event.$set}``); otherwise the top level's
    when it was sent."""
    if isinstance(top, dict) and isinstance(inner, dict):
        return {**inner, **top}
    return top if top is not None else inner


def person_ops(raw: RawEvent) -> tuple[Any, Any, Any]:
    """``$set`` / ``$set_once`` / ``$unset`` from the event's top level and its properties (:func:`_merged_op`)."""
    props = raw.data.get("properties") or {}
    set_, set_once, unset = (_merged_op(raw.data.get(op), props.get(op)) for op in ("$set", "$set_once", "$unset"))
    return set_, set_once, unset


def js_string(value: Any) -> str:
    """What posthog-js / PostHog's Node ingestion would make of a non-string id (String(value))."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "[object Object]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(js_string(v) for v in value)
    return ujson.dumps(value)
