"""Fuzzing the sans-IO DNS core with hypothesis: arbitrary bytes and near-valid queries (long
labels, names over 255 bytes, random types and classes, EDNS options, counts that lie, IXFR
authority sections of every shape) go into the UDP and TCP handlers from clients inside and
outside the recursion and transfer sets; arbitrary and mutated answers go into the NOTIFY
notifier.

Properties: nothing raises out of the core, and every reply that comes out parses with dnslib
and carries the query's ID (a client can always match our answer, even a FORMERR); the notifier
takes as the answer only a reply with the ID of a NOTIFY in flight, from its secondary."""

from __future__ import annotations

import struct
from functools import cache
from ipaddress import IPv4Network

from dnslib import RCODE, DNSRecord
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sidus_appliance.dns.notify import Notifier
from sidus_appliance.dns.server import DnsServer, Forward, Policy
from sidus_appliance.dns.zone import ZoneBuilder

from .test_dns_helpers import config, lease, query

CLIENTS = ("10.20.17.50", "10.20.17.252", "192.0.2.9")  # recursion; transfer only; neither
FUZZ = settings(max_examples=600, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@cache
def core() -> DnsServer:
    """One warmed core for every example (warming costs ~1 s; the memo is part of what we fuzz),
    with one zone swap in its journal (serial 6 → 7), so IXFR from 6 is incremental."""
    builder = ZoneBuilder()
    server = DnsServer(builder.build(config(), serial=6),
                       Policy(True, (IPv4Network("10.20.17.0/25"),), (IPv4Network("10.20.17.252/32"),)), warm=False)
    server.set_zone(builder.build(config(), [lease("10.20.17.42", "dhcp-42", "labpc7")], serial=7))
    return server


def check_reply(reply: bytes, data: bytes) -> None:
    parsed = DNSRecord.parse(reply)  # raises if we ever send something a client cannot read
    assert reply[:2] == data[:2] and parsed.header.qr == 1


def exercise(data: bytes, client: str) -> None:
    """Feed one message to both handlers; check every reply and every Forward's SERVFAIL."""
    server = core()
    out_udp = server.handle_udp(data, client)
    out_tcp = server.handle_tcp(data, client)
    assert out_udp is None or isinstance(out_udp, (bytes, Forward))
    assert out_tcp is None or isinstance(out_tcp, (list, Forward))
    replies = [out_udp] if isinstance(out_udp, bytes) else []
    replies += out_tcp if isinstance(out_tcp, list) else []
    for reply in replies:
        check_reply(reply, data)
    for action in (out_udp, out_tcp):
        if isinstance(action, Forward):  # what the transport sends when the upstream fails
            failed = server.servfail(action.query)
            assert failed is not None
            check_reply(failed, data)


# ----------------------------------------------------------------------------- strategies


def ascii_labels(min_size: int, max_size: int) -> st.SearchStrategy[bytes]:
    """dnslib refuses labels that are not UTF-8: most random bytes never reach the answer code."""
    return st.text(st.characters(max_codepoint=127), min_size=min_size, max_size=max_size).map(str.encode)


labels = st.one_of(
    st.binary(min_size=1, max_size=70),  # up to 70: past the 63-byte limit, and 0x40.. length bytes
    ascii_labels(1, 70),
    ascii_labels(60, 70),  # hypothesis favours short ones: around the limit on purpose
    st.sampled_from([b"gateway", b"GaTeWaY", b"sidus", b"zone", b"in-addr", b"arpa", b"17", b"20", b"10",
                     b"master", b"filer", b"*", b"a.b", b"\x00", b"a" * 63, b"b" * 64]),
)
zone_suffix = st.sampled_from([[], [b"sidus", b"zone"], [b"17", b"20", b"10", b"in-addr", b"arpa"], [b"example",
                                                                                                       b"org"]])
names = st.one_of(
    st.builds(lambda head, tail: head + tail, st.lists(labels, max_size=6), zone_suffix),
    st.lists(ascii_labels(50, 63), min_size=4, max_size=6),  # over 255 bytes in all
)
qtypes = st.one_of(st.sampled_from([1, 2, 5, 6, 12, 15, 16, 28, 33, 41, 251, 252, 255, 65, 0x4141]),
                   st.integers(0, 0xFFFF))
qclasses = st.one_of(st.sampled_from([1, 3, 4, 254, 255]), st.integers(0, 0xFFFF))
edns_options = st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40), st.booleans()), max_size=3)


def encode_name(parts: list[bytes]) -> bytes:
    """Labels as the wire has them, whatever their length (a length byte is taken modulo 256)."""
    return b"".join(bytes((len(label) & 0xFF,)) + label for label in parts) + b"\x00"


def encode_opt(udp_len: int, ext_rcode: int, version: int, flags: int, options: list[tuple[int, bytes, bool]],
               lie: int) -> bytes:
    rdata = b"".join(struct.pack("!HH", code, len(data) + (1 if wrong else 0)) + data
                     for code, data, wrong in options)
    return b"\x00" + struct.pack("!HHBBHH", 41, udp_len, ext_rcode, version, flags, (len(rdata) + lie) & 0xFFFF) + rdata


@st.composite
def near_valid_queries(draw: st.DrawFn) -> bytes:
    qid = draw(st.integers(0, 0xFFFF))
    flags = draw(st.one_of(st.sampled_from([0x0000, 0x0100, 0x0100, 0x0120, 0x0110, 0x2800, 0x8180]),
                           st.integers(0, 0xFFFF)))
    questions = [encode_name(draw(names)) + struct.pack("!HH", draw(qtypes), draw(qclasses))
                 for _ in range(draw(st.integers(0, 2)))]
    opt = b""
    if draw(st.booleans()):
        opt = encode_opt(draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 255)),
                         draw(st.sampled_from([0, 0, 1, 255])), draw(st.sampled_from([0, 0x8000, 0xFFFF])),
                         draw(edns_options), draw(st.sampled_from([0, 0, 1, -1])))
    counts = [len(questions), 0, 0, 1 if opt else 0]
    if draw(st.booleans()):  # counts that lie
        counts = [draw(st.integers(0, 3)) if draw(st.booleans()) else c for c in counts]
    tail = draw(st.sampled_from([b"", b"", b"\x00", b"\xc0\x0c", b"\xff" * 7]))
    return struct.pack("!HHHHHH", qid, flags, *counts) + b"".join(questions) + opt + tail


def encode_rr(owner: list[bytes], rtype: int, rclass: int, ttl: int, rdata: bytes, lie: int) -> bytes:
    return encode_name(owner) + struct.pack("!HHIH", rtype, rclass, ttl, (len(rdata) + lie) & 0xFFFF) + rdata


soa_names = st.one_of(st.just([b"gateway", b"sidus", b"zone"]), st.just([b"hostmaster", b"sidus", b"zone"]), names)
soa_times = st.sampled_from([bytes(16)] * 3 + [b"\xff" * 16, bytes(15), bytes(17)])
soa_rdata = st.one_of(
    st.builds(lambda mname, rname, serial, times: encode_name(mname) + encode_name(rname) + struct.pack("!I", serial)
              + times, soa_names, soa_names, st.sampled_from([0, 5, 6, 6, 6, 7, 8, 0x7FFFFFFF, 0x80000006, 0xFFFFFFFF]),
              soa_times),
    st.binary(max_size=40),
)
zone_apexes = st.sampled_from([[b"sidus", b"zone"], [b"17", b"20", b"10", b"in-addr", b"arpa"], [b"SIDUS", b"zone"],
                               [b"master", b"sidus", b"zone"]])


@st.composite
def ixfr_queries(draw: st.DrawFn) -> bytes:
    """IXFR for one of our zones (or not), with 0-2 authority records: mostly a SOA of the zone as
    a secondary sends it, else of another name, another type, truncated rdata, lengths that lie."""
    qid = draw(st.integers(0, 0xFFFF))
    apex = draw(zone_apexes)
    question = encode_name(apex) + struct.pack("!HH", draw(st.sampled_from([251, 251, 251, 252, 1])),
                                                draw(st.sampled_from([1, 1, 1, 3, 255])))
    auth = [encode_rr(draw(st.sampled_from([apex] * 3 + [[b"www", *apex], [b"example", b"org"]])),
                      draw(st.sampled_from([6, 6, 6, 2, 251])), draw(st.sampled_from([1, 1, 1, 255, 3])),
                      draw(st.integers(0, 2**32 - 1)), draw(soa_rdata), draw(st.sampled_from([0, 0, 0, 1, -1])))
            for _ in range(draw(st.sampled_from([1, 1, 1, 0, 2])))]
    opt = encode_opt(1232, 0, 0, 0, [], 0) if draw(st.booleans()) else b""
    counts = [1, 0, len(auth), 1 if opt else 0]
    if draw(st.integers(0, 3)) == 0:
        counts = [draw(st.integers(0, 3)) if draw(st.booleans()) else c for c in counts]
    return struct.pack("!HHHHHH", qid, 0, *counts) + question + b"".join(auth) + opt


# ----------------------------------------------------------------------------- properties


@FUZZ
@given(st.binary(max_size=600), st.sampled_from(CLIENTS))
def test_arbitrary_bytes(data: bytes, client: str) -> None:
    exercise(data, client)


@FUZZ
@given(st.binary(min_size=12, max_size=12), st.binary(max_size=300), st.sampled_from(CLIENTS))
def test_arbitrary_bytes_behind_a_query_header(head: bytes, body: bytes, client: str) -> None:
    exercise(bytes((head[0], head[1], head[2] & 0x7F)) + head[3:] + body, client)


LONG_LABEL = struct.pack("!6H", 0xBEEF, 0x0100, 1, 0, 0, 0) + encode_name([b"a" * 64, b"example", b"org"]) + b"\0\1\0\1"
LONG_NAME = struct.pack("!6H", 0xCAFE, 0x0100, 1, 0, 0, 0) + encode_name([b"b" * 63] * 5) + b"\0\1\0\1"


@FUZZ
@given(near_valid_queries(), st.sampled_from(CLIENTS))
@example(LONG_LABEL, CLIENTS[0]).via("issue 9: forwarded, then SERVFAIL re-encoded the name")
@example(LONG_LABEL, CLIENTS[2]).via("issue 9: REFUSED re-encoded the name")
@example(LONG_NAME, CLIENTS[2]).via("issue 9")
def test_near_valid_queries(data: bytes, client: str) -> None:
    exercise(data, client)


@FUZZ
@given(st.sampled_from([query("gateway.sidus.zone"), query("master.sidus.zone", edns=1232, do=True),
                        query("17.20.10.in-addr.arpa", "SOA"), query("www.example.org", edns=512),
                        query("sidus.zone", "AXFR"), query("sidus.zone", "IXFR")]),
       st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(0, 200), st.sampled_from(CLIENTS))
def test_mutated_valid_queries(seed: bytes, flips: list[tuple[int, int]], cut: int, client: str) -> None:
    data = bytearray(seed)
    for where, value in flips:
        data[where % len(data)] = value
    exercise(bytes(data[: len(data) - cut % 8]), client)


@FUZZ
@given(st.binary(max_size=200), st.binary(min_size=0, max_size=40))
def test_relay_of_arbitrary_upstream_replies(reply: bytes, question: bytes) -> None:
    q = query("www.example.org", qid=0x5151)
    out = DnsServer.relay(q, q[12:], reply[:2], reply)
    assert out is None or out[:2] == q[:2]


@FUZZ
@given(ixfr_queries(), st.sampled_from([CLIENTS[1], CLIENTS[1], CLIENTS[0], CLIENTS[2]]))
def test_ixfr_queries(data: bytes, client: str) -> None:
    exercise(data, client)


SECONDARY = ("10.20.17.252", 53)


@cache
def in_flight() -> tuple[Notifier, bytes]:
    """A notifier with one NOTIFY in flight (ID 0x5151) to SECONDARY, and that secondary's true answer."""
    notifier = Notifier([SECONDARY], ids=lambda: 0x5151)
    notifier.changed([core().zone.soa("sidus.zone")], now=0.0)
    (sent,), _ = notifier.poll(0.0)
    answer = DNSRecord.parse(sent.data).reply()
    answer.rr = []
    return notifier, bytes(answer.pack())


def check_received(data: bytes, source: tuple[str, int]) -> None:
    notifier, _ = in_flight()
    outcome = notifier.received(data, source)
    if outcome is None:
        return
    assert data[:2] == b"\x51\x51" and source == SECONDARY and data[2] & 0x80
    assert outcome.apex == "sidus.zone" and outcome.result in ("answered", "error")
    in_flight.cache_clear()  # that NOTIFY is over: the next example gets a fresh one


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([SECONDARY, ("10.20.17.252", 5353), ("192.0.2.9", 53)]))
def test_notify_answers_arbitrary_bytes(data: bytes, source: tuple[str, int]) -> None:
    check_received(data, source)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=6), st.integers(0, 40),
       st.sampled_from([SECONDARY, ("10.20.17.252", 5353)]), st.sampled_from([RCODE.NOERROR, RCODE.REFUSED, 11]))
@example([(0, 0x51)], 0, SECONDARY, RCODE.NOERROR).via("the true answer")
def test_notify_answers_mutated(flips: list[tuple[int, int]], cut: int, source: tuple[str, int], rcode: int) -> None:
    data = bytearray(in_flight()[1])
    data[3] = data[3] & 0xF0 | rcode
    for where, value in flips:
        data[where % len(data)] = value
    check_received(bytes(data[: len(data) - cut % 16]), source)
