"""Pure unit tests of gateway/decode.py: every wrapping an SDK sends, size limits and JSON quirks."""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import random
import string
import tracemalloc
import zlib
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lzstring import LZString

from gateway import decode
from gateway.decode import b64decode, decode_request, decompress, gunzip, loads, lz_decompress
from gateway.errors import CaptureError
from gateway.events import RequestContext
from gateway.prepare import Limits, prepare

LIMIT = 100_000
FORM = "application/x-www-form-urlencoded"
EVENT = {"event": "$pageview", "distinct_id": "user-1", "properties": {"$current_url": "https://x.test/?a=1&b=2"}}
# Chosen so its base64 and lz-string forms contain '+' (and '/'), which form decoding mangles.
JSON = json.dumps({**EVENT, "properties": {**EVENT["properties"], "k": "v?>>>~~~ü", "n": 3}}).encode()
B64 = base64.b64encode(JSON)
LZ = LZString().compressToBase64(JSON.decode())


def lz(text: str) -> str:
    """LZString.compressToBase64 as a browser runs it: on UTF-16 code units (surrogate pairs for emoji)."""
    units = text.encode("utf-16-le", "surrogatepass")
    return LZString().compressToBase64(
        "".join(chr(int.from_bytes(units[i : i + 2], "little")) for i in range(0, len(units), 2))
    )


def payload(
    body: bytes = b"",
    content_type: str = "",
    query: dict[str, str] | None = None,
    content_encoding: str = "",
    limit: int = LIMIT,
) -> bytes:
    return decode_request(body, content_type, query or {}, content_encoding, limit).text


def error(fn, *args, **kwargs) -> CaptureError:  # type: ignore[no-untyped-def]
    with pytest.raises(CaptureError) as info:
        fn(*args, **kwargs)
    return info.value


def test_fixture_base64_has_plus_and_slash() -> None:
    assert b"+" in B64 and b"/" in B64
    assert "+" in LZ


# ---------------------------------------------------------------------------------------------------------------------
# payload_bytes: the encodings
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "query", "content_encoding"),
    [
        pytest.param(JSON, "application/json", {}, "", id="raw-json"),
        pytest.param(JSON, "text/plain", {}, "", id="raw-json-text-plain"),
        pytest.param(JSON, "", {}, "", id="raw-json-no-content-type"),
        pytest.param(b"  \n" + JSON + b"\n ", "application/json", {}, "", id="raw-json-whitespace"),
        pytest.param(JSON, FORM, {}, "", id="curl-d-json-with-form-content-type"),
        pytest.param(b"data=" + quote_plus(JSON).encode(), FORM, {}, "", id="form-plain"),
        pytest.param(b"data=" + quote(JSON).encode(), FORM + "; charset=UTF-8", {}, "", id="form-plain-charset"),
        pytest.param(b"data=" + quote_plus(B64).encode(), FORM, {}, "", id="form-base64-encoded"),
        pytest.param(b"data=" + B64.replace(b"+", b" "), FORM, {}, "", id="form-base64-plus-as-space"),
        pytest.param(b"data=" + B64.replace(b"+", b" ").rstrip(b"="), FORM, {}, "", id="form-base64-no-padding"),
        pytest.param(b"data=" + base64.urlsafe_b64encode(JSON), FORM, {}, "", id="form-base64-urlsafe"),
        pytest.param(b"data=" + quote_plus(B64).encode() + b"&compression=base64", FORM, {}, "", id="form-base64-hint"),
        pytest.param(b"ver=1.2&data=" + quote_plus(JSON).encode() + b"&_=1", FORM, {}, "", id="form-extra-fields"),
        pytest.param(B64, "text/plain", {}, "", id="raw-base64-body"),
        pytest.param(B64, "", {"compression": "base64"}, "", id="base64-query-hint"),
        pytest.param(B64, "", {"compression": "b64"}, "", id="b64-query-hint"),
        pytest.param(gzip.compress(JSON), "text/plain", {"compression": "gzip-js"}, "", id="gzip-js"),
        pytest.param(gzip.compress(JSON), "application/json", {"compression": "gzip"}, "", id="gzip"),
        pytest.param(gzip.compress(JSON), "application/json", {}, "gzip", id="gzip-content-encoding"),
        pytest.param(gzip.compress(JSON), "application/json", {"compression": "GZIP-JS "}, "", id="gzip-hint-case"),
        pytest.param(zlib.compress(JSON), "application/json", {"compression": "gzip"}, "", id="zlib-under-gzip"),
        pytest.param(base64.b64encode(gzip.compress(JSON)), "", {"compression": "base64"}, "", id="base64-of-gzip"),
        pytest.param(base64.b64encode(gzip.compress(JSON)), "text/plain", {}, "", id="base64-of-gzip-no-hint"),
        pytest.param(
            b"data=" + quote_plus(base64.b64encode(gzip.compress(JSON))).encode(), FORM, {}, "", id="form-b64-gzip"
        ),
        pytest.param(LZ.encode(), "text/plain", {"compression": "lz64"}, "", id="lz64-body"),
        pytest.param(LZ.encode(), "text/plain", {"compression": "lz-string"}, "", id="lz-string-body"),
        pytest.param(
            ("data=" + quote_plus(LZ) + "&compression=lz64").encode(), FORM, {}, "", id="form-lz64-posthog-js"
        ),
        pytest.param(
            ("data=" + LZ.replace("+", " ") + "&compression=lz64").encode(), FORM, {}, "", id="form-lz64-plus-space"
        ),
        pytest.param(b"", "", {"data": JSON.decode()}, "", id="get-data-plain"),
        pytest.param(b"", "", {"data": B64.decode()}, "", id="get-data-base64"),
        pytest.param(b"", "", {"data": B64.decode().replace("+", " ")}, "", id="get-data-base64-plus-space"),
        pytest.param(b"", "", {"data": LZ, "compression": "lz64"}, "", id="get-data-lz64"),
        pytest.param(b"", "", {"data": LZ.replace("+", " "), "compression": "lz64"}, "", id="get-data-lz64-space"),
    ],
)
def test_payload_bytes_unwraps(body: bytes, content_type: str, query: dict[str, str], content_encoding: str) -> None:
    out = payload(body, content_type, query, content_encoding)
    assert json.loads(out) == json.loads(JSON)


@pytest.mark.parametrize("hint", ["", "lz64", "base64", "none", "identity", "gzip-js", "br"])
def test_gzip_magic_is_recognised_whatever_the_hint(hint: str) -> None:
    body = gzip.compress(JSON)
    assert payload(body, "text/plain", {"compression": hint} if hint else {}) == JSON
    assert payload(body, "text/plain", {}, hint) == JSON
    assert decompress(body, hint, LIMIT) == JSON


def test_get_data_wins_over_body() -> None:
    other = json.dumps({"event": "from-body", "distinct_id": "b"}).encode()
    assert payload(other, "application/json", {"data": JSON.decode()}) == JSON
    assert payload(b"data=" + quote_plus(other).encode(), FORM, {"data": B64.decode()}) == JSON


def test_query_compression_wins_over_form_compression() -> None:
    body = b"data=" + quote_plus(B64).encode() + b"&compression=lz64"
    assert payload(body, FORM, {"compression": "base64"}) == JSON


def test_form_compression_wins_over_content_encoding() -> None:
    body = ("data=" + quote_plus(LZ) + "&compression=lz64").encode()
    assert payload(body, FORM, {}, "base64") == JSON


def test_content_encoding_is_the_last_resort() -> None:
    assert payload(LZ.encode(), "text/plain", {}, "lz64") == JSON
    assert payload(LZ.encode(), "text/plain", {}, "") == JSON  # recognised by its bytes without any hint


def test_unknown_hint_leaves_data_alone() -> None:
    assert payload(JSON, "application/json", {"compression": "brotli"}) == JSON


def test_non_json_text_is_returned_for_loads_to_refuse() -> None:
    assert payload(b"hello world", "text/plain") == b"hello world"
    assert error(loads, payload(b"hello world", "text/plain")).code == "invalid_payload"


# ---------------------------------------------------------------------------------------------------------------------
# payload_bytes: errors and limits
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "query"),
    [
        pytest.param(b"", "application/json", {}, id="empty-body"),
        pytest.param(b" \n\t ", "application/json", {}, id="whitespace-body"),
        pytest.param(b"", FORM, {}, id="empty-form"),
        pytest.param(b"data=", FORM, {}, id="form-empty-data"),
        pytest.param(b"compression=gzip-js&ver=1", FORM, {}, id="form-without-data"),
        pytest.param(b"compression=gzip-js&ver=1", "application/json", {}, id="form-without-data-json-type"),
        pytest.param(b"", "", {"data": ""}, id="get-empty-data-empty-body"),
        pytest.param(gzip.compress(b"   "), "text/plain", {}, id="gzip-of-whitespace"),
    ],
)
def test_no_data_is_400(body: bytes, content_type: str, query: dict[str, str]) -> None:
    err = error(payload, body, content_type, query)
    assert (err.status, err.type, err.code) == (400, "validation_error", "no_data")


@pytest.mark.parametrize(
    ("body", "query"),
    [
        pytest.param(gzip.compress(b'{"a": "' + b"x" * 2000 + b'"}'), {}, id="gzip-magic"),
        pytest.param(gzip.compress(b'{"a": "' + b"x" * 2000 + b'"}'), {"compression": "gzip-js"}, id="gzip-hint"),
        pytest.param(zlib.compress(b'{"a": "' + b"x" * 2000 + b'"}'), {"compression": "gzip"}, id="zlib"),
        pytest.param(
            base64.b64encode(gzip.compress(b'{"a": "' + b"x" * 2000 + b'"}')), {"compression": "base64"}, id="b64-gzip"
        ),
        pytest.param(lz('{"a": "' + "x" * 2000 + '"}').encode(), {"compression": "lz64"}, id="lz64"),
        pytest.param(b'{"a": "' + b"x" * 2000 + b'"}', {}, id="plain"),
    ],
)
def test_decompressed_size_limit_is_413(body: bytes, query: dict[str, str]) -> None:
    err = error(payload, body, "text/plain", query, limit=1000)
    assert (err.status, err.type, err.code) == (413, "validation_error", "payload_too_large")


def test_gzip_bomb_is_refused_without_inflating_it() -> None:
    bomb = gzip.compress(b"0" * 50_000_000)
    assert len(bomb) < 100_000
    err = error(gunzip, bomb, 10_000)
    assert err.status == 413


def test_limit_is_inclusive() -> None:
    assert gunzip(gzip.compress(b"x" * 1000), 1000) == b"x" * 1000
    assert error(gunzip, gzip.compress(b"x" * 1001), 1000).status == 413
    assert payload(b"[" + b" " * 998 + b"]", "application/json", limit=1000).startswith(b"[")


def test_empty_get_data_does_not_hide_the_body() -> None:
    # PostHog's Rust capture reads ?data= only when it is not empty.
    assert payload(JSON, "application/json", {"data": ""}) == JSON


def test_malformed_gzip_is_400() -> None:
    err = error(decompress, b"\x1f\x8bthis is not deflate", "", LIMIT)
    assert (err.status, err.code) == (400, "invalid_payload")
    assert "gzip" in err.detail


# ---------------------------------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encoded",
    [
        B64,
        B64.decode(),
        B64.replace(b"+", b" "),
        B64.rstrip(b"="),
        base64.urlsafe_b64encode(JSON),
        base64.urlsafe_b64encode(JSON).rstrip(b"="),
        b"  " + B64 + b"\r\n",
        base64.encodebytes(JSON),  # MIME line breaks
    ],
)
def test_b64decode_is_lenient(encoded: bytes | str) -> None:
    assert b64decode(encoded) == JSON


@pytest.mark.parametrize("text", ["", "a", '{"a":1}', "üé€ж中" * 50, json.dumps({"k": list(range(200))})])
def test_lz_decompress_round_trip(text: str) -> None:
    if not text:
        assert error(lz_decompress, lz(text), LIMIT).code == "invalid_payload"
    else:
        assert lz_decompress(lz(text), LIMIT) == text.encode()
        assert lz_decompress(lz(text).encode(), LIMIT) == text.encode()


def test_lz64_non_bmp_characters_decode_to_utf8() -> None:
    # JavaScript strings are UTF-16: lz-string in the browser compresses the surrogate pair of an emoji.
    js_string = '{"event":"e","distinct_id":"x","properties":{"emoji":"\ud83d\ude00"}}'
    out = lz_decompress(lz(js_string), LIMIT)
    assert out == '{"event":"e","distinct_id":"x","properties":{"emoji":"😀"}}'.encode()


def test_lz64_within_the_decompressed_limit_is_accepted() -> None:
    rng = random.Random(7)
    text = json.dumps({"blob": "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(3000))})
    compressed = lz(text)
    limit = 2 * len(text)  # decompressed payload is half the limit
    assert lz_decompress(compressed, limit) == text.encode()


def test_lz64_bomb_is_refused_without_inflating_it(monkeypatch: pytest.MonkeyPatch) -> None:
    inflated: list[int] = []
    original = LZString.decompressFromBase64

    def spy(text: str) -> str:
        out = original(text)
        inflated.append(len(out or ""))
        return out

    monkeypatch.setattr(LZString, "decompressFromBase64", staticmethod(spy))
    bomb = lz('{"a": "' + "a" * 100_000 + '"}')
    limit = 10_000
    assert len(bomb) * 8 < limit  # passes the pre-check
    err = error(lz_decompress, bomb, limit)
    assert err.status == 413
    assert max(inflated, default=0) <= limit, f"materialised {max(inflated)} chars for a {limit}-byte limit"


# ---------------------------------------------------------------------------------------------------------------------
# loads
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        (b'{"a": 1}', {"a": 1}),
        ("[1, 2]", [1, 2]),
        ('{"u": "\\u00fc"}', {"u": "ü"}),
        ('{"big": 123456789012345678901234567890}', {"big": 123456789012345678901234567890}),
        ('  {"a": null}  ', {"a": None}),
    ],
)
def test_loads_valid(text: str | bytes, expected: object) -> None:
    assert loads(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": NaN}', {"a": None}),
        ('{"a": Infinity}', {"a": None}),
        ('{"a": -Infinity, "b": [1, NaN]}', {"a": None, "b": [1, None]}),
    ],
)
def test_loads_maps_nan_and_infinity_to_null(text: str, expected: object) -> None:
    assert loads(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "{", '{"a": 1', "[1,]", '{"a":1,}', "{'a': 1}", '{"a": 1} trailing', "hello", b"\xff\xfe", '{"a": nan}'],
)
def test_loads_invalid_json_is_400(text: str | bytes) -> None:
    err = error(loads, text)
    assert (err.status, err.type, err.code) == (400, "validation_error", "invalid_payload")
    assert err.body()["code"] == "invalid_payload"


def test_loads_deep_nesting_is_400_not_a_crash() -> None:
    err = error(loads, "[" * 100_000 + "]" * 100_000)
    assert err.status == 400


def test_gzip_magic_constant() -> None:
    assert gzip.compress(b"x")[:2] == decode.GZIP_MAGIC


def test_contains_is_in_whatever_the_text() -> None:
    probes = decode._CONTAINS_PROBES
    rnd = random.Random(12)
    texts = [
        b"",
        b"N",
        b"Na",
        b"NaN",
        b"xNaNx",
        b"N" * (probes + 5) + b"NaN",
        b"N" * (probes + 5),
        b'{"a": "Nope", "b": NaN}',
    ]
    texts += [bytes(rnd.choice(b"Na x") for _ in range(rnd.randint(0, 300))) for _ in range(3000)]
    for text in texts:
        assert decode._contains(text, b"NaN") == (b"NaN" in text), text


# ---------------------------------------------------------------------------------------------------------------------
# by the bytes, not the hint: every encoding x every hint (and where it is sent) x every content type
# ---------------------------------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _form(data: str) -> bytes:
    return ("data=" + quote_plus(data)).encode()


# encoding -> (body, GET ?data=, is the payload in a form)
ENCODINGS: dict[str, tuple[bytes, str | None, bool]] = {
    "json": (JSON, None, False),
    "gzip": (gzip.compress(JSON), None, False),
    "zlib": (zlib.compress(JSON), None, False),
    "base64": (B64, None, False),
    "base64-url-safe": (base64.urlsafe_b64encode(JSON), None, False),
    "base64-of-gzip": (_b64(gzip.compress(JSON)).encode(), None, False),
    "lz64": (LZ.encode(), None, False),
    "form-json": (_form(JSON.decode()), None, True),
    "form-base64": (_form(B64.decode()), None, True),
    "form-base64-spaces": (b"data=" + B64.replace(b"+", b" "), None, True),
    "form-base64-of-gzip": (_form(_b64(gzip.compress(JSON))), None, True),
    "form-lz64": (_form(LZ), None, True),
    "form-lz64-spaces": (("data=" + LZ.replace("+", " ")).encode(), None, True),
    "gzip-of-form-base64": (gzip.compress(_form(B64.decode())), None, True),
    "get-json": (b"", JSON.decode(), False),
    "get-base64": (b"", B64.decode(), False),
    "get-lz64": (b"", LZ, False),
}
HINTS = ["", "gzip", "gzip-js", "GZIP-JS ", "lz64", "lz-string", "base64", "b64", "none", "br"]
CONTENT_TYPES = ["", "application/json", "text/plain", FORM, FORM + "; charset=UTF-8"]


def _cases() -> list[Any]:
    cases = []
    for (name, (body, get_data, in_form)), hint, content_type in itertools.product(
        ENCODINGS.items(), HINTS, CONTENT_TYPES
    ):
        places = ["query", "content-encoding"] + (["form"] if in_form and not name.startswith("gzip-of") else [])
        for place in places if hint else ["none"]:
            query = {"data": get_data} if get_data is not None else {}
            sent, encoding = body, ""
            if place == "query":
                query["compression"] = hint
            elif place == "form":
                sent = body + b"&compression=" + quote_plus(hint).encode()
            elif place == "content-encoding":
                encoding = hint
            label = f"{name}|{place}={hint.strip() or '-'}|{content_type.split(';')[0] or 'none'}"
            cases.append(pytest.param(sent, content_type, query, encoding, id=label))
    return cases


@pytest.mark.parametrize(("body", "content_type", "query", "content_encoding"), _cases())
def test_every_encoding_is_decoded_whatever_the_hints_claim(
    body: bytes, content_type: str, query: dict[str, str], content_encoding: str
) -> None:
    assert json.loads(payload(body, content_type, query, content_encoding)) == json.loads(JSON)


@pytest.mark.parametrize(
    ("body", "content_type", "query", "content_encoding"),
    [
        # the lies of the issue, each named
        pytest.param(_form(B64.decode()), FORM, {"compression": "gzip-js"}, "", id="posthog-js-1.78-gzip-js-on-form"),
        pytest.param(JSON, "application/json", {"compression": "lz64"}, "", id="lz64-on-plain-json"),
        pytest.param(_form(JSON.decode()), "application/json", {}, "", id="json-type-on-form"),
        pytest.param(_form(B64.decode()), "application/json", {}, "", id="json-type-on-form-base64"),
        pytest.param(gzip.compress(JSON), "text/plain", {}, "", id="text-plain-on-gzip"),
        pytest.param(gzip.compress(JSON), FORM, {}, "", id="form-type-on-gzip"),
        pytest.param(B64, FORM, {}, "", id="form-type-on-base64"),
        pytest.param(LZ.encode(), FORM, {"compression": "base64"}, "", id="form-type-base64-hint-on-lz64"),
        pytest.param(JSON, "application/json", {}, "gzip", id="content-encoding-gzip-on-json"),
        pytest.param(B64, "text/plain", {}, "gzip", id="content-encoding-gzip-on-base64"),
        pytest.param(JSON, "application/json", {}, "deflate", id="content-encoding-deflate-on-json"),
        pytest.param(zlib.compress(JSON), "application/json", {}, "deflate", id="content-encoding-deflate"),
        pytest.param(LZ.encode(), "text/plain", {"compression": "gzip"}, "", id="gzip-hint-on-lz64"),
        pytest.param(B64, "text/plain", {"compression": "lz64"}, "", id="lz64-hint-on-base64"),
        pytest.param(_form(B64.decode()) + b"&compression=lz64", FORM, {}, "", id="form-lz64-field-on-base64"),
        pytest.param(
            b"ver=1.78.0&_=1700000000000&data=" + quote_plus(B64).encode(),
            "text/plain",
            {},
            "",
            id="form-with-fields-before-data-as-text",
        ),
        pytest.param(b"data=" + quote(quote(B64.decode(), safe="")).encode(), FORM, {}, "", id="form-encoded-twice"),
    ],
)
def test_lying_hints_cost_nothing(body: bytes, content_type: str, query: dict[str, str], content_encoding: str) -> None:
    assert json.loads(payload(body, content_type, query, content_encoding)) == json.loads(JSON)


def test_the_hint_breaks_the_tie_between_base64_and_lz_string() -> None:
    # Both alphabets are the same: with an lz64 hint lz-string is tried first, else base64; a wrong
    # first try costs a few characters' decode, and the other is tried next.
    for hint in ("", "lz64", "base64"):
        assert payload(LZ.encode(), "text/plain", {"compression": hint}) == JSON
        assert payload(B64, "text/plain", {"compression": hint}) == JSON
    assert list(decode._candidates(LZ.encode(), decode.LZ64)) == [decode.LZ64]
    assert list(decode._candidates(B64, decode.LZ64)) == [decode.BASE64]


@pytest.mark.parametrize(
    ("hints", "expected"),
    [
        (("gzip-js", "lz64", "base64"), decode.GZIP),
        ((None, "lz64", "base64"), decode.LZ64),
        (("none", "", "b64"), decode.BASE64),  # unknown values are skipped, as the Rust capture does
        (("brotli", None, "br"), None),
        ((" LZ-String ",), decode.LZ64),
    ],
)
def test_hint_precedence_query_then_form_then_content_encoding(hints: tuple[str | None, ...], expected: str) -> None:
    assert decode.hint_kind(*hints) == expected


def test_form_is_recognised_by_its_bytes() -> None:
    assert decode.is_form("text/plain", b"data=x")
    assert decode.is_form("application/json", b"ver=1&compression=lz64&data=x")
    assert decode.is_form(FORM, b"foo=bar")  # the content type says form and the body is not base64 text
    assert not decode.is_form(FORM, B64)
    assert not decode.is_form(FORM, JSON)  # curl -d
    assert not decode.is_form("text/plain", b"foo=bar")
    assert not decode.is_form(FORM, gzip.compress(b"data=x"))
    # a JSON body that mentions a form field in its first bytes is JSON
    assert not decode.is_form(FORM, b'{"properties": {"$current_url": "https://x/?a=1&data=2"}}')


# Refused: garbage whatever the hints, always a 4xx with a JSON error body.
rng = random.Random(13)
GARBAGE: list[bytes] = [
    b"hello world",
    b"42",
    b'"a string"',
    b"null",
    b"undefined",
    b"{",
    b"[1,",
    b'{"event": "e"} trailing',
    b"\x1f\x8b\x08garbage",
    gzip.compress(JSON)[:-12],
    gzip.compress(b"not json at all"),
    gzip.compress(gzip.compress(JSON)),  # each encoding is undone once
    base64.b64encode(b"not json"),
    base64.b64encode(base64.b64encode(JSON)),
    lz("not json").encode(),
    b"A",
    b"====",
    b"data=%%%&compression=gzip",
    b"data=" + base64.b64encode(bytes(rng.randrange(256) for _ in range(300))),
    b"&".join(b"f%d=1" % i for i in range(100)),
    *(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000))) for _ in range(8)),
    *(
        bytes(rng.choice(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") for _ in range(500))
        for _ in range(4)
    ),
]


@pytest.mark.parametrize("content_type", ["", "application/json", FORM])
@pytest.mark.parametrize("hint", ["", "gzip-js", "lz64", "base64"])
@pytest.mark.parametrize("body", GARBAGE, ids=[f"garbage-{i}" for i in range(len(GARBAGE))])
def test_garbage_is_a_4xx_whatever_the_hints(body: bytes, hint: str, content_type: str) -> None:
    ctx = RequestContext(now=datetime(2024, 1, 1, tzinfo=UTC))
    with pytest.raises(CaptureError) as info:
        prepare(body, content_type, {"compression": hint} if hint else {}, "", ctx, Limits(inflated_bytes=LIMIT))
    err = info.value
    assert 400 <= err.status < 500 and err.status != 401, err.body()
    assert set(err.body()) == {"type", "code", "detail", "attr"}


@pytest.mark.parametrize("hint", ["", "gzip-js", "lz64", "base64"])
def test_recognising_an_encoding_reads_a_constant_number_of_bytes(hint: str) -> None:
    big = [B64 * 40_000, LZ.encode() * 40_000, b"x" * 5_000_000, b"h" + b"b" * 5_000_000]  # "hb": a zlib header
    for data in big:
        tracemalloc.start()
        try:
            list(decode._candidates(data, decode.hint_kind(hint)))
            decode.is_form(FORM, data)
            decode.looks_like_json(data)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 64 * 1024, f"{peak} bytes to look at a {len(data)}-byte text"


@pytest.mark.parametrize(
    ("bomb", "hint"),
    [
        pytest.param(gzip.compress(b"[" + b" " * 5_000_000 + b"]"), "lz64", id="gzip-bomb-lz64-hint"),
        pytest.param(base64.b64encode(gzip.compress(b"[" + b" " * 5_000_000 + b"]")), "lz64", id="b64-gzip-lz64-hint"),
        pytest.param(lz("[" + " " * 500_000 + "]").encode(), "gzip", id="lz-bomb-gzip-hint"),
        pytest.param(lz("[" + " " * 500_000 + "]").encode(), "base64", id="lz-bomb-base64-hint"),
    ],
)
def test_bombs_behind_a_lying_hint_stop_at_the_limits(bomb: bytes, hint: str) -> None:
    tracemalloc.start()
    try:
        err = error(payload, bomb, "text/plain", {"compression": hint}, limit=LIMIT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (err.status, err.code) == (413, "payload_too_large")
    assert peak < 4 * LIMIT + 2 * len(bomb)


@given(
    body=st.binary(max_size=600)
    | st.sampled_from(GARBAGE)
    | st.builds(lambda b: b"data=" + b, st.binary(max_size=200)),
    hint=st.sampled_from(HINTS) | st.text(max_size=10),
    content_type=st.sampled_from(CONTENT_TYPES),
    content_encoding=st.sampled_from(["", "gzip", "deflate", "br", "lz64", "base64"]),
)
@settings(max_examples=400, deadline=None)
def test_any_bytes_under_any_hints_decode_or_are_a_4xx(
    body: bytes, hint: str, content_type: str, content_encoding: str
) -> None:
    try:
        decode_request(body, content_type, {"compression": hint}, content_encoding, LIMIT)
    except CaptureError as err:
        assert 400 <= err.status < 500


@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=15,
    ),
    encoding=st.sampled_from(sorted(ENCODINGS)),
    hint=st.sampled_from(HINTS),
)
@settings(max_examples=300, deadline=None)
def test_any_payload_round_trips_through_every_encoding_whatever_the_hint(value: Any, encoding: str, hint: str) -> None:
    text = json.dumps([{"event": "e", "v": value}], ensure_ascii=False)
    b64_text = base64.b64encode(text.encode()).decode()
    bodies = {
        "json": (text.encode(), None),
        "gzip": (gzip.compress(text.encode()), None),
        "zlib": (zlib.compress(text.encode()), None),
        "base64": (b64_text.encode(), None),
        "base64-url-safe": (base64.urlsafe_b64encode(text.encode()), None),
        "base64-of-gzip": (_b64(gzip.compress(text.encode())).encode(), None),
        "lz64": (lz(text).encode(), None),
        "form-json": (_form(text), None),
        "form-base64": (_form(b64_text), None),
        "form-base64-spaces": (("data=" + b64_text.replace("+", " ")).encode(), None),
        "form-base64-of-gzip": (_form(_b64(gzip.compress(text.encode()))), None),
        "form-lz64": (_form(lz(text)), None),
        "form-lz64-spaces": (("data=" + lz(text).replace("+", " ")).encode(), None),
        "gzip-of-form-base64": (gzip.compress(_form(b64_text)), None),
        "get-json": (b"", text),
        "get-base64": (b"", b64_text),
        "get-lz64": (b"", lz(text)),
    }
    body, get_data = bodies[encoding]
    query = {"compression": hint, **({"data": get_data} if get_data is not None else {})}
    assert json.loads(payload(body, "text/plain", query)) == json.loads(text)
