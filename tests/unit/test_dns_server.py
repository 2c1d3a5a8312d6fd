"""The sans-IO DNS core fed with wire bytes: answers, negative answers, EDNS, TC, AXFR,
recursion policy, forwarding helpers, and malformed input (never a crash)."""

from __future__ import annotations

import random
import struct
from ipaddress import IPv4Network

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from sidus_appliance.dns.server import DnsServer, Forward, Policy
from sidus_appliance.dns.zone import build_zone

from .test_dns_helpers import answers, config, lease, query

LAB = (IPv4Network("10.20.17.0/24"),)
INSIDE, OUTSIDE = "10.20.17.50", "192.0.2.9"


def server(upstream: bool = True, transfer: tuple[IPv4Network, ...] = (IPv4Network("10.20.17.252/32"),),
           warm: bool = True, **overrides) -> DnsServer:
    core = DnsServer(build_zone(config(**overrides), serial=42), Policy(upstream, LAB, transfer))
    if not warm:
        core.set_zone(core.zone, warm=False)
    return core


@pytest.fixture(scope="module")
def core() -> DnsServer:
    return server()


def parse(reply: bytes | object) -> DNSRecord:
    assert isinstance(reply, bytes), reply
    return DNSRecord.parse(reply)


def test_seed_alias_and_ptr(core: DnsServer) -> None:
    reply = parse(core.handle_udp(query("filer.sidus.zone"), INSIDE))
    assert reply.header.id == 0x1234 and reply.header.aa and reply.header.qr and reply.header.rd
    assert answers(reply.pack()) == [("filer.sidus.zone.", "CNAME", "gateway.sidus.zone."),
                                     ("gateway.sidus.zone.", "A", "10.20.17.254")]
    ptr = core.handle_udp(query("254.17.20.10.in-addr.arpa", "PTR"), INSIDE)
    assert answers(ptr) == [("254.17.20.10.in-addr.arpa.", "PTR", "gateway.sidus.zone.")]


def test_pool_and_master_ptr(core: DnsServer) -> None:
    assert answers(core.handle_udp(query("77.17.20.10.in-addr.arpa", "PTR"), INSIDE))[0][2] == "dhcp-77.sidus.zone."
    assert answers(core.handle_udp(query("253.17.20.10.in-addr.arpa", "PTR"), INSIDE))[0][2] == "master.sidus.zone."


def test_nxdomain_with_soa_and_nodata(core: DnsServer) -> None:
    nx = parse(core.handle_udp(query("nobody.sidus.zone"), INSIDE))
    assert nx.header.rcode == RCODE.NXDOMAIN and nx.header.aa and not nx.rr
    assert [QTYPE[rr.rtype] for rr in nx.auth] == ["SOA"] and nx.auth[0].rdata.times[0] == 42
    nodata = parse(core.handle_udp(query("master.sidus.zone", "AAAA"), INSIDE))
    assert nodata.header.rcode == RCODE.NOERROR and not nodata.rr and QTYPE[nodata.auth[0].rtype] == "SOA"


def test_case_insensitive_and_question_echoed_as_asked(core: DnsServer) -> None:
    for _ in range(2):  # first may be slow path, second is the memo: same behaviour
        reply = parse(core.handle_udp(query("GaTeWaY.SIDUS.zone", qid=7), INSIDE))
        assert str(reply.q.qname) == "GaTeWaY.SIDUS.zone."
        assert [str(rr.rdata) for rr in reply.rr] == ["10.20.17.254"] and reply.header.id == 7


def test_case_echoed_for_types_whose_bytes_look_like_letters(core: DnsServer) -> None:
    reply = parse(core.handle_udp(query("MASTER.sidus.zone", 65), INSIDE))  # 65 = 0x0041 = "A"
    assert str(reply.q.qname) == "MASTER.sidus.zone." and reply.q.qtype == 65 and not reply.rr


def test_rd_copied_and_ra_only_for_recursion_clients(core: DnsServer) -> None:
    inside = parse(core.handle_udp(query("gateway.sidus.zone"), INSIDE))
    outside = parse(core.handle_udp(query("gateway.sidus.zone", rd=False), OUTSIDE))
    assert inside.header.ra and inside.header.rd
    assert not outside.header.ra and not outside.header.rd


def test_edns_echoed_payload_and_do_bit(core: DnsServer) -> None:
    plain = parse(core.handle_udp(query("master.sidus.zone"), INSIDE))
    assert not plain.ar
    for do in (False, True, False):
        reply = parse(core.handle_udp(query("master.sidus.zone", edns=4096, do=do), INSIDE))
        (opt,) = reply.ar
        assert opt.rtype == QTYPE.OPT and opt.edns_len == 1232 and bool(opt.edns_do) == do


def test_edns_bad_version(core: DnsServer) -> None:
    record = DNSRecord.parse(query("master.sidus.zone", edns=1232))
    record.ar[0].ttl = 1 << 16  # version 1
    reply = parse(core.handle_udp(bytes(record.pack()), INSIDE))
    assert reply.ar[0].edns_rcode == 1 and reply.header.rcode == 0  # BADVERS = 16 = (1 << 4) | 0


def test_truncation_and_tcp_fallback() -> None:
    records = [{"name": "big", "type": "TXT", "value": f"{i}" * 250} for i in range(8)]
    core = server(dns={"records": records})
    for edns in (None, 512, 4096):
        reply = parse(core.handle_udp(query("big.sidus.zone", "TXT", edns=edns), INSIDE))
        assert reply.header.tc and not reply.rr and (bool(reply.ar) == (edns is not None))
    (full,) = core.handle_tcp(query("big.sidus.zone", "TXT"), INSIDE)
    assert len(parse(full).rr) == 8 and not parse(full).header.tc


def test_payload_honoured_between_512_and_1232() -> None:
    records = [{"name": "mid", "type": "TXT", "value": f"{i}" * 200} for i in range(3)]  # ~700 bytes
    core = server(dns={"records": records})
    assert parse(core.handle_udp(query("mid.sidus.zone", "TXT"), INSIDE)).header.tc
    assert parse(core.handle_udp(query("mid.sidus.zone", "TXT", edns=600), INSIDE)).header.tc
    assert len(parse(core.handle_udp(query("mid.sidus.zone", "TXT", edns=1232), INSIDE)).rr) == 3


def test_axfr_tcp_only_and_only_for_allowed() -> None:
    core = server()
    messages = core.handle_tcp(query("sidus.zone", "AXFR"), "10.20.17.252")
    assert isinstance(messages, list) and len(messages) > 1
    records = [rr for m in messages for rr in parse(m).rr]
    assert QTYPE[records[0].rtype] == "SOA" and QTYPE[records[-1].rtype] == "SOA"
    triples = [(str(r.rname), QTYPE[r.rtype], str(r.rdata)) for r in records]
    assert ("master.sidus.zone.", "A", "10.20.17.253") in triples
    reverse = core.handle_tcp(query("17.20.10.in-addr.arpa", "AXFR"), "10.20.17.252")
    assert sum(len(parse(m).rr) for m in reverse) == 2 + 1 + 242  # SOA twice, NS, PTRs
    (refused,) = core.handle_tcp(query("sidus.zone", "AXFR"), INSIDE)
    assert parse(refused).header.rcode == RCODE.REFUSED
    (not_apex,) = core.handle_tcp(query("master.sidus.zone", "AXFR"), "10.20.17.252")
    assert parse(not_apex).header.rcode == RCODE.REFUSED
    assert parse(core.handle_udp(query("sidus.zone", "AXFR"), "10.20.17.252")).header.rcode == RCODE.FORMERR
    # IXFR: over TCP the whole zone (AXFR-style); over UDP the SOA alone, meaning "use TCP".
    ixfr = core.handle_tcp(query("sidus.zone", "IXFR"), "10.20.17.252")
    assert sum(len(parse(m).rr) for m in ixfr) == sum(len(parse(m).rr) for m in messages)
    soa_only = parse(core.handle_udp(query("sidus.zone", "IXFR"), "10.20.17.252"))
    assert [QTYPE[rr.rtype] for rr in soa_only.rr] == ["SOA"]
    assert parse(core.handle_udp(query("sidus.zone", "IXFR"), INSIDE)).header.rcode == RCODE.REFUSED


def test_recursion_policy() -> None:
    core = server()
    action = core.handle_udp(query("www.example.org"), INSIDE)
    assert isinstance(action, Forward) and not action.tcp
    assert action.question == query("www.example.org")[12:]
    assert isinstance(core.handle_tcp(query("www.example.org"), INSIDE), Forward)
    assert parse(core.handle_udp(query("www.example.org"), OUTSIDE)).header.rcode == RCODE.REFUSED
    assert parse(core.handle_udp(query("www.example.org", rd=False), INSIDE)).header.rcode == RCODE.REFUSED
    no_upstream = server(upstream=False)
    assert parse(no_upstream.handle_udp(query("www.example.org"), INSIDE)).header.rcode == RCODE.REFUSED
    # Our own zones are never forwarded, whoever asks.
    assert parse(core.handle_udp(query("nobody.sidus.zone"), OUTSIDE)).header.rcode == RCODE.NXDOMAIN


def test_relay_and_servfail() -> None:
    core = server()
    q = query("www.example.org", qid=0xBEEF)
    action = core.handle_udp(q, INSIDE)
    assert isinstance(action, Forward)
    upstream = DNSRecord.parse(b"\x99\x99" + q[2:]).reply()
    upstream.add_answer(*DNSRecord.parse(query("www.example.org")).reply().rr)
    wire = bytes(upstream.pack())
    relayed = core.relay(action.query, action.question, b"\x99\x99", wire)
    assert relayed is not None and relayed[:2] == b"\xbe\xef" and relayed[2:] == wire[2:]
    assert core.relay(action.query, action.question, b"\x99\x98", wire) is None  # wrong ID
    other = bytes(DNSRecord.parse(b"\x99\x99" + query("evil.example.org")[2:]).reply().pack())
    assert core.relay(action.query, action.question, b"\x99\x99", other) is None  # wrong question
    assert core.relay(action.query, action.question, b"\x99\x99", q) is None  # not a response
    failed = parse(core.servfail(q))
    assert failed.header.rcode == RCODE.SERVFAIL and failed.header.id == 0xBEEF


def test_memo_gives_the_same_bytes_as_the_slow_path() -> None:
    cold, warm = server(warm=False), server()
    names = [("filer.sidus.zone", "A"), ("gateway.sidus.zone", "AAAA"), ("x.sidus.zone", "A"),
             ("sidus.zone", "SOA"), ("sidus.zone", "NS"), ("100.17.20.10.in-addr.arpa", "PTR"),
             ("17.20.10.in-addr.arpa", "SOA"), ("dhcp-10.sidus.zone", "ANY"), ("Master.Sidus.Zone", "A"),
             ("master.sidus.zone", 65)]  # 65 = HTTPS: a type byte that bytes.lower() would change
    for name, qtype in names:
        for edns in (None, 1232):
            q = query(name, qtype, edns=edns, qid=random.randrange(65536))
            first = cold.handle_udp(q, INSIDE)  # slow path, memoised
            assert cold.handle_udp(q, INSIDE) == first == warm.handle_udp(q, INSIDE), (name, qtype, edns)
            assert parse(first).q.qtype == (qtype if isinstance(qtype, int) else getattr(QTYPE, qtype))
    assert warm.hits >= len(names)


def test_new_zone_replaces_memo() -> None:
    core = server()
    assert parse(core.handle_udp(query("alice.sidus.zone"), INSIDE)).header.rcode == RCODE.NXDOMAIN
    core.set_zone(build_zone(config(), [lease("10.20.17.42", "dhcp-42", client="alice")], serial=43))
    assert answers(core.handle_udp(query("alice.sidus.zone"), INSIDE)) == [("alice.sidus.zone.", "A", "10.20.17.42")]
    soa = parse(core.handle_udp(query("sidus.zone", "SOA"), INSIDE)).rr[0]
    assert soa.rdata.times[0] == 43


def test_warming_in_steps_stops_when_superseded() -> None:
    core = server(warm=False)
    steps = core.warming(batch=4)
    next(steps)
    core.set_zone(build_zone(config(), serial=50), warm=False)
    assert list(steps) == []  # the old zone's warming gives up


# ----------------------------------------------------------------------------- malformed


def header(qid: int = 1, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


@pytest.mark.parametrize(("data", "expected"), [
    (b"", None),
    (b"\x12\x34\x01", None),  # runt
    (query("gateway.sidus.zone")[:2] + b"\x81\x80" + query("gateway.sidus.zone")[4:], None),  # a response
    (header() + b"\x07gateway\x05sid", RCODE.FORMERR),  # truncated question
    (header() + b"\xc0\x0c\x00\x01\x00\x01", RCODE.FORMERR),  # pointer to itself
    (header() + b"\x01a\xc0\x0e\x00\x01\x00\x01", RCODE.FORMERR),  # pointer forwards
    (header() + b"\x01a\xc0\x0c\x00\x01\x00\x01", RCODE.FORMERR),  # loop a -> a -> ...
    (header(qd=2) + query("a.sidus.zone")[12:] * 2, RCODE.FORMERR),
    (header(qd=0), RCODE.FORMERR),
    (header(an=1) + query("a.sidus.zone")[12:], RCODE.FORMERR),
    (header(flags=0x2800) + query("a.sidus.zone")[12:], RCODE.NOTIMP),  # UPDATE
    (header(flags=0x2000) + query("a.sidus.zone")[12:], RCODE.NOTIMP),  # NOTIFY
    (header(ar=2) + query("a.sidus.zone")[12:] + (b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00") * 2,
     RCODE.FORMERR),  # two OPTs
    (query("a.sidus.zone") + b"\x00" * 5000, None),  # oversized for UDP: dropped
])
def test_malformed_udp(data: bytes, expected: int | None) -> None:
    core = server()
    reply = core.handle_udp(data, INSIDE)
    if expected is None:
        assert reply is None
        assert core.stats["dropped"] == 1
    else:
        assert isinstance(reply, bytes) and reply[:2] == data[:2] and reply[2] & 0x80
        assert reply[3] & 0x0F == expected


def test_pointer_chain_deeper_than_the_recursion_limit() -> None:
    # An OPT-less additional RR whose rdata is a chain of pointers, each to the one before,
    # then a second RR named by the chain's end: dnslib recurses 30k times (RecursionError).
    question = query("a.sidus.zone")[12:]
    base = 12 + len(question) + 11  # first RR: root name, type, class, ttl, rdlength
    n = 30000
    chain = b"\x00" + b"".join(struct.pack("!H", 0xC000 | (base if j == 1 else base + 1 + 2 * (j - 2)))
                                for j in range(1, n + 1))
    first = b"\x00" + struct.pack("!HHIH", 0xFF00, 1, 0, len(chain)) + chain
    second = struct.pack("!H", 0xC000 | (base + 1 + 2 * (n - 1))) + struct.pack("!HHIH", 1, 1, 0, 4) + bytes(4)
    data = header(ar=2) + question + first + second
    assert len(data) <= 65535
    core = server()
    (reply,) = core.handle_tcp(data, INSIDE)
    assert reply[3] & 0x0F == RCODE.FORMERR and core.stats["formerr"] == 1


def test_fuzz_never_raises() -> None:
    core = server()
    rng = random.Random(1234)
    seeds = [query("filer.sidus.zone"), query("master.sidus.zone", edns=1232), query("www.example.org"),
             query("sidus.zone", "AXFR")]
    for i in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if i % 5 == 0:
            data = data[: rng.randrange(len(data) + 1)]
        out_udp = core.handle_udp(bytes(data), INSIDE)
        out_tcp = core.handle_tcp(bytes(data), "10.20.17.252")
        assert out_udp is None or isinstance(out_udp, (bytes, Forward))
        assert out_tcp is None or isinstance(out_tcp, (list, Forward))
    counted = core.counters()
    assert counted["formerr"] > 0 and counted["dropped"] > 0


# ----------------------------------------------------------------------------- names dnslib cannot re-encode

LONG_LABEL = header(qid=0xBEEF) + b"\x40" + b"a" * 64 + b"\x07example\x03org\x00\x00\x01\x00\x01"
LONG_NAME = header(qid=0xCAFE) + (b"\x3f" + b"b" * 63) * 5 + b"\x05sidus\x04zone\x00\x00\x01\x00\x01"


@pytest.mark.parametrize("data", [LONG_LABEL, LONG_NAME], ids=["64-byte label", "name over 255 bytes"])
@pytest.mark.parametrize("client", [INSIDE, OUTSIDE])
def test_unencodable_name_gets_formerr_with_its_id_and_no_question(data: bytes, client: str) -> None:
    reports: list[tuple[str, str, str]] = []
    core = server()
    core.report = lambda *what: reports.append(what)
    udp_reply = core.handle_udp(data, client)
    tcp_reply = core.handle_tcp(data, client)
    assert isinstance(tcp_reply, list) and len(tcp_reply) == 1
    for reply in (udp_reply, tcp_reply[0]):
        parsed = parse(reply)
        assert parsed.header.id == struct.unpack("!H", data[:2])[0] and parsed.header.qr
        assert parsed.header.rcode == RCODE.FORMERR and not parsed.questions
    assert [(what, who) for what, who, _ in reports] == [("malformed query", client)] * 2


def test_any_failure_building_an_answer_is_a_servfail_for_that_query_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    reports: list[tuple[str, str, str]] = []
    core = server(warm=False)
    core.report = lambda *what: reports.append(what)

    def broken(*args: object) -> None:
        raise ValueError("a bug\nwith a newline")

    monkeypatch.setattr(core.zone, "lookup", broken)
    reply = parse(core.handle_udp(query("gateway.sidus.zone", qid=77), INSIDE))
    assert reply.header.id == 77 and reply.header.rcode == RCODE.SERVFAIL and not reply.questions
    assert core.stats["internal_errors"] == 1
    (what, who, detail), = reports
    assert (what, who) == ("internal error", INSIDE) and "\n" not in detail
    monkeypatch.undo()
    assert parse(core.handle_udp(query("gateway.sidus.zone"), INSIDE)).header.rcode == RCODE.NOERROR


def test_servfail_for_a_forwarded_query_never_raises() -> None:
    core = server()
    reply = parse(core.servfail(LONG_LABEL))
    assert reply.header.id == 0xBEEF and reply.header.rcode == RCODE.SERVFAIL
    assert core.servfail(b"\x01\x02") is None


def test_refusals_are_reported_for_the_log() -> None:
    reports: list[tuple[str, str, str]] = []
    core = server()
    core.report = lambda *what: reports.append(what)
    assert parse(core.handle_udp(query("www.example.org"), OUTSIDE)).header.rcode == RCODE.REFUSED
    (refused,) = core.handle_tcp(query("sidus.zone", "AXFR"), OUTSIDE)
    assert parse(refused).header.rcode == RCODE.REFUSED
    assert [(what, who) for what, who, _ in reports] == [("refused", OUTSIDE)] * 2
