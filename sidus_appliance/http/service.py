"""The boot tree over HTTP/1.1 (aiohttp's low-level server), in the appliance's one process.

UEFI HTTP boot firmware, shim, GRUB and iPXE fetch loaders, menus, kernels and initrds here:
the very tree TFTP serves (tftp/tree.py), so the same jail, the same refusals (FIFOs, device
nodes, links out of an instance, `..`) and the same generated menus. GET and HEAD only; one
byte range (`Range: bytes=N-M`); file bodies leave with sendfile from the descriptor the jail
opened (never reopened by name), generated ones from memory.

Budgets: connections per client address and in all (ConnectionBudget: a host over its share is
closed at once), an idle connection is closed after `http.idle_timeout`, and so is one that has
not sent a whole request by then (a slow-header client cannot hold a slot). Refusals are logged
once per client and minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ..config import Config
from ..observe.events import Transport
from ..ratelimit import LineBudget, RateLimitedLog
from ..tftp import protocol
from ..tftp.tree import BootTree, Resolved, TreeError
from .budget import ConnectionBudget
from .ranges import Unsatisfiable, parse_range

if TYPE_CHECKING:
    from ..observe.observer import Observer

LOG_INTERVAL = 60.0
CHUNK = 256 * 1024  # generated content, or a transport without sendfile
STATUS_FOR = {protocol.ERR_NOT_FOUND: 404, protocol.ERR_ACCESS: 403, protocol.ERR_UNDEFINED: 503}
CONTENT_TYPES = {"menu": "text/plain; charset=utf-8"}


class _GuardedServer(web.Server):
    """aiohttp's server with our connection budget and first-request deadline."""

    def __init__(self, service: HttpService, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.service = service

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self.service.connection_made(handler, transport)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self.service.connection_lost(handler)


class HttpService:
    name = "http"

    def __init__(self, config: Config, leases: Any, log: logging.Logger, observer: Observer | None = None) -> None:
        self.log = log
        self.observer = observer
        self.rlog = RateLimitedLog(log, interval=LOG_INTERVAL)
        self.lines = LineBudget()  # one line per transfer: a flood of GETs is counted, not written
        self.leases = leases
        self.runner: web.ServerRunner | None = None
        self.budget = ConnectionBudget(config.http.max_connections, config.http.max_connections_per_client)
        self._clients: dict[RequestHandler, str] = {}  # admitted connections and their address
        self._asked: set[RequestHandler] = set()  # connections that have sent a request
        self.stats: dict[str, int] = {"requests": 0, "sent": 0, "bytes": 0, "refused": 0, "connections_refused": 0}
        self.bind_ip, self.port = str(config.server_ip), config.http.port
        self.reload(config)

    def reload(self, config: Config) -> None:
        if self.runner is not None and (str(config.server_ip), config.http.port) != (self.bind_ip, self.port):
            self.log.warning("http: address/port change needs a restart; still serving on %s:%d",
                             self.bind_ip, self.port)
        self.config = config
        self.tree = BootTree(config, self.leases)
        self.budget.total = config.http.max_connections
        self.budget.per_client = config.http.max_connections_per_client

    async def start(self) -> None:
        self.bind_ip, self.port = str(self.config.server_ip), self.config.http.port
        server = _GuardedServer(self, self.handle, keepalive_timeout=self.config.http.idle_timeout,
                                access_log=None)
        self.runner = web.ServerRunner(server, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.bind_ip, self.port, reuse_address=True)
        await site.start()
        self.log.info("http: serving the boot tree %s on http://%s:%d/ (%d connections per client)",
                      self.tree.root, self.bind_ip, self.port, self.budget.per_client)

    def close(self) -> None:
        runner, self.runner = self.runner, None
        if runner is None:
            return
        server = runner.server
        if server is not None:
            server.pre_shutdown()  # close every connection now; the loop may be about to stop
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(runner.cleanup())

    # ------------------------------------------------------------------ connections

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        client = peer[0] if peer else "?"
        why = self.budget.admit(client)
        if why is not None:
            self.stats["connections_refused"] += 1
            self.rlog.warning(("busy", client), "http: %s: connection refused: %s", client, why)
            # Not from inside connection_made: aiohttp's handler task must start before it sees the loss.
            asyncio.get_running_loop().call_soon(transport.abort)
            return
        self._clients[handler] = client
        loop = asyncio.get_running_loop()
        loop.call_later(self.config.http.idle_timeout, self._first_request_deadline, handler, transport)

    def connection_lost(self, handler: RequestHandler) -> None:
        client = self._clients.pop(handler, None)
        self._asked.discard(handler)
        if client is not None:
            self.budget.release(client)

    def _first_request_deadline(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        if handler in self._clients and handler not in self._asked and not transport.is_closing():
            client = self._clients[handler]
            self.rlog.info(("slow", client), "http: %s: no whole request within %.0f s, connection closed",
                           client, self.config.http.idle_timeout)
            transport.abort()

    # ------------------------------------------------------------------ requests

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self._asked.add(request.protocol)  # type: ignore[arg-type]
        self.stats["requests"] += 1
        client = request.remote or "?"
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"}, text="read-only boot tree\n")
        path = unquote(request.raw_path.split("?", 1)[0], errors="surrogateescape")
        try:
            resolved = self.tree.resolve(path, client=request.remote)
        except TreeError as exc:
            return self._refused(client, path, exc)
        except OSError as exc:  # the tree maps what it expects; anything else is this request's failure
            return self._refused(client, path, TreeError(protocol.ERR_UNDEFINED, f"server error: {exc}"))
        began = time.monotonic()
        sent = 0
        try:
            response, sent = await self._send(request, client, resolved)
            return response
        finally:
            resolved.close()
            if self.observer is not None and request.method == "GET":
                self.observer.transfer(client, resolved.name, resolved.kind, Transport.HTTP, resolved.size, sent,
                                       time.monotonic() - began, 0, sent > 0 or resolved.size == 0)

    def _refused(self, client: str, path: str, exc: TreeError) -> web.Response:
        status = STATUS_FOR.get(exc.code, 500)
        if exc.refused or status >= 500:
            self.stats["refused"] += 1
            self.rlog.warning(("refused", client), "http: %s: refused %r: %s", client, path, exc.message)
        else:
            self.log.debug("http: %s: %r: %s", client, path, exc.message)
        headers = {"Retry-After": "1"} if status == 503 else None
        return web.Response(status=status, text=exc.message + "\n", headers=headers)

    async def _send(self, request: web.BaseRequest, client: str, resolved: Resolved) -> tuple[web.StreamResponse, int]:
        """The response and the bytes of the body sent."""
        size = resolved.size
        try:
            wanted = parse_range(request.headers.get("Range"), size)
        except Unsatisfiable:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"}), 0
        start, length = (0, size) if wanted is None else (wanted.start, wanted.length)
        response = web.StreamResponse(status=200 if wanted is None else 206)
        response.content_type = CONTENT_TYPES.get(resolved.kind, "application/octet-stream")
        response.content_length = length
        response.headers["Accept-Ranges"] = "bytes"
        if wanted is not None:
            response.headers["Content-Range"] = wanted.content_range(size)
        if resolved.kind == "menu":
            response.headers["Cache-Control"] = "no-store"  # generated per machine, per request
        began = time.monotonic()
        await response.prepare(request)
        if request.method == "HEAD" or length == 0:
            await response.write_eof()
            return response, 0
        if resolved.fd is not None and request.transport is not None:
            await self._sendfile(request, response, resolved.fd, start, length)
        else:
            for offset in range(start, start + length, CHUNK):
                await response.write(resolved.read(offset, min(CHUNK, start + length - offset)))
        await response.write_eof()
        self.stats["sent"] += 1
        self.stats["bytes"] += length
        dropped = self.lines.allow()
        if dropped:
            self.log.warning("http: %d transfer log lines suppressed (flood)", dropped)
        if dropped is not None:
            span = "" if wanted is None else f", range {wanted.start}-{wanted.end}"
            self.log.info("http: %s: sent %s (%d bytes%s, %.2f s)", client, resolved.name, length, span,
                          time.monotonic() - began)
        return response, length

    @staticmethod
    async def _sendfile(request: web.BaseRequest, response: web.StreamResponse, fd: int, start: int,
                        length: int) -> None:
        """sendfile(2) from the jailed descriptor; a transport without it gets chunks of pread."""
        transport = request.transport
        assert transport is not None
        loop = asyncio.get_running_loop()
        with os.fdopen(os.dup(fd), "rb", buffering=0) as file:
            try:
                sent = await loop.sendfile(transport, file, start, length)
            except NotImplementedError:
                sent = 0
                for offset in range(start, start + length, CHUNK):
                    chunk = os.pread(fd, min(CHUNK, start + length - offset), offset)
                    await response.write(chunk)
                    sent += len(chunk)
        if sent < length:  # the file shrank under us: the promised length cannot be kept
            transport.abort()
            raise ConnectionResetError(f"file shrank: sent {sent} of {length} bytes")
