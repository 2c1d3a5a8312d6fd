"""The lab's two zones (forward and reverse), computed from the config and the lease table.

Pure data, no I/O: a `ZoneBuilder` turns the config and the leases into an immutable `Zone`
that the sans-IO server (`server.py`) queries. Records are plain comparable tuples
(`Zone.content`), so the service can tell whether a lease change altered DNS at all and bump
the SOA serial only when it did. The builder keeps what successive zones share: the config's
part (pool included), computed once per config, so that a lease change only recomputes the
leases' part; and the dnslib RRs, built lazily per owner. Each DNS service owns its builder:
nothing is kept at module level, so two services in one process share nothing.

Name precedence, highest first (a lower tier never takes a name a higher tier holds):
appliance (`gateway`) → reservations (`hosts`) → `dns.records` → pool names (`dhcp-<octet>`)
→ names from bound leases (client option 12, else the lease's own name).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Protocol

from dnslib import CNAME, MX, NS, PTR, QTYPE, RR, SOA, SRV, TXT, A

from ..config import Config
from ..dhcp.leases import LeaseState

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


RecKey = tuple[str, int, tuple]  # (owner, type, rdata): identity of a record, TTL aside


@dataclass(eq=False)
class Static:
    """Everything that depends on the config alone (pool included): computed once per config,
    so that a lease change costs work in proportion to the leases, not to the pool."""

    config: Config
    records: dict[RecKey, int]  # → ttl
    index: dict[str, dict[int, list[Rec]]]  # by owner, then type
    names: frozenset[str]  # owners, apexes and empty non-terminals
    taken: frozenset[str]  # owners no lease may claim (everything above, pool names included)
    fixed_ptr: frozenset[IPv4Address]  # addresses whose PTR the config decides (never a lease)
    pool_ptr: frozenset[str]  # reverse owners whose pool-name PTR a lease may replace
    problems: tuple[str, ...]


class Content:
    """The zone's records: the config's (`static`) plus the leases' (`dynamic`), where each
    reverse owner in `hidden` has its pool-name PTR replaced by the lease's name."""

    __slots__ = ("dynamic", "hidden", "static")

    def __init__(self, static: Static, dynamic: dict[RecKey, int], hidden: frozenset[str]) -> None:
        self.static, self.dynamic, self.hidden = static, dynamic, hidden

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Content):
            return NotImplemented
        same_static = self.static is other.static or self.static.records == other.static.records
        return same_static and self.dynamic == other.dynamic and self.hidden == other.hidden

    __hash__ = None  # type: ignore[assignment]

    def __iter__(self) -> Iterator[Rec]:
        for (owner, rtype, rdata), ttl in self.static.records.items():
            if not (rtype == QTYPE.PTR and owner in self.hidden):
                yield owner, rtype, ttl, rdata
        for (owner, rtype, rdata), ttl in self.dynamic.items():
            yield owner, rtype, ttl, rdata

    def __len__(self) -> int:
        return len(self.static.records) - len(self.hidden) + len(self.dynamic)


def _with_ancestors(owners: Iterable[str], apexes: tuple[str, ...], into: set[str]) -> None:
    for owner in owners:
        apex = next((a for a in apexes if _in(owner, a)), None)
        name = owner
        while apex and name not in into:
            into.add(name)
            if name == apex:
                break
            name = name.split(".", 1)[1]


class Zone:
    """Both lab zones. Names are lowercase, without the trailing dot. dnslib RRs are built on
    first use, owner by owner: a zone over a /16 pool is cheap to create per lease change."""

    def __init__(self, domain: str, reverse: str, serial: int, content: Content,
                 problems: tuple[str, ...], rr: Callable[[Rec], RR]) -> None:
        self.domain = domain
        self._rr = rr  # its builder's RRs, shared with the zones before and after it
        self.reverse = reverse
        self.apexes = (domain, reverse)
        self.serial = serial
        self.content = content
        self.problems = problems
        self.ns_name = f"{NS_LABEL}.{domain}"
        static = content.static
        self._static = static
        overlay: dict[str, dict[int, list[Rec]]] = {}
        for owner in content.hidden:
            overlay[owner] = {t: list(v) for t, v in static.index.get(owner, {}).items() if t != QTYPE.PTR}
        for (owner, rtype, rdata), ttl in content.dynamic.items():
            sets = overlay.get(owner)
            if sets is None:
                sets = overlay[owner] = {t: list(v) for t, v in static.index.get(owner, {}).items()}
            sets.setdefault(rtype, []).append((owner, rtype, ttl, rdata))
        self._overlay = overlay
        self._extra_names: set[str] = set()  # lease names (and their ancestors) new to the static part
        for owner in overlay.keys() - static.names:
            apex, name = self.apex_of(owner), owner
            while apex and name not in static.names and name not in self._extra_names:
                self._extra_names.add(name)
                if name == apex:
                    break
                name = name.split(".", 1)[1]
        self._apex: dict[str, dict[int, list[RR]]] = {}
        for apex in self.apexes:
            soa = SOA(self.ns_name + ".", f"hostmaster.{domain}.", (serial, *SOA_TIMES))
            self._apex[apex] = {
                QTYPE.SOA: [RR(apex + ".", QTYPE.SOA, ttl=NEGATIVE_TTL, rdata=soa)],
                QTYPE.NS: [RR(apex + ".", QTYPE.NS, ttl=NS_TTL, rdata=NS(self.ns_name + "."))],
            }
        self._sets: dict[str, dict[int, list[RR]]] = {}

    def apex_of(self, name: str) -> str | None:
        for apex in self.apexes:
            if _in(name, apex):
                return apex
        return None

    def exists(self, name: str) -> bool:
        return name in self._static.names or name in self._extra_names or name in self._apex

    def owners(self) -> Iterator[str]:
        """Every owner with records, apexes first (for warming and transfers)."""
        yield from self.apexes
        for owner in self._static.index:
            if owner not in self._apex and owner not in self._overlay:
                yield owner
        for owner in self._overlay:
            if owner not in self._apex:
                yield owner

    def sets(self, owner: str) -> dict[int, list[RR]]:
        """The owner's RRsets by type (empty when it has none)."""
        cached = self._sets.get(owner)
        if cached is not None:
            return cached
        recs = self._overlay.get(owner)
        if recs is None:
            recs = self._static.index.get(owner, {})
        rr = self._rr
        out = {t: [rr(rec) for rec in sorted(v)] for t, v in recs.items() if v}
        apex = self._apex.get(owner)
        if apex is not None:
            out[QTYPE.SOA] = apex[QTYPE.SOA]
            out[QTYPE.NS] = apex[QTYPE.NS] + out.get(QTYPE.NS, [])
        if out and len(self._sets) < 20_000:  # bounded; names that do not exist are never cached
            self._sets[owner] = out
        return out

    def soa(self, apex: str) -> RR:
        return self._apex[apex][QTYPE.SOA][0]

    def rr(self, rec: Rec) -> RR:
        """One record as a dnslib RR (built once, shared with the builder's other zones)."""
        return self._rr(rec)

    def lookup(self, name: str, qtype: int) -> Lookup | None:
        """Authoritative answer for `name` (lowercase, no dot); None when outside our zones."""
        apex = self.apex_of(name)
        if apex is None:
            return None
        if not self.exists(name):
            return Lookup(3, authority=[self.soa(apex)])
        sets = self.sets(name)
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
            sets = self.sets(target)
            if qtype in sets:
                answer += sets[qtype]
                return Lookup(0, answer=answer)
            if QTYPE.CNAME not in sets:
                rcode = 0 if self.exists(target) else 3
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
                extra += self.sets(str(target).rstrip(".").lower()).get(QTYPE.A, [])
        return extra

    def transfer(self, apex: str) -> list[RR]:
        """AXFR content: SOA, every other record of the zone, SOA again (RFC 5936)."""
        soa = self.soa(apex)
        body = [rr for owner in sorted(self.owners()) if self.apex_of(owner) == apex
                for rtype, rrs in sorted(self.sets(owner).items()) if rtype != QTYPE.SOA for rr in rrs]
        return [soa, *body, soa]


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


class ZoneBuilder:
    """Builds one DNS service's successive zones, keeping what they share (see the module
    docstring): the config's part, for the last config object seen, and dnslib RRs per record."""

    MAX_RRS = 300_000  # forget every RR past this (a /16 pool with names is ~130k records)

    def __init__(self) -> None:
        self._static: Static | None = None
        self._rrs: dict[Rec, RR] = {}

    def content(self, config: Config, leases: Iterable[LeaseLike] = ()) -> tuple[Content, tuple[str, ...]]:
        """The records (without SOA/NS) and the config problems met; cheap enough to diff per change."""
        static = self._static
        if static is None or static.config is not config:
            static = self._static = _static_part(config)
        return _content(static, config, leases), static.problems

    def zone(self, config: Config, serial: int, content: Content, problems: tuple[str, ...] = ()) -> Zone:
        return Zone(config.domain, config.reverse_zone, serial, content, problems, rr=self.rr)

    def build(self, config: Config, leases: Iterable[LeaseLike] = (), serial: int = 1) -> Zone:
        return self.zone(config, serial, *self.content(config, leases))

    def rr(self, rec: Rec) -> RR:
        rr = self._rrs.get(rec)
        if rr is None:
            if len(self._rrs) > self.MAX_RRS:
                self._rrs.clear()
            rr = self._rrs[rec] = _make_rr(*rec)
        return rr


def build_zone(config: Config, leases: Iterable[LeaseLike] = (), serial: int = 1) -> Zone:
    """One zone from scratch (tests, tools): nothing is kept for the next call."""
    return ZoneBuilder().build(config, leases, serial)


def zone_content(config: Config, leases: Iterable[LeaseLike] = ()) -> tuple[Content, tuple[str, ...]]:
    """`ZoneBuilder.content` from scratch: nothing is kept for the next call."""
    return ZoneBuilder().content(config, leases)


def _config_tiers(config: Config) -> _Builder:
    """The appliance, the reservations and `dns.records`, in precedence order (the pool next)."""
    b = _Builder(config)
    b.host(NS_LABEL, config.server_ip, "appliance", b.ttl)
    for h in config.hosts:
        if not b.host(h.name, h.address, "hosts", b.ttl):
            b.problems.append(f"hosts: {h.name} clashes with the appliance's own name; not in DNS")
    for i, rec in enumerate(config.dns.records):
        b.extra(i, rec.name, rec.type, rec.value, rec.ttl)
    return b


def held_names(config: Config) -> frozenset[str]:
    """The owners a client's own name (option 12) can never take, as `_content` refuses them:
    everything the config's tiers hold, and every pool name. DHCP asks, to tell a client in
    its ACK the name this zone will publish for it; cheaper than `_static_part` (no records
    for the pool)."""
    b = _config_tiers(config)
    owners = set(b.addresses) | {owner for owner, _, _ in b.records}
    pool = config.dhcp.pool
    if pool is not None:
        owners.update(b.fqdn(pool.name_for(ip)) for ip in pool.addresses())
    return frozenset(owners)


def _static_part(config: Config) -> Static:
    """The config-only records."""
    b = _config_tiers(config)
    fixed_ptr = set(b.ptrs) | {h.address for h in config.hosts} | {config.server_ip}
    pool_ptr: set[str] = set()
    if config.dhcp.pool is not None:
        for ip in config.dhcp.pool.addresses():
            b.host(config.dhcp.pool.name_for(ip), ip, "pool", b.dyn_ttl)
            if ip not in fixed_ptr:
                pool_ptr.add(reverse_name(ip))
    index: dict[str, dict[int, list[Rec]]] = {}
    for (owner, rtype, rdata), ttl in b.records.items():
        index.setdefault(owner, {}).setdefault(rtype, []).append((owner, rtype, ttl, rdata))
    apexes = (config.domain, config.reverse_zone)
    names: set[str] = set(apexes)
    _with_ancestors(index, apexes, names)
    return Static(config, b.records, index, frozenset(names), frozenset(set(b.addresses) | set(index)),
                  frozenset(fixed_ptr), frozenset(pool_ptr), tuple(b.problems))


def _content(static: Static, config: Config, leases: Iterable[LeaseLike]) -> Content:
    """The config's part plus the records of the bound leases."""
    domain = config.domain
    dyn_ttl = min(config.dns.ttl, DYNAMIC_TTL)
    bound = [lease for lease in leases if lease.state == LeaseState.BOUND and lease.address in config.subnet]
    lease_names: list[tuple[LeaseLike, str | None]] = []
    for lease in bound:
        client = dns_label(lease.client_hostname)
        if client is not None and f"{client}.{domain}" in static.taken:
            client = None  # a reservation, static or pool name is not up for grabs
        lease_names.append((lease, client))
    claimed: dict[str, LeaseLike] = {}
    for lease, client in lease_names:  # later leases win a contested client name
        if client is not None:
            claimed[client] = lease
    dynamic: dict[RecKey, int] = {}
    hidden: set[str] = set()
    ptr_done: set[IPv4Address] = set()
    for lease, client in lease_names:
        name = client if client is not None and claimed.get(client) is lease else dns_label(lease.hostname)
        if name is None:
            continue
        owner = f"{name}.{domain}"
        a_key: RecKey = (owner, QTYPE.A, (str(lease.address),))
        if a_key not in static.records:
            if owner in static.taken:
                continue  # the name already means something else
            dynamic.setdefault(a_key, dyn_ttl)
        if lease.address in static.fixed_ptr or lease.address in ptr_done:
            continue  # a reservation's or the appliance's PTR stays the config's
        ptr_done.add(lease.address)
        reverse = reverse_name(lease.address)
        ptr_key: RecKey = (reverse, QTYPE.PTR, (owner,))
        if ptr_key not in static.records:
            dynamic[ptr_key] = dyn_ttl
            if reverse in static.pool_ptr:
                hidden.add(reverse)
    return Content(static, dynamic, frozenset(hidden))
