"""The name a client is told (option 12 of the OFFER and ACK): the one DNS publishes for it.

dns/zone.py decides, this follows: a bound lease is published (A and PTR) under the name its
client sent (option 12, made a DNS label) unless the config holds that name (the appliance,
a reservation, `dns.records`, any pool name), or a lease bound later, and not expired, sent the
same name; otherwise under the lease's own name (the pool pattern, `dhcp-<octet>`). A
reservation keeps its configured name (its PTR is the config's).

The DHCP core cannot rebuild the zone per packet, so the claims are kept incrementally from
the lease table's changes: per label, the MACs of the bound leases claiming it, in the order
the table holds them (every commit moves a lease last, and the zone lets the last one win).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..config import Config
from ..dns.zone import dns_label, held_names
from .leases import BOUND, Lease


class ClientNames:
    """Who holds each client-sent name, as the zone will decide it."""

    def __init__(self, config: Config, leases: Iterable[Lease]) -> None:
        self._held = held_names(config)
        self._domain = config.domain
        self._subnet = config.subnet
        # label -> {mac: expires} of the bound leases claiming it, oldest commit first
        self._claims: dict[str, dict[str, float | None]] = {}
        for lease in leases:
            self.changed(None, lease)

    def claimable(self, client_hostname: str | None) -> str | None:
        """The label a client's option 12 asks for, if no config name holds it."""
        label = dns_label(client_hostname)
        if label is None or f"{label}.{self._domain}" in self._held:
            return None
        return label

    def _claim(self, lease: Lease) -> str | None:
        if lease.state != BOUND or lease.address not in self._subnet:
            return None
        return self.claimable(lease.client_hostname)

    def changed(self, old: Lease | None, new: Lease | None) -> None:
        """Follow one change of the lease table (subscribe it to the store)."""
        if old is not None and (label := self._claim(old)) is not None:
            holders = self._claims.get(label)
            if holders is not None:
                holders.pop(old.mac, None)
                if not holders:
                    del self._claims[label]
        if new is not None and (label := self._claim(new)) is not None:
            holders = self._claims.setdefault(label, {})
            holders.pop(new.mac, None)  # re-inserted last, as the table moves a committed lease
            holders[new.mac] = new.expires

    def holder(self, label: str, now: float) -> str | None:
        """The MAC whose lease the zone publishes under `label` now (expired leases are not in it)."""
        for mac, expires in reversed(self._claims.get(label, {}).items()):
            if expires is None or expires > now:
                return mac
        return None

    def published(self, mac: str, client_hostname: str | None, own_name: str, now: float, *, last: bool) -> str:
        """The name DNS gives `mac`'s bound lease: the client's own if it wins, else `own_name`.
        `last`: the lease is (or will be, once the REQUEST commits it) the table's latest."""
        label = self.claimable(client_hostname)
        if label is None:
            return own_name
        if last or self.holder(label, now) == mac:
            return label
        return own_name
