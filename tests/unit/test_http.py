"""HTTP: the Range core, the connection budget, and the service over loopback (aiohttp's client)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from sidus_appliance.config import parse_config
from sidus_appliance.http.budget import ConnectionBudget
from sidus_appliance.http.ranges import ByteRange, Unsatisfiable, parse_range
from sidus_appliance.http.service import HttpService

# ---------------------------------------------------------------- ranges


@pytest.mark.parametrize(("header", "size", "expected"), [
    (None, 10, None), ("", 10, None), ("bytes=0-", 10, ByteRange(0, 9)), ("bytes=2-4", 10, ByteRange(2, 4)),
    ("bytes=-3", 10, ByteRange(7, 9)), ("bytes=-30", 10, ByteRange(0, 9)), ("bytes=5-99999", 10, ByteRange(5, 9)),
    ("bytes=5-" + "9" * 40, 10, ByteRange(5, 9)), ("bytes=4-2", 10, None), ("bytes=0-1,3-4", 10, None),
    ("items=0-1", 10, None), ("bytes=-", 10, None), ("bytes = 1 - 2", 10, ByteRange(1, 2)),
])
def test_one_range(header: str | None, size: int, expected: ByteRange | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=10-20", "bytes=" + "9" * 40 + "-", "bytes=-0"])
def test_unsatisfiable(header: str) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, 10)


@given(st.text(max_size=80), st.integers(0, 1 << 40))
def test_any_header_is_a_range_inside_the_file_or_a_refusal(header: str, size: int) -> None:
    try:
        got = parse_range(header, size)
    except Unsatisfiable:
        return
    if got is not None:
        assert 0 <= got.start <= got.end < size and got.length == got.end - got.start + 1


def test_budget_per_client_and_in_all() -> None:
    budget = ConnectionBudget(total=3, per_client=2)
    assert budget.admit("a") is None and budget.admit("a") is None
    assert "from this address" in (budget.admit("a") or "")
    assert budget.admit("b") is None
    assert "in all" in (budget.admit("c") or "")
    budget.release("a")
    assert budget.admit("c") is None and len(budget) == 3


# ---------------------------------------------------------------- the service


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(tmp_path: Path, body: Callable[[str, Path, Path, HttpService], Awaitable[None]], **http: object) -> None:
    root, inst = tmp_path / "tftp", tmp_path / "nfsroot" / "lab"
    (inst / "boot").mkdir(parents=True)
    root.mkdir()
    port = free_port()
    config = parse_config(yaml.safe_dump({
        "interface": "lo", "address": "127.0.0.1/8", "domain": "test.zone", "tftp": {"root": str(root)},
        "http": {"port": port, **http}, "instances": [{"name": "lab", "root": str(inst)}],
        "hosts": [{"name": "master", "mac": "08:00:aa:bb:cc:dd", "address": "127.0.0.9", "profile": "master"}],
    }))

    async def main() -> None:
        service = HttpService(config, None, logging.getLogger("test.http"))
        await service.start()
        try:
            await body(f"http://127.0.0.1:{port}", root, inst, service)
        finally:
            service.close()
            await asyncio.sleep(0.05)

    asyncio.run(main())


def test_files_menus_kernels_head_and_ranges(tmp_path: Path) -> None:
    loader = os.urandom(300_000)
    kernel = os.urandom(1_000_003)

    async def body(base: str, root: Path, inst: Path, service: HttpService) -> None:
        (root / "efi64").mkdir()
        (root / "efi64" / "shimx64.efi").write_bytes(loader)
        (inst / "boot" / "vmlinuz-6.1.0-9-amd64").write_bytes(kernel)
        (inst / "boot" / "initrd.img-6.1.0-9-amd64").write_bytes(b"initrd")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/efi64/shimx64.efi") as r:
                assert r.status == 200 and await r.read() == loader
                assert r.headers["Accept-Ranges"] == "bytes"
            async with http.get(f"{base}/vmlinuz-6.1.0-9-amd64@lab") as r:
                assert r.status == 200 and await r.read() == kernel
            async with http.get(f"{base}/vmlinuz-6.1.0-9-amd64@lab", headers={"Range": "bytes=1000000-"}) as r:
                assert r.status == 206 and await r.read() == kernel[1_000_000:]
                assert r.headers["Content-Range"] == "bytes 1000000-1000002/1000003"
            async with http.get(f"{base}/efi64/shimx64.efi", headers={"Range": "bytes=" + "9" * 30 + "-"}) as r:
                assert r.status == 416 and r.headers["Content-Range"] == "bytes */300000"
            async with http.head(f"{base}/vmlinuz-6.1.0-9-amd64@lab") as r:
                assert r.status == 200 and r.headers["Content-Length"] == "1000003" and await r.read() == b""
            async with http.get(f"{base}/pxelinux.cfg/01-08-00-aa-bb-cc-dd") as r:
                menu = await r.text()
                assert r.status == 200 and "MASTER, read-write" in menu and r.headers["Cache-Control"] == "no-store"
            async with http.post(f"{base}/efi64/shimx64.efi", data=b"x") as r:
                assert r.status == 405
        assert service.stats["sent"] == 4 and service.stats["bytes"] == 300_000 + 1_000_003 + 3 + len(menu)

    run(tmp_path, body)


def test_the_jail_and_refusals_are_those_of_tftp(tmp_path: Path) -> None:
    async def body(base: str, root: Path, inst: Path, service: HttpService) -> None:
        (tmp_path / "secret").write_text("outside")
        os.mkfifo(inst / "boot" / "vmlinuz-fifo")
        os.symlink(tmp_path / "secret", inst / "boot" / "vmlinuz-out")
        (root / "link").symlink_to(tmp_path / "secret")
        async with aiohttp.ClientSession() as http:
            for path, status in (("/vmlinuz-fifo@lab", 403), ("/vmlinuz-out@lab", 403), ("/link", 403),
                                 ("/%2e%2e/secret", 403), ("/a/%2E%2E/%2e%2e/secret", 403), ("/x%00y", 403),
                                 ("/missing", 404), ("/vmlinuz-1@nosuch", 404)):
                async with http.get(URL(f"{base}{path}", encoded=True)) as r:
                    assert r.status == status, path
                    assert b"outside" not in await r.read()
        assert service.stats["sent"] == 0

    run(tmp_path, body)


def test_one_client_cannot_hold_every_connection(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def body(base: str, root: Path, inst: Path, service: HttpService) -> None:
        port = int(base.rsplit(":", 1)[1])
        (root / "f").write_bytes(b"data")
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # over the cap: closed at once
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        assert service.stats["connections_refused"] == 1
        # The held ones never sent a request: closed once the idle time is up, slots free again.
        for reader, _ in held:
            assert await asyncio.wait_for(reader.read(), 10) == b""
        async with aiohttp.ClientSession() as http, http.get(f"{base}/f") as r:
            assert r.status == 200 and await r.read() == b"data"

    run(tmp_path, body, max_connections_per_client=2, idle_timeout=0.5)
    # A refused connection must not kill aiohttp's handler task ("Task exception was never retrieved").
    assert not [r for r in caplog.records if r.exc_info or "never retrieved" in r.getMessage()]


def test_a_flood_of_requests_is_counted_not_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.http")

    async def body(base: str, root: Path, inst: Path, service: HttpService) -> None:
        (root / "f").write_bytes(b"x")
        service.lines.rate, service.lines.burst, service.lines._tokens = 0.001, 50, 50  # a small bucket
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                async with http.get(f"{base}/f") as r:
                    assert r.status == 200 and await r.read() == b"x"
        assert service.stats["sent"] == 300

    run(tmp_path, body)
    sent_lines = [r for r in caplog.records if ": sent f (" in r.getMessage()]
    assert len(sent_lines) == 50
