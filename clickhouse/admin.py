"""The sink's loopback admin endpoint: ``/metrics`` (Prometheus text) behind a bearer secret.

Never public: it binds to ``EVENTPIPE_ADMIN_HOST`` (127.0.0.1 by default) and every request must carry
``Authorization: Bearer <EVENTPIPE_ADMIN_SECRET>``. SQL does not go through here: ``eventpipe sql`` and
BI tools talk to ClickHouse itself, which enforces read-only access.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from aiohttp import web


def build_admin_app(secret: str, metrics: Callable[[], str]) -> web.Application:
    @web.middleware
    async def auth(request: web.Request, handler):  # type: ignore[no-untyped-def]
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {secret}".encode()):
            return web.json_response({"error": "unauthorized"}, status=401)
        return await handler(request)

    async def render(_request: web.Request) -> web.Response:
        return web.Response(text=metrics(), content_type="text/plain")

    app = web.Application(middlewares=[auth], client_max_size=64 * 1024)
    app.router.add_get("/metrics", render)
    return app
