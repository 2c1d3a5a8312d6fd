"""Throwaway network namespaces for the storm bench and the QEMU reference boots.

Everything lives inside namespaces this module creates (name prefix `qemudev-` by default):
a server namespace with a bridge carrying the server address, tap ports for QEMU, and veth
pairs to a client namespace. Nothing touches the host's interfaces. The context manager
deletes the namespaces on every exit path, after ending the processes started through it
(by PID, never by name).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from sidus_appliance.lab import end_process


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


@dataclass
class Netns:
    name: str
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def argv(self, cmd: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh(*self.argv(cmd), check=check)

    def popen(self, cmd: Sequence[str], log: IO[bytes] | None = None, **kw: Any) -> subprocess.Popen[Any]:
        """Start a process in the namespace; it is ended (by PID) when the namespace goes."""
        proc = subprocess.Popen(
            self.argv(cmd), stdin=subprocess.DEVNULL, stdout=log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if log else subprocess.DEVNULL, **kw,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], grace: float = 3.0) -> None:
        end_process(proc, grace)

    def bridge(self, name: str, cidr: str) -> None:
        self.run("ip", "link", "add", name, "type", "bridge")
        # No STP/forward delay: a port must forward the firmware's first DISCOVER.
        self.run("ip", "link", "set", name, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        self.run("ip", "addr", "add", cidr, "dev", name)
        self.run("ip", "link", "set", name, "up")

    def tap(self, name: str, bridge: str) -> None:
        self.run("ip", "tuntap", "add", "dev", name, "mode", "tap")
        self.run("ip", "link", "set", name, "master", bridge)
        self.run("ip", "link", "set", name, "up")

    def veth_to(self, other: Netns, here: str, there: str, bridge: str) -> None:
        """A veth pair: `here` enslaved to `bridge` in this namespace, `there` up in `other`."""
        self.run("ip", "link", "add", here, "type", "veth", "peer", "name", there, "netns", other.name)
        self.run("ip", "link", "set", here, "master", bridge)
        self.run("ip", "link", "set", here, "up")
        other.run("ip", "link", "set", there, "up")
        other.run("ip", "link", "set", "lo", "up")


@contextmanager
def namespaces(*roles: str, prefix: str = "qemudev-") -> Iterator[list[Netns]]:
    """Create one namespace per role (named <prefix><pid>-<role>); always delete them."""
    made: list[Netns] = []
    try:
        for role in roles:
            ns = Netns(f"{prefix}{os.getpid()}-{role}")
            sh("ip", "netns", "add", ns.name)
            made.append(ns)
            ns.run("ip", "link", "set", "lo", "up")
        yield made
    finally:
        for ns in made:
            for proc in ns.procs:
                ns.stop(proc)
        for ns in made:
            # Processes we did not start (none expected) would keep it alive; the name still goes.
            for _ in range(3):
                if sh("ip", "netns", "del", ns.name, check=False).returncode == 0:
                    break
                time.sleep(0.2)
