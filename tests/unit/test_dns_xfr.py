"""IXFR out (RFC 1995), bytes in and bytes out: the journal of zone swaps, incremental answers that
turn a secondary's copy into ours exactly, the whole zone when the journal does not reach back,
the SOA alone when the client is current, UDP, and malformed IXFR queries."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import IPv4Network

import pytest
from dnslib import NS, QTYPE, RCODE, RR, SOA, A, DNSHeader, DNSQuestion, DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidus_appliance.config import Config
from sidus_appliance.dhcp.leases import Lease
from sidus_appliance.dns.server import DnsServer, Policy
from sidus_appliance.dns.xfr import Journal, content_changes, serial_newer
from sidus_appliance.dns.zone import Zone, ZoneBuilder

from .test_dns_helpers import config, lease

SECONDARY, OTHER = "10.20.17.252", "10.20.17.50"
FORWARD, REVERSE = "sidus.zone", "17.20.10.in-addr.arpa"
POLICY = Policy(False, (IPv4Network("10.20.17.0/25"),), (IPv4Network("10.20.17.252/32"),))
Key = tuple[str, str, str]  # (owner, type, rdata): what an IXFR deletion matches
Rec = tuple[str, str, int, str]


def ixfr_query(apex: str, serial: int | None, qid: int = 0x4242, *, owner: str | None = None,
               rtype: int = QTYPE.SOA, qtype: int = QTYPE.IXFR, extra: Sequence[RR] = ()) -> bytes:
    request = DNSRecord(DNSHeader(id=qid), q=DNSQuestion(apex + ".", qtype))
    if serial is not None:
        rdata = SOA("gateway.sidus.zone.", "hostmaster.sidus.zone.", (serial, 300, 60, 604800, 60)) \
            if rtype == QTYPE.SOA else NS("gateway.sidus.zone.")
        request.add_auth(RR((owner or apex) + ".", rtype, rdata=rdata))
    for rr in extra:
        request.add_auth(rr)
    return bytes(request.pack())


def records(messages: object, qid: int = 0x4242) -> list[Rec]:
    """Every answer record of a TCP reply, checking each message is a NOERROR answer with our ID."""
    assert isinstance(messages, list), messages
    out = []
    for message in messages:
        parsed = DNSRecord.parse(message)
        assert parsed.header.id == qid and parsed.header.qr and parsed.header.aa
        assert parsed.header.rcode == RCODE.NOERROR
        out += [(str(rr.rname), QTYPE[rr.rtype], rr.ttl, str(rr.rdata)) for rr in parsed.rr]
    return out


def axfr(core: DnsServer, apex: str) -> list[Rec]:
    return records(core.handle_tcp(ixfr_query(apex, None, qtype=QTYPE.AXFR), SECONDARY))


def apply_ixfr(holding: Iterable[Rec], answer: list[Rec]) -> set[Rec]:
    """A strict secondary: the copy it holds (AXFR form) changed by an incremental answer. Like
    BIND, a deletion that finds nothing or an addition already there fails the transfer."""
    held = {(o, t, d): ttl for o, t, ttl, d in holding}
    final = answer[0]
    assert final[1] == "SOA" and answer[-1] == final
    current_soa = next((o, t, d) for (o, t, d) in held if t == "SOA")
    i = 1
    while i < len(answer) - 1:  # difference sequences: SOA old, deletions, SOA new, additions
        old_soa, i = answer[i], i + 1
        assert old_soa[1] == "SOA" and (old_soa[0], "SOA", old_soa[3]) == current_soa, "IXFR out of sync"
        del held[current_soa]
        while answer[i][1] != "SOA":
            owner, rtype, _, rdata = answer[i]
            assert (owner, rtype, rdata) in held, f"not exact: nothing to delete for {answer[i]}"
            del held[(owner, rtype, rdata)]
            i += 1
        new_soa, i = answer[i], i + 1
        current_soa = (new_soa[0], "SOA", new_soa[3])
        held[current_soa] = new_soa[2]
        while answer[i][1] != "SOA":
            owner, rtype, ttl, rdata = answer[i]
            assert (owner, rtype, rdata) not in held, f"not exact: {answer[i]} is there already"
            held[(owner, rtype, rdata)] = ttl
            i += 1
    assert current_soa == (final[0], "SOA", final[3])
    return {(o, t, ttl, d) for (o, t, d), ttl in held.items()}


def as_set(axfr_records: list[Rec]) -> set[Rec]:
    assert axfr_records[0] == axfr_records[-1]
    return set(axfr_records[:-1])


class Versions:
    """A core fed successive zones (one builder: each swap shares the config part)."""

    def __init__(self, cfg: Config | None = None, serial: int = 100) -> None:
        self.builder = ZoneBuilder()
        self.config = cfg or config()
        self.serial = serial
        self.core = DnsServer(self.builder.build(self.config, (), serial), POLICY, warm=False)
        self.copies = {serial: {apex: axfr(self.core, apex) for apex in (FORWARD, REVERSE)}}

    def swap(self, leases: Iterable[Lease], cfg: Config | None = None, serial: int | None = None) -> frozenset[str]:
        self.config = cfg or self.config
        self.serial = self.serial + 1 if serial is None else serial
        changed = self.core.set_zone(self.builder.build(self.config, list(leases), self.serial), warm=False)
        self.copies[self.serial] = {apex: axfr(self.core, apex) for apex in (FORWARD, REVERSE)}
        return changed

    def ixfr(self, apex: str, serial: int | None) -> list[Rec]:
        return records(self.core.handle_tcp(ixfr_query(apex, serial), SECONDARY))


def test_a_new_lease_is_one_small_incremental_answer_per_zone() -> None:
    v = Versions()
    assert v.swap([lease("10.20.17.42", "dhcp-42", "labpc7")]) == {FORWARD, REVERSE}
    soa = lambda serial: ("gateway.sidus.zone.", "hostmaster.sidus.zone.", str(serial))  # noqa: E731
    forward = v.ixfr(FORWARD, 100)
    assert [(r[0], r[1]) for r in forward] == [("sidus.zone.", "SOA")] * 3 + [("labpc7.sidus.zone.", "A"),
                                                                             ("sidus.zone.", "SOA")]
    assert [tuple(r[3].split()[:3]) for r in forward if r[1] == "SOA"] == [soa(101), soa(100), soa(101), soa(101)]
    assert forward[3] == ("labpc7.sidus.zone.", "A", 60, "10.20.17.42")
    reverse = v.ixfr(REVERSE, 100)
    assert [(r[0], r[1], r[3]) for r in reverse if r[1] != "SOA"] == [
        ("42.17.20.10.in-addr.arpa.", "PTR", "dhcp-42.sidus.zone."),  # deleted: the pool name's PTR
        ("42.17.20.10.in-addr.arpa.", "PTR", "labpc7.sidus.zone."),  # added: the client's name
    ]
    assert reverse[1][3].split()[2] == "100" and reverse[3][3].split()[2] == "101"
    for apex in (FORWARD, REVERSE):
        assert apply_ixfr(v.copies[100][apex], v.ixfr(apex, 100)) == as_set(v.copies[101][apex])
    assert v.core.stats["ixfr_incremental"] == 4


def test_many_swaps_condense_and_any_past_serial_catches_up_exactly() -> None:
    v = Versions()
    steps = [
        [lease("10.20.17.42", "dhcp-42", "labpc7")],
        [lease("10.20.17.42", "dhcp-42", "labpc7"), lease("10.20.17.43", "dhcp-43", "other")],
        [lease("10.20.17.43", "dhcp-43", "other")],  # labpc7 gone: its A and PTR, back to dhcp-42
        [lease("10.20.17.43", "dhcp-43", "renamed"), lease("10.20.17.44", "dhcp-44")],
        [lease("10.20.17.43", "dhcp-43", "renamed"), lease("10.20.17.44", "dhcp-44"),
         lease("10.20.17.42", "dhcp-42", "labpc7")],  # back again: condensed away from some starts
    ]
    for leases in steps:
        v.swap(leases)
    for serial in range(100, 105):
        for apex in (FORWARD, REVERSE):
            answer = v.ixfr(apex, serial)
            assert answer[1][1] == "SOA", "incremental"
            assert apply_ixfr(v.copies[serial][apex], answer) == as_set(v.copies[105][apex])
    # From 101 (labpc7 already there) to 105 (labpc7 there again): labpc7 never shows.
    assert not [r for r in v.ixfr(FORWARD, 101) if r[0].startswith("labpc7")]


def test_a_config_change_is_incremental_too_and_only_its_zone_changed() -> None:
    v = Versions()
    v.swap([lease("10.20.17.42", "dhcp-42", "labpc7")])
    newer = config(dns={"records": [{"name": "gateway", "type": "A", "value": "10.20.17.254"},
                                    {"name": "filer", "type": "CNAME", "value": "gateway"},
                                    {"name": "wiki", "type": "TXT", "value": "hello"}]})
    assert v.swap([lease("10.20.17.42", "dhcp-42", "labpc7")], cfg=newer) == {FORWARD}
    answer = v.ixfr(FORWARD, 100)
    assert ("wiki.sidus.zone.", "TXT", 3600, '"hello"') in answer
    assert apply_ixfr(v.copies[100][FORWARD], answer) == as_set(v.copies[102][FORWARD])
    assert apply_ixfr(v.copies[101][REVERSE], v.ixfr(REVERSE, 101)) == as_set(v.copies[102][REVERSE])


def test_current_or_newer_client_gets_the_soa_alone_in_one_message() -> None:
    v = Versions()
    v.swap([lease("10.20.17.42", "dhcp-42", "labpc7")])
    for serial in (101, 102, 101 + 2**31 - 1):  # the same, and newer in serial arithmetic
        messages = v.core.handle_tcp(ixfr_query(FORWARD, serial), SECONDARY)
        assert isinstance(messages, list) and len(messages) == 1
        assert [(r[1], r[3].split()[2]) for r in records(messages)] == [("SOA", "101")]
    assert v.core.stats["ixfr_current"] == 3


def test_a_serial_the_journal_does_not_reach_gets_the_whole_zone_in_axfr_form() -> None:
    v = Versions()
    v.swap([lease("10.20.17.42", "dhcp-42", "labpc7")])
    for serial in (99, 7, 102 + 2**31):  # before the journal, unknown, older by wrapping
        answer = v.ixfr(FORWARD, serial)
        assert answer == v.copies[101][FORWARD]  # SOA, every record, SOA: a secondary reloads it all
    assert records(v.core.handle_tcp(ixfr_query(FORWARD, None), SECONDARY)) == v.copies[101][FORWARD]
    assert v.core.stats["ixfr_full"] == 4


def test_the_journal_forgets_its_oldest_swaps_and_restarts_on_a_serial_that_does_not_grow() -> None:
    v = Versions()
    v.core.journal = Journal(max_deltas=2)
    for octet in (42, 43, 44):
        v.swap([lease(f"10.20.17.{octet}", f"dhcp-{octet}", f"pc{octet}")])
    assert len(v.core.journal) == 2
    assert v.ixfr(FORWARD, 100) == v.copies[103][FORWARD]  # forgotten: the whole zone
    assert v.ixfr(FORWARD, 101)[1][1] == "SOA"  # still incremental
    assert v.swap([], serial=103) == {FORWARD, REVERSE}  # same serial, new content: no delta can say it
    assert len(v.core.journal) == 0 and v.ixfr(FORWARD, 102)[1][1] != "SOA"


def test_a_difference_bigger_than_the_zones_is_sent_as_the_zone() -> None:
    v = Versions(config(dhcp={"pool": {"start": "10.20.17.10", "end": "10.20.17.12"}}))
    v.swap([lease("10.20.17.10", "dhcp-10", "pc10")])
    assert v.ixfr(FORWARD, 100)[1][1] == "SOA"  # one new name: incremental
    v.swap([], cfg=config(dhcp={"pool": {"start": "10.20.17.20", "end": "10.20.17.29"}}))
    # 102 vs 100: 3 pool names and PTRs gone, 10 new: 26 changes for a zone of 25 records.
    assert len(v.core.zone.content) == 25
    for apex in (FORWARD, REVERSE):
        assert v.ixfr(apex, 100) == v.copies[102][apex]
        assert v.ixfr(apex, 101) == v.copies[102][apex]  # 28 changes


def test_a_swap_bigger_than_the_journal_empties_it() -> None:
    v = Versions()
    v.core.journal = Journal(max_records=5)
    v.swap([lease("10.20.17.42", "dhcp-42", "labpc7")])
    assert len(v.core.journal) == 1
    v.swap([lease(f"10.20.17.{o}", f"dhcp-{o}", f"new{o}") for o in range(200, 204)])  # 12 changes
    assert len(v.core.journal) == 0 and v.ixfr(FORWARD, 101) == v.copies[102][FORWARD]


def test_ixfr_over_udp_is_the_soa_alone_with_tc_unless_current() -> None:
    v = Versions()
    v.swap([lease("10.20.17.42", "dhcp-42", "labpc7")])
    for serial, tc in ((101, 0), (100, 1), (None, 1)):
        reply = DNSRecord.parse(v.core.handle_udp(ixfr_query(FORWARD, serial, qid=9), SECONDARY))
        assert reply.header.id == 9 and reply.header.tc == tc and reply.header.rcode == RCODE.NOERROR
        assert [(QTYPE[rr.rtype], rr.rdata.times[0]) for rr in reply.rr] == [("SOA", 101)]


@pytest.mark.parametrize(
    "query",
    [
        ixfr_query(FORWARD, 100, owner=REVERSE),  # the SOA of another zone
        ixfr_query(FORWARD, 100, owner="www.sidus.zone"),
        ixfr_query(FORWARD, 100, rtype=QTYPE.NS),  # not a SOA at all
        ixfr_query(FORWARD, 100, extra=[RR("sidus.zone.", QTYPE.A, rdata=A("10.20.17.1"))]),  # two records
        ixfr_query(FORWARD, 100, qtype=QTYPE.AXFR),  # authority records are for IXFR alone
        ixfr_query(FORWARD, 100, qtype=QTYPE.A),
    ],
)
def test_malformed_ixfr_queries_get_formerr_with_their_id(query: bytes) -> None:
    core = Versions().core
    for reply in (core.handle_udp(query, SECONDARY), *core.handle_tcp(query, SECONDARY)):  # type: ignore[misc]
        parsed = DNSRecord.parse(reply)
        assert parsed.header.id == 0x4242 and parsed.header.rcode == RCODE.FORMERR and not parsed.rr


def test_ixfr_refused_outside_transfer_allowed_and_below_the_apex() -> None:
    core = Versions().core
    for query, client in ((ixfr_query(FORWARD, 100), OTHER), (ixfr_query("master.sidus.zone", 100), SECONDARY)):
        (reply,) = core.handle_tcp(query, client)  # type: ignore[misc]
        assert DNSRecord.parse(reply).header.rcode == RCODE.REFUSED
        assert DNSRecord.parse(core.handle_udp(query, client)).header.rcode == RCODE.REFUSED  # type: ignore[arg-type]


def test_serial_arithmetic_wraps() -> None:
    assert serial_newer(101, 100) and not serial_newer(100, 101) and not serial_newer(5, 5)
    assert serial_newer(0, 0xFFFFFFFF) and serial_newer(5, 0xFFFFFFF0)
    assert not serial_newer(0x80000000 + 5, 5) and not serial_newer(5, 0x80000000 + 5)  # undefined: not newer


def test_set_zone_reports_changed_zones_only() -> None:
    v = Versions()
    assert v.swap([]) == frozenset()  # a serial bump with nothing new (a reload): no zone changed
    zone: Zone = v.core.zone
    assert v.core.set_zone(zone, warm=False) == frozenset()


SMALL_POOL = config(dhcp={"pool": {"start": "10.20.17.10", "end": "10.20.17.17"}})
# A lease: (last octet, client name or None, bound?). Names repeat on purpose: contested names.
lease_sets = st.lists(st.tuples(st.integers(10, 17), st.sampled_from([None, "pc1", "pc2", "master", "dhcp-12", "x"]),
                                st.booleans()), max_size=8)


def leases_of(spec: list[tuple[int, str | None, bool]]) -> list[Lease]:
    chosen = {octet: (client, bound) for octet, client, bound in spec}  # one lease per address
    return [lease(f"10.20.17.{octet}", f"dhcp-{octet}", client, "bound" if bound else "offered")
            for octet, (client, bound) in chosen.items()]


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(lease_sets, min_size=1, max_size=6))
def test_any_history_ixfr_from_any_past_serial_yields_the_current_zone(history: list) -> None:
    v = Versions(SMALL_POOL)
    contents = [v.core.zone.content]
    for spec in history:
        v.swap(leases_of(spec))
        old, new = contents[-1], v.core.zone.content
        assert content_changes(old, new) == (set(old) - set(new), set(new) - set(old))  # fast path = sets
        contents.append(new)
    for serial in range(100, v.serial + 1):
        for apex in (FORWARD, REVERSE):
            answer = v.ixfr(apex, serial)
            if serial == v.serial:
                assert [r[1] for r in answer] == ["SOA"]
            elif answer[1][1] == "SOA":
                assert apply_ixfr(v.copies[serial][apex], answer) == as_set(v.copies[v.serial][apex])
            else:
                assert answer == v.copies[v.serial][apex]
