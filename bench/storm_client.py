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

With `"program": "httpboot"` in the spec, each client is a UEFI HTTP-boot machine instead (as
seen with OVMF + shim + Debian's signed GRUB): DHCP with arch 16 and the HTTPClient vendor
class, then over HTTP/1.1 on one keep-alive connection (as firmware and GRUB keep theirs) the
loader named by option 67 (shimx64.efi), grubx64.efi beside it, grub/grub.cfg, the machine's
grub/grub.cfg-<mac> (grub.cfg-default when that is a 404, as the entry config does), then the
default entry's kernel and initrd. Every body is counted against its Content-Length and, when
the spec knows the file, against its size on disk.
"""

from __future__ import annotations

import ctypes
import errno
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
from urllib.parse import urlsplit

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


def dhcp_message(msg_type: int, xid: int, mac: bytes, extra: bytes = b"", arch: int = 0) -> bytes:
    """A PXE ROM's DISCOVER/REQUEST (arch 0: UNDI 2.1, PXEClient vendor class), or with arch 16 a
    UEFI HTTP-boot one (UNDI 3.1, HTTPClient vendor class, as OVMF sends); no broadcast flag."""
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0,
                        bytes(4), bytes(4), bytes(4), bytes(4), mac.ljust(16, b"\0"), b"", b"")  # fmt: skip
    if arch == 16:
        vendor, undi = b"HTTPClient:Arch:00016:UNDI:003001", bytes((94, 3, 1, 3, 1))
    else:
        vendor, undi = f"PXEClient:Arch:{arch:05d}:UNDI:002001".encode(), bytes((94, 3, 1, 2, 1))
    opts = bytes((53, 1, msg_type)) + bytes((57, 2, 0x04, 0xEC)) + bytes((93, 2)) + arch.to_bytes(2, "big") + undi
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
    arch: int = 0  # the program gets the ACK's options back


@dataclass
class Http:
    url: str  # absolute (http://host[:port]/path)
    keep: bool = False  # return the body (menus); otherwise only its size
    missing_ok: bool = False  # a 404 returns None (the next candidate) instead of failing


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


def parse_grub_menu(text: str) -> tuple[str, str]:
    """(kernel, initrd) paths of the default entry of a GRUB config (`set default=<id>`, else the
    first menuentry), each as GRUB would fetch it: `(http,host)/path` or `/path` on $root."""
    default, entries, current = None, [], None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("set default="):
            default = line.split("=", 1)[1].strip("'\"")
        elif line.startswith("menuentry "):
            words = line.split()
            label = words[words.index("--id") + 1].strip("'\"") if "--id" in words else str(len(entries))
            current = {"id": label}
            entries.append(current)
        elif current is not None and line.split(None, 1)[0:1] in (["linux"], ["initrd"]):
            current[line.split()[0]] = line.split()[1]
        elif line == "}":
            current = None
    chosen = next((e for e in entries if e["id"] == default), entries[0] if entries else {})
    if "linux" not in chosen or "initrd" not in chosen:
        raise ValueError(f"GRUB menu has no linux/initrd for default {default!r}")
    return chosen["linux"], chosen["initrd"]


def grub_url(path: str, root: str) -> str:
    """GRUB's `(http,10.20.17.254)/vmlinuz` or `/vmlinuz` (on $root, the server it booted from) as a URL."""
    if path.startswith("("):
        device, rest = path[1:].split(")", 1)
        proto, _, host = device.partition(",")
        if proto != "http":
            raise ValueError(f"kernel not over HTTP: {path}")
        return f"http://{host or urlsplit(root).netloc}{rest}"
    return f"{root.rstrip('/')}/{path.lstrip('/')}"


def httpboot_program(c: SimClient) -> Generator[Any, Any, None]:
    c.begin("dhcp")
    opts = yield Dhcp(arch=16)
    if not opts.get(60, b"").startswith(b"HTTPClient"):
        raise RuntimeError(f"offer without HTTPClient vendor class (option 60 = {opts.get(60)!r})")
    loader = opts.get(67, b"").rstrip(b"\0").decode()
    if not loader.startswith("http://"):
        raise RuntimeError(f"boot file is not an http:// URL: {loader!r}")
    root = "http://" + urlsplit(loader).netloc
    c.begin("loader")
    yield Http(loader)  # shimx64.efi, fetched by the firmware
    yield Http(loader.rsplit("/", 1)[0] + "/grubx64.efi")  # shim loads GRUB from its own directory
    c.begin("menu")
    yield Http(f"{root}/grub/grub.cfg", keep=True)
    text = yield Http(f"{root}/grub/grub.cfg-{c.mac.lower()}", keep=True, missing_ok=True)
    if text is None:
        text = yield Http(f"{root}/grub/grub.cfg-default", keep=True)
    kernel, initrd = parse_grub_menu(text.decode(errors="replace"))
    c.begin("kernel")
    yield Http(grub_url(kernel, root))
    c.begin("initrd")
    yield Http(grub_url(initrd, root))


PROGRAMS = {"pxelinux": pxelinux_program, "httpboot": httpboot_program}


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
    # HTTP: one keep-alive connection, reused from request to request while the server allows
    conn_key: tuple[str, int] | None = None
    hstate: str = ""  # "connecting", "headers", "body"
    head: bytearray = field(default_factory=bytearray)
    out: bytes = b""  # request bytes not yet sent
    request: bytes = b""  # the whole request, to send again on a new connection
    reused: bool = False  # the request went out on a connection that had served one before
    status: int = 0
    length: int = 0  # Content-Length of the response being read
    server_closes: bool = False  # the response said Connection: close
    requests: int = 0
    log: list[tuple[str, int, float, float]] = field(default_factory=list)  # HTTP: path, status, start, end
    request_start: float = 0.0
    connections: int = 0
    first_request: float = 0.0  # start of the first HTTP request (the transfer window's start)

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
        self.buf = bytearray(1 << 20)  # a TFTP datagram, or as much of an HTTP body as one recv gives
        self.view = memoryview(self.buf)
        self.ipr = IPRoute()
        self.clients = [
            SimClient(c["ifname"], c["mac"], spec["server"], spec.get("tftp_timeout", 1.0), spec.get("tftp_retries", 6))
            for c in spec["clients"]
        ]
        self.program = PROGRAMS[spec.get("program", "pxelinux")]
        self.http_timeout = spec.get("http_timeout", 30.0)  # seconds without a byte: the transfer failed
        self.sizes: dict[str, int] = spec.get("sizes", {})  # URL path -> size on disk, to check bodies
        # A fixed receive buffer per connection (0: the kernel's autotuning). Autotuned, each of 200
        # sockets may grow to tcp_rmem's max (32 MiB here) whenever this one loop falls behind: the
        # host's TCP memory then passes tcp_mem's pressure mark, the kernel prunes queued segments
        # (TcpExt PruneCalled, TCPRcvQDrop) and the losing connections back off their retransmission
        # timer for up to 80-90 s: the storm then measures the host's memory, not the servers.
        self.http_rcvbuf = spec.get("http_rcvbuf", 1 << 20)
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
        elif isinstance(op, Http):
            self.start_http(c, op)
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

    def _open(self, c: SimClient, sock: socket.socket, events: int = select.EPOLLIN) -> None:
        self._close(c)
        sock.setblocking(False)
        c.sock = sock
        c.conn_key = None
        self.by_fd[sock.fileno()] = c
        self.ep.register(sock.fileno(), events)

    # -- DHCP

    def start_dhcp(self, c: SimClient) -> None:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)  # see the module docstring
        s.bind((c.ifname, ETH_P_IP))
        self._open(c, s)
        c.xid = random.getrandbits(32)
        c.state = "discover"
        c.tries = 0
        c.last = ip_udp(dhcp_message(1, c.xid, bytes.fromhex(c.mac.replace(":", "")), arch=c.op.arch))
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
                c.last = ip_udp(dhcp_message(3, c.xid, mac, extra, arch=c.op.arch))
                self._dhcp_send(c)
            elif c.state == "request" and mtype == 5:
                c.ip = yiaddr
                # The address goes on this client's own interface: TFTP then runs over plain UDP.
                self.ipr.addr("add", index=self.ifindex[c.ifname], address=yiaddr, prefixlen=24)
                self._close(c)
                self.advance(c, opts)
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

    # -- HTTP

    def start_http(self, c: SimClient, op: Http) -> None:
        url = urlsplit(op.url)
        key = (url.hostname or c.server, url.port or 80)
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        c.request = f"GET {target} HTTP/1.1\r\nHost: {url.netloc}\r\nUser-Agent: storm-httpboot\r\n\r\n".encode()
        c.out = c.request
        c.hstate, c.status, c.length, c.got, c.server_closes = "headers", 0, 0, 0, False
        c.head.clear()
        c.chunks = [] if op.keep else None
        c.files += 1
        c.requests += 1
        now = time.monotonic()
        c.first_request = c.first_request or now
        c.request_start = now
        c.deadline = now + self.http_timeout
        c.reused = c.sock is not None and c.conn_key == key
        if c.reused:  # keep-alive: the same connection
            self._http_send(c)
            return
        self._connect(c, key)

    def _connect(self, c: SimClient, key: tuple[str, int]) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, c.ifname.encode())
        if self.http_rcvbuf:  # before connect: the window scale is agreed in the handshake
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.http_rcvbuf)
        s.bind((c.ip, 0))
        self._open(c, s, select.EPOLLIN | select.EPOLLOUT)
        c.conn_key = key
        c.connections += 1
        c.hstate = "connecting"
        err = s.connect_ex(key)
        if err not in (0, errno.EINPROGRESS):
            self.fail(c, f"connect: {os.strerror(err)}")

    def _http_send(self, c: SimClient) -> None:
        assert c.sock is not None
        try:
            sent = c.sock.send(c.out)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.fail(c, f"send {c.op.url}: {exc}")
            return
        c.out = c.out[sent:]
        # Wait for writability only while part of the request is still queued here.
        self.ep.modify(c.sock.fileno(), select.EPOLLIN | (select.EPOLLOUT if c.out else 0))

    def on_http(self, c: SimClient, events: int) -> None:
        sock = c.sock
        assert sock is not None
        if c.hstate == "connecting":
            if not events & (select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP):
                return
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.fail(c, f"connect to {c.conn_key}: {os.strerror(err)}")
                return
            c.hstate = "headers"
            self._http_send(c)
            return
        if c.out and events & select.EPOLLOUT:
            self._http_send(c)
        buf, view = self.buf, self.view
        while True:
            try:
                n = sock.recv_into(buf)
            except BlockingIOError:
                return
            except OSError as exc:
                if not self._retry(c):
                    self.fail(c, f"{c.op.url}: {exc} at {c.got} of {c.length} bytes")
                return
            if n == 0:
                if not self._retry(c):
                    self.fail(c, f"{c.op.url}: server closed the connection ({c.hstate}, {c.got} of {c.length} bytes)")
                return
            c.deadline = time.monotonic() + self.http_timeout
            start = 0
            if c.hstate == "headers":
                c.head += view[:n]
                end = c.head.find(b"\r\n\r\n")
                if end < 0:
                    if len(c.head) > 16384:
                        self.fail(c, f"{c.op.url}: response head over 16 KiB")
                        return
                    continue
                body_start = len(c.head) - (end + 4)  # body bytes already read with the head
                if not self._parse_head(c, bytes(c.head[:end])):
                    return
                c.hstate = "body"
                start = n - body_start
            take = min(n - start, c.length - c.got)
            if n - start > take:
                self.fail(c, f"{c.op.url}: {n - start - take} bytes past Content-Length")
                return
            c.got += take
            if c.chunks is not None and take:
                c.chunks.append(bytes(view[start : start + take]))
            if c.got == c.length:
                self._http_done(c)
                return

    def _retry(self, c: SimClient) -> bool:
        """A kept-alive connection the server closed before any byte of the answer (its idle
        timer ran while the previous body was still on its way): the request goes again on a new
        connection, once, as HTTP clients do for an idempotent request (RFC 9112 9.3.1)."""
        if not (c.reused and c.hstate == "headers" and not c.head and c.conn_key is not None):
            return False
        c.reused = False
        key = c.conn_key
        self._close(c)
        c.out = c.request
        self._connect(c, key)
        return True

    def _parse_head(self, c: SimClient, head: bytes) -> bool:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            self.fail(c, f"{c.op.url}: bad status line {lines[0]!r}")
            return False
        c.status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower() or "content-length" not in headers:
            self.fail(c, f"{c.op.url}: HTTP {c.status} without Content-Length")  # boot firmware needs the size
            return False
        c.length = int(headers["content-length"])
        c.server_closes = headers.get("connection", "").lower() == "close" or parts[0] == "HTTP/1.0"
        return True

    def _http_done(self, c: SimClient) -> None:
        op: Http = c.op
        c.log.append((urlsplit(op.url).path, c.status, c.request_start, time.monotonic()))
        result: Any = b"".join(c.chunks) if c.chunks is not None else c.got
        if c.server_closes:  # the next request opens a new connection
            self._close(c)
        if c.status == 404 and op.missing_ok:
            self.advance(c, None)
            return
        if c.status != 200:
            self.fail(c, f"HTTP {c.status} on {op.url}")
            return
        expected = self.sizes.get(urlsplit(op.url).path)
        if expected is not None and c.length != expected:
            self.fail(c, f"{op.url}: Content-Length {c.length}, the file has {expected} bytes")
            return
        c.bytes += c.got
        self.advance(c, result)

    # -- loop

    def timers(self, now: float) -> None:
        for c in self.clients:
            if c.done or c.sock is None or now < c.deadline:
                continue
            c.tries += 1
            c.retransmits += 1
            if isinstance(c.op, Http):
                self.fail(
                    c,
                    f"HTTP: nothing for {self.http_timeout:.0f} s on {c.op.url} ({c.hstate}, "
                    f"{c.got} of {c.length} bytes)",
                )
                continue
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
            self.programs[id(c)] = self.program(c)
            self.advance(c)
        last_timer = t0
        while True:
            for fd, events in self.ep.poll(0.05):
                c = self.by_fd.get(fd)
                if c is None:
                    continue
                if isinstance(c.op, Dhcp):
                    self.on_dhcp(c)
                elif isinstance(c.op, Http):
                    self.on_http(c, events)
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
                    "requests": c.requests, "connections": c.connections,
                    "log": [(path, status, a - t0, b - t0) for path, status, a, b in c.log],
                    "first_request": (c.first_request - t0) if c.first_request else None,
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
