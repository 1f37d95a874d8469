"""Pure transforms of the processors: a raw event, its team and its person -> the event row."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ujson

from eventpipe.contract import NIL_UUID, RawEvent, event_row, parse_ts, warning_row
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
    normalised: Normalised | None = None,
) -> Output:
    """A raw event of a known team -> one event row plus the warnings the gateway attached.

    ``normalised``: :func:`event_properties` of ``raw`` when the caller computed it already (for
    :func:`person_ops`); it is consumed (its properties become the row's)."""
    properties, _lifted = normalised if normalised is not None else event_properties(raw)
    if properties.get("$process_person_profile") is False:
        # PostHog's normalizeProcessPerson (plugin-server/src/utils/event.ts): a personless event keeps no
        # person operations, so none is stored as if it had been applied.
        for op in ("$set", "$set_once", "$unset"):
            properties.pop(op, None)
    elif "$unset" in raw.data:  # PostHog does not copy it; eventpipe always stored it when the properties had none
        properties.setdefault("$unset", raw.data["$unset"])
    if raw.ip and "$ip" not in properties:
        properties["$ip"] = raw.ip
    if raw.sent_at:  # PostHog's normalizeEvent: the capture's sent_at, over any the client put there
        properties["$sent_at"] = rfc3339(raw.sent_at)
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


def rfc3339(timestamp: str) -> str:
    """A contract timestamp as PostHog's Rust capture serialises ``sent_at`` (the ``time`` crate's RFC 3339:
    ``2024-01-01T12:00:00.5Z``, the fraction without trailing zeros and left out when zero)."""
    if len(timestamp) == 26 and timestamp[10] == " " and timestamp[19] == ".":  # format_ts's shape: no parse
        fraction = timestamp[20:].rstrip("0")
        return f"{timestamp[:10]}T{timestamp[11:19]}{'.' + fraction if fraction else ''}Z"
    dt = parse_ts(timestamp)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if dt.microsecond:
        text += "." + f"{dt.microsecond:06d}".rstrip("0")
    return text + "Z"


MERGE_EVENTS = ("$create_alias", "$merge_dangerously")
# Events whose person updates PostHog always writes; on any other event, a person property it lifted from
# the event's own properties (below) is written only while the person lacks it
# (plugin-server/src/worker/ingestion/persons/person-update.ts, shouldUpdatePersonIfOnlyChange).
PERSON_EVENTS = frozenset({"$identify", "$create_alias", "$merge_dangerously", "$set"})
# Event properties PostHog copies onto the person: ``$set`` as they are, ``$set_once`` as ``$initial_<name
# without its $>`` (EVENT_TO_PERSON_PROPERTIES and CAMPAIGN_PROPERTIES of
# plugin-server/src/worker/ingestion/persons/person-property-utils.ts).
EVENT_TO_PERSON_PROPERTIES = frozenset({
    # mobile
    "$app_build", "$app_name", "$app_namespace", "$app_version",
    # web
    "$browser", "$browser_version", "$device_type", "$current_url", "$pathname", "$os", "$os_name",
    "$os_version", "$referring_domain", "$referrer", "$screen_height", "$screen_width", "$viewport_height",
    "$viewport_width", "$raw_user_agent",
    # campaigns
    "utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_name", "utm_term", "gclid", "gad_source",
    "gclsrc", "dclid", "gbraid", "wbraid", "fbclid", "msclkid", "twclid", "li_fat_id", "mc_cid", "igshid",
    "ttclid", "rdt_cid", "irclid", "_kx", "epik", "qclid", "sccid",
})
NO_PERSON_PROPERTIES_EVENTS = ("$snapshot", "$performance_event")


def initial_name(key: str) -> str:
    """``$browser`` -> ``$initial_browser``, ``utm_source`` -> ``$initial_utm_source`` (the first ``$`` goes)."""
    return "$initial_" + key.replace("$", "", 1)


_INITIAL_NAMES = {k: initial_name(k) for k in EVENT_TO_PERSON_PROPERTIES}  # computed once: every event needs some
Normalised = tuple[dict[str, Any], tuple[str, ...]]


def event_properties(raw: RawEvent) -> Normalised:
    """The properties PostHog's ``normalizeEvent`` (plugin-server/src/utils/event.ts) makes of the event's,
    and the keys of their ``$set`` it lifted from the event's own properties.

    * ``$set`` / ``$set_once`` sent at the top level are merged over the properties' (:func:`_merged_op`);
    * every :data:`EVENT_TO_PERSON_PROPERTIES` key among the properties goes into ``$set`` (an explicit
      ``$set`` of the key wins) and, unless its value is null, into ``$set_once`` as
      :func:`initial_name` (an explicit one wins): ``personInitialAndUTMProperties`` in
      plugin-server/src/utils/db/utils.ts. A null first-touch value would block the real one forever, so
      PostHog leaves it out of ``$set_once`` since its PR 74742. ``$os_name`` (some SDKs send it) stands in
      for a missing ``$os`` and is not itself copied.
    """
    properties: dict[str, Any] = dict(raw.data.get("properties") or {})
    for op in ("$set", "$set_once"):
        if raw.data.get(op) is not None:
            properties[op] = _merged_op(raw.data[op], properties.get(op))
    if raw.event in NO_PERSON_PROPERTIES_EVENTS:
        return properties, ()
    found = {k: v for k, v in properties.items() if k in EVENT_TO_PERSON_PROPERTIES}
    if not found:
        return properties, ()
    explicit_set = properties.get("$set") if isinstance(properties.get("$set"), dict) else {}
    explicit_once = properties.get("$set_once") if isinstance(properties.get("$set_once"), dict) else {}
    set_ = {**found, **explicit_set}
    set_once = {**{_INITIAL_NAMES[k]: v for k, v in found.items() if v is not None}, **explicit_once}
    os_name = properties.get("$os_name")
    if os_name:
        if properties.get("$os") is None:
            properties["$os"] = os_name
        if set_.get("$os") is None:
            set_["$os"] = os_name
        if set_once.get("$initial_os") is None:
            set_once["$initial_os"] = os_name
        set_.pop("$os_name", None)
        set_once.pop("$initial_os_name", None)
    properties["$set"] = set_
    if set_once:
        properties["$set_once"] = set_once
    return properties, tuple(k for k in set_ if k not in explicit_set)


def _merged_op(top: Any, inner: Any) -> Any:
    """One person operation sent both at the event's top level and in its properties: two objects merge,
    the top level's value winning a key both name (PostHog's ``normalizeEvent``,
    plugin-server/src/utils/event.ts: ``{...properties.$set, ...event.$set}``); otherwise the top level's
    when it was sent."""
    if isinstance(top, dict) and isinstance(inner, dict):
        return {**inner, **top}
    return top if top is not None else inner


def person_ops(raw: RawEvent, normalised: Normalised | None = None) -> tuple[Any, Any, Any]:
    """``$set`` / ``$set_once`` / ``$unset`` for the event's person: those of :func:`event_properties`, with
    ``$unset`` from the top level and the properties (:func:`_merged_op`).

    On an event that is not one of :data:`PERSON_EVENTS` the lifted ``$set`` keys apply as ``$set_once``:
    PostHog skips a person write whose only changes are such keys the person already has (so a pageview
    does not rewrite the person for a new ``$current_url``) but writes them to a person that lacks them. It
    also writes them when another property changes in the same update, which depends on the order updates
    are applied in; the person registers here must not (processors/registers.py), so they never do.
    ``normalised`` is :func:`event_properties` of ``raw`` when the caller has it (it is only read).
    """
    properties, lifted = normalised if normalised is not None else event_properties(raw)
    props = raw.data.get("properties") or {}
    set_, set_once = properties.get("$set"), properties.get("$set_once")
    unset = _merged_op(raw.data.get("$unset"), props.get("$unset"))
    if lifted and raw.event not in PERSON_EVENTS:
        set_once = {**{k: set_[k] for k in lifted}, **(set_once if isinstance(set_once, dict) else {})}
        set_ = {k: v for k, v in set_.items() if k not in lifted}
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
