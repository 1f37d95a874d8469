"""What a failed insert, commit or dead-letter send means for the sink, free of I/O.

Every exception the sink meets is sorted into one :class:`Kind`, and each kind has exactly one answer:

* ``TRANSIENT`` — ClickHouse or Kafka is unreachable, overloaded or restarting; the data is fine.
  Retry the *same* step (same rows, same token) with backoff and jitter, and stop fetching meanwhile.
* ``DATA`` — these rows are refused (a value the column cannot take). Retrying cannot help: bisect
  the batch until the refused rows are alone and dead-letter exactly them.
* ``FATAL`` — permanent, but not about the rows: credentials, grants, a read-only user, a missing
  table, a bug. Bisecting would dead-letter *every* row and retrying would stall silently, so the sink
  stops (nothing committed past the batch) and the supervisor / Kubernetes restarts it loudly.
* ``LOST`` — the partition is no longer ours (rebalance): abandon the batch; its committed
  ``pending:<last>`` range makes the next owner re-cut it identically.

Server error codes are ClickHouse's (src/Common/ErrorCodes.cpp); clickhouse-driver raises its own
client-side errors with the same codes (``TypeMismatchError`` is 53, ``NetworkError`` 210, ...).
"""

from __future__ import annotations

import enum
import struct


class Kind(enum.Enum):
    TRANSIENT = "transient"
    DATA = "data"
    FATAL = "fatal"
    LOST = "lost"


# The server or the network, not the rows: the same insert succeeds later.
TRANSIENT_CODES: dict[int, str] = {
    102: "UNEXPECTED_PACKET_FROM_SERVER",  # a connection cut mid-answer (driver-side)
    159: "TIMEOUT_EXCEEDED",
    201: "QUOTA_EXCEEDED",  # quotas are per interval: the next interval admits the insert
    202: "TOO_MANY_SIMULTANEOUS_QUERIES",
    203: "NO_FREE_CONNECTION",
    209: "SOCKET_TIMEOUT",
    210: "NETWORK_ERROR",
    225: "NO_ZOOKEEPER",
    236: "ABORTED",
    241: "MEMORY_LIMIT_EXCEEDED",  # server-wide pressure; batches are bounded, so it passes
    242: "TABLE_IS_READ_ONLY",  # a replica that lost its (Zoo)Keeper session: it comes back
    243: "NOT_ENOUGH_SPACE",  # an operator frees disk; dead-lettering would lose nothing but help nobody
    252: "TOO_MANY_PARTS",  # merges catch up; this is ClickHouse's own backpressure
    279: "ALL_CONNECTION_TRIES_FAILED",  # every replica of a shard away (Distributed insert)
    286: "UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE",
    289: "REPLICA_IS_NOT_IN_QUORUM",
    319: "UNKNOWN_STATUS_OF_INSERT",  # retrying with the same token is exactly the cure
    394: "QUERY_WAS_CANCELLED",  # a server shutting down
    425: "SYSTEM_ERROR",
    439: "CANNOT_SCHEDULE_TASK",  # thread pool exhausted
    999: "KEEPER_EXCEPTION",
}

# Not about the rows and not going away by itself: configuration, grants, schema, protocol.
# 164 READONLY was retried as transient: for an insert it means the user (or its profile) has
# ``readonly`` set, which only an operator changes; a replica that went read-only is 242, above.
FATAL_CODES: dict[int, str] = {
    8: "THERE_IS_NO_COLUMN",
    10: "NOT_FOUND_COLUMN_IN_BLOCK",
    16: "NO_SUCH_COLUMN_IN_TABLE",
    47: "UNKNOWN_IDENTIFIER",
    48: "NOT_IMPLEMENTED",
    49: "LOGICAL_ERROR",
    50: "UNKNOWN_TYPE",  # the driver cannot encode a column type: schema/driver mismatch
    60: "UNKNOWN_TABLE",
    62: "SYNTAX_ERROR",
    81: "UNKNOWN_DATABASE",
    115: "UNKNOWN_SETTING",
    164: "READONLY",
    192: "UNKNOWN_USER",
    193: "WRONG_PASSWORD",
    194: "REQUIRED_PASSWORD",
    218: "TABLE_IS_DROPPED",
    452: "SETTING_CONSTRAINT_VIOLATION",
    497: "ACCESS_DENIED",
    516: "AUTHENTICATION_FAILED",
}

# Refused values (the list documents and tests the common ones; any other server code is DATA too).
DATA_CODES: dict[int, str] = {
    6: "CANNOT_PARSE_TEXT",
    25: "CANNOT_PARSE_ESCAPE_SEQUENCE",
    26: "CANNOT_PARSE_QUOTED_STRING",
    27: "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
    38: "CANNOT_PARSE_DATE",
    41: "CANNOT_PARSE_DATETIME",
    53: "TYPE_MISMATCH",  # also the driver's TypeMismatchError: a value out of the column's range
    69: "ARGUMENT_OUT_OF_BOUND",
    70: "CANNOT_CONVERT_TYPE",
    72: "CANNOT_PARSE_NUMBER",
    117: "INCORRECT_DATA",
    131: "TOO_LARGE_STRING_SIZE",
    321: "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    349: "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN",
    376: "CANNOT_PARSE_UUID",
    395: "FUNCTION_THROW_IF_VALUE_IS_NON_ZERO",  # throwIf() in a materialized view
    469: "VIOLATED_CONSTRAINT",
}

# Raised while turning message values into columns (the store's JSON decoding and per-column
# conversion, or the driver's packing): the row is at fault. AttributeError belongs here because the
# driver raises it for a value of the wrong Python type (an int for a String column) and the store for
# a message that is JSON but not an object.
_ROW_ENCODING_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # also ujson's JSONDecodeError, datetime.fromisoformat, uuid.UUID, int()
    TypeError,
    AttributeError,
    KeyError,
    OverflowError,
    struct.error,
)


def classify_store(exc: BaseException) -> Kind:
    """Kind of an exception raised by ``Store.insert`` (or opening the store)."""
    from clickhouse_driver import errors

    if isinstance(exc, errors.Error):
        code = getattr(exc, "code", None)
        if code in TRANSIENT_CODES:
            return Kind.TRANSIENT
        if code in FATAL_CODES:
            return Kind.FATAL
        if isinstance(exc, errors.ServerException) or code in DATA_CODES:
            # An unlisted server code: the server read our block and refused it. Dead-lettering (the
            # raw value is kept, replayable) is the lesser harm next to stalling every partition.
            return Kind.DATA
        return Kind.FATAL  # an unlisted client-side driver error: a driver or schema problem
    if isinstance(exc, EOFError | OSError | TimeoutError):  # ConnectionError, socket errors
        return Kind.TRANSIENT
    if isinstance(exc, _ROW_ENCODING_ERRORS):  # UnicodeError is a ValueError
        return Kind.DATA
    return Kind.FATAL


def classify_kafka(exc: BaseException) -> Kind:
    """Kind of an exception raised by a commit or a dead-letter send."""
    from aiokafka import errors

    if isinstance(exc, errors.CommitFailedError | errors.IllegalStateError):
        return Kind.LOST  # the group rebalanced (or is rebalancing) under us
    if isinstance(exc, errors.KafkaError) and exc.retriable:
        return Kind.TRANSIENT  # aiokafka retried within its timeouts already; we back off and retry
    if isinstance(exc, errors.KafkaConnectionError | errors.KafkaTimeoutError | OSError | TimeoutError):
        return Kind.TRANSIENT
    return Kind.FATAL  # authorization, invalid config, a letter still too large: needs an operator


def describe(exc: BaseException) -> str:
    """One line for a dead letter or a log: the server's message without the server's stack trace
    (clickhouse-driver renders a server error as ``Code: N.`` and the message on the next line)."""
    text = str(exc).split("Stack trace:")[0]
    line = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return line[:1000] if line else repr(exc)
