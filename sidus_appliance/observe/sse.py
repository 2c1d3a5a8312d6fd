"""`GET /api/events`: server-sent events of the tracker's machines.

The stream opens with `event: snapshot` (every row, as /api/machines gives them), then sends
`event: machine` with one row per machine that changed, and `event: gone` ({"mac": ...}) for a
machine the tracker no longer holds (evicted). After a change too large to send row by row it
sends a fresh `snapshot`, which the page takes as the whole table. A comment line every
`HEARTBEAT` seconds keeps proxies and the browser from timing out an idle stream.

Bounded: the service admits at most `max_streams` at once; a stream ends within
`CLIENT_CHECK` seconds of its client going away (aiohttp does not cancel the handler when
the peer closes), at once when the service closes, and when a write stalls `WRITE_TIMEOUT`
seconds (a client that stopped reading). Nothing is queued per client: each round reads the
tracker's state now, so a slow client sees fewer, fresher rows rather than a growing backlog.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from .feed import ChangeFeed, Row

HEARTBEAT = 15.0  # seconds between keep-alive comments on an idle stream
CLIENT_CHECK = 1.0  # seconds between looks at whether the client is still there
WRITE_TIMEOUT = 30.0  # seconds a write may wait for the client to read
ROWS_PER_ROUND = 256  # more changed machines than this: one snapshot instead of many events
HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-store",
    "X-Accel-Buffering": "no",  # a reverse proxy must not hold events back
}


def encode(event: str, data: Any) -> bytes:
    """One SSE message; compact JSON has no raw newline, so it fits one `data:` line."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n".encode()


def snapshot_message(feed: ChangeFeed, now: float) -> bytes:
    return encode("snapshot", {"now": now, "machines": feed.tracker.snapshot(now)})


class EventStream:
    """One client's stream; `run` returns when the client, a write or the service ends it."""

    def __init__(self, request: web.Request, feed: ChangeFeed) -> None:
        self.request = request
        self.feed = feed
        self.response = web.StreamResponse(headers=HEADERS)
        self.last_write = time.monotonic()

    async def run(self) -> web.StreamResponse:
        await self.response.prepare(self.request)
        tracker = self.feed.tracker
        version = tracker.version  # before the snapshot: a change in between is sent again, not lost
        if not await self._send(b"retry: 2000\n" + snapshot_message(self.feed, self.feed.clock())):
            return self.response
        while not self.feed.closed and self._client_there():
            await self.feed.wait(CLIENT_CHECK)
            if self.feed.closed or not self._client_there():
                break
            current = tracker.version
            if current != version:
                changed = tracker.changed_since(version)
                version = current
                ok = await self._send(self._changes(changed))
            elif time.monotonic() - self.last_write >= HEARTBEAT:
                ok = await self._send(b": keepalive\n\n")
            else:
                continue
            if not ok:
                break
        return self.response

    def _changes(self, macs: list[str]) -> bytes:
        now = self.feed.clock()
        if len(macs) > ROWS_PER_ROUND:
            return snapshot_message(self.feed, now)
        rows: list[Row] = self.feed.tracker.snapshot(now, macs)
        present = {row.get("mac") for row in rows}
        messages = [encode("machine", row) for row in rows]
        messages += [encode("gone", {"mac": mac}) for mac in dict.fromkeys(macs) if mac not in present]
        return b"".join(messages)

    def _client_there(self) -> bool:
        transport = self.request.transport
        return transport is not None and not transport.is_closing()

    async def _send(self, data: bytes) -> bool:
        if not data:
            return True
        try:
            await asyncio.wait_for(self.response.write(data), WRITE_TIMEOUT)
        except (TimeoutError, ConnectionError):
            transport = self.request.transport
            if transport is not None:
                transport.abort()
            return False
        self.last_write = time.monotonic()
        return True
