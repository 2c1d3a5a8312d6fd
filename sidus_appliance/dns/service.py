"""asyncio transport for the DNS core: UDP and TCP listeners, forwarding, zone rebuilds.

The core (`server.py`) decides; this module only moves bytes, keeps time, and rebuilds the
zone when a bound lease changes: at once after a quiet spell, at most once per REBUILD_DELAY
during a boot storm, so names appear well within a second of the ACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import struct
import time
from collections.abc import Callable, Iterator

from ..config import Config
from ..dhcp.leases import Lease, LeaseStore
from .server import MAX_TCP_MESSAGE, DnsServer, Forward, Policy
from .zone import Zone, zone_content

REBUILD_DELAY = 0.1  # least spacing between zone rebuilds (a boot storm coalesces into few)
WARM_DELAY = 1.0  # precompute answers once the zone has been stable this long (not mid-storm)
TCP_IDLE = 10.0  # seconds a TCP client may stay silent (RFC 7766 suggests "seconds")
MAX_TCP_CLIENTS = 128
MAX_FORWARDS = 1024  # in-flight upstream queries; beyond that clients get SERVFAIL at once


def listen_addresses(config: Config) -> list[str]:
    listen = config.dns.listen or (config.server_ip, "127.0.0.1")
    return list(dict.fromkeys(str(a) for a in listen))


def upstreams_of(config: Config) -> tuple[list[tuple[str, int]], list[str]]:
    """Usable upstreams, and the configured ones dropped because they are ourselves (a loop)."""
    ours = {(a, config.dns.port) for a in listen_addresses(config)}
    usable, dropped = [], []
    for text in config.dns.upstream:
        host, _, port = text.partition(":")
        upstream = (host, int(port or 53))
        if upstream in ours or (upstream[1] == config.dns.port and host.startswith("127.") and "0.0.0.0" in ours):
            dropped.append(text)
        else:
            usable.append(upstream)
    return usable, dropped


def policy_of(config: Config) -> Policy:
    dns = config.dns
    return Policy(bool(upstreams_of(config)[0]), dns.recursion_allowed, dns.transfer_allowed)


def next_serial(previous: int, now: float) -> int:
    """Strictly increasing; the clock keeps it increasing across restarts too."""
    return max(previous + 1, int(now)) & 0xFFFFFFFF


class _UdpListener:
    """A UDP socket read straight from the loop's selector, in batches.

    asyncio's datagram transport costs a callback, a few checks and a buffer test per
    datagram; with replies precomputed, that overhead was most of our time. Here one
    readiness event drains up to BATCH datagrams with plain recvfrom/sendto. A reply that
    finds the send buffer full is dropped and counted (UDP: the client retries), as the
    kernel itself would drop it.
    """

    BATCH = 64

    def __init__(self, service: DnsService, sock: socket.socket) -> None:
        self.service = service
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        recvfrom, sendto = self.sock.recvfrom, self.sock.sendto
        handle = self.service.core.handle_udp
        for _ in range(self.BATCH):
            try:
                data, addr = recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ICMP unreachable reported on a later recv
                self.service.core.stats["udp_errors"] += 1
                continue
            try:
                out = handle(data, addr[0])
            except Exception:  # the core should never raise; if it does, count it and keep serving
                self.service.crashed(data)
                continue
            if out is None:
                continue
            if type(out) is bytes:
                try:
                    sendto(out, addr)
                except OSError:
                    self.service.core.stats["send_errors"] += 1
            elif isinstance(out, Forward):
                self.service.forward(out, self._replier(addr))

    def _replier(self, addr: tuple[str, int]) -> Callable[[bytes], None]:
        def reply(data: bytes) -> None:
            try:
                self.sock.sendto(data, addr)
            except OSError:
                self.service.core.stats["send_errors"] += 1

        return reply

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


class _UpstreamUdp(asyncio.DatagramProtocol):
    """One forwarded query's socket (its own random port: harder to spoof than a shared one)."""

    def __init__(self, service: DnsService, action: Forward, upstream_id: bytes) -> None:
        self.service, self.action, self.upstream_id = service, action, upstream_id
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.service.core.relay(self.action.query, self.action.question, self.upstream_id, data)
        if reply is not None and not self.done.done():
            self.done.set_result(reply)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


class DnsService:
    name = "dns"

    def __init__(self, config: Config, leases: LeaseStore, log: logging.Logger) -> None:
        self.config = config
        self.leases = leases
        self.log = log
        content, problems = zone_content(config, self._bound())
        self.zone = Zone(config.domain, config.reverse_zone, next_serial(0, time.time()), content, problems)
        self.core = DnsServer(self.zone, policy_of(config), warm=False)  # warmed in steps by start()
        self._listeners: list[_UdpListener] = []
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rebuild_handle: asyncio.TimerHandle | None = None
        self._expiry_handle: asyncio.TimerHandle | None = None
        self._warm_handle: asyncio.TimerHandle | None = None
        self._last_rebuild = float("-inf")
        self._tcp_clients = 0
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def addresses(self) -> list[str]:
        return listen_addresses(self.config)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for problem in self.zone.problems:
            self.log.warning("dns: %s", problem)
        for upstream in upstreams_of(self.config)[1]:
            self.log.warning("dns: upstream %s is this server itself (a forwarding loop); ignored", upstream)
        port = self.config.dns.port
        try:
            for address in self.addresses():
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    sock.setblocking(False)
                    sock.bind((address, port))
                except OSError as exc:
                    sock.close()
                    raise OSError(exc.errno, f"UDP {address}:{port}: {exc.strerror}") from None
                self._listeners.append(_UdpListener(self, sock))
                try:
                    server = await asyncio.start_server(self._tcp_client, address, port, reuse_address=True)
                except OSError as exc:
                    raise OSError(exc.errno, f"TCP {address}:{port}: {exc.strerror}") from None
                self._servers.append(server)
        except BaseException:
            self.close()  # the runtime only closes services that started: release what we bound
            raise
        self.leases.subscribe(self._lease_changed)
        self._arm_expiry(self._bound())
        self._step_warm(self.core.warming())
        self.log.info("dns: serving %s and %s on %s port %d (serial %d, %d records)",
                      self.config.domain, self.config.reverse_zone, ", ".join(self.addresses()), port,
                      self.zone.serial, len(self.zone.content))

    def close(self) -> None:
        if not self._closed and self._listeners:
            self.log.info("dns: counters %s", " ".join(f"{k}={v}" for k, v in sorted(self.core.counters().items())))
        self._closed = True
        for handle in (self._rebuild_handle, self._expiry_handle, self._warm_handle):
            if handle is not None:
                handle.cancel()
        for listener in self._listeners:
            listener.close()
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        self._listeners, self._servers = [], []

    def reload(self, config: Config) -> None:
        """SIGHUP: new policy and zone now; listen/port changes need a restart."""
        if (config.dns.port, config.dns.listen, config.server_ip) != (
                self.config.dns.port, self.config.dns.listen, self.config.server_ip):
            self.log.warning("dns: listen addresses/port changed; restart to apply them")
        self.config = config
        self.core.set_policy(policy_of(config))
        self._rebuild(reason="reload", force=True)

    # ------------------------------------------------------------------ zone updates

    def _bound(self) -> list[Lease]:
        """Bound, unexpired leases. (Expired ones stay in the store until DHCP reclaims the
        address; their names should not outlive the lease, so `_arm_expiry` wakes us.)"""
        now = time.time()
        return [lease for lease in self.leases.all() if lease.state == "bound" and not lease.expired(now)]

    def _arm_expiry(self, leases: list[Lease]) -> None:
        if self._expiry_handle is not None:
            self._expiry_handle.cancel()
            self._expiry_handle = None
        ends = [lease.expires for lease in leases if lease.expires is not None]
        if ends and self._loop is not None and not self._closed:
            delay = min(max(0.0, min(ends) - time.time()) + 0.05, 3600.0)  # long sleeps re-arm hourly
            self._expiry_handle = self._loop.call_later(delay, self._rebuild, "expiry")

    def _lease_changed(self, old: Lease | None, new: Lease | None) -> None:
        if self._closed or self._loop is None:
            return
        if (old is not None and old.state == "bound") or (new is not None and new.state == "bound"):
            try:
                here = asyncio.get_running_loop() is self._loop
            except RuntimeError:
                here = False
            if here:  # the usual case: DHCP commits on our loop; no extra hop
                self._schedule_rebuild()
            else:
                self._loop.call_soon_threadsafe(self._schedule_rebuild)

    def _schedule_rebuild(self) -> None:
        """Rebuild at once after a quiet spell, else at most once per REBUILD_DELAY (a storm)."""
        if self._rebuild_handle is None and self._loop is not None and not self._closed:
            delay = max(0.0, self._last_rebuild + REBUILD_DELAY - self._loop.time())
            self._rebuild_handle = self._loop.call_later(delay, self._rebuild)

    def _rebuild(self, reason: str = "leases", force: bool = False) -> None:
        self._rebuild_handle = None
        if self._closed:
            return
        if self._loop is not None:
            self._last_rebuild = self._loop.time()
        bound = self._bound()
        self._arm_expiry(bound)
        content, problems = zone_content(self.config, bound)
        apexes = (self.config.domain, self.config.reverse_zone)
        if content == self.zone.content and apexes == self.zone.apexes and not force:
            return
        for problem in set(problems) - set(self.zone.problems):
            self.log.warning("dns: %s", problem)
        self.zone = Zone(*apexes, next_serial(self.zone.serial, time.time()), content, problems)
        # The memo is emptied at once (no stale answer survives the swap) and refills from
        # queries; the whole zone is precomputed again once changes pause (WARM_DELAY), in
        # small steps between datagrams, so a boot storm never pays for repeated warm-ups.
        self.core.set_zone(self.zone, warm=False)
        if self._warm_handle is not None:
            self._warm_handle.cancel()
        if self._loop is not None:
            self._warm_handle = self._loop.call_later(WARM_DELAY, lambda: self._step_warm(self.core.warming()))
        self.log.info("dns: zone rebuilt (%s): serial %d, %d records", reason, self.zone.serial, len(content))

    def _step_warm(self, steps: Iterator[None]) -> None:
        if self._closed or self._loop is None:
            return
        if next(steps, StopIteration) is not StopIteration:
            self._loop.call_soon(self._step_warm, steps)

    # ------------------------------------------------------------------ forwarding

    def forward(self, action: Forward, reply: Callable[[bytes], None]) -> None:
        if len(self._tasks) >= MAX_FORWARDS:
            self._send_servfail(action, reply)
            return
        task = asyncio.ensure_future(self._forward(action, reply))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward(self, action: Forward, reply: Callable[[bytes], None]) -> None:
        upstreams = upstreams_of(self.config)[0]
        timeout = self.config.dns.forward_timeout / max(1, len(upstreams))
        for host, port in upstreams:  # in order; each gets an equal share of the timeout
            upstream_id = secrets.token_bytes(2)
            query = upstream_id + action.query[2:]
            try:
                # UDP first, whatever the client used; TCP only when a TCP client would
                # otherwise get a truncated answer (upstreams need not listen on TCP).
                answer = await self._ask_udp(host, port, query, action, upstream_id, timeout)
                if action.tcp and answer is not None and answer[2] & 0x02:
                    answer = await asyncio.wait_for(self._ask_tcp(host, port, query, action, upstream_id), timeout)
            except (TimeoutError, OSError, EOFError, asyncio.IncompleteReadError) as exc:
                self.core.stats["upstream_failures"] += 1
                self.log.debug("dns: upstream %s:%d failed: %r", host, port, exc)
                continue
            if answer is not None:
                reply(answer)
                return
        self._send_servfail(action, reply)

    def _send_servfail(self, action: Forward, reply: Callable[[bytes], None]) -> None:
        answer = self.core.servfail(action.query)
        if answer is not None:
            reply(answer)

    async def _ask_udp(self, host: str, port: int, query: bytes, action: Forward, upstream_id: bytes,
                       timeout: float) -> bytes | None:
        assert self._loop is not None
        transport, protocol = await self._loop.create_datagram_endpoint(
            lambda: _UpstreamUdp(self, action, upstream_id), remote_addr=(host, port))
        try:
            transport.sendto(query)
            return await asyncio.wait_for(protocol.done, timeout)
        finally:
            transport.close()

    async def _ask_tcp(self, host: str, port: int, query: bytes, action: Forward, upstream_id: bytes) -> bytes | None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(struct.pack("!H", len(query)) + query)
            await writer.drain()
            (size,) = struct.unpack("!H", await reader.readexactly(2))
            return self.core.relay(action.query, action.question, upstream_id, await reader.readexactly(size))
        finally:
            writer.close()

    # ------------------------------------------------------------------ TCP

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = peer[0] if peer else "0.0.0.0"
        if self._tcp_clients >= MAX_TCP_CLIENTS:
            self.core.stats["tcp_refused"] += 1
            writer.close()
            return
        self._tcp_clients += 1
        try:
            while not self._closed:
                try:
                    (size,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), TCP_IDLE))
                    data = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                try:
                    out = self.core.handle_tcp(data, client)
                except Exception:
                    self.crashed(data)
                    return
                if isinstance(out, Forward):
                    answers: list[bytes] = []
                    await self._forward(out, answers.append)
                    out = answers
                if not out:
                    return  # dropped: a TCP peer sending garbage loses its connection
                for message in out:
                    if len(message) <= MAX_TCP_MESSAGE:
                        writer.write(struct.pack("!H", len(message)) + message)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._tcp_clients -= 1
            with contextlib.suppress(Exception):
                writer.close()

    def crashed(self, data: bytes) -> None:
        self.core.stats["internal_errors"] += 1
        self.log.exception("dns: internal error on a %d-byte message %s", len(data), data[:64].hex())
