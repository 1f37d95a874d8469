"""The gateway's listening socket: connection cap, header timeout, and the byte budget of requests.

aiohttp has no header-read timeout (a client that sends half a request line waits for its keep-alive
timeout, an hour by default) and no cap on connections. Both sit here, in an asyncio protocol that
wraps the one aiohttp's low-level :class:`aiohttp.web.Server` makes for each connection (the
documented way to serve it with ``loop.create_server``), so nothing of aiohttp's is patched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

log = logging.getLogger("eventpipe.gateway")


def raw_json_response(status: int, reason: str, body: dict[str, Any], extra: str = "") -> bytes:
    """A complete HTTP/1.1 response, for a connection aiohttp is not (or no longer) serving."""
    payload = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        f"Connection: close\r\n{extra}\r\n"
    )
    return head.encode() + payload


_BUSY = raw_json_response(
    503,
    "Service Unavailable",
    {"type": "server_error", "code": "server_error", "detail": "Too many connections, please retry.", "attr": None},
    "Retry-After: 1\r\n",
)
_SLOW_HEADERS = raw_json_response(
    408,
    "Request Timeout",
    {"type": "validation_error", "code": "request_timeout", "detail": "Request headers not received in time.",
     "attr": None},
)


class ByteBudget:
    """Bytes that in-flight requests hold (bodies, then the messages they became), across requests.

    A request takes what it holds before holding it; when the budget is spent it is answered 503 with
    Retry-After instead of being read, so the gateway's memory is bounded by this, not by how many
    clients send large bodies at once.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.capacity:
            return False
        self.used += n
        return True

    def force(self, n: int) -> None:
        """Take without refusing (work already done must be able to finish)."""
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n


class Hold:
    """What one request holds of a :class:`ByteBudget`; everything is given back on exit."""

    def __init__(self, budget: ByteBudget) -> None:
        self.budget = budget
        self.held = 0

    def take(self, n: int) -> bool:
        if self.budget.take(n):
            self.held += n
            return True
        return False

    def resize(self, n: int) -> None:
        """Hold exactly ``n`` bytes from now on (the body is dropped, its messages are kept)."""
        delta = n - self.held
        if delta > 0:
            self.budget.force(delta)
        else:
            self.budget.give(-delta)
        self.held = n

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.budget.give(self.held)
        self.held = 0


@dataclass(frozen=True)
class ServerLimits:
    max_connections: int = 1000
    header_timeout_s: float = 10.0
    linger_s: float = 1.0  # how long a refused connection's unread bytes are drained before closing


class Connections:
    """The open connections of one listening socket (what the cap counts) and their guards."""

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.by_transport: dict[asyncio.BaseTransport, ConnectionGuard] = {}
        self.refused = 0
        self.header_timeouts = 0

    async def sweep(self) -> None:
        """Every so often, answer 408 on connections whose headers started too long ago.

        One periodic pass over the connections instead of a timer per request: a request's header
        clock costs a float assignment on the hot path, not a TimerHandle scheduled and cancelled.
        """
        loop = asyncio.get_running_loop()
        timeout = self.limits.header_timeout_s
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            deadline = loop.time() - timeout
            for guard in [g for g in self.by_transport.values() if g.since is not None and g.since < deadline]:
                guard.too_slow()

    def __len__(self) -> int:
        return len(self.by_transport)

    def request_started(self, transport: asyncio.BaseTransport | None) -> None:
        guard = self.by_transport.get(transport) if transport is not None else None
        if guard is not None:
            guard.request_started()

    def request_finished(self, transport: asyncio.BaseTransport | None) -> None:
        guard = self.by_transport.get(transport) if transport is not None else None
        if guard is not None:
            guard.request_finished()


class ConnectionGuard(asyncio.Protocol):
    """Wraps aiohttp's protocol of one connection: refuses it past the cap, times out slow headers.

    The header clock starts at the first byte of a request and stops when aiohttp hands the parsed
    request to the application (:func:`track_requests` calls :meth:`request_started`);
    :meth:`Connections.sweep` answers 408 to the ones too slow. An idle keep-alive connection is
    aiohttp's keep-alive timeout's business.
    """

    def __init__(self, make_inner: Callable[[], asyncio.Protocol], conns: Connections) -> None:
        self._make_inner = make_inner
        self._inner: asyncio.Protocol | None = None
        self._conns = conns
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self.since: float | None = None  # when the current request's first byte arrived, until it is handled
        self._in_request = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if len(self._conns) >= self._conns.limits.max_connections:
            # Answer at once rather than leave the client in the listen backlog: it retries elsewhere
            # or later (Retry-After). Its request is drained briefly so the close is not a reset that
            # would destroy the answer in flight.
            self._conns.refused += 1
            transport.write(_BUSY)
            if transport.can_write_eof():
                transport.write_eof()
            asyncio.get_running_loop().call_later(self._conns.limits.linger_s, transport.close)
            return
        self._conns.by_transport[transport] = self
        self._inner = self._make_inner()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return  # a refused connection: its bytes are discarded
        if not self._in_request and self.since is None:
            self.since = self._loop.time()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is None:
            if self._transport is not None:
                self._transport.close()
            return None
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.since = None
        if self._transport is not None:
            self._conns.by_transport.pop(self._transport, None)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def request_started(self) -> None:
        self._in_request = True
        self.since = None

    def request_finished(self) -> None:
        self._in_request = False

    def too_slow(self) -> None:
        self.since = None
        if self._in_request or self._transport is None or self._transport.is_closing():
            return
        self._conns.header_timeouts += 1
        self._transport.write(_SLOW_HEADERS)
        self._transport.close()


CONNECTIONS = web.AppKey("connections", Connections)

# aiohttp's server options: after an early answer (401 before the body, 408, 413) aiohttp reads and
# drops the rest of the body so the client sees the answer rather than a reset; 2 s of that, not 10,
# or refused slow clients would hold their connection slots.
# An idle keep-alive connection is closed after 75 s (aiohttp's default is an hour), so idle clients
# do not hold the connection cap's slots (nginx and most load balancers use 60-75 s too).
# Bodies are read as sent, not inflated by aiohttp: the capture decode inflates a Content-Encoding:
# gzip body when its bytes are gzip, within the inflate limit, and reads it as it is when the header
# lies (aiohttp would refuse it).
SERVER_KWARGS: dict[str, Any] = {
    "access_log": None,
    "handle_signals": False,
    "lingering_time": 2.0,
    "keepalive_timeout": 75.0,
    "auto_decompress": False,
}


@web.middleware
async def track_requests(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    """Stops the header clock of the request's connection while the application handles it."""
    conns = request.app.get(CONNECTIONS)
    if conns is None:  # served by something else (aiohttp's test server)
        return await handler(request)
    conns.request_started(request.transport)
    try:
        return await handler(request)
    finally:
        conns.request_finished(request.transport)


@dataclass
class Running:
    runner: web.AppRunner
    server: asyncio.AbstractServer
    port: int
    sweeper: asyncio.Task[None]

    async def close(self) -> None:
        self.server.close()
        self.sweeper.cancel()
        await self.runner.cleanup()


async def start(app: web.Application, host: str, port: int, limits: ServerLimits, **server_kwargs: Any) -> Running:
    """Serve ``app`` on ``host:port`` (0: any free port) behind the connection guard."""
    conns = Connections(limits)
    app[CONNECTIONS] = conns
    runner = web.AppRunner(app, **server_kwargs)
    await runner.setup()
    aiohttp_server = runner.server
    assert aiohttp_server is not None
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ConnectionGuard(aiohttp_server, conns), host, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    return Running(runner, server, int(bound), asyncio.create_task(conns.sweep(), name="header-timeouts"))


async def stop_signal() -> None:
    """Return at the first SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_forever(app: web.Application, host: str, port: int, limits: ServerLimits, **server_kwargs: Any) -> None:
    """:func:`start`, then wait for SIGTERM or SIGINT and shut down gracefully (like ``web.run_app``)."""
    running = await start(app, host, port, limits, **server_kwargs)
    try:
        await stop_signal()
    finally:
        await running.close()
