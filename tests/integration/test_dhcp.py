"""The real `serve` in a namespace, real DHCP clients (busybox udhcpc, isc dhclient) in another."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from sidus_appliance.dhcp.leases import LeaseStore
from sidus_appliance.lab import ClientPort, Lab, run_dhclient, run_udhcpc, write_lab_config

from ..conftest import StartAppliance

MASTER_MAC = "08:00:aa:bb:cc:dd"
SUBNET = IPv4Network("10.20.17.0/24")
POOL = (IPv4Address("10.20.17.10"), IPv4Address("10.20.17.249"))
INFINITE = "4294967295"
# DNS and TFTP have their own suites; here the DHCP service alone keeps failures readable.
DHCP_ONLY = {"dns": {"enabled": False}, "tftp": {"enabled": False}}


def in_pool(address: str) -> bool:
    return POOL[0] <= IPv4Address(address) <= POOL[1]


def test_udhcpc_bios_pxe_client_gets_pool_address_and_boot_options(
    start_appliance: StartAppliance, client: ClientPort, tmp_path: Path
) -> None:
    appliance = start_appliance(DHCP_ONLY)
    env = run_udhcpc(client, tmp_path / "u", arch=0, vendor="PXEClient:Arch:00000:UNDI:002001")
    assert in_pool(env["ip"])
    octet = env["ip"].split(".")[3]
    assert env["hostname"] == f"dhcp-{octet}"
    assert env["boot_file"] == "pxelinux.0"
    assert env["siaddr"] == "10.20.17.254"
    assert env["serverid"] == "10.20.17.254"
    assert env["lease"] == INFINITE
    assert env["subnet"] == "255.255.255.0"
    assert env["router"] == "10.20.17.254"
    assert env["dns"].split() == ["10.20.17.254"]
    assert env["domain"] == "sidus.zone"
    log = appliance.wait_log(f"ACK {env['ip']}")
    assert f"REQUEST from {client.mac} (pxe, arch 0) -> ACK {env['ip']} boot pxelinux.0" in log


@pytest.mark.parametrize(
    ("arch", "boot_file"),
    [(6, "efi32/syslinux.efi"), (7, "efi64/syslinux.efi"), (9, "efi64/syslinux.efi"), (0x1234, "pxelinux.0")],
)
def test_dhclient_arch_dispatch(
    start_appliance: StartAppliance, client: ClientPort, tmp_path: Path, arch: int, boot_file: str
) -> None:
    appliance = start_appliance(DHCP_ONLY)
    env = run_dhclient(client, tmp_path / "d", arch=arch)
    assert in_pool(env["new_ip_address"])
    assert env["new_filename"].strip("'\"") == boot_file
    assert env["new_boot_file"].strip("'\"") == boot_file  # option 67 as well as the BOOTP field
    assert env["new_tftp_server"].strip("'\"") == "10.20.17.254"  # option 66
    assert env["new_dhcp_lease_time"] == INFINITE
    assert env["new_host_name"].strip("'\"") == f"dhcp-{env['new_ip_address'].split('.')[3]}"
    if arch == 0x1234:
        appliance.wait_log(f"unknown arch {arch}")


def test_master_reservation_with_both_clients(lab: Lab, start_appliance: StartAppliance, tmp_path: Path) -> None:
    start_appliance(DHCP_ONLY)
    master = lab.add_client(mac=MASTER_MAC)
    env = run_udhcpc(master, tmp_path / "u", arch=0)
    assert env["ip"] == "10.20.17.253"
    assert env["hostname"] == "master"
    env = run_dhclient(master, tmp_path / "d", arch=7)
    assert env["new_ip_address"] == "10.20.17.253"
    assert env["new_filename"].strip("'\"") == "efi64/syslinux.efi"


def test_plain_client_gets_address_but_no_boot_file(
    start_appliance: StartAppliance, client: ClientPort, tmp_path: Path
) -> None:
    """The booted system's own DHCP (initramfs ip=dhcp, dhclient): same address, no PXE options."""
    start_appliance(DHCP_ONLY)
    pxe = run_udhcpc(client, tmp_path / "pxe", arch=0)
    plain = run_udhcpc(client, tmp_path / "plain")
    assert plain["ip"] == pxe["ip"]
    assert "boot_file" not in plain
    assert plain["hostname"] == pxe["hostname"]
    assert plain["lease"] == INFINITE


def test_restart_keeps_every_address(lab: Lab, start_appliance: StartAppliance, tmp_path: Path) -> None:
    clients = [lab.add_client() for _ in range(3)]
    appliance = start_appliance(DHCP_ONLY)
    before = {c.mac: run_udhcpc(c, tmp_path / f"a{i}", arch=0)["ip"] for i, c in enumerate(clients)}
    assert len(set(before.values())) == 3
    assert appliance.stop() == 0
    assert "SIGTERM received" in appliance.log()
    appliance.start()
    # Ask in reverse order: a server that forgot would hand out the first free address again.
    after = {
        c.mac: run_dhclient(c, tmp_path / f"b{i}", arch=0)["new_ip_address"]
        for i, c in reversed(list(enumerate(clients)))
    }
    assert after == before


def test_sigkill_during_burst_loses_no_acknowledged_lease(
    lab: Lab, start_appliance: StartAppliance, tmp_path: Path
) -> None:
    burster = lab.add_client(address="10.20.17.2/24")
    appliance = start_appliance(DHCP_ONLY)
    burst = burster.popen(
        [sys.executable, str(Path(__file__).with_name("dhcp_burst.py")), "150", "7"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    acked: dict[str, str] = {}
    assert burst.stdout is not None
    try:
        for line in burst.stdout:
            kind, mac, *rest = line.split()
            if kind == "ACK":
                acked[mac] = rest[0]
            if len(acked) == 40:
                appliance.signal(signal.SIGKILL)  # mid-burst, between two exchanges or inside one
                break
    finally:
        burst.kill()
        _, errors = burst.communicate()
    assert len(acked) == 40, f"burst stopped early: {errors}"
    appliance.process.wait(10)
    store = LeaseStore(appliance.config_path.parent / "state" / "leases.journal")
    try:
        kept = {lease.mac: str(lease.address) for lease in store.all() if lease.state == "bound"}
    finally:
        store.close()
    missing = {mac: ip for mac, ip in acked.items() if kept.get(mac) != ip}
    assert not missing, f"acknowledged leases lost after SIGKILL: {missing}"
    # And the restarted server honours them: one of them asks again and gets the same address.
    appliance.start()
    mac, ip = next(iter(acked.items()))
    again = lab.add_client(mac=mac)
    assert run_udhcpc(again, tmp_path / "again")["ip"] == ip


def test_sighup_reloads_reservations_without_dropping_leases(
    lab: Lab, start_appliance: StartAppliance, tmp_path: Path
) -> None:
    appliance = start_appliance(DHCP_ONLY)
    first = lab.add_client()
    first_ip = run_udhcpc(first, tmp_path / "first", arch=0)["ip"]
    newcomer = lab.add_client(mac="08:00:aa:bb:cc:01")
    config = appliance.config_path.read_text()
    appliance.config_path.write_text(
        config.replace(
            "hosts:\n",
            "hosts:\n- name: node01\n  mac: 08:00:aa:bb:cc:01\n  address: 10.20.17.201\n  profile: default\n",
        ).replace("end: 10.20.17.249", "end: 10.20.17.200")
    )
    appliance.signal(signal.SIGHUP)
    appliance.wait_log("reloaded")
    env = run_udhcpc(newcomer, tmp_path / "new", arch=0)
    assert (env["ip"], env["hostname"]) == ("10.20.17.201", "node01")
    assert run_udhcpc(first, tmp_path / "again", arch=0)["ip"] == first_ip
    assert appliance.process.poll() is None


def test_refuses_to_start_without_its_interface(lab: Lab, tmp_path: Path) -> None:
    def serve(overrides: dict[str, object]) -> subprocess.CompletedProcess[str]:
        config = write_lab_config(tmp_path, {**overrides, **DHCP_ONLY})
        command = [sys.executable, "-m", "sidus_appliance.cli", "serve", "-c", str(config)]
        return subprocess.run(lab.server_argv(command), capture_output=True, text=True, timeout=30)

    result = serve({"interface": "eth9"})
    assert result.returncode == 2
    assert "interface: eth9 does not exist on this host" in result.stderr
    result = serve({"address": "10.20.17.250/24"})
    assert result.returncode == 2
    assert "address: 10.20.17.250/24 is not configured on eth1" in result.stderr


def test_malformed_packets_do_not_stop_the_server(lab: Lab, start_appliance: StartAppliance, tmp_path: Path) -> None:
    sender = lab.add_client(address="10.20.17.3/24")
    appliance = start_appliance(DHCP_ONLY)
    garbage = [b"", b"\x01", b"\x01\x01\x06\x00" + bytes(300), b"\x02" * 600, bytes(range(256)) * 8]
    code = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.SOL_SOCKET,socket.SO_BROADCAST,1)\n"
        f"for p in {garbage!r}: s.sendto(p,('10.20.17.254',67))\n"
    )
    assert sender.run([sys.executable, "-c", code]).returncode == 0
    time.sleep(0.5)
    client = lab.add_client()
    assert in_pool(run_udhcpc(client, tmp_path / "u", arch=0)["ip"])
    assert appliance.process.poll() is None
    assert "dropped packet" in appliance.log()


def test_drops_root_after_binding_and_keeps_serving(
    start_appliance: StartAppliance, client: ClientPort, tmp_path: Path
) -> None:
    appliance = start_appliance({"user": "nobody", **DHCP_ONLY})
    appliance.wait_log("dropped privileges to nobody")
    status = Path(f"/proc/{appliance.pid}/status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert set(uids) == {"65534"}
    env = run_udhcpc(client, tmp_path / "u", arch=0)
    assert in_pool(env["ip"])
    appliance.stop()
    with LeaseStore(appliance.config_path.parent / "state" / "leases.journal") as store:
        lease = store.by_mac(client.mac)
        assert lease is not None and str(lease.address) == env["ip"]
