"""Fuzzing the TFTP cores with hypothesis: whatever a client sends, the only exceptions that come
out are the ones the callers handle (RequestError from the parser, TreeError from the tree), and
the request core keeps its caps."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidus_appliance.tftp import protocol as p
from sidus_appliance.tftp.netascii import NetasciiReader, scan
from sidus_appliance.tftp.requests import Action, Policy, RequestCore
from sidus_appliance.tftp.tree import BootTree, TreeError
from tests.unit.test_boot_menus import make_config, make_root

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

OPCODES = st.integers(0, 7).map(lambda n: struct.pack("!H", n))
WORDS = st.sampled_from([b"octet", b"netascii", b"NetAscii", b"mail", b"blksize", b"tsize", b"timeout",
                         b"windowsize", b"0", b"1", b"-1", b"65536", b"1468", b"9" * 30, b" 8 ", b"1_0", b"", b"\xff"])
FIELDS = st.lists(st.one_of(WORDS, st.binary(max_size=20)), max_size=8)
# Datagrams that look like TFTP often enough to get past the first checks, and raw noise.
DATAGRAMS = st.one_of(
    st.binary(max_size=80),
    st.builds(lambda op, fields, tail: op + b"\0".join(fields) + tail, OPCODES, FIELDS, st.sampled_from([b"\0", b""])),
    st.builds(lambda op, n: op + struct.pack("!H", n), OPCODES, st.integers(0, 0xFFFF)),
)


@FUZZ
@given(DATAGRAMS)
def test_parse_request_raises_only_request_error(data):
    try:
        request = p.parse_request(data)
    except p.RequestError as exc:
        assert isinstance(exc.code, int) and isinstance(exc.message, str)
        p.error_packet(exc.code, exc.message)
        return
    assert request.opcode in (p.RRQ, p.WRQ) and request.mode in ("octet", "netascii")
    limits = p.Limits()
    for size in (0, 1, 10**9):
        negotiated = p.negotiate(request.options, limits, size)
        assert p.MIN_BLKSIZE <= negotiated.blksize <= limits.max_blksize or negotiated.blksize == p.DEFAULT_BLKSIZE
        assert 1 <= negotiated.windowsize <= limits.max_windowsize
        p.oack_packet(negotiated.oack)


@FUZZ
@given(content=st.binary(max_size=3000), options=st.dictionaries(st.sampled_from(["blksize", "windowsize", "tsize",
       "timeout"]), st.sampled_from(["8", "512", "1", "64", "0", "x", "70000"])),
       steps=st.lists(st.tuples(DATAGRAMS, st.floats(0, 1000, allow_nan=False)), max_size=40))
def test_session_takes_any_datagram_at_any_time(content, options, steps):
    limits = p.Limits(max_blksize=1468, timeout=1.0, retries=3)
    session = p.Session(lambda o, n: content[o:o + n], len(content), p.negotiate(options, limits, len(content)), limits)
    out = session.start(0.0)
    now = 0.0
    for data, dt in steps:
        now += dt
        was_done = session.done
        out = session.receive(data, now) + session.poll(now)
        assert all(isinstance(packet, bytes) for packet in out)
        if was_done:
            assert out == [] and session.done
        assert session.acked <= session.sent <= session.last


@dataclass(eq=False)
class Fake:
    acknowledged: bool = False
    done: bool = False


HOSTS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
EVENTS = st.lists(st.one_of(
    st.tuples(st.just("datagram"), DATAGRAMS, st.sampled_from(HOSTS), st.integers(1, 4), st.booleans(),
              st.booleans()),
    st.tuples(st.just("rrq"), st.sampled_from([b"a", b"b"]), st.sampled_from(HOSTS), st.integers(1, 4),
              st.booleans(), st.booleans()),
    st.tuples(st.just("ack"), st.integers(0, 20)),
    st.tuples(st.just("end"), st.integers(0, 20)),
    st.tuples(st.just("tick"), st.floats(0, 10, allow_nan=False)),
), max_size=60)


@FUZZ
@given(EVENTS)
def test_request_core_keeps_its_caps_whatever_arrives(events):
    policy = Policy(max_transfers=5, max_per_client=2, first_ack_deadline=7.0, reclaim_after=1.0)
    core = RequestCore(policy)
    now = 0.0
    for event in events:
        kind = event[0]
        if kind in ("datagram", "rrq"):
            _, payload, host, port, recheck, resolves = event
            data = payload if kind == "datagram" else b"\x00\x01" + payload + b"\0octet\0"
            decision = core.receive(data, (host, port), now, recheck)
            for handle in decision.cancel:
                assert all(entry.handle is not handle for entry in core.transfers.values())
            if decision.action is Action.START:
                assert decision.request is not None and decision.request.opcode == p.RRQ
                if resolves:  # else: the file was missing, nothing started
                    ended = core.started((host, port), Fake(), data, now, decision)
                    assert all(entry.handle not in ended for entry in core.transfers.values())
            else:
                assert decision.reclaim is None
        elif kind in ("ack", "end"):
            handles = [entry.handle for entry in core.transfers.values()]
            if handles:
                handle = handles[event[1] % len(handles)]
                if kind == "ack":
                    handle.acknowledged = True
                else:
                    handle.done = True
                    if event[1] % 2:
                        addr = next(a for a, e in core.transfers.items() if e.handle is handle)
                        assert core.finished(addr, handle)
        else:
            now += event[1]
            deadline = core.next_deadline()
            for addr, handle in core.expired(now):
                assert not handle.acknowledged and addr not in core.transfers
            assert deadline is None or core.next_deadline() is None or core.next_deadline() > now
        assert len(core.transfers) <= policy.max_transfers
        for host in HOSTS:
            live = [e for a, e in core.transfers.items() if a[0] == host and not e.handle.done]
            assert len(live) <= policy.max_per_client


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> BootTree:
    tmp_path: Path = tmp_path_factory.mktemp("fuzz-tree")
    root = tmp_path / "tftp"
    (root / "efi64").mkdir(parents=True)
    (root / "pxelinux.0").write_bytes(b"loader")
    (root / "text").write_bytes(b"a\nb\r\n")
    os.mkfifo(root / "fifo")
    os.symlink("/etc", root / "etc")
    boot = make_root(tmp_path, "inst", ["6.1.0-1-amd64"]) / "boot"
    os.mkfifo(boot / "vmlinuz-fifo")
    os.symlink("../../..", boot / "up")
    return BootTree(make_config(tmp_path, [{"name": "inst"}]))


NAMES = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(["", ".", "..", "efi64", "efi32", "pxelinux.cfg", "default", "01-52-54-00-12-34-56",
                              "0A14110A", "pxelinux.0", "text", "fifo", "etc", "passwd", "vmlinuz-6.1.0-1-amd64@inst",
                              "initrd.img-6.1.0-1-amd64@inst", "vmlinuz-fifo@inst", "vmlinuz-up@inst", "vmlinuz-@",
                              "@inst", "\\", "\udcff", "\ud800", "\0", "x" * 300]), max_size=6).map("/".join),
)


@FUZZ
@given(name=NAMES, netascii=st.booleans())
def test_tree_resolve_raises_only_tree_error(tree, name, netascii):
    try:
        resolved = tree.resolve(name, netascii)
    except TreeError as exc:
        assert isinstance(exc.code, int) and exc.message
        return
    try:
        assert len(resolved.read(0, resolved.size + 1)) == resolved.size
    finally:
        resolved.close()


@FUZZ
@given(content=st.binary(max_size=2000), chunk=st.integers(1, 300),
       reads=st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 3000)), max_size=20))
def test_netascii_reader_matches_the_whole_file_conversion(content, chunk, reads):
    def read(offset: int, length: int) -> bytes:
        return content[offset:offset + length]

    reader = NetasciiReader(read, scan(read, len(content), chunk), chunk)
    expected = p.to_netascii(content)
    assert reader.size == len(expected)
    for offset, length in reads:
        assert reader(offset, length) == expected[offset:offset + length]
