"""Small helpers shared by the bench scripts: root check, processes started in a namespace, load.

Namespaces come from `sidus_appliance.lab.Lab` (named after the creating PID, always removed,
stale ones swept). Every process here is started by us, in a namespace, and ended by its PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def require_root(tools: Sequence[str] = ()) -> None:
    """Exit with a clear message unless we are root and every tool in `tools` is installed."""
    if os.geteuid() != 0:
        sys.exit("this bench needs root (network namespaces, privileged ports); run it with sudo")
    missing = [t for t in tools if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    if missing:
        sys.exit(f"missing tools: {' '.join(missing)} (make bench installs them: dnsmasq-base kea-admin ...)")


def load() -> str:
    """`uptime`'s load averages, for the record beside a figure (2-core box, shared)."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} cpus)"


class NsProcess:
    """A process started in a network namespace (`ip netns exec` execs, so the PID is the program's)."""

    def __init__(self, namespace: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.argv = ["ip", "netns", "exec", namespace, *argv]
        self.log_path = log_path
        with open(log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                self.argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})}, cwd=cwd,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, ready: Callable[[], bool], timeout: float = 20) -> None:
        """Poll `ready()` until true; raise with the log tail if the process dies or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.argv[4]} exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.argv[4]} not ready after {timeout}s:\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 10, sig: int = signal.SIGTERM) -> int | None:
        """End the process by PID: `sig`, then SIGKILL after `timeout`."""
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def udp_listening(namespace: str, port: int) -> bool:
    """Is something bound to UDP `port` in `namespace`? (`ss`, so it works for any server)"""
    out = subprocess.run(
        ["ip", "netns", "exec", namespace, "ss", "-Hlun", f"sport = :{port}"],
        capture_output=True, text=True, timeout=10,
    ).stdout
    return bool(out.strip())
