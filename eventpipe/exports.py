"""Event exports -> capture-shaped events, one record at a time (pure: no Kafka; docs/history.md).

What ``eventpipe import`` reads, whatever the file holds:

* JSONL, one capture-shaped event per line (``{"event", "distinct_id", "properties", "timestamp", ...}``);
* PostHog batch-export rows (S3 JSONL): ``properties``, ``set``, ``set_once`` and ``elements`` as JSON
  *strings*, ClickHouse timestamps (``2024-01-01 12:00:00.123456``, UTC), and columns capture does not
  take (``team_id``, ``person_id``, ``created_at``, ``_inserted_at``, ...), dropped;
* PostHog API documents ``{"results": [...]}``: the events endpoint's objects (uuid in ``id``) or a
  query's rows with ``columns``; one per line (pages saved one after the other) or one pretty-printed
  document;
* a JSON array of events, on one line or pretty-printed.

gzip is recognised by its magic bytes (also concatenated members, as ``cat a.gz b.gz`` makes). Every
record knows where it came from (line, item in the line) and where a resumed import starts after it.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import ujson

GZIP_MAGIC = b"\x1f\x8b"
MAX_LINE_BYTES = 16 * 1024 * 1024  # a results page of a few hundred events fits; one event is capped lower
MAX_DOCUMENT_BYTES = 256 * 1024 * 1024  # a pretty-printed document is parsed whole
_READ = 1024 * 1024

# Columns of PostHog's exports (batch exports, the events API, HogQL) that are not part of a captured
# event: what PostHog computed when it ingested it, which the processors compute again.
_EXPORT_ONLY = frozenset(
    (
        "team_id",
        "project_id",
        "person_id",
        "person_properties",
        "person_created_at",
        "person_mode",
        "person",
        "created_at",
        "inserted_at",
        "_inserted_at",
        "bq_ingested_timestamp",
        "site_url",
        "ip",
        "elements",
        "set",
        "set_once",
        "id",
        "matched_recordings",
        "historical_migration",
    )
)
# A line's own api key never decides the team: the import's --api-key does.
_TOKEN_FIELDS = ("api_key", "token", "$token")


class Refused(ValueError):
    """A record that cannot be imported; ``reason`` is a short code the summary groups by."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail or reason


@dataclass(frozen=True, slots=True)
class Position:
    """Where reading resumes: a byte offset in the decompressed stream at a line's start, that line's
    number (1-based) and the first item of it still to import."""

    offset: int = 0
    line: int = 1
    item: int = 0


@dataclass(frozen=True, slots=True)
class Record:
    line: int
    item: int  # index in its line (a results page or an array holds several)
    next: Position  # where to resume once this record and all before it are done
    event: dict[str, Any] | None = None
    refused: Refused | None = None


def open_input(raw: IO[bytes]) -> IO[bytes]:
    """``raw`` decompressed if it starts with gzip's magic bytes (whatever its name says)."""
    buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)  # type: ignore[arg-type]
    if buffered.peek(2)[:2] == GZIP_MAGIC:
        return io.BufferedReader(gzip.GzipFile(fileobj=buffered, mode="rb"), _READ)  # type: ignore[arg-type]
    return buffered


def records(stream: IO[bytes], start: Position | None = None, documents: bool = True) -> Iterator[Record]:
    """Every record of ``stream`` (decompressed) from ``start`` on, in order.

    A first line that is not JSON but opens an object or array may start a pretty-printed document: up to
    :data:`MAX_DOCUMENT_BYTES` are read and parsed whole; if that fails too, the bytes are read as lines
    after all (``documents=False``), so a JSONL file whose first line is broken is still read line by line.
    """
    start = start or Position()
    offset = _skip(stream, start.offset)
    line_no = start.line
    while True:
        line, too_long = _read_line(stream)
        if not line:
            return
        begin, offset = offset, offset + len(line)
        text = line.strip()
        if not text:
            line_no += 1
            continue
        if too_long:
            yield Record(line_no, 0, Position(offset, line_no + 1), refused=Refused("line_too_long"))
        else:
            try:
                value = ujson.loads(text)
            except ValueError:
                if documents and begin == 0 and text[:1] in (b"{", b"["):
                    whole = line + stream.read(MAX_DOCUMENT_BYTES + 1 - len(line))
                    document = _document(whole) if len(whole) <= MAX_DOCUMENT_BYTES else None
                    if document is not None:
                        yield from _items(document, 1, 0, Position(len(whole), 2), start)
                        return
                    rest = io.BufferedReader(_Prefixed(whole, stream), _READ)
                    yield from records(rest, start, documents=False)
                    return
                value = Refused("invalid_json", "the line is not JSON")
            yield from _items(value, line_no, begin, Position(offset, line_no + 1), start)
        line_no += 1


class _Prefixed(io.RawIOBase):
    """Bytes already read, then the rest of the stream: reading a document that was not one again."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self.head = memoryview(head)
        self.rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        data = self.rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _document(text: bytes) -> Any:
    """A whole pretty-printed document, parsed (None: it is not one)."""
    try:
        return ujson.loads(text)
    except ValueError:
        return None


def _skip(stream: IO[bytes], offset: int) -> int:
    left = offset
    while left > 0:
        chunk = stream.read(min(left, _READ))
        if not chunk:
            raise Refused("file_changed", f"the input ends before byte {offset} where the checkpoint resumes")
        left -= len(chunk)
    return offset


def _read_line(stream: IO[bytes]) -> tuple[bytes, bool]:
    """One line (with its newline) and whether it was longer than :data:`MAX_LINE_BYTES` (then only
    its length is kept: the rest is read and dropped)."""
    line = stream.readline(MAX_LINE_BYTES + 1)
    if len(line) <= MAX_LINE_BYTES or line.endswith(b"\n"):
        return line, False
    size = len(line)
    while not line.endswith(b"\n"):
        line = stream.readline(_READ)
        if not line:
            break
        size += len(line)
    return b"\0" * size, True  # the right length for the offsets, never parsed


def _items(value: Any, line: int, begin: int, after: Position, start: Position) -> Iterator[Record]:
    if isinstance(value, Refused):
        yield Record(line, 0, after, refused=value)
        return
    items = _events_of(value)
    skip = start.item if (line, begin) == (start.line, start.offset) else 0
    for i, item in enumerate(items):
        if i < skip:
            continue
        nxt = after if i == len(items) - 1 else Position(begin, line, i + 1)
        try:
            yield Record(line, i, nxt, event=capture_shaped(item))
        except Refused as refused:
            yield Record(line, i, nxt, refused=refused)


def _events_of(value: Any) -> list[Any]:
    """The items a parsed line (or document) holds: one event, an array, or a results page."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict) and isinstance(value.get("results"), list) and "event" not in value:
        columns = value.get("columns")
        rows = value["results"]
        if isinstance(columns, list) and all(isinstance(c, str) for c in columns):
            return [dict(zip(columns, r, strict=False)) if isinstance(r, list) else r for r in rows]
        return rows
    return [value]


def capture_shaped(item: Any) -> dict[str, Any]:
    """One exported event as capture takes it (the validation proper is capture's own, after this)."""
    if not isinstance(item, dict):
        raise Refused("not_an_event", "the item is not a JSON object")
    event = {k: v for k, v in item.items() if k not in _EXPORT_ONLY and k not in _TOKEN_FIELDS}
    if "uuid" not in event and isinstance(item.get("id"), str):
        event["uuid"] = item["id"]  # the events API names it id
    props = _json_field(item.get("properties"), "properties")
    if props is not None:
        event["properties"] = props
    for column, name in (("set", "$set"), ("set_once", "$set_once")):
        value = _json_field(item.get(column), column)
        if value and name not in event:
            event[name] = value
    if "elements_chain" not in event:
        chain = _json_field(item.get("elements"), "elements")
        if isinstance(chain, str) and chain:
            event["elements_chain"] = chain  # batch exports: the chain as a JSON string
    return event


def _json_field(value: Any, name: str) -> Any:
    """A column batch exports write as JSON text, parsed; anything else as it is."""
    if not isinstance(value, str):
        return value
    if name == "elements" and not value.startswith(('"', "[", "{")):
        return value  # a chain written as plain text
    try:
        return ujson.loads(value) if value else None
    except ValueError:
        raise Refused("invalid_json_column", f"column {name!r} is not valid JSON") from None
