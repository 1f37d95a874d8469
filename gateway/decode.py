"""Request body -> JSON payload: form fields, base64, gzip and lz-string, each size-bounded.

Pure functions (no aiohttp) so every encoding the SDKs send is unit-testable on bytes.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

import ujson

from gateway.errors import invalid, too_large
from gateway.lzstring import LZError, LZTooLarge, decompress_from_base64

GZIP_MAGIC = b"\x1f\x8b"
_B64_CHARS = re.compile(rb"^[A-Za-z0-9+/=\s_-]+$")
# lz-string is decoded in pure Python at ~1 µs per output character for incompressible data, so its
# output gets a tighter bound than gzip's: only old posthog-js sends it, with batches far below this.
LZ_MAX_CHARS = 2 * 1024 * 1024
# A form body carries data, compression, ver, _ and a few more: parse_qs of a body of a million tiny
# fields would build a million strings before we could look at any of them.
MAX_FORM_FIELDS = 64


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress gzip (or zlib) bytes, refusing output past ``limit`` bytes (zip bombs)."""
    d = zlib.decompressobj(wbits=47)  # 32 + 15: auto-detect gzip or zlib header
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise invalid("invalid_payload", f"Malformed request data: gzip {exc}") from None
    if len(out) > limit:
        raise too_large(f"Decompressed payload exceeds {limit} bytes")
    return out


def b64decode(data: bytes | str) -> bytes:
    """Lenient base64 as browsers send it: form decoding turned '+' into ' ', url-safe alphabet, no padding."""
    raw = data.encode("latin-1") if isinstance(data, str) else data
    raw = raw.strip().replace(b" ", b"+").replace(b"\n", b"").replace(b"\r", b"")
    raw = raw.replace(b"-", b"+").replace(b"_", b"/")
    raw += b"=" * (-len(raw) % 4)
    try:
        return base64.b64decode(raw, validate=False)
    except (binascii.Error, ValueError):
        raise invalid("invalid_payload", "Malformed request data: invalid base64") from None


def lz_decompress(data: bytes | str, limit: int) -> bytes:
    """LZString.compressToBase64 payloads (posthog-js ``compression=lz64``), bounded by ``limit``."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = text.strip().replace(" ", "+")
    try:
        out = decompress_from_base64(text, limit)
    except LZTooLarge:
        raise too_large(f"Decompressed payload exceeds {limit} bytes") from None
    except (LZError, IndexError):
        raise invalid("invalid_payload", "Malformed request data: invalid lz-string") from None
    if not out:
        raise invalid("invalid_payload", "Malformed request data: invalid lz-string")
    # lz-string works on UTF-16 code units: join surrogate pairs, replace lone halves.
    encoded = out.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")
    if len(encoded) > limit:
        raise too_large(f"Decompressed payload exceeds {limit} bytes")
    return encoded


def decompress(data: bytes, hint: str, limit: int, lz_limit: int = LZ_MAX_CHARS) -> bytes:
    """Apply the compression hint; gzip is recognised by its magic bytes whatever the hint says."""
    hint = hint.lower().strip()
    if data[:2] == GZIP_MAGIC:
        return gunzip(data, limit)
    if hint in ("gzip", "gzip-js"):
        return gunzip(data, limit)
    if hint in ("lz64", "lz-string"):
        return lz_decompress(data, min(limit, lz_limit))
    if hint in ("base64", "b64"):
        out = b64decode(data)
        return gunzip(out, limit) if out[:2] == GZIP_MAGIC else out
    return data


# How many places starting with the token's first letter _contains looks at before a plain search.
_CONTAINS_PROBES = 32


def _contains(data: bytes, token: bytes) -> bool:
    """``token in data``, faster when the token's first letter (a capital) is rare in ``data``.

    Finding one byte is a memchr; CPython's search for a 3-byte needle like ``NaN`` is not. Each place
    of the first letter is checked; past a few dozen of them the plain search takes over, so text full
    of that letter costs what ``in`` costs, never a Python loop over all of them.
    """
    first = token[:1]
    i = data.find(first)
    for _ in range(_CONTAINS_PROBES):
        if i < 0:
            return False
        if data.startswith(token, i):
            return True
        i = data.find(first, i + 1)
    return i >= 0 and data.find(token, i) >= 0


def loads(data: bytes | str) -> Any:
    """Parse JSON; NaN / Infinity (sent by some SDKs) become null like PostHog's capture does.

    Bytes that are not UTF-8 (old browsers' raw lone surrogates, encoded by fflate's strToU8) become
    U+FFFD rather than refusing the batch: the rest of the events are good.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    # Two substring searches, not a regex alternation: measured 7x faster on a 100 KB batch. "Infinity" is
    # long enough for CPython's search to skip ahead (~47 µs per 100 KB); "NaN" is not (~78 µs), but its
    # capital N is rare in events, so its places are looked up with memchr instead.
    if not _contains(raw, b"NaN") and b"Infinity" not in raw:
        try:
            return ujson.loads(raw)
        except (ValueError, OverflowError, RecursionError, TypeError):
            pass  # the stdlib below gives the error message (and handles what ujson can't)
    import json

    try:
        try:
            return json.loads(raw, parse_constant=lambda _c: None)
        except UnicodeDecodeError:
            return json.loads(raw.decode("utf-8", "replace"), parse_constant=lambda _c: None)
    except (ValueError, RecursionError, TypeError) as exc:
        raise invalid("invalid_payload", f"Malformed request data: {exc}") from None


def is_form(content_type: str, body: bytes) -> bool:
    """A form body (curl -d sends JSON with the form content type: such a body is taken as it is)."""
    return content_type.startswith("application/x-www-form-urlencoded") and not _looks_like_json(body)


def parse_form(body: bytes) -> dict[str, list[str]]:
    """The fields of a form body, refusing more than :data:`MAX_FORM_FIELDS` before building them."""
    try:
        return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        raise invalid("invalid_payload", f"Malformed request data: more than {MAX_FORM_FIELDS} form fields") from None


def _looks_like_json(data: bytes) -> bool:
    head = data.lstrip()[:1]
    return head in (b"{", b"[")


def payload_bytes(
    body: bytes,
    content_type: str,
    query: Mapping[str, str],
    content_encoding: str,
    limit: int,
    lz_limit: int = LZ_MAX_CHARS,
) -> bytes:
    """The JSON text of a capture request, whatever way it was wrapped.

    Order (PostHog's): GET ``?data=`` wins over the body; form bodies carry ``data=``; the compression
    hint comes from ``?compression=``, then the form's ``compression``, then Content-Encoding.
    """
    form: dict[str, list[str]] = {}
    data: bytes = body
    if "data" in query:
        data = query["data"].encode("utf-8", "surrogatepass")
    elif is_form(content_type, body):
        form = parse_form(body)
        data = form.get("data", [""])[0].encode("utf-8", "surrogatepass")
    hint = query.get("compression") or (form.get("compression") or [""])[0] or content_encoding
    if hint.strip().lower() in ("gzip", "gzip-js") and data[:2] != GZIP_MAGIC and _B64_CHARS.match(data):
        # posthog-js 1.78 sends form-encoded base64 with ?compression=gzip-js: the hint lies and, like
        # PostHog, we go by the bytes (base64, then gzip when its magic shows).
        hint = "base64"
    data = decompress(data, hint, limit, lz_limit)
    if len(data) > limit:
        raise too_large(f"Payload exceeds {limit} bytes")
    stripped = data.strip()
    if not stripped:
        raise invalid(
            "no_data",
            "No data found. Make sure to use a POST request when sending the payload in the body of the request.",
        )
    if not _looks_like_json(stripped) and _B64_CHARS.match(stripped):
        # Form/GET data that is base64 without a hint (posthog-js without compression, old SDKs).
        decoded = b64decode(stripped)
        decoded = gunzip(decoded, limit) if decoded[:2] == GZIP_MAGIC else decoded
        if _looks_like_json(decoded):
            return decoded
    return stripped


def json_bounds(data: bytes) -> tuple[int, int]:
    """Upper bounds of (values, containers) in a JSON text, counted at C speed before any parse.

    Every value but the root is an element of an array or object, and a container with k elements has
    k - 1 commas, so values <= commas + containers + 1. Structural characters inside strings are
    counted too: the bounds over-count (a 900 KB string of commas counts 900 K), never under-count.
    What a parse materialises is at most ~100 bytes per counted value (measured with ujson on the
    worst shapes: ``{"":0}``, ``[0]``, ``{"a":[]}``), which is what makes the bound a memory bound.
    """
    containers = data.count(b"{") + data.count(b"[")
    return data.count(b",") + containers + 1, containers


def check_json_bounds(data: bytes, max_values: int, max_containers: int, bounds: tuple[int, int] | None = None) -> None:
    """413 when the payload could hold more JSON values or containers than a request may (``bounds``:
    :func:`json_bounds` of ``data``, when already counted)."""
    values, containers = bounds or json_bounds(data)
    if containers > max_containers:
        raise too_large(f"Payload has more than {max_containers} JSON objects and arrays")
    if values > max_values:
        raise too_large(f"Payload has more than {max_values} JSON values")
