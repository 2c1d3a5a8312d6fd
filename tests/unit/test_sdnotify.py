"""sd_notify: a datagram socket stands in for systemd; `serve` reports READY, RELOADING, STOPPING."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidus_appliance import runtime
from sidus_appliance.config import parse_config
from sidus_appliance.sdnotify import Notifier


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[socket.socket]:
    """What systemd listens on: an AF_UNIX datagram socket at a path."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    yield sock
    sock.close()


def fields(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    assert data.endswith("\n"), data
    return dict(line.split("=", 1) for line in data.splitlines())


def test_ready_reaches_a_path_socket_and_the_variable_leaves_the_environment(systemd: socket.socket) -> None:
    environ = {"NOTIFY_SOCKET": systemd.getsockname(), "OTHER": "x"}
    notifier = Notifier(environ)
    assert notifier.ready("serving dhcp")
    assert fields(systemd) == {"READY": "1", "STATUS": "serving dhcp"}
    assert environ == {"OTHER": "x"}  # a child process must not report for us
    notifier.close()


def test_abstract_address_with_at_sign() -> None:
    name = f"sidus-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.stopping("SIGTERM received")
        assert fields(sock) == {"STOPPING": "1", "STATUS": "SIGTERM received"}
        notifier.close()


def test_reloading_carries_the_monotonic_time(systemd: socket.socket) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": systemd.getsockname()})
    before = time_usec()
    assert notifier.reloading()
    got = fields(systemd)
    assert got["RELOADING"] == "1" and before <= int(got["MONOTONIC_USEC"]) <= time_usec()
    notifier.close()


def time_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


@pytest.mark.parametrize("value", ["", "vsock:2:1234", "relative/path"])
def test_without_a_usable_socket_every_call_is_a_no_op(value: str) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": value} if value else {})
    assert not notifier.enabled
    assert notifier.ready("x") is False and notifier.stopping() is False


def test_a_status_never_adds_a_line(systemd: socket.socket) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": systemd.getsockname()})
    notifier.status("bad config\nREADY=1")
    assert fields(systemd) == {"STATUS": "bad config READY=1"}
    notifier.close()


def test_a_vanished_socket_is_warned_once_and_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.ready("a") is False and notifier.ready("b") is False
    assert sum("sd_notify: cannot reach" in r.message for r in caplog.records) == 1
    notifier.close()


# --------------------------------------------------------------------------- the appliance


def quiet_config(state: Path) -> str:
    """No service at all: the appliance only opens state_dir, reports, and waits."""
    return (
        "interface: eth1\naddress: 10.20.17.254/24\ndomain: sidus.zone\n"
        f"state_dir: {state}\ndhcp: {{enabled: false}}\ndns: {{enabled: false}}\ntftp: {{enabled: false}}\n"
        "http: {enabled: false}\nmanagement: {enabled: false}\n"
    )


def test_appliance_reports_ready_reloading_ready_stopping(
    tmp_path: Path, systemd: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime.gc, "freeze", lambda: None)
    state = tmp_path / "state"
    state.mkdir()
    config_path = tmp_path / "config.yaml"
    config_path.write_text(quiet_config(state))
    notifier = Notifier({"NOTIFY_SOCKET": systemd.getsockname()})
    appliance = runtime.Appliance(parse_config(config_path.read_text()), config_path, notifier)
    systemd.setblocking(False)
    seen: list[dict[str, str]] = []

    def drain() -> None:
        while True:
            try:
                seen.append(fields(systemd))
            except BlockingIOError:
                return

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = loop.create_task(appliance.run())
        while not seen:  # READY comes once run() has started everything
            await asyncio.sleep(0.01)
            drain()
        appliance.reload()  # what SIGHUP calls
        config_path.write_text("interface: [\n")  # a broken config: refused, the running one kept
        appliance.reload()
        appliance._stop(signal.SIGTERM)
        await asyncio.wait_for(task, 5)
        drain()

    asyncio.run(main())
    notifier.close()
    kinds = [next(iter(message)) for message in seen]
    assert kinds == ["READY", "RELOADING", "READY", "RELOADING", "READY", "STOPPING"], seen
    assert seen[0]["STATUS"] == "serving nothing on eth1 (10.20.17.254/24)"
    assert "MONOTONIC_USEC" in seen[1]
    assert seen[2]["STATUS"] == seen[0]["STATUS"]
    assert "reload was refused" in seen[4]["STATUS"]
    assert seen[5]["STATUS"] == "SIGTERM received: shutting down"


def test_serve_reports_why_it_did_not_start(tmp_path: Path, systemd: socket.socket,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    config_path = tmp_path / "config.yaml"
    config_path.write_text(quiet_config(tmp_path / "missing-state"))
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.getsockname())
    monkeypatch.setattr(runtime, "check_paths", lambda config: None)
    monkeypatch.setattr(runtime, "check_interface", lambda config: None)
    assert runtime.serve(config_path) == 2
    got = fields(systemd)
    assert got["STATUS"].startswith("not started: state_dir:") and "does not exist" in got["STATUS"]
    assert "NOTIFY_SOCKET" not in os.environ
