"""A raw-UDP TFTP attacker/prober for the hostile tests, run inside a client namespace.

    python tftp_client.py flood SERVER NAME --count 1000 [--mode netascii] [--hold 2]
        one RRQ from each of COUNT sockets (distinct ports), never an ACK; the sockets stay open
        (a closed port would answer with ICMP and end the transfer) for --hold seconds after the
        last first reply. Prints JSON: how many got DATA/OACK, which errors, how many nothing.
    python tftp_client.py fetch SERVER NAME --count 300 --seconds 10
        up to COUNT fetches of a one-block file, each from a new port, within SECONDS. Prints
        JSON: every distinct payload received (hex) with its count, errors, silences.

Bounded in count and time; sends only to SERVER (the lab appliance).
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import struct
import sys
import time
from collections import Counter

PORT = 69


def rrq(name: str, mode: str) -> bytes:
    return b"\x00\x01" + name.encode() + b"\0" + mode.encode() + b"\0"


def describe(data: bytes) -> str:
    opcode = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else -1
    if opcode == 5:
        return "error: " + data[4:].split(b"\0", 1)[0].decode("ascii", "replace")
    return {3: "data", 6: "oack"}.get(opcode, f"opcode {opcode}")


def flood(server: str, name: str, count: int, mode: str, hold: float, wait: float) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 64)), hard))
    socks = []
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("", 0))
        s.setblocking(False)
        s.sendto(rrq(name, mode), (server, PORT))
        socks.append(s)
        if i % 50 == 49:
            time.sleep(0.05)  # paced: a burst would overflow the listener's receive buffer, not fill slots
    replies: Counter[str] = Counter()
    pending = set(range(count))
    deadline = time.monotonic() + wait
    while pending and time.monotonic() < deadline:
        for i in list(pending):
            try:
                data = socks[i].recv(70000)
            except BlockingIOError:
                continue
            replies[describe(data)] += 1
            pending.discard(i)
        time.sleep(0.02)
    json.dump({"replies": dict(replies), "silent": len(pending)}, sys.stdout)
    print(flush=True)  # before holding: the caller reads it while the transfers are still held
    time.sleep(hold)
    for s in socks:
        s.close()


def fetch(server: str, name: str, count: int, seconds: float) -> dict[str, object]:
    payloads: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    silent = done = 0
    deadline = time.monotonic() + seconds
    while done < count and time.monotonic() < deadline:
        done += 1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1.0)
            s.sendto(rrq(name, "octet"), (server, PORT))
            try:
                data, addr = s.recvfrom(70000)
            except TimeoutError:
                silent += 1
                continue
            if data[:2] == b"\x00\x03":
                payloads[data[4:].hex()] += 1
                s.sendto(b"\x00\x04" + data[2:4], addr)  # ACK: a one-block file is complete
            else:
                errors[describe(data)] += 1
    return {"requests": done, "payloads": dict(payloads), "errors": dict(errors), "silent": silent}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("flood", "fetch"))
    parser.add_argument("server")
    parser.add_argument("name")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--mode", default="octet")
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--wait", type=float, default=5.0, help="flood: seconds to wait for first replies")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.action == "flood":
        flood(args.server, args.name, min(args.count, 5000), args.mode, min(args.hold, 30), min(args.wait, 30))
    else:
        json.dump(fetch(args.server, args.name, min(args.count, 5000), min(args.seconds, 30)), sys.stdout)
        print(flush=True)


if __name__ == "__main__":
    main()
