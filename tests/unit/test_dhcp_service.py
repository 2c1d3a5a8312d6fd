"""The DHCP service's log: one line per decision, in the one format `Decision.log_line` gives
(no socket is opened: `handle` decides and logs; sending without a socket is a no-op)."""

from __future__ import annotations

import logging
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from sidus_appliance.dhcp.leases import InMemoryLeaseStore
from sidus_appliance.dhcp.server import Decision
from sidus_appliance.dhcp.service import DhcpService

from .test_dhcp_server import SERVER, client_packet, config, mac

README = Path(__file__).resolve().parents[2] / "README.md"
IPXE0 = (("vendor_class_id", b"PXEClient:Arch:00000"), (93, b"\x00\x00"), ("user_class", b"iPXE"))
CLIENT = ("0.0.0.0", 68)


def test_the_readme_quotes_the_log_line_byte_for_byte() -> None:
    decision = Decision(mac="52:54:00:5a:00:01", message="REQUEST", action="ACK", address=IPv4Address("10.20.17.12"),
                        arch=0, boot_file="pxelinux.0", client="ipxe", reason="selecting")
    line = "dhcp: REQUEST from 52:54:00:5a:00:01 (ipxe, arch 0) -> ACK 10.20.17.12 boot pxelinux.0 (selecting)"
    assert decision.log_line() == line
    assert f"`{line}`" in README.read_text()
    assert str(decision) == line  # assertion messages show the same text, not a second form


def test_no_arch_no_address_no_boot_file() -> None:
    decision = Decision(mac=mac(1), message="DISCOVER", action="IGNORE", reason="pool exhausted")
    assert decision.log_line() == f"dhcp: DISCOVER from {mac(1)} (plain, arch -) -> IGNORE (pool exhausted)"


def test_the_service_logs_each_decision_with_its_log_line(caplog: pytest.LogCaptureFixture) -> None:
    service = DhcpService(config(), InMemoryLeaseStore(), logging.getLogger("test.dhcp"))
    with caplog.at_level(logging.INFO, logger="test.dhcp"):
        service.handle(client_packet("discover", mac(1), *IPXE0), CLIENT)
        service.handle(client_packet("request", mac(1), ("server_id", SERVER), ("requested_addr", "10.20.17.10"),
                                     *IPXE0), CLIENT)
        service.handle(client_packet("discover", mac(2)), CLIENT)
        service.handle(client_packet("request", mac(2), ("server_id", SERVER), ("requested_addr", "10.20.17.13")),
                       CLIENT)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", f"dhcp: DISCOVER from {mac(1)} (ipxe, arch 0) -> OFFER 10.20.17.10 boot pxelinux.0 (pool)"),
        ("INFO", f"dhcp: REQUEST from {mac(1)} (ipxe, arch 0) -> ACK 10.20.17.10 boot pxelinux.0 (selecting)"),
        ("INFO", f"dhcp: DISCOVER from {mac(2)} (plain, arch -) -> OFFER 10.20.17.11 (pool)"),
        ("WARNING", f"dhcp: REQUEST from {mac(2)} (plain, arch -) -> NAK 10.20.17.13 (selecting: 10.20.17.13 "
                    "requested, client's address is 10.20.17.11)"),
    ]


def test_a_percent_sign_in_a_decision_is_logged_as_is(caplog: pytest.LogCaptureFixture) -> None:
    """The line is an argument, never a format string (a held-back count is appended to it)."""
    service = DhcpService(config(), InMemoryLeaseStore(), logging.getLogger("test.dhcp"))
    decision = Decision(mac=mac(1), message="REQUEST", action="NAK", reason="100% wrong")
    with caplog.at_level(logging.INFO, logger="test.dhcp"):
        service._log_decision(decision, CLIENT)
        service._log_decision(decision, CLIENT)  # muted for a minute
        service.warnings.clock = lambda: float("inf")
        service._log_decision(decision, CLIENT)
    assert [r.getMessage() for r in caplog.records] == [
        decision.log_line(), decision.log_line() + " (1 similar suppressed)"]
