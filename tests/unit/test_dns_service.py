"""The asyncio DnsService on 127.0.0.1 (high port, no root): UDP, TCP, AXFR, lease-driven
rebuilds with serial bumps, SIGHUP reload, forwarding to a fake upstream, and SERVFAIL."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import socket
import struct
import time
from collections.abc import Callable
from ipaddress import IPv4Address

import pytest
from dnslib import QTYPE, RCODE, RR, SOA, A, DNSRecord

from sidus_appliance.config import Config
from sidus_appliance.dhcp.leases import InMemoryLeaseStore
from sidus_appliance.dns import service as service_module
from sidus_appliance.dns.notify import NOTIFY_SPACING
from sidus_appliance.dns.service import REBUILD_DELAY, DnsService, next_serial, policy_of, upstreams_of

from .test_dns_helpers import config, lease, query


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (we bind both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def lab_config(port: int, **dns: object) -> Config:
    return config(dns={"port": port, "listen": ["127.0.0.1"], "recursion_allowed": ["127.0.0.0/8"],
                       "transfer_allowed": ["127.0.0.1/32"], "notify": [], **dns})


async def udp(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        await loop.sock_sendto(sock, data, ("127.0.0.1", port))
        reply, _ = await asyncio.wait_for(loop.sock_recvfrom(sock, 65535), timeout)
        return reply
    finally:
        sock.close()


async def tcp(port: int, data: bytes, messages: int = 1) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(struct.pack("!H", len(data)) + data)
        out = []
        for _ in range(messages):
            (size,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 10))
            out.append(await reader.readexactly(size))
        return out
    finally:
        writer.close()


def run(test: Callable[[DnsService, InMemoryLeaseStore, int], object], **dns: object) -> None:
    async def main() -> None:
        port = free_port()
        leases = InMemoryLeaseStore()
        service = DnsService(lab_config(port, **dns), leases, logging.getLogger("test.dns"))
        await service.start()
        try:
            await test(service, leases, port)  # type: ignore[misc]
        finally:
            service.close()

    asyncio.run(main())


def test_udp_and_tcp_answers() -> None:
    async def body(service: DnsService, leases: InMemoryLeaseStore, port: int) -> None:
        reply = DNSRecord.parse(await udp(port, query("filer.sidus.zone")))
        assert [str(rr.rdata) for rr in reply.rr] == ["gateway.sidus.zone.", "10.20.17.254"]
        (over_tcp,) = await tcp(port, query("253.17.20.10.in-addr.arpa", "PTR"))
        assert str(DNSRecord.parse(over_tcp).rr[0].rdata) == "master.sidus.zone."

    run(body)


def test_axfr_over_tcp() -> None:
    async def body(service: DnsService, leases: InMemoryLeaseStore, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        q = query("sidus.zone", "AXFR")
        writer.write(struct.pack("!H", len(q)) + q)
        records = []
        while len([r for r in records if r.rtype == QTYPE.SOA]) < 2:
            (size,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 10))
            records += DNSRecord.parse(await reader.readexactly(size)).rr
        writer.close()
        assert len(records) == len(service.zone.transfer("sidus.zone"))

    run(body)


def test_lease_changes_visible_within_a_second_and_serial_grows() -> None:
    async def body(service: DnsService, leases: InMemoryLeaseStore, port: int) -> None:
        async def a(name: str) -> DNSRecord:
            return DNSRecord.parse(await udp(port, query(name)))

        async def serial() -> int:
            return DNSRecord.parse(await udp(port, query("sidus.zone", "SOA"))).rr[0].rdata.times[0]

        first = await serial()
        assert (await a("carol.sidus.zone")).header.rcode == RCODE.NXDOMAIN
        leases.commit(lease("10.20.17.60", "dhcp-60", client="carol", state="offered"))
        leases.commit(lease("10.20.17.60", "dhcp-60", client="carol"))
        # The rebuild is a timer due now: it runs before this sleep ends, however loaded the
        # box is (timers fire in deadline order), so this is not a timing race.
        await asyncio.sleep(0.05)
        assert (await a("carol.sidus.zone")).header.rcode == RCODE.NOERROR
        second = await serial()
        assert second > first
        ptr = DNSRecord.parse(await udp(port, query("60.17.20.10.in-addr.arpa", "PTR")))
        assert str(ptr.rr[0].rdata) == "carol.sidus.zone."
        leases.remove(lease("10.20.17.60", "dhcp-60").mac)  # release: both directions revert
        await asyncio.sleep(REBUILD_DELAY + 0.05)  # a second change within REBUILD_DELAY waits for it
        assert (await a("carol.sidus.zone")).header.rcode == RCODE.NXDOMAIN
        ptr = DNSRecord.parse(await udp(port, query("60.17.20.10.in-addr.arpa", "PTR")))
        assert str(ptr.rr[0].rdata) == "dhcp-60.sidus.zone."
        assert await serial() > second

    run(body)


def test_expired_lease_name_disappears() -> None:
    async def body(service: DnsService, leases: InMemoryLeaseStore, port: int) -> None:
        short = dataclasses.replace(lease("10.20.17.61", "dhcp-61", client="dave"), expires=time.time() + 0.4)
        leases.commit(short)
        await asyncio.sleep(0.25)
        assert DNSRecord.parse(await udp(port, query("dave.sidus.zone"))).header.rcode == RCODE.NOERROR
        await asyncio.sleep(0.4)  # the lease stays in the store (DHCP reclaims lazily); DNS drops it
        assert DNSRecord.parse(await udp(port, query("dave.sidus.zone"))).header.rcode == RCODE.NXDOMAIN

    run(body)


def test_reload_rebuilds_zone_and_policy() -> None:
    async def body(service: DnsService, leases: InMemoryLeaseStore, port: int) -> None:
        before = service.zone.serial
        new = lab_config(port, records=[{"name": "nas", "type": "A", "value": "10.20.17.5"}], transfer_allowed=[])
        service.reload(new)
        assert service.zone.serial > before
        reply = DNSRecord.parse(await udp(port, query("nas.sidus.zone")))
        assert [str(rr.rdata) for rr in reply.rr] == ["10.20.17.5"]
        (refused,) = await tcp(port, query("sidus.zone", "AXFR"))
        assert DNSRecord.parse(refused).header.rcode == RCODE.REFUSED

    run(body)


class FakeUpstream(asyncio.DatagramProtocol):
    """Answers every A question with 192.0.2.1, or stays silent."""

    def __init__(self, silent: bool = False) -> None:
        self.silent = silent
        self.seen: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.seen.append(data)
        if not self.silent:
            reply = DNSRecord.parse(data).reply()
            reply.add_answer(RR(str(DNSRecord.parse(data).q.qname), rdata=A("192.0.2.1")))
            self.transport.sendto(bytes(reply.pack()), addr)  # type: ignore[attr-defined]


@pytest.mark.parametrize("silent", [False, True])
def test_forwarding_and_servfail_on_timeout(silent: bool) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fake = FakeUpstream(silent)
        upstream, _ = await loop.create_datagram_endpoint(lambda: fake, local_addr=("127.0.0.1", 0))
        up_port = upstream.get_extra_info("sockname")[1]
        port = free_port()
        cfg = lab_config(port, upstream=[f"127.0.0.1:{up_port}"], forward_timeout=0.3)
        service = DnsService(cfg, InMemoryLeaseStore(), logging.getLogger("test.dns"))
        await service.start()
        try:
            q = query("www.example.org", qid=0x4242)
            start = time.monotonic()
            reply = DNSRecord.parse(await udp(port, q))
            assert reply.header.id == 0x4242
            if silent:
                assert reply.header.rcode == RCODE.SERVFAIL and 0.25 < time.monotonic() - start < 3.0
            else:
                assert [str(rr.rdata) for rr in reply.rr] == ["192.0.2.1"]
                assert fake.seen[0][2:] == q[2:]  # the client's query, under an ID of our own
                (over_tcp,) = await tcp(port, query("www.example.com"))  # UDP upstream serves TCP clients too
                assert [str(rr.rdata) for rr in DNSRecord.parse(over_tcp).rr] == ["192.0.2.1"]
            # Zone answers are not held up by a slow upstream.
            pending = asyncio.ensure_future(udp(port, query("www.example.net")))
            local = DNSRecord.parse(await udp(port, query("gateway.sidus.zone")))
            assert str(local.rr[0].rdata) == str(IPv4Address("10.20.17.254"))
            await pending
        finally:
            service.close()
            upstream.close()

    asyncio.run(main())


def test_upstream_pointing_at_ourselves_is_ignored() -> None:
    cfg = lab_config(5353, upstream=["127.0.0.1:5353", "192.0.2.53", "10.20.17.254:5353"])
    usable, dropped = upstreams_of(cfg)
    assert usable == [("192.0.2.53", 53), ("10.20.17.254", 5353)]  # not a listen address here
    assert dropped == [("127.0.0.1", 5353)]
    assert not policy_of(lab_config(5353, upstream=["127.0.0.1:5353"])).upstream


def test_start_names_an_upstream_that_is_ourselves(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="test.dns")
    port = free_port()

    async def main() -> None:
        cfg = lab_config(port, upstream=["192.0.2.53", f"127.0.0.1:{port}"])
        service = DnsService(cfg, InMemoryLeaseStore(), logging.getLogger("test.dns"))
        await service.start()
        service.close()

    asyncio.run(main())
    assert [r.getMessage() for r in caplog.records if "upstream" in r.getMessage()] == [
        f"dns: upstream 127.0.0.1:{port} is this server itself (a forwarding loop); ignored"]


class FakeSecondary:
    """A UDP socket on 127.0.0.1 that takes NOTIFYs, answering them or not."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.target = f"127.0.0.1:{self.port}"

    async def notify(self, timeout: float = 10.0) -> tuple[DNSRecord, bytes, tuple[str, int]]:
        data, addr = await asyncio.wait_for(asyncio.get_running_loop().sock_recvfrom(self.sock, 4096), timeout)
        message = DNSRecord.parse(data)
        assert message.header.opcode == 4 and message.header.aa and not message.header.qr
        return message, data, addr

    def answer(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = DNSRecord.parse(data).reply()
        reply.rr = []
        self.sock.sendto(bytes(reply.pack()), addr)

    async def notifies(self, count: int, answer: bool = True) -> dict[str, int]:
        """The next `count` NOTIFYs as {zone: serial}, answered."""
        seen = {}
        for _ in range(count):
            message, data, addr = await self.notify()
            assert addr[0] == "127.0.0.1"  # from the address DNS listens on, which secondaries know
            seen[str(message.q.qname).rstrip(".")] = message.rr[0].rdata.times[0]
            if answer:
                self.answer(data, addr)
        return seen


def ixfr_from(apex: str, serial: int) -> bytes:
    request = DNSRecord.parse(query(apex, "IXFR"))
    request.add_auth(RR(apex + ".", QTYPE.SOA, rdata=SOA("gateway.sidus.zone.", "hostmaster.sidus.zone.",
                                                           (serial, 300, 60, 604800, 60))))
    return bytes(request.pack())


def test_notify_at_start_and_for_each_change_then_an_incremental_ixfr() -> None:
    secondary = FakeSecondary()

    async def body(service: DnsService, leases: InMemoryLeaseStore, port: int) -> None:
        start = service.zone.serial
        assert await secondary.notifies(2) == {"sidus.zone": start, "17.20.10.in-addr.arpa": start}
        leases.commit(lease("10.20.17.60", "dhcp-60", client="erin"))
        changed = await secondary.notifies(2)
        assert changed == {"sidus.zone": service.zone.serial, "17.20.10.in-addr.arpa": service.zone.serial}
        assert service.zone.serial > start
        messages = await tcp(port, ixfr_from("sidus.zone", start), messages=1)
        records = [(str(rr.rname), QTYPE[rr.rtype], str(rr.rdata)) for rr in DNSRecord.parse(messages[0]).rr]
        assert [r[1] for r in records] == ["SOA", "SOA", "SOA", "A", "SOA"]
        assert records[3] == ("erin.sidus.zone.", "A", "10.20.17.60")
        assert service.core.stats["notify_answered"] == 4 and service.core.stats["ixfr_incremental"] == 1

    run(body, notify=[secondary.target])
    secondary.sock.close()


def test_an_unanswered_notify_is_sent_again_with_its_id(caplog: pytest.LogCaptureFixture) -> None:
    secondary = FakeSecondary()

    async def body(service: DnsService, leases: InMemoryLeaseStore, port: int) -> None:
        first = {(await secondary.notify())[1] for _ in range(2)}
        again = {(await secondary.notify())[1] for _ in range(2)}  # after NOTIFY_TIMEOUT, the same datagrams
        assert again == first and service.core.stats["notify_sent"] == 4

    run(body, notify=[secondary.target])
    secondary.sock.close()
    assert_no_traceback(caplog)


def test_a_lease_storm_is_a_few_notifies_ending_with_the_final_serial() -> None:
    secondary = FakeSecondary()

    async def body(service: DnsService, leases: InMemoryLeaseStore, port: int) -> None:
        await secondary.notifies(2)
        began = time.monotonic()
        for octet in range(100, 150):  # 50 leases, a little apart: many zone rebuilds
            leases.commit(lease(f"10.20.17.{octet}", f"dhcp-{octet}", client=f"pc{octet}"))
            await asyncio.sleep(0.01)
        storm = time.monotonic() - began
        await asyncio.sleep(2 * REBUILD_DELAY)  # the last rebuild is a timer due by then
        final = service.zone.serial
        seen: dict[str, int] = {}
        while seen != {"sidus.zone": final, "17.20.10.in-addr.arpa": final}:
            seen |= await secondary.notifies(1)
        sent = service.core.stats["notify_sent"] - 2  # the two at start
        # One NOTIFY per zone per NOTIFY_SPACING at most while changes go on, plus the final one.
        assert sent <= 2 * (storm / NOTIFY_SPACING + 2), (sent, storm)
        for _ in range(100):  # the last answer reaches the service soon after we sent it
            if service.core.stats["notify_answered"] == service.core.stats["notify_sent"]:
                break
            await asyncio.sleep(0.05)
        assert service.core.stats["notify_answered"] == service.core.stats["notify_sent"]

    run(body, notify=[secondary.target])
    secondary.sock.close()


def test_next_serial_is_monotonic() -> None:
    assert next_serial(5, 3.0) == 6
    assert next_serial(5, 1_000_000.5) == 1_000_000


# ----------------------------------------------------------------------------- hostile clients

LONG_LABEL = struct.pack("!6H", 0xBEEF, 0x0100, 1, 0, 0, 0) + b"\x40" + b"a" * 64 + b"\x07example\x03org\0\0\1\0\1"


def log_lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def connect(port: int, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> DNSRecord:
    writer.write(struct.pack("!H", len(data)) + data)
    (size,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 5))
    return DNSRecord.parse(await reader.readexactly(size))


async def closed_by_server(reader: asyncio.StreamReader, within: float = 5.0) -> bool:
    """Whether the server closed (EOF or reset) within `within` seconds."""
    try:
        return await asyncio.wait_for(reader.read(1), within) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


def test_unencodable_names_get_formerr_on_udp_and_tcp_and_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.dns")

    async def body(service: DnsService, leases: InMemoryLeaseStore, port: int) -> None:
        for _ in range(50):  # recursion is allowed here: before the fix this was forwarded
            reply = DNSRecord.parse(await udp(port, LONG_LABEL))
            assert reply.header.id == 0xBEEF and reply.header.rcode == RCODE.FORMERR and not reply.questions
        reader, writer = await connect(port)
        for _ in range(3):  # FORMERR keeps the connection: the next query on it is answered
            assert (await ask(reader, writer, LONG_LABEL)).header.rcode == RCODE.FORMERR
        assert [str(rr.rdata) for rr in (await ask(reader, writer, query("gateway.sidus.zone"))).rr] == ["10.20.17.254"]
        writer.close()
        assert len(log_lines(caplog, "malformed query from 127.0.0.1")) == 1
        assert service.core.stats["formerr"] == 53

    run(body)
    assert_no_traceback(caplog)


def test_slowloris_is_cut_off_after_the_idle_timeout(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.dns")

    async def body(service: DnsService, leases: InMemoryLeaseStore, port: int) -> None:
        q = query("gateway.sidus.zone")
        message = struct.pack("!H", len(q)) + q
        reader, writer = await connect(port)
        sent = 0
        while sent < len(message) and not reader.at_eof():  # 1 byte per 0.2 s: 8 s for the whole query
            writer.write(message[sent:sent + 1])
            sent += 1
            await asyncio.sleep(0.2)
        assert sent < len(message), "a 0.5 s timeout let a query trickle in for 8 s"
        assert await closed_by_server(reader)
        writer.close()
        assert service.core.stats["tcp_timeouts"] == 1 and len(service.tcp_pool) == 0

    run(body, tcp_idle_timeout=0.5)
    assert_no_traceback(caplog)


def test_idle_connection_closed_and_lifetime_bounded() -> None:
    async def body(service: DnsService, leases: InMemoryLeaseStore, port: int) -> None:
        idle_reader, idle_writer = await connect(port)
        assert await closed_by_server(idle_reader)
        reader, writer = await connect(port)
        for _ in range(20):  # a query every 0.3 s (< the 0.5 s timeout) for up to 6 s
            try:
                await ask(reader, writer, query("gateway.sidus.zone"))
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            await asyncio.sleep(0.3)
        else:
            pytest.fail("a client asking every 0.3 s kept its connection 6 s (lifetime: 1.5 s)")
        writer.close()
        idle_writer.close()

    run(body, tcp_idle_timeout=0.5)


def test_per_source_cap_and_a_new_source_gets_in_when_full(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.dns")

    async def body(service: DnsService, leases: InMemoryLeaseStore, port: int) -> None:
        held = [await connect(port, "127.0.0.2") for _ in range(2)] + [await connect(port, "127.0.0.3")
                                                                        for _ in range(2)]
        await asyncio.sleep(0.1)
        assert len(service.tcp_pool) == 4
        for _ in range(5):  # over the per-source cap: closed at once, logged once
            reader, writer = await connect(port, "127.0.0.2")
            assert await closed_by_server(reader)
            writer.close()
        assert len(log_lines(caplog, "TCP connection from 127.0.0.2 refused")) == 1
        reader, writer = await connect(port, "127.0.0.4")  # pool full: a held connection makes room
        assert [str(rr.rdata) for rr in (await ask(reader, writer, query("gateway.sidus.zone"))).rr] == ["10.20.17.254"]
        writer.close()
        assert service.core.stats["tcp_evicted"] == 1
        closed = [await closed_by_server(r, within=0.5) for r, _ in held]
        assert sum(closed) == 1
        for _, w in held:
            w.close()

    run(body, tcp_max_connections=4, tcp_max_per_client=2)
    assert_no_traceback(caplog)


def test_out_of_descriptors_on_accept_is_one_line_and_accepting_resumes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.dns")

    class NoFds:
        def __init__(self, real: socket.socket) -> None:
            self.real = real

        def accept(self) -> None:
            raise OSError(errno.EMFILE, "Too many open files")

        def fileno(self) -> int:
            return self.real.fileno()

    async def body(service: DnsService, leases: InMemoryLeaseStore, port: int) -> None:
        listener = service._tcp_listeners[0]
        real = listener.sock
        listener.sock = NoFds(real)  # type: ignore[assignment]
        pending = asyncio.ensure_future(tcp(port, query("gateway.sidus.zone")))
        await asyncio.sleep(1.2)  # several EMFILE rounds, one pause each
        listener.sock = real
        (reply,) = await pending  # the connection waited in the backlog and is served now
        assert [str(rr.rdata) for rr in DNSRecord.parse(reply).rr] == ["10.20.17.254"]
        assert len(log_lines(caplog, "TCP accept failed")) == 1
        assert service.core.stats["tcp_accept_errors"] >= 2

    run(body)
    assert_no_traceback(caplog)


def test_a_failing_forward_is_a_servfail_and_one_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.dns")

    async def body(service: DnsService, leases: InMemoryLeaseStore, port: int) -> None:
        async def broken(*args: object) -> bytes:
            raise ValueError("a bug in the forwarding path")

        service._ask_udp = broken  # type: ignore[method-assign]
        for n in range(3):
            reply = DNSRecord.parse(await udp(port, query("www.example.org", qid=n)))
            assert reply.header.id == n and reply.header.rcode == RCODE.SERVFAIL
        (over_tcp,) = await tcp(port, query("www.example.org", qid=9))
        assert DNSRecord.parse(over_tcp).header.rcode == RCODE.SERVFAIL
        assert len(log_lines(caplog, "internal error")) == 1

    run(body, upstream=["127.0.0.1:9"])
    assert_no_traceback(caplog)


def test_one_client_cannot_take_every_forwarding_slot(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.dns")
    monkeypatch.setattr(service_module, "MAX_FORWARDS_PER_CLIENT", 3)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        fake = FakeUpstream(silent=True)  # every forward stays in flight until forward_timeout
        upstream, _ = await loop.create_datagram_endpoint(lambda: fake, local_addr=("127.0.0.1", 0))
        port = free_port()
        cfg = lab_config(port, upstream=[f"127.0.0.1:{upstream.get_extra_info('sockname')[1]}"], forward_timeout=3.0)
        service = DnsService(cfg, InMemoryLeaseStore(), logging.getLogger("test.dns"))
        await service.start()
        flooder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        flooder.bind(("127.0.0.2", 0))
        flooder.setblocking(False)
        try:
            for n in range(5):
                await loop.sock_sendto(flooder, query(f"name{n}.example.org", qid=n), ("127.0.0.1", port))
            for _ in range(2):  # over its budget: SERVFAIL at once, without waiting for the upstream
                reply, _ = await asyncio.wait_for(loop.sock_recvfrom(flooder, 65535), 10)
                assert DNSRecord.parse(reply).header.rcode == RCODE.SERVFAIL
            assert len(fake.seen) == 3 and service.core.stats["forwards_over_budget"] == 2
            other = asyncio.ensure_future(udp(port, query("www.example.net")))  # another client: forwarded
            for _ in range(100):
                if len(fake.seen) == 4:
                    break
                await asyncio.sleep(0.02)
            assert len(fake.seen) == 4
            other.cancel()
            assert len(log_lines(caplog, "forwarded and unanswered")) == 1
        finally:
            flooder.close()
            service.close()
            upstream.close()

    asyncio.run(main())
