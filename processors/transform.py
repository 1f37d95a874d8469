"""Pure transforms of the processors: a raw event and its team -> the rows to emit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eventpipe.contract import RawEvent, event_row, warning_row


@dataclass(slots=True)
class Output:
    """Everything one raw event turns into."""

    events: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)


def unknown_team(raw: RawEvent) -> Output:
    """An event whose api key no team owns: dropped, with a warning (team 0: no team to file it under)."""
    details = {"token": raw.token, "event": raw.event, "distinct_id": raw.distinct_id, "uuid": raw.uuid}
    return Output(warnings=[warning_row(0, "invalid_token", "processors", details, raw.now)])


def process_event(raw: RawEvent, team_id: int) -> Output:
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
        elements_chain=str(raw.data.get("elements_chain") or ""),
    )
    warnings = [
        warning_row(team_id, w.get("type", "unknown"), "gateway", {**w.get("details", {}), "uuid": raw.uuid}, raw.now)
        for w in raw.warnings
    ]
    return Output(events=[row], warnings=warnings)
