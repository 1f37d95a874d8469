"""The gateway benchmark's ceiling: the least an HTTP -> Kafka handler can do per request.

``python -m bench.bare_gateway`` serves ``/capture/`` and ``/batch/`` with plain aiohttp (no access
log, no middleware, no connection guard): it parses the body with ``ujson``, takes its ``batch`` list
(or the body itself as one event), sends every event re-encoded with ``ujson`` to
``<EVENTPIPE_TOPIC_PREFIX>bare``, keyed by its ``distinct_id``, with the producer
:func:`eventpipe.kafka.producer` builds (the gateway's settings: acks=all, idempotence, linger,
``EVENTPIPE_KAFKA_COMPRESSION``), awaits every ack and answers 200 ``{"status": 1}``.

No api key, no limits, no decoding of other encodings, no validation, no uuids or timestamps: what
is left is the cost of HTTP, one JSON parse, one encode per event and aiokafka's ``send`` per event,
which the real gateway cannot avoid either. bench/gateway.py runs it as a subprocess next to the
gateway, on the same broker, and divides the gateway's figures by its figures per request shape.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ujson
from aiohttp import web
from aiokafka.admin import NewTopic

from eventpipe import config
from eventpipe.kafka import ensure_topics, producer
from gateway.server import stop_signal  # SIGTERM/SIGINT only: nothing of the gateway's request path

TOPIC = "bare"  # under the run's topic prefix


async def main() -> None:
    settings = config.load()
    topic = f"{settings.topic_prefix}{TOPIC}"
    await ensure_topics(settings, [NewTopic(topic, settings.partitions, 1)])
    prod = producer(settings)
    await prod.start()

    async def handle(request: web.Request) -> web.Response:
        try:
            payload: Any = ujson.loads(await request.read())
        except ValueError:
            return web.json_response({"status": 0}, status=400)
        events = payload["batch"] if isinstance(payload, dict) and "batch" in payload else [payload]
        futures = [
            await prod.send(topic, ujson.dumps(e, ensure_ascii=False).encode(), key=str(e.get("distinct_id")).encode())
            for e in events
        ]
        await asyncio.gather(*futures)
        return web.json_response({"status": 1})

    async def ready(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=settings.max_batch_body_bytes + 1)
    for route in ("capture", "batch"):
        app.router.add_post(f"/{route}/", handle)
    app.router.add_get("/_ready", ready)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    try:
        await stop_signal()
    finally:
        await runner.cleanup()
        await prod.stop()


if __name__ == "__main__":
    asyncio.run(main())
