"""netascii converted while sending: same bytes as a whole-file conversion, bounded memory,
random access for retransmitted windows, checkpoints cached per file identity."""

from __future__ import annotations

import os
import random
import struct
import tracemalloc
from pathlib import Path

import pytest

from sidus_appliance.tftp import protocol as p
from sidus_appliance.tftp.netascii import NetasciiReader, ScanCache, scan
from sidus_appliance.tftp.tree import BootTree
from tests.unit.test_boot_menus import make_config


def reader_over(content: bytes, chunk: int) -> NetasciiReader:
    def read(offset: int, length: int) -> bytes:
        return content[offset:offset + length]

    return NetasciiReader(read, scan(read, len(content), chunk), chunk)


SAMPLES = [b"", b"\n", b"\r", b"\r\n", b"a\nb\rc\r\n", b"\r" * 100, b"\n" * 100, b"no line ends"]


@pytest.mark.parametrize("content", SAMPLES)
@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64 * 1024])
def test_same_bytes_as_the_whole_file_conversion(content, chunk):
    reader = reader_over(content, chunk)
    expected = p.to_netascii(content)
    assert reader.size == len(expected)
    assert reader(0, len(expected) + 10) == expected
    assert reader(len(expected), 512) == b""


def test_random_reads_across_chunk_boundaries():
    rng = random.Random(7)
    content = bytes(rng.choice(b"ab\r\n\0") for _ in range(20_000))
    expected = p.to_netascii(content)
    reader = reader_over(content, 333)
    for _ in range(2000):
        offset, length = rng.randrange(0, len(expected) + 50), rng.choice((1, 8, 512, 1468, 5000))
        assert reader(offset, length) == expected[offset:offset + length]


def test_a_session_sends_the_converted_file_and_resends_a_window():
    content = b"line one\nline two\r\n\rbare\n" * 3000
    expected = p.to_netascii(content)
    reader = reader_over(content, 4096)
    limits = p.Limits(timeout=1.0, retries=3)
    session = p.Session(reader, reader.size, p.negotiate({"windowsize": "4"}, limits, reader.size), limits)
    out, received, now = session.start(0.0), bytearray(), 0.0
    assert out[0][:2] == b"\x00\x06"
    out = session.receive(struct.pack("!HH", p.ACK, 0), now)
    while not session.done:
        if len(received) // 512 == 40:  # lose a window: the timer resends the same blocks
            now += 2.0
            assert session.poll(now) == out
        for packet in out:
            received += packet[4:]
        out = session.receive(struct.pack("!HH", p.ACK, struct.unpack("!H", out[-1][2:4])[0]), now)
    assert bytes(received) == expected


def test_memory_stays_bounded_for_a_large_file():
    """8 MiB of text: the reader holds checkpoints and one converted chunk, not the file."""
    content = (b"x" * 60 + b"\n") * (8 * 1024 * 1024 // 61)

    def read(offset: int, length: int) -> bytes:
        return content[offset:offset + length]

    tracemalloc.start()
    try:
        reader = NetasciiReader(read, scan(read, len(content)))
        for offset in range(0, reader.size, 1408):
            reader(offset, 1408)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, peak


def test_a_file_that_shrinks_under_a_transfer_gives_short_data_not_an_exception():
    content = bytearray(b"ab\ncd\n" * 1000)

    def read(offset: int, length: int) -> bytes:
        return bytes(content[offset:offset + length])

    reader = NetasciiReader(read, scan(read, len(content), 100), 100)
    del content[3000:]
    data = b"".join(reader(offset, 512) for offset in range(0, reader.size, 512))
    assert data == p.to_netascii(b"ab\ncd\n" * 500)


def test_scan_cache_scans_a_file_once_per_identity():
    reads = []

    def read(offset: int, length: int) -> bytes:
        reads.append(offset)
        return b"a\n" * (length // 2)

    cache = ScanCache(capacity=2)
    first = cache.starts(("dev", 1), read, 200_000)
    n = len(reads)
    assert cache.starts(("dev", 1), read, 200_000) is first and len(reads) == n
    cache.starts(("dev", 2), read, 10)
    cache.starts(("dev", 3), read, 10)  # capacity 2: ("dev", 1) is forgotten
    cache.starts(("dev", 1), read, 200_000)
    assert len(reads) > n + 2


def test_tree_serves_netascii_files_converted(tmp_path: Path):
    root = tmp_path / "tftp"
    root.mkdir()
    content = os.urandom(300_000) + b"\r\n\r"
    (root / "text").write_bytes(content)
    tree = BootTree(make_config(tmp_path, []))
    resolved = tree.resolve("text", netascii=True)
    try:
        expected = p.to_netascii(content)
        assert resolved.size == len(expected) and resolved.buffered
        assert b"".join(resolved.read(o, 1468) for o in range(0, resolved.size, 1468)) == expected
    finally:
        resolved.close()
    resolved = tree.resolve("text")  # octet: the bytes as they are
    try:
        assert resolved.size == len(content) and resolved.read(0, len(content)) == content
    finally:
        resolved.close()
