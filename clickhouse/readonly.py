"""``eventpipe sql``: one operator query, read-only by the engine, bounded in time, rows and memory.

ClickHouse itself enforces every rule that matters: the query runs with ``readonly=1`` (unless the user
is already read-only by its profile, as the local server's ``eventpipe_reader`` is), which refuses
writes, DDL, ``file()``, ``url()``, ``remote()`` and any ``SETTINGS readonly = 0``; the native protocol
takes a single statement; the limits below end a query that runs too long, returns too much or takes
too much memory. Nothing here inspects the SQL text to decide what is allowed.

One thing the engine does not refuse over the native protocol is ``INTO OUTFILE``: it is a clause for
the *client* to write a file, which this client never does. So that the operator is not left thinking
a file was written, the query is first parsed by the server (``EXPLAIN AST``) and a query with an
output file gets a clear error instead of rows.
"""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime
from typing import Any

from clickhouse.store import Result, connection_args
from eventpipe.config import StoreURL

# Per-query caps, within the local reader's constraints (clickhouse/local_server.py READER_LIMITS).
LIMITS: dict[str, Any] = {
    "max_execution_time": 60,
    "max_result_rows": 1_000_000,
    "result_overflow_mode": "throw",
    "max_memory_usage": 2_000_000_000,
}


class QueryRefused(Exception):
    """The query was refused (by ClickHouse or for writing a file); the message says why."""


def _server_error(exc: Any) -> QueryRefused:
    """ClickHouse's own message (its first line, without the stack trace), and a hint where it helps."""
    lines = [line.strip() for line in str(getattr(exc, "message", "") or exc).splitlines() if line.strip()]
    message = (lines[0] if lines else repr(exc)).removeprefix("DB::Exception: ").split(" Stack trace:")[0]
    text = f"ClickHouse error {exc.code}: {message}"
    if exc.code in (164, 497):  # READONLY, ACCESS_DENIED
        text += " (eventpipe sql runs read-only)"
    return QueryRefused(text)


def _writes_a_file(client: Any, sql: str, params: dict[str, str] | None) -> bool:
    """Per the server's own parser: does the statement carry INTO OUTFILE? In ``EXPLAIN AST`` the output
    file is the one literal directly under the statement's node (FORMAT is an identifier, SETTINGS a
    Set node)."""
    lines = [r[0] for r in client.execute(f"EXPLAIN AST {sql}", params or None)]
    return any(line.startswith(" Literal ") for line in lines[1:])


def run(url: StoreURL, sql: str, params: dict[str, str] | None = None) -> Result:
    from clickhouse_driver import Client, errors

    client = Client(
        **connection_args(url),
        database=url.database,
        connect_timeout=5,
        send_receive_timeout=LIMITS["max_execution_time"] + 10,
        settings={"server_side_params": True},  # {name:Type} values travel as parameters, never spliced
    )
    try:
        try:
            # Works on every version (18.16's cluster nodes have no getSetting()).
            rows = client.execute("SELECT value, version() FROM system.settings WHERE name = 'readonly'")
            readonly, version = int(rows[0][0]), str(rows[0][1])
            settings = dict(LIMITS)
            if readonly == 0:
                settings["readonly"] = 1  # last: the limits above are set before it takes effect
            modern = int(version.split(".")[0]) >= 20
            if modern and _writes_a_file(client, sql, params):
                raise QueryRefused("INTO OUTFILE is not supported: eventpipe sql prints rows, it writes no files")
            data, meta = client.execute(sql, params or None, with_column_types=True, settings=settings)
        except errors.ServerException as exc:
            raise _server_error(exc) from None
        except (errors.NetworkError, errors.SocketTimeoutError, OSError, EOFError) as exc:
            raise QueryRefused(f"ClickHouse at {url.host}:{url.port} unreachable: {exc}") from None
    finally:
        client.disconnect()
    return Result([m[0] for m in meta], [m[1] for m in meta], [tuple(r) for r in data])


_PRECISION = re.compile(r"^DateTime64\((\d+)")


def as_text(value: Any, type_: str) -> Any:
    """Dates, times and UUIDs as ClickHouse prints them (``2024-01-02 09:00:00.000000`` for a
    DateTime64(6), not Python's ``…+00:00``), so the CLI's rows read the same as an HTTP query's."""
    if isinstance(value, datetime):
        text = value.strftime("%Y-%m-%d %H:%M:%S")
        digits = _PRECISION.match(type_)
        if digits and int(digits.group(1)) > 0:
            text += "." + value.strftime("%f").ljust(9, "0")[: int(digits.group(1))]
        return text
    if isinstance(value, date | uuid.UUID):
        return str(value)
    return value
