"""`sidus-appliance status` against a real ManagementService (fake tracker) over loopback."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from sidus_appliance.cli import main
from sidus_appliance.cli.status import format_table
from sidus_appliance.config import load_config
from sidus_appliance.observe.web import ManagementService

from ..fake_tracker import FakeTracker, boot_row

NOW = 1_796_049_330.0
ROWS = [
    boot_row("52:54:00:5a:00:02", name="dhcp-100", address="10.20.17.100", started=NOW - 40.2, reached=6, booted=True),
    boot_row("52:54:00:5a:00:01", name="dhcp-12", address="10.20.17.12", started=NOW - 600, reached=4, stuck=True),
    boot_row("08:00:aa:bb:cc:dd", name="master", address="10.20.17.253", started=NOW - 7300, reached=3, arch=7,
             loader="efi64/syslinux.efi", profile="master"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path: Path, port: int, token: str | None) -> Path:
    management: dict[str, object] = {"listen": f"127.0.0.1:{port}"}
    if token:
        management["token"] = token
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"interface": "lo", "address": "127.0.0.1/8", "domain": "test.zone",
                                    "management": management}))
    return path


def serving(tmp_path: Path, token: str | None, client: Callable[[Path, int], None]) -> None:
    """Run `client(config_path, port)` in a thread while the endpoint serves on this loop."""
    port = free_port()
    config_path = write_config(tmp_path, port, token)

    async def run() -> None:
        service = ManagementService(load_config(config_path), FakeTracker(ROWS), CollectorRegistry(),
                                    logging.getLogger("test.status"), clock=lambda: NOW)
        await service.start()
        try:
            await asyncio.to_thread(client, config_path, port)
        finally:
            service.close()
            await service.wait_closed()

    asyncio.run(run())


def test_status_prints_the_table_sorted_by_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def client(config_path: Path, port: int) -> None:
        assert main(["status", "--url", f"http://127.0.0.1:{port}/"]) == 0

    serving(tmp_path, None, client)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "MAC", "ADDRESS", "FIRMWARE", "LOADER", "PROFILE", "PHASE", "STATE", "BOOT",
                                "LAST", "SEEN"]
    assert lines[1].split() == ["dhcp-12", "52:54:00:5a:00:01", "10.20.17.12", "pxe/BIOS", "pxelinux.0", "default",
                                "kernel", "stuck", "at", "kernel", "8.9s", "9m", "ago"]
    assert lines[2].split() == ["dhcp-100", "52:54:00:5a:00:02", "10.20.17.100", "pxe/BIOS", "pxelinux.0", "default",
                                "system-dhcp", "booted", "13.5s", "27s", "ago"]
    assert lines[3].split()[:8] == ["master", "08:00:aa:bb:cc:dd", "10.20.17.253", "pxe/UEFI64", "efi64/syslinux.efi",
                                    "master", "menu", "booting"]
    assert lines[3].split()[-2:] == ["2h", "ago"]
    assert lines[4] == "3 machine(s): 1 booting, 1 booted, 1 stuck"
    assert lines[0].index("ADDRESS") == lines[1].index("10.20.17.12")  # aligned columns


def test_status_takes_url_and_token_from_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIDUS_MANAGEMENT_TOKEN", raising=False)

    def client(config_path: Path, port: int) -> None:
        url = f"http://127.0.0.1:{port}"
        assert main(["status", "--url", url]) == 1  # no token
        assert main(["status", "--url", url, "--token", "wrong"]) == 1
        assert main(["status", "--config", str(config_path), "--state", "stuck"]) == 0
        assert main(["status", "--url", url, "--token", "t0ken", "--json"]) == 0

    serving(tmp_path, "t0ken", client)
    captured = capsys.readouterr()
    assert captured.err.count("401, a token is required") == 2
    out = captured.out
    assert "dhcp-12" in out and "3 machine(s): 1 booting, 1 booted, 1 stuck (showing stuck)" in out
    assert out.count("dhcp-100") == 1  # only in the --json output, not in the stuck-only table
    assert '"now": 1796049330.0' in out


def test_status_token_from_the_environment(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDUS_MANAGEMENT_TOKEN", "t0ken")

    def client(config_path: Path, port: int) -> None:
        assert main(["status", "--url", f"http://127.0.0.1:{port}"]) == 0

    serving(tmp_path, "t0ken", client)
    assert "3 machine(s)" in capsys.readouterr().out


def test_status_explains_an_unreachable_endpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = write_config(tmp_path, free_port(), None)  # nothing listens there
    assert main(["status", "--config", str(config_path), "--timeout", "5"]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach {load_config(config_path).management.url}/api/machines" in err
    assert "is `serve` running" in err


def test_format_table_with_no_machines() -> None:
    assert format_table({"now": NOW, "machines": []}) == "0 machine(s): 0 booting, 0 booted, 0 stuck"
