"""Attacks on the HTTP side of the real appliance: the same planted FIFOs, device nodes, links
out of an instance and traversal names as over TFTP, a symlink race, huge ranges, and one host
holding connections open. Each test ends with a real client served DHCP, DNS, TFTP and HTTP."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sidus_appliance.lab import ClientPort, Lab, end_process

from . import checks
from .test_tftp_attacks import HERE, INSTANCE, SwapRace, fifo_writer, instance_boot, vm_kib

pytestmark = pytest.mark.integration

SERVER = checks.SERVER


def curl(client: ClientPort, path: str, *args: str, dest: str = "/dev/null") -> tuple[int, str]:
    """HTTP status of GET path (sent as is: no client-side normalisation of `..`)."""
    result = client.run(["curl", "-sS", "--path-as-is", "--max-time", "10", "-o", dest, "-w", "%{http_code}",
                         *args, f"http://{SERVER}{path}"], timeout=30)
    return int(result.stdout or 0), result.stderr


def tool(client: ClientPort, *args: str, timeout: float = 90) -> dict[str, object]:
    result = client.run([sys.executable, str(HERE / "http_client.py"), *args], timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_planted_files_and_traversal_are_refused_as_over_tftp(lab: Lab, start_appliance, tmp_path: Path) -> None:
    boot = instance_boot(tmp_path)
    os.mkfifo(boot / "vmlinuz-fifo")
    os.mkfifo(boot / "vmlinuz-watched")
    os.mknod(boot / "vmlinuz-dev", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    (tmp_path / "secret").write_text("OUTSIDE SECRET\n")
    os.symlink(tmp_path / "secret", boot / "vmlinuz-abs")
    os.symlink("../../../../secret", boot / "vmlinuz-rel")
    appliance = start_appliance(INSTANCE)
    client = lab.add_client(address="10.20.17.3/24")
    out = tmp_path / "body"
    for path, status in (("/vmlinuz-fifo@inst", 403), ("/efi64/vmlinuz-fifo@inst", 403), ("/vmlinuz-dev@inst", 403),
                         ("/vmlinuz-abs@inst", 403), ("/vmlinuz-rel@inst", 403), ("/../secret", 403),
                         ("/%2e%2e/secret", 403), ("/efi64/..%2f..%2fsecret", 403), ("/x%00y", 403),
                         ("/vmlinuz-x@nosuch", 404)):
        got, err = curl(client, path, dest=str(out))
        assert got == status, f"{path}: HTTP {got} {err}"
        assert b"OUTSIDE" not in out.read_bytes()
    with fifo_writer(boot / "vmlinuz-watched") as opened:
        assert curl(client, "/vmlinuz-watched@inst")[0] == 403
        assert not opened.is_set(), "the appliance opened the planted FIFO for reading"
    checks.assert_still_serves(lab, appliance, tmp_path / "after")


def test_symlink_swap_race_never_serves_a_byte_from_outside(lab: Lab, start_appliance, tmp_path: Path) -> None:
    race = SwapRace.plant(tmp_path, b"OUTSIDE SECRET, not for HTTP\n")
    appliance = start_appliance(INSTANCE)
    client = lab.add_client(address="10.20.17.3/24")
    outcome: dict[str, object] = {}

    def attack() -> dict[str, object]:
        outcome.update(tool(client, "fetch", SERVER, "/vmlinuz-x@inst", "--count", "1500", "--seconds", "10"))
        return outcome

    race.run(attack)
    assert "403" in outcome["statuses"], f"the race was not exercised: {outcome}"  # type: ignore[operator]
    assert appliance.log().count("refused '/vmlinuz-x@inst'") <= 2  # once per client and minute
    checks.assert_still_serves(lab, appliance, tmp_path / "after")


def test_huge_ranges_are_clamped_or_refused_never_allocated(lab: Lab, start_appliance, tmp_path: Path) -> None:
    appliance = start_appliance()
    probe = checks.stage_probe(appliance)
    client = lab.add_client(address="10.20.17.3/24")
    rss_before = vm_kib(appliance.pid, "VmRSS")
    out = tmp_path / "part"
    huge = "9" * 40
    assert curl(client, f"/{checks.PROBE}", "-H", f"Range: bytes={huge}-")[0] == 416
    assert curl(client, f"/{checks.PROBE}", "-H", f"Range: bytes=-{huge}", dest=str(out))[0] == 206
    assert out.read_bytes() == probe.read_bytes()
    assert curl(client, f"/{checks.PROBE}", "-H", f"Range: bytes=70000-{huge}", dest=str(out))[0] == 206
    assert out.read_bytes() == probe.read_bytes()[70000:]
    assert curl(client, f"/{checks.PROBE}", "-H", "Range: bytes=1-2,4-5,7-" + "9" * 150, dest=str(out))[0] == 200
    for _ in range(200):
        curl(client, f"/{checks.PROBE}", "-H", f"Range: bytes=0-{huge}")
    assert vm_kib(appliance.pid, "VmRSS") < rss_before + 50 * 1024
    checks.assert_still_serves(lab, appliance, tmp_path / "after")


def test_one_host_holding_connections_cannot_keep_others_out(lab: Lab, start_appliance, tmp_path: Path) -> None:
    appliance = start_appliance({"http": {"idle_timeout": 3}})
    hog = lab.add_client(address="10.20.17.3/24")
    holder = hog.popen([sys.executable, str(HERE / "http_client.py"), "hold", SERVER, "--connections", "200",
                        "--seconds", "8"], stdout=subprocess.PIPE)
    try:
        other = lab.add_client(address="10.20.17.4/24")
        checks.stage_probe(appliance)
        for _ in range(5):  # while the hog holds all it can
            assert curl(other, f"/{checks.PROBE}")[0] == 200
        held, _ = holder.communicate(timeout=60)
    finally:
        end_process(holder)
    result = json.loads(held)
    # The hog got its share (8) at most; the rest were closed at once, and the half requests it
    # kept were cut after the idle timeout.
    assert result["opened"] + result["refused"] == 200 and result["closed_by_server"] >= 192, result
    assert "connection refused" in appliance.log()
    checks.assert_still_serves(lab, appliance, tmp_path / "after")
