"""Loopback admin HTTP endpoint of a process that owns a store: read-only SQL and migrations.

Never public: it binds to ``EVENTPIPE_ADMIN_HOST`` (127.0.0.1 by default) and every request must carry
``Authorization: Bearer <secret>``. Statements are the operator's own (``eventpipe sql``); only
read-only statements are accepted, and values travel as ClickHouse query parameters.
"""

from __future__ import annotations

import asyncio
import hmac
import re
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from aiohttp import web

from clickhouse.store import Store, migrate

_READ_ONLY = re.compile(r"^\s*(\(\s*)*(SELECT|WITH|SHOW|DESCRIBE|DESC|EXISTS|EXPLAIN)\b", re.IGNORECASE)


_WRITES_FILES = re.compile(r"\bINTO\s+OUTFILE\b", re.IGNORECASE)


def is_read_only(sql: str) -> bool:
    """One statement that reads: SELECT-like, no second statement, no INTO OUTFILE."""
    return bool(_READ_ONLY.match(sql)) and ";" not in sql.strip().rstrip(";") and not _WRITES_FILES.search(sql)


def build_admin_app(store: Store, executor: Executor, secret: str) -> web.Application:
    async def run(fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(executor, fn)

    @web.middleware
    async def auth(request: web.Request, handler):  # type: ignore[no-untyped-def]
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {secret}".encode()):
            return web.json_response({"error": "unauthorized"}, status=401)
        return await handler(request)

    async def sql(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        statement = body.get("sql") if isinstance(body, dict) else None
        params = body.get("params") if isinstance(body, dict) else None
        if not isinstance(statement, str) or not statement.strip():
            return web.json_response({"error": "missing sql"}, status=400)
        if not is_read_only(statement):
            return web.json_response({"error": "only one read-only statement (SELECT/SHOW/DESCRIBE/…)"}, status=400)
        if params is not None and not isinstance(params, dict):
            return web.json_response({"error": "params must be an object"}, status=400)
        try:
            result = await run(lambda: store.query(statement.strip().rstrip(";"), params))
        except Exception as exc:  # a ClickHouse error in the operator's SQL is a 400, not a crash
            return web.json_response({"error": str(exc).strip()[:2000]}, status=400)
        return web.json_response(
            {"columns": result.columns, "types": result.types, "rows": [list(r) for r in result.rows]},
            dumps=_dumps,
        )

    async def migrations(request: web.Request) -> web.Response:
        dry = request.query.get("dry_run") == "1"
        statements = await run(lambda: migrate(store, dry_run=dry))
        return web.json_response({"statements": statements})

    app = web.Application(middlewares=[auth], client_max_size=1024 * 1024)
    app.router.add_post("/sql", sql)
    app.router.add_post("/migrate", migrations)
    return app


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, default=str, ensure_ascii=False)
