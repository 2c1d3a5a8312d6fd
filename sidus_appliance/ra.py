"""IPv6 "RA quench": answer Router Solicitations with a bare Router Advertisement.

Why: iPXE's "Configuring (net0)" waits ~20 s for an IPv6 router when none answers; one RA with
router lifetime 0 ("I am not a default router"), no prefix information and the M/O flags clear
ends that wait (measured: DHCP done at 3.3 s, BIOS boot 12-14 s instead of ~32 s). The RA tells
hosts nothing they could configure from, so it changes no host's IPv6 state on a real network.

Least intrusion: RAs are sent only in answer to a Router Solicitation (never periodically), at
most one per MIN_DELAY_BETWEEN_RAS (3 s, RFC 4861 6.2.6; solicitations inside that window are
answered together by the next RA), to ff02::1 from the interface's link-local address, hop
limit 255 (receivers drop RAs with any other).

Split as elsewhere: `RaResponder` and the codec functions are sans-IO (bytes and times in,
bytes and times out); `RaQuenchService` only moves bytes through a raw ICMPv6 socket, for which
the kernel computes the outgoing checksum and verifies incoming ones (RFC 3542 3.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from .config import Config

ICMPV6_RS = 133
ICMPV6_RA = 134
ND_OPT_SOURCE_LINKADDR = 1
MIN_DELAY_BETWEEN_RAS = 3.0  # RFC 4861 10: at most one multicast RA per 3 s
MAX_RA_DELAY_TIME = 0.5  # RFC 4861 6.2.6: solicited RAs wait a random 0..0.5 s
ALL_NODES = "ff02::1"
ALL_ROUTERS = "ff02::2"
ND_HOP_LIMIT = 255

# Linux socket options Python's socket module does not name.
ICMP6_FILTER = 1  # level IPPROTO_ICMPV6; struct icmp6_filter: 256 bits, a set bit blocks the type
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
IF_INET6 = Path("/proc/net/if_inet6")


# ----------------------------------------------------------------------------- sans-IO codec


@dataclass(frozen=True)
class RouterSolicitation:
    source: str  # the sender's IPv6 address ("::" before it has one)
    source_mac: str | None  # from the Source Link-Layer Address option, if any


def parse_rs(data: bytes, source: str, hop_limit: int | None) -> RouterSolicitation | str:
    """An ICMPv6 message (no IPv6 header) → the RS, or why it fails RFC 4861 6.1.1 validation.

    The checksum is not ours to check: the kernel verifies it for raw ICMPv6 sockets.
    """
    if hop_limit is not None and hop_limit != ND_HOP_LIMIT:
        return f"hop limit {hop_limit}, not 255 (forwarded or forged)"
    if len(data) < 8:
        return f"{len(data)} bytes, shorter than an RS"
    if data[0] != ICMPV6_RS:
        return f"ICMPv6 type {data[0]}, not a Router Solicitation"
    if data[1] != 0:
        return f"code {data[1]}, not 0"
    mac = None
    offset = 8
    while offset < len(data):
        if offset + 2 > len(data):
            return "truncated option"
        kind, units = data[offset], data[offset + 1]
        if units == 0:
            return "option of length 0"
        end = offset + 8 * units
        if end > len(data):
            return "option runs past the message"
        if kind == ND_OPT_SOURCE_LINKADDR and units == 1:
            mac = ":".join(f"{b:02x}" for b in data[offset + 2 : offset + 8])
        offset = end
    if mac is not None and ipaddress.IPv6Address(source).is_unspecified:
        return "source link-layer option from the unspecified address"
    return RouterSolicitation(source, mac)


def build_ra() -> bytes:
    """The bare RA: ICMPv6 header + RA body, checksum 0 (the kernel fills it in), no options.

    Cur hop limit 0 (unspecified), M=O=0 (no DHCPv6), router lifetime 0 (not a default router),
    reachable time and retrans timer 0 (unspecified): hosts keep every setting they had.
    """
    return struct.pack("!BBHBBHII", ICMPV6_RA, 0, 0, 0, 0, 0, 0, 0)


class RaResponder:
    """When to send the next RA, given solicitations and the clock; never unsolicited."""

    def __init__(self, min_interval: float = MIN_DELAY_BETWEEN_RAS) -> None:
        self.min_interval = min_interval
        self.last_sent: float | None = None
        self.scheduled: float | None = None

    def solicited(self, now: float, jitter: float) -> float | None:
        """An RS arrived at `now`: the time to send an RA, or None if one is already scheduled.

        `jitter` is the caller's random 0..MAX_RA_DELAY_TIME; an RA due inside the minimum
        interval after the last one is pushed to its end and answers every RS seen meanwhile.
        """
        if self.scheduled is not None:
            return None
        due = now + jitter
        if self.last_sent is not None:
            due = max(due, self.last_sent + self.min_interval)
        self.scheduled = due
        return due

    def sent(self, now: float) -> None:
        self.last_sent = now
        self.scheduled = None

    def cancelled(self) -> None:
        self.scheduled = None


def link_local_address(interface: str, table: str) -> str | None:
    """The interface's usable link-local address from /proc/net/if_inet6 text, if any.

    Tentative (DAD still running) and DAD-failed addresses do not count: an RA from them would
    carry a source the kernel cannot use, and receivers ignore RAs without a link-local source.
    """
    for line in table.splitlines():
        fields = line.split()
        if len(fields) != 6 or fields[5] != interface:
            continue
        address = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
        flags = int(fields[4], 16)
        if address.is_link_local and not flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED):
            return str(address)
    return None


def icmp6_filter_only(*types: int) -> bytes:
    """struct icmp6_filter passing only `types` (Linux: a set bit blocks that type)."""
    words = [0xFFFFFFFF] * 8
    for t in types:
        words[t >> 5] &= ~(1 << (t & 31))
    return struct.pack("=8I", *words)


# ----------------------------------------------------------------------------- asyncio layer


class RaQuenchService:
    """Raw ICMPv6 socket on the appliance interface; answers RS with `build_ra()`.

    Never fails the appliance's start: no IPv6 on the host or the interface, or an interface
    that forwards IPv6 (this host is a router there), is logged once and the service stays idle.
    """

    name = "ra"

    def __init__(self, config: Config, leases: object, log: logging.Logger) -> None:
        self.config = config
        self.log = log
        self.core = RaResponder()
        self.sock: socket.socket | None = None
        self.ifindex = 0
        self.timer: asyncio.TimerHandle | None = None
        self.warned_no_link_local = False
        self.ra = build_ra()

    async def start(self) -> None:
        interface = self.config.interface
        conf = Path("/proc/sys/net/ipv6/conf") / interface
        try:
            disabled = (conf / "disable_ipv6").read_text().strip() == "1"
            forwarding = (conf / "forwarding").read_text().strip() != "0"
        except OSError:
            self.log.info("ra: no IPv6 on %s; not answering Router Solicitations", interface)
            return
        if disabled:
            self.log.info("ra: IPv6 is disabled on %s; not answering Router Solicitations", interface)
            return
        if forwarding:
            # This host may be the segment's real IPv6 router (radvd): hosts key routers by
            # source address, so our lifetime-0 RA from the same link-local would withdraw
            # its default route.
            self.log.info("ra: %s forwards IPv6 (a router here); not answering Router Solicitations", interface)
            return
        try:
            self.ifindex = socket.if_nametoindex(interface)
            self.sock = self._open(interface)
        except OSError as exc:
            self.log.warning("ra: cannot listen for Router Solicitations on %s: %s; continuing without", interface, exc)
            return
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)
        if self._source() is None:
            self.log.info("ra: %s has no usable link-local address yet; RAs wait until it has one", interface)
            self.warned_no_link_local = True
        self.log.info("ra: answering Router Solicitations on %s with a bare RA (router lifetime 0)", interface)

    def _open(self, interface: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
            sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, icmp6_filter_only(ICMPV6_RS))
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ND_HOP_LIMIT)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ND_HOP_LIMIT)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self.ifindex)
            # Our own RA looped back would reach this host's stack; it has no business there.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            # The RS hop limit arrives as ancillary data: 6.1.1 wants 255 (not forwarded).
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
            mreq = socket.inet_pton(socket.AF_INET6, ALL_ROUTERS) + struct.pack("=I", self.ifindex)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def _source(self) -> str | None:
        try:
            return link_local_address(self.config.interface, IF_INET6.read_text())
        except OSError:
            return None

    def _readable(self) -> None:
        if self.sock is None:
            return
        while True:
            try:
                data, ancdata, _flags, addr = self.sock.recvmsg(1500, socket.CMSG_SPACE(4))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log.debug("ra: receive error: %s", exc)
                return
            hop_limit = None
            for level, kind, value in ancdata:
                if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT and len(value) >= 4:
                    hop_limit = struct.unpack("=i", value[:4])[0]
            source = addr[0].split("%")[0]
            self.handle(data, source, hop_limit)

    def handle(self, data: bytes, source: str, hop_limit: int | None) -> None:
        if not (self.config.dhcp.enabled and self.config.dhcp.ipv6_ra_quench):
            return
        rs = parse_rs(data, source, hop_limit)
        if isinstance(rs, str):
            self.log.debug("ra: dropped ICMPv6 from %s: %s", source, rs)
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = self.core.solicited(now, random.uniform(0, MAX_RA_DELAY_TIME))
        self.log.debug("ra: Router Solicitation from %s (%s)", source, rs.source_mac or "no lladdr")
        if due is not None:
            self.timer = loop.call_at(due, self._send)

    def _send(self) -> None:
        self.timer = None
        now = asyncio.get_running_loop().time()
        source = self._source()
        if self.sock is None or source is None:
            self.core.cancelled()
            if not self.warned_no_link_local:
                self.log.info("ra: %s has no usable link-local address; RA not sent", self.config.interface)
                self.warned_no_link_local = True
            return
        # IPV6_PKTINFO pins the source to the link-local address (a receiver drops RAs from
        # anything else) whatever the kernel's source selection would have picked.
        pktinfo = socket.inet_pton(socket.AF_INET6, source) + struct.pack("=I", self.ifindex)
        try:
            self.sock.sendmsg(
                [self.ra], [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, pktinfo)], 0, (ALL_NODES, 0, 0, self.ifindex)
            )
        except OSError as exc:
            self.core.cancelled()
            self.log.warning("ra: cannot send RA on %s: %s", self.config.interface, exc)
            return
        self.core.sent(now)
        self.log.info("ra: sent bare RA to %s on %s from %s", ALL_NODES, self.config.interface, source)

    def reload(self, config: Config) -> None:
        # The runtime keeps the interface (restart-only). Switching the quench off applies now
        # (solicitations are then ignored); switching it on needs a restart to open the socket.
        self.config = config

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.sock is not None:
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to remove from
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
