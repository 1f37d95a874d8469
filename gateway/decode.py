"""Request body -> JSON payload text: form fields, gzip, base64 and lz-string, each size-bounded.

Pure functions (no aiohttp) so every encoding the SDKs send is unit-testable on bytes. Encodings are
recognised by their bytes; the compression hint (``?compression=``, the form's ``compression``,
Content-Encoding) only says which of two look-alikes (base64 and lz-string share an alphabet) to try
first, so a hint that lies never costs a request that can be decoded (docs/capture.md, "Encodings").
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote_to_bytes

import ujson

from gateway.errors import CaptureError, invalid, too_large
from gateway.events import outside_token
from gateway.lzstring import LZError, LZTooLarge, decompress_from_base64

GZIP_MAGIC = b"\x1f\x8b"
FORM_TYPE = "application/x-www-form-urlencoded"
# lz-string is decoded in pure Python at ~1 µs per output character for incompressible data, so its
# output gets a tighter bound than gzip's: only old posthog-js sends it, with batches far below this.
LZ_MAX_CHARS = 2 * 1024 * 1024
# A form body carries data, compression, ver, _ and a few more: parse_qs of a body of a million tiny
# fields would build a million strings before we could look at any of them.
MAX_FORM_FIELDS = 64

# The encodings a payload is unwrapped from, as the hints name them.
GZIP = "gzip"
BASE64 = "base64"
LZ64 = "lz64"
_HINTS = {"gzip": GZIP, "gzip-js": GZIP, "lz64": LZ64, "lz-string": LZ64, "base64": BASE64, "b64": BASE64}

# How far into a text the sniffing looks: enough for any SDK's first form field or base64 prefix, and a
# constant, so recognising an encoding costs the same for a 100 B event and a 20 MB batch.
_SNIFF = 128
_JSON_STARTS = (b"{", b"[")
# The fields that make a body a form whatever its Content-Type (PostHog's Rust capture looks for the
# first four; the others are what posthog-js and the Django capture put beside them).
_FORM_FIELD = re.compile(rb"(?:^|&)(?:data|compression|_|ip|ver|api_key|token|sent_at)=")
# Base64 and lz-string text: their alphabets (standard and url-safe), whitespace (form decoding turns
# '+' into ' '; MIME breaks lines) and '%' (an escape left by a sender that encoded twice).
_BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/_\-%\s]+")


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
    """Lenient base64 as browsers send it: form decoding turned '+' into ' ', url-safe alphabet, no padding,
    ``%``-escapes of a sender that URL-encoded twice."""
    raw = data.encode("latin-1") if isinstance(data, str) else data
    if b"%" in raw:
        raw = unquote_to_bytes(raw)
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


def hint_kind(*hints: str | None) -> str | None:
    """The encoding the first hint that names one names (``gzip-js`` -> gzip, ``lz-string`` -> lz64, …).

    Unknown values are skipped, as PostHog's Rust capture does: ``?compression=none`` says nothing,
    so a form's ``compression`` or Content-Encoding after it still counts.
    """
    for hint in hints:
        if hint and (kind := _HINTS.get(hint.strip().lower())) is not None:
            return kind
    return None


def _head(data: bytes) -> bytes:
    """The first byte of ``data`` that is not whitespace (b"" when there is none)."""
    head = data[:_SNIFF].lstrip()[:1]
    return head if head or len(data) <= _SNIFF else data.lstrip()[:1]


def looks_like_json(data: bytes) -> bool:
    """A JSON object or list (what every capture payload is) starts with ``{`` or ``[``."""
    return _head(data) in _JSON_STARTS


def _is_zlib(data: bytes) -> bool:
    """A zlib header (RFC 1950: deflate, a window of at most 32 KB, a check that makes it a multiple of 31)."""
    return len(data) >= 2 and data[0] & 0x0F == 8 and data[0] >> 4 <= 7 and (data[0] << 8 | data[1]) % 31 == 0


def _base64_text(data: bytes) -> bool:
    """Whether ``data`` starts like base64 or lz-string text, ``=`` only as the padding at its end."""
    return _BASE64_TEXT.fullmatch(data[:_SNIFF].rstrip(b"= \t\r\n")) is not None


def _json_start(decoded: bytes) -> bool:
    return decoded[:2] == GZIP_MAGIC or decoded.lstrip()[:1] in _JSON_STARTS


def _base64_probe(data: bytes) -> bool:
    """What the first 16 base64 characters of ``data`` decode to starts a JSON payload (or gzip)."""
    try:
        return _json_start(b64decode(data[:64].strip()[:16]))
    except CaptureError:
        return False


def _lz64_probe(data: bytes) -> bool:
    """The first character lz-string decodes from the first few of ``data`` starts a JSON payload."""
    text = data[:32].decode("latin-1").strip().replace(" ", "+")
    try:
        return decompress_from_base64(text, 16, stop_at=1)[:1] in ("{", "[")
    except (LZError, LZTooLarge, IndexError):
        return False


def _candidates(data: bytes, hint: str | None) -> Iterator[str]:
    """The encodings ``data`` may be, most likely first; each check looks at a constant number of bytes.

    gzip shows its magic bytes, zlib (a deflate Content-Encoding, ``zlib.compress``) its header. Base64
    and lz-string share an alphabet: what each makes of the first few characters is looked at, base64's
    first unless the hint names lz-string.
    """
    if data[:2] == GZIP_MAGIC:
        yield GZIP
        return
    if _is_zlib(data):
        yield GZIP  # a text can start like a zlib header: when inflating it fails, base64 still gets its try
    if not _base64_text(data):
        return
    for kind, probe in ((LZ64, _lz64_probe), (BASE64, _base64_probe))[:: 1 if hint == LZ64 else -1]:
        if probe(data):
            yield kind


def _decode(kind: str, data: bytes, limit: int, lz_limit: int) -> bytes:
    if kind == GZIP:
        return gunzip(data, limit)
    if kind == LZ64:
        return lz_decompress(data, min(limit, lz_limit))
    return b64decode(data)


def decompress(
    data: bytes, hint: str | None, limit: int, lz_limit: int = LZ_MAX_CHARS, used: frozenset[str] = frozenset()
) -> bytes:
    """``data`` unwrapped until it is JSON text, whatever ``hint`` says (gzip-js, lz64, base64, …).

    Each encoding is undone at most once (base64 of gzip, gzip of base64: two layers), so the work is
    at most one inflate to ``limit``, one base64 decode and one lz-string decode, whatever the request
    holds; ``used``: encodings undone already (a gzip body, inflated before its form was read). A
    candidate whose decode fails (400) gives way to the next one; a decode past the limits (413) is
    final. Text that is nothing of these is returned as it is, for the JSON parse to refuse.
    """
    kind = hint_kind(hint)
    done = set(used)
    failed: CaptureError | None = None
    while not looks_like_json(data):
        for candidate in _candidates(data, kind):
            if candidate in done:
                continue
            try:
                out = _decode(candidate, data, limit, lz_limit)
            except CaptureError as err:
                if err.status != 400:
                    raise
                failed = failed or err
                continue
            done.add(candidate)
            data = out
            break
        else:
            break
    if failed is not None and not looks_like_json(data):
        raise failed
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
    """A urlencoded form, by its bytes: it names a capture field (``data=``, ``compression=``, …) in its
    first bytes, whatever the Content-Type says; or the Content-Type says form and the body is not
    JSON (``curl -d`` sends JSON with the form type), gzip, base64 or lz-string text."""
    if _head(body) in (b"", *_JSON_STARTS) or body[:2] == GZIP_MAGIC:
        return False
    if _FORM_FIELD.search(body[:_SNIFF]) is not None:
        return True
    return content_type.startswith(FORM_TYPE) and not _base64_text(body)


def request_form(body: bytes, content_type: str, query: Mapping[str, str]) -> dict[str, list[str]] | None:
    """The form fields of a body that carries the payload as a form (None: not a form, or GET ``?data=``,
    which wins over any body)."""
    if query.get("data") or not is_form(content_type, body):
        return None
    return parse_form(body)


def parse_form(body: bytes) -> dict[str, list[str]]:
    """The fields of a form body, refusing more than :data:`MAX_FORM_FIELDS` before building them."""
    try:
        return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        raise invalid("invalid_payload", f"Malformed request data: more than {MAX_FORM_FIELDS} form fields") from None


def _field(form: Mapping[str, list[str]] | None, name: str) -> str | None:
    return form[name][0] if form and form.get(name) else None


class Payload(NamedTuple):
    """What a request's body and query carried: the JSON text and a key sent as a form field beside it."""

    text: bytes
    form_token: str | None = None


def decode_request(
    body: bytes,
    content_type: str,
    query: Mapping[str, str],
    content_encoding: str,
    limit: int,
    lz_limit: int = LZ_MAX_CHARS,
) -> Payload:
    """The JSON text of a capture request, whatever way it was wrapped and whatever its hints claim.

    Order (docs/capture.md, "Encodings"): a non-empty GET ``?data=`` wins over the body; a gzip (or
    zlib) body is inflated first, whatever Content-Encoding says, so a compressed form is a form too; a
    form body carries the payload in ``data``; the payload is then unwrapped by :func:`decompress`, the
    hint taken from ``?compression=``, then the form's ``compression``, then Content-Encoding. A raw
    JSON body (most requests) is recognised by its first byte and pays for none of this.
    """
    form: dict[str, list[str]] | None = None
    used: frozenset[str] = frozenset()
    if query.get("data"):
        data = query["data"].encode("utf-8", "surrogatepass")
    elif _head(body) in _JSON_STARTS:
        data = body
    else:
        if body[:2] == GZIP_MAGIC or _is_zlib(body):
            try:
                body, used = gunzip(body, limit), frozenset((GZIP,))
            except CaptureError as err:
                if err.status != 400 or body[:2] == GZIP_MAGIC:
                    raise
                # a text that merely starts like a zlib header: read as it is
        form = request_form(body, content_type, {})
        data = body if form is None else (_field(form, "data") or "").encode("utf-8", "surrogatepass")
    if (head := _head(data)) not in _JSON_STARTS:
        if not head:
            raise _no_data()
        hint = hint_kind(query.get("compression"), _field(form, "compression"), content_encoding)
        data = decompress(data, hint, limit, lz_limit, used)
    if len(data) > limit:
        raise too_large(f"Payload exceeds {limit} bytes")
    stripped = data.strip()
    if not stripped:
        raise _no_data()
    return Payload(stripped, None if form is None else outside_token(form))


def _no_data() -> CaptureError:
    return invalid(
        "no_data",
        "No data found. Make sure to use a POST request when sending the payload in the body of the request.",
    )


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
