"""RA quench: RS validation, the bare RA's layout, the rate limit, link-local lookup, config and wiring."""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
from pathlib import Path

import pytest
from scapy.layers.inet6 import ICMPv6ND_RA, ICMPv6ND_RS, ICMPv6NDOptSrcLLAddr

from sidus_appliance.config import describe, parse_config
from sidus_appliance.dhcp.leases import LeaseStore
from sidus_appliance.ra import (
    ICMPV6_RA,
    ICMPV6_RS,
    RaQuenchService,
    RaResponder,
    RouterSolicitation,
    build_ra,
    icmp6_filter_only,
    link_local_address,
    parse_rs,
)
from sidus_appliance.runtime import build_services

LL = "fe80::5054:ff:fe12:3456"


def rs_bytes(mac: str | None = None) -> bytes:
    packet = ICMPv6ND_RS()
    if mac:
        packet = packet / ICMPv6NDOptSrcLLAddr(lladdr=mac)
    return bytes(packet)


def test_rs_with_source_lladdr() -> None:
    rs = parse_rs(rs_bytes("52:54:00:12:34:56"), LL, 255)
    assert rs == RouterSolicitation(LL, "52:54:00:12:34:56")


def test_rs_without_options_and_unknown_hop_limit() -> None:
    assert parse_rs(rs_bytes(), "::", None) == RouterSolicitation("::", None)


@pytest.mark.parametrize(
    ("data", "source", "hop_limit", "reason"),
    [
        (rs_bytes(), LL, 64, "hop limit 64"),
        (rs_bytes()[:7], LL, 255, "shorter"),
        (bytes([ICMPV6_RA]) + rs_bytes()[1:], LL, 255, "type 134"),
        (bytes([ICMPV6_RS, 1]) + rs_bytes()[2:], LL, 255, "code 1"),
        (rs_bytes() + b"\x01\x00" + bytes(6), LL, 255, "length 0"),
        (rs_bytes() + b"\x01\x02" + bytes(6), LL, 255, "past the message"),
        (rs_bytes() + b"\x01", LL, 255, "truncated"),
        (rs_bytes("52:54:00:12:34:56"), "::", 255, "unspecified"),
    ],
)
def test_invalid_rs_is_dropped_with_a_reason(data: bytes, source: str, hop_limit: int, reason: str) -> None:
    result = parse_rs(data, source, hop_limit)
    assert isinstance(result, str)
    assert reason in result


def test_bare_ra_layout() -> None:
    data = build_ra()
    assert len(data) == 16  # ICMPv6 header + RA fixed part, no options
    ra = ICMPv6ND_RA(data)
    assert ra.type == 134 and ra.code == 0
    assert ra.chlim == 0  # hop limit unspecified: hosts keep theirs
    assert ra.M == 0 and ra.O == 0  # no DHCPv6
    assert ra.routerlifetime == 0  # not a default router
    assert ra.reachabletime == 0 and ra.retranstimer == 0
    assert ra.payload.__class__.__name__ == "NoPayload"  # no prefix or any other option
    assert data[2:4] == b"\0\0"  # the kernel writes the checksum of a raw ICMPv6 socket


def test_first_solicitation_answers_after_jitter_only() -> None:
    core = RaResponder()
    assert core.solicited(100.0, 0.2) == pytest.approx(100.2)


def test_solicitations_while_scheduled_share_one_ra() -> None:
    core = RaResponder()
    assert core.solicited(100.0, 0.3) is not None
    assert core.solicited(100.1, 0.0) is None
    core.sent(100.3)
    assert core.solicited(100.4, 0.0) == pytest.approx(103.3)  # MIN_DELAY_BETWEEN_RAS after the last


def test_rate_limit_is_one_ra_per_three_seconds() -> None:
    core = RaResponder()
    sent: list[float] = []
    pending: float | None = None
    for tick in range(300):  # a storm: one solicitation every 100 ms for 30 s
        now = tick / 10
        if pending is not None and now >= pending:  # what the event loop's timer does
            core.sent(now)
            sent.append(now)
            pending = None
        due = core.solicited(now, 0.0)
        if due is not None:
            pending = due
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert gaps and min(gaps) >= 3.0 - 1e-9
    assert 9 <= len(sent) <= 11


def test_no_solicitation_no_ra() -> None:
    core = RaResponder()
    assert core.scheduled is None and core.last_sent is None


def test_cancelled_send_lets_the_next_rs_reschedule() -> None:
    core = RaResponder()
    core.solicited(1.0, 0.0)
    core.cancelled()
    assert core.solicited(2.0, 0.0) == pytest.approx(2.0)


IF_INET6 = """\
00000000000000000000000000000001 01 80 10 80       lo
fe800000000000005054fffffe123456 03 40 20 c0     eth1
fd000000000000000000000000000002 02 40 00 80     eth0
fe8000000000000000fc00fffe000001 02 40 20 80     eth0
"""


def test_link_local_lookup_skips_tentative_and_other_interfaces() -> None:
    assert link_local_address("eth0", IF_INET6) == "fe80::fc:ff:fe00:1"
    assert link_local_address("eth1", IF_INET6) is None  # 0x40: DAD still running
    assert link_local_address("eth9", IF_INET6) is None


def test_icmp6_filter_passes_rs_only() -> None:
    words = struct.unpack("=8I", icmp6_filter_only(ICMPV6_RS))
    blocked = {t for t in range(256) if words[t >> 5] >> (t & 31) & 1}
    assert blocked == set(range(256)) - {ICMPV6_RS}


BASE = "interface: eth1\naddress: 10.20.17.254/24\ndomain: sidus.zone\n"


def test_config_default_on_and_switch_off() -> None:
    assert parse_config(BASE).dhcp.ipv6_ra_quench is True
    assert parse_config(BASE + "dhcp:\n  ipv6_ra_quench: false\n").dhcp.ipv6_ra_quench is False
    assert "bare RA (lifetime 0)" in describe(parse_config(BASE))


def test_build_services_adds_ra_only_with_dhcp_and_the_flag(tmp_path: Path) -> None:
    leases = LeaseStore(tmp_path / "leases.journal")
    try:
        assert "ra" in build_services(parse_config(BASE), leases)
        assert "ra" not in build_services(parse_config(BASE + "dhcp:\n  ipv6_ra_quench: false\n"), leases)
        assert "ra" not in build_services(parse_config(BASE + "dhcp:\n  enabled: false\n"), leases)
    finally:
        leases.close()


def test_start_without_ipv6_on_the_interface_never_fails(caplog: pytest.LogCaptureFixture) -> None:
    config = parse_config(BASE).with_overrides(interface="sidus-nonexistent")
    service = RaQuenchService(config, None, logging.getLogger("sidus.ra"))
    with caplog.at_level(logging.INFO, logger="sidus.ra"):
        asyncio.run(service.start())
    assert service.sock is None
    assert "not answering Router Solicitations" in caplog.text
    service.close()
