"""Hostile requests, built once and shared by the unit tests, the integration test and the measure script.

Each :class:`Bomb` is a request (route, query, headers, body) and the answers it may get. Builders are
functions so the large bodies are only made by the tests that send them.
"""

from __future__ import annotations

import base64
import gzip
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import ujson
from lzstring import LZString

UNKNOWN_KEY = "phc_unknown_key_of_nobody"
TEXT = {"Content-Type": "text/plain"}
JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@dataclass(frozen=True)
class Bomb:
    name: str
    path: str  # with its query string
    headers: dict[str, str]
    build: Callable[[str], bytes]  # api key -> body
    statuses: tuple[int, ...]  # acceptable answers
    code: str | None = None  # the error code expected when refused
    stored: int = 0  # events produced when accepted
    tags: tuple[str, ...] = field(default=())
    method: str = "POST"


def gzip_stream(parts: Iterator[bytes]) -> bytes:
    """gzip of a long repetitive text without holding the text (90 MB of tiny values -> ~90 KB)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [z.compress(p) for p in parts]
    out.append(z.flush())
    return b"".join(out)


def tiny_values_bomb(key: str, inflated: int = 90_000_000, unit: bytes = b"[],") -> bytes:
    """One event whose properties hold ``inflated`` bytes of empty arrays, gzip'd: the issue's bomb."""
    head = b'{"api_key": "KEY", "batch": [{"event": "e", "distinct_id": "d", "properties": {"v": ['
    head = head.replace(b"KEY", key.encode())
    chunk = unit * (1024 * 1024 // len(unit))
    n = inflated // len(chunk)

    def parts() -> Iterator[bytes]:
        yield head
        for _ in range(n):
            yield chunk
        yield b"0]}}]}"

    return gzip_stream(parts())


def event(i: int = 0, **extra: object) -> dict[str, object]:
    return {"event": "hostile-ok", "distinct_id": f"user-{i}", "properties": {"i": i}, **extra}


def batch(key: str, events: list[dict[str, object]]) -> bytes:
    return ujson.dumps({"api_key": key, "batch": events}).encode()


def keyed(template: bytes) -> Callable[[str], bytes]:
    """A body builder: ``template`` with its ``KEY`` placeholder replaced by the api key."""
    return lambda k: template.replace(b"KEY", k.encode())


def _nested(depth: int) -> bytes:
    head = b'{"api_key": "KEY", "event": "e", "distinct_id": "d", "properties": {"v": '
    return head + b"[" * depth + b"]" * depth + b"}}"


def _months(key: str) -> bytes:
    # 180 months (15 years) of timestamps in one batch, one event per month.
    events = [event(m, timestamp=f"{2010 + m // 12}-{m % 12 + 1:02d}-15T12:00:00Z") for m in range(180)]
    return batch(key, events)


def _form(data: bytes, **fields: str) -> bytes:
    return urllib.parse.urlencode({"data": data.decode(), **fields}).encode()


BOMBS: list[Bomb] = [
    # -- compression bombs: refused before anything large is materialised
    Bomb("gzip-js-tiny-values-unknown-key", "/batch/?compression=gzip-js", TEXT,
         lambda k: tiny_values_bomb(UNKNOWN_KEY), (401, 413), None, tags=("measure", "it")),
    Bomb("gzip-js-tiny-values-good-key", "/batch/?compression=gzip-js", TEXT,
         lambda k: tiny_values_bomb(k), (413,), "payload_too_large", tags=("measure", "it")),
    Bomb("gzip-tiny-values-within-inflate-cap", "/batch/", TEXT,
         lambda k: tiny_values_bomb(k, 15_000_000), (413,), "payload_too_large", tags=("measure", "it")),
    Bomb("gzip-zeros-within-inflate-cap", "/batch/", TEXT,
         lambda k: tiny_values_bomb(k, 15_000_000, b"0,"), (413,), "payload_too_large", tags=("measure",)),
    Bomb("gzip-spaces-256MB", "/batch/", TEXT,
         lambda k: gzip_stream(iter([b" " * (1 << 20)] * 256)), (413,), "payload_too_large", tags=("measure", "it")),
    # A GET's query key is checked before the body is read; a POST's is ignored (as PostHog does).
    Bomb("gzip-query-key-unknown", f"/batch/?compression=gzip-js&token={UNKNOWN_KEY}", TEXT,
         lambda k: tiny_values_bomb(UNKNOWN_KEY, 5_000_000), (401,), "invalid_api_key", tags=("measure", "it"),
         method="GET"),
    Bomb("post-query-key-ignored", f"/batch/?token={UNKNOWN_KEY}", JSON, lambda k: batch(k, [event(0)]), (200,),
         stored=1, tags=("it",)),
    Bomb("content-encoding-gzip-bomb", "/e/", {**JSON, "Content-Encoding": "gzip"},
         lambda k: tiny_values_bomb(k, 50_000_000), (413,), "payload_too_large", tags=("measure", "it")),
    Bomb("base64-gzip-bomb", "/e/?compression=base64", TEXT,
         lambda k: base64.b64encode(tiny_values_bomb(k, 50_000_000)), (413,), "payload_too_large", tags=("measure",)),
    Bomb("form-base64-gzip-bomb", "/e/?compression=gzip-js", FORM,
         lambda k: _form(base64.b64encode(tiny_values_bomb(k, 50_000_000))), (413,), "payload_too_large",
         tags=("measure",)),
    Bomb("form-key-unknown-gzip", "/e/", FORM,
         lambda k: _form(base64.b64encode(tiny_values_bomb(UNKNOWN_KEY, 5_000_000)), api_key=UNKNOWN_KEY),
         (401,), "invalid_api_key", tags=("measure",)),
    # -- bombs behind a lying hint: the bytes are recognised, and the same limits stop them
    Bomb("gzip-bomb-under-lz64-hint", "/e/?compression=lz64", TEXT,
         lambda k: tiny_values_bomb(k, 50_000_000), (413,), "payload_too_large", tags=("measure", "it")),
    Bomb("form-base64-gzip-bomb-under-json-type", "/e/", JSON,
         lambda k: _form(base64.b64encode(tiny_values_bomb(k, 50_000_000)), compression="lz64"), (413,),
         "payload_too_large", tags=("measure",)),
    Bomb("lz64-bomb-under-gzip-hint", "/e/?compression=gzip-js", TEXT,
         lambda k: LZString().compressToBase64('{"a": "' + "x" * 2_100_000 + '"}').encode(),
         (413,), "payload_too_large", tags=("measure",)),
    Bomb("lz64-bomb", "/e/?compression=lz64", FORM,
         lambda k: _form(LZString().compressToBase64('{"a": "' + "x" * 2_100_000 + '"}').encode()),
         (413,), "payload_too_large", tags=("measure",)),
    Bomb("form-million-fields", "/batch/", FORM, lambda k: b"a=&" * 3_000_000, (400,), "invalid_payload",
         tags=("measure", "it")),
    # -- JSON shapes
    Bomb("deep-nesting-100k", "/capture/", JSON, keyed(_nested(100_000)), (400,), "invalid_payload",
         tags=("measure", "it")),
    Bomb("deep-nesting-65", "/capture/", JSON, keyed(_nested(65)), (400,), "invalid_payload"),
    Bomb("wide-object-600k-keys", "/batch/", JSON,
         lambda k: batch(k, [event(0, properties={f"k{i}": i for i in range(600_000)})]), (413,), "payload_too_large",
         tags=("measure", "it")),
    Bomb("huge-string-event-3MB", "/batch/", JSON, lambda k: batch(k, [event(0, properties={"s": "x" * 3_000_000})]),
         (413,), "payload_too_large", tags=("measure", "it")),
    Bomb("many-small-events-10001", "/batch/", JSON, lambda k: batch(k, [event(i) for i in range(10_001)]),
         (413,), "payload_too_large"),
    Bomb("invalid-utf8", "/capture/", JSON,
         keyed(b'{"api_key": "KEY", "event": "e", "distinct_id": "utf8", '
               b'"properties": {"s": "a\xff\xfe\xed\xa0\x80"}}'),
         (200,), stored=1, tags=("it",)),
    Bomb("lone-surrogates", "/capture/", JSON,
         keyed(b'{"api_key": "KEY", "event": "e\\ud800", "distinct_id": "sur\\udc00", "properties": '
               b'{"s": "\\ud83d", "\\udfff": 1}}'), (200,), stored=1, tags=("it",)),
    Bomb("nan-infinity-overflow", "/capture/", JSON,
         keyed(b'{"api_key": "KEY", "event": "e", "distinct_id": "nan", "properties": '
               b'{"a": NaN, "b": Infinity, "c": -Infinity, "d": 1e999, "e": -1e999}}'),
         (200,), stored=1, tags=("it",)),
    Bomb("months-180", "/batch/", JSON, _months, (200,), stored=180, tags=("it",)),
    Bomb("year-1-and-9999", "/batch/", JSON,
         lambda k: batch(k, [event(1, timestamp="0001-01-01T00:00:00Z"), event(2, timestamp="9999-12-31T23:59:59Z"),
                             event(3, timestamp=-62135596800000), event(4, timestamp=253402300799999)]),
         (200,), stored=4, tags=("it",)),
    Bomb("good-and-bad-event", "/batch/", JSON, lambda k: batch(k, [event(0), {"event": "no distinct id"}]),
         (400,), "invalid_payload", tags=("it",)),
    Bomb("biggest-legit-batch", "/batch/", JSON, lambda k: batch(k, [event(i, properties={
        f"p{j}": f"value-{i}-{j}" for j in range(90)}) for i in range(10_000)]), (200,), stored=10_000,
         tags=("measure",)),
    Bomb("biggest-legit-batch-gzip", "/batch/?compression=gzip-js", TEXT, lambda k: gzip.compress(batch(k, [event(
        i, properties={f"p{j}": f"value-{i}-{j}" for j in range(90)}) for i in range(10_000)])), (200,),
         stored=10_000, tags=("measure",)),
    Bomb("good-batch-100", "/batch/", JSON, lambda k: batch(k, [event(i) for i in range(100)]), (200,), stored=100,
         tags=("measure", "it")),
]


def by_tag(tag: str) -> list[Bomb]:
    return [b for b in BOMBS if tag in b.tags]


def measured_bombs(key: str = "phc_good") -> Iterator[tuple[str, str, bytes, dict[str, str], str]]:
    for b in by_tag("measure"):
        yield b.name, b.path, b.build(key), b.headers, b.method


def gzip_of(body: bytes) -> bytes:
    return gzip.compress(body)
