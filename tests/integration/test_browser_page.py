"""The management page in real headless Chromium (lab/browser.py), live from the SSE stream.

ManagementService runs in-process on 127.0.0.1 (its own event loop in a thread) with a fake
tracker whose machine boots phase by phase while the page stays open: the DOM must follow
without a reload (rows by MAC and state, one timeline bar per phase reached), the filter and a
click on a row must work, and the finished page is saved as a PNG (the README's screenshot).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from sidus_appliance.config import parse_config
from sidus_appliance.lab import Lab
from sidus_appliance.lab.browser import Browser, BrowserError
from sidus_appliance.lab.netns import end_process
from sidus_appliance.observe.web import ManagementService

from ..conftest import require
from ..fake_tracker import PHASES, FakeTracker, Row, boot_row

pytestmark = pytest.mark.integration

LIVE = "52:54:00:5a:00:21"  # the machine that boots while the page watches
STUCK = "52:54:00:5a:00:17"
# What a classroom boot looks like (seconds per phase, from our QEMU runs: 18-31 s in all).
DURATIONS = (1.9, 0.7, 0.4, 3.1, 8.6, 2.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def classroom(now: float) -> list[Row]:
    """Machines seen before the page opens: booted ones, a master on UEFI, one stuck."""
    rows = [
        boot_row("08:00:aa:bb:cc:dd", name="master", address="10.20.17.253", started=now - 412, reached=6,
                 booted=True, durations=(2.4, 1.1, 0.3, 2.8, 7.9, 1.6), firmware="pxe", arch=7,
                 loader="efi64/syslinux.efi", profile="master"),
        boot_row(STUCK, name="dhcp-17", address="10.20.17.17", started=now - 190, reached=4, stuck=True,
                 durations=(2.1, 0.8, 0.5, 9.5), retransmits=37),
    ]
    for octet, ago, firmware, arch in ((12, 305, "ipxe", 0), (13, 298, "pxe", 0), (14, 240, "ipxe", 7),
                                       (15, 95, "http", 16)):
        loader = {0: "pxelinux.0", 7: "efi64/syslinux.efi", 16: "efi64/shimx64.efi"}[arch]
        scale = 1 + (octet % 3) * 0.15
        rows.append(boot_row(f"52:54:00:5a:00:{octet:02x}", name=f"dhcp-{octet}", address=f"10.20.17.{octet}",
                             started=now - ago, reached=6, booted=True, durations=[d * scale for d in DURATIONS],
                             firmware=firmware, arch=arch, loader=loader))
    return rows


class ServiceThread:
    """ManagementService on its own event loop in a thread, so this test can block on the browser."""

    def __init__(self, service: ManagementService) -> None:
        self.service = service
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="management", daemon=True)

    def __enter__(self) -> ServiceThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.service.start(), self.loop).result(10)
        return self

    def call(self, func: Callable[..., Any], *args: Any) -> None:
        """Run `func(*args)` on the service's loop (the tracker is not thread-safe)."""
        self.loop.call_soon_threadsafe(func, *args)

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self.service.close()
            await self.service.wait_closed()

        try:
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[tuple[str, FakeTracker, ServiceThread]]:
    require("the management page in Chromium", root=False, tools=["chromium"])
    port = free_port()
    config = parse_config(yaml.safe_dump({
        "interface": "lo", "address": "127.0.0.1/8", "domain": "test.zone",
        "management": {"listen": f"127.0.0.1:{port}"},
    }))
    tracker = FakeTracker(classroom(time.time()))
    service = ManagementService(config, tracker, CollectorRegistry(), logging.getLogger("test.management"))
    with ServiceThread(service) as running:
        yield f"http://127.0.0.1:{port}/", tracker, running


def row_state(mac: str, state: str) -> str:
    return f"document.querySelector('tr[data-mac=\"{mac}\"][data-state=\"{state}\"]') !== null"


def timeline_bars(mac: str) -> str:
    return f"[...document.querySelectorAll('#timeline[data-mac=\"{mac}\"] .bar')].map(b => b.dataset.phase)"


def test_the_page_follows_a_boot_live(page: tuple[str, FakeTracker, ServiceThread], tmp_path: Path) -> None:
    url, tracker, running = page
    started = time.time() - sum(DURATIONS) - 2  # its first events are a little in the past

    def reach(count: int, booted: bool = False) -> None:
        running.call(tracker.put, boot_row(LIVE, name="dhcp-21", address="10.20.17.21", started=started,
                                           reached=count, booted=booted, durations=DURATIONS))

    with Browser(width=1360, height=860) as browser:
        browser.open(url)
        browser.wait_for(row_state(STUCK, "stuck"), timeout=20)
        assert browser.evaluate("document.querySelectorAll('#machines tbody tr').length") == 6
        assert browser.evaluate("document.getElementById('connection').dataset.state") == "live"
        # The machine booting now: a new row, then one phase after another, no reload.
        for count in range(1, len(PHASES) + 1):
            reach(count, booted=count == len(PHASES))
            state = "booted" if count == len(PHASES) else "booting"
            browser.wait_for(row_state(LIVE, state), timeout=10)
            # Not clicked yet: the timeline follows the most recently seen machine, this one.
            bars = browser.wait_for(f"(b => b.length === {count} && b)({timeline_bars(LIVE)})", timeout=10)
            assert bars == list(PHASES[:count])
            phase_cell = browser.evaluate(f"document.querySelector('tr[data-mac=\"{LIVE}\"] td[data-phase]')"
                                          ".dataset.phase")
            assert phase_cell == PHASES[count - 1]
        labels = browser.evaluate("[...document.querySelectorAll('#timeline .bar')].map(b => b.textContent)")
        assert labels[3].startswith("Kernel 3.1 s") and labels[4].startswith("Initrd 8.6 s")
        assert "booted in" in browser.evaluate("document.getElementById('timeline-summary').textContent")

        # The filter hides what is not stuck; "all" brings every row back.
        browser.evaluate("document.querySelector('#filter [data-filter=stuck]').click()")
        visible = "[...document.querySelectorAll('#machines tbody tr:not([hidden])')].map(r => r.dataset.mac)"
        assert browser.wait_for(f"(v => v.length === 1 && v)({visible})", timeout=5) == [STUCK]
        browser.evaluate("document.querySelector('#filter [data-filter=all]').click()")
        browser.wait_for(f"{visible}.length === 7", timeout=5)

        # A click on a row draws that machine's boot instead, and it stays chosen.
        browser.evaluate(f"document.querySelector('tr[data-mac=\"{STUCK}\"]').click()")
        assert browser.wait_for(f"(b => b.length === 4 && b)({timeline_bars(STUCK)})", timeout=5) == list(PHASES[:4])
        assert "stuck after" in browser.evaluate("document.getElementById('timeline-summary').textContent")
        stuck_shot = browser.screenshot(tmp_path / "management-stuck.png")
        browser.evaluate(f"document.querySelector('tr[data-mac=\"{LIVE}\"]').click()")
        browser.wait_for(f"{timeline_bars(LIVE)}.length === 6", timeout=5)

        shot = browser.screenshot(tmp_path / "management-page.png")
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshots: {shot} {stuck_shot}")


def test_the_browser_runs_inside_a_namespace(lab: Lab, tmp_path: Path) -> None:
    """Chromium in the appliance's namespace reaches what listens on that namespace's loopback."""
    require("chromium in a network namespace", tools=["chromium"])
    (tmp_path / "index.html").write_text("<title>inside</title><p id=where>inside the namespace</p>")
    port = 8067
    server = subprocess.Popen(
        lab.server_argv([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]),
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        with Browser(netns=lab.server_ns) as browser:
            deadline = time.monotonic() + 10
            while True:  # until the server in the namespace listens
                try:
                    browser.open(f"http://127.0.0.1:{port}/", timeout=5)
                    break
                except BrowserError:  # net::ERR_CONNECTION_REFUSED
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            text = browser.wait_for("document.getElementById('where')?.textContent", timeout=5)
            assert text == "inside the namespace"
            pid = browser.pid
            netns = subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True, text=True).stdout
            assert netns.strip() == lab.server_ns
        assert not Path(f"/proc/{pid}").exists()  # ended with the Browser
    finally:
        end_process(server)
