"""Time-ordered UUIDv7 (RFC 9562) for events that arrive without a uuid."""

from __future__ import annotations

import os
import time
import uuid


def uuid7(ms: int | None = None) -> uuid.UUID:
    """48-bit Unix-ms timestamp, version 7, 74 random bits: sorts by creation time like PostHog's."""
    ts = time.time_ns() // 1_000_000 if ms is None else ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ts & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 | 0b10 << 62 | (rand & (2**62 - 1))
    return uuid.UUID(int=value)


def derived_uuid(digest: bytes, ms: int | None) -> uuid.UUID:
    """A uuid that is a function of ``digest`` (>= 10 bytes), so the same event sent twice gets it twice.

    With the event's own time (``ms``, Unix milliseconds) it is laid out as a UUIDv7 whose 74 "random"
    bits come from the digest: still time-ordered like the uuids minted for fresh events. Without a
    time, all 122 free bits come from the digest and the version is 8 (RFC 9562's custom layout).
    """
    bits = int.from_bytes(digest[:16].ljust(16, b"\0"), "big")
    if ms is None:
        value = bits & ~(0xF << 76) & ~(0b11 << 62) | 0x8 << 76 | 0b10 << 62
    else:
        ts = min(max(ms, 0), 0xFFFF_FFFF_FFFF)  # year 1 and year 9999 both fit, clamped, never wrapped
        value = ts << 80 | 0x7 << 76 | (bits >> 68 & 0xFFF) << 64 | 0b10 << 62 | (bits & (2**62 - 1))
    return uuid.UUID(int=value)
