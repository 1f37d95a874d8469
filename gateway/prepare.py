"""Request body -> the Kafka messages it becomes, within bounds (pure: no aiohttp, no Kafka).

The same functions run inline on the event loop for small requests and in a decode worker process
for large ones (gateway/pool.py), so every limit is checked in one place and unit-testable on bytes.
Order matters: bytes are bounded while inflating, JSON values and containers are counted before the
parse, events are counted and sized before anything is produced.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import ujson

from eventpipe.contract import RawEvent
from gateway.decode import Payload, check_json_bounds, decode_request, json_bounds, loads
from gateway.errors import CaptureError
from gateway.events import RequestContext, parse_fields

# Limits no real SDK reaches (docs/capture.md, "Limits"): posthog-js batches are at most a few MB and
# ~150 values per event; a request of 10,000 events (MAX_BATCH_EVENTS) of 100 values is 1 M values.
MAX_JSON_VALUES = 1_000_000
MAX_JSON_CONTAINERS = 250_000
# Kafka's default max.message.bytes is 1,048,588 and PostHog's capture caps an event at 1,000,000.
MAX_EVENT_BYTES = 1_000_000

# What the event loop decodes itself (a 100-event posthog-js batch is ~100 KB and ~3,500 values, and
# costs ~1-2 ms); anything bigger goes to a decode worker so it never stalls other requests.
INLINE_BYTES = 512 * 1024
INLINE_VALUES = 64 * 1024
# lz-string is decoded in pure Python (~1 µs per character at worst): the event loop decodes 16 K.
INLINE_LZ_CHARS = 16 * 1024

Message = tuple[bytes, bytes]  # (key, value) as produced to the raw-events topic


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds of one request (per route)."""

    inflated_bytes: int
    max_values: int = MAX_JSON_VALUES
    max_containers: int = MAX_JSON_CONTAINERS
    max_event_bytes: int = MAX_EVENT_BYTES


@dataclass(frozen=True, slots=True)
class Prepared:
    token: str
    messages: list[Message]
    # The team the messages carry already (key ``team_id:distinct_id``); None: keyed ``token:distinct_id``
    # without a team, for :func:`eventpipe.contract.stamp_teams` once the key is resolved.
    team_id: int | None = None
    # A ``historical_migration: true`` batch: produced to the historical topic (docs/history.md).
    historical: bool = False

    @property
    def size(self) -> int:
        return sum(map(len, (b for m in self.messages for b in m)))


class Escalate(Exception):
    """The request is bigger than what the event loop decodes itself: hand it to a decode worker."""


def _scrub(value: Any) -> Any:
    """JSON-safe copy: non-finite floats (``1e999``) -> null, lone surrogates (``"\\ud800"``) -> U+FFFD."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


_FIELDS = tuple(f.name for f in fields(RawEvent))


def _scrubbed(event: RawEvent) -> RawEvent:
    return RawEvent(**{f: _scrub(getattr(event, f)) for f in _FIELDS})


def encode_event(event: RawEvent, max_bytes: int = MAX_EVENT_BYTES) -> Message:
    """Kafka key and value of an event (``RawEvent.key`` / ``RawEvent.to_json``); 413 when the value
    would be larger than the broker takes."""
    return encode_fields(event.as_dict(), max_bytes)


def encode_fields(event: dict[str, Any], max_bytes: int = MAX_EVENT_BYTES) -> Message:
    """:func:`encode_event` of a RawEvent's fields (``RawEvent.as_dict``, what parse_fields gives).

    The value is encoded like ``to_json`` but with ``allow_nan=False``, so a non-finite float
    (``1e999`` parses to inf) raises instead of writing ``Infinity``, which is not JSON; that and lone
    surrogates (which UTF-8 can't encode) are the only cases that pay for a scrub and a second encode.
    """
    team_id = event["team_id"]
    try:
        value = ujson.dumps(event, ensure_ascii=False, allow_nan=False).encode()
        key = f"{event['token'] if team_id is None else team_id}:{event['distinct_id']}".encode()
    except (UnicodeEncodeError, OverflowError):
        scrubbed = _scrubbed(RawEvent(**event))
        key, value = scrubbed.key(), scrubbed.to_json()
    if len(value) > max_bytes:
        raise CaptureError(
            413,
            "validation_error",
            "payload_too_large",
            f"Event {event['event'][:100]!r} is {len(value)} bytes encoded; at most {max_bytes} bytes per event.",
            "properties",
        )
    return key, value


def prepare_text(
    text: bytes,
    ctx: RequestContext,
    limits: Limits,
    bounds: tuple[int, int] | None = None,
    team_of: Callable[[str], int | None] | None = None,
) -> Prepared:
    """Decoded payload text -> token and messages; CaptureError (a 4xx) for anything out of bounds.

    ``bounds``: :func:`~gateway.decode.json_bounds` of ``text`` when the caller counted them already;
    ``team_of``: the team of an api key when known without waiting (see :func:`~gateway.events.parse_fields`).
    """
    bounds = bounds or json_bounds(text)
    check_json_bounds(text, limits.max_values, limits.max_containers, bounds)
    payload = loads(text)
    token, team_id, events = parse_fields(payload, ctx, text, team_of, bounds[1])
    max_bytes = limits.max_event_bytes
    return Prepared(token, [encode_fields(e, max_bytes) for e in events], team_id, is_historical(payload))


def is_historical(payload: Any) -> bool:
    """PostHog's batch-level ``historical_migration`` flag (its capture reads a boolean on the request)."""
    return isinstance(payload, dict) and payload.get("historical_migration") is True


def _with_form_token(ctx: RequestContext, payload: Payload) -> RequestContext:
    """The request's context with the key of its form fields, when it sent one beside the payload."""
    return ctx if payload.form_token is None else replace(ctx, form_token=payload.form_token)


def prepare(
    body: bytes,
    content_type: str,
    query: Mapping[str, str],
    content_encoding: str,
    ctx: RequestContext,
    limits: Limits,
) -> Prepared:
    """The whole decode of one request (what a decode worker runs)."""
    payload = decode_request(body, content_type, query, content_encoding, limits.inflated_bytes)
    return prepare_text(payload.text, _with_form_token(ctx, payload), limits)


def prepare_inline(
    body: bytes,
    content_type: str,
    query: Mapping[str, str],
    content_encoding: str,
    ctx: RequestContext,
    limits: Limits,
    team_of: Callable[[str], int | None] | None = None,
) -> Prepared:
    """The decode of a small request, on the event loop; :class:`Escalate` when it is not small.

    Inflating stops at :data:`INLINE_BYTES` and the value count is checked before the parse, so the
    event loop never spends more than a few milliseconds here whatever the request holds.
    """
    if len(body) > INLINE_BYTES:
        raise Escalate
    try:
        payload = decode_request(
            body,
            content_type,
            query,
            content_encoding,
            min(INLINE_BYTES, limits.inflated_bytes),
            lz_limit=INLINE_LZ_CHARS,
        )
    except CaptureError as err:
        if err.status == 413:
            raise Escalate from None  # the worker decides with the route's own limits
        raise
    bounds = json_bounds(payload.text)
    if bounds[0] > INLINE_VALUES:
        raise Escalate
    return prepare_text(payload.text, _with_form_token(ctx, payload), limits, bounds, team_of)
