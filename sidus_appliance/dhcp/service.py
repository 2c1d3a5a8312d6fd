"""asyncio transport for the DHCP core: moves bytes between the interface and DhcpServer.

All policy lives in `server.py` (sans-IO). This layer only knows sockets and the journal: it
binds port 67 to the configured interface alone (SO_BINDTODEVICE, so replies leave where
requests came in and the host's other networks never hear us), and delivers each reply the way
RFC 2131 4.1 asks — unicast to a client that has no address yet needs an ARP entry we inject
ourselves (as dnsmasq does); without CAP_NET_ADMIN we fall back to broadcast.

Group commit: each wakeup drains up to BATCH datagrams, lets the core decide them, appends the
burst's journal lines in one write and, with `dhcp.fsync`, fdatasyncs them on a worker thread
(the loop keeps serving DNS and TFTP meanwhile, and packets arriving then form the next burst).
Replies leave only once what they promise is durable; if the write or fsync fails, the lease
table is rolled back to the journal and those replies are never sent (clients retransmit).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import logging
import socket
import struct
import time
from ipaddress import IPv4Address
from typing import TYPE_CHECKING

from ..config import Config
from ..ratelimit import LineBudget, RateLimitedLog
from .leases import LeaseStore
from .server import Decision, DhcpServer, Reply

if TYPE_CHECKING:
    from ..observe.observer import Observer

SIOCSARP = 0x8955
ATF_COM = 0x02
ARPHRD_ETHER = 1
BROADCAST = ("255.255.255.255", 68)
BATCH = 64  # datagrams drained per wakeup: one journal write (and one fsync) for all of them
RECV_SIZE = 4096  # larger than any DHCP message a client may send (option 57 tops at 65535 but nobody does)


def _arpreq(ip: IPv4Address, mac: str, device: str) -> bytes:
    """struct arpreq: protocol address, hardware address, flags, netmask, device."""
    pa = struct.pack("=H", socket.AF_INET) + struct.pack("!H4s8x", 0, ip.packed)  # sa_family is host order
    ha = struct.pack("=H6s8x", ARPHRD_ETHER, bytes.fromhex(mac.replace(":", "")))
    netmask = bytes(16)
    return pa[:16] + ha + struct.pack("=i", ATF_COM) + netmask + device.encode()[:15].ljust(16, b"\0")


class DhcpService:
    name = "dhcp"

    def __init__(self, config: Config, leases: LeaseStore, log: logging.Logger,
                 observer: Observer | None = None) -> None:
        self.config = config
        self.log = log
        self.observer = observer
        self.leases = leases
        leases.autoflush = False  # the service commits in groups, see the module docstring
        self.core = DhcpServer(config, leases)
        self._log_notes(self.core.notes)
        self.sock: socket.socket | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.arp_ok = True
        self._waiting: list[Reply] = []  # replies held until the journal holds what they promise
        self._syncing = False  # an fdatasync of the journal is running on the worker thread
        self._sync_thread: concurrent.futures.ThreadPoolExecutor | None = None
        self.budget = LineBudget()  # per-packet lines: a flood is counted, not written
        self.warnings = RateLimitedLog(log)  # one line per (what, client) per minute
        self.withheld = 0  # replies never sent because their journal write failed

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.config.interface.encode())
            # Room for a classroom's burst of DISCOVERs (~500 queued requests), but no more: a
            # deeper queue under overload answers every client after its own timeout (bench/dhcp
            # saw throughput collapse with 4 MiB); better to drop and let clients retransmit.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind(("0.0.0.0", self.config.dhcp.port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(sock.fileno(), self._readable)
        self._sync_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dhcp fsync")
        self.log.info("dhcp: listening on %s port %d (journal fsync %s)", self.config.interface,
                      self.config.dhcp.port, "on" if self.leases.fsync else "off")

    # ------------------------------------------------------------------ receive, decide

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        for _ in range(BATCH):
            try:
                data, addr = sock.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP errors queued on the socket
                self.log.debug("dhcp socket error: %s", exc)
                break
            self.handle(data, addr)
        self.commit()

    def handle(self, data: bytes, addr: tuple[str, int]) -> None:
        """One datagram: decide now; reply now if nothing waits on the journal, else after commit()."""
        replies, decision = self.core.handle(data, time.time())
        self._log_decision(decision, addr)
        if self._syncing or not self.leases.durable or self._waiting:
            self._waiting.extend(replies)
        else:
            for reply in replies:
                self._send(reply)

    # ------------------------------------------------------------------ group commit

    def commit(self) -> None:
        """Persist what the burst changed, then release the replies that waited on it."""
        if self._syncing:
            return  # this burst goes with the next sync
        leases = self.leases
        wrote = bool(leases.pending)
        try:
            mark = leases.write_pending()
        except OSError as exc:
            self._failed(exc)
            return
        replies, self._waiting = self._waiting, []
        if not wrote or not leases.fsync or self.loop is None or self._sync_thread is None:
            # Nothing written (offers, lookups) or no fsync wanted: the journal already holds all
            # the replies promise.
            leases.mark_durable(mark)
            self._send_all(replies)
            return
        self._syncing = True
        future = self.loop.run_in_executor(self._sync_thread, leases.sync)
        future.add_done_callback(lambda done: self._synced(done, mark, replies))

    def _synced(self, done: asyncio.Future[None], mark: tuple[int, int, int], replies: list[Reply]) -> None:
        self._syncing = False
        if done.cancelled():
            return
        exc = done.exception()
        if exc is not None:
            self._waiting[:0] = replies
            self._failed(exc)
            return
        self.leases.mark_durable(mark)
        self._send_all(replies)
        if not self.leases.durable or self._waiting:
            self.commit()  # the burst that arrived while we synced

    def _failed(self, exc: BaseException) -> None:
        """The journal could not take the burst: nothing it promised may leave."""
        undone = self.leases.rollback()
        withheld = len(self._waiting)
        self._waiting = []
        self.withheld += withheld
        self.warnings.error(("journal",), "dhcp: lease journal %s: %s; %d lease changes rolled back, %d replies "
                            "withheld (clients will retry)", self.leases.path, exc, undone, withheld)

    def _send_all(self, replies: list[Reply]) -> None:
        for reply in replies:
            self._send(reply)

    # ------------------------------------------------------------------ logging

    def _log_notes(self, notes: list[str]) -> None:
        for note in notes:
            self.log.info("dhcp: %s", note)

    def _log_decision(self, d: Decision, addr: tuple[str, int]) -> None:
        if d.error:
            self.warnings.error(("error", d.mac), "dhcp: %s from %s: %s", d.message, d.mac, d.reason)
            return
        if self.observer is not None:  # counted even when a flood mutes the log
            self.observer.dhcp(d.mac, d.message, d.action, d.address, d.client, d.arch, d.boot_file)
        dropped = self.budget.allow()
        if dropped is None:
            return
        if dropped:
            self.log.warning("dhcp: %d per-packet log lines suppressed (flood)", dropped)
        if d.action == "DROP":
            self.log.debug("dhcp: dropped packet from %s:%d: %s", addr[0], addr[1], d.reason)
            return
        if d.action in ("NAK", "IGNORE") and d.reason:
            # Warnings a client can trigger at will: once per client and action per minute.
            self.warnings.warning((d.action, d.mac), "%s", d.log_line())
        else:
            self.log.info("%s", d.log_line())

    # ------------------------------------------------------------------ send

    def _send(self, reply: Reply) -> None:
        if self.sock is None:
            return
        destination = reply.destination
        if reply.broadcast or (destination[0] == str(reply.yiaddr) and not self._inject_arp(reply.yiaddr, reply.mac)):
            destination = BROADCAST
        try:
            self.sock.sendto(reply.data, destination)
        except OSError as exc:  # EAGAIN under a flood included: DHCP clients retransmit
            self.warnings.warning(("send", reply.mac), "dhcp: cannot send reply to %s (%s): %s", reply.mac,
                                  destination[0], exc)

    def _inject_arp(self, ip: IPv4Address, mac: str) -> bool:
        """Teach the kernel yiaddr→chaddr so a unicast reaches a client with no address yet."""
        if not self.arp_ok or self.sock is None:
            return False
        try:
            fcntl.ioctl(self.sock.fileno(), SIOCSARP, _arpreq(ip, mac, self.config.interface))
            return True
        except OSError as exc:
            self.arp_ok = False  # no CAP_NET_ADMIN after the privilege drop: broadcast from now on
            self.log.info("dhcp: cannot add ARP entries (%s); replying by broadcast", exc.strerror)
            return False

    def reload(self, config: Config) -> None:
        self.config = config
        self._log_notes(self.core.reload(config))
        self.commit()  # reconciliation may have dropped or renamed leases

    def close(self) -> None:
        if self.loop is not None and self.sock is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                self.loop.remove_reader(self.sock.fileno())
        if self._sync_thread is not None:
            self._sync_thread.shutdown(wait=True)  # a running fsync finishes; its replies are not sent
            self._sync_thread = None
        self._syncing = False
        if not self.leases.durable:
            # Last burst: make it durable synchronously so that what we decided survives.
            with contextlib.suppress(OSError):
                mark = self.leases.write_pending()
                self.leases.sync()
                self.leases.mark_durable(mark)
        if self.sock is not None:
            self.sock.close()
            self.sock = None
