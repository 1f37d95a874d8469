"""Dead letters of the sink, free of I/O: a refused row as a Kafka message that always fits.

A letter carries the reason (the server's error), where the row came from (topic, partition, offset:
enough to re-read it while the topic retains it) and the raw value. A value near the broker's message
size limit would make the letter itself too large, and a letter Kafka refuses must not hold back the
other rows of the batch, so such a letter keeps a prefix of the value, marked ``truncated`` with the
original size.
"""

from __future__ import annotations

import ujson

from clickhouse.store import KafkaRow
from eventpipe.contract import dead_letter

# Below the broker's default message.max.bytes (1,048,588) with room for the record's own overhead.
LETTER_LIMIT = 900_000
MIN_LETTER_LIMIT = 16_384  # what a shrinking limit stops at: coordinates, error and a useful prefix
_REASON_MAX = 2_000


def build_letter(table: str, topic: str, row: KafkaRow, error: str, timestamp: str, limit: int = LETTER_LIMIT) -> bytes:
    """The dead letter of ``row`` as JSON bytes of at most ``limit`` bytes."""
    letter = dead_letter(f"clickhouse refused row for {table}: {error}", row.value, "sink", timestamp)
    letter["topic"], letter["partition"], letter["offset"] = topic, row.partition, row.offset
    data = ujson.dumps(letter).encode()
    if len(data) <= limit:
        return data
    letter["reason"] = letter["reason"][:_REASON_MAX]
    letter["truncated"], letter["raw_bytes"] = True, len(row.value)
    raw, letter["raw"] = letter["raw"], ""
    overhead = len(ujson.dumps(letter).encode())
    keep = max(0, limit - overhead)  # characters: each is at least one byte once encoded
    while keep > 0:
        letter["raw"] = raw[:keep]
        data = ujson.dumps(letter).encode()
        if len(data) <= limit:
            return data
        # JSON escaping makes some characters longer than a byte: shrink in proportion (and by at
        # least one character, so this ends).
        keep = min(keep - 1, keep * (limit - overhead) // (len(data) - overhead))
    letter["raw"] = ""
    return ujson.dumps(letter).encode()
