"""N simulated PXE clients, run inside the storm's client namespace (one veth per client, whose
MAC is the client's MAC). Started by bench/storm.py as
`ip netns exec <client ns> python bench/storm_client.py SPEC.json`; prints results as JSON.

Each client runs the sequence a SeaBIOS/iPXE + pxelinux.0 client runs (as seen in the QEMU lab):
DHCP DISCOVER/OFFER/REQUEST/ACK with arch 0 over a packet socket; pxelinux.0 (blksize 1432,
tsize), ldlinux.c32, the menu lookups (01-<mac>, hex IP and its prefixes, default) up to the
first found, the menu's UI module (menu.c32, libutil.c32) and the menu re-read, then the
default entry's kernel and initrd (blksize 1408, tsize), one ACK per block.

One thread, one epoll loop, no asyncio: the client side must cost far less CPU than the
servers it measures (precomputed ACKs, recv_into a shared buffer, connected sockets), and it
must never block: while it does, every client's packets wait in their sockets and their
timers fire (a repeated RRQ with our OACK unread). Packet sockets are costly that way: binding
one created with a protocol, and closing any, waits for an RCU grace period (synchronize_net,
11-13 ms each on our box: 200 clients were 2.3 s of binds, then 2.6 s of closes, one after
the other, with nothing read meanwhile). So each DHCP socket is created without a protocol
(its bind then registers it, no wait), and parked when DHCP is done (a drop-all filter, out
of the epoll set) and closed only after the storm.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import resource
import select
import socket
import struct
import sys
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

ETH_P_IP = 0x0800
SO_ATTACH_FILTER = 26
_DROP_ALL = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))  # BPF: ret #0
DROP_ALL = struct.pack("HL", 1, ctypes.addressof(_DROP_ALL))  # struct sock_fprog
PACKET_OUTGOING = 4
SO_BINDTODEVICE = 25
ACKS = [struct.pack("!HH", 4, i) for i in range(65536)]
DHCP_RETRIES = (4.0, 8.0, 16.0, 32.0)  # PXE spec retransmission schedule
MAGIC = b"\x63\x82\x53\x63"
UI_DEPS = {"menu.c32": ["libutil.c32"], "vesamenu.c32": ["libutil.c32", "libcom32.c32"]}


# ---------------------------------------------------------------- DHCP over a packet socket


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ip_udp(payload: bytes, sport: int = 68, dport: int = 67) -> bytes:
    """IPv4/UDP from 0.0.0.0 to 255.255.255.255 (UDP checksum 0: allowed over IPv4)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes(4), b"\xff" * 4)
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    return hdr + udp


def dhcp_message(msg_type: int, xid: int, mac: bytes, extra: bytes = b"") -> bytes:
    """A PXE ROM's DISCOVER/REQUEST: arch 0, UNDI 2.1, PXEClient vendor class, no broadcast flag."""
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0,
                        bytes(4), bytes(4), bytes(4), bytes(4), mac.ljust(16, b"\0"), b"", b"")  # fmt: skip
    vendor = b"PXEClient:Arch:00000:UNDI:002001"
    opts = bytes((53, 1, msg_type)) + bytes((57, 2, 0x04, 0xEC)) + bytes((93, 2, 0, 0)) + bytes((94, 3, 1, 2, 1))
    opts += bytes((60, len(vendor))) + vendor
    prl = bytes((1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58, 59, 60, 66, 67))
    opts += bytes((55, len(prl))) + prl + extra + b"\xff"
    return bootp + MAGIC + opts


def parse_dhcp_reply(ip_packet: bytes, xid: int) -> tuple[int, str, dict[int, bytes]] | None:
    """(message type, yiaddr, options) of a BOOTREPLY for xid, or None."""
    ihl = (ip_packet[0] & 0x0F) * 4
    if len(ip_packet) < ihl + 8 + 240 or ip_packet[9] != 17:
        return None
    if struct.unpack_from("!H", ip_packet, ihl + 2)[0] != 68:
        return None
    b = ip_packet[ihl + 8 :]
    if b[0] != 2 or struct.unpack_from("!I", b, 4)[0] != xid or b[236:240] != MAGIC:
        return None
    opts: dict[int, bytes] = {}
    i = 240
    while i < len(b):
        code = b[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        if i + 1 >= len(b):
            break
        n = b[i + 1]
        opts[code] = opts.get(code, b"") + b[i + 2 : i + 2 + n]
        i += 2 + n
    if 53 not in opts:
        return None
    return opts[53][0], socket.inet_ntoa(b[16:20]), opts


# ---------------------------------------------------------------- the client program


@dataclass
class Dhcp:
    pass


@dataclass
class Tftp:
    name: str
    blksize: int = 1408
    keep: bool = False  # return the content (menus); otherwise only the size


def menu_lookups(mac: str, ip: str) -> list[str]:
    hexip = f"{int(IPv4Address(ip)):08X}"
    return ["01-" + mac.replace(":", "-"), *(hexip[:n] for n in range(8, 0, -1)), "default"]


def parse_menu(text: str) -> tuple[str | None, str, str]:
    """(UI module, kernel, initrd) of the DEFAULT entry of a pxelinux config."""
    ui, default, labels, current = None, None, {}, None
    for raw in text.splitlines():
        words = raw.strip().split(None, 1)
        if not words or words[0].startswith("#"):
            continue
        key, value = words[0].upper(), (words[1] if len(words) > 1 else "")
        if key == "UI":
            ui = value.split()[0]
        elif key == "DEFAULT":
            default = value.split()[0]
        elif key == "LABEL":
            current = labels.setdefault(value.strip(), {})
        elif current is not None and key in ("KERNEL", "LINUX", "APPEND"):
            current[key] = value.strip()
    entry = labels.get(default or "", {})
    kernel = entry.get("KERNEL") or entry.get("LINUX")
    initrd = next((w[len("initrd=") :] for w in entry.get("APPEND", "").split() if w.startswith("initrd=")), None)
    if not kernel or not initrd:
        raise ValueError(f"menu has no kernel/initrd for DEFAULT {default!r}")
    return ui, kernel, initrd


def pxelinux_program(c: SimClient) -> Generator[Any, Any, None]:
    c.begin("dhcp")
    yield Dhcp()
    c.begin("loader")
    yield Tftp("pxelinux.0", 1432)  # fetched by the PXE ROM (iPXE asks 1432)
    yield Tftp("ldlinux.c32")
    c.begin("menu")
    for name in menu_lookups(c.mac, c.ip):
        text = yield Tftp(f"pxelinux.cfg/{name}", keep=True)
        if text is not None:
            break
    else:
        raise RuntimeError("no pxelinux.cfg file found")
    ui, kernel, initrd = parse_menu(text.decode(errors="replace"))
    if ui:
        for module in (ui, *UI_DEPS.get(ui, [])):
            yield Tftp(module)
        yield Tftp(f"pxelinux.cfg/{name}", keep=True)  # menu.c32 reads the config again
    c.begin("kernel")
    yield Tftp(kernel)
    c.begin("initrd")
    yield Tftp(initrd)


# ---------------------------------------------------------------- per-client state machine


@dataclass
class SimClient:
    ifname: str
    mac: str
    server: str
    tftp_timeout: float
    tftp_retries: int
    ip: str = ""
    error: str = ""
    done: bool = False
    phases: dict[str, list[float]] = field(default_factory=dict)
    bytes: int = 0
    retransmits: int = 0
    files: int = 0
    # current operation
    sock: socket.socket | None = None
    op: Any = None
    deadline: float = 0.0
    tries: int = 0
    last: bytes = b""
    xid: int = 0
    state: str = ""
    expect: int = 1
    blksize: int = 512
    got: int = 0
    chunks: list[bytes] | None = None
    connected: bool = False
    current_phase: str = ""

    def begin(self, phase: str) -> None:
        now = time.monotonic()
        if self.current_phase:
            self.phases[self.current_phase][1] = now
        self.phases[phase] = [now, now]
        self.current_phase = phase

    def end(self) -> None:
        if self.current_phase:
            self.phases[self.current_phase][1] = time.monotonic()


class Storm:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.ep = select.epoll()
        self.by_fd: dict[int, SimClient] = {}
        self.buf = bytearray(70000)
        self.view = memoryview(self.buf)
        self.ipr = IPRoute()
        self.clients = [
            SimClient(c["ifname"], c["mac"], spec["server"], spec.get("tftp_timeout", 1.0), spec.get("tftp_retries", 6))
            for c in spec["clients"]
        ]
        self.programs: dict[int, Generator[Any, Any, None]] = {}
        self.parked: list[socket.socket] = []  # DHCP packet sockets, closed after the storm
        self.ifindex = {c.ifname: self.ipr.link_lookup(ifname=c.ifname)[0] for c in self.clients}

    # -- program driver

    def advance(self, c: SimClient, result: Any = None) -> None:
        prog = self.programs[id(c)]
        try:
            op = prog.send(result)
        except StopIteration:
            c.end()
            c.done = True
            self._close(c)
            return
        except Exception as exc:  # a malformed menu, no config found: this client fails
            self.fail(c, str(exc))
            return
        c.op = op
        if isinstance(op, Dhcp):
            self.start_dhcp(c)
        else:
            self.start_tftp(c, op)

    def fail(self, c: SimClient, why: str) -> None:
        c.end()
        c.error = f"{c.current_phase}: {why}"
        c.done = True
        self._close(c)

    def _close(self, c: SimClient) -> None:
        if c.sock is not None:
            self.by_fd.pop(c.sock.fileno(), None)
            self.ep.unregister(c.sock.fileno())
            if c.sock.family == socket.AF_PACKET:  # closing it would wait (synchronize_net)
                c.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, DROP_ALL)
                self.parked.append(c.sock)
            else:
                c.sock.close()
            c.sock = None

    def _open(self, c: SimClient, sock: socket.socket) -> None:
        self._close(c)
        sock.setblocking(False)
        c.sock = sock
        self.by_fd[sock.fileno()] = c
        self.ep.register(sock.fileno(), select.EPOLLIN)

    # -- DHCP

    def start_dhcp(self, c: SimClient) -> None:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)  # see the module docstring
        s.bind((c.ifname, ETH_P_IP))
        self._open(c, s)
        c.xid = random.getrandbits(32)
        c.state = "discover"
        c.tries = 0
        c.last = ip_udp(dhcp_message(1, c.xid, bytes.fromhex(c.mac.replace(":", ""))))
        self._dhcp_send(c)

    def _dhcp_send(self, c: SimClient) -> None:
        assert c.sock is not None
        c.sock.sendto(c.last, (c.ifname, ETH_P_IP, 0, 0, b"\xff" * 6))
        c.deadline = time.monotonic() + DHCP_RETRIES[min(c.tries, len(DHCP_RETRIES) - 1)]

    def on_dhcp(self, c: SimClient) -> None:
        assert c.sock is not None
        while True:
            try:
                data, addr = c.sock.recvfrom(2048)
            except BlockingIOError:
                return
            if addr[2] == PACKET_OUTGOING:
                continue
            reply = parse_dhcp_reply(data, c.xid)
            if reply is None:
                continue
            mtype, yiaddr, opts = reply
            if c.state == "discover" and mtype == 2:
                mac = bytes.fromhex(c.mac.replace(":", ""))
                extra = bytes((50, 4)) + socket.inet_aton(yiaddr) + bytes((54, 4)) + opts.get(54, bytes(4))
                c.state, c.tries = "request", 0
                c.last = ip_udp(dhcp_message(3, c.xid, mac, extra))
                self._dhcp_send(c)
            elif c.state == "request" and mtype == 5:
                c.ip = yiaddr
                # The address goes on this client's own interface: TFTP then runs over plain UDP.
                self.ipr.addr("add", index=self.ifindex[c.ifname], address=yiaddr, prefixlen=24)
                self._close(c)
                self.advance(c)
                return
            elif c.state == "request" and mtype == 6:
                self.fail(c, "DHCPNAK")
                return

    # -- TFTP

    def start_tftp(self, c: SimClient, op: Tftp) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, c.ifname.encode())
        s.bind((c.ip, 0))
        self._open(c, s)
        c.expect, c.blksize, c.got, c.tries, c.connected = 1, 512, 0, 0, False
        c.chunks = [] if op.keep else None
        c.last = b"\x00\x01" + op.name.encode() + b"\0octet\0tsize\x000\0blksize\0" + str(op.blksize).encode() + b"\0"
        c.sock.sendto(c.last, (c.server, 69))
        c.deadline = time.monotonic() + c.tftp_timeout
        c.files += 1

    def on_tftp(self, c: SimClient) -> None:
        sock = c.sock
        assert sock is not None
        buf, view = self.buf, self.view
        while True:
            try:
                if c.connected:
                    n = sock.recv_into(buf)
                else:
                    n, addr = sock.recvfrom_into(buf)
                    if addr[0] != c.server:
                        continue
                    sock.connect(addr)  # the server's transfer port (TID): later packets come from it only
                    c.connected = True
            except BlockingIOError:
                return
            if n < 4:
                continue
            opcode = buf[1]
            if opcode == 3:
                block = (buf[2] << 8) | buf[3]
                if block == c.expect:
                    size = n - 4
                    c.got += size
                    if c.chunks is not None:
                        c.chunks.append(bytes(view[4:n]))
                    c.last = ACKS[block]
                    sock.send(c.last)
                    c.expect = (block + 1) & 0xFFFF
                    c.tries = 0
                    c.deadline = time.monotonic() + c.tftp_timeout
                    if size < c.blksize:
                        c.bytes += c.got
                        result = b"".join(c.chunks) if c.chunks is not None else c.got
                        self._close(c)
                        self.advance(c, result)
                        return
                elif block == ((c.expect - 1) & 0xFFFF):
                    sock.send(ACKS[block])  # our ACK was lost or late: repeat it
            elif opcode == 6:  # OACK
                opts = bytes(view[2:n]).split(b"\0")
                for k, v in zip(opts[::2], opts[1::2], strict=False):
                    if k.lower() == b"blksize":
                        c.blksize = int(v)
                c.last = ACKS[0]
                sock.send(c.last)
                c.deadline = time.monotonic() + c.tftp_timeout
            elif opcode == 5:
                code = (buf[2] << 8) | buf[3]
                if code == 1:  # file not found: the next menu candidate
                    self._close(c)
                    self.advance(c, None)
                else:
                    msg = bytes(view[4:n]).split(b"\0")[0].decode(errors="replace")
                    self.fail(c, f"TFTP error {code} on {c.op.name}: {msg}")
                return

    # -- loop

    def timers(self, now: float) -> None:
        for c in self.clients:
            if c.done or c.sock is None or now < c.deadline:
                continue
            c.tries += 1
            c.retransmits += 1
            if isinstance(c.op, Dhcp):
                if c.tries >= len(DHCP_RETRIES):
                    self.fail(c, f"no DHCP {'ACK' if c.state == 'request' else 'OFFER'}")
                else:
                    self._dhcp_send(c)
            else:
                if c.tries > c.tftp_retries:
                    self.fail(c, f"TFTP timeout on {c.op.name} at block {c.expect}")
                    continue
                if c.connected:
                    c.sock.send(c.last)
                else:
                    c.sock.sendto(c.last, (c.server, 69))
                c.deadline = now + c.tftp_timeout * min(2**c.tries, 8)

    def run(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.spec.get("deadline", 600)
        t0 = time.monotonic()
        for c in self.clients:
            self.programs[id(c)] = pxelinux_program(c)
            self.advance(c)
        last_timer = t0
        while True:
            for fd, _ in self.ep.poll(0.05):
                c = self.by_fd.get(fd)
                if c is None:
                    continue
                if isinstance(c.op, Dhcp):
                    self.on_dhcp(c)
                else:
                    self.on_tftp(c)
            now = time.monotonic()
            if now - last_timer < 0.05:
                continue
            last_timer = now
            self.timers(now)
            pending = [c for c in self.clients if not c.done]
            if not pending:
                break
            if now > deadline:
                for c in pending:
                    self.fail(c, "bench deadline")
                break
        end = max((c.phases[c.current_phase][1] for c in self.clients if c.current_phase), default=t0)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "t0": t0,
            "wall": end - t0,
            "client_cpu": usage.ru_utime + usage.ru_stime,
            "clients": [
                {
                    "mac": c.mac, "ip": c.ip, "ok": not c.error, "error": c.error, "bytes": c.bytes,
                    "files": c.files, "retransmits": c.retransmits,
                    "total": (max(p[1] for p in c.phases.values()) - t0) if c.phases else None,
                    "phases": {k: v[1] - v[0] for k, v in c.phases.items()},
                }
                for c in self.clients
            ],
        }  # fmt: skip


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    random.seed(os.getpid())
    storm = Storm(spec)
    result = storm.run()
    json.dump(result, sys.stdout)
    sys.stdout.flush()
    for sock in storm.parked:  # ~12 ms each, after the figures
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
