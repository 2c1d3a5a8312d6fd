"""The lab's two zones (forward and reverse), computed from the config and the lease table.

Pure data, no I/O: `build_zone(config, leases, serial)` returns an immutable `Zone` that the
sans-IO server (`server.py`) queries. Records are first collected as plain comparable tuples
(`Zone.content`), so the service can tell whether a lease change altered DNS at all and bump
the SOA serial only when it did.

Name precedence, highest first (a lower tier never takes a name a higher tier holds):
appliance (`gateway`) → reservations (`hosts`) → `dns.records` → pool names (`dhcp-<octet>`)
→ names from bound leases (client option 12, else the lease's own name).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Protocol

from dnslib import CNAME, MX, NS, PTR, QTYPE, RR, SOA, SRV, TXT, A

from ..config import Config

NS_LABEL = "gateway"  # the appliance's own name; also the NS and SOA MNAME of both zones
DYNAMIC_TTL = 60  # cap for pool/lease-derived records: they change when leases do
NEGATIVE_TTL = 60  # SOA minimum: how long resolvers cache NXDOMAIN/NODATA
# refresh, retry, expire, minimum: leases change the zone, so secondaries poll every 5 min.
SOA_TIMES = (300, 60, 604800, NEGATIVE_TTL)
NS_TTL = 3600

# Plain, hashable record: (owner, type, ttl, rdata) with rdata a tuple of simple values.
Rec = tuple[str, int, int, tuple]


class LeaseLike(Protocol):
    """What DNS needs from `sidus_appliance.dhcp.leases.Lease` (kept structural on purpose)."""

    mac: str
    address: IPv4Address
    hostname: str
    state: str
    client_hostname: str | None


_BAD_CHARS = re.compile(r"[^a-z0-9-]+")


def dns_label(text: str | None) -> str | None:
    """A client-supplied host name (DHCP option 12) as one safe DNS label, or None.

    `Alice's PC.local` → `alice-s-pc`: first label only, lowercase, invalid runs → `-`.
    """
    if not text:
        return None
    first = text.strip().split(".", 1)[0].lower()
    label = _BAD_CHARS.sub("-", first).strip("-")[:63].rstrip("-")
    return label or None


def reverse_name(address: IPv4Address) -> str:
    return ".".join(reversed(str(address).split("."))) + ".in-addr.arpa"


def _in(name: str, apex: str) -> bool:
    return name == apex or name.endswith("." + apex)


@dataclass(frozen=True)
class Lookup:
    """Result of a zone lookup, ready for the server to serialise."""

    rcode: int  # 0 NOERROR, 3 NXDOMAIN
    answer: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)


class Zone:
    """Both lab zones. Names are lowercase, without the trailing dot."""

    def __init__(self, domain: str, reverse: str, serial: int, content: frozenset[Rec],
                 problems: tuple[str, ...] = ()) -> None:
        self.domain = domain
        self.reverse = reverse
        self.apexes = (domain, reverse)
        self.serial = serial
        self.content = content
        self.problems = problems
        self.ns_name = f"{NS_LABEL}.{domain}"
        self.rrsets: dict[str, dict[int, list[RR]]] = {}
        self.names: set[str] = set()  # every owner plus empty non-terminals up to the apex
        for owner, rtype, ttl, rdata in sorted(content):
            self.rrsets.setdefault(owner, {}).setdefault(rtype, []).append(_make_rr(owner, rtype, ttl, rdata))
        for apex in self.apexes:
            soa = SOA(self.ns_name + ".", f"hostmaster.{domain}.", (serial, *SOA_TIMES))
            sets = self.rrsets.setdefault(apex, {})
            sets[QTYPE.SOA] = [RR(apex + ".", QTYPE.SOA, ttl=NEGATIVE_TTL, rdata=soa)]
            ns = RR(apex + ".", QTYPE.NS, ttl=NS_TTL, rdata=NS(self.ns_name + "."))
            sets.setdefault(QTYPE.NS, []).append(ns)
        for owner in self.rrsets:
            apex = self.apex_of(owner)
            name = owner
            while apex and name not in self.names:
                self.names.add(name)
                if name == apex:
                    break
                name = name.split(".", 1)[1]

    def apex_of(self, name: str) -> str | None:
        for apex in self.apexes:
            if _in(name, apex):
                return apex
        return None

    def soa(self, apex: str) -> RR:
        return self.rrsets[apex][QTYPE.SOA][0]

    def lookup(self, name: str, qtype: int) -> Lookup | None:
        """Authoritative answer for `name` (lowercase, no dot); None when outside our zones."""
        apex = self.apex_of(name)
        if apex is None:
            return None
        if name not in self.names:
            return Lookup(3, authority=[self.soa(apex)])
        sets = self.rrsets.get(name, {})
        if qtype == QTYPE.ANY:
            answer = [rr for rrs in sets.values() for rr in rrs]
            return Lookup(0, answer=answer) if answer else Lookup(0, authority=[self.soa(apex)])
        if qtype in sets:
            answer = list(sets[qtype])
            return Lookup(0, answer=answer, additional=self._glue(answer))
        if QTYPE.CNAME in sets:
            return self._chase(sets[QTYPE.CNAME], qtype, apex)
        return Lookup(0, authority=[self.soa(apex)])  # NODATA

    def _chase(self, cname: list[RR], qtype: int, apex: str) -> Lookup:
        """CNAME plus the target's records when the target is ours (as BIND does); ≤8 hops."""
        answer = list(cname)
        seen: set[str] = set()
        target = str(cname[0].rdata.label).rstrip(".").lower()
        for _ in range(8):
            if target in seen or self.apex_of(target) is None:
                break
            seen.add(target)
            sets = self.rrsets.get(target, {})
            if qtype in sets:
                answer += sets[qtype]
                return Lookup(0, answer=answer)
            if QTYPE.CNAME not in sets:
                rcode = 0 if target in self.names else 3
                return Lookup(rcode, answer=answer, authority=[self.soa(self.apex_of(target) or apex)])
            answer += sets[QTYPE.CNAME]
            target = str(sets[QTYPE.CNAME][0].rdata.label).rstrip(".").lower()
        return Lookup(0, answer=answer)

    def _glue(self, answer: list[RR]) -> list[RR]:
        """Addresses of in-zone NS/MX/SRV targets, saving the client a round trip."""
        extra: list[RR] = []
        for rr in answer:
            if rr.rtype in (QTYPE.NS, QTYPE.MX, QTYPE.SRV):
                rd = rr.rdata
                target = getattr(rd, "label", None) or getattr(rd, "mname", None) or getattr(rd, "target", None)
                extra += self.rrsets.get(str(target).rstrip(".").lower(), {}).get(QTYPE.A, [])
        return extra

    def transfer(self, apex: str) -> list[RR]:
        """AXFR content: SOA, every other record of the zone, SOA again (RFC 5936)."""
        soa = self.soa(apex)
        body = [rr for owner, sets in sorted(self.rrsets.items()) if self.apex_of(owner) == apex
                for rtype, rrs in sorted(sets.items()) if rtype != QTYPE.SOA for rr in rrs]
        return [soa, *body, soa]

    def with_serial(self, serial: int) -> Zone:
        return Zone(self.domain, self.reverse, serial, self.content, self.problems)


def _make_rr(owner: str, rtype: int, ttl: int, rdata: tuple) -> RR:
    if rtype == QTYPE.A:
        rd = A(rdata[0])
    elif rtype in (QTYPE.CNAME, QTYPE.PTR):
        rd = (CNAME if rtype == QTYPE.CNAME else PTR)(rdata[0] + ".")
    elif rtype == QTYPE.MX:
        rd = MX(rdata[1] + ".", rdata[0])
    elif rtype == QTYPE.TXT:
        rd = TXT(list(rdata))
    elif rtype == QTYPE.SRV:
        rd = SRV(rdata[0], rdata[1], rdata[2], rdata[3] + ".")
    else:  # pragma: no cover - _Builder only emits the types above
        raise ValueError(f"unsupported type {rtype}")
    return RR(owner + ".", rtype, ttl=ttl, rdata=rd)


class _Builder:
    """Collects records tier by tier, refusing names a higher tier already holds."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.domain = config.domain
        self.ttl = config.dns.ttl
        self.dyn_ttl = min(self.ttl, DYNAMIC_TTL)
        self.records: dict[tuple[str, int, tuple], int] = {}  # (owner, type, rdata) → ttl; dedups
        self.addresses: dict[str, str] = {}  # owner → tier that holds its A/CNAME data
        self.ptrs: dict[IPv4Address, str] = {}  # address → name (first claim wins)
        self.problems: list[str] = []

    def fqdn(self, name: str) -> str:
        name = name.strip().lower()
        if name in ("@", ""):
            return self.domain
        return name.rstrip(".") if name.endswith(".") else f"{name}.{self.domain}"

    def add(self, owner: str, rtype: int, rdata: tuple, ttl: int) -> None:
        self.records.setdefault((owner, rtype, rdata), ttl)

    def host(self, name: str, address: IPv4Address, tier: str, ttl: int, ptr: bool = True) -> bool:
        """A (and PTR) for name→address, unless a higher tier owns the name for another use."""
        owner = self.fqdn(name)
        holder = self.addresses.get(owner)
        if holder is not None and holder != tier and (owner, QTYPE.A, (str(address),)) not in self.records:
            return False
        self.addresses.setdefault(owner, tier)
        self.add(owner, QTYPE.A, (str(address),), ttl)
        if ptr and address in self.config.subnet and address not in self.ptrs:
            self.ptrs[address] = owner
            self.add(reverse_name(address), QTYPE.PTR, (owner,), ttl)
        return True

    def extra(self, index: int, name: str, rtype: str, value: str, ttl: int | None) -> None:
        owner = self.fqdn(name)
        where = f"dns.records[{index}] ({name} {rtype} {value})"
        if not (_in(owner, self.domain) or _in(owner, self.config.reverse_zone)):
            self.problems.append(f"{where}: {owner} is outside our zones; ignored")
            return
        ttl = self.ttl if ttl is None else ttl
        try:
            if rtype == "A":
                address = IPv4Address(value)
                if not self.host(name, address, "records", ttl):
                    self.problems.append(f"{where}: {owner} already names another address; ignored")
            elif rtype == "CNAME":
                apex = owner in (self.domain, self.config.reverse_zone)
                if apex or owner in self.addresses or any(k[0] == owner for k in self.records):
                    self.problems.append(f"{where}: {owner} already has other records; a CNAME cannot join them")
                    return
                self.addresses[owner] = "cname"
                self.add(owner, QTYPE.CNAME, (self.fqdn(value),), ttl)
            elif rtype == "MX":
                parts = value.split()
                pref, target = (int(parts[0]), parts[1]) if len(parts) == 2 else (10, parts[0])
                self.add(owner, QTYPE.MX, (pref, self.fqdn(target)), ttl)
            elif rtype == "TXT":
                data = value.encode()
                self.add(owner, QTYPE.TXT, tuple(data[i:i + 255] for i in range(0, len(data), 255)) or (b"",), ttl)
            elif rtype == "SRV":
                prio, weight, port, target = value.split()
                self.add(owner, QTYPE.SRV, (int(prio), int(weight), int(port), self.fqdn(target)), ttl)
        except (ValueError, IndexError) as exc:
            self.problems.append(f"{where}: cannot use this value ({exc}); ignored")


def build_zone(config: Config, leases: Iterable[LeaseLike] = (), serial: int = 1) -> Zone:
    content, problems = zone_content(config, leases)
    return Zone(config.domain, config.reverse_zone, serial, content, problems)


def zone_content(config: Config, leases: Iterable[LeaseLike] = ()) -> tuple[frozenset[Rec], tuple[str, ...]]:
    """The records (without SOA/NS) and the config problems met; cheap enough to diff per change."""
    b = _Builder(config)
    b.host(NS_LABEL, config.server_ip, "appliance", b.ttl)
    reserved = {h.address for h in config.hosts}
    for h in config.hosts:
        if not b.host(h.name, h.address, "hosts", b.ttl):
            b.problems.append(f"hosts: {h.name} clashes with the appliance's own name; not in DNS")
    for i, rec in enumerate(config.dns.records):
        b.extra(i, rec.name, rec.type, rec.value, rec.ttl)
    pool = config.dhcp.pool
    bound = [lease for lease in leases if lease.state == "bound" and lease.address in config.subnet]
    # Bound pool leases take the PTR of their address before the static pool names do.
    lease_names: list[tuple[LeaseLike, str | None]] = []
    static = set(b.addresses) | {k[0] for k in b.records}
    pool_names = {b.fqdn(pool.name_for(ip)) for ip in pool.addresses()} if pool else set()
    for lease in bound:
        client = dns_label(lease.client_hostname)
        if client is not None and (b.fqdn(client) in static or b.fqdn(client) in pool_names):
            client = None  # a reservation, static or pool name is not up for grabs
        lease_names.append((lease, client))
    claimed: dict[str, LeaseLike] = {}
    for lease, client in lease_names:  # later leases win a contested client name
        if client is not None:
            claimed[b.fqdn(client)] = lease
    for lease, client in lease_names:
        name = client if client is not None and claimed.get(b.fqdn(client)) is lease else dns_label(lease.hostname)
        if name is None:
            continue
        if lease.address in reserved or lease.address == config.server_ip:
            b.host(name, lease.address, "lease", b.dyn_ttl, ptr=False)
        elif b.fqdn(name) not in static or b.fqdn(name) in pool_names:
            b.host(name, lease.address, "lease", b.dyn_ttl)
    if pool is not None:
        for ip in pool.addresses():
            b.host(pool.name_for(ip), ip, "pool", b.dyn_ttl)
    content = frozenset((owner, rtype, ttl, rdata) for (owner, rtype, rdata), ttl in b.records.items())
    return content, tuple(b.problems)
