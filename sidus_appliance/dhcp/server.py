"""DHCP policy core, sans-IO: bytes and the time in, reply bytes plus one decision out.

No sockets, no clock, no globals, no logging: `handle(data, now)` is all the asyncio layer
calls, so the whole protocol (RFC 2131 states, PXE/iPXE dispatch, reservations, quarantine,
fairness under a flood) is unit-tested by feeding bytes. `now` is wall-clock epoch seconds
(`time.time()`): lease expiries are persisted and must survive a restart.

The core changes the in-memory lease table (the next packet must see the change) and lists
those changes in its `Decision`; it never writes the journal. The service persists them and
only then sends the replies (group commit, see dhcp/service.py).

Fairness, because any packet may be crafted: an offer is held briefly, and when the pool is
tight the oldest offer (then the oldest quarantined address) is taken back first, so a flood of
DISCOVERs from random MACs cannot keep a real client out; a client in SELECTING state that asks
for an address merely offered to someone else gets it; one MAC can quarantine only
`dhcp.max_quarantine_per_client` addresses by DECLINE.

Leases are keyed by MAC (chaddr), not by client identifier (61): a SIDUS machine is the same
machine for its PXE firmware, iPXE and Linux's `ip=dhcp`, which all send different client ids,
and reservations, menus and names are all per MAC.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from ..boot.loaders import BootSpec, Machine, boot_spec, http_url
from ..boot.model import ClientKind
from ..config import INFINITE_LEASE, Config, Host
from .codec import (
    ACK,
    BOOTREPLY,
    BOOTREQUEST,
    DECLINE,
    DISCOVER,
    FLAG_BROADCAST,
    INFORM,
    MESSAGE_NAMES,
    NAK,
    OFFER,
    OPT_BOOTFILE,
    OPT_BROADCAST,
    OPT_CLIENT_ARCH,
    OPT_CLIENT_ID,
    OPT_CLIENT_UUID,
    OPT_DNS,
    OPT_DOMAIN,
    OPT_HOSTNAME,
    OPT_IPXE,
    OPT_LEASE_TIME,
    OPT_MAX_SIZE,
    OPT_MESSAGE,
    OPT_MESSAGE_TYPE,
    OPT_PARAMETER_LIST,
    OPT_REBINDING,
    OPT_RELAY_AGENT,
    OPT_RENEWAL,
    OPT_REQUESTED_IP,
    OPT_ROUTER,
    OPT_SERVER_ID,
    OPT_SUBNET_MASK,
    OPT_TFTP_SERVER,
    OPT_USER_CLASS,
    OPT_VENDOR_CLASS,
    OPT_VENDOR_SPECIFIC,
    RELEASE,
    REQUEST,
    ZERO_IP,
    DhcpPacket,
    MalformedPacket,
    encode,
    parse,
)
from .leases import BOUND, DECLINED, OFFERED, Lease, LeaseStore, LeaseStoreError
from .names import ClientNames

# An offered address stays reserved for the client this long (clients REQUEST within a second;
# a flood's offers must not hold the pool for long, and a tight pool takes them back earlier).
OFFER_HOLD = 30.0
DECLINE_HOLD = 3600.0  # a DECLINEd address (someone else answers ARP for it) rests this long
DECLINED_PREFIX = "declined:"  # lease key of a quarantined address: "declined:10.20.17.12"
MAX_HOPS = 16  # RFC 1542: relays drop beyond this; so do we
BROADCAST_ADDRESS = "255.255.255.255"
CLIENT_PORT = 68
SERVER_PORT = 67
# PXE 2.1 option 43, sub-option 6 (PXE_DISCOVERY_CONTROL) = 8: "boot file given, download it,
# no boot server discovery" — strict PXE ROMs want option 43 whenever option 60 is PXEClient.
PXE_VENDOR_OPTIONS = bytes((6, 1, 8, 255))
IPXE_NO_PXEDHCP = bytes((176, 1, 1))  # iPXE encapsulated 175.176: do not wait for proxyDHCP
# Kept when a client's option 57 forces us to shrink a reply.
_ESSENTIAL = frozenset((OPT_MESSAGE_TYPE, OPT_SERVER_ID, OPT_LEASE_TIME, OPT_SUBNET_MASK, OPT_ROUTER,
                        OPT_TFTP_SERVER, OPT_BOOTFILE, OPT_VENDOR_CLASS, OPT_MESSAGE))


@dataclass(slots=True)
class Reply:
    data: bytes
    destination: tuple[str, int]
    broadcast: bool  # False with destination (yiaddr, 68): unicast to chaddr without ARP
    mac: str
    yiaddr: IPv4Address


LeaseChange = tuple[Lease | None, Lease | None]  # (before, after); None: absent


@dataclass(slots=True)
class Decision:
    """What happened to one packet; the service logs it as one line."""

    mac: str
    message: str  # DISCOVER, REQUEST, ... or "?" when undecodable
    action: str  # OFFER, ACK, NAK, IGNORE, DROP, RELEASE, QUARANTINE
    address: IPv4Address | None = None
    arch: int | None = None
    boot_file: str | None = None
    client: ClientKind = ClientKind.PLAIN
    reason: str = ""
    # Lease table changes this packet made, in order: the service persists them (those in a
    # journalled state) before any reply leaves.
    changes: list[LeaseChange] = field(default_factory=list)
    error: bool = False  # the core failed on this packet (a bug or the store refused): logged as an error

    def log_line(self) -> str:
        """The one text of a decision, as the service logs it (README quotes it; keep it stable):
        `dhcp: REQUEST from 52:54:00:5a:00:01 (ipxe, arch 0) -> ACK 10.20.17.12 boot pxelinux.0 (selecting)`."""
        arch = "-" if self.arch is None else str(self.arch)
        parts = [f"dhcp: {self.message} from {self.mac} ({self.client}, arch {arch}) -> {self.action}"]
        if self.address is not None:
            parts.append(str(self.address))
        if self.boot_file:
            parts.append(f"boot {self.boot_file}")
        if self.reason:
            parts.append(f"({self.reason})")
        return " ".join(parts)

    def __str__(self) -> str:  # assertion messages and the like show the log line, not a second form
        return self.log_line()




class DhcpServer:
    def __init__(self, config: Config, leases: LeaseStore) -> None:
        self.leases = leases
        self.stats: Counter[str] = Counter()
        self._handlers = {
            DISCOVER: self._discover, REQUEST: self._request, DECLINE: self._decline,
            RELEASE: self._release, INFORM: self._inform,
        }
        self._quarantined_by: Counter[str] = Counter()  # MAC → addresses it holds in quarantine
        self._changes: list[LeaseChange] | None = None  # recording during handle()
        self.notes: list[str] = []  # what reload() did to leases, for the service to log
        self._expiring: list[tuple[float, str]] = []  # (expires, mac) of finite bound leases
        self._returned: list[int] = []  # freed pool addresses below the cursor (min-heap)
        self._cursor = 0  # next never-offered pool address (as an int); reset by reload()
        self._pool = None
        leases.subscribe(self._on_lease_change)
        self.reload(config)

    # ------------------------------------------------------------------ configuration

    def reload(self, config: Config) -> list[str]:
        """Take a new config (SIGHUP): reservations and options change, leases stay.

        Returns what happened to leases (dropped, renamed), for the service to log."""
        self.config = config
        dhcp = config.dhcp
        self._pool = dhcp.pool
        self._hosts: dict[str, Host] = {h.mac: h for h in config.hosts}
        self._reserved: dict[IPv4Address, Host] = {h.address: h for h in config.hosts}
        self._server_ip = config.server_ip
        # Never lease the infrastructure's own addresses, even if the pool range covers them.
        self._excluded = frozenset((config.server_ip, config.gateway, *config.dns_servers,
                                    config.subnet.network_address, config.subnet.broadcast_address))
        self._server_id = config.server_ip.packed
        self._subnet = config.subnet
        self._common = {
            OPT_SUBNET_MASK: config.subnet.netmask.packed,
            OPT_ROUTER: config.gateway.packed,
            OPT_DNS: b"".join(ip.packed for ip in config.dns_servers),
            OPT_DOMAIN: config.domain.encode(),
            OPT_BROADCAST: config.subnet.broadcast_address.packed,
        }
        lease_time = dhcp.lease_time
        self._lease_options = {OPT_LEASE_TIME: lease_time.to_bytes(4, "big")}
        if lease_time != INFINITE_LEASE:  # T1/T2 = 50 % / 87.5 % (RFC 2131 4.4.5)
            self._lease_options[OPT_RENEWAL] = (lease_time // 2).to_bytes(4, "big")
            self._lease_options[OPT_REBINDING] = (lease_time * 7 // 8).to_bytes(4, "big")
        self._lease_seconds = None if lease_time == INFINITE_LEASE else float(lease_time)
        self._next_server = str(config.server_ip).encode()
        self._names: dict[IPv4Address, str] = {}  # pool name by address, memoised
        self._client_names = ClientNames(config, self.leases.all())  # follows the changes _reconcile makes
        return self._reconcile()

    def _reconcile(self) -> list[str]:
        """Reservations win over leases; leases outside the pool go; rebuild the free lists."""
        notes: list[str] = []
        for lease in self.leases.all():
            wanted = self._valid_name(lease)
            try:
                if wanted is None:
                    notes.append(f"dropping lease {lease.mac} {lease.address} (reservation or pool changed)")
                    self.leases.remove(lease.mac)
                elif wanted != lease.hostname and lease.state == BOUND:
                    self.leases.commit(_replace_hostname(lease, wanted))
            except (OSError, LeaseStoreError) as exc:  # a reload must not die half-way on a full disk
                notes.append(f"cannot update lease {lease.mac}: {exc}")
        self._cursor = int(self._pool.start) if self._pool else 0
        self._returned = []
        self._offers: list[tuple[float, str]] = []  # (expires, mac) of offers: oldest first to reclaim
        self._quarantine: list[tuple[float, str]] = []  # (expires, key) of quarantined addresses
        self._expiring = []
        self._quarantined_by = Counter(
            lease.declined_by for lease in self.leases.all() if lease.state == DECLINED and lease.declined_by
        )
        for lease in self.leases.all():
            self._track(lease)
        self.notes = notes
        return notes

    def _valid_name(self, lease: Lease) -> str | None:
        """The name `lease` should carry under the current config, or None if it is void now."""
        host = self._hosts.get(lease.mac)
        if host is not None:
            return host.name if lease.address == host.address else None
        if (lease.address in self._reserved or lease.address in self._excluded
                or self._pool is None or lease.address not in self._pool):
            return None
        if lease.state == DECLINED:
            return lease.hostname
        return self._pool.name_for(lease.address)

    # ------------------------------------------------------------------ entry point

    def handle(self, data: bytes, now: float) -> tuple[list[Reply], Decision]:
        """One datagram in; the replies to send and the decision to log. Never raises."""
        self.stats["received"] += 1
        try:
            pkt = parse(data)
        except MalformedPacket as exc:
            self.stats["malformed"] += 1
            mac = data[28:34].hex(":") if len(data) >= 34 else "?"  # for the debug log only
            return [], Decision(mac, "?", "DROP", reason=f"malformed: {exc}")
        self._changes = changes = []
        try:
            replies, decision = self._dispatch(pkt, now)
        except (OSError, LeaseStoreError) as exc:  # journal write failed (autoflush store), or refused
            self.stats["store_errors"] += 1
            replies, decision = [], Decision(pkt.mac, _name(pkt.message_type), "DROP", reason=f"lease store: {exc}",
                                             error=True)
        except Exception as exc:  # a bug must not stop the server either
            self.stats["errors"] += 1
            replies, decision = [], Decision(pkt.mac, _name(pkt.message_type), "DROP",
                                             reason=f"internal error: {type(exc).__name__}: {exc}", error=True)
        finally:
            self._changes = None
        decision.changes = changes
        self.stats[decision.action] += 1
        return replies, decision

    def _dispatch(self, pkt: DhcpPacket, now: float) -> tuple[list[Reply], Decision]:
        if (self._offers and self._offers[0][0] <= now) or (self._quarantine and self._quarantine[0][0] <= now):
            self._expire_holds(now)
        mac, mtype = pkt.mac, pkt.message_type
        message = _name(mtype)
        if pkt.op != BOOTREQUEST:
            return [], Decision(mac, message, "DROP", reason="BOOTREPLY (op 2) from a server or relay")
        if mtype is None:
            return [], Decision(mac, "BOOTP", "DROP", reason="plain BOOTP (no option 53) is not served")
        if pkt.hops > MAX_HOPS:
            return [], Decision(mac, message, "DROP", reason=f"{pkt.hops} relay hops")
        if pkt.giaddr != ZERO_IP and pkt.giaddr not in self._subnet:
            return [], Decision(mac, message, "IGNORE", reason=f"relayed from {pkt.giaddr}, outside {self._subnet}")
        handler = self._handlers.get(mtype)
        if handler is None:
            return [], Decision(mac, message, "IGNORE", reason=f"message type {mtype} is not for a server")
        self.stats[message] += 1
        return handler(pkt, self._classify(pkt), now)

    # ------------------------------------------------------------------ message types

    def _discover(self, pkt: DhcpPacket, client: BootSpec, now: float) -> tuple[list[Reply], Decision]:
        mac = pkt.mac
        address, why = self._choose(pkt, mac, now)
        if address is None:
            return [], self._decision(pkt, client, "IGNORE", None, why)
        name = self._name_for(mac, address)
        client_hostname = _client_hostname(pkt)
        lease = self.leases.by_mac(mac)
        # The REQUEST will commit (and so make this lease the latest to claim its client's
        # name) unless it would store exactly the bound lease already there.
        last = self._lease_seconds is not None or lease != Lease(mac, address, name, None, BOUND, client_hostname)
        if lease is None or lease.address != address or lease.state == OFFERED:
            # Hold the address for this client while it decides; memory only, never journalled.
            self.leases.commit(Lease(mac, address, name, now + OFFER_HOLD, OFFERED, client_hostname))
        told = self._told_name(mac, client_hostname, name, now, last=last)
        reply = self._reply(pkt, OFFER, address, client, told)
        return [reply], self._decision(pkt, client, "OFFER", address, why)

    def _request(self, pkt: DhcpPacket, client: BootSpec, now: float) -> tuple[list[Reply], Decision]:
        mac, opts = pkt.mac, pkt.options
        server_id = opts.get(OPT_SERVER_ID)
        requested = _requested(pkt)
        if server_id is not None:
            if server_id != self._server_id:
                lease = self.leases.by_mac(mac)
                if lease is not None and lease.state == OFFERED:
                    self.leases.remove(mac)  # the client took another server's offer
                return [], self._decision(pkt, client, "IGNORE", requested,
                                          f"client selected server {IPv4Address(server_id)}")
            state, wanted = "selecting", requested or (pkt.ciaddr if pkt.ciaddr != ZERO_IP else None)
        elif requested is not None and pkt.ciaddr == ZERO_IP:
            state, wanted = "init-reboot", requested
        elif pkt.ciaddr != ZERO_IP:
            state, wanted = "renewing", pkt.ciaddr  # or rebinding: handled alike
        else:
            return [], self._decision(pkt, client, "IGNORE", None, "REQUEST without server id, address or ciaddr")
        if wanted is None:
            return self._nak(pkt, client, None, f"{state}: no requested address")
        if wanted not in self._subnet:
            return self._nak(pkt, client, wanted, f"{state}: {wanted} is not on {self._subnet}")
        assigned = self._assigned(mac)
        if assigned is None:
            if state == "selecting":
                self._take_back_offer(wanted, mac)
            if not self._is_free(wanted):
                return self._nak(pkt, client, wanted, f"{state}: {wanted} is not available")
            if state == "init-reboot":
                # RFC 2131 4.3.2: no record of this client, so another server may own it.
                return [], self._decision(pkt, client, "IGNORE", wanted, "init-reboot from an unknown client")
            assigned = wanted  # offer expired or lease file lost: the address is free, take it
        elif assigned != wanted:
            return self._nak(pkt, client, wanted, f"{state}: {wanted} requested, client's address is {assigned}")
        name = self._name_for(mac, assigned)
        expires = None if self._lease_seconds is None else now + self._lease_seconds
        lease = Lease(mac, assigned, name, expires, BOUND, _client_hostname(pkt))
        committed = self.leases.by_mac(mac) != lease
        if committed:
            self.leases.commit(lease)  # durable before the ACK leaves
        told = self._told_name(mac, lease.client_hostname, name, now, last=committed)
        reply = self._reply(pkt, ACK, assigned, client, told)
        return [reply], self._decision(pkt, client, "ACK", assigned, state)

    def _decline(self, pkt: DhcpPacket, client: BootSpec, now: float) -> tuple[list[Reply], Decision]:
        mac = pkt.mac
        if self._foreign_server(pkt):
            return [], self._decision(pkt, client, "IGNORE", None, "DECLINE for another server")
        address = _requested(pkt)
        if address is None:
            return [], self._decision(pkt, client, "IGNORE", None, "DECLINE without requested address")
        if self._assigned(mac) != address:
            return [], self._decision(pkt, client, "IGNORE", address, "declined address is not this client's")
        if address in self._reserved:
            # Cannot hand the reservation elsewhere: someone squats on it, the admin must look.
            return [], self._decision(pkt, client, "IGNORE", address, "reserved address in use by another machine")
        self.leases.remove(mac)
        cap = self.config.dhcp.max_quarantine_per_client
        if self._quarantined_by[mac] >= cap:
            # One MAC declining offer after offer would quarantine the whole pool: past its cap
            # the address simply goes back to the pool.
            reason = f"declined; {cap} addresses already quarantined by this client, address freed instead"
            return [], self._decision(pkt, client, "IGNORE", address, reason)
        self.leases.commit(Lease(DECLINED_PREFIX + str(address), address, "", now + DECLINE_HOLD, DECLINED,
                                 declined_by=mac))
        reason = f"declined; not handed out for {DECLINE_HOLD:.0f}s"
        return [], self._decision(pkt, client, "QUARANTINE", address, reason)

    def _release(self, pkt: DhcpPacket, client: BootSpec, now: float) -> tuple[list[Reply], Decision]:
        mac = pkt.mac
        if self._foreign_server(pkt):
            return [], self._decision(pkt, client, "IGNORE", pkt.ciaddr, "RELEASE for another server")
        lease = self.leases.by_mac(mac)
        if lease is None or lease.address != pkt.ciaddr:
            reason = "RELEASE of an address this client does not hold"
            return [], self._decision(pkt, client, "IGNORE", pkt.ciaddr, reason)
        self.leases.remove(mac)
        return [], self._decision(pkt, client, "RELEASE", pkt.ciaddr, "")

    def _inform(self, pkt: DhcpPacket, client: BootSpec, now: float) -> tuple[list[Reply], Decision]:
        if pkt.ciaddr == ZERO_IP or pkt.ciaddr not in self._subnet:
            return [], self._decision(pkt, client, "IGNORE", pkt.ciaddr, "INFORM without a ciaddr on our subnet")
        reply = self._reply(pkt, ACK, ZERO_IP, client, None, lease=False)
        return [reply], self._decision(pkt, client, "ACK", pkt.ciaddr, "inform")

    def _nak(self, pkt: DhcpPacket, client: BootSpec, address: IPv4Address | None,
             reason: str) -> tuple[list[Reply], Decision]:
        opts = {OPT_MESSAGE_TYPE: bytes((NAK,)), OPT_SERVER_ID: self._server_id, OPT_MESSAGE: reason.encode()}
        _echo(pkt, opts)
        reply = DhcpPacket(
            BOOTREPLY, pkt.htype, pkt.hlen, 0, pkt.xid, 0,
            FLAG_BROADCAST if pkt.giaddr != ZERO_IP else pkt.flags & FLAG_BROADCAST,  # RFC 2131 4.3.2
            ZERO_IP, ZERO_IP, ZERO_IP, pkt.giaddr, pkt.chaddr, b"", b"", opts,
        )
        if pkt.giaddr != ZERO_IP:
            destination, broadcast = (str(pkt.giaddr), SERVER_PORT), False
        else:
            destination, broadcast = (BROADCAST_ADDRESS, CLIENT_PORT), True
        out = Reply(encode(reply), destination, broadcast, pkt.mac, ZERO_IP)
        decision = self._decision(pkt, client, "NAK", address, reason)
        decision.boot_file = None
        return [out], decision

    # ------------------------------------------------------------------ addresses

    def _assigned(self, mac: str) -> IPv4Address | None:
        """The address this client holds or is reserved: what its REQUEST must ask for."""
        host = self._hosts.get(mac)
        if host is not None:
            return host.address
        lease = self.leases.by_mac(mac)
        if lease is not None and lease.state != DECLINED and self._usable(lease.address, mac):
            return lease.address
        return None

    def _choose(self, pkt: DhcpPacket, mac: str, now: float) -> tuple[IPv4Address | None, str]:
        """Address to offer: reservation, current lease, the requested one if free, lowest free."""
        host = self._hosts.get(mac)
        if host is not None:
            return host.address, f"reservation {host.name}"
        lease = self.leases.by_mac(mac)
        if lease is not None and self._usable(lease.address, mac):
            return lease.address, f"{lease.state} lease"
        requested = _requested(pkt)
        if requested is not None and self._is_free(requested):
            return requested, "requested address"
        if self._pool is None:
            return None, "unknown client and no pool (reservations only)"
        address = self._lowest_free()
        if address is None:
            # Pool tight: take back, in this order, a long-expired lease, the oldest offer made
            # to another client, the oldest quarantined address (ISC dhcpd reclaims abandoned
            # leases the same way). A flood's offers must not keep a real client out.
            for reclaim, what in ((self._reclaim_expired, "expired lease"), (self._reclaim_offer, "oldest offer"),
                                  (self._reclaim_quarantine, "oldest quarantine")):
                if reclaim(now, mac):
                    address = self._lowest_free()
                    if address is not None:
                        return address, f"pool tight, reclaimed the {what}"
            return None, "pool exhausted"
        return address, "pool"

    def _usable(self, address: IPv4Address, mac: str) -> bool:
        """May `mac` keep `address`? In the pool and not reserved for someone else."""
        if self._pool is None or address not in self._pool or address in self._reserved or address in self._excluded:
            return False
        holder = self.leases.by_address(address)
        return holder is None or holder.mac == mac

    def _is_free(self, address: IPv4Address) -> bool:
        return (
            self._pool is not None
            and address in self._pool
            and address not in self._reserved
            and address not in self._excluded
            and self.leases.by_address(address) is None
        )

    def _lowest_free(self) -> IPv4Address | None:
        """Peek (not take) the lowest free pool address: O(1) amortised, no pool scan.

        Addresses above `_cursor` have never been handed out since the last reload; freed
        ones below it wait in the `_returned` heap. Taking happens by committing a lease.
        """
        returned = self._returned
        while returned:
            address = IPv4Address(returned[0])
            if self._is_free(address):
                return address
            heapq.heappop(returned)
        assert self._pool is not None
        end = int(self._pool.end)
        while self._cursor <= end:
            address = IPv4Address(self._cursor)
            if self._is_free(address):
                return address
            self._cursor += 1
        return None

    def _name_for(self, mac: str, address: IPv4Address) -> str:
        host = self._hosts.get(mac)
        if host is not None:
            return host.name
        if self._pool is None:
            return ""
        name = self._names.get(address)
        if name is None:
            name = self._names[address] = self._pool.name_for(address)
        return name

    def _told_name(self, mac: str, client_hostname: str | None, own_name: str, now: float, *, last: bool) -> str:
        """Option 12 of the OFFER and ACK: the name DNS publishes for the lease (names.py), so
        that what the client is told, its A and its PTR agree. A reservation keeps its name."""
        if mac in self._hosts:
            return own_name
        return self._client_names.published(mac, client_hostname, own_name, now, last=last)

    # ------------------------------------------------------------------ expiry

    def _on_lease_change(self, old: Lease | None, new: Lease | None) -> None:
        """Keep the free list, expiry heaps and quarantine counts in step with every store change."""
        if self._changes is not None:
            self._changes.append((old, new))
        self._client_names.changed(old, new)
        if old is not None and old.state == DECLINED and old.declined_by:
            self._quarantined_by[old.declined_by] -= 1
            if self._quarantined_by[old.declined_by] <= 0:
                del self._quarantined_by[old.declined_by]
        if new is not None and new.state == DECLINED and new.declined_by:
            self._quarantined_by[new.declined_by] += 1
        if old is not None and (new is None or new.address != old.address):
            number = int(old.address)
            if number < self._cursor and self._pool is not None and old.address in self._pool:
                heapq.heappush(self._returned, number)
                if len(self._returned) > 2 * (int(self._pool.end) - int(self._pool.start)) + 1024:
                    # Churn re-pushes addresses taken since: keep only the free ones, once each.
                    self._returned = sorted({n for n in self._returned if self._is_free(IPv4Address(n))})
        if new is not None:
            self._track(new)

    def _track(self, lease: Lease) -> None:
        if lease.expires is None:
            return
        if lease.state == BOUND:
            heapq.heappush(self._expiring, (lease.expires, lease.mac))
            if len(self._expiring) > 2 * len(self.leases) + 1024:
                self._rebuild_expiring()  # renewals leave stale entries behind; drop them
        elif lease.state == OFFERED:
            heapq.heappush(self._offers, (lease.expires, lease.mac))
            if len(self._offers) > 2 * len(self.leases) + 1024:
                self._offers = self._live_heap(OFFERED)
        else:
            heapq.heappush(self._quarantine, (lease.expires, lease.mac))
            if len(self._quarantine) > 2 * len(self.leases) + 1024:
                self._quarantine = self._live_heap(DECLINED)

    def _live_heap(self, state: str) -> list[tuple[float, str]]:
        heap = [(le.expires, le.mac) for le in self.leases.all() if le.state == state and le.expires is not None]
        heapq.heapify(heap)
        return heap

    def _rebuild_expiring(self) -> None:
        self._expiring = [(le.expires, le.mac) for le in self.leases.all() if le.state == BOUND and le.expires]
        heapq.heapify(self._expiring)

    def _expire_holds(self, now: float) -> None:
        """Offers not taken up and finished quarantines give their address back."""
        for heap, state in ((self._offers, OFFERED), (self._quarantine, DECLINED)):
            while heap and heap[0][0] <= now:
                expires, mac = heapq.heappop(heap)
                lease = self.leases.by_mac(mac)
                if lease is not None and lease.state == state and lease.expires == expires:
                    self.leases.remove(mac)

    def _reclaim_oldest(self, heap: list[tuple[float, str]], state: str, mac: str) -> bool:
        """Free the address of the oldest live entry of `heap` that is not `mac`'s own."""
        skipped = []
        reclaimed = False
        while heap:
            expires, holder = heapq.heappop(heap)
            lease = self.leases.by_mac(holder)
            if lease is None or lease.state != state or lease.expires != expires:
                continue  # stale entry
            if holder == mac:
                skipped.append((expires, holder))
                continue
            self.leases.remove(holder)
            reclaimed = True
            break
        for entry in skipped:
            heapq.heappush(heap, entry)
        return reclaimed

    def _reclaim_offer(self, now: float, mac: str) -> bool:
        return self._reclaim_oldest(self._offers, OFFERED, mac)

    def _reclaim_quarantine(self, now: float, mac: str) -> bool:
        return self._reclaim_oldest(self._quarantine, DECLINED, mac)

    def _take_back_offer(self, address: IPv4Address, mac: str) -> None:
        """A SELECTING client chose `address`: a mere offer of it to another client yields (that
        offer may have been taken back from this very client when the pool was tight)."""
        holder = self.leases.by_address(address)
        if (holder is not None and holder.mac != mac and holder.state == OFFERED and self._pool is not None
                and address in self._pool and address not in self._reserved and address not in self._excluded):
            self.leases.remove(holder.mac)

    def _reclaim_expired(self, now: float, mac: str = "") -> bool:
        """Pool empty: free the longest-expired bound leases (kept until needed, so a client
        coming back late still finds its address)."""
        reclaimed = False
        while self._expiring and self._expiring[0][0] <= now:
            expires, mac = heapq.heappop(self._expiring)
            lease = self.leases.by_mac(mac)
            if lease is not None and lease.state == BOUND and lease.expires == expires:
                self.leases.remove(mac)
                reclaimed = True
                break
        return reclaimed

    # ------------------------------------------------------------------ replies

    def _classify(self, pkt: DhcpPacket) -> BootSpec:
        """Ask the boot policy which loader this client gets."""
        opts = pkt.options
        machine = Machine(pkt.mac, opts.get(OPT_CLIENT_ARCH), opts.get(OPT_VENDOR_CLASS, b""),
                          opts.get(OPT_USER_CLASS, b""), OPT_IPXE in opts)
        dhcp, host = self.config.dhcp, self._hosts.get(pkt.mac)
        return boot_spec(machine, dhcp.boot_files, dhcp.default_boot_file,
                         host_files=host.boot_files if host is not None else None,
                         transfer=self.config.http.transfer)

    def _reply(self, pkt: DhcpPacket, mtype: int, yiaddr: IPv4Address, client: BootSpec,
               hostname: str | None, lease: bool = True) -> Reply:
        opts: dict[int, bytes] = {OPT_MESSAGE_TYPE: bytes((mtype,)), OPT_SERVER_ID: self._server_id}
        opts.update(self._common)
        if lease:
            opts.update(self._lease_options)
        if hostname:
            opts[OPT_HOSTNAME] = hostname.encode()
        boot_file = client.loader
        siaddr, file = ZERO_IP, b""
        if boot_file is not None:
            if client.over_http:
                boot_file = http_url(str(self.config.server_ip), self.config.http.port, boot_file)
            siaddr, name = self._server_ip, boot_file.encode()
            file = name if len(name) < 128 else b""  # too long for the field: option 67 only
            opts[OPT_TFTP_SERVER] = self._next_server
            opts[OPT_BOOTFILE] = name
            if client.kind is ClientKind.HTTP:
                opts[OPT_VENDOR_CLASS] = b"HTTPClient"  # UEFI 2.5+ 24.7: an HTTP boot offer says so
            elif client.vendor_pxe:
                opts[OPT_VENDOR_CLASS] = b"PXEClient"
                opts[OPT_VENDOR_SPECIFIC] = PXE_VENDOR_OPTIONS
            uuid = pkt.options.get(OPT_CLIENT_UUID)
            if uuid is not None:
                opts[OPT_CLIENT_UUID] = uuid  # PXE spec: echo the client's UUID/GUID
        if client.kind is ClientKind.IPXE and self.config.dhcp.ipxe_no_pxedhcp:
            opts[OPT_IPXE] = IPXE_NO_PXEDHCP
        _echo(pkt, opts)
        reply = DhcpPacket(
            BOOTREPLY, pkt.htype, pkt.hlen, 0, pkt.xid, 0, pkt.flags & FLAG_BROADCAST,
            pkt.ciaddr if mtype == ACK else ZERO_IP, yiaddr, siaddr, pkt.giaddr, pkt.chaddr, b"", file, opts,
        )
        order = pkt.options.get(OPT_PARAMETER_LIST, b"")
        data = encode(reply, order)
        limit = _max_size(pkt)
        if len(data) > limit:
            reply.options = {code: v for code, v in opts.items() if code in _ESSENTIAL}
            data = encode(reply, order)
        return Reply(data, *_destination(pkt, yiaddr), pkt.mac, yiaddr)

    def _decision(self, pkt: DhcpPacket, client: BootSpec, action: str, address: IPv4Address | None,
                  reason: str) -> Decision:
        if client.note:
            reason = f"{reason}; {client.note}" if reason else client.note
        return Decision(pkt.mac, _name(pkt.message_type), action, address, client.arch,
                        client.loader, client.kind, reason)

    def _foreign_server(self, pkt: DhcpPacket) -> bool:
        server_id = pkt.options.get(OPT_SERVER_ID)
        return server_id is not None and server_id != self._server_id


def _echo(pkt: DhcpPacket, opts: dict[int, bytes]) -> None:
    """Options a server must copy back: client identifier (RFC 6842), relay agent info (3046)."""
    client_id = pkt.options.get(OPT_CLIENT_ID)
    if client_id is not None:
        opts[OPT_CLIENT_ID] = client_id
    if pkt.giaddr != ZERO_IP:
        agent = pkt.options.get(OPT_RELAY_AGENT)
        if agent is not None:
            opts[OPT_RELAY_AGENT] = agent


def _destination(pkt: DhcpPacket, yiaddr: IPv4Address) -> tuple[tuple[str, int], bool]:
    """RFC 2131 4.1: relay, then ciaddr, then broadcast flag, else unicast to yiaddr/chaddr."""
    if pkt.giaddr != ZERO_IP:
        return (str(pkt.giaddr), SERVER_PORT), False
    if pkt.ciaddr != ZERO_IP:
        return (str(pkt.ciaddr), CLIENT_PORT), False
    if pkt.flags & FLAG_BROADCAST or yiaddr == ZERO_IP:
        return (BROADCAST_ADDRESS, CLIENT_PORT), True
    return (str(yiaddr), CLIENT_PORT), False


def _max_size(pkt: DhcpPacket) -> int:
    """Largest DHCP payload the client accepts (option 57 counts IP and UDP headers)."""
    value = pkt.options.get(OPT_MAX_SIZE)
    size = int.from_bytes(value, "big") if value else 576
    return max(size, 576) - 28


def _requested(pkt: DhcpPacket) -> IPv4Address | None:
    value = pkt.options.get(OPT_REQUESTED_IP)
    return IPv4Address(value) if value is not None else None


def _client_hostname(pkt: DhcpPacket) -> str | None:
    value = pkt.options.get(OPT_HOSTNAME)
    if not value:
        return None
    return value.rstrip(b"\0").decode("utf-8", "replace")[:63]


def _replace_hostname(lease: Lease, hostname: str) -> Lease:
    return Lease(lease.mac, lease.address, hostname, lease.expires, lease.state, lease.client_hostname)


def _name(mtype: int | None) -> str:
    if mtype is None:
        return "BOOTP"
    return MESSAGE_NAMES.get(mtype, f"type-{mtype}")
