"""A burst of DHCP clients (run inside a client namespace): DORA for N MACs, one after another.

Prints `ACK <mac> <ip>` (flushed) only after the ACK arrived, so whatever the parent reads
is a lease the server acknowledged. scapy builds and parses (that is what it is for here);
the socket is a plain UDP broadcast socket bound to port 68.
"""

from __future__ import annotations

import random
import socket
import sys

from scapy.layers.dhcp import BOOTP, DHCP

SERVER_PORT = 67


def mac_bytes(i: int, prefix: int) -> bytes:
    return bytes([0x02, 0x5A, prefix, (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF])


def exchange(sock: socket.socket, packet: bytes, xid: int, want: str) -> BOOTP | None:
    for _attempt in range(3):
        sock.sendto(packet, ("255.255.255.255", SERVER_PORT))
        try:
            while True:
                data, _ = sock.recvfrom(4096)
                reply = BOOTP(data)
                if reply.xid != xid:
                    continue
                options = dict(o for o in reply[DHCP].options if isinstance(o, tuple))
                kind = {2: "offer", 5: "ack", 6: "nak"}.get(options.get("message-type"), "?")
                if kind == want:
                    return reply
                if kind == "nak":
                    return None
        except TimeoutError:
            continue
    return None


def main() -> int:
    count, prefix = int(sys.argv[1]), int(sys.argv[2])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # No default route in the client namespace: the limited broadcast needs the device named.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
    sock.bind(("0.0.0.0", 68))
    sock.settimeout(1.0)
    for i in range(count):
        mac = mac_bytes(i, prefix)
        xid = random.getrandbits(32)
        base = BOOTP(chaddr=mac + bytes(10), xid=xid, flags=0x8000)
        discover = base / DHCP(options=[("message-type", "discover"), "end"])
        offer = exchange(sock, bytes(discover), xid, "offer")
        if offer is None:
            print(f"FAIL {mac.hex(':')} no offer", flush=True)
            continue
        server_id = dict(o for o in offer[DHCP].options if isinstance(o, tuple))["server_id"]
        request = base / DHCP(
            options=[
                ("message-type", "request"),
                ("requested_addr", offer.yiaddr),
                ("server_id", server_id),
                "end",
            ]
        )
        ack = exchange(sock, bytes(request), xid, "ack")
        if ack is None:
            print(f"FAIL {mac.hex(':')} no ack", flush=True)
            continue
        print(f"ACK {mac.hex(':')} {ack.yiaddr}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
