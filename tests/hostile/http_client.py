"""A hostile HTTP client for the attack tests, run inside a client namespace (stdlib only).

    python http_client.py fetch SERVER PATH --count N --seconds S   # GET again and again: payload counts
    python http_client.py hold SERVER --connections N --seconds S    # open connections, send half a request
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import time
from collections import Counter


def fetch(server: str, path: str, count: int, seconds: float) -> dict[str, object]:
    payloads: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    errors = 0
    deadline = time.monotonic() + seconds
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        try:
            conn = http.client.HTTPConnection(server, 80, timeout=5)
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            statuses[response.status] += 1
            if response.status == 200:
                payloads[body.hex()] += 1
            conn.close()
        except OSError:
            errors += 1
    return {"payloads": dict(payloads), "statuses": dict(statuses), "errors": errors}


def hold(server: str, connections: int, seconds: float) -> dict[str, object]:
    held, refused = [], 0
    for _ in range(connections):
        try:
            sock = socket.create_connection((server, 80), timeout=5)
            sock.sendall(b"GET /hostile-probe.bin HTTP/1.1\r\nHost: x\r\n")  # never ends the headers
            held.append(sock)
        except OSError:
            refused += 1
    time.sleep(1)
    closed_early = 0
    for sock in held:
        sock.setblocking(False)
        try:
            if sock.recv(1) == b"":
                closed_early += 1
        except BlockingIOError:
            pass
        except OSError:
            closed_early += 1
    time.sleep(max(0.0, seconds - 1))
    for sock in held:
        sock.close()
    return {"opened": len(held), "refused": refused, "closed_by_server": closed_early}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["fetch", "hold"])
    parser.add_argument("server")
    parser.add_argument("path", nargs="?", default="/")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    seconds = min(args.seconds, 60)  # bounded, whatever the caller asks
    if args.what == "fetch":
        print(json.dumps(fetch(args.server, args.path, min(args.count, 5000), seconds)))
    else:
        print(json.dumps(hold(args.server, min(args.connections, 500), seconds)))


if __name__ == "__main__":
    main()
