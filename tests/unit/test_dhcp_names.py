"""Option 12 of the OFFER and ACK says the name DNS publishes for the lease: bytes in, bytes
out, and the zone built from the very lease table the core left behind."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from dnslib import QTYPE

from sidus_appliance.dhcp.codec import DhcpPacket
from sidus_appliance.dhcp.leases import BOUND, Lease
from sidus_appliance.dhcp.names import ClientNames
from sidus_appliance.dns.zone import ZoneBuilder, build_zone, held_names, reverse_name

from .test_dhcp_server import CONFIG, MASTER, T0, Harness, client_packet, config, mac

FINITE = CONFIG.replace("dhcp:\n", "dhcp:\n  lease_time: 3600\n")


def told(reply: DhcpPacket) -> str:
    return reply.options[12].decode()


def published(h: Harness, address: IPv4Address) -> tuple[str, list[str]]:
    """(the PTR name of `address`, the A records of that name) in the zone built from h's leases."""
    zone = build_zone(h.server.config, h.store.all())
    ptr = [str(rr.rdata) for rr in zone.lookup(reverse_name(address), QTYPE.PTR).answer]
    assert len(ptr) == 1, ptr
    a = [str(rr.rdata) for rr in zone.lookup(ptr[0].rstrip("."), QTYPE.A).answer if rr.rtype == QTYPE.A]
    return ptr[0], a


def assert_dns_agrees(h: Harness, ack: DhcpPacket) -> None:
    assert published(h, ack.yiaddr) == (f"{told(ack)}.sidus.zone.", [str(ack.yiaddr)])


def renew(h: Harness, mac_: str, address: IPv4Address, hostname: bytes) -> DhcpPacket:
    ack, _, decision = h.one(client_packet("request", mac_, ("hostname", hostname), ciaddr=str(address)))
    assert ack.message_type == 5, decision
    return ack


def test_offer_and_ack_tell_the_client_the_name_dns_publishes() -> None:
    h = Harness()
    offer, _, _ = h.one(client_packet("discover", mac(1), ("hostname", b"PC-One.lab")))
    ack = h.dora(mac(1), ("hostname", b"PC-One.lab"))
    assert told(offer) == told(ack) == "pc-one"  # dns_label: first label, lowercase
    assert_dns_agrees(h, ack)
    assert h.store.by_mac(mac(1)).hostname == "dhcp-10"  # type: ignore[union-attr]  # the lease keeps its own


@pytest.mark.parametrize("hostname", [b"master", b"gateway", b"dhcp-12", b"DHCP-12.other", b"-"])
def test_a_name_dns_will_not_give_leaves_the_pool_name(hostname: bytes) -> None:
    h = Harness()
    ack = h.dora(mac(1), ("hostname", hostname))
    assert told(ack) == "dhcp-10"
    assert_dns_agrees(h, ack)


def test_a_reservation_keeps_its_name() -> None:
    h = Harness()
    ack = h.dora(MASTER, ("hostname", b"boss-pc"))
    assert told(ack) == "master"
    assert published(h, ack.yiaddr)[0] == "master.sidus.zone."


def test_two_clients_with_one_name_the_latest_lease_wins_it() -> None:
    h = Harness(config(FINITE))
    first = h.dora(mac(1), ("hostname", b"twin"))
    second = h.dora(mac(2), ("hostname", b"twin"))
    assert told(first) == told(second) == "twin"
    assert_dns_agrees(h, second)
    assert published(h, first.yiaddr)[0] == "dhcp-10.sidus.zone."  # the first lost it in DNS
    h.now += 60
    again = renew(h, mac(1), first.yiaddr, b"twin")  # a renewal commits: the first is latest again
    assert told(again) == "twin"
    assert_dns_agrees(h, again)
    assert published(h, second.yiaddr)[0] == "dhcp-11.sidus.zone."


def test_an_unchanged_infinite_lease_does_not_take_the_name_back() -> None:
    h = Harness()  # infinite leases: a renewal that changes nothing is not committed
    first = h.dora(mac(1), ("hostname", b"twin"))
    h.dora(mac(2), ("hostname", b"twin"))
    again = renew(h, mac(1), first.yiaddr, b"twin")
    assert told(again) == "dhcp-10"
    assert_dns_agrees(h, again)
    offer, _, _ = h.one(client_packet("discover", mac(1), ("hostname", b"twin")))
    assert told(offer) == "dhcp-10"  # its REQUEST would change nothing either


def test_a_name_the_reloaded_config_takes_is_the_pool_name_again() -> None:
    h = Harness()
    ack = h.dora(mac(1), ("hostname", b"newbox"))
    assert told(ack) == "newbox"
    h.server.reload(config(CONFIG + '  - {name: newbox, mac: "52:54:00:00:00:99", address: 10.20.17.200}\n'))
    again = renew(h, mac(1), ack.yiaddr, b"newbox")
    assert told(again) == "dhcp-10"
    assert_dns_agrees(h, again)


def test_an_expired_later_claim_gives_the_name_back() -> None:
    names = ClientNames(config(), [])
    forever = Lease(mac(1), IPv4Address("10.20.17.10"), "dhcp-10", None, BOUND, "twin")
    brief = Lease(mac(2), IPv4Address("10.20.17.11"), "dhcp-11", T0 + 60, BOUND, "twin")
    names.changed(None, forever)
    names.changed(None, brief)
    assert names.holder("twin", T0) == mac(2)
    assert names.holder("twin", T0 + 61) == mac(1)  # the zone leaves expired leases out
    assert names.published(mac(1), "twin", "dhcp-10", T0 + 61, last=False) == "twin"
    names.changed(forever, None)
    assert names.holder("twin", T0 + 61) is None


def test_held_names_are_the_zones_taken_forward_names() -> None:
    cfg = config(CONFIG + "dns:\n  records:\n    - {name: filer, type: CNAME, value: gateway}\n"
                 "    - {name: www, type: A, value: 10.20.17.5}\n    - {name: mail, type: MX, value: gateway}\n")
    builder = ZoneBuilder()
    builder.content(cfg)
    taken = builder._static.taken  # type: ignore[union-attr]
    forward = {owner for owner in taken if owner.endswith(".sidus.zone")}
    assert {owner for owner in held_names(cfg) if owner.endswith(".sidus.zone")} == forward
    assert {"gateway.sidus.zone", "master.sidus.zone", "filer.sidus.zone", "www.sidus.zone",
            "mail.sidus.zone", "dhcp-10.sidus.zone"} <= forward
