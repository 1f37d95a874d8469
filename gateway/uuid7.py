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
