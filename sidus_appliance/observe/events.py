"""What the services tell the boot tracker: plain values, no behaviour.

DHCP emits one `DhcpEvent` per decision it logs; TFTP and HTTP emit one `TransferEvent` when a
transfer ends, complete or not. Times are epoch seconds (`time.time()`) taken by the service:
the tracker has no clock of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Transport(StrEnum):
    TFTP = "tftp"
    HTTP = "http"


@dataclass(frozen=True, slots=True)
class DhcpEvent:
    """One DHCP decision, as the service logs it."""

    time: float  # epoch seconds
    mac: str  # "52:54:00:5a:00:01"
    message: str  # DISCOVER, REQUEST, DECLINE, RELEASE, INFORM
    action: str  # OFFER, ACK, NAK, IGNORE, DROP, RELEASE, QUARANTINE
    address: str | None  # offered/acked address
    client: str  # "pxe", "ipxe", "http" or "plain" (plain: not a network-boot client, the booted system)
    arch: int | None
    loader: str | None  # boot file offered (path in the boot tree)
    hostname: str | None  # the name handed out
    profile: str  # "default" or "master" (menu profile of this MAC)


@dataclass(frozen=True, slots=True)
class TransferEvent:
    """One transfer that ended (complete or not)."""

    time: float  # epoch seconds at the end
    client: str  # client IP address; the tracker maps it to a MAC from the DHCP ACKs it has seen
    name: str  # canonical name served: "pxelinux.0", "pxelinux.cfg/01-..", "vmlinuz-<ver>@<inst>", ...
    kind: str  # "file" (loaders, modules), "menu" (generated), "kernel" (vmlinuz-/initrd.img- of an instance)
    transport: Transport
    size: int  # bytes the file has
    sent: int  # bytes actually sent
    seconds: float  # duration of the transfer
    retransmits: int  # TFTP blocks resent (0 for HTTP)
    ok: bool  # completed
