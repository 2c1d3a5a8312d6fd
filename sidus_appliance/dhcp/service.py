"""asyncio transport for the DHCP core: moves bytes between the interface and DhcpServer.

All policy lives in `server.py` (sans-IO). This layer only knows sockets: it binds port 67
to the configured interface alone (SO_BINDTODEVICE, so replies leave where requests came in
and the host's other networks never hear us), and delivers each reply the way RFC 2131 4.1
asks — unicast to a client that has no address yet needs an ARP entry we inject ourselves
(as dnsmasq does); without CAP_NET_ADMIN we fall back to broadcast, which clients accept.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import struct
import time
from ipaddress import IPv4Address

from ..config import Config
from .leases import LeaseStore
from .server import Decision, DhcpServer, Reply

SIOCSARP = 0x8955
ATF_COM = 0x02
ARPHRD_ETHER = 1
BROADCAST = ("255.255.255.255", 68)


def _arpreq(ip: IPv4Address, mac: str, device: str) -> bytes:
    """struct arpreq: protocol address, hardware address, flags, netmask, device."""
    pa = struct.pack("=H", socket.AF_INET) + struct.pack("!H4s8x", 0, ip.packed)  # sa_family is host order
    ha = struct.pack("=H6s8x", ARPHRD_ETHER, bytes.fromhex(mac.replace(":", "")))
    netmask = bytes(16)
    return pa[:16] + ha + struct.pack("=i", ATF_COM) + netmask + device.encode()[:15].ljust(16, b"\0")


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, service: DhcpService) -> None:
        self.service = service

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.service.handle(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.service.log.debug("dhcp socket error: %s", exc)


class DhcpService:
    name = "dhcp"

    def __init__(self, config: Config, leases: LeaseStore, log: logging.Logger) -> None:
        self.config = config
        self.log = log
        self.core = DhcpServer(config, leases)
        self.transport: asyncio.DatagramTransport | None = None
        self.sock: socket.socket | None = None
        self.arp_ok = True

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
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        self.log.info("dhcp: listening on %s port %d", self.config.interface, self.config.dhcp.port)

    def handle(self, data: bytes, addr: tuple[str, int]) -> None:
        replies, decision = self.core.handle(data, time.time())
        self._log_decision(decision, addr)
        for reply in replies:
            self._send(reply)

    def _log_decision(self, d: Decision, addr: tuple[str, int]) -> None:
        if d.action == "DROP":
            self.log.debug("dhcp: dropped packet from %s:%d: %s", addr[0], addr[1], d.reason)
            return
        arch = "-" if d.arch is None else str(d.arch)
        parts = [f"dhcp: {d.message} from {d.mac} ({d.client}, arch {arch}) -> {d.action}"]
        if d.address is not None:
            parts.append(str(d.address))
        if d.boot_file:
            parts.append(f"boot {d.boot_file}")
        if d.reason:
            parts.append(f"({d.reason})")
        level = logging.WARNING if d.action in ("NAK", "IGNORE") and d.reason else logging.INFO
        self.log.log(level, " ".join(parts))

    def _send(self, reply: Reply) -> None:
        if self.transport is None:
            return
        destination = reply.destination
        if reply.broadcast or (destination[0] == str(reply.yiaddr) and not self._inject_arp(reply.yiaddr, reply.mac)):
            destination = BROADCAST
        try:
            self.transport.sendto(reply.data, destination)
        except OSError as exc:
            self.log.warning("dhcp: cannot send reply to %s (%s): %s", reply.mac, destination[0], exc)

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
        self.core.reload(config)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
