"""Pure unit tests of gateway/decode.py: every wrapping an SDK sends, size limits and JSON quirks."""

from __future__ import annotations

import base64
import gzip
import json
import random
import string
import zlib
from urllib.parse import quote, quote_plus

import pytest
from lzstring import LZString

from gateway import decode
from gateway.decode import b64decode, decompress, gunzip, loads, lz_decompress, payload_bytes
from gateway.errors import CaptureError

LIMIT = 100_000
FORM = "application/x-www-form-urlencoded"
EVENT = {"event": "$pageview", "distinct_id": "user-1", "properties": {"$current_url": "https://x.test/?a=1&b=2"}}
# Chosen so its base64 and lz-string forms contain '+' (and '/'), which form decoding mangles.
JSON = json.dumps({**EVENT, "properties": {**EVENT["properties"], "k": "v?>>>~~~ü", "n": 3}}).encode()
B64 = base64.b64encode(JSON)
LZ = LZString().compressToBase64(JSON.decode())


def lz(text: str) -> str:
    return LZString().compressToBase64(text)


def payload(
    body: bytes = b"",
    content_type: str = "",
    query: dict[str, str] | None = None,
    content_encoding: str = "",
    limit: int = LIMIT,
) -> bytes:
    return payload_bytes(body, content_type, query or {}, content_encoding, limit)


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
    # without any hint the lz-string text is not recognised as anything: returned as is (loads will refuse it)
    assert payload(LZ.encode(), "text/plain", {}, "") == LZ.encode()


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
        pytest.param(JSON, "application/json", {"data": ""}, id="get-empty-data-wins"),
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


@pytest.mark.parametrize(
    ("data", "hint"),
    [
        pytest.param(b"\x1f\x8bthis is not deflate", "", id="bad-gzip-magic"),
        pytest.param(b"plainly not gzip", "gzip", id="gzip-hint-on-text"),
        pytest.param(b"@@@@ not lz-string @@@@", "lz64", id="bad-lz64"),
        pytest.param(b"A", "base64", id="bad-base64-length"),
    ],
)
def test_malformed_compressed_data_is_400(data: bytes, hint: str) -> None:
    err = error(decompress, data, hint, LIMIT)
    assert (err.status, err.code) == (400, "invalid_payload")


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
    texts = [b"", b"N", b"Na", b"NaN", b"xNaNx", b"N" * (probes + 5) + b"NaN", b"N" * (probes + 5),
             b'{"a": "Nope", "b": NaN}']
    texts += [bytes(rnd.choice(b"Na x") for _ in range(rnd.randint(0, 300))) for _ in range(3000)]
    for text in texts:
        assert decode._contains(text, b"NaN") == (b"NaN" in text), text
