"""The management endpoint: the page, the machines as JSON and server-sent events, /metrics.

One aiohttp Application on `management.listen` (loopback by default: it is for the
administrator, never the classroom side unless configured). Read-only: anything but GET and
HEAD gets 405. With `management.token` set, every request (assets included) must carry it as
`Authorization: Bearer <token>` or `?token=<token>`, else 401; the page, opened with
`?token=`, passes it on to its assets and API calls (an EventSource cannot set headers).

    GET /              the page (data/web/index.html, app.js, style.css: no build step, no CDN)
    GET /api/machines  {"now": epoch seconds, "machines": [rows]} (rows: observe-spec.md)
    GET /api/events    server-sent events (sse.py), at most `max_streams` at once
    GET /metrics       prometheus_client.generate_latest(registry)
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import json
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..config import Config
from ..resources import data_path
from .feed import ChangeFeed, TrackerView
from .sse import HEADERS as SSE_HEADERS
from .sse import EventStream

MAX_STREAMS = 16  # event streams at once, all clients together (each holds a connection and wakes 4x/s)
SHUTDOWN_TIMEOUT = 2.0  # seconds close() leaves handlers to finish (event streams end within 1 s)
ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
PAGE_HEADERS = {
    # Everything the page needs comes from here; the token in its URL leaks to no one.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
API_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ManagementService:
    name = "management"

    def __init__(self, config: Config, tracker: TrackerView, registry: CollectorRegistry, log: logging.Logger,
                 *, clock: Callable[[], float] = time.time, max_streams: int = MAX_STREAMS) -> None:
        self.log = log
        self.tracker = tracker
        self.registry = registry
        self.clock = clock
        self.max_streams = max_streams
        self.streams = 0  # event streams open now
        self.feed = ChangeFeed(tracker, clock, log)
        self.runner: web.AppRunner | None = None
        self.closed: asyncio.Task[None] | None = None  # the runner's cleanup, once close() ran
        self.page = data_path("web", "index.html").read_text()
        self.assets = {name: data_path("web", name).read_bytes() for name in ASSETS}
        self.host, self.port = config.management.host, config.management.port
        self.app = self._build_app()
        self.reload(config)

    def reload(self, config: Config) -> None:
        m = config.management
        if self.runner is not None and (m.host, m.port) != (self.host, self.port):
            self.log.warning("management: listen change needs a restart; still serving on %s",
                             self.config.management.listen)
        self.config = config

    async def start(self) -> None:
        m = self.config.management
        self.host, self.port = m.host, m.port
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await self.runner.cleanup()
            self.runner = None
            raise
        self.feed.start()
        self.log.info("management: page, API and /metrics on %s (%s)", m.url,
                      "token required" if m.token else "no token")

    def close(self) -> None:
        self.feed.close()  # event streams see it and end
        runner, self.runner = self.runner, None
        if runner is not None:
            with contextlib.suppress(RuntimeError):  # no loop running: nothing left to clean up with
                self.closed = asyncio.get_running_loop().create_task(runner.cleanup())

    async def wait_closed(self) -> None:
        """For tests and tools: until close() has released the port."""
        if self.closed is not None:
            await self.closed

    # ------------------------------------------------------------------ the app

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=4096)  # no request has a body
        app.router.add_get("/", self.index)
        for name in ASSETS:
            app.router.add_get(f"/{name}", self.asset)
        app.router.add_get("/api/machines", self.machines)
        app.router.add_get("/api/events", self.events)
        app.router.add_get("/metrics", self.metrics)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        token = self.config.management.token
        if token is not None and not _carries(request, token):
            return web.Response(status=401, text="401: a token is required (Authorization: Bearer, or ?token=)\n",
                                headers={"WWW-Authenticate": 'Bearer realm="sidus-appliance"', **API_HEADERS})
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, text="405: read-only\n", headers={"Allow": "GET, HEAD", **API_HEADERS})
        return await handler(request)

    # ------------------------------------------------------------------ routes

    async def index(self, request: web.Request) -> web.Response:
        page = self.page
        token = self.config.management.token
        if token is not None:  # the assets are behind the token too
            query = html.escape("?token=" + quote(token, safe=""))
            for name in ASSETS:
                page = page.replace(f'"{name}"', f'"{name}{query}"')
        return web.Response(text=page, content_type="text/html", headers=PAGE_HEADERS)

    async def asset(self, request: web.Request) -> web.Response:
        name = request.path.lstrip("/")
        return web.Response(body=self.assets[name], content_type=ASSETS[name], charset="utf-8", headers=PAGE_HEADERS)

    async def machines(self, request: web.Request) -> web.Response:
        now = self.feed.poll()
        body = {"now": now, "machines": self.tracker.snapshot(now)}
        return web.Response(text=json.dumps(body, separators=(",", ":"), default=str),
                            content_type="application/json", headers=API_HEADERS)

    async def events(self, request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":
            return web.Response(headers=SSE_HEADERS)
        if self.streams >= self.max_streams:
            return web.Response(status=503, text=f"503: {self.max_streams} event streams are open already\n",
                                headers={"Retry-After": "5", **API_HEADERS})
        self.streams += 1
        try:
            return await EventStream(request, self.feed).run()
        finally:
            self.streams -= 1

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST, **API_HEADERS})


def _carries(request: web.Request, token: str) -> bool:
    """Whether the request holds the token (header or query), compared in constant time."""
    expected = token.encode()
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected):
        return True
    return any(hmac.compare_digest(value.encode(), expected) for value in request.query.getall("token", []))
