"""The asyncio service on 127.0.0.1 with a raw-socket client: ports, errors, EDK II's retry."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from sidus_appliance.config import Instance, parse_config
from sidus_appliance.tftp import protocol as p
from sidus_appliance.tftp import service as service_module
from sidus_appliance.tftp.service import TftpService


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def started_service(tmp_path: Path) -> tuple[int, Path, TftpService, asyncio.AbstractEventLoop]:
    """A service started on a new loop that is not running yet."""
    root = tmp_path / "tftp"
    root.mkdir()
    port = free_port()
    config = parse_config(yaml.safe_dump({
        "interface": "lo", "address": "127.0.0.1/8", "domain": "test.zone",
        # every test client is 127.0.0.1: the per-client cap as high as the total unless a test lowers it
        "tftp": {"root": str(root), "port": port, "timeout": 0.2, "retries": 2, "max_transfers": 300,
                 "max_transfers_per_client": 300},
    }))
    loop = asyncio.new_event_loop()
    service = TftpService(config, None, logging.getLogger("test.tftp"))
    loop.run_until_complete(service.start())
    return port, root, service, loop


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, Path, TftpService]]:
    port, root, service, loop = started_service(tmp_path)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield port, root, service
    loop.call_soon_threadsafe(service.close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def client() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.bind(("127.0.0.1", 0))
    return s


def rrq(name: str, opcode: int = 1, **options: object) -> bytes:
    body = name.encode() + b"\0octet\0" + b"".join(f"{k}\0{v}\0".encode() for k, v in options.items())
    return struct.pack("!H", opcode) + body


def fetch(port: int, name: str, **options: object) -> bytes:
    s = client()
    s.sendto(rrq(name, **options), ("127.0.0.1", port))
    out = bytearray()
    blksize = int(options.get("blksize", 512))
    while True:
        data, addr = s.recvfrom(70000)
        assert addr[1] != port, "replies come from a transfer port, not the listener"
        opcode, block = struct.unpack("!HH", data[:4])
        if opcode == p.OACK:
            s.sendto(struct.pack("!HH", p.ACK, 0), addr)
            continue
        if opcode == p.ERROR:
            raise FileNotFoundError(block, data[4:-1].decode())
        out += data[4:]
        s.sendto(struct.pack("!HH", p.ACK, block), addr)
        if len(data) - 4 < blksize:
            s.close()
            return bytes(out)


def test_fetch_bytes_exact(server):
    port, root, _ = server
    content = bytes(range(256)) * 100
    (root / "f").write_bytes(content)
    assert fetch(port, "f") == content
    assert fetch(port, "f", blksize=1400, tsize=0) == content


def test_not_found_and_wrq_refused(server):
    port, _, _ = server
    with pytest.raises(FileNotFoundError) as exc:
        fetch(port, "nothing")
    assert exc.value.args[0] == p.ERR_NOT_FOUND
    s = client()
    s.sendto(rrq("upload", opcode=2), ("127.0.0.1", port))
    data, _ = s.recvfrom(1000)
    assert data[:4] == b"\x00\x05\x00\x02"


def test_traversal_refused_and_logged(server, caplog):
    port, _, _ = server
    with caplog.at_level(logging.WARNING, logger="test.tftp"), pytest.raises(FileNotFoundError) as exc:
        fetch(port, "../../etc/passwd")
    assert exc.value.args[0] == p.ERR_ACCESS
    assert "127.0.0.1" in caplog.text and "refused" in caplog.text


def test_edk2_tsize_probe_error8_then_real_request(server):
    port, root, _ = server
    (root / "efi.bin").write_bytes(b"E" * 3000)
    s = client()
    s.sendto(rrq("efi.bin", tsize=0), ("127.0.0.1", port))
    data, addr = s.recvfrom(1000)
    assert data.startswith(b"\x00\x06tsize\x003000\x00")
    s.sendto(p.error_packet(p.ERR_OPTIONS, "tsize probe"), addr)
    s.sendto(rrq("efi.bin", blksize=1024), ("127.0.0.1", port))
    data, addr2 = s.recvfrom(1000)
    assert data == b"\x00\x06blksize\x001024\x00" and addr2 != addr
    s.sendto(struct.pack("!HH", p.ACK, 0), addr2)
    data, _ = s.recvfrom(2000)
    assert data[:4] == b"\x00\x03\x00\x01" and len(data) == 1028


def test_repeated_rrq_does_not_start_a_second_stream(server):
    port, root, _ = server
    (root / "f").write_bytes(b"f" * 100)
    s = client()
    s.sendto(rrq("f", blksize=1024), ("127.0.0.1", port))
    s.sendto(rrq("f", blksize=1024), ("127.0.0.1", port))
    _, first = s.recvfrom(1000)
    s.sendto(struct.pack("!HH", p.ACK, 0), first)
    data, addr = s.recvfrom(1000)
    assert addr == first and data[:4] == b"\x00\x03\x00\x01"


def reconfigure(service: TftpService, **tftp: object) -> None:
    service.reload(replace(service.config, tftp=replace(service.config.tftp, **tftp)))


def error_of(s: socket.socket) -> tuple[int, str]:
    data, _ = s.recvfrom(1000)
    opcode, code = struct.unpack("!HH", data[:4])
    assert opcode == p.ERROR, data
    return code, data[4:-1].decode()


def wait_until(condition, seconds: float = 5.0) -> bool:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return True
        threading.Event().wait(0.05)
    return condition()


def test_transfer_cap_refuses_when_every_transfer_is_alive(server):
    port, root, service = server
    reconfigure(service, max_transfers=3)
    (root / "f").write_bytes(b"f" * 5000)
    live = [client() for _ in range(3)]
    for s in live:  # three clients that ACK block 1, then stall: answered, not reclaimable
        s.sendto(rrq("f"), ("127.0.0.1", port))
        _, addr = s.recvfrom(1000)
        s.sendto(struct.pack("!HH", p.ACK, 1), addr)
        assert s.recvfrom(1000)[0][:4] == b"\x00\x03\x00\x02"
    late = client()
    late.sendto(rrq("f"), ("127.0.0.1", port))
    assert error_of(late) == (p.ERR_UNDEFINED, "server busy, try again")
    # timeout 0.2 s, 2 retries with backoff: gone after 0.2 + 0.4 + 0.8 s
    assert wait_until(lambda: not service.transfers)
    assert fetch(port, "f") == b"f" * 5000


def test_unanswered_transfers_give_their_slot_to_a_new_client(server, caplog):
    port, root, service = server
    reconfigure(service, max_transfers=3)
    (root / "f").write_bytes(b"f" * 5000)
    idle = [client() for _ in range(3)]
    for s in idle:  # three clients that never ACK
        s.sendto(rrq("f"), ("127.0.0.1", port))
        s.recvfrom(1000)
    threading.Event().wait(0.3)  # older than one retransmission interval (0.2 s)
    with caplog.at_level(logging.INFO, logger="test.tftp"):
        assert fetch(port, "f") == b"f" * 5000
    assert "slot reclaimed" in caplog.text


def test_per_client_cap_leaves_room_for_other_clients(server, caplog):
    port, root, service = server
    reconfigure(service, max_transfers_per_client=2)
    (root / "f").write_bytes(b"f" * 5000)
    mine = [client() for _ in range(2)]
    for s in mine:
        s.sendto(rrq("f"), ("127.0.0.1", port))
        s.recvfrom(1000)
    extra = [client() for _ in range(5)]
    with caplog.at_level(logging.WARNING, logger="test.tftp"):
        for s in extra:
            s.sendto(rrq("f"), ("127.0.0.1", port))
            assert error_of(s) == (p.ERR_UNDEFINED, "too many transfers")
    assert caplog.text.count("too many transfers") == 1  # rate-limited per (reason, host)
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.settimeout(3)
    other.bind(("127.0.0.2", 0))  # another host on the loopback network
    other.sendto(rrq("f"), ("127.0.0.1", port))
    data, _ = other.recvfrom(1000)
    assert data[:4] == b"\x00\x03\x00\x01"


def test_never_acknowledged_transfer_loses_its_slot_early(server, caplog):
    port, root, service = server
    reconfigure(service, retries=5)  # alone, the session would retransmit for 0.2 x 63 = 12.6 s
    (root / "f").write_bytes(b"f" * 5000)
    s = client()
    with caplog.at_level(logging.INFO, logger="test.tftp"):
        s.sendto(rrq("f"), ("127.0.0.1", port))
        s.recvfrom(1000)
        assert service.transfers
        assert wait_until(lambda: not service.transfers, 5.0)  # first-ACK deadline 7 x 0.2 s
    assert "no ACK within" in caplog.text


def test_no_transfer_socket_is_an_error_for_that_request(server, monkeypatch):
    """EMFILE under a flood: that client gets an ERROR, the service goes on."""
    port, root, _ = server
    (root / "f").write_bytes(b"f" * 100)

    def no_descriptors(*args: object) -> socket.socket:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(service_module, "transfer_socket", no_descriptors)
    s = client()
    s.sendto(rrq("f"), ("127.0.0.1", port))
    assert error_of(s) == (p.ERR_UNDEFINED, "server busy, try again")
    monkeypatch.undo()
    assert fetch(port, "f") == b"f" * 100


def test_unexpected_os_error_while_resolving_is_an_error_for_that_request(server, monkeypatch):
    port, _, service = server

    def broken(*args: object) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(service.tree, "resolve", broken)
    s = client()
    s.sendto(rrq("f"), ("127.0.0.1", port))
    assert error_of(s)[0] == p.ERR_UNDEFINED


def test_read_error_mid_transfer_ends_that_transfer_only(server, monkeypatch):
    port, root, service = server
    (root / "f").write_bytes(b"a" * 512 + b"b" * 512 + b"c")
    (root / "g").write_bytes(b"g" * 10)
    real_resolve = service.tree.resolve

    def failing_after_block_1(name: str, netascii: bool = False, client: str | None = None):
        resolved = real_resolve(name, netascii, client)
        read = resolved.read

        def reader(offset: int, length: int) -> bytes:
            if offset > 0:
                raise OSError(errno.EIO, "I/O error")
            return read(offset, length)

        resolved.read = reader
        return resolved

    monkeypatch.setattr(service.tree, "resolve", failing_after_block_1)
    s = client()
    s.sendto(rrq("f"), ("127.0.0.1", port))
    data, addr = s.recvfrom(1000)
    assert data[:4] == b"\x00\x03\x00\x01"
    s.sendto(struct.pack("!HH", p.ACK, 1), addr)
    assert wait_until(lambda: not service.transfers)
    monkeypatch.undo()
    assert fetch(port, "g") == b"g" * 10  # the pump still runs


def test_hundreds_of_concurrent_transfers(server):
    port, root, service = server
    content = bytes(range(256)) * 6  # 3 blocks + an empty one at blksize 512
    (root / "f").write_bytes(content)
    clients = [client() for _ in range(250)]
    for s in clients:
        s.sendto(rrq("f"), ("127.0.0.1", port))
    got = {id(s): bytearray() for s in clients}
    for block in range(1, 5):  # every client holds its transfer open while the others start
        for s in clients:
            data, addr = s.recvfrom(1000)
            assert struct.unpack("!HH", data[:4]) == (p.DATA, block)
            got[id(s)] += data[4:]
            s.sendto(struct.pack("!HH", p.ACK, block), addr)
    assert all(bytes(v) == content for v in got.values())
    for s in clients:
        s.close()
    for _ in range(50):
        if not service.transfers:
            break
        threading.Event().wait(0.05)
    assert not service.transfers and service.completed >= 250


def test_packets_decode_with_tftpy():
    """tftpy's codec, an independent implementation, reads what we write."""
    from tftpy.TftpPacketFactory import TftpPacketFactory

    factory = TftpPacketFactory()
    oack = factory.parse(p.oack_packet({"blksize": "1468", "tsize": "42"}))
    assert oack.options == {"blksize": "1468", "tsize": "42"}
    err = factory.parse(p.error_packet(p.ERR_NOT_FOUND, "file not found"))
    assert err.errorcode == p.ERR_NOT_FOUND
    negotiated = p.negotiate({}, p.Limits(), 3)
    data = factory.parse(p.Session(lambda o, n: b"abc"[o:o + n], 3, negotiated, p.Limits()).start(0.0)[0])
    assert (data.blocknumber, data.data) == (1, b"abc")


def fetch_windowed(port: int, name: str, blksize: int, windowsize: int) -> bytes:
    """A RFC 7440 client: ACK each full window (and the last block)."""
    s = client()
    s.sendto(rrq(name, blksize=blksize, windowsize=windowsize), ("127.0.0.1", port))
    data, addr = s.recvfrom(70000)
    assert data[:2] == b"\x00\x06"
    s.sendto(struct.pack("!HH", p.ACK, 0), addr)
    out, expected = bytearray(), 1
    while True:
        data, _ = s.recvfrom(70000)
        opcode, block = struct.unpack("!HH", data[:4])
        assert (opcode, block) == (p.DATA, expected & 0xFFFF)
        out += data[4:]
        last = len(data) - 4 < blksize
        if last or expected % windowsize == 0:
            s.sendto(struct.pack("!HH", p.ACK, block), addr)
        if last:
            s.close()
            return bytes(out)
        expected += 1


@pytest.mark.parametrize(("blksize", "windowsize"), [(512, 8), (1468, 16), (8192, 8), (1000, 64)])
def test_windowsize_transfer_over_udp_gso(server, blksize, windowsize):
    port, root, _ = server
    content = os.urandom(blksize * 100 + 17)
    (root / "w").write_bytes(content)
    assert fetch_windowed(port, "w", blksize, windowsize) == content


def test_windowsize_without_gso(server, monkeypatch):
    port, root, _ = server

    def refuse(*args, **kwargs):
        raise OSError(errno.EINVAL, "no GSO here")

    monkeypatch.setattr(socket.socket, "sendmsg", refuse)
    content = os.urandom(1468 * 40)
    (root / "w").write_bytes(content)
    assert fetch_windowed(port, "w", 1468, 8) == content


def test_lost_ack_is_recovered_by_retransmission(server):
    port, root, _ = server
    (root / "f").write_bytes(b"a" * 512 + b"b" * 100)
    s = client()
    s.sendto(rrq("f"), ("127.0.0.1", port))
    first, addr = s.recvfrom(1000)
    again, _ = s.recvfrom(1000)  # our ACK "was lost": block 1 comes again after 0.2 s
    assert first == again and first[:4] == b"\x00\x03\x00\x01"
    s.sendto(struct.pack("!HH", p.ACK, 1), addr)
    data, _ = s.recvfrom(1000)
    assert data == b"\x00\x03\x00\x02" + b"b" * 100
    s.sendto(struct.pack("!HH", p.ACK, 1), addr)  # a duplicate ACK: no second copy of block 2 now
    s.settimeout(0.1)
    with pytest.raises(TimeoutError):
        s.recvfrom(1000)
    s.settimeout(3)
    again, _ = s.recvfrom(1000)  # only the timer resends it
    assert again == data
    s.sendto(struct.pack("!HH", p.ACK, 2), addr)


def test_reload_changes_menus_not_the_socket(server, caplog):
    port, root, service = server
    assert b"No instance configured" in fetch(port, "pxelinux.cfg/default")
    boot = root.parent / "nfsroot" / "lab" / "boot"
    boot.mkdir(parents=True)
    (boot / "vmlinuz-6.1.0-1-amd64").write_bytes(b"K")
    (boot / "initrd.img-6.1.0-1-amd64").write_bytes(b"I")
    service.reload(replace(service.config, instances=(Instance("lab", boot.parent),), kernel_args="quiet"))
    menu = fetch(port, "pxelinux.cfg/default").decode()
    assert "KERNEL vmlinuz-6.1.0-1-amd64@lab" in menu and menu.count(" quiet") == 1
    assert fetch(port, "efi64/vmlinuz-6.1.0-1-amd64@lab") == b"K"
    with caplog.at_level(logging.WARNING, logger="test.tftp"):
        service.reload(replace(service.config, tftp=replace(service.config.tftp, port=port + 1)))
    assert "needs a restart" in caplog.text
    assert fetch(port, "pxelinux.cfg/default")  # still served where it was bound


@pytest.mark.parametrize("late", [-1, 0, 1, 3])
def test_late_repeated_rrq_leaves_the_running_transfer_alone(server, late):
    """A client whose RRQ timer fired before it read our OACK (a busy client, or our loop
    behind on its queue) sends the same request again; it reaches us once the transfer runs.

    The client is connected to the first transfer's port by then: that transfer must go on (a
    second one would answer a port the client no longer listens to, and cancelling the first
    stranded the client mid-file: the N=200 storm's timeouts at pxelinux.0 blocks 3-8).
    late = -1 is the storm's case: the copy went out before ACK 0 (the OACK was waiting in
    the busy client's socket), so the service looked again RECHECK later, when blocks had
    gone through."""
    port, root, service = server
    content = os.urandom(512 * 6 + 7)
    (root / "f").write_bytes(content)
    s = client()
    request = rrq("f", blksize=512, tsize=0)
    s.sendto(request, ("127.0.0.1", port))
    data, addr = s.recvfrom(1000)
    assert data[:2] == b"\x00\x06"
    if late < 0:
        s.sendto(request, ("127.0.0.1", port))
    s.connect(addr)  # as pxelinux and bench/storm_client.py do: the transfer port only from now on
    s.send(struct.pack("!HH", p.ACK, 0))
    out = bytearray()
    for block in range(1, 8):
        data = s.recv(1000)
        assert struct.unpack("!HH", data[:4]) == (p.DATA, block), f"stalled after block {block - 1}"
        out += data[4:]
        if block == late + 1:  # the stale copy of the request, after `late` blocks went through
            s.sendto(request, ("127.0.0.1", port))
        if block == max(late, 0) + 3:
            threading.Event().wait(0.1)  # past the service's RECHECK, mid-transfer
        s.send(struct.pack("!HH", p.ACK, block))
    assert bytes(out) == content
    for _ in range(50):
        if not service.transfers:
            break
        threading.Event().wait(0.05)
    assert not service.transfers

def test_new_request_from_the_same_port_ends_the_old_transfer(server, caplog):
    """The client moved on to another file from the same port: the old transfer is cancelled.

    The cancel reaches the pump as a message: the pump must end the transfer then, not let it
    run until its retries run out (seen in the N=200 storm, when cancelling shut the socket down,
    as a transfer "timed out" 65 s after it had been replaced)."""
    port, root, service = server
    (root / "f").write_bytes(b"f" * 5000)
    (root / "g").write_bytes(b"g" * 100)
    s = client()
    with caplog.at_level(logging.INFO, logger="test.tftp"):
        s.sendto(rrq("f"), ("127.0.0.1", port))
        data, first = s.recvfrom(1000)
        assert data[:4] == b"\x00\x03\x00\x01"
        s.sendto(rrq("g"), ("127.0.0.1", port))
        while True:
            data, addr = s.recvfrom(1000)
            if addr != first:  # block 1 of f may come again before the cancel lands
                break
        assert addr != first and data == b"\x00\x03\x00\x01" + b"g" * 100
        s.sendto(struct.pack("!HH", p.ACK, 1), addr)
        for _ in range(40):  # timeout 0.2 s, 2 retries: a lingering transfer would last 1.4 s
            if "f stopped after" in caplog.text and not service.transfers:
                break
            threading.Event().wait(0.025)
        assert "f stopped after" in caplog.text and "cancelled" in caplog.text
        assert "timed out" not in caplog.text
        assert not service.transfers and (service.pump is None or not service.pump.table)


def test_lost_data_resent_while_the_client_repeats_its_ack(server):
    """Block 2 "lost": the client repeats ACK 1 faster than our timeout (0.2 s here). Each
    duplicate must not restart the wait for the retransmission (the dedicated threads, since
    removed, used to recv for a whole timeout again after each one: block 2 never came back)."""
    port, root, _ = server
    (root / "f").write_bytes(b"a" * 512 + b"b" * 512 + b"c" * 10)
    s = client()
    s.sendto(rrq("f"), ("127.0.0.1", port))
    data, addr = s.recvfrom(1000)
    assert data[:4] == b"\x00\x03\x00\x01"
    s.sendto(struct.pack("!HH", p.ACK, 1), addr)
    data, _ = s.recvfrom(1000)
    assert data[:4] == b"\x00\x03\x00\x02"  # "lost"
    s.settimeout(0.1)
    again = None
    for _ in range(10):  # 1 s of duplicate ACKs every 0.1 s
        s.sendto(struct.pack("!HH", p.ACK, 1), addr)
        with contextlib.suppress(TimeoutError):
            again, _ = s.recvfrom(1000)
            break
    assert again == data
    s.settimeout(3)
    s.sendto(struct.pack("!HH", p.ACK, 2), addr)
    data, _ = s.recvfrom(1000)
    assert data == b"\x00\x03\x00\x03" + b"c" * 10
    s.sendto(struct.pack("!HH", p.ACK, 3), addr)


def test_read_ahead_serves_any_block_order():
    from sidus_appliance.tftp.service import read_ahead

    content = os.urandom(100_000 + 3)
    calls = []

    def pread(offset: int, length: int) -> bytes:
        calls.append(offset)
        return content[offset:offset + length]

    read = read_ahead(pread, len(content), chunk=10_000)
    for n in range(0, len(content) // 1408 + 1):  # in order, then the last (short or empty) block
        assert read(n * 1408, 1408) == content[n * 1408:(n + 1) * 1408]
    assert len(calls) <= 12  # ~one pread per chunk, not one per block (72)
    rng = __import__("random").Random(5)
    for _ in range(500):  # retransmitted windows, big blocks, reads past the end
        offset, length = rng.randrange(0, len(content) + 5000), rng.choice((512, 1408, 8192, 65464))
        assert read(offset, length) == content[offset:offset + length]


# ---------------------------------------------------------------------- the pump: ownership and ends


def record_finishes(service: TftpService, monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, str]]:
    """Every (transfer, outcome) the service finishes, in order."""
    finished: list[tuple[object, str]] = []
    real = service._finish

    def finish(transfer, outcome: str) -> None:
        finished.append((transfer, outcome))
        real(transfer, outcome)

    monkeypatch.setattr(service, "_finish", finish)
    return finished


def on_loop(service: TftpService, call, *args: object) -> None:
    """Run `call(*args)` on the service's (running) loop and wait for it."""
    assert service.loop is not None
    done = threading.Event()

    def run() -> None:
        try:
            call(*args)
        finally:
            done.set()

    service.loop.call_soon_threadsafe(run)
    assert done.wait(5)


def test_a_transfer_cancelled_from_the_loop_is_finished_and_logged_once(server, monkeypatch, caplog):
    port, root, service = server
    finished = record_finishes(service, monkeypatch)
    (root / "f").write_bytes(b"f" * 5000)
    (root / "g").write_bytes(b"g" * 100)
    s = client()
    with caplog.at_level(logging.INFO, logger="test.tftp"):
        s.sendto(rrq("f"), ("127.0.0.1", port))
        _, first = s.recvfrom(1000)
        s.sendto(rrq("g"), ("127.0.0.1", port))  # replaces f: the loop cancels it through the pump
        while True:
            data, addr = s.recvfrom(1000)
            if addr != first:  # block 1 of f may come again before the cancel lands
                break
        assert data == b"\x00\x03\x00\x01" + b"g" * 100
        s.sendto(struct.pack("!HH", p.ACK, 1), addr)
        assert wait_until(lambda: len(finished) == 2)
        threading.Event().wait(0.5)  # past f's retransmissions: a second end of it would be in by now
    assert sorted(outcome for _, outcome in finished) == ["cancelled", "complete"]
    assert finished[0][0] is not finished[1][0]
    assert caplog.text.count("f stopped after") == 1 and caplog.text.count("sent g") == 1
    assert not service.transfers


def test_a_late_cancel_leaves_the_ended_transfer_and_the_next_one_alone(server, monkeypatch):
    """The pump ended a transfer on its own while the loop's cancel was on its way: the cancel
    changes nothing, not even for a new transfer whose socket got the same descriptor."""
    port, root, service = server
    finished = record_finishes(service, monkeypatch)
    (root / "f").write_bytes(b"f" * 2000)
    assert fetch(port, "f") == b"f" * 2000
    assert wait_until(lambda: len(finished) == 1)
    ended, outcome = finished[0]
    assert outcome == "complete"
    s = client()
    s.sendto(rrq("f"), ("127.0.0.1", port))
    data, addr = s.recvfrom(1000)
    assert data[:4] == b"\x00\x03\x00\x01"
    running = next(iter(service.transfers.values())).handle
    assert running.fd == ended.fd  # the descriptor was reused: the case at stake
    on_loop(service, service._cancel, ended, "late")
    s.sendto(struct.pack("!HH", p.ACK, 1), addr)
    data, _ = s.recvfrom(1000)
    assert data[:4] == b"\x00\x03\x00\x02"  # the new transfer goes on
    assert len(finished) == 1 and not running.done


def test_close_with_transfers_in_flight_joins_the_pump_and_finishes_each_once(server, monkeypatch, caplog):
    port, root, service = server
    finished = record_finishes(service, monkeypatch)
    (root / "f").write_bytes(b"f" * 5000)
    clients = [client() for _ in range(5)]
    for s in clients:  # each gets block 1 and never answers: running when close() comes
        s.sendto(rrq("f"), ("127.0.0.1", port))
        assert s.recvfrom(1000)[0][:4] == b"\x00\x03\x00\x01"
    pump = service.pump
    assert pump is not None and pump.is_alive()
    with caplog.at_level(logging.INFO, logger="test.tftp"):
        on_loop(service, service.close)
    assert not pump.is_alive()
    assert len(finished) == 5 and len({id(t) for t, _ in finished}) == 5
    assert {outcome for _, outcome in finished} == {"server shutting down"}
    assert all(t.done for t, _ in finished)
    threading.Event().wait(0.5)  # the pump's last notification has run on the loop by now
    assert len(finished) == 5 and not service.transfers
    assert "did not stop" not in caplog.text


def test_close_finishes_ends_the_loop_never_collected(tmp_path, monkeypatch):
    """Transfers the pump ended while the loop was not running (their `_collect` pending) and
    transfers still running: close() finishes every one once, and the pending `_collect` calls,
    run afterwards, finish none again."""
    port, root, service, loop = started_service(tmp_path)
    finished = record_finishes(service, monkeypatch)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        (root / "f").write_bytes(b"f" * 1000)  # blocks 1 and 2 (488 bytes)
        clients = [client() for _ in range(4)]
        ports = []
        for s in clients:
            s.sendto(rrq("f"), ("127.0.0.1", port))
            data, addr = s.recvfrom(1000)
            assert data[:4] == b"\x00\x03\x00\x01"
            ports.append(addr)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    assert not thread.is_alive()
    pump = service.pump
    assert pump is not None
    for s, addr in zip(clients[:2], ports[:2], strict=True):  # these two complete on the pump alone
        s.sendto(struct.pack("!HH", p.ACK, 1), addr)
        assert s.recvfrom(1000)[0][:4] == b"\x00\x03\x00\x02"
        s.sendto(struct.pack("!HH", p.ACK, 2), addr)
    assert wait_until(lambda: len(pump.table) == 2)
    assert not finished  # the loop is stopped: the two ends wait in the queue
    service.close()  # on this thread, the loop's owner while it is stopped
    assert not pump.is_alive()
    assert sorted(outcome for _, outcome in finished) == ["complete"] * 2 + ["server shutting down"] * 2
    assert len({id(t) for t, _ in finished}) == 4 and service.completed == 2
    loop.run_until_complete(asyncio.sleep(0.05))  # the pump's pending notifications run now
    assert len(finished) == 4 and not service.transfers
    loop.close()


def test_many_parallel_transfers_all_complete(server, monkeypatch):
    port, root, service = server
    finished = record_finishes(service, monkeypatch)
    files = {f"f{i}": os.urandom(30_000 + 997 * i) for i in range(40)}
    for name, content in files.items():
        (root / name).write_bytes(content)

    def get(name: str) -> bytes:
        if int(name[1:]) % 2:
            return fetch_windowed(port, name, 1400, 8)
        return fetch(port, name, blksize=1024)

    with ThreadPoolExecutor(len(files)) as pool:  # every client at once
        got = dict(zip(files, pool.map(get, files), strict=True))
    assert got == files
    assert wait_until(lambda: len(finished) == len(files) and not service.transfers)
    assert {outcome for _, outcome in finished} == {"complete"}
    assert len({id(t) for t, _ in finished}) == len(files) and service.completed == len(files)
