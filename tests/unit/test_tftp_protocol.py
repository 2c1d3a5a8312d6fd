"""The sans-IO TFTP session, driven with packets and a fake clock."""

from __future__ import annotations

import struct

import pytest

from sidus_appliance.tftp import protocol as p

LIMITS = p.Limits(max_blksize=1468, max_windowsize=64, timeout=1.0, retries=3)


def rrq(name: str = "f", mode: str = "octet", **options: object) -> bytes:
    body = name.encode() + b"\0" + mode.encode() + b"\0"
    body += b"".join(k.encode() + b"\0" + str(v).encode() + b"\0" for k, v in options.items())
    return b"\x00\x01" + body


def ack(block: int) -> bytes:
    return struct.pack("!HH", p.ACK, block & 0xFFFF)


def data_of(packet: bytes) -> tuple[int, bytes]:
    opcode, block = struct.unpack("!HH", packet[:4])
    assert opcode == p.DATA
    return block, packet[4:]


def oack_of(packet: bytes) -> dict[str, str]:
    assert packet[:2] == b"\x00\x06"
    fields = packet[2:].split(b"\0")[:-1]
    return {fields[i].decode(): fields[i + 1].decode() for i in range(0, len(fields), 2)}


def session(content: bytes, limits: p.Limits = LIMITS, **options: object) -> p.Session:
    request = p.parse_request(rrq(**options))
    negotiated = p.negotiate(request.options, limits, len(content))
    return p.Session(lambda off, n: content[off:off + n], len(content), negotiated, limits)


def run(s: p.Session, first: list[bytes], now: float = 0.0) -> bytes:
    """A perfect client: ACK the OACK or each window's last block; reassemble the data."""
    out, received, expected = first, bytearray(), 1
    if out and out[0][:2] == b"\x00\x06":
        out = s.receive(ack(0), now)
    while not s.done:
        assert out, "server stalled"
        last = None
        for packet in out:
            block, chunk = data_of(packet)
            assert block == expected & 0xFFFF
            received += chunk
            expected += 1
            last = block
        out = s.receive(ack(last), now)
    return bytes(received)


# ------------------------------------------------------------------ parsing


def test_parse_rrq_with_options_case_insensitive():
    req = p.parse_request(rrq("pxelinux.0", "OCTET", BLKSIZE=1468, tsize=0))
    assert req.opcode == p.RRQ and req.filename == "pxelinux.0" and req.mode == "octet"
    assert req.options == {"blksize": "1468", "tsize": "0"}


@pytest.mark.parametrize("packet", [b"", b"\x00\x01", b"\x00\x01f\0", b"\x00\x01f\0octet", b"\x00\x03\x00\x01",
                                    b"\x00\x01\0octet\0"])
def test_parse_malformed(packet):
    with pytest.raises(p.RequestError):
        p.parse_request(packet)


def test_parse_mail_mode_refused():
    with pytest.raises(p.RequestError):
        p.parse_request(rrq(mode="mail"))


def test_parse_long_name_is_access_violation():
    with pytest.raises(p.RequestError) as exc:
        p.parse_request(rrq("a" * 600))
    assert exc.value.code == p.ERR_ACCESS


def test_wrq_is_parsed_as_wrq():
    assert p.parse_request(b"\x00\x02f\0octet\0").opcode == p.WRQ


# ------------------------------------------------------------------ negotiation


def test_negotiation_caps_and_echoes():
    n = p.negotiate({"blksize": "65464", "tsize": "0", "timeout": "3", "windowsize": "500", "foo": "1"}, LIMITS, 1000)
    assert (n.blksize, n.windowsize, n.timeout) == (1468, 64, 3.0)
    assert n.oack == {"blksize": "1468", "tsize": "1000", "timeout": "3", "windowsize": "64"}


def test_negotiation_ignores_invalid_values():
    n = p.negotiate({"blksize": "4", "timeout": "0", "windowsize": "x", "tsize": "-1"}, LIMITS, 10)
    assert n.oack == {} and n.blksize == 512 and n.windowsize == 1


def test_no_options_means_no_oack_and_data_first():
    s = session(b"x" * 10)
    out = s.start(0.0)
    assert data_of(out[0]) == (1, b"x" * 10)


def test_oack_carries_options_and_ack0_starts_data():
    s = session(b"y" * 3000, blksize=1024, tsize=0)
    out = s.start(0.0)
    assert oack_of(out[0]) == {"blksize": "1024", "tsize": "3000"}
    assert data_of(s.receive(ack(0), 0.0)[0]) == (1, b"y" * 1024)


def test_empty_file_omits_tsize_zero():
    # curl aborts on "tsize 0"; the client still gets its other options acknowledged.
    s = session(b"", blksize=1024, tsize=0)
    assert oack_of(s.start(0.0)[0]) == {"blksize": "1024"}


# ------------------------------------------------------------------ transfers


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 1024, 5000])
def test_transfer_sizes_default_blksize(size):
    content = bytes(range(256)) * (size // 256 + 1)
    content = content[:size]
    s = session(content)
    assert run(s, s.start(0.0)) == content
    assert s.outcome == "complete"


def test_last_block_exactly_blksize_sends_empty_block():
    s = session(b"z" * 1024, blksize=512)
    out = s.receive(ack(0), 0.0) if s.start(0.0) else []
    assert data_of(out[0]) == (1, b"z" * 512)
    assert data_of(s.receive(ack(1), 0.0)[0]) == (2, b"z" * 512)
    assert data_of(s.receive(ack(2), 0.0)[0]) == (3, b"")
    assert not s.done
    assert s.receive(ack(3), 0.0) == [] and s.done


def test_empty_file_is_one_empty_block():
    s = session(b"")
    assert data_of(s.start(0.0)[0]) == (1, b"")
    s.receive(ack(1), 0.0)
    assert s.done and s.outcome == "complete"


def test_duplicate_ack_is_ignored_no_sorcerers_apprentice():
    s = session(b"a" * 2000)
    s.start(0.0)
    assert data_of(s.receive(ack(1), 0.0)[0])[0] == 2
    assert s.receive(ack(1), 0.1) == []  # duplicate: do not send block 2 again
    assert s.receive(ack(0), 0.1) == []  # stale
    assert s.receive(ack(7), 0.1) == []  # from the future: bogus
    assert data_of(s.receive(ack(2), 0.2)[0])[0] == 3


def test_lost_ack_retransmits_with_backoff_then_gives_up():
    s = session(b"b" * 2000)
    s.start(0.0)
    assert s.poll(0.5) == []
    assert data_of(s.poll(1.0)[0])[0] == 1  # timeout 1 s
    assert s.poll(2.9) == []  # next after 2 s more
    assert data_of(s.poll(3.0)[0])[0] == 1
    assert data_of(s.poll(7.0)[0])[0] == 1
    out = s.poll(15.0)  # retries (3) exhausted
    assert s.done and s.outcome == "timed out" and out[0][:2] == b"\x00\x05"


def test_ack_resets_the_backoff():
    s = session(b"c" * 2000)
    s.start(0.0)
    s.poll(1.0)
    s.poll(3.0)
    s.receive(ack(1), 3.5)
    assert s.deadline == pytest.approx(4.5)


def test_lost_oack_is_retransmitted():
    s = session(b"d" * 10, tsize=0)
    first = s.start(0.0)
    assert s.poll(1.0) == first


def test_client_timeout_option_sets_retransmission_interval():
    s = session(b"d" * 10, timeout=5)
    s.start(0.0)
    s.receive(ack(0), 0.0)
    assert s.poll(4.9) == [] and s.poll(5.0)


def test_edk2_tsize_probe_then_error8_frees_at_once():
    s = session(b"e" * 100000, tsize=0, blksize=1468)
    assert oack_of(s.start(0.0)[0])["tsize"] == "100000"
    assert s.receive(p.error_packet(p.ERR_OPTIONS, "tsize only"), 0.0) == []
    assert s.done and "error 8" in s.outcome
    assert s.poll(100.0) == []


def test_windowsize_sends_whole_windows():
    content = bytes(range(256)) * 40  # 10240 bytes = 20 blocks of 512 + empty block 21
    s = session(content, windowsize=8)
    assert oack_of(s.start(0.0)[0]) == {"windowsize": "8"}
    out = s.receive(ack(0), 0.0)
    assert [data_of(x)[0] for x in out] == list(range(1, 9))
    assert s.receive(ack(4), 0.0) and s.sent == 12  # partial ack: restart after block 4
    assert s.receive(ack(4), 0.0) == []  # duplicate of that
    out = s.receive(ack(12), 0.0)
    assert [data_of(x)[0] for x in out] == list(range(13, 21))
    out = s.receive(ack(20), 0.0)
    assert [data_of(x)[0] for x in out] == [21] and data_of(out[0])[1] == b""
    s.receive(ack(21), 0.0)
    assert s.done


def test_windowsize_timeout_resends_from_last_ack():
    s = session(b"w" * 512 * 30, windowsize=4)
    s.start(0.0)
    s.receive(ack(0), 0.0)
    s.receive(ack(4), 0.0)
    assert [data_of(x)[0] for x in s.poll(1.0)] == [5, 6, 7, 8]


def test_windowsize_full_transfer():
    content = bytes(i % 251 for i in range(300_000))
    s = session(content, windowsize=16, blksize=1468)
    assert run(s, s.start(0.0)) == content


def test_block_numbers_roll_over_past_65535():
    # 70,000 blocks of 8 bytes: the wire number wraps to 0 and the ACKs map back correctly.
    limits = p.Limits(max_blksize=8, retries=1)
    content = bytes(i % 253 for i in range(8 * 70_000 + 3))
    s = session(content, limits, blksize=8)
    assert run(s, s.start(0.0)) == content
    assert s.last == 70_001


def test_rollover_with_window_and_duplicate_after_wrap():
    limits = p.Limits(max_blksize=8)
    content = b"r" * (8 * 65540)
    s = session(content, limits, blksize=8, windowsize=4)
    s.start(0.0)
    out = s.receive(ack(0), 0.0)
    while s.sent < 65536:
        out = s.receive(ack(s.sent), 0.0)
    assert s.acked == 65532 and [data_of(x)[0] for x in out] == [65533, 65534, 65535, 0]
    out = s.receive(ack(0), 0.0)  # acknowledges absolute block 65536
    assert s.acked == 65536 and [data_of(x)[0] for x in out] == [1, 2, 3, 4]
    assert s.receive(ack(0), 0.0) == []  # a duplicate after the wrap is still a duplicate


def test_illegal_opcode_from_client_ends_with_error():
    s = session(b"q")
    s.start(0.0)
    out = s.receive(b"\x00\x03\x00\x01data", 0.0)
    assert s.done and out[0][:4] == b"\x00\x05\x00\x04"


def test_netascii_conversion():
    assert p.to_netascii(b"a\nb\rc\r\n") == b"a\r\nb\r\0c\r\0\r\n"


def test_resent_counts_timeouts_and_partial_windows():
    s = session(b"w" * 512 * 30, windowsize=4)
    s.start(0.0)
    s.receive(ack(0), 0.0)
    s.receive(ack(2), 0.0)  # partial: blocks 3, 4 again
    s.poll(10.0)  # timeout
    assert s.resent == 2


def test_a_long_timeout_option_is_not_acknowledged() -> None:
    # 255 s with backoff would let one silent client hold a transfer slot for hours.
    n = p.negotiate({"timeout": "255"}, LIMITS, 1000)
    assert "timeout" not in n.oack and n.timeout == LIMITS.timeout
    assert p.negotiate({"timeout": str(p.MAX_TIMEOUT_OPTION)}, LIMITS, 1000).oack == {"timeout": "10"}
