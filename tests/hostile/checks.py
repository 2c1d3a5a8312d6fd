"""What every hostile test ends with: a real client in a fresh namespace is still served by
DHCP (busybox udhcpc), DNS (dig), TFTP and HTTP (curl), and the appliance log holds no traceback."""

from __future__ import annotations

import filecmp
import os
from pathlib import Path

from sidus_appliance.config import load_config
from sidus_appliance.lab import ApplianceProcess, ClientPort, Lab, run_udhcpc

SERVER = "10.20.17.254"
PROBE = "hostile-probe.bin"
PROBE_SIZE = 70_001  # several blocks at any blksize, not a multiple of any
# What a crash looks like in our log: a Python traceback or an asyncio task that died.
CRASH_MARKERS = ("Traceback (most recent call last)", "exception was never retrieved", "Unhandled exception")


def stage_probe(appliance: ApplianceProcess) -> Path:
    """Put the TFTP probe file in the appliance's boot tree (idempotent)."""
    root = load_config(appliance.config_path).tftp.root
    probe = root / PROBE
    if not probe.exists():
        probe.write_bytes(os.urandom(PROBE_SIZE))
    return probe


def assert_no_crash(appliance: ApplianceProcess) -> None:
    log = appliance.log()
    for marker in CRASH_MARKERS:
        assert marker not in log, f"{marker!r} in the appliance log:\n{log[-6000:]}"
    assert appliance.process is not None and appliance.process.poll() is None, "the appliance died"


def assert_still_serves(lab: Lab, appliance: ApplianceProcess, workdir: Path, *, dhcp: bool = True,
                        dns: bool = True, tftp: bool = True, http: bool = True) -> ClientPort:
    """A fresh client gets a lease, a DNS answer and a byte-exact file over TFTP and HTTP; no crash logged."""
    probe = stage_probe(appliance) if tftp or http else None
    workdir.mkdir(parents=True, exist_ok=True)
    if dhcp:
        client = lab.add_client()
        env = run_udhcpc(client, workdir / "udhcpc", configure=True, timeout=30)
        assert env["serverid"] == SERVER
    else:
        client = lab.add_client(address="10.20.17.6/24")
    if dns:
        result = client.run(["dig", f"@{SERVER}", "+time=2", "+tries=3", "+short", "gateway.sidus.zone"], timeout=30)
        assert result.stdout.split() == [SERVER], f"dig: {result.stdout!r} {result.stderr!r}"
    if tftp:
        assert probe is not None
        dest = workdir / "probe.out"
        command = ["curl", "-sS", "--max-time", "60", "-o", str(dest), f"tftp://{SERVER}/{PROBE}"]
        result = client.run(command, timeout=90)
        assert result.returncode == 0, f"curl: {result.stderr}"
        assert filecmp.cmp(dest, probe, shallow=False)
    if http:
        assert probe is not None
        dest = workdir / "probe.http"
        command = ["curl", "-sS", "--fail", "--max-time", "60", "-o", str(dest), f"http://{SERVER}/{PROBE}"]
        result = client.run(command, timeout=90)
        assert result.returncode == 0, f"curl http: {result.stderr}"
        assert filecmp.cmp(dest, probe, shallow=False)
    assert_no_crash(appliance)
    return client
