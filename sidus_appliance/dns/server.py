"""Sans-IO DNS core: query bytes (+ client address, + transport kind) in, reply bytes out.

Hot path: every authoritative answer is memoised as wire bytes keyed by the lowercased
question section (qname labels + qtype + qclass), one table for plain queries and one for
EDNS queries. A hit costs a dict lookup and three concatenations: the query's ID, a
precomputed flags/counts block (4 variants: RD copied, RA per client), the query's own
question (so the client's 0x20 case survives; compression pointers in the answer point at
offset 12 and stay valid) and the answer tail. Everything else takes the dnslib slow path,
whose answers are then memoised. A new zone empties the memo; `warming` precomputes every
owner's answers again (the transport runs it in steps, once changes pause).

No sockets, clocks or globals here: forwarding is returned as a `Forward` action and the
transport (service.py) performs it. What a client did wrong (malformed, refused) is handed to an
injected `report(what, client, detail)` callback; the transport rate-limits the log lines.

Hostile input never escapes as an exception: a name dnslib parses but cannot encode again (a
64-byte label, a name over 255 bytes) gets FORMERR with the question left out, and any other
failure while building an answer gets SERVFAIL, both from the header alone (ID kept).
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from dnslib import CLASS, EDNS0, QTYPE, RCODE, SOA, DNSHeader, DNSLabel, DNSQuestion, DNSRecord

from .xfr import Journal, ixfr_records, serial_newer
from .zone import Zone

UDP_PAYLOAD = 1232  # what we advertise and the most we send over UDP (DNS flag day 2020)
PLAIN_LIMIT = 512  # RFC 1035 limit without EDNS
CACHE_LIMIT = 50_000  # memo entries beyond the warmed zone; random-name floods cannot grow us
WARM_LIMIT = 4096  # owners precomputed eagerly (~1 s of CPU, in steps); the rest fill the memo lazily
AXFR_CHUNK = 100  # records per AXFR message (well under 64 KiB)
MAX_TCP_MESSAGE = 65535
MAX_UDP_QUERY = 4096  # bigger "queries" are nonsense or an attack: dropped
_PLAIN = b"\x00\x01\x00\x00\x00\x00\x00\x00"  # QD=1 AN=0 NS=0 AR=0
_EDNS = b"\x00\x01\x00\x00\x00\x00\x00\x01"  # QD=1 AN=0 NS=0 AR=1 (the OPT)
_RA = {True: 2, False: 0}
BADVERS = 16
MAX_LABEL = 63  # RFC 1035 2.3.4: a length byte with 01 or 10 on top is not a plain label
MAX_NAME = 255  # wire length, length bytes and the root included

Report = Callable[[str, str, str], None]  # (what, client address, detail): for the transport's log


def _no_report(what: str, client: str, detail: str) -> None:
    pass


def name_problem(labels: Iterable[bytes]) -> str | None:
    """Why a parsed name cannot be a DNS name (and cannot be packed again), or None."""
    total = 1
    for label in labels:
        if len(label) > MAX_LABEL:
            return f"label of {len(label)} bytes"
        total += len(label) + 1
    return f"name of {total} bytes" if total > MAX_NAME else None


def _exc_text(exc: BaseException) -> str:
    """One short log-safe line (dnslib messages quote the client's bytes)."""
    return f"{type(exc).__name__}: {str(exc)[:80]!r}"


@dataclass(frozen=True)
class Forward:
    """Action: relay `query` upstream; `question` is its question section, to check replies."""

    query: bytes
    question: bytes
    tcp: bool
    client: str = ""  # who asked: the transport budgets forwards per client


@dataclass(frozen=True)
class Policy:
    upstream: bool  # any upstream configured at all
    recursion: tuple[IPv4Network, ...]
    transfer: tuple[IPv4Network, ...]

    def recursion_for(self, client: str) -> bool:
        return self.upstream and _member(client, self.recursion)

    def transfer_for(self, client: str) -> bool:
        return _member(client, self.transfer)


def _member(client: str, networks: Iterable[IPv4Network]) -> bool:
    try:
        ip = IPv4Address(client)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def _typed_key_ok(qtype: int, qclass: int) -> bool:
    """Keys are matched after bytes.lower() of the whole question: type/class bytes must be
    unchanged by lower() and unreachable from it, or two types could alias."""
    return not any(0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A for b in struct.pack("!HH", qtype, qclass))


def question_key(labels: Iterable[bytes], qtype: int, qclass: int) -> bytes:
    wire = b"".join(bytes((len(label),)) + label.lower() for label in labels)
    return wire + b"\x00" + struct.pack("!HH", qtype, qclass)


def _flag_block(byte2: int, byte3: int, counts: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """Header bytes 2..11 for index rd | ra (ra = 2): the hot path picks one."""
    return tuple(
        bytes((byte2 & 0xFE | (i & 1), byte3 & 0x7F | (0x80 if i & 2 else 0))) + counts for i in range(4)
    )  # type: ignore[return-value]


class DnsServer:
    def __init__(self, zone: Zone, policy: Policy, warm: bool = True, report: Report = _no_report) -> None:
        self.policy = policy
        self.report = report
        self.stats: Counter[str] = Counter()
        self.hits = 0  # kept apart from `stats`: a plain attribute is cheaper on the hot path
        self._ra: dict[str, int] = {}
        self.journal = Journal()  # the changes between successive zones, for IXFR
        self.zone = zone
        self.set_zone(zone, warm)

    # ------------------------------------------------------------------ configuration

    def set_zone(self, zone: Zone, warm: bool = True) -> frozenset[str]:
        """Serve `zone` from now on; returns the apexes whose records differ from the zone before
        (the journal keeps the difference for IXFR)."""
        changed = self.journal.record(self.zone, zone)
        self.zone = zone
        self._plain: dict[bytes, tuple] = {}
        self._edns: dict[bytes, tuple] = {}
        if warm:
            self.warm()
        return changed

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy
        self._ra = {}

    def warm(self) -> None:
        """Precompute the wire answers of every owner and type in the zone, both flavours."""
        for _ in self.warming():
            pass

    def warming(self, batch: int = 32) -> Iterator[None]:
        """`warm` in steps of `batch` owners, so a transport can interleave traffic (~10 ms each)."""
        zone = self.zone
        for n, owner in enumerate(list(zone.owners())):
            if self.zone is not zone or n >= WARM_LIMIT:
                return  # superseded by a newer zone, or too big to warm: the memo fills lazily
            if zone.apex_of(owner) is None:
                continue
            sets = zone.sets(owner)
            saved = self.stats.copy()  # warming is not traffic
            qtypes = set(sets) | {QTYPE.A} if QTYPE.CNAME in sets else set(sets)
            for qtype in qtypes:
                query = DNSRecord(DNSHeader(id=0, rd=0), q=DNSQuestion(owner + ".", qtype))
                self._respond(bytes(query.pack()), "0.0.0.0", tcp=False)
                query.add_ar(EDNS0(udp_len=UDP_PAYLOAD))
                self._respond(bytes(query.pack()), "0.0.0.0", tcp=False)
            self.stats = saved
            if n % batch == batch - 1:
                yield

    # ------------------------------------------------------------------ entry points

    def handle_udp(self, data: bytes, client: str) -> bytes | Forward | None:
        """One UDP datagram → reply bytes, a Forward action, or None (dropped)."""
        if len(data) > 16 and not data[2] & 0xF8:  # QR=0, opcode QUERY
            counts = data[4:12]
            if counts == _PLAIN:
                entry = self._plain.get(data[12:].lower())
                if entry is not None:
                    ra = self._ra.get(client)
                    if ra is None:
                        ra = self._ra_for(client)
                    self.hits += 1
                    return data[:2] + entry[0][(data[2] & 1) | ra] + data[12:] + entry[1]
            elif counts == _EDNS:
                qend = data.find(b"\x00", 12) + 5
                opt = data[qend:]
                if (qend > 17 and len(opt) >= 11 and opt[0] == 0 and opt[1] == 0 and opt[2] == 41
                        and opt[6] == 0 and len(opt) == 11 + (opt[9] << 8 | opt[10])):
                    entry = self._edns.get(data[12:qend].lower())
                    if entry is not None and entry[2] <= max(PLAIN_LIMIT, min(opt[3] << 8 | opt[4], UDP_PAYLOAD)):
                        ra = self._ra.get(client)
                        if ra is None:
                            ra = self._ra_for(client)
                        self.hits += 1
                        tail = entry[1]
                        if opt[7] & 0x80:  # DO bit: RFC 3225 wants it copied back
                            tail = tail[:-4] + bytes((tail[-4] | 0x80,)) + tail[-3:]
                        return data[:2] + entry[0][(data[2] & 1) | ra] + data[12:qend] + tail
        if len(data) > MAX_UDP_QUERY:
            self.stats["dropped"] += 1
            return None
        out = self._respond(data, client, tcp=False)
        assert not isinstance(out, list)
        return out

    def handle_tcp(self, data: bytes, client: str) -> list[bytes] | Forward | None:
        """One TCP message (without its length prefix) → reply messages, Forward, or None."""
        out = self._respond(data, client, tcp=True)
        if out is None or isinstance(out, (list, Forward)):
            return out
        return [out]

    def servfail(self, query: bytes) -> bytes | None:
        """The answer when forwarding failed or timed out (never raises)."""
        if len(query) < 12:
            return None
        self.stats["servfail"] += 1
        try:
            return self._error(DNSRecord.parse(query), RCODE.SERVFAIL, ra=True)
        except Exception:
            return self._header_only(query, RCODE.SERVFAIL)

    @staticmethod
    def relay(query: bytes, question: bytes, upstream_id: bytes, reply: bytes) -> bytes | None:
        """Validate an upstream reply to our forwarded query; give it back the client's ID."""
        if len(reply) < 12 + len(question) or reply[:2] != upstream_id or not reply[2] & 0x80:
            return None
        if reply[12:12 + len(question)].lower() != question.lower():
            return None  # not an answer to our question: spoofed or confused
        return query[:2] + reply[2:]

    def counters(self) -> dict[str, int]:
        out = dict(self.stats)
        out["hits"] = self.hits
        return out

    # ------------------------------------------------------------------ slow path

    def _ra_for(self, client: str) -> int:
        if len(self._ra) > 65536:
            self._ra.clear()
        ra = self._ra[client] = _RA[self.policy.recursion_for(client)]
        return ra

    def _respond(self, data: bytes, client: str, tcp: bool) -> bytes | list[bytes] | Forward | None:
        self.stats["slow"] += 1
        if len(data) < 12 or data[2] & 0x80:  # runt, or a response: never answer those (loops)
            self.stats["dropped"] += 1
            return None
        try:
            return self._answer(data, client, tcp)
        except Exception as exc:  # a dnslib corner or our bug: this query alone fails, never the server
            self.stats["internal_errors"] += 1
            self.report("internal error", client, _exc_text(exc))
            return self._header_only(data, RCODE.SERVFAIL)

    def _formerr(self, data: bytes, client: str, detail: str) -> bytes:
        self.stats["formerr"] += 1
        self.report("malformed query", client, detail)
        return self._header_only(data, RCODE.FORMERR)

    def _answer(self, data: bytes, client: str, tcp: bool) -> bytes | list[bytes] | Forward | None:
        try:
            request = DNSRecord.parse(data)
        except Exception as exc:  # DNSError, but also RecursionError on pointer chains and the like
            return self._formerr(data, client, _exc_text(exc))
        header = request.header
        if header.opcode != 0:
            self.stats["notimp"] += 1
            self.report("unsupported opcode", client, str(header.opcode))
            return self._header_only(data, RCODE.NOTIMP)
        opts = [rr for rr in request.ar if rr.rtype == QTYPE.OPT]
        ixfr = len(request.questions) == 1 and request.q.qtype == QTYPE.IXFR
        if len(request.questions) != 1 or len(opts) > 1 or request.rr or len(request.auth) > ixfr:
            return self._formerr(data, client, f"{len(request.questions)} questions, {len(opts)} OPT, "
                                               f"{len(request.rr)} answers, {len(request.auth)} authority")
        opt = opts[0] if opts else None
        q = request.questions[0]
        problem = name_problem(q.qname.label)
        if problem is not None:  # parsed, but packing it again would raise: keep it out of the reply
            return self._formerr(data, client, problem)
        if opt is not None and opt.edns_ver != 0:
            self.stats["badvers"] += 1
            self.report("unsupported EDNS version", client, str(opt.edns_ver))
            return self._error(request, BADVERS, ra=False)
        labels = tuple(q.qname.label)
        name = ".".join(label.decode("ascii", "replace") for label in labels).lower()
        if any(b"." in label for label in labels):
            name = "\x00"  # a label with a dot inside must not alias a real name
        ra = self.policy.recursion_for(client)
        if q.qtype in (QTYPE.AXFR, QTYPE.IXFR):
            return self._transfer(request, name, client, tcp)
        look = self.zone.lookup(name, q.qtype) if q.qclass in (CLASS.IN, 255) else None
        if look is None:
            if self.zone.apex_of(name) is None and ra and header.rd and q.qclass == CLASS.IN:
                self.stats["forwarded"] += 1
                qend = 12 + len(question_key(labels, 0, 0))
                return Forward(data, data[12:qend], tcp, client)
            self.stats["refused"] += 1
            self.report("refused", client, "recursion not allowed" if self.zone.apex_of(name) is None
                        else f"class {q.qclass}")
            return self._error(request, RCODE.REFUSED, ra=ra)
        self.stats["nxdomain" if look.rcode == RCODE.NXDOMAIN else "answered"] += 1
        key = question_key(labels, q.qtype, q.qclass)
        reply = DNSRecord(DNSHeader(id=header.id, qr=1, aa=1, rd=header.rd, ra=int(ra), rcode=look.rcode))
        reply.add_question(DNSQuestion(DNSLabel([label.lower() for label in labels]), q.qtype, q.qclass))
        reply.add_answer(*look.answer)
        reply.add_auth(*look.authority)
        reply.add_ar(*look.additional)
        if opt is not None:
            reply.add_ar(EDNS0(udp_len=UDP_PAYLOAD, flags="do" if opt.edns_do else ""))
        wire = bytes(reply.pack())
        limit = MAX_TCP_MESSAGE if tcp else (PLAIN_LIMIT if opt is None else max(PLAIN_LIMIT, min(opt.edns_len,
                                                                                                   UDP_PAYLOAD)))
        self._memo(key, wire, opt is not None)
        if len(wire) > limit:
            self.stats["truncated"] += 1
            return self._truncated(request, opt is not None, ra)
        asked = data[12:12 + len(key)]
        if asked[:-4].lower() == key[:-4] and asked[-4:] == key[-4:]:  # echo the client's spelling
            return data[:2] + wire[2:12] + data[12:12 + len(key)] + wire[12 + len(key):]
        return wire

    def _memo(self, key: bytes, wire: bytes, edns: bool) -> None:
        table = self._edns if edns else self._plain
        if key in table or len(table) >= CACHE_LIMIT or wire[12:12 + len(key)] != key:
            return
        qtype, qclass = struct.unpack("!HH", key[-4:])
        if not _typed_key_ok(qtype, qclass) or (not edns and len(wire) > PLAIN_LIMIT):
            return
        tail = wire[12 + len(key):]
        if edns:  # store with DO clear; the hot path sets it per query
            tail = tail[:-4] + bytes((tail[-4] & 0x7F,)) + tail[-3:]
        table[key] = (_flag_block(wire[2], wire[3], wire[4:12]), tail, len(wire))

    def _transfer(self, request: DNSRecord, name: str, client: str, tcp: bool) -> bytes | list[bytes]:
        """AXFR, and IXFR (incremental from the journal, else the whole zone, RFC 1995), for
        allowed clients."""
        ra = self.policy.recursion_for(client)
        if not tcp and request.q.qtype == QTYPE.AXFR:
            self.stats["formerr"] += 1
            self.report("malformed query", client, "AXFR over UDP")
            return self._error(request, RCODE.FORMERR, ra=ra)  # AXFR is TCP-only (RFC 5936)
        client_serial = None
        if request.auth:  # IXFR: the client's SOA, whose serial is the version it holds (RFC 1995 §3)
            soa = request.auth[0]
            if (soa.rtype != QTYPE.SOA or not isinstance(soa.rdata, SOA)
                    or str(soa.rname).rstrip(".").lower() != name):
                self.stats["formerr"] += 1
                self.report("malformed query", client, "IXFR without the zone's SOA in authority")
                return self._error(request, RCODE.FORMERR, ra=ra)
            client_serial = soa.rdata.times[0]
        if name not in self.zone.apexes or not self.policy.transfer_for(client):
            self.stats["refused"] += 1
            self.report("refused", client, "zone transfer not allowed")
            return self._error(request, RCODE.REFUSED, ra=ra)
        if not tcp:
            # IXFR over UDP: our SOA alone, as BIND and Knot send; RFC 1995 §2 reads it as "up to
            # date" when the serial is the client's, else as "ask again over TCP", which TC says too.
            self.stats["ixfr_udp"] += 1
            current = client_serial is not None and not serial_newer(self.zone.serial, client_serial)
            reply = DNSRecord(DNSHeader(id=request.header.id, qr=1, aa=1, tc=int(not current),
                                        rd=request.header.rd, ra=int(ra)))
            reply.add_question(request.q)
            reply.add_answer(self.zone.soa(name))
            return bytes(reply.pack())
        if request.q.qtype == QTYPE.AXFR:
            kind, records = "axfr", self.zone.transfer(name)
        else:
            kind, records = ixfr_records(self.zone, name, client_serial, self.journal)
            kind = f"ixfr_{kind}"
        self.stats[kind] += 1
        messages = []
        for start in range(0, len(records), AXFR_CHUNK):
            msg = DNSRecord(DNSHeader(id=request.header.id, qr=1, aa=1, rd=request.header.rd, ra=int(ra)))
            msg.add_question(request.q)
            msg.add_answer(*records[start:start + AXFR_CHUNK])
            messages.append(bytes(msg.pack()))
        return messages

    def _error(self, request: DNSRecord, rcode: int, ra: bool) -> bytes:
        reply = DNSRecord(DNSHeader(id=request.header.id, qr=1, rd=request.header.rd, ra=int(ra),
                                    opcode=request.header.opcode, rcode=rcode & 0xF))
        reply.add_question(*request.questions)
        opt = next((rr for rr in request.ar if rr.rtype == QTYPE.OPT), None)
        if opt is not None or rcode > 0xF:
            reply.add_ar(EDNS0(udp_len=UDP_PAYLOAD, ext_rcode=rcode >> 4))
        return bytes(reply.pack())

    def _truncated(self, request: DNSRecord, edns: bool, ra: bool) -> bytes:
        reply = DNSRecord(DNSHeader(id=request.header.id, qr=1, aa=1, tc=1, rd=request.header.rd, ra=int(ra)))
        reply.add_question(*request.questions)
        if edns:
            reply.add_ar(EDNS0(udp_len=UDP_PAYLOAD))
        return bytes(reply.pack())

    @staticmethod
    def _header_only(data: bytes, rcode: int) -> bytes:
        """FORMERR/NOTIMP/SERVFAIL when the question cannot be trusted or encoded again: the
        header alone, ID, opcode and RD kept, every count zero."""
        return data[:2] + bytes((0x80 | data[2] & 0x79, rcode)) + b"\x00" * 8
