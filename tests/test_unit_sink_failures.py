"""The sink's error classes and dead letters, without a broker or a server (real driver/aiokafka
exception classes and ClickHouse error codes)."""

from __future__ import annotations

import inspect
import struct

import pytest
import ujson
from aiokafka import errors as kafka_errors
from aiokafka.admin import AIOKafkaAdminClient
from clickhouse_driver import errors

from clickhouse.deadletter import LETTER_LIMIT, build_letter
from clickhouse.failures import DATA_CODES, FATAL_CODES, TRANSIENT_CODES, Kind, classify_kafka, classify_store, describe
from clickhouse.store import KafkaRow, is_retryable


def server(code: int) -> errors.ServerException:
    return errors.ServerException("DB::Exception: something. (SOME_NAME)", code=code)


@pytest.mark.parametrize(
    "exc",
    [
        errors.NetworkError("Code: 210. Connection refused (127.0.0.1:19000)"),
        errors.SocketTimeoutError("Code: 209. (127.0.0.1:19000)"),
        errors.UnexpectedPacketFromServerError("Code: 102."),
        EOFError("Unexpected EOF while reading bytes"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError(),
        server(241),  # MEMORY_LIMIT_EXCEEDED
        server(252),  # TOO_MANY_PARTS
        server(202),  # TOO_MANY_SIMULTANEOUS_QUERIES
        server(159),  # TIMEOUT_EXCEEDED
        server(242),  # TABLE_IS_READ_ONLY: a replica without its Keeper session
        server(319),  # UNKNOWN_STATUS_OF_INSERT: the same token makes the retry safe
        server(999),  # KEEPER_EXCEPTION
    ],
)
def test_transient_errors_are_retried(exc: BaseException) -> None:
    assert classify_store(exc) is Kind.TRANSIENT
    assert is_retryable(exc)


@pytest.mark.parametrize(
    "exc",
    [
        server(27),  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        server(53),  # TYPE_MISMATCH
        server(6),  # CANNOT_PARSE_TEXT
        server(117),  # INCORRECT_DATA
        server(469),  # VIOLATED_CONSTRAINT
        server(12345),  # a code we don't know: the server refused the block
        errors.TypeMismatchError("Code: 53. Type mismatch in VALUES section. Column team_id: argument out of range"),
        ValueError("Invalid isoformat string: 'yesterday'"),
        ujson.JSONDecodeError("Expected object or value"),
        AttributeError("'list' object has no attribute 'get'"),  # a message that is JSON but no object
        struct.error("ubyte format requires 0 <= number <= 255"),
        OverflowError("date value out of range"),
    ],
)
def test_refused_rows_are_data_errors(exc: BaseException) -> None:
    assert classify_store(exc) is Kind.DATA
    assert not is_retryable(exc)


@pytest.mark.parametrize(
    "exc",
    [
        server(164),  # READONLY: the user's profile, not the server's health; was retried forever
        server(497),  # ACCESS_DENIED
        server(516),  # AUTHENTICATION_FAILED
        server(60),  # UNKNOWN_TABLE
        server(81),  # UNKNOWN_DATABASE
        server(16),  # NO_SUCH_COLUMN_IN_TABLE
        errors.UnknownTypeError("Code: 50. Unknown type Variant(...)"),
        RuntimeError("a bug"),
    ],
)
def test_errors_about_neither_rows_nor_health_stop_the_sink(exc: BaseException) -> None:
    assert classify_store(exc) is Kind.FATAL
    assert not is_retryable(exc)


def test_code_tables_are_disjoint_and_named_like_the_driver() -> None:
    assert not (TRANSIENT_CODES.keys() & FATAL_CODES.keys())
    assert not (TRANSIENT_CODES.keys() & DATA_CODES.keys())
    assert not (FATAL_CODES.keys() & DATA_CODES.keys())
    for table in (TRANSIENT_CODES, FATAL_CODES, DATA_CODES):
        for code, name in table.items():
            known = getattr(errors.ErrorCodes, name, None)
            assert known in (None, code), f"{name} is {known} in clickhouse-driver, not {code}"


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (kafka_errors.CommitFailedError("rebalanced"), Kind.LOST),
        (kafka_errors.IllegalStateError("Partition t-0 is not assigned"), Kind.LOST),
        (kafka_errors.KafkaTimeoutError(), Kind.TRANSIENT),
        (kafka_errors.KafkaConnectionError(), Kind.TRANSIENT),
        (kafka_errors.NotLeaderForPartitionError(), Kind.TRANSIENT),
        (kafka_errors.RequestTimedOutError(), Kind.TRANSIENT),
        (kafka_errors.GroupAuthorizationFailedError(), Kind.FATAL),
        (kafka_errors.MessageSizeTooLargeError(), Kind.FATAL),  # only once shrinking letters did not help
    ],
)
def test_kafka_errors(exc: BaseException, kind: Kind) -> None:
    assert classify_kafka(exc) is kind


def test_describe_keeps_the_first_line_of_the_servers_message() -> None:
    # As clickhouse-driver builds it from the server's exception packet.
    exc = errors.ServerException("DB::Exception: Cannot parse input\nStack trace:\n0. DB::Exception()", code=27)
    assert describe(exc) == "Code: 27. DB::Exception: Cannot parse input"
    assert describe(KeyError()) == "KeyError()"


# -- dead letters ------------------------------------------------------------------------------------


def row(value: bytes, offset: int = 7, partition: int = 2) -> KafkaRow:
    return KafkaRow(value=value, timestamp_ms=1_700_000_000_000, offset=offset, partition=partition)


def test_a_letter_carries_reason_coordinates_and_the_raw_value() -> None:
    letter = ujson.loads(build_letter("events", "p_clickhouse_events", row(b'{"a": 1}'), "Code: 53. x", "ts"))
    assert letter == {
        "reason": "clickhouse refused row for events: Code: 53. x",
        "source": "sink",
        "timestamp": "ts",
        "raw": '{"a": 1}',
        "topic": "p_clickhouse_events",
        "partition": 2,
        "offset": 7,
    }


@pytest.mark.parametrize(
    "value",
    [
        b'{"p": "' + b"x" * 1_500_000 + b'"}',  # above the broker's 1 MB
        b'{"p": "' + "\u00e9\u4e2d".encode() * 300_000 + b'"}',  # escaping makes it grow: \\u00e9
        b'{"p": "' + b'\\"\x01' * 400_000 + b'"}',  # quotes and control characters
    ],
)
@pytest.mark.parametrize("limit", [LETTER_LIMIT, 100_000, 16_384])
def test_an_oversize_letter_is_truncated_to_fit(value: bytes, limit: int) -> None:
    data = build_letter("events", "p_clickhouse_events", row(value), "Code: 131. too large", "ts", limit)
    assert len(data) <= limit
    letter = ujson.loads(data)
    assert (letter["partition"], letter["offset"], letter["topic"]) == (2, 7, "p_clickhouse_events")
    assert letter["reason"].endswith("Code: 131. too large")
    assert letter["truncated"] is True and letter["raw_bytes"] == len(value)
    assert value.decode("utf-8", "replace").startswith(letter["raw"])
    assert len(letter["raw"]) > limit // 20  # a useful prefix, not nothing


def test_the_pending_ranges_come_from_a_public_aiokafka_call() -> None:
    # The sink reads committed offsets *with metadata* through the admin client (the consumer's public
    # committed() drops the metadata). Fails if upstream renames or reshapes that call.
    params = inspect.signature(AIOKafkaAdminClient.list_consumer_group_offsets).parameters
    assert list(params)[:2] == ["self", "group_id"] and "partitions" in params
    assert "OffsetAndMetadata" in str(inspect.signature(AIOKafkaAdminClient.list_consumer_group_offsets))
