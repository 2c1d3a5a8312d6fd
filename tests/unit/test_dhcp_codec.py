"""The struct codec against scapy (the reference encoder/decoder) and hand-made bytes."""

from __future__ import annotations

import random
import struct
from ipaddress import IPv4Address

import pytest
from scapy.layers.dhcp import BOOTP, DHCP

from sidus_appliance.dhcp.codec import (
    BOOTP_MIN_SIZE,
    MAGIC_COOKIE,
    MAX_PACKET_SIZE,
    DhcpPacket,
    MalformedPacket,
    encode,
    parse,
)

MAC = bytes.fromhex("0800aabbccdd")


def header(op: int = 1, htype: int = 1, hlen: int = 6, sname: bytes = b"", file: bytes = b"") -> bytes:
    return struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s", op, htype, hlen, 0, 0x1234, 0, 0,
        bytes(4), bytes(4), bytes(4), bytes(4), MAC, sname, file,
    )


def packet(options: bytes, **kw: object) -> bytes:
    return header(**kw) + MAGIC_COOKIE + options  # type: ignore[arg-type]


def test_parse_scapy_discover() -> None:
    raw = bytes(
        BOOTP(chaddr=MAC, xid=0xDEADBEEF, flags=0x8000, ciaddr="10.0.0.1", giaddr="10.0.0.2")
        / DHCP(options=[("message-type", "discover"), ("vendor_class_id", b"PXEClient:Arch:00007"),
                        ("param_req_list", [1, 3, 67]), (93, b"\x00\x07"), "end"])
    )
    pkt = parse(raw)
    assert (pkt.op, pkt.htype, pkt.hlen, pkt.xid) == (1, 1, 6, 0xDEADBEEF)
    assert pkt.mac == "08:00:aa:bb:cc:dd"
    assert pkt.message_type == 1
    assert pkt.broadcast is True
    assert pkt.ciaddr == IPv4Address("10.0.0.1")
    assert pkt.giaddr == IPv4Address("10.0.0.2")
    assert pkt.options[60] == b"PXEClient:Arch:00007"
    assert pkt.options[55] == bytes([1, 3, 67])
    assert pkt.options[93] == b"\x00\x07"
    assert len(pkt.chaddr) == 16


def test_encode_is_read_back_by_scapy_and_padded() -> None:
    pkt = DhcpPacket(
        2, 1, 6, 0, 42, 0, 0, IPv4Address(0), IPv4Address("10.20.17.10"), IPv4Address("10.20.17.254"),
        IPv4Address(0), MAC.ljust(16, b"\0"), b"", b"pxelinux.0",
        {67: b"pxelinux.0", 1: b"\xff\xff\xff\x00", 54: IPv4Address("10.20.17.254").packed, 53: b"\x02"},
    )
    data = encode(pkt)
    assert len(data) >= BOOTP_MIN_SIZE
    scapy_pkt = BOOTP(data)
    assert scapy_pkt.yiaddr == "10.20.17.10"
    assert scapy_pkt.siaddr == "10.20.17.254"
    assert scapy_pkt.file.rstrip(b"\0") == b"pxelinux.0"
    opts = [o for o in scapy_pkt[DHCP].options if isinstance(o, tuple)]
    assert opts[0] == ("message-type", 2)
    assert opts[1] == ("server_id", "10.20.17.254")
    assert ("boot-file-name", b"pxelinux.0") in opts
    assert parse(data) == pkt


def test_option_order_53_54_requested_then_ascending() -> None:
    options = {c: b"x" for c in (1, 3, 6, 12, 15, 66, 67)} | {54: bytes(4), 53: b"\x05"}
    pkt = DhcpPacket(2, 1, 6, 0, 1, 0, 0, *(IPv4Address(0),) * 4, MAC, b"", b"", options)
    data = encode(pkt, order=[67, 3, 99, 53])
    codes = []
    pos = 240
    while data[pos] != 255:
        codes.append(data[pos])
        pos += 2 + data[pos + 1]
    assert codes == [53, 54, 67, 3, 1, 6, 12, 15, 66]


def test_long_option_split_and_concatenated() -> None:
    value = bytes(range(256)) * 3  # 768 bytes: three chunks of 255 and one of 3
    pkt = DhcpPacket(2, 1, 6, 0, 1, 0, 0, *(IPv4Address(0),) * 4, MAC, b"", b"", {53: b"\x02", 43: value})
    data = encode(pkt)
    assert data.count(bytes((43, 255))) >= 3
    assert parse(data).options[43] == value


def test_rfc3396_split_option_concatenated_in_order() -> None:
    raw = packet(bytes([53, 1, 1, 12, 3]) + b"abc" + bytes([12, 2]) + b"de" + b"\xff")
    assert parse(raw).options[12] == b"abcde"


def test_stops_at_end_option_and_tolerates_missing_end() -> None:
    assert 12 not in parse(packet(bytes([53, 1, 1, 255, 12, 1]) + b"x")).options
    assert parse(packet(bytes([53, 1, 3, 0, 0]))).message_type == 3


@pytest.mark.parametrize(("overload", "in_file", "in_sname"), [(1, True, False), (2, False, True), (3, True, True)])
def test_option_overload(overload: int, in_file: bool, in_sname: bool) -> None:
    file = bytes([67, 4]) + b"boot" + b"\xff"
    sname = bytes([66, 3]) + b"srv" + b"\xff"
    raw = packet(bytes([53, 1, 1, 52, 1, overload, 255]), file=file, sname=sname)
    pkt = parse(raw)
    assert (pkt.options.get(67) == b"boot") is in_file
    assert (pkt.options.get(66) == b"srv") is in_sname
    assert pkt.file == (b"" if in_file else file.rstrip(b"\0"))


def test_overload_concatenates_options_field_then_file() -> None:
    raw = packet(bytes([53, 1, 1, 52, 1, 1, 12, 2]) + b"ab" + b"\xff", file=bytes([12, 2]) + b"cd" + b"\xff")
    assert parse(raw).options[12] == b"abcd"


MALFORMED = {
    "empty": b"",
    "truncated header": packet(b"")[:100],
    "no cookie room": header(),
    "oversized": packet(bytes([53, 1, 1, 255])).ljust(MAX_PACKET_SIZE + 1, b"\0"),
    "bad cookie": header() + b"\x63\x82\x53\x64" + bytes([53, 1, 1, 255]),
    "bad op": packet(bytes([53, 1, 1, 255]), op=3),
    "token ring": packet(bytes([53, 1, 1, 255]), htype=6),
    "hlen 16": packet(bytes([53, 1, 1, 255]), hlen=16),
    "length past end": packet(bytes([53, 1, 1, 12, 50]) + b"short"),
    "length byte missing": packet(bytes([53, 1, 1, 12])),
    "message type length 2": packet(bytes([53, 2, 1, 1, 255])),
    "server id length 3": packet(bytes([53, 1, 3, 54, 3, 1, 2, 3, 255])),
    "bad overload value": packet(bytes([53, 1, 1, 52, 1, 7, 255])),
    "overflow inside file": packet(bytes([53, 1, 1, 52, 1, 1, 255]), file=bytes([12, 200]) + b"x"),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_raises(name: str) -> None:
    with pytest.raises(MalformedPacket):
        parse(MALFORMED[name])


def test_fuzz_only_malformed_packet_escapes() -> None:
    rng = random.Random(1)
    good = bytes(BOOTP(chaddr=MAC) / DHCP(options=[("message-type", "request"), ("hostname", b"x" * 40), "end"]))
    parsed = 0
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = data[: rng.randint(0, len(data))] if rng.random() < 0.3 else data
        try:
            parse(bytes(data))
            parsed += 1
        except MalformedPacket:
            pass
    for _ in range(500):
        with pytest.raises(MalformedPacket):
            parse(rng.randbytes(rng.randint(0, 600)))  # no magic cookie: always rejected
    assert parsed > 100  # mutations of padding and values still parse


def test_sname_and_file_are_c_strings() -> None:
    pkt = parse(packet(bytes([53, 1, 1, 255]), sname=b"srv\0junk", file=b"pxelinux.0\0old-name"))
    assert (pkt.sname, pkt.file) == (b"srv", b"pxelinux.0")
