"""DNS of the real `serve` in the lab namespace, asked by real `dig` and `host` from clients.

One appliance for the module (DNS checks do not disturb each other), with:
- client `inside` at 10.20.17.5: recursion allowed (10.20.17.0/25), AXFR not allowed;
- client `secondary` at 10.20.17.252: AXFR allowed, outside the recursion subnet;
- a fake upstream resolver in the server namespace (127.0.0.1:5300) answering every A
  question with 192.0.2.1, so forwarding is checked without touching any real network.
Static client addresses are outside the DHCP pool (10.20.17.10-249), which stays free for
the DHCP client of the lease test.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidus_appliance.lab import ApplianceProcess, ClientPort, Lab, run_dhclient, run_udhcpc, write_lab_config

from ..conftest import require, serving

pytestmark = pytest.mark.integration

SERVER = "10.20.17.254"
UPSTREAM_PORT = 5300
BIG_TXT = [{"name": "big", "type": "TXT", "value": f"{i}" * 250} for i in range(8)]  # ~2 KB: TC over UDP
OVERRIDES = {
    "tftp": {"enabled": False},
    "dns": {
        "upstream": [f"127.0.0.1:{UPSTREAM_PORT}"],
        "recursion_allowed": ["10.20.17.0/25"],
        "transfer_allowed": ["10.20.17.252/32"],
        "forward_timeout": 1.0,
        "records": [
            {"name": "gateway", "type": "A", "value": SERVER},
            {"name": "filer", "type": "CNAME", "value": "gateway"},
            *BIG_TXT,
        ],
    },
}

FAKE_UPSTREAM = f"""
import socket
from dnslib import RR, A, DNSRecord
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", {UPSTREAM_PORT}))
print("upstream ready", flush=True)
while True:
    data, addr = sock.recvfrom(4096)
    request = DNSRecord.parse(data)
    reply = request.reply()
    reply.add_answer(RR(request.q.qname, rdata=A("192.0.2.1"), ttl=60))
    sock.sendto(reply.pack(), addr)
"""


@dataclass
class DnsLab:
    lab: Lab
    appliance: ApplianceProcess
    inside: ClientPort
    secondary: ClientPort
    workdir: Path


@pytest.fixture(scope="module")
def dns_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsLab]:
    require("the DNS lab (network namespaces)")
    workdir = tmp_path_factory.mktemp("dns")
    with Lab() as lab:
        inside = lab.add_client(address="10.20.17.5/24")
        secondary = lab.add_client(address="10.20.17.252/24")
        upstream = subprocess.Popen(lab.server_argv([sys.executable, "-c", FAKE_UPSTREAM]),
                                    stdout=subprocess.PIPE, text=True)
        try:
            assert upstream.stdout is not None and "ready" in upstream.stdout.readline()
            with serving(lab, write_lab_config(workdir, OVERRIDES), workdir / "serve.log") as appliance:
                yield DnsLab(lab, appliance, inside, secondary, workdir)
        finally:
            upstream.kill()
            upstream.wait()


def run(client: ClientPort, *command: str) -> str:
    result = client.run(list(command), timeout=30)
    return result.stdout + result.stderr


def dig(client: ClientPort, *args: str) -> str:
    return run(client, "dig", f"@{SERVER}", "+time=2", "+tries=1", *args)


def test_seed_host_checks_verbatim(dns_lab: DnsLab) -> None:
    out = run(dns_lab.inside, "host", "filer.sidus.zone", SERVER)
    assert "filer.sidus.zone is an alias for gateway.sidus.zone." in out
    assert "gateway.sidus.zone has address 10.20.17.254" in out
    out = run(dns_lab.inside, "host", "10.20.17.254", SERVER)
    assert "254.17.20.10.in-addr.arpa domain name pointer gateway.sidus.zone." in out


def test_seed_checks_on_the_appliance_itself_via_loopback(dns_lab: DnsLab) -> None:
    """The seed's own commands, run on the server: `host ... localhost` and `host ... 127.0.0.1`."""

    def on_server(*command: str) -> str:
        return subprocess.run(dns_lab.lab.server_argv(command), capture_output=True, text=True, timeout=30).stdout

    out = on_server("host", "filer.sidus.zone", "localhost")
    assert "filer.sidus.zone is an alias for gateway.sidus.zone." in out
    assert "gateway.sidus.zone has address 10.20.17.254" in out
    out = on_server("host", "10.20.17.254", "127.0.0.1")
    assert "254.17.20.10.in-addr.arpa domain name pointer gateway.sidus.zone." in out


def test_ptr_for_pool_address_and_master(dns_lab: DnsLab) -> None:
    assert dig(dns_lab.inside, "+short", "-x", "10.20.17.42").split() == ["dhcp-42.sidus.zone."]
    assert dig(dns_lab.inside, "+short", "-x", "10.20.17.253").split() == ["master.sidus.zone."]
    assert dig(dns_lab.inside, "+short", "master.sidus.zone").split() == ["10.20.17.253"]


def test_nxdomain_carries_soa(dns_lab: DnsLab) -> None:
    out = dig(dns_lab.inside, "nobody.sidus.zone")
    assert "status: NXDOMAIN" in out
    assert re.search(r"flags: qr aa", out)
    assert re.search(r"AUTHORITY SECTION:\nsidus\.zone\.\s+\d+\s+IN\s+SOA\s+gateway\.sidus\.zone\.", out)
    out = dig(dns_lab.inside, "-x", "10.20.17.3")  # in the reverse zone, no such host
    assert "status: NXDOMAIN" in out and "17.20.10.in-addr.arpa." in out


def test_nodata_for_existing_name_other_type(dns_lab: DnsLab) -> None:
    out = dig(dns_lab.inside, "master.sidus.zone", "AAAA")
    assert "status: NOERROR" in out and "ANSWER: 0" in out and "SOA" in out


def test_case_insensitive(dns_lab: DnsLab) -> None:
    out = dig(dns_lab.inside, "MaStEr.SIDUS.zone")
    assert re.search(r"MaStEr\.SIDUS\.zone\.\s+\d+\s+IN\s+A\s+10\.20\.17\.253", out)


def test_tcp_and_truncation_fallback(dns_lab: DnsLab) -> None:
    out = dig(dns_lab.inside, "+tcp", "gateway.sidus.zone")
    assert "10.20.17.254" in out and "(TCP)" in out
    udp_only = dig(dns_lab.inside, "+notcp", "+ignore", "+bufsize=1232", "big.sidus.zone", "TXT")
    assert re.search(r"flags: qr aa tc", udp_only) and "ANSWER: 0" in udp_only
    retried = dig(dns_lab.inside, "big.sidus.zone", "TXT")  # dig retries over TCP on TC
    assert "ANSWER: 8" in retried and "(TCP)" in retried


def test_edns_payload_is_echoed(dns_lab: DnsLab) -> None:
    out = dig(dns_lab.inside, "+bufsize=4096", "gateway.sidus.zone")
    assert "EDNS: version: 0" in out and "udp: 1232" in out
    out = dig(dns_lab.inside, "+noedns", "gateway.sidus.zone")
    assert "OPT PSEUDOSECTION" not in out and "10.20.17.254" in out


def test_axfr_allowed_from_one_address_refused_from_another(dns_lab: DnsLab) -> None:
    out = dig(dns_lab.secondary, "sidus.zone", "AXFR")
    soas = re.findall(r"^sidus\.zone\.\s+\d+\s+IN\s+SOA\s", out, flags=re.M)
    assert len(soas) == 2 and "dhcp-249.sidus.zone." in out and "filer.sidus.zone." in out
    reverse = dig(dns_lab.secondary, "17.20.10.in-addr.arpa", "AXFR")
    assert "253.17.20.10.in-addr.arpa." in reverse and "XFR size" in reverse
    refused = dig(dns_lab.inside, "sidus.zone", "AXFR")
    assert "Transfer failed" in refused and "XFR size" not in refused


def test_recursion_for_the_allowed_subnet_only(dns_lab: DnsLab) -> None:
    assert dig(dns_lab.inside, "+short", "www.example.org").split() == ["192.0.2.1"]
    assert dig(dns_lab.inside, "+short", "+tcp", "www.example.net").split() == ["192.0.2.1"]
    refused = dig(dns_lab.secondary, "www.example.org")
    assert "status: REFUSED" in refused and "192.0.2.1" not in refused


def test_dhcp_client_name_resolves_right_after_its_lease(dns_lab: DnsLab) -> None:
    client = dns_lab.lab.add_client()
    env = run_udhcpc(client, dns_lab.workdir / "udhcpc", hostname="labpc7")
    address = env["ip"]
    assert env["hostname"] == "labpc7"  # the ACK's option 12 says the name A and PTR give
    deadline = time.monotonic() + 1.0
    while True:
        forward = dig(dns_lab.inside, "+short", "labpc7.sidus.zone").split()
        if forward == [address] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert forward == [address], f"labpc7 not resolvable within 1 s of the ACK ({address})"
    assert dig(dns_lab.inside, "+short", "-x", address).split() == ["labpc7.sidus.zone."]
    octet = address.rsplit(".", 1)[1]
    assert dig(dns_lab.inside, "+short", f"dhcp-{octet}.sidus.zone").split() == [address]


def test_dhclient_is_told_the_name_dns_gives_it(dns_lab: DnsLab) -> None:
    """dhclient sends `Lab-PC8.example`; DNS publishes `lab-pc8`, and so does its ACK."""
    client = dns_lab.lab.add_client()
    env = run_dhclient(client, dns_lab.workdir / "dhclient", hostname="Lab-PC8.example")
    address, told = env["new_ip_address"], env["new_host_name"].strip("'\"")
    assert told == "lab-pc8"
    deadline = time.monotonic() + 1.0
    while dig(dns_lab.inside, "+short", f"{told}.sidus.zone").split() != [address] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dig(dns_lab.inside, "+short", f"{told}.sidus.zone").split() == [address]
    assert dig(dns_lab.inside, "+short", "-x", address).split() == [f"{told}.sidus.zone."]


def test_a_name_the_zone_holds_is_not_given_to_a_client(dns_lab: DnsLab) -> None:
    """A client calling itself `master` keeps its pool name, in its ACK as in DNS."""
    client = dns_lab.lab.add_client()
    env = run_udhcpc(client, dns_lab.workdir / "udhcpc-master", hostname="master")
    octet = env["ip"].rsplit(".", 1)[1]
    assert env["hostname"] == f"dhcp-{octet}"
    assert dig(dns_lab.inside, "+short", "-x", env["ip"]).split() == [f"dhcp-{octet}.sidus.zone."]
    assert dig(dns_lab.inside, "+short", "master.sidus.zone").split() == ["10.20.17.253"]


def test_sighup_reload_serves_new_records(dns_lab: DnsLab) -> None:
    serial_before = dig(dns_lab.inside, "+short", "sidus.zone", "SOA").split()[2]
    records = [*OVERRIDES["dns"]["records"], {"name": "reloaded", "type": "A", "value": "10.20.17.6"}]
    write_lab_config(dns_lab.workdir, {**OVERRIDES, "dns": {**OVERRIDES["dns"], "records": records}})
    dns_lab.appliance.signal(signal.SIGHUP)
    dns_lab.appliance.wait_log("zone rebuilt (reload)")
    assert dig(dns_lab.inside, "+short", "reloaded.sidus.zone").split() == ["10.20.17.6"]
    assert int(dig(dns_lab.inside, "+short", "sidus.zone", "SOA").split()[2]) > int(serial_before)
