"""DHCP under attack: a DECLINE loop, a DISCOVER flood from random MACs, a full state disk.

After each, a real udhcpc in a fresh namespace must still get a lease (within udhcpc's own
5 tries 2 s apart: 10 s), dig and curl-tftp must be served, and the log must hold no traceback.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidus_appliance.dhcp.leases import LeaseStore
from sidus_appliance.lab import ApplianceProcess, ClientPort, Lab, run_udhcpc

from ..conftest import StartAppliance, require
from . import checks

pytestmark = pytest.mark.integration

ATTACK = Path(__file__).with_name("dhcp_attack.py")
BURST = Path(__file__).parents[1] / "integration" / "dhcp_burst.py"
SMALL_POOL = {"dhcp": {"pool": {"start": "10.20.17.10", "end": "10.20.17.40"}}}  # 31 addresses


def attack(client: ClientPort, *args: str, timeout: float = 120) -> dict[str, str]:
    result = client.run([sys.executable, str(ATTACK), *args], timeout=timeout)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("DONE "), result.stdout
    return dict(item.split("=", 1) for item in line.split()[1:])


def journal_leases(appliance: ApplianceProcess) -> LeaseStore:
    """The journal as a restart would read it (the appliance must be stopped first)."""
    store = LeaseStore(appliance.config_path.parent / "state" / "leases.journal")
    store.close()
    return store


def test_one_mac_declining_over_and_over_cannot_quarantine_the_pool(
    lab: Lab, start_appliance: StartAppliance, tmp_path: Path
) -> None:
    appliance = start_appliance(SMALL_POOL)
    attacker = lab.add_client(address="10.20.17.3/24")
    done = attack(attacker, "decline", "215")
    checks.assert_still_serves(lab, appliance, tmp_path / "after")
    # The quarantine survives a restart, still bounded, and a new client still gets a lease.
    appliance.stop()
    store = journal_leases(appliance)
    quarantined = [lease for lease in store.all() if lease.state == "declined"]
    assert 1 <= len(quarantined) <= 2, quarantined
    assert {lease.declined_by for lease in quarantined} == {done["mac"]}
    assert store.skipped_lines == 0
    appliance.start()
    env = run_udhcpc(lab.add_client(), tmp_path / "restarted")
    assert env["serverid"] == checks.SERVER
    checks.assert_no_crash(appliance)


def test_discover_flood_from_random_macs_cannot_starve_a_new_client(
    lab: Lab, start_appliance: StartAppliance, tmp_path: Path
) -> None:
    appliance = start_appliance()
    attacker = lab.add_client(address="10.20.17.3/24")
    flood = attacker.popen([sys.executable, str(ATTACK), "flood", "20000"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    try:
        # During the flood: the pool is held by offers to random MACs, yet a real client gets in.
        appliance.wait_log("pool tight, reclaimed the oldest offer", timeout=60)
        env = run_udhcpc(lab.add_client(), tmp_path / "during")
        assert env["serverid"] == checks.SERVER
        out, err = flood.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            flood.kill()
        flood.wait()
    assert "DONE sent=20000" in out, err
    # After the 20k DISCOVERs: a new client within udhcpc's 10 s, and DNS and TFTP as ever.
    checks.assert_still_serves(lab, appliance, tmp_path / "after")
    # Every DISCOVER was decided, but a flood is counted, not written line by line.
    lines = appliance.log().count("\n")
    assert lines < 10_000, f"{lines} log lines for a 20k-packet flood"
    assert "per-packet log lines suppressed (flood)" in appliance.log()


@pytest.fixture
def tiny_state_dir(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: the appliance's state_dir on a disk we can fill. Unmounted afterwards."""
    require("a tmpfs state_dir", tools=["mount", "umount"])
    mount_point = tmp_path / "tinystate"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """Take every free byte of the file system (the journal's last page keeps its slack)."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 16, 4096, 512, 64, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    return filler


def burst(client: ClientPort, count: int, prefix: int) -> tuple[dict[str, str], int]:
    """Run `count` DORAs; returns the acknowledged {mac: ip} and how many failed."""
    result = client.run([sys.executable, str(BURST), str(count), str(prefix)], timeout=600)
    acked, failed = {}, 0
    for line in result.stdout.splitlines():
        kind, mac, *rest = line.split()
        if kind == "ACK":
            acked[mac] = rest[0]
        else:
            failed += 1
    return acked, failed


def test_full_state_disk_loses_no_acknowledged_lease(
    lab: Lab, start_appliance: StartAppliance, tmp_path: Path, tiny_state_dir: Path
) -> None:
    appliance = start_appliance({"state_dir": str(tiny_state_dir)})
    burster = lab.add_client(address="10.20.17.2/24")
    first, _ = burst(burster, 3, 21)
    assert len(first) == 3
    filler = fill(tiny_state_dir)
    # The journal's last page fills up, then a write stops half-way: those clients get no ACK.
    during, failed = burst(burster, 60, 22)
    assert failed > 0, "the disk never filled up: the test proves nothing"
    filler.unlink()
    after, failed_after = burst(burster, 20, 23)
    assert failed_after == 0 and len(after) == 20
    checks.assert_still_serves(lab, appliance, tmp_path / "after")
    appliance.stop()
    store = LeaseStore(tiny_state_dir / "leases.journal")
    store.close()
    assert store.skipped_lines == 0, "a torn line was left in the journal"
    kept = {lease.mac: str(lease.address) for lease in store.all() if lease.state == "bound"}
    acknowledged = {**first, **during, **after}
    lost = {mac: ip for mac, ip in acknowledged.items() if kept.get(mac) != ip}
    assert not lost, f"acknowledged leases lost after the disk was full: {lost}"
    appliance.start()  # and the appliance starts again on that journal
    checks.assert_no_crash(appliance)
