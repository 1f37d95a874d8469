"""The store: where rows end up. Every ClickHouse — the local server of ``make run``, a remote server,
a cluster — is reached the same way, over the native protocol with clickhouse-driver.

It is synchronous; callers on an event loop run it in one dedicated thread (see
:class:`clickhouse.sink.Sink`). ``insert`` takes the Kafka message values as they arrived:

* on modern ClickHouse they go to the server as they are, one ``JSONEachRow`` line per message with the
  Kafka coordinates spliced in (:func:`json_each_row`), and the server's C++ parser makes the columns.
  Decoding every message in Python and encoding it again as columns cost ~30 us per row, three times
  what the server's parse costs (bench/README.md, ``sink``); this path is ~5 us per row in Python.
* on 18.16 (the Replicated cluster test's server), whose JSON input lacks best-effort DateTime parsing
  and reading objects as strings, the store decodes them and sends columnar blocks (:meth:`to_columns`).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import ujson

from clickhouse.dialect import Dialect, parse_version
from clickhouse.schema import MIGRATIONS, MIGRATIONS_TABLE, TABLE_COLUMNS, migrations_table_ddl, pending
from eventpipe.config import StoreURL

log = logging.getLogger("eventpipe.store")

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_.:\-]{1,256}$")


@dataclass(frozen=True, slots=True)
class KafkaRow:
    """One message value (a JSON object) and where it came from."""

    value: bytes
    timestamp_ms: int
    offset: int
    partition: int


class Result:
    def __init__(self, columns: list[str], types: list[str], rows: list[tuple[Any, ...]]) -> None:
        self.columns, self.types, self.rows = columns, types, rows

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


class Store(Protocol):
    dialect: Dialect

    def execute(self, sql: str, settings: dict[str, Any] | None = None) -> None: ...

    def query(self, sql: str, params: dict[str, Any] | None = None) -> Result: ...

    def insert(self, table: str, rows: Sequence[KafkaRow], dedup_token: str | None) -> None: ...

    def insert_values(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None: ...

    def close(self) -> None: ...


def connection_args(url: StoreURL) -> dict[str, Any]:
    """clickhouse-driver's connection arguments for a store URL (without the database)."""
    return {"host": url.host, "port": url.port, "user": url.user, "password": url.password, "secure": url.secure}


def _check_token(token: str | None) -> str | None:
    if token is not None and not _TOKEN.match(token):
        raise ValueError(f"unsafe deduplication token {token!r}")
    return token


class ServerStore:
    """A ClickHouse server over the native protocol with clickhouse-driver (columnar inserts)."""

    def __init__(self, url: StoreURL, cluster: str = "") -> None:
        from clickhouse_driver import Client

        if not _IDENT.match(url.database):
            raise ValueError(f"invalid database name {url.database!r}")
        if cluster and not _IDENT.match(cluster):
            raise ValueError(f"invalid cluster name {cluster!r}")
        self.url = url
        # The database is created on first use, like the tables, so a fresh server needs no set-up
        # (on every node, in cluster mode).
        bootstrap = Client(**connection_args(url), connect_timeout=5)
        try:
            version = parse_version(bootstrap.execute("SELECT version()")[0][0])
            self.dialect = Dialect(version, cluster=cluster, database=url.database)
            bootstrap.execute(self.dialect.create_database())
        finally:
            bootstrap.disconnect()
        self.client = Client(
            **connection_args(url),
            database=url.database,
            connect_timeout=5,
            send_receive_timeout=60,
            compression=False,
            # {name:Type} parameters travel to the server (ClickHouse >= 19.x parses them; the 18.16
            # test server predates them, so there the driver's own %(name)s substitution applies).
            settings={"use_numpy": False, "server_side_params": self.dialect.modern},
        )
        self._types: dict[str, dict[str, str]] = {}

    def execute(self, sql: str, settings: dict[str, Any] | None = None) -> None:
        self.client.execute(sql, settings=settings)

    def query(self, sql: str, params: dict[str, Any] | None = None) -> Result:
        rows, meta = self.client.execute(sql, params or None, with_column_types=True)
        return Result([m[0] for m in meta], [m[1] for m in meta], [tuple(r) for r in rows])

    def _column_types(self, table: str) -> dict[str, str]:
        if table not in self._types:
            described = self.client.execute(f"DESCRIBE TABLE {table}")
            self._types[table] = {r[0]: r[1] for r in described}
        return self._types[table]

    def to_columns(self, table: str, rows: Sequence[KafkaRow]) -> list[list[Any]]:
        """Message values -> one list of Python values per column of ``table`` (clickhouse-driver's
        columnar form), the Kafka coordinates last."""
        types = self._column_types(table)
        parsed = [ujson.loads(r.value) for r in rows]
        data: list[list[Any]] = []
        for name in TABLE_COLUMNS[table]:
            if name == "_timestamp":
                data.append([datetime.fromtimestamp(r.timestamp_ms / 1000, UTC).replace(microsecond=0) for r in rows])
            elif name == "_offset":
                data.append([r.offset for r in rows])
            elif name == "_partition":
                data.append([r.partition for r in rows])
            else:
                data.append([_to_python(types[name], p.get(name)) for p in parsed])
        return data

    def insert(self, table: str, rows: Sequence[KafkaRow], dedup_token: str | None) -> None:
        columns = TABLE_COLUMNS[table]
        settings: dict[str, Any] = dict(self.dialect.insert_settings)
        if _check_token(dedup_token) and self.dialect.supports_dedup_token:
            settings["insert_deduplication_token"] = dedup_token
        cols = ", ".join(f"`{c}`" for c in columns)
        if self.dialect.modern:
            settings.update(JSON_INPUT_SETTINGS)
            # Inline data: the server parses what follows FORMAT with its streaming parser (not the SQL
            # parser, so max_query_size does not apply to it).
            self.client.execute(
                f"INSERT INTO {table} ({cols}) FORMAT JSONEachRow\n{json_each_row(rows)}", settings=settings
            )
            return
        data = self.to_columns(table, rows)
        self.client.execute(f"INSERT INTO {table} ({cols}) VALUES", data, columnar=True, settings=settings)

    def insert_values(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        cols = ", ".join(f"`{c}`" for c in columns)
        self.client.execute(f"INSERT INTO {table} ({cols}) VALUES", [tuple(r) for r in rows])

    def close(self) -> None:
        self.client.disconnect()


# How the server reads the JSON lines, pinned rather than left to the server's defaults. A JSON value
# that does not fit its column (a bad UUID, an empty DateTime, 4.0 for an Int) is refused with a parse
# error, which the sink bisects down to that row and dead-letters (clickhouse.failures: DATA).
JSON_INPUT_SETTINGS: dict[str, Any] = {
    "date_time_input_format": "best_effort",  # the contract's ISO-8601 timestamps, with T / Z / offsets
    "input_format_skip_unknown_fields": 1,  # a row from a newer processor: its extra keys are ignored
    "input_format_null_as_default": 1,  # null -> the column's default, like a missing key
    "input_format_json_read_objects_as_strings": 1,  # a JSON object or array given for a String column
    "input_format_json_read_arrays_as_strings": 1,
    "input_format_json_read_numbers_as_strings": 1,
    "input_format_json_read_bools_as_strings": 1,
}


def json_each_row(rows: Sequence[KafkaRow]) -> str:
    """The message values as JSONEachRow lines, each with ``_timestamp`` (seconds), ``_offset`` and
    ``_partition`` spliced in before its closing brace.

    A value must be exactly one JSON object: the processors write ``ujson.dumps`` of a dict, which never
    holds a raw newline. Anything else is refused here (ValueError: the sink's bisection isolates and
    dead-letters it) rather than spliced into something the server could read as zero or two rows.
    """
    lines = []
    for r in rows:
        value = r.value.strip()
        if value[:1] != b"{" or value[-1:] != b"}" or b"\n" in value or len(value) < 3:
            raise ValueError(f"message at offset {r.offset} is not one non-empty JSON object")
        lines.append(
            b'%s,"_timestamp":%d,"_offset":%d,"_partition":%d}'
            % (value[:-1], r.timestamp_ms // 1000, r.offset, r.partition)
        )
    return b"\n".join(lines).decode()


def _to_python(type_: str, value: Any) -> Any:
    """A JSON value -> what clickhouse-driver expects for a column type."""
    if type_.startswith("DateTime"):
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC)
        return datetime.fromisoformat(value).replace(tzinfo=UTC) if value else datetime.fromtimestamp(0, UTC)
    if type_ == "UUID":
        return uuid.UUID(value) if value else uuid.UUID(int=0)
    if type_.startswith(("Int", "UInt")):
        return int(value or 0)
    if value is None:
        return ""
    return value if isinstance(value, str) else ujson.dumps(value)


def is_retryable(exc: BaseException) -> bool:
    """True for "ClickHouse is unreachable or overloaded" (retry the same batch). The classification
    (transient / refused data / fatal) and its reasons live in :mod:`clickhouse.failures`."""
    from clickhouse.failures import Kind, classify_store

    return classify_store(exc) is Kind.TRANSIENT


def open_store(url: StoreURL, cluster: str = "") -> Store:
    return ServerStore(url, cluster)


def migrate(store: Store, dry_run: bool = False) -> list[str]:
    """Apply pending migrations in order; returns the SQL run (or that would run, with dry_run)."""
    statements: list[str] = [migrations_table_ddl(store.dialect)]
    applied: set[int] = set()
    if not dry_run:
        store.execute(statements[0])
        applied = {int(r[0]) for r in store.query(f"SELECT number FROM {MIGRATIONS_TABLE}").rows}
    for m in pending(applied):
        sqls = m.render(store.dialect)
        statements += sqls
        if dry_run:
            continue
        for sql in sqls:
            store.execute(sql)
        applied_at = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
        store.insert_values(MIGRATIONS_TABLE, ("number", "name", "applied_at"), [(m.number, m.name, applied_at)])
    assert all(m.number > 0 for m in MIGRATIONS)
    return statements
