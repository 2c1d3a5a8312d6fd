"""The DHCP policy core, fed with client packets built by scapy (and raw bytes)."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.dhcp import BOOTP, DHCP

from sidus_appliance.config import Config, parse_config
from sidus_appliance.dhcp.codec import DhcpPacket, parse
from sidus_appliance.dhcp.leases import InMemoryLeaseStore, LeaseStore
from sidus_appliance.dhcp.server import DECLINE_HOLD, OFFER_HOLD, Decision, DhcpServer, Reply

CONFIG = """
interface: eth1
address: 10.20.17.254/24
gateway: 10.20.17.1
dns_servers: [10.20.17.254, 10.20.17.2]
domain: sidus.zone
dhcp:
  pool: {start: 10.20.17.10, end: 10.20.17.14}
hosts:
  - {name: master, mac: "08:00:aa:bb:cc:dd", address: 10.20.17.253, profile: master}
"""
SERVER = "10.20.17.254"
MASTER = "08:00:aa:bb:cc:dd"
T0 = 1_700_000_000.0


def config(text: str = CONFIG) -> Config:
    return parse_config(text)


def mac(n: int) -> str:
    return f"52:54:00:00:00:{n:02x}"


def client_packet(kind: str, mac_: str, *opts: Any, xid: int = 7, op: int = 1, flags: int = 0,
                  ciaddr: str = "0.0.0.0", giaddr: str = "0.0.0.0", hops: int = 0) -> bytes:
    return bytes(
        BOOTP(op=op, chaddr=bytes.fromhex(mac_.replace(":", "")), xid=xid, flags=flags, ciaddr=ciaddr,
              giaddr=giaddr, hops=hops)
        / DHCP(options=[("message-type", kind), *opts, "end"])
    )


PXE7 = (("vendor_class_id", b"PXEClient:Arch:00007:UNDI:003016"), (93, b"\x00\x07"))


class Harness:
    def __init__(self, cfg: Config | None = None, store: LeaseStore | None = None) -> None:
        self.store = store if store is not None else InMemoryLeaseStore()
        self.server = DhcpServer(cfg or config(), self.store)
        self.now = T0

    def send(self, data: bytes) -> tuple[list[Reply], Decision]:
        return self.server.handle(data, self.now)

    def one(self, data: bytes) -> tuple[DhcpPacket, Reply, Decision]:
        replies, decision = self.send(data)
        assert len(replies) == 1, decision
        return parse(replies[0].data), replies[0], decision

    def none(self, data: bytes) -> Decision:
        replies, decision = self.send(data)
        assert replies == [], decision
        return decision

    def dora(self, mac_: str, *opts: Any) -> DhcpPacket:
        offer, _, _ = self.one(client_packet("discover", mac_, *opts))
        ack, _, decision = self.one(client_packet(
            "request", mac_, ("server_id", SERVER), ("requested_addr", str(offer.yiaddr)), *opts))
        assert ack.message_type == 5, decision
        return ack


@pytest.fixture
def h() -> Harness:
    return Harness()


def ip(text: str) -> IPv4Address:
    return IPv4Address(text)


# --------------------------------------------------------------------------- DISCOVER / REQUEST


def test_plain_discover_gets_an_offer_with_every_option(h: Harness) -> None:
    offer, reply, decision = h.one(client_packet("discover", mac(1)))
    assert offer.op == 2 and offer.message_type == 2 and offer.xid == 7
    assert offer.yiaddr == ip("10.20.17.10")
    o = offer.options
    assert o[54] == ip(SERVER).packed
    assert o[1] == ip("255.255.255.0").packed
    assert o[3] == ip("10.20.17.1").packed
    assert o[6] == ip("10.20.17.254").packed + ip("10.20.17.2").packed
    assert o[15] == b"sidus.zone"
    assert o[12] == b"dhcp-10"
    assert o[28] == ip("10.20.17.255").packed
    assert o[51] == b"\xff\xff\xff\xff"
    assert 58 not in o and 59 not in o  # infinite lease: no renewal timers
    assert not {60, 66, 67, 43, 175} & o.keys() and offer.file == b"" and offer.siaddr == ip("0.0.0.0")
    assert (decision.action, decision.client, decision.boot_file) == ("OFFER", "plain", None)
    assert reply.destination == ("10.20.17.10", 68) and reply.broadcast is False
    assert reply.mac == mac(1) and reply.yiaddr == ip("10.20.17.10")


def test_full_dora_binds_the_lease(h: Harness) -> None:
    ack = h.dora(mac(1), ("hostname", b"pc-one"))
    assert ack.yiaddr == ip("10.20.17.10")
    assert ack.options[12] == b"pc-one"  # the name DNS publishes for it (see the names section)
    lease = h.store.by_mac(mac(1))
    assert lease is not None
    assert (lease.state, lease.address, lease.hostname, lease.expires) == ("bound", ack.yiaddr, "dhcp-10", None)
    assert lease.client_hostname == "pc-one"


def test_broadcast_flag_gives_broadcast_reply(h: Harness) -> None:
    _, reply, _ = h.one(client_packet("discover", mac(1), flags=0x8000))
    assert reply.destination == ("255.255.255.255", 68) and reply.broadcast is True


def test_each_client_gets_its_own_address_and_keeps_it(h: Harness) -> None:
    first = h.dora(mac(1)).yiaddr
    second = h.dora(mac(2)).yiaddr
    assert first != second
    again, _, decision = h.one(client_packet("discover", mac(1)))
    assert again.yiaddr == first and "bound lease" in decision.reason
    assert h.dora(mac(1)).yiaddr == first


def test_discover_honours_a_free_requested_address(h: Harness) -> None:
    offer, _, _ = h.one(client_packet("discover", mac(1), ("requested_addr", "10.20.17.13")))
    assert offer.yiaddr == ip("10.20.17.13")
    taken, _, _ = h.one(client_packet("discover", mac(2), ("requested_addr", "10.20.17.13")))
    assert taken.yiaddr == ip("10.20.17.10")
    outside, _, _ = h.one(client_packet("discover", mac(3), ("requested_addr", "10.20.17.200")))
    assert outside.yiaddr == ip("10.20.17.11")


def test_unanswered_offer_is_released_after_the_hold(h: Harness) -> None:
    assert h.one(client_packet("discover", mac(1)))[0].yiaddr == ip("10.20.17.10")
    assert h.one(client_packet("discover", mac(2)))[0].yiaddr == ip("10.20.17.11")
    h.now += OFFER_HOLD + 1
    assert h.one(client_packet("discover", mac(3)))[0].yiaddr == ip("10.20.17.10")
    assert h.store.by_mac(mac(1)) is None


def test_request_for_another_server_drops_our_offer(h: Harness) -> None:
    h.one(client_packet("discover", mac(1)))
    decision = h.none(client_packet("request", mac(1), ("server_id", "10.20.17.99"),
                                    ("requested_addr", "10.20.17.10")))
    assert decision.action == "IGNORE" and "10.20.17.99" in decision.reason
    assert h.store.by_mac(mac(1)) is None
    assert h.one(client_packet("discover", mac(2)))[0].yiaddr == ip("10.20.17.10")


def test_selecting_with_a_wrong_address_is_naked(h: Harness) -> None:
    h.one(client_packet("discover", mac(1)))
    nak, reply, decision = h.one(client_packet("request", mac(1), ("server_id", SERVER),
                                               ("requested_addr", "10.20.17.12")))
    assert nak.message_type == 6 and decision.action == "NAK"
    assert nak.yiaddr == ip("0.0.0.0") and 51 not in nak.options and nak.options[54] == ip(SERVER).packed
    assert reply.destination == ("255.255.255.255", 68) and reply.broadcast


def test_selecting_after_the_offer_expired_still_acks_a_free_address(h: Harness) -> None:
    h.one(client_packet("discover", mac(1)))
    h.now += OFFER_HOLD * 3
    ack, _, _ = h.one(client_packet("request", mac(1), ("server_id", SERVER), ("requested_addr", "10.20.17.10")))
    assert ack.message_type == 5 and ack.yiaddr == ip("10.20.17.10")


def test_init_reboot(h: Harness) -> None:
    h.dora(mac(1))
    ack, _, decision = h.one(client_packet("request", mac(1), ("requested_addr", "10.20.17.10")))
    assert ack.message_type == 5 and decision.reason == "init-reboot"
    nak, _, _ = h.one(client_packet("request", mac(1), ("requested_addr", "10.20.17.12")))
    assert nak.message_type == 6
    wrong_net, _, decision = h.one(client_packet("request", mac(1), ("requested_addr", "192.168.1.5")))
    assert wrong_net.message_type == 6 and "not on" in decision.reason
    # Unknown client asking for a free address: RFC 2131 says stay silent.
    assert h.none(client_packet("request", mac(2), ("requested_addr", "10.20.17.12"))).action == "IGNORE"
    # Unknown client asking for someone else's address: refuse it.
    assert h.one(client_packet("request", mac(3), ("requested_addr", "10.20.17.10")))[0].message_type == 6


def test_renewing_and_rebinding(h: Harness) -> None:
    cfg = config(CONFIG.replace("dhcp:\n", "dhcp:\n  lease_time: 3600\n"))
    h = Harness(cfg)
    first = h.dora(mac(1))
    assert first.options[51] == (3600).to_bytes(4, "big")
    assert first.options[58] == (1800).to_bytes(4, "big") and first.options[59] == (3150).to_bytes(4, "big")
    h.now += 2000
    ack, reply, decision = h.one(client_packet("request", mac(1), ciaddr="10.20.17.10"))
    assert decision.reason == "renewing"
    assert ack.message_type == 5 and ack.ciaddr == ip("10.20.17.10") and ack.yiaddr == ip("10.20.17.10")
    assert reply.destination == ("10.20.17.10", 68) and not reply.broadcast
    lease = h.store.by_mac(mac(1))
    assert lease is not None and lease.expires == h.now + 3600
    # Someone renewing an address leased to another client is refused.
    nak, _, _ = h.one(client_packet("request", mac(2), ciaddr="10.20.17.10", flags=0x8000))
    assert nak.message_type == 6


def test_expired_bound_leases_are_reclaimed_only_when_the_pool_is_full() -> None:
    h = Harness(config(CONFIG.replace("dhcp:\n", "dhcp:\n  lease_time: 60\n")))
    addresses = [h.dora(mac(n)).yiaddr for n in range(1, 6)]
    h.now += 3600  # all expired
    assert h.one(client_packet("discover", mac(3)))[0].yiaddr == addresses[2]  # still its own
    offer, _, _ = h.one(client_packet("discover", mac(9)))
    assert offer.yiaddr in addresses
    assert h.store.by_address(offer.yiaddr).mac == mac(9)  # type: ignore[union-attr]


def test_request_without_any_address_is_ignored(h: Harness) -> None:
    assert h.none(client_packet("request", mac(1))).action == "IGNORE"


# --------------------------------------------------------------------------- PXE / iPXE


@pytest.mark.parametrize(("arch", "boot"), [
    (0, "pxelinux.0"), (6, "efi32/syslinux.efi"), (7, "efi64/syslinux.efi"), (9, "efi64/syslinux.efi"),
])
def test_arch_dispatch(h: Harness, arch: int, boot: str) -> None:
    vendor = f"PXEClient:Arch:{arch:05d}:UNDI:003016".encode()
    offer, _, decision = h.one(client_packet(
        "discover", mac(1), ("vendor_class_id", vendor), (93, arch.to_bytes(2, "big")),
        (97, b"\x00" + bytes(range(16)))))
    assert offer.file == boot.encode() and offer.options[67] == boot.encode()
    assert offer.siaddr == ip(SERVER) and offer.options[66] == SERVER.encode()
    assert offer.options[60] == b"PXEClient"
    assert offer.options[97] == b"\x00" + bytes(range(16))
    assert offer.options[43] == bytes((6, 1, 8, 255))
    assert (decision.client, decision.arch, decision.boot_file) == ("pxe", arch, boot)
    ack = h.dora(mac(1), ("vendor_class_id", vendor), (93, arch.to_bytes(2, "big")))
    assert ack.file == boot.encode() and ack.options[67] == boot.encode()


def test_unknown_arch_gets_the_bios_file_and_is_noted(h: Harness) -> None:
    offer, _, decision = h.one(client_packet("discover", mac(1), ("vendor_class_id", b"PXEClient"),
                                             (93, b"\x00\x0b")))
    assert offer.file == b"pxelinux.0"
    assert decision.arch == 11 and "unknown arch 11" in decision.reason


def test_arch_from_vendor_class_when_option_93_is_missing(h: Harness) -> None:
    offer, _, decision = h.one(client_packet("discover", mac(1),
                                             ("vendor_class_id", b"PXEClient:Arch:00007:UNDI:003016")))
    assert offer.file == b"efi64/syslinux.efi" and decision.arch == 7


def test_uefi_http_boot_is_offered_its_loader_as_an_http_url(h: Harness) -> None:
    http16 = (("vendor_class_id", b"HTTPClient:Arch:00016:UNDI:003001"), (93, b"\x00\x10"))
    offer, _, decision = h.one(client_packet("discover", mac(1), *http16))
    url = b"http://10.20.17.254/efi64/snponly.efi"
    assert offer.options[67] == url and offer.file == url
    assert offer.options[60] == b"HTTPClient" and 43 not in offer.options  # UEFI: an HTTP offer says so
    assert (decision.client, decision.arch) == ("http", 16)
    ack = h.dora(mac(1), *http16)
    assert ack.options[67] == url and ack.options[60] == b"HTTPClient"


def test_a_reservation_moves_its_machine_to_the_signed_chain() -> None:
    text = CONFIG.replace("profile: master}", "profile: master, boot_files: {7: efi64/shimx64.efi}}")
    h = Harness(config(text + "http: {port: 8080, transfer: http}\n"))
    offer, _, _ = h.one(client_packet("discover", MASTER, *PXE7))
    assert offer.file == b"efi64/shimx64.efi"  # firmware PXE: TFTP, the host's own loader
    other, _, _ = h.one(client_packet("discover", mac(2), *PXE7))
    assert other.file == b"efi64/syslinux.efi"
    ipxe, _, decision = h.one(client_packet("discover", mac(3), *PXE7, (77, b"iPXE")))
    assert ipxe.options[67] == b"http://10.20.17.254:8080/ipxe/01-52-54-00-00-00-03"
    assert decision.client == "ipxe"


def test_option_93_first_of_several_arches(h: Harness) -> None:
    offer, _, _ = h.one(client_packet("discover", mac(1), (93, b"\x00\x06\x00\x07")))
    assert offer.file == b"efi32/syslinux.efi"


def test_option_93_without_vendor_class_still_boots(h: Harness) -> None:
    """dhclient/udhcpc configured to send option 93 (`-x 0x5d:0007`) keep their own vendor class."""
    offer, _, decision = h.one(client_packet("discover", mac(1), ("vendor_class_id", b"udhcp 1.35.0"),
                                             (93, b"\x00\x07")))
    assert offer.file == b"efi64/syslinux.efi" and offer.options[66] == SERVER.encode()
    assert 60 not in offer.options  # not PXE firmware: no PXEClient echo
    assert decision.client == "pxe"


def test_no_arch_at_all_is_default(h: Harness) -> None:
    offer, _, decision = h.one(client_packet("discover", mac(1), ("vendor_class_id", b"PXEClient")))
    assert offer.file == b"pxelinux.0" and decision.arch is None


@pytest.mark.parametrize("marker", [("user_class", b"iPXE"), (175, b"\xb1\x05\x01\x10\xec\x80\x00")])
def test_ipxe_gets_no_pxedhcp(h: Harness, marker: tuple[Any, bytes]) -> None:
    offer, _, decision = h.one(client_packet("discover", mac(1), ("vendor_class_id", b"PXEClient:Arch:00000"),
                                             (93, b"\x00\x00"), marker))
    assert decision.client == "ipxe"
    assert offer.options[175] == bytes((176, 1, 1))
    assert offer.file == b"pxelinux.0"


def test_ipxe_no_pxedhcp_can_be_turned_off() -> None:
    cfg = config()
    cfg = dataclasses.replace(cfg, dhcp=dataclasses.replace(cfg.dhcp, ipxe_no_pxedhcp=False))
    offer, _, decision = Harness(cfg).one(client_packet("discover", mac(1), ("user_class", b"iPXE")))
    assert decision.client == "ipxe" and 175 not in offer.options


def test_pxe_and_plain_client_share_the_address(h: Harness) -> None:
    pxe = h.dora(mac(1), *PXE7)
    plain = h.dora(mac(1), ("client_id", b"\x01" + bytes.fromhex("525400000001")), ("vendor_class_id", b"Linux"))
    assert pxe.yiaddr == plain.yiaddr
    assert plain.file == b"" and not {66, 67, 60} & plain.options.keys()


def test_parameter_request_list_orders_options(h: Harness) -> None:
    _, reply, _ = h.one(client_packet("discover", mac(1), ("param_req_list", [15, 3, 1, 67]), *PXE7))
    raw = reply.data
    codes, pos = [], 240
    while raw[pos] != 255:
        codes.append(raw[pos])
        pos += 2 + raw[pos + 1]
    assert codes[:6] == [53, 54, 15, 3, 1, 67]
    assert {6, 12, 28, 51, 66} <= set(codes)  # the rest is always there


def test_small_max_message_size_shrinks_the_reply() -> None:
    long_domain = ".".join(["a" * 60] * 4)
    h = Harness(config(CONFIG.replace("domain: sidus.zone", f"domain: {long_domain}")))
    big, _, _ = h.one(client_packet("discover", mac(1), ("max_dhcp_size", 1500), *PXE7))
    assert 15 in big.options and len(h.send(client_packet("discover", mac(1), ("max_dhcp_size", 1500),
                                                          *PXE7))[0][0].data) > 548
    replies, _ = h.send(client_packet("discover", mac(1), *PXE7))  # no 57: 576 applies
    small = parse(replies[0].data)
    assert len(replies[0].data) <= 548
    assert 15 not in small.options and small.options[67] == b"efi64/syslinux.efi"


# --------------------------------------------------------------------------- reservations


def test_reservation_wins(h: Harness) -> None:
    offer, _, decision = h.one(client_packet("discover", MASTER, ("requested_addr", "10.20.17.12")))
    assert offer.yiaddr == ip("10.20.17.253") and offer.options[12] == b"master"
    assert "reservation" in decision.reason
    ack = h.dora(MASTER)
    assert ack.yiaddr == ip("10.20.17.253")
    lease = h.store.by_mac(MASTER)
    assert lease is not None and lease.hostname == "master" and lease.state == "bound"
    # Nobody else gets the reserved address, however they ask.
    other, _, _ = h.one(client_packet("discover", mac(1), ("requested_addr", "10.20.17.253")))
    assert other.yiaddr == ip("10.20.17.10")
    assert h.one(client_packet("request", mac(2), ("requested_addr", "10.20.17.253")))[0].message_type == 6
    assert h.one(client_packet("request", mac(2), ("server_id", SERVER),
                               ("requested_addr", "10.20.17.253")))[0].message_type == 6


def test_reservation_added_on_reload_beats_existing_leases(h: Harness) -> None:
    assert h.dora(mac(1)).yiaddr == ip("10.20.17.10")
    assert h.dora(mac(2)).yiaddr == ip("10.20.17.11")
    assert h.dora(mac(3)).yiaddr == ip("10.20.17.12")
    # New config: the pool shrinks away from .10, which is now reserved for another machine, and
    # mac(2) gets its own reservation elsewhere.
    reloaded = CONFIG.replace("start: 10.20.17.10", "start: 10.20.17.11") + (
        f'  - {{name: newbox, mac: "{mac(9)}", address: 10.20.17.10}}\n'
        f'  - {{name: two, mac: "{mac(2)}", address: 10.20.17.100}}\n'
    )
    h.server.reload(config(reloaded))
    assert h.store.by_mac(mac(1)) is None  # its address is reserved now
    assert h.store.by_mac(mac(2)) is None  # it has a reservation elsewhere
    assert h.store.by_mac(mac(3)).address == ip("10.20.17.12")  # type: ignore[union-attr]
    assert h.dora(mac(9)).yiaddr == ip("10.20.17.10")
    two = h.dora(mac(2))
    assert two.yiaddr == ip("10.20.17.100") and two.options[12] == b"two"
    one = h.dora(mac(1)).yiaddr
    assert one not in (ip("10.20.17.10"), ip("10.20.17.12"), ip("10.20.17.100"))
    assert one == ip("10.20.17.11")  # freed by mac(2), lowest free again


# --------------------------------------------------------------------------- persistence


def test_same_mac_same_address_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "leases.journal"
    store = LeaseStore(path)
    h = Harness(store=store)
    got = {n: h.dora(mac(n)).yiaddr for n in (3, 1, 2)}
    h.dora(MASTER)
    store.close()
    h2 = Harness(store=LeaseStore(path))
    h2.now += 86400
    for n in (2, 1, 3):  # other order, other day
        assert h2.dora(mac(n)).yiaddr == got[n]
    assert h2.one(client_packet("discover", mac(7)))[0].yiaddr == ip("10.20.17.13")
    assert h2.one(client_packet("request", mac(1), ("requested_addr", str(got[1]))))[0].message_type == 5


# --------------------------------------------------------------------------- DECLINE / RELEASE / INFORM


def test_decline_quarantines_the_address(tmp_path: Path) -> None:
    path = tmp_path / "leases.journal"
    h = Harness(store=LeaseStore(path))
    bad = h.dora(mac(1)).yiaddr
    decision = h.none(client_packet("decline", mac(1), ("server_id", SERVER), ("requested_addr", str(bad))))
    assert decision.action == "QUARANTINE" and decision.address == bad
    assert h.store.by_mac(mac(1)) is None
    assert h.store.by_address(bad).state == "declined"  # type: ignore[union-attr]
    assert h.dora(mac(1)).yiaddr != bad
    h.store.close()
    h = Harness(store=LeaseStore(path))  # the quarantine survives a restart
    h.now += 60
    taken = {h.dora(mac(n)).yiaddr for n in range(2, 5)}  # with mac(1): the whole pool but one
    assert bad not in taken
    # Only a quarantined address is left: a tight pool takes it back rather than refuse.
    packet, _, decision = h.one(client_packet("discover", mac(6)))
    assert packet.yiaddr == bad and "reclaimed the oldest quarantine" in decision.reason


def test_finished_quarantine_returns_the_address(h: Harness) -> None:
    bad = h.dora(mac(1)).yiaddr
    h.none(client_packet("decline", mac(1), ("server_id", SERVER), ("requested_addr", str(bad))))
    h.now += DECLINE_HOLD + 1
    h.send(client_packet("inform", mac(9), ciaddr="10.20.17.99"))  # any packet expires holds
    assert h.store.by_address(bad) is None


def test_decline_of_an_address_not_ours_is_ignored(h: Harness) -> None:
    h.dora(mac(1))
    assert h.none(client_packet("decline", mac(2), ("requested_addr", "10.20.17.10"))).action == "IGNORE"
    assert h.store.by_mac(mac(1)) is not None
    assert h.none(client_packet("decline", mac(1), ("server_id", "10.9.9.9"),
                                ("requested_addr", "10.20.17.10"))).action == "IGNORE"
    assert h.store.by_mac(mac(1)) is not None


def test_release(h: Harness) -> None:
    address = h.dora(mac(1)).yiaddr
    assert h.none(client_packet("release", mac(2), ("server_id", SERVER), ciaddr=str(address))).action == "IGNORE"
    decision = h.none(client_packet("release", mac(1), ("server_id", SERVER), ciaddr=str(address)))
    assert decision.action == "RELEASE"
    assert h.store.by_mac(mac(1)) is None and h.store.by_address(address) is None
    assert h.one(client_packet("discover", mac(2)))[0].yiaddr == address


def test_inform(h: Harness) -> None:
    ack, reply, decision = h.one(client_packet("inform", mac(1), *PXE7, ciaddr="10.20.17.77"))
    assert ack.message_type == 5 and decision.action == "ACK"
    assert ack.yiaddr == ip("0.0.0.0") and ack.ciaddr == ip("10.20.17.77")
    assert not {51, 58, 59} & ack.options.keys()
    assert ack.options[1] == ip("255.255.255.0").packed and ack.options[67] == b"efi64/syslinux.efi"
    assert reply.destination == ("10.20.17.77", 68)
    assert h.store.all() == []
    assert h.none(client_packet("inform", mac(1))).action == "IGNORE"


# --------------------------------------------------------------------------- pool exhaustion


def test_pool_exhausted_is_a_logged_refusal(h: Harness) -> None:
    for n in range(1, 6):
        h.dora(mac(n))
    decision = h.none(client_packet("discover", mac(6)))
    assert (decision.action, decision.reason) == ("IGNORE", "pool exhausted")
    assert h.server.stats["IGNORE"] == 1
    assert h.dora(MASTER).yiaddr == ip("10.20.17.253")  # reservations still served
    assert h.dora(mac(3)).yiaddr == ip("10.20.17.12")  # and known clients


def test_reservations_only_config_ignores_strangers() -> None:
    h = Harness(config(CONFIG.replace("  pool: {start: 10.20.17.10, end: 10.20.17.14}\n", "")))
    assert "no pool" in h.none(client_packet("discover", mac(1))).reason
    assert h.dora(MASTER).yiaddr == ip("10.20.17.253")


# --------------------------------------------------------------------------- relays and strays


def test_relayed_request_from_our_subnet(h: Harness) -> None:
    offer, reply, _ = h.one(client_packet("discover", mac(1), giaddr="10.20.17.1", flags=0x8000))
    assert offer.giaddr == ip("10.20.17.1") and offer.yiaddr == ip("10.20.17.10")
    assert reply.destination == ("10.20.17.1", 67) and not reply.broadcast
    nak, reply, _ = h.one(client_packet("request", mac(1), ("server_id", SERVER),
                                        ("requested_addr", "10.20.17.14"), giaddr="10.20.17.1"))
    assert nak.message_type == 6 and nak.broadcast  # relay must broadcast the NAK on the client's link
    assert reply.destination == ("10.20.17.1", 67)


def test_relayed_from_a_foreign_subnet_is_ignored(h: Harness) -> None:
    assert h.none(client_packet("discover", mac(1), giaddr="192.168.5.1")).action == "IGNORE"
    assert h.store.all() == []


def test_bootreply_and_client_sent_server_messages_are_not_answered(h: Harness) -> None:
    assert h.none(client_packet("offer", mac(1), op=2)).action == "DROP"
    assert h.none(client_packet("offer", mac(1))).action == "IGNORE"
    assert h.none(client_packet("ack", mac(1))).action == "IGNORE"
    assert h.none(client_packet("discover", mac(1), hops=17)).action == "DROP"
    plain_bootp = bytes(BOOTP(chaddr=bytes(6), options=b"\x63\x82\x53\x63\xff"))
    assert h.none(plain_bootp).action == "DROP"


GARBAGE = [
    b"",
    b"\x01" * 10,
    bytes(300),
    client_packet("discover", "52:54:00:00:00:01")[:239],  # truncated
    client_packet("discover", "52:54:00:00:00:01") + bytes(9000),  # oversized
    client_packet("discover", "52:54:00:00:00:01").replace(b"\x63\x82\x53\x63", b"\x00\x00\x00\x00"),
    client_packet("discover", "52:54:00:00:00:01")[:240] + bytes([53, 1, 1, 12, 200, 65]),  # overflow
    client_packet("discover", "52:54:00:00:00:01")[:240] + bytes([53, 4, 1, 1, 1, 1, 255]),
    b"\x05" + client_packet("discover", "52:54:00:00:00:01")[1:],  # op 5
]


def test_malformed_packets_are_counted_and_dropped(h: Harness) -> None:
    for data in GARBAGE:
        decision = h.none(data)
        assert decision.action == "DROP" and decision.reason.startswith("malformed")
    assert h.server.stats["malformed"] == len(GARBAGE)
    assert h.server.stats["errors"] == 0
    assert h.one(client_packet("discover", mac(1)))[0].yiaddr == ip("10.20.17.10")  # still answering


def test_fuzzed_packets_never_raise(h: Harness) -> None:
    import random

    rng = random.Random(7)
    seeds = [
        client_packet("discover", mac(1), *PXE7, ("param_req_list", [1, 3, 6, 66, 67])),
        client_packet("request", mac(1), ("server_id", SERVER), ("requested_addr", "10.20.17.10")),
        client_packet("request", mac(2), ciaddr="10.20.17.11"),
        client_packet("decline", mac(1), ("requested_addr", "10.20.17.10")),
        client_packet("inform", mac(1), ciaddr="10.20.17.50"),
    ]
    for _ in range(4000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(236, len(data))] = rng.randrange(256)  # options area, mostly
        h.now += 1
        h.send(bytes(data))
    assert h.server.stats["errors"] == 0
    assert h.server.stats["received"] == 4000


# --------------------------------------------------------------------------- hardening


def test_decline_of_a_reserved_address_keeps_the_reservation(h: Harness) -> None:
    h.dora(MASTER)
    decision = h.none(client_packet("decline", MASTER, ("server_id", SERVER), ("requested_addr", "10.20.17.253")))
    assert decision.action == "IGNORE" and "reserved" in decision.reason
    assert h.store.by_address(ip("10.20.17.253")).mac == MASTER  # type: ignore[union-attr]
    assert h.one(client_packet("discover", MASTER))[0].yiaddr == ip("10.20.17.253")


def test_reserved_address_inside_the_pool_is_never_given_from_it() -> None:
    """The config rejects such a reservation; the core does not rely on that alone."""
    cfg = config()
    squatter = dataclasses.replace(cfg.hosts[0], name="inpool", mac=mac(99), address=ip("10.20.17.10"))
    h = Harness(dataclasses.replace(cfg, hosts=(*cfg.hosts, squatter)))
    assert h.dora(mac(1)).yiaddr == ip("10.20.17.11")
    offer, _, _ = h.one(client_packet("discover", mac(2), ("requested_addr", "10.20.17.10")))
    assert offer.yiaddr == ip("10.20.17.12")
    assert h.dora(mac(99)).yiaddr == ip("10.20.17.10")


def test_client_id_and_relay_agent_information_are_echoed(h: Harness) -> None:
    client_id = b"\x01" + bytes.fromhex("525400000001")
    agent = b"\x01\x04eth3"
    offer, _, _ = h.one(client_packet("discover", mac(1), ("client_id", client_id), (82, agent),
                                      giaddr="10.20.17.1"))
    assert offer.options[61] == client_id and offer.options[82] == agent
    nak, _, _ = h.one(client_packet("request", mac(1), ("server_id", SERVER), ("requested_addr", "10.20.17.14"),
                                    ("client_id", client_id), (82, agent), giaddr="10.20.17.1"))
    assert nak.message_type == 6 and nak.options[82] == agent and nak.options[61] == client_id
    direct, _, _ = h.one(client_packet("discover", mac(2), (82, agent)))
    assert 82 not in direct.options and 61 not in direct.options


def test_reply_flags_keep_only_the_broadcast_bit(h: Harness) -> None:
    offer, _, _ = h.one(client_packet("discover", mac(1), flags=0x8001))
    assert offer.flags == 0x8000
    offer, _, _ = h.one(client_packet("discover", mac(2), flags=0x0001))
    assert offer.flags == 0


def test_malformed_decision_names_the_mac_when_it_can(h: Harness) -> None:
    data = client_packet("discover", mac(5))[:240] + bytes([53, 1, 1, 12, 99])
    assert h.none(data).mac == mac(5)


def test_bookkeeping_stays_bounded_under_churn() -> None:
    h = Harness(config(CONFIG.replace("dhcp:\n", "dhcp:\n  lease_time: 60\n")))
    for n in range(1, 4):
        h.dora(mac(n))
    for _ in range(1500):  # renewals and unanswered offers, over and over
        h.now += 31
        h.one(client_packet("request", mac(1), ciaddr="10.20.17.10"))
        h.one(client_packet("discover", mac(4 + int(h.now) % 50)))
    assert len(h.server._expiring) <= 2 * len(h.store) + 1024
    assert len(h.server._returned) <= 2 * 4 + 1024
    assert h.server.stats["errors"] == 0


def test_boot_file_too_long_for_the_bootp_field_goes_in_option_67_only() -> None:
    cfg = config()
    name = "efi64/" + "x" * 150 + ".efi"
    h = Harness(dataclasses.replace(cfg, dhcp=dataclasses.replace(cfg.dhcp, boot_files={7: name})))
    offer, _, decision = h.one(client_packet("discover", mac(1), *PXE7))
    assert offer.file == b"" and offer.options[67] == name.encode() and decision.boot_file == name


def _brute_force_lowest_free(h: Harness) -> IPv4Address | None:
    pool = h.server.config.dhcp.pool
    assert pool is not None
    reserved = {host.address for host in h.server.config.hosts}
    for address in pool.addresses():
        if address not in reserved and h.store.by_address(address) is None:
            return address
    return None


def test_random_walk_keeps_the_lease_table_consistent() -> None:
    """Random clients, message types, clock jumps and reloads; after each step the table obeys
    every rule and the O(1) free-address bookkeeping agrees with a brute-force scan."""
    import random

    rng = random.Random(2026)
    base = CONFIG.replace("dhcp:\n", "dhcp:\n  lease_time: 600\n").replace("end: 10.20.17.14", "end: 10.20.17.30")
    reload_extra = f'  - {{name: late, mac: "{mac(3)}", address: 10.20.17.200}}\n'
    configs = [config(base), config(base + reload_extra),
               config(base.replace("start: 10.20.17.10", "start: 10.20.17.16") + reload_extra)]
    h = Harness(configs[0])
    macs = [mac(n) for n in range(1, 40)] + [MASTER]
    for step in range(3000):
        m = rng.choice(macs)
        lease = h.store.by_mac(m)
        held = str(lease.address) if lease is not None else f"10.20.17.{rng.randint(1, 40)}"
        roll = rng.random()
        if roll < 0.35:
            data = client_packet("discover", m, ("requested_addr", f"10.20.17.{rng.randint(5, 35)}"))
        elif roll < 0.6:
            data = client_packet("request", m, ("server_id", SERVER), ("requested_addr", held))
        elif roll < 0.7:
            data = client_packet("request", m, ("requested_addr", held))
        elif roll < 0.8:
            data = client_packet("request", m, ciaddr=held)
        elif roll < 0.85:
            data = client_packet("decline", m, ("requested_addr", held))
        elif roll < 0.9:
            data = client_packet("release", m, ciaddr=held)
        elif roll < 0.99:
            h.now += rng.choice([1, 30, 61, 700, 4000])
            continue
        else:
            h.server.reload(rng.choice(configs))
            continue
        replies, decision = h.send(data)
        cfg = h.server.config
        hosts = {host.mac: host for host in cfg.hosts}
        reserved = {host.address: host.mac for host in cfg.hosts}
        pool = cfg.dhcp.pool
        assert pool is not None
        for reply in replies:
            out = parse(reply.data)
            if out.message_type in (2, 5) and out.yiaddr != ip("0.0.0.0"):
                owner = h.store.by_address(out.yiaddr)
                assert owner is not None and owner.mac == m, (step, decision)
        for le in h.store.all():
            if le.mac in hosts:
                assert le.address == hosts[le.mac].address, (step, le)
            else:
                assert le.address in pool and le.address not in reserved, (step, le)
        assert h.server._lowest_free() == _brute_force_lowest_free(h), step
    assert h.server.stats["errors"] == 0
    assert h.server.stats["ACK"] > 100 and h.server.stats["QUARANTINE"] > 5 and h.server.stats["NAK"] > 10


def test_reload_renames_leases_so_dns_follows(h: Harness) -> None:
    h.dora(mac(1))
    h.dora(MASTER)
    renamed = CONFIG.replace("{start: 10.20.17.10, end: 10.20.17.14}",
                             '{start: 10.20.17.10, end: 10.20.17.14, hostname: "node-{octet}"}')
    renamed = renamed.replace("name: master", "name: boss")
    seen: list[str] = []
    h.store.subscribe(lambda old, new: seen.append(new.hostname if new else "-"))
    h.server.reload(config(renamed))
    assert h.store.by_mac(mac(1)).hostname == "node-10"  # type: ignore[union-attr]
    assert h.store.by_mac(MASTER).hostname == "boss"  # type: ignore[union-attr]
    assert sorted(seen) == ["boss", "node-10"]
    assert h.one(client_packet("discover", mac(1)))[0].options[12] == b"node-10"


def test_release_must_name_the_clients_address(h: Harness) -> None:
    h.dora(mac(1))
    assert h.none(client_packet("release", mac(1), ciaddr="10.20.17.13")).action == "IGNORE"
    assert h.store.by_mac(mac(1)) is not None


def test_no_ack_when_the_journal_cannot_be_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(store=LeaseStore(tmp_path / "leases.journal"))
    offer, _, _ = h.one(client_packet("discover", mac(1)))  # offers are not journalled

    def disk_full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("sidus_appliance.dhcp.leases.os.write", disk_full)
    request = client_packet("request", mac(1), ("server_id", SERVER), ("requested_addr", str(offer.yiaddr)))
    decision = h.none(request)
    assert decision.action == "DROP" and "No space" in decision.reason
    assert h.server.stats["store_errors"] == 1 and h.server.stats["errors"] == 0
    assert h.store.by_mac(mac(1)).state == "offered"  # type: ignore[union-attr]
    monkeypatch.undo()
    assert h.one(request)[0].message_type == 5  # the client's retry succeeds once the disk is back


def test_infrastructure_addresses_inside_the_pool_are_skipped() -> None:
    text = CONFIG.replace("{start: 10.20.17.10, end: 10.20.17.14}", "{start: 10.20.17.1, end: 10.20.17.4}")
    h = Harness(config(text.replace("dns_servers: [10.20.17.254, 10.20.17.2]", "dns_servers: [10.20.17.2]")))
    # .1 is the gateway, .2 the DNS server: only .3 and .4 are for clients.
    assert [h.dora(mac(n)).yiaddr for n in (1, 2)] == [ip("10.20.17.3"), ip("10.20.17.4")]
    assert h.none(client_packet("discover", mac(3), ("requested_addr", "10.20.17.1"))).reason == "pool exhausted"


# --------------------------------------------------------------------------- fairness under attack


def test_each_decision_lists_the_lease_changes_it_made(h: Harness) -> None:
    _, _, offer = h.one(client_packet("discover", mac(1)))
    assert [(old, new.state if new else None) for old, new in offer.changes] == [(None, "offered")]
    _, _, ack = h.one(client_packet("request", mac(1), ("server_id", SERVER), ("requested_addr", "10.20.17.10")))
    (before, after), = ack.changes
    assert before is not None and before.state == "offered"
    assert after is not None and after.state == "bound" and after.address == ip("10.20.17.10")
    _, _, again = h.one(client_packet("request", mac(1), ("server_id", SERVER), ("requested_addr", "10.20.17.10")))
    assert again.changes == []  # a retransmitted REQUEST changes nothing: nothing to persist


def test_one_mac_declining_again_and_again_quarantines_at_most_its_cap(h: Harness) -> None:
    declined = set()
    for _ in range(215):
        replies, _ = h.send(client_packet("discover", mac(1)))
        if not replies:
            continue
        offered = parse(replies[0].data).yiaddr
        h.send(client_packet("decline", mac(1), ("server_id", SERVER), ("requested_addr", str(offered))))
        declined.add(offered)
    quarantined = [le for le in h.store.all() if le.state == "declined"]
    assert len(quarantined) == 2 and {le.declined_by for le in quarantined} == {mac(1)}
    assert h.dora(mac(2)).yiaddr not in {le.address for le in quarantined}


def test_random_mac_discover_flood_cannot_starve_a_new_client(h: Harness) -> None:
    for n in range(1000):
        h.send(client_packet("discover", f"02:f1:00:00:{n >> 8:02x}:{n & 255:02x}"))
        h.now += 0.001
    assert len([le for le in h.store.all() if le.state == "offered"]) == 5  # the whole pool is offered
    ack = h.dora(mac(1))
    assert ack.yiaddr in {ip(f"10.20.17.{n}") for n in range(10, 15)}
    assert h.store.by_mac(mac(1)).state == "bound"  # type: ignore[union-attr]


def test_a_selecting_request_wins_over_someone_elses_offer(h: Harness) -> None:
    offer, _, _ = h.one(client_packet("discover", mac(1)))
    h.store.remove(mac(1))  # its offer was taken back when the pool was tight...
    h.one(client_packet("discover", mac(2), ("requested_addr", str(offer.yiaddr))))  # ...and given to mac(2)
    assert h.store.by_address(offer.yiaddr).mac == mac(2)  # type: ignore[union-attr]
    ack, _, decision = h.one(client_packet("request", mac(1), ("server_id", SERVER),
                                           ("requested_addr", str(offer.yiaddr))))
    assert ack.message_type == 5 and ack.yiaddr == offer.yiaddr, decision
    assert h.store.by_mac(mac(2)) is None


def test_a_bound_lease_is_never_reclaimed_for_a_flood(h: Harness) -> None:
    bound = {h.dora(mac(n)).yiaddr for n in range(1, 6)}  # the whole pool, bound (infinite leases)
    replies, decision = h.send(client_packet("discover", mac(9)))
    assert replies == [] and decision.reason == "pool exhausted"
    assert {le.address for le in h.store.all() if le.state == "bound"} == bound


def test_no_exception_leaves_the_core_it_becomes_a_decision(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(h.server, "_choose", lambda *a: 1 / 0)
    replies, decision = h.send(client_packet("discover", mac(1)))
    assert replies == [] and decision.error and "ZeroDivisionError" in decision.reason
