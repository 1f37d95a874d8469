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


def decompress(data: bytes, hint: str, limit: int) -> bytes:
    """Apply the compression hint; gzip is recognised by its magic bytes whatever the hint says."""
    hint = hint.lower().strip()
    if data[:2] == GZIP_MAGIC:
        return gunzip(data, limit)
    if hint in ("gzip", "gzip-js"):
        return gunzip(data, limit)
    if hint in ("lz64", "lz-string"):
        return lz_decompress(data, limit)
    if hint in ("base64", "b64"):
        out = b64decode(data)
        return gunzip(out, limit) if out[:2] == GZIP_MAGIC else out
    return data


_NON_FINITE = re.compile(rb"NaN|Infinity")


def loads(data: bytes | str) -> Any:
    """Parse JSON; NaN / Infinity (sent by some SDKs) become null like PostHog's capture does."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if not _NON_FINITE.search(raw):
        try:
            return ujson.loads(raw)
        except (ValueError, OverflowError, RecursionError, TypeError):
            pass  # the stdlib below gives the error message (and handles what ujson can't)
    import json

    try:
        return json.loads(raw, parse_constant=lambda _c: None)
    except (ValueError, RecursionError, TypeError) as exc:
        raise invalid("invalid_payload", f"Malformed request data: {exc}") from None


def _looks_like_json(data: bytes) -> bool:
    head = data.lstrip()[:1]
    return head in (b"{", b"[")


def payload_bytes(
    body: bytes,
    content_type: str,
    query: Mapping[str, str],
    content_encoding: str,
    limit: int,
) -> bytes:
    """The JSON text of a capture request, whatever way it was wrapped.

    Order (PostHog's): GET ``?data=`` wins over the body; form bodies carry ``data=``; the compression
    hint comes from ``?compression=``, then the form's ``compression``, then Content-Encoding.
    """
    form: dict[str, list[str]] = {}
    data: bytes = body
    if "data" in query:
        data = query["data"].encode("utf-8", "surrogatepass")
    elif content_type.startswith("application/x-www-form-urlencoded") and not _looks_like_json(body):
        # (curl -d sends JSON with the form content type: such a body is taken as it is.)
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        data = form.get("data", [""])[0].encode("utf-8", "surrogatepass")
    hint = query.get("compression") or (form.get("compression") or [""])[0] or content_encoding
    data = decompress(data, hint, limit)
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
