"""The management endpoint over loopback (aiohttp's client) with a fake tracker and a real
prometheus CollectorRegistry: routes, server-sent events, token, read-only, /metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from sidus_appliance.config import parse_config
from sidus_appliance.observe import sse
from sidus_appliance.observe.web import ManagementService

from ..fake_tracker import FakeTracker, boot_row

NOW = 1_796_049_330.0
PC1 = boot_row("52:54:00:5a:00:01", name="dhcp-12", address="10.20.17.12", started=NOW - 20, reached=6, booted=True)
PC2 = boot_row("52:54:00:5a:00:02", name="dhcp-13", address="10.20.17.13", started=NOW - 5, reached=2)

Body = Callable[[str, aiohttp.ClientSession, ManagementService, FakeTracker], Awaitable[None]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(body: Body, *, token: str | None = None, registry: CollectorRegistry | None = None,
        max_streams: int = 16) -> FakeTracker:
    port = free_port()
    management: dict[str, Any] = {"listen": f"127.0.0.1:{port}"}
    if token is not None:
        management["token"] = token
    config = parse_config(yaml.safe_dump({
        "interface": "lo", "address": "127.0.0.1/8", "domain": "test.zone", "management": management,
    }))
    tracker = FakeTracker([PC1, PC2])

    async def main() -> None:
        service = ManagementService(config, tracker, registry or CollectorRegistry(), logging.getLogger("test.mgmt"),
                                    clock=lambda: NOW, max_streams=max_streams)
        service.feed.interval = 0.02  # the page polls 4x/s; the tests need not wait that long
        await service.start()
        try:
            async with aiohttp.ClientSession() as http:
                await asyncio.wait_for(body(f"http://127.0.0.1:{port}", http, service, tracker), 20)
        finally:
            service.close()
            await service.wait_closed()

    asyncio.run(main())
    return tracker


async def events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str]]:
    """(event name, data) of each SSE message; comments come as ("comment", text)."""
    name, data = "message", []
    while True:
        line = (await response.content.readline()).decode()
        if not line:
            return
        line = line.rstrip("\n")
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif not line:
            if data:
                yield name, "\n".join(data)
            name, data = "message", []


async def next_event(stream: AsyncIterator[tuple[str, str]]) -> tuple[str, Any]:
    name, data = await asyncio.wait_for(anext(stream), 5)
    return name, (json.loads(data) if name != "comment" else data)


def test_page_assets_and_machines() -> None:
    async def body(base: str, http: aiohttp.ClientSession, service: ManagementService, tracker: FakeTracker) -> None:
        async with http.get(f"{base}/") as r:
            page = await r.text()
            assert r.status == 200 and r.content_type == "text/html"
            assert '<div id="timeline"' in page and 'src="app.js"' in page and 'href="style.css"' in page
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        for name, kind, marker in (("app.js", "text/javascript", "EventSource"), ("style.css", "text/css", ".bar")):
            async with http.get(f"{base}/{name}") as r:
                assert r.status == 200 and r.content_type == kind and marker in await r.text()
        async with http.head(f"{base}/") as r:
            assert r.status == 200 and await r.read() == b""
        async with http.get(f"{base}/nothing") as r:
            assert r.status == 404
        async with http.get(f"{base}/api/machines") as r:
            assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
            data = await r.json()
        assert data == {"now": NOW, "machines": [PC1, PC2]}
        assert tracker.polls and tracker.polls[-1] == NOW  # asked to age its boots before answering

    run(body)


def test_events_open_with_a_snapshot_then_send_each_change() -> None:
    async def body(base: str, http: aiohttp.ClientSession, service: ManagementService, tracker: FakeTracker) -> None:
        async with http.get(f"{base}/api/events") as r:
            assert r.status == 200 and r.content_type == "text/event-stream"
            stream = events(r)
            assert await next_event(stream) == ("snapshot", {"now": NOW, "machines": [PC1, PC2]})
            assert service.streams == 1
            moved = boot_row(PC2["mac"], name="dhcp-13", address="10.20.17.13", started=NOW - 5, reached=4)
            tracker.put(moved)
            assert await next_event(stream) == ("machine", moved)
            pc3 = boot_row("52:54:00:5a:00:03", name="dhcp-14", address="10.20.17.14", started=NOW, reached=1)
            tracker.put(pc3)
            tracker.forget(PC1["mac"])  # evicted by the tracker: the page drops the row
            got = [await next_event(stream), await next_event(stream)]
            assert sorted(got, key=lambda event: event[0]) == [("gone", {"mac": PC1["mac"]}), ("machine", pc3)]
        await asyncio.sleep(0.05)
        assert tracker.polls  # the feed keeps the tracker's clock moving

    run(body)


def test_a_large_change_is_sent_as_a_new_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse, "ROWS_PER_ROUND", 1)

    async def body(base: str, http: aiohttp.ClientSession, service: ManagementService, tracker: FakeTracker) -> None:
        async with http.get(f"{base}/api/events") as r:
            stream = events(r)
            await next_event(stream)
            pc3 = boot_row("52:54:00:5a:00:03", name="dhcp-14", address="10.20.17.14", started=NOW, reached=1)
            tracker.put(pc3)
            tracker.forget(PC1["mac"])
            assert await next_event(stream) == ("snapshot", {"now": NOW, "machines": [PC2, pc3]})

    run(body)


def test_idle_stream_gets_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse, "HEARTBEAT", 0.1)
    monkeypatch.setattr(sse, "CLIENT_CHECK", 0.05)

    async def body(base: str, http: aiohttp.ClientSession, service: ManagementService, tracker: FakeTracker) -> None:
        async with http.get(f"{base}/api/events") as r:
            stream = events(r)
            await next_event(stream)
            assert await next_event(stream) == ("comment", "keepalive")

    run(body)


def test_event_streams_are_bounded_and_free_their_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse, "CLIENT_CHECK", 0.05)

    async def body(base: str, http: aiohttp.ClientSession, service: ManagementService, tracker: FakeTracker) -> None:
        async with aiohttp.ClientSession() as first, aiohttp.ClientSession() as second:
            r1 = await first.get(f"{base}/api/events")
            r2 = await second.get(f"{base}/api/events")
            await next_event(events(r1))
            await next_event(events(r2))
            async with http.get(f"{base}/api/events") as r:
                assert r.status == 503 and r.headers["Retry-After"] == "5"
            async with http.head(f"{base}/api/events") as r:  # HEAD holds no slot
                assert r.status == 200
            r1.close()  # the client goes away: its stream ends and gives the slot back
            for _ in range(100):
                if service.streams < 2:
                    break
                await asyncio.sleep(0.02)
            assert service.streams == 1
            async with http.get(f"{base}/api/events") as r:
                assert r.status == 200 and (await next_event(events(r)))[0] == "snapshot"
            r2.close()

    run(body, max_streams=2)


def test_close_ends_open_streams() -> None:
    async def body(base: str, http: aiohttp.ClientSession, service: ManagementService, tracker: FakeTracker) -> None:
        async with http.get(f"{base}/api/events") as r:
            stream = events(r)
            await next_event(stream)
            service.close()
            with pytest.raises(StopAsyncIteration):
                while True:  # any message left, then the end of the stream
                    await asyncio.wait_for(anext(stream), 5)
            await service.wait_closed()
        assert service.streams == 0
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"{base}/api/machines")

    run(body)


def test_token_is_required_everywhere_and_passed_on_by_the_page() -> None:
    token = "s3cret/+&"

    async def body(base: str, http: aiohttp.ClientSession, service: ManagementService, tracker: FakeTracker) -> None:
        for path in ("/", "/app.js", "/style.css", "/api/machines", "/api/events", "/metrics", "/nothing"):
            async with http.get(f"{base}{path}") as r:
                assert r.status == 401, path
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
            async with http.get(f"{base}{path}", params={"token": "wrong"}) as r:
                assert r.status == 401, path
            async with http.get(f"{base}{path}", headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401, path
        async with http.post(f"{base}/api/machines") as r:
            assert r.status == 401  # nothing is told to a client without the token, not even 405
        async with http.get(f"{base}/api/machines", headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200 and len((await r.json())["machines"]) == 2
        async with http.get(f"{base}/", params={"token": token}) as r:
            page = await r.text()
            assert r.status == 200
        # The assets the page names carry the token (quoted for a URL, escaped for HTML).
        assert 'src="app.js?token=s3cret%2F%2B%26"' in page and 'href="style.css?token=s3cret%2F%2B%26"' in page
        async with http.get(f"{base}/app.js?token=s3cret%2F%2B%26") as r:
            assert r.status == 200
        async with http.get(f"{base}/api/events", params={"token": token}) as r:
            assert r.status == 200 and (await next_event(events(r)))[0] == "snapshot"
        async with http.get(f"{base}/metrics", params={"token": token}) as r:
            assert r.status == 200

    run(body, token=token)


def test_read_only() -> None:
    async def body(base: str, http: aiohttp.ClientSession, service: ManagementService, tracker: FakeTracker) -> None:
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            for path in ("/", "/api/machines", "/api/events", "/metrics", "/nothing"):
                async with http.request(method, f"{base}{path}", data=b"x") as r:
                    assert r.status == 405, (method, path)
                    assert r.headers["Allow"] == "GET, HEAD"

    run(body)


def test_metrics_are_the_registry_in_prometheus_text() -> None:
    registry = CollectorRegistry()
    boots = Counter("sidus_boots_completed", "Boots that reached the booted system", registry=registry)
    boots.inc(3)

    async def body(base: str, http: aiohttp.ClientSession, service: ManagementService, tracker: FakeTracker) -> None:
        async with http.get(f"{base}/metrics") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=")
            text = await r.text()
        families = {family.name: family for family in text_string_to_metric_families(text)}
        (sample,) = [s for s in families["sidus_boots_completed"].samples if s.name == "sidus_boots_completed_total"]
        assert sample.value == 3.0

    run(body, registry=registry)


def test_reload_applies_a_new_token_at_once() -> None:
    async def body(base: str, http: aiohttp.ClientSession, service: ManagementService, tracker: FakeTracker) -> None:
        async with http.get(f"{base}/api/machines") as r:
            assert r.status == 200
        service.reload(service.config.with_overrides(
            management=service.config.management.__class__(host=service.host, port=service.port, token="new")))
        async with http.get(f"{base}/api/machines") as r:
            assert r.status == 401
        async with http.get(f"{base}/api/machines", params={"token": "new"}) as r:
            assert r.status == 200

    run(body)
