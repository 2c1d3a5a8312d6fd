"""DNS attack and probe clients, run inside a lab client namespace by tests/hostile/test_dns_attacks.py.

Every mode is bounded in count and time and talks only to the server address it is given.

  ask SERVER NAME_KIND...      one query per kind over UDP and TCP; prints the replies' headers (JSON)
  flood SERVER COUNT           COUNT raw UDP queries with unencodable names, as fast as they go
  hold SERVER SOURCES PER SECONDS INTERVAL
                               PER connections from each source address (comma-separated), each
                               sending one query every INTERVAL s and reconnecting when closed,
                               for SECONDS; prints "ready" once all were tried, then a JSON summary
  slowloris SERVER SECONDS     one query trickled 1 byte per second; JSON: was it cut off, and when
  connections SERVER N SECONDS N connections at once, one query on each, answers awaited SECONDS
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
import time

PORT = 53


def header(qid: int) -> bytes:
    return struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0)  # RD, one question


def wire_name(labels: list[bytes]) -> bytes:
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"


NAMES = {
    "long-label-zone": wire_name([b"a" * 64, b"sidus", b"zone"]),  # 64 bytes: one more than allowed
    "long-label-outside": wire_name([b"a" * 64, b"example", b"org"]),  # forwarded for recursion clients
    "long-name": wire_name([b"b" * 63] * 4 + [b"sidus", b"zone"]),  # 269 bytes on the wire
    "gateway": wire_name([b"gateway", b"sidus", b"zone"]),
}


def query(kind: str, qid: int) -> bytes:
    return header(qid) + NAMES[kind] + b"\x00\x01\x00\x01"  # A IN


def summary(reply: bytes | None) -> dict[str, int] | None:
    if reply is None or len(reply) < 12:
        return None
    qid, flags, qd, an, _, _ = struct.unpack("!6H", reply[:12])
    return {"id": qid, "qr": flags >> 15, "rcode": flags & 0xF, "qd": qd, "an": an}


def ask_udp(server: str, data: bytes) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(data, (server, PORT))
        try:
            return sock.recv(65535)
        except OSError:
            return None


def ask_tcp(server: str, data: bytes) -> bytes | None:
    try:
        with socket.create_connection((server, PORT), timeout=3) as sock:
            sock.sendall(struct.pack("!H", len(data)) + data)
            head = sock.recv(2, socket.MSG_WAITALL)
            if len(head) < 2:
                return None
            return sock.recv(struct.unpack("!H", head)[0], socket.MSG_WAITALL)
    except OSError:
        return None


def ask(server: str, kinds: list[str]) -> None:
    results = []
    for n, kind in enumerate(kinds):
        qid = 0x4000 + n
        results.append({"kind": kind, "sent_id": qid, "udp": summary(ask_udp(server, query(kind, qid))),
                        "tcp": summary(ask_tcp(server, query(kind, qid + 0x100)))})
    print(json.dumps(results))


def flood(server: str, count: int) -> None:
    kinds = ["long-label-zone", "long-label-outside", "long-name"]
    replies = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for n in range(count):
            try:
                sock.sendto(query(kinds[n % 3], n & 0xFFFF), (server, PORT))
            except BlockingIOError:
                time.sleep(0.001)
            try:
                while sock.recv(65535):
                    replies += 1
            except OSError:
                pass
            if n % 100 == 99:
                time.sleep(0.01)  # bounded pace: a flood, not a test of the client's send buffer
        time.sleep(1)
        try:
            while sock.recv(65535):
                replies += 1
        except OSError:
            pass
    print(json.dumps({"sent": count, "replies": replies}))


class Holder:
    """Connections that each ask once every `interval` seconds and come back when closed."""

    def __init__(self, server: str, interval: float, deadline: float) -> None:
        self.server, self.interval, self.deadline = server, interval, deadline
        self.open = self.max_open = self.opened = self.answers = self.closed_by_server = self.refused = 0

    async def connection(self, source: str, n: int) -> None:
        q = query("gateway", n)
        while time.monotonic() < self.deadline:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.server, PORT, local_addr=(source, 0)), 5)
            except (OSError, TimeoutError):
                self.refused += 1
                await asyncio.sleep(1)
                continue
            self.opened += 1
            self.open += 1
            self.max_open = max(self.max_open, self.open)
            try:
                while time.monotonic() < self.deadline:
                    writer.write(struct.pack("!H", len(q)) + q)
                    (size,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 5))
                    await reader.readexactly(size)
                    self.answers += 1
                    await asyncio.sleep(min(self.interval, max(0.0, self.deadline - time.monotonic())))
            except (OSError, EOFError, TimeoutError):
                self.closed_by_server += 1
            finally:
                self.open -= 1
                writer.close()
            await asyncio.sleep(1)  # then come back for the slot


async def hold(server: str, sources: list[str], per_source: int, seconds: float, interval: float) -> None:
    holder = Holder(server, interval, time.monotonic() + seconds)
    tasks = [asyncio.ensure_future(holder.connection(source, n))
             for n in range(per_source) for source in sources]
    await asyncio.sleep(2)
    print("ready", holder.open, flush=True)
    await asyncio.gather(*tasks)
    print(json.dumps({k: getattr(holder, k) for k in ("max_open", "opened", "answers", "closed_by_server",
                                                      "refused")}), flush=True)


def slowloris(server: str, seconds: float) -> None:
    q = query("gateway", 0x5105)
    message = struct.pack("!H", len(q)) + q
    start = time.monotonic()
    sent = 0
    cut = False
    with socket.create_connection((server, PORT), timeout=5) as sock:
        sock.settimeout(1.0)
        while sent < len(message) and time.monotonic() - start < seconds:
            try:
                sock.sendall(message[sent:sent + 1])
                sent += 1
                if sock.recv(1) == b"":  # waits up to 1 s: the trickle's pace, and an EOF check
                    cut = True
                    break
            except TimeoutError:
                continue
            except OSError:
                cut = True
                break
    print(json.dumps({"cut": cut, "bytes_sent": sent, "message_bytes": len(message),
                      "seconds": round(time.monotonic() - start, 1)}))


async def connections(server: str, count: int, seconds: float) -> None:
    q = query("gateway", 0x6006)

    async def one() -> bool:
        try:
            reader, writer = await asyncio.open_connection(server, PORT)
        except OSError:
            return False
        try:
            writer.write(struct.pack("!H", len(q)) + q)
            (size,) = struct.unpack("!H", await reader.readexactly(2))
            await reader.readexactly(size)
            return True
        except (OSError, EOFError):
            return False
        finally:
            writer.close()

    tasks = [asyncio.ensure_future(one()) for _ in range(count)]
    done, pending = await asyncio.wait(tasks, timeout=seconds)
    for task in pending:
        task.cancel()
    print(json.dumps({"tried": count, "answered": sum(1 for t in done if t.result())}))


def main(argv: list[str]) -> None:
    mode, server, *rest = argv
    if mode == "ask":
        ask(server, rest)
    elif mode == "flood":
        flood(server, int(rest[0]))
    elif mode == "hold":
        asyncio.run(hold(server, rest[0].split(","), int(rest[1]), float(rest[2]), float(rest[3])))
    elif mode == "slowloris":
        slowloris(server, float(rest[0]))
    elif mode == "connections":
        asyncio.run(connections(server, int(rest[0]), float(rest[1])))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
