"""The one contract for an event in flight, imported by every stage.

Two messages cross Kafka between our stages:

* :class:`RawEvent` — written by the gateway to ``<prefix>events_raw``, key ``team_id:distinct_id``: one
  user's events stay in order on one partition, one team's events spread over all of them. ``data`` is
  the event as the client sent it (normalised: ``event``, ``properties``, ``$set``, ``$set_once``,
  ``$unset`` …); the envelope fields are what the gateway knows better than the client (receive time, IP,
  the final timestamp, the team its api key belongs to).
* an *event row* — written by the processors to ``<prefix>clickhouse_events``: a JSON object whose
  keys are exactly :data:`EVENT_ROW_COLUMNS`, ready for ``INSERT … FORMAT JSONEachRow``. The sink adds
  the Kafka coordinates (``_timestamp``, ``_offset``, ``_partition``) at insert time.

Timestamps everywhere are UTC strings ``YYYY-MM-DD HH:MM:SS.ffffff`` (what ClickHouse parses for
DateTime64(6) and what :func:`format_ts` writes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import ujson

TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
NIL_UUID = "00000000-0000-0000-0000-000000000000"


def format_ts(dt: datetime) -> str:
    """UTC datetime -> ``YYYY-MM-DD HH:MM:SS.ffffff`` (naive datetimes are taken as UTC).

    ``isoformat`` rather than ``strftime(TS_FORMAT)``: the same text (four year digits even before
    year 1000, where strftime writes fewer) in half the time, and the gateway formats every event's time.
    """
    if dt.tzinfo is UTC and dt.year >= 1000:
        return dt.isoformat(" ", "microseconds")[:26]  # without the "+00:00" (cheaper than a replace)
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt.isoformat(" ", "microseconds")


def parse_ts(text: str) -> datetime:
    """Inverse of :func:`format_ts`; returns an aware UTC datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@dataclass(frozen=True)
class Topics:
    """Kafka topic names, all under one configurable prefix."""

    prefix: str = "eventpipe_"

    @property
    def raw_events(self) -> str:
        return f"{self.prefix}events_raw"

    @property
    def historical_events(self) -> str:
        """Raw events of ``historical_migration`` batches and of ``eventpipe import`` (docs/history.md): the
        same messages, key and partition count as ``events_raw`` (co-partitioned with it and the identity
        state), read by the processors only when live traffic leaves room (processors/priority.py)."""
        return f"{self.prefix}events_historical"

    @property
    def teams(self) -> str:
        return f"{self.prefix}teams"

    @property
    def events(self) -> str:
        return f"{self.prefix}clickhouse_events"

    @property
    def identity_inbox(self) -> str:
        """Messages between the processors' partitions (docs/identity.md): keyed like ``events_raw`` (an id
        or a person's home), or by a team's merge lane or a group; same partition count, read by the
        same worker as the raw partition of the same number."""
        return f"{self.prefix}identity_inbox"

    @property
    def persons(self) -> str:
        return f"{self.prefix}clickhouse_person"

    @property
    def person_distinct_ids(self) -> str:
        return f"{self.prefix}clickhouse_person_distinct_id"

    @property
    def person_distinct_id_overrides(self) -> str:
        """One row per distinct id a merge re-pointed to another person (PostHog's overrides)."""
        return f"{self.prefix}clickhouse_person_distinct_id_overrides"

    @property
    def groups(self) -> str:
        return f"{self.prefix}clickhouse_groups"

    @property
    def ingestion_warnings(self) -> str:
        return f"{self.prefix}clickhouse_ingestion_warnings"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}events_dlq"

    def group(self, stage: str) -> str:
        """Consumer group (and Faust app id) of a stage; prefixed so stacks sharing a broker stay apart."""
        return f"{self.prefix}{stage}"

    def sink_tables(self) -> dict[str, str]:
        """Topic -> ClickHouse table the sink writes it to."""
        return {
            self.events: "events",
            self.persons: "person",
            self.person_distinct_ids: "person_distinct_id",
            self.person_distinct_id_overrides: "person_distinct_id_overrides",
            self.groups: "groups",
            self.ingestion_warnings: "ingestion_warnings",
        }


@dataclass(slots=True)
class RawEvent:
    """A captured event as the gateway publishes it (topic ``events_raw``)."""

    uuid: str
    distinct_id: str
    token: str
    event: str
    timestamp: str  # final event time after skew correction, see docs/timestamps.md
    now: str  # when the gateway received the request
    data: dict[str, Any]
    sent_at: str | None = None
    ip: str | None = None
    site_url: str = ""
    warnings: list[dict[str, Any]] = field(default_factory=list)
    team_id: int | None = None  # the team the gateway resolved the api key to

    def key(self) -> bytes:
        """Kafka key: one distinct id's events in order on one partition, one team over all of them."""
        if self.team_id is None:
            return f"{self.token}:{self.distinct_id}".encode()
        return f"{self.team_id}:{self.distinct_id}".encode()

    def with_team(self, team_id: int) -> RawEvent:
        self.team_id = team_id
        return self

    def as_dict(self) -> dict[str, Any]:
        """The fields in declaration order, ``data`` not copied (dataclasses.asdict deep-copies it first,
        which was ~40% of the gateway's CPU; a literal beats a comprehension over ``fields``)."""
        return {
            "uuid": self.uuid,
            "distinct_id": self.distinct_id,
            "token": self.token,
            "event": self.event,
            "timestamp": self.timestamp,
            "now": self.now,
            "data": self.data,
            "sent_at": self.sent_at,
            "ip": self.ip,
            "site_url": self.site_url,
            "warnings": self.warnings,
            "team_id": self.team_id,
        }

    def to_json(self) -> bytes:
        return ujson.dumps(self.as_dict(), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> RawEvent:
        obj = ujson.loads(raw)
        if not isinstance(obj, dict):
            raise ValueError("raw event is not a JSON object")
        return cls(**obj)


_NO_TEAM = b'"team_id":null}'


def stamp_team(key: bytes, value: bytes, token: str, team_id: int) -> tuple[bytes, bytes]:
    """An encoded raw event (``RawEvent.key`` / ``to_json`` without a team) with its team filled in:
    the gateway learns the team only after decoding, and splicing two byte strings beats re-encoding."""
    return stamp_teams([(key, value)], token, team_id)[0]


def stamp_teams(messages: list[tuple[bytes, bytes]], token: str, team_id: int) -> list[tuple[bytes, bytes]]:
    """:func:`stamp_team` of every message of one request (one token): the splices are built once."""
    prefix = token.encode() + b":"
    cut, team_key, team_tail = len(prefix), b"%d:" % team_id, b'"team_id":%d}' % team_id
    out = []
    for key, value in messages:
        if key.startswith(prefix) and value.endswith(_NO_TEAM):
            out.append((team_key + key[cut:], value[: -len(_NO_TEAM)] + team_tail))
        else:
            raw = RawEvent.from_json(value)
            raw.team_id = team_id
            out.append((raw.key(), raw.to_json()))
    return out

# Column order of the event rows the processors emit; the sink inserts exactly these (plus the Kafka
# coordinates) and clickhouse/schema.py checks the events table against it.
EVENT_ROW_COLUMNS: tuple[str, ...] = (
    "uuid",
    "event",
    "properties",
    "timestamp",
    "team_id",
    "distinct_id",
    "elements_chain",
    "created_at",
    "person_id",
    "person_properties",
    "$group_0",
    "$group_1",
    "$group_2",
    "$group_3",
    "$group_4",
)

WARNING_ROW_COLUMNS: tuple[str, ...] = ("team_id", "type", "source", "details", "timestamp")
PERSON_ROW_COLUMNS: tuple[str, ...] = (
    "id",
    "created_at",
    "team_id",
    "properties",
    "is_identified",
    "is_deleted",
    "version",
)
DISTINCT_ID_ROW_COLUMNS: tuple[str, ...] = ("team_id", "distinct_id", "person_id", "is_deleted", "version")
# Same shape as a mapping row, but only for ids a merge moved: events stored before the merge still carry
# the old person, and queries take the override's person instead until `eventpipe squash-overrides`
# rewrote those events (docs/sql.md, "Person overrides").
OVERRIDE_ROW_COLUMNS: tuple[str, ...] = ("team_id", "distinct_id", "person_id", "is_deleted", "version")
GROUP_ROW_COLUMNS: tuple[str, ...] = (
    "group_type_index",
    "group_key",
    "created_at",
    "team_id",
    "group_properties",
    "version",
)

# What the sink appends to every row from the Kafka message it came in.
KAFKA_COLUMNS: tuple[str, ...] = ("_timestamp", "_offset", "_partition")


def event_row(
    *,
    uuid: str,
    event: str,
    properties: dict[str, Any],
    timestamp: str,
    team_id: int,
    distinct_id: str,
    created_at: str,
    person_id: str = NIL_UUID,
    person_properties: dict[str, Any] | None = None,
    groups: tuple[str, str, str, str, str] = ("", "", "", "", ""),
    elements_chain: str = "",
) -> dict[str, Any]:
    """Build one ClickHouse-ready event row (keys = :data:`EVENT_ROW_COLUMNS`)."""
    return {
        "uuid": uuid,
        "event": event,
        "properties": ujson.dumps(properties, ensure_ascii=False),
        "timestamp": timestamp,
        "team_id": team_id,
        "distinct_id": distinct_id,
        "elements_chain": elements_chain,
        "created_at": created_at,
        "person_id": person_id,
        "person_properties": ujson.dumps(person_properties or {}, ensure_ascii=False),
        "$group_0": groups[0],
        "$group_1": groups[1],
        "$group_2": groups[2],
        "$group_3": groups[3],
        "$group_4": groups[4],
    }


def warning_row(team_id: int, type_: str, source: str, details: dict[str, Any], timestamp: str) -> dict[str, Any]:
    """An ingestion warning row (table ``ingestion_warnings``)."""
    return {
        "team_id": team_id,
        "type": type_,
        "source": source,
        "details": ujson.dumps(details, ensure_ascii=False),
        "timestamp": timestamp,
    }


def override_row(team_id: int, distinct_id: str, person_id: str, version: int, is_deleted: int = 0) -> dict[str, Any]:
    """A person override row (table ``person_distinct_id_overrides``, keys = :data:`OVERRIDE_ROW_COLUMNS`).

    ``version`` is the re-pointed mapping's version (>= 1): the squash removes an override only up to
    the version it squashed, so a later re-pointing of the same id (a higher version) survives it.
    """
    return {
        "team_id": team_id,
        "distinct_id": distinct_id,
        "person_id": person_id,
        "is_deleted": is_deleted,
        "version": version,
    }


def dead_letter(reason: str, raw: bytes, source: str, timestamp: str) -> dict[str, Any]:
    """A dead-letter message: why, where, and the untouched payload."""
    return {
        "reason": reason,
        "source": source,
        "timestamp": timestamp,
        "raw": raw.decode("utf-8", "replace"),
    }


def now_ts() -> str:
    return format_ts(datetime.now(UTC))
