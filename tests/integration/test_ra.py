"""RA quench on the wire: a client namespace solicits (scapy), the appliance answers a bare RA."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sidus_appliance.lab import ClientPort, Lab

from ..conftest import StartAppliance

DHCP_ONLY = {"dns": {"enabled": False}, "tftp": {"enabled": False}}

# Runs inside the client namespace: send an RS now and then (the bridge's link-local address
# may still be in DAD when the appliance starts), print the first RA heard as JSON.
SOLICIT = r"""
import json, sys, time
from scapy.all import AsyncSniffer, Ether, IPv6, sendp, conf
from scapy.layers.inet6 import ICMPv6ND_RA, ICMPv6ND_RS, ICMPv6NDOptSrcLLAddr
from scapy.utils6 import in6_mactoifaceid
conf.verb = 0
iface, mac, send_rs, wait = sys.argv[1], sys.argv[2], sys.argv[3] == "1", float(sys.argv[4])
src = "fe80::" + in6_mactoifaceid(mac)
heard = []
sniffer = AsyncSniffer(iface=iface, lfilter=lambda p: ICMPv6ND_RA in p, prn=heard.append, store=False)
sniffer.start()
time.sleep(0.5)
rs = Ether(src=mac, dst="33:33:00:00:00:02") / IPv6(src=src, dst="ff02::2", hlim=255) / ICMPv6ND_RS()
rs = rs / ICMPv6NDOptSrcLLAddr(lladdr=mac)
deadline = time.monotonic() + wait
while time.monotonic() < deadline and not heard:
    if send_rs:
        sendp(rs, iface=iface)
    for _ in range(10):  # poll 1 s, sending one RS per second
        if heard:
            break
        time.sleep(0.1)
sniffer.stop()
if not heard:
    print(json.dumps(None))
    sys.exit(0)
p = heard[0]
ra = p[ICMPv6ND_RA]
raw = bytes(ra)
rebuilt = ICMPv6ND_RA(raw[:2] + b"\0\0" + raw[4:])
del rebuilt.cksum  # scapy recomputes it over the pseudo-header of the packet we heard
expected = bytes(IPv6(src=p[IPv6].src, dst=p[IPv6].dst) / rebuilt)[42:44]
print(json.dumps({
    "src": p[IPv6].src, "dst": p[IPv6].dst, "hlim": p[IPv6].hlim,
    "chlim": ra.chlim, "M": ra.M, "O": ra.O, "routerlifetime": ra.routerlifetime,
    "reachabletime": ra.reachabletime, "retranstimer": ra.retranstimer,
    "options": len(raw) - 16, "cksum_ok": raw[2:4] == expected,
}))
"""


def solicit(client: ClientPort, send_rs: bool = True, wait: float = 15.0) -> dict[str, object] | None:
    result = client.run(
        [sys.executable, "-c", SOLICIT, client.interface, client.mac, "1" if send_rs else "0", str(wait)],
        timeout=wait + 30,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_router_solicitation_gets_a_bare_ra(start_appliance: StartAppliance, client: ClientPort) -> None:
    appliance = start_appliance(DHCP_ONLY)
    ra = solicit(client)
    assert ra is not None, appliance.log(since_start=True)
    assert ra["hlim"] == 255  # RFC 4861 6.1.2: receivers drop RAs with any other hop limit
    assert str(ra["src"]).startswith("fe80:")  # from the interface's link-local address
    assert ra["dst"] == "ff02::1"
    assert ra["routerlifetime"] == 0  # not a default router
    assert ra["M"] == 0 and ra["O"] == 0 and ra["chlim"] == 0
    assert ra["reachabletime"] == 0 and ra["retranstimer"] == 0
    assert ra["options"] == 0  # no prefix information, no options at all
    assert ra["cksum_ok"]  # the kernel filled in the ICMPv6 checksum
    appliance.wait_log("ra: sent bare RA to ff02::1 on eth1")
    # The client's kernel heard it too, and took no default route from it.
    routes = client.run(["ip", "-6", "route", "show", "default"], check=True).stdout
    assert routes.strip() == ""


def test_quench_off_sends_nothing(start_appliance: StartAppliance, client: ClientPort) -> None:
    appliance = start_appliance({**DHCP_ONLY, "dhcp": {"ipv6_ra_quench": False}})
    assert solicit(client, wait=5.0) is None
    assert "ra:" not in appliance.log(since_start=True)


@pytest.mark.parametrize(
    ("setting", "message"),
    [("disable_ipv6", "ra: IPv6 is disabled on eth1"), ("forwarding", "ra: eth1 forwards IPv6 (a router here)")],
)
def test_no_ipv6_or_a_router_here_is_logged_and_serving_goes_on(
    lab: Lab, start_appliance: StartAppliance, client: ClientPort, setting: str, message: str
) -> None:
    sysctl = ["sysctl", "-q", "-w", f"net.ipv6.conf.{lab.interface}.{setting}=1"]
    subprocess.run(lab.server_argv(sysctl), check=True, timeout=10)
    appliance = start_appliance(DHCP_ONLY)  # start() waits for "ready: serving"
    assert message in appliance.log(since_start=True)
    ra = solicit(client, wait=4.0)
    # Linux sends no RAs of its own (that is radvd's job), so silence means we sent none.
    assert ra is None, ra
