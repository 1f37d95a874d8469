"""JSON payload -> validated :class:`~eventpipe.contract.RawEvent` list (pure).

Accepts the shapes PostHog's capture accepts: one event object, ``{"batch": [...]}``, a top-level
list, Segment-style messages (``type`` = alias / capture / track / identify / group / page / screen)
and Mixpanel ``/engage`` people updates. See docs/capture.md for the mapping rules.
"""

from __future__ import annotations

import hashlib
import uuid as uuidlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from itertools import chain, compress
from typing import Any

import ujson

from eventpipe.contract import RawEvent, format_ts
from eventpipe.teams import api_key_shape_error
from gateway.errors import CaptureError, invalid, key_refused, unauthorized
from gateway.timestamps import parse_time, resolve_timestamp
from gateway.uuid7 import derived_uuid, uuid7

MAX_DISTINCT_ID = 200
MAX_EVENT_NAME = 400
MAX_BATCH_EVENTS = 10_000
MAX_DEPTH = 64  # nesting of objects/arrays inside one event

# Segment message type -> (PostHog event name, the placeholder event names that type may carry).
_SEGMENT_TYPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "alias": ("$create_alias", ("$alias", "$create_alias")),
    "identify": ("$identify", ("$identify",)),
    "group": ("$groupidentify", ("$group", "$groupidentify")),
    "page": ("$pageview", ("$page", "$pageview")),
    "screen": ("$screen", ("$screen",)),
    "track": ("", ()),
    "capture": ("", ()),
}


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What the gateway knows about the request, independent of its body."""

    now: datetime
    ip: str | None = None
    site_url: str = ""
    route: str = "capture"  # "engage" turns people updates into $identify
    # Api keys sent beside the payload: a GET's query ``token`` / ``api_key``, a form's fields of that name.
    query_token: str | None = None
    query_sent_at: datetime | None = None
    form_token: str | None = None


_CONTAINERS = frozenset((dict, list))  # what a JSON parse nests; ujson and json make exactly these types
_is_container = _CONTAINERS.__contains__


def _depth_ok(value: dict[str, Any] | list[Any], limit: int) -> bool:
    """No value inside ``value`` (depth 0) is deeper than ``limit``."""
    return _depths_ok([value], limit)


def _depths_ok(level: list[Any], limit: int) -> bool:
    """No value inside any container of ``level`` (each at depth 0) is deeper than ``limit``.

    Walks one level of containers at a time, all of a request's events together, and looks only at
    containers: an event's ~40 values are mostly scalars, and filtering them with C-level
    ``chain``/``compress``/``map`` instead of a Python test per value cut this from ~10 to ~1.6 µs per
    event. A container at depth ``limit`` must be empty, since anything in it would be at ``limit + 1``.
    """
    depth = 0
    while level:
        if depth >= limit:
            return not any(level)
        values = list(chain.from_iterable([c.values() if isinstance(c, dict) else c for c in level]))
        level = list(compress(values, map(_is_container, map(type, values))))
        depth += 1
    return True


def split_batch(payload: Any) -> tuple[list[Any], dict[str, Any]]:
    """Events of a payload and its batch-level fields (api_key, sent_at, …)."""
    if isinstance(payload, list):
        return payload, {}
    if isinstance(payload, dict):
        if "batch" in payload:
            batch = payload["batch"]
            if not isinstance(batch, list):
                raise invalid("invalid_payload", "batch must be a list of events", "batch")
            return batch, payload
        if "data" in payload and isinstance(payload["data"], list | dict) and "event" not in payload:
            inner, top = split_batch(payload["data"])  # {"api_key":..., "data": [...]} (older SDKs)
            return inner, {**payload, **top}
        return [payload], {}
    raise invalid("invalid_payload", "Payload must be a JSON object or a list of events")


def _multiple_tokens() -> CaptureError:
    return unauthorized(
        "multiple_tokens",
        "The request carries several different project API keys: send each project's events in their own request.",
    )


def _one_token(*values: Any) -> str | None:
    """The one api key among ``values`` (empty ones skipped); 401 when they name different keys."""
    found: str | None = None
    for value in values:
        if value:
            token = value if isinstance(value, str) else str(value)
            if found is None:
                found = token
            elif token != found:
                raise _multiple_tokens()
    return found


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value


def outside_token(fields: Mapping[str, Any] | None) -> str | None:
    """The api key sent beside the payload: query ``token`` / ``api_key`` (a GET's) or the form fields of
    that name (``parse_qs`` lists: the first value); 401 when they differ."""
    if not fields:
        return None
    return _one_token(_first(fields.get("api_key")), _first(fields.get("token")))


def _event_token(event: dict[str, Any]) -> str | None:
    """An event's own api key: ``token``, ``$token`` or ``api_key`` (one field to PostHog's Rust capture),
    else ``properties.token`` when it is a string (posthog-js puts the key there; a server SDK's
    event may carry a property of that name that means something else, so it never overrides)."""
    token = _one_token(event.get("token"), event.get("$token"), event.get("api_key"))
    if token is None:
        props = event.get("properties")
        if isinstance(props, dict) and isinstance(prop := props.get("token"), str) and prop:
            token = prop
    return token


def request_token(events: list[Any], top: dict[str, Any], outside: str | None = None) -> str:
    """The one api key of a request, as PostHog's capture finds it (docs/capture.md, "Fields").

    The batch's ``api_key`` / ``token`` wins over its events' (which are then not compared); else every
    event's own key (:func:`_event_token`) must be the same one. ``outside``: a key sent beside the
    payload (a GET's query, a form field), used when the payload names none. Two different keys
    anywhere they are compared are a 401: which project the events belong to would be a guess.
    """
    token = _one_token(top.get("api_key"), top.get("token")) if top else None
    if token is None and len(events) == 1:  # one event (/capture/): no set of tokens to build
        token = _event_token(events[0]) if isinstance(events[0], dict) else None
    elif token is None:
        tokens = {t for e in events if isinstance(e, dict) and (t := _event_token(e)) is not None}
        if len(tokens) > 1:
            raise _multiple_tokens()
        token = tokens.pop() if tokens else None
    if outside is not None:
        if token is None:
            token = outside
        elif token != outside:
            raise _multiple_tokens()
    if reason := api_key_shape_error(token):
        raise key_refused(reason)
    return str(token)


def _distinct_id(event: dict[str, Any], props: dict[str, Any]) -> str:
    raw = event.get("distinct_id")
    if raw is None:
        raw = event.get("$distinct_id")
    if raw is None:
        raw = props.get("distinct_id")
    if raw is None:
        raw = event.get("userId") if event.get("userId") is not None else event.get("anonymousId")
    if raw is None:
        raise invalid("invalid_payload", "Event field 'distinct_id' is missing.", "distinct_id")
    text = raw if isinstance(raw, str) else ujson.dumps(raw, ensure_ascii=False)
    if not text.strip():
        raise invalid("invalid_payload", "Event field 'distinct_id' is empty.", "distinct_id")
    return text[:MAX_DISTINCT_ID]


def _event_uuid(
    event: dict[str, Any],
    props: dict[str, Any],
    identity: tuple[str, str, str],
    index: int,
    request: _Request,
    client_ts: datetime | None,
) -> str:
    """The event's uuid: the client's; else one a retry of the same event gets again (docs/capture.md).

    1. ``uuid`` as sent (invalid: 400).
    2. Mixpanel's ``$insert_id`` (Mixpanel deduplicates on it): a hash of it with the event's key.
    3. The event carries its own time (``timestamp`` or ``offset``): a hash of the request's content
       (:meth:`_Request.digest`: token + decoded payload) and the event's index in it, so a
       byte-identical retry collapses with the original in the ReplacingMergeTree.
    4. Otherwise a fresh UUIDv7: without an id or a time, two identical requests are as likely two
       events (a cron ping) as one retried, and losing an event is worse than keeping a duplicate.
    """
    raw = event.get("uuid")
    if raw is not None:
        try:
            return str(uuidlib.UUID(str(raw)))
        except ValueError:
            raise invalid("invalid_payload", 'Event field "uuid" is not a valid UUID!', "uuid") from None
    insert_id = props.get("$insert_id")
    if isinstance(insert_id, (str, int)) and not isinstance(insert_id, bool) and insert_id != "":
        token, name, distinct_id = identity
        seed = f"{token}\0{name}\0{distinct_id}\0{insert_id}".encode("utf-8", "surrogatepass")
        return derived_uuid(hashlib.blake2b(seed, digest_size=16).digest(), _epoch_ms(client_ts))
    if (client_ts is not None or "offset" in event) and (digest := request.digest()) is not None:
        seed = digest + index.to_bytes(4, "big")
        return derived_uuid(hashlib.blake2b(seed, digest_size=16).digest(), _epoch_ms(client_ts))
    return str(uuid7())


def content_digest(token: str, content: bytes) -> bytes:
    """What a request's derived uuids hash: its api key and its decoded payload, byte for byte."""
    return hashlib.blake2b(token.encode("utf-8", "surrogatepass") + b"\0" + content, digest_size=16).digest()


class _Request:
    """What every event of one request shares, worked out once per request instead of once per event:
    the receive time as text, the batch's ``sent_at`` (parsed and as text) and the content digest
    (hashed only if an event needs it: events with a client uuid or ``$insert_id`` do not)."""

    __slots__ = ("_digest", "content", "ctx", "now", "sent_at", "sent_at_text", "team_id", "token", "top_sent_at")

    def __init__(
        self, token: str, top: dict[str, Any], ctx: RequestContext, content: bytes | None, team_id: int | None
    ) -> None:
        self.token = token
        self.team_id = team_id
        self.ctx = ctx
        self.content = content
        self._digest: bytes | None = None
        self.now = format_ts(ctx.now)
        # sent_at: the batch's wins over an event's, which wins over the query's (``_``).
        self.top_sent_at = parse_time(top.get("sent_at"))
        self.sent_at = self.top_sent_at or ctx.query_sent_at
        self.sent_at_text = format_ts(self.sent_at) if self.sent_at else None

    def digest(self) -> bytes | None:
        if self._digest is None and self.content is not None:
            self._digest = content_digest(self.token, self.content)
        return self._digest


def _segment(event: dict[str, Any], props: dict[str, Any]) -> str | None:
    """Apply Segment-style ``type`` semantics in place; returns the mapped event name (None: unchanged)."""
    kind = event.get("type")
    if not isinstance(kind, str) or kind not in _SEGMENT_TYPES:
        return None
    mapped, placeholders = _SEGMENT_TYPES[kind]
    name = event.get("event")
    traits = event.get("traits") if isinstance(event.get("traits"), dict) else {}
    for key in ("messageId", "category", "name"):
        if key in event and key not in props:
            props[key] = event[key]
    if isinstance(event.get("context"), dict) and event["context"]:
        props.setdefault("$context", event["context"])
    if kind == "identify" and traits:
        event["$set"] = {**traits, **(event.get("$set") or {})}
    elif kind == "group":
        props.setdefault("$group_type", event.get("groupType") or props.get("groupType") or "group")
        props.setdefault("$group_key", str(event.get("groupId", "")))
        props.setdefault("$group_set", traits)
    elif kind == "alias" and "alias" not in props and event.get("previousId") is not None:
        props["alias"] = str(event["previousId"])
    elif kind == "screen" and "name" in event:
        props.setdefault("$screen_name", event["name"])
    if not mapped or (isinstance(name, str) and name and name not in placeholders):
        return None  # an explicit, non-placeholder event name wins
    return mapped


# What an event carries into ``data`` besides its name and properties, in this order.
_DATA_FIELDS = ("$set", "$set_once", "$unset", "$groups", "elements_chain", "offset")


def normalise(event: Any, request: _Request, index: int = 0, depth_checked: bool = False) -> dict[str, Any] | None:
    """One client event -> the fields of its RawEvent (``RawEvent.as_dict`` order, what goes to Kafka
    without building the object); None for events PostHog drops silently ($performance_event).

    ``index`` (the event's position in the request) and the request's content make the uuid of an
    event without one deterministic, see :func:`_event_uuid`; ``depth_checked``: the nesting of all
    the request's events is known to be within bounds.
    """
    ctx = request.ctx
    if not isinstance(event, dict):
        raise invalid("invalid_payload", "Each event must be a JSON object (null or scalar items found).")
    if not depth_checked and not _depth_ok(event, MAX_DEPTH):
        raise invalid("invalid_payload", f"Event nests deeper than {MAX_DEPTH} levels.", "properties")
    props = event.get("properties")
    if props is None:
        props = {}
    if not isinstance(props, dict):
        raise invalid("invalid_payload", "Event field 'properties' must be an object.", "properties")
    props = dict(props)
    name = (_segment(event, props) if "type" in event else None) or event.get("event")
    if name is None and ctx.route == "engage":
        name = "$identify"
        for op in ("$set", "$set_once", "$unset"):
            if op in event and op not in props:
                props[op] = event[op]
    if not isinstance(name, str) or not name:
        raise invalid("invalid_payload", "Event field 'event' is missing.", "event")
    if name == "$performance_event":
        return None
    distinct_id = _distinct_id(event, props)
    data: dict[str, Any] = {"event": name[:MAX_EVENT_NAME], "properties": props}
    for extra in _DATA_FIELDS:
        if extra in event:
            data[extra] = event[extra]

    sent_at, sent_at_text = request.sent_at, request.sent_at_text
    if request.top_sent_at is None and "sent_at" in event and (own := parse_time(event["sent_at"])) is not None:
        sent_at, sent_at_text = own, format_ts(own)
    ts_value = event.get("timestamp")
    if ts_value is None and isinstance(props.get("time"), int | float) and ctx.route in ("track", "engage"):
        ts_value = props["time"]  # Mixpanel SDKs put epoch seconds (or ms) in properties.time
    client_ts = parse_time(ts_value)  # parsed once: the event time and the derived uuid's time bits
    ts, warning = resolve_timestamp(
        ctx.now, client_ts or ts_value, sent_at, event.get("offset"), bool(props.get("$ignore_sent_at"))
    )
    warnings = [{"type": warning, "details": {"timestamp": ts_value}}] if warning else []
    return {
        "uuid": _event_uuid(event, props, (request.token, name, distinct_id), index, request, client_ts),
        "distinct_id": distinct_id,
        "token": request.token,
        "event": data["event"],
        "timestamp": format_ts(ts),
        "now": request.now,
        "data": data,
        "sent_at": sent_at_text,
        "ip": ctx.ip,
        "site_url": ctx.site_url,
        "warnings": warnings,
        "team_id": request.team_id,
    }


def _epoch_ms(dt: datetime | None) -> int | None:
    if dt is None:
        return None
    try:
        return int(dt.timestamp() * 1000)
    except (OverflowError, OSError, ValueError):
        return 0


def parse_events(payload: Any, ctx: RequestContext, content: bytes | None = None) -> tuple[str, list[RawEvent]]:
    """The api key and events of one decoded request; raises CaptureError on anything invalid.

    A request is all or nothing: one invalid event refuses the request, so a client retry never
    duplicates the events that were fine. ``content`` is the decoded payload text the request carried:
    with it, events without a uuid get one derived from it (a byte-identical retry gets the same).
    """
    token, _team_id, fields = parse_fields(payload, ctx, content)
    return token, [RawEvent(**f) for f in fields]


def parse_fields(
    payload: Any,
    ctx: RequestContext,
    content: bytes | None = None,
    team_of: Callable[[str], int | None] | None = None,
    containers: int | None = None,
) -> tuple[str, int | None, list[dict[str, Any]]]:
    """:func:`parse_events` as the gateway runs it: each event's RawEvent fields as a dict (encoded as
    they are; a RawEvent per event and its ``as_dict`` cost more than the rest of its fields), with the
    team filled in when ``team_of`` knows the api key already (then no splice after the encode; the
    key is still checked, with a catch-up of the registry, before anything is produced).

    ``containers``: an upper bound of the objects and arrays in the payload
    (:func:`gateway.decode.json_bounds`). A value at depth d sits inside d containers, so with at most
    :data:`MAX_DEPTH` of them no event can nest too deep and the walk is skipped (a single event's
    walk costs more than the rest of its parse)."""
    events, top = split_batch(payload)
    if not events:
        raise invalid("invalid_payload", "Batch is empty.", "batch")
    if len(events) > MAX_BATCH_EVENTS:
        raise CaptureError(
            413, "validation_error", "payload_too_large", f"At most {MAX_BATCH_EVENTS} events per request."
        )
    outside = ctx.query_token if ctx.form_token is None else _one_token(ctx.query_token, ctx.form_token)
    token = request_token(events, top, outside)
    team_id = team_of(token) if team_of is not None else None
    request = _Request(token, top, ctx, content, team_id)
    # One pass over every event's nesting; only when some event is too deep does each event get its own
    # check, in order, so the request is refused for the first bad event as it always was.
    checked = (containers is not None and containers <= MAX_DEPTH) or _depths_ok(
        [e for e in events if isinstance(e, dict)], MAX_DEPTH
    )
    out = [raw for i, e in enumerate(events) if (raw := normalise(e, request, i, checked)) is not None]
    return token, team_id, out
