"""systemd's readiness protocol (sd_notify(3)), the few lines `serve` needs, no dependency.

Under `Type=notify` systemd passes `NOTIFY_SOCKET`, the address of an AF_UNIX datagram socket
(a path, or an abstract name written with a leading `@`). Each state change is one datagram of
`KEY=VALUE` lines: `READY=1` once every port is bound, `RELOADING=1` with `MONOTONIC_USEC`
while SIGHUP re-reads the config, `STOPPING=1`, and `STATUS=` for `systemctl status`.

Without NOTIFY_SOCKET (run by hand, in the lab) every call is a no-op. A failed send is logged
once and never stops the appliance: readiness is a courtesy to the service manager, serving
is the job.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import MutableMapping

log = logging.getLogger("sidus")

ENV = "NOTIFY_SOCKET"


def _address(value: str) -> str | bytes:
    """`@name` is Linux's abstract namespace (a leading NUL byte on the wire)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


class Notifier:
    """One datagram socket to systemd, opened from the environment at construction time."""

    def __init__(self, environ: MutableMapping[str, str] | None = None) -> None:
        # Taken out of the environment (as sd_notify's unset_environment does): a child
        # process must not speak for us.
        value = (os.environ if environ is None else environ).pop(ENV, "")
        self.address: str | bytes | None = None
        self.sock: socket.socket | None = None
        self._warned = False
        if not value or not (value.startswith("/") or value.startswith("@")):
            return  # unset, or a vsock address (`vsock:CID:PORT`) we do not speak
        self.address = _address(value)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def send(self, **fields: str | int) -> bool:
        """One message, e.g. `send(READY=1, STATUS="serving")`; True if it left."""
        if self.sock is None or self.address is None:
            return False
        text = "".join(f"{key}={_one_line(value)}\n" for key, value in fields.items())
        try:
            self.sock.sendto(text.encode(), self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("sd_notify: cannot reach %r (%s); readiness not reported", self.address, exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def reloading(self) -> bool:
        # MONOTONIC_USEC: systemd 253+ matches it with the reload it asked for.
        return self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000,
                         STATUS="reloading the config")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send(STOPPING=1, STATUS=status)

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _one_line(value: str | int) -> str:
    """A value never spans lines: a newline would start a field of its own."""
    return str(value).replace("\n", " ")
