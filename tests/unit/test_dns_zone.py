"""The lab zones built from config + leases: names, precedence, negative answers, AXFR content."""

from __future__ import annotations

import time

from dnslib import QTYPE

from sidus_appliance.dns.zone import ZoneBuilder, build_zone, dns_label, zone_content

from .test_dns_helpers import config, lease


def rdata(zone, name: str, qtype: str) -> list[str]:
    look = zone.lookup(name, getattr(QTYPE, qtype))
    return [str(rr.rdata) for rr in look.answer if rr.rtype == getattr(QTYPE, qtype)]


def test_seed_names_both_ways_without_duplicate_gateway_a() -> None:
    zone = build_zone(config())
    assert rdata(zone, "gateway.sidus.zone", "A") == ["10.20.17.254"]  # config has it too: one record
    assert rdata(zone, "254.17.20.10.in-addr.arpa", "PTR") == ["gateway.sidus.zone."]
    look = zone.lookup("filer.sidus.zone", QTYPE.A)
    assert [(QTYPE[rr.rtype], str(rr.rdata)) for rr in look.answer] == [
        ("CNAME", "gateway.sidus.zone."), ("A", "10.20.17.254")]
    assert rdata(zone, "master.sidus.zone", "A") == ["10.20.17.253"]
    assert rdata(zone, "253.17.20.10.in-addr.arpa", "PTR") == ["master.sidus.zone."]
    assert rdata(zone, "dhcp-42.sidus.zone", "A") == ["10.20.17.42"]
    assert rdata(zone, "42.17.20.10.in-addr.arpa", "PTR") == ["dhcp-42.sidus.zone."]
    assert zone.problems == ()


def test_soa_and_ns_at_both_apexes() -> None:
    zone = build_zone(config(), serial=77)
    for apex in ("sidus.zone", "17.20.10.in-addr.arpa"):
        assert rdata(zone, apex, "NS") == ["gateway.sidus.zone."]
        (soa,) = zone.lookup(apex, QTYPE.SOA).answer
        assert soa.rdata.times[0] == 77
        assert str(soa.rdata.mname) == "gateway.sidus.zone."


def test_negative_answers() -> None:
    zone = build_zone(config())
    nx = zone.lookup("nope.sidus.zone", QTYPE.A)
    assert nx.rcode == 3 and [QTYPE[rr.rtype] for rr in nx.authority] == ["SOA"]
    nodata = zone.lookup("gateway.sidus.zone", QTYPE.AAAA)
    assert nodata.rcode == 0 and not nodata.answer and QTYPE[nodata.authority[0].rtype] == "SOA"
    assert zone.lookup("7.17.20.10.in-addr.arpa", QTYPE.PTR).rcode == 3  # outside the pool, no host
    assert zone.lookup("example.org", QTYPE.A) is None  # not ours


def test_bound_lease_with_client_name_takes_ptr_and_pool_name_stays() -> None:
    zone = build_zone(config(), [lease("10.20.17.42", "dhcp-42", client="Alice's Laptop.local")])
    assert rdata(zone, "alice-s-laptop.sidus.zone", "A") == ["10.20.17.42"]
    assert rdata(zone, "42.17.20.10.in-addr.arpa", "PTR") == ["alice-s-laptop.sidus.zone."]
    assert rdata(zone, "dhcp-42.sidus.zone", "A") == ["10.20.17.42"]


def test_only_bound_leases_give_names() -> None:
    for state in ("offered", "declined"):
        zone = build_zone(config(), [lease("10.20.17.42", "dhcp-42", client="bob", state=state)])
        assert zone.lookup("bob.sidus.zone", QTYPE.A).rcode == 3


def test_client_name_cannot_steal_static_reserved_or_pool_names() -> None:
    for stolen in ("master", "gateway", "filer", "dhcp-50"):
        zone = build_zone(config(), [lease("10.20.17.42", "dhcp-42", client=stolen)])
        assert rdata(zone, "42.17.20.10.in-addr.arpa", "PTR") == ["dhcp-42.sidus.zone."], stolen
        assert "10.20.17.42" not in rdata(zone, f"{stolen}.sidus.zone", "A") + [
            str(rr.rdata) for rr in zone.lookup(f"{stolen}.sidus.zone", QTYPE.A).answer]


def test_contested_client_name_goes_to_the_later_lease() -> None:
    leases = [lease("10.20.17.42", "dhcp-42", client="pc"), lease("10.20.17.43", "dhcp-43", client="pc")]
    zone = build_zone(config(), leases)
    assert rdata(zone, "pc.sidus.zone", "A") == ["10.20.17.43"]
    assert rdata(zone, "42.17.20.10.in-addr.arpa", "PTR") == ["dhcp-42.sidus.zone."]


def test_reservation_keeps_its_ptr_and_client_name_is_an_alias() -> None:
    zone = build_zone(config(), [lease("10.20.17.253", "master", client="admin-box", mac="08:00:aa:bb:cc:dd")])
    assert rdata(zone, "253.17.20.10.in-addr.arpa", "PTR") == ["master.sidus.zone."]
    assert rdata(zone, "admin-box.sidus.zone", "A") == ["10.20.17.253"]


def test_release_and_rename_change_content() -> None:
    before = zone_content(config(), [lease("10.20.17.42", "dhcp-42", client="old")])[0]
    renamed = zone_content(config(), [lease("10.20.17.42", "dhcp-42", client="new")])[0]
    released = zone_content(config(), [])[0]
    assert before != renamed != released
    assert not any(rec[0] == "old.sidus.zone" for rec in renamed)
    assert zone_content(config(), [])[0] == released  # deterministic: no spurious serial bumps


def test_extra_records_mx_txt_srv_and_absolute_names() -> None:
    records = [
        {"name": "gateway", "type": "A", "value": "10.20.17.254"},
        {"name": "filer", "type": "CNAME", "value": "gateway"},
        {"name": "@", "type": "MX", "value": "10 gateway"},
        {"name": "info", "type": "TXT", "value": "lab " * 100},
        {"name": "_nfs._tcp", "type": "SRV", "value": "0 5 2049 filer"},
        {"name": "www.sidus.zone.", "type": "CNAME", "value": "gateway.sidus.zone."},
        {"name": "ldap", "type": "A", "value": "10.20.17.5", "ttl": 30},
    ]
    zone = build_zone(config(dns={"records": records}))
    assert rdata(zone, "sidus.zone", "MX") == ["10 gateway.sidus.zone."]
    assert zone.lookup("sidus.zone", QTYPE.MX).additional[0].rdata.__str__() == "10.20.17.254"
    (txt,) = zone.lookup("info.sidus.zone", QTYPE.TXT).answer
    assert b"".join(txt.rdata.data) == ("lab " * 100).encode()  # split in 255-byte strings
    assert rdata(zone, "_nfs._tcp.sidus.zone", "SRV") == ["0 5 2049 filer.sidus.zone."]
    assert zone.lookup("_tcp.sidus.zone", QTYPE.A).rcode == 0  # empty non-terminal: NODATA, not NXDOMAIN
    assert rdata(zone, "www.sidus.zone", "CNAME") == ["gateway.sidus.zone."]
    (ldap,) = zone.lookup("ldap.sidus.zone", QTYPE.A).answer
    assert ldap.ttl == 30
    assert rdata(zone, "5.17.20.10.in-addr.arpa", "PTR") == ["ldap.sidus.zone."]


def test_bad_records_are_reported_not_fatal() -> None:
    records = [
        {"name": "gateway", "type": "CNAME", "value": "elsewhere"},
        {"name": "x.example.org.", "type": "A", "value": "10.20.17.5"},
        {"name": "s", "type": "SRV", "value": "not a srv"},
        {"name": "@", "type": "CNAME", "value": "gateway"},  # the apex has SOA and NS
    ]
    zone = build_zone(config(dns={"records": records}))
    assert len(zone.problems) == 4
    assert rdata(zone, "gateway.sidus.zone", "A") == ["10.20.17.254"]


def test_transfer_is_soa_everything_soa() -> None:
    zone = build_zone(config())
    records = zone.transfer("sidus.zone")
    assert QTYPE[records[0].rtype] == "SOA" and QTYPE[records[-1].rtype] == "SOA"
    names = {str(rr.rname) for rr in records}
    assert {"gateway.sidus.zone.", "master.sidus.zone.", "filer.sidus.zone.", "dhcp-249.sidus.zone."} <= names
    assert all(str(rr.rname).endswith("sidus.zone.") for rr in records)
    reverse = zone.transfer("17.20.10.in-addr.arpa")
    assert len([rr for rr in reverse if rr.rtype == QTYPE.PTR]) == 2 + 240


def test_dns_label() -> None:
    assert dns_label("My-PC") == "my-pc"
    assert dns_label("host.example.com") == "host"
    assert dns_label("--weird__name--") == "weird-name"
    assert dns_label("x" * 100) == "x" * 63
    assert dns_label("") is None and dns_label(None) is None and dns_label("...") is None
    assert dns_label("été") == "t"


def test_big_pool_lease_change_is_cheap_and_correct() -> None:
    # A /16 pool (65k names, 130k records): the config's part is built once; each lease
    # change then costs in proportion to the leases, and RRs are built only when asked.
    big = config(address="10.20.0.254/16", subnet="10.20.0.0/16", hosts=[],
                 dhcp={"pool": {"start": "10.20.1.1", "end": "10.20.255.250"}})
    builder = ZoneBuilder()
    builder.build(big)  # builds and keeps the static part
    start = time.perf_counter()
    leases = [lease(f"10.20.{i}.7", f"dhcp-{i}", client=f"pc{i}") for i in range(1, 200)]
    content, _ = builder.content(big, leases)
    zone = builder.build(big, leases, serial=2)
    assert time.perf_counter() - start < 1.0
    pool = len(big.dhcp.pool.addresses())  # type: ignore[union-attr]
    assert len(content) == 2 * pool + 2 + 1 + 199  # gateway A+PTR, filer CNAME, one A per client name
    assert rdata(zone, "7.5.20.10.in-addr.arpa", "PTR") == ["pc5.sidus.zone."]
    assert rdata(zone, "8.5.20.10.in-addr.arpa", "PTR") == ["dhcp-8.sidus.zone."]
    assert rdata(zone, "pc5.sidus.zone", "A") == ["10.20.5.7"]
    assert builder.content(big, list(leases))[0] == content
    assert builder.content(big, leases[:-1])[0] != content


def test_builders_share_nothing() -> None:
    # Two DNS services in one process each own a builder: neither evicts nor hands out the other's state.
    one, two = ZoneBuilder(), ZoneBuilder()
    lab, other = config(), config(domain="other.zone")
    static = one.content(lab)[0].static
    two.content(other)
    assert one.content(lab)[0].static is static  # still the config's part `one` computed
    first, again, elsewhere = one.build(lab), one.build(lab, serial=2), two.build(lab)
    gateway = first.sets("gateway.sidus.zone")[QTYPE.A][0]
    assert again.sets("gateway.sidus.zone")[QTYPE.A][0] is gateway  # one builder's zones share RRs
    assert elsewhere.sets("gateway.sidus.zone")[QTYPE.A][0] is not gateway
    assert str(elsewhere.sets("gateway.sidus.zone")[QTYPE.A][0]) == str(gateway)
