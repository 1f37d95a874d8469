"""The stages' loopback admin endpoint: ``/metrics`` (Prometheus text) behind a bearer secret.

The sink and every processor worker serve one. Never public: it binds to ``EVENTPIPE_ADMIN_HOST``
(127.0.0.1 by default) and every request must carry ``Authorization: Bearer <EVENTPIPE_ADMIN_SECRET>``.
Without a configured secret a stage makes one per start and writes it with the endpoint's URL to a
0600 file under ``<home>/run/`` for the operator. SQL does not go through here: ``eventpipe sql`` and
BI tools talk to ClickHouse itself, which enforces read-only access.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from pathlib import Path

import ujson
from aiohttp import web

from eventpipe.config import Settings
from eventpipe.files import write_private


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


async def serve_admin(settings: Settings, metrics: Callable[[], str], port: int, run_file: Path) -> web.AppRunner:
    """Start the endpoint on ``EVENTPIPE_ADMIN_HOST:port`` (0: any free port). Its secret is
    EVENTPIPE_ADMIN_SECRET, or one made for this run and written with the URL to ``run_file`` (0600)."""
    secret = settings.admin_secret or secrets.token_urlsafe(32)
    runner = web.AppRunner(build_admin_app(secret, metrics), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.admin_host, port)
    await site.start()
    if not settings.admin_secret:
        url = f"http://{settings.admin_host}:{runner.addresses[0][1]}/metrics"
        write_private(run_file, ujson.dumps({"url": url, "secret": secret}))
    return runner
