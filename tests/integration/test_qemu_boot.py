"""Real PXE firmware boots from the appliance alone (no dnsmasq anywhere).

Each case starts the appliance in a fresh lab, publishes the test instance (Debian kernel +
marker initramfs) and boots one QEMU client on a tap port of the lab bridge. The guest reports
on the serial port what DHCP gave it and the kernel command line its menu chose; we check that
against the appliance's DNS and TFTP log. TCG: ~20-45 s per boot on 2 cores.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from sidus_appliance import bootfiles
from sidus_appliance.config import load_config
from sidus_appliance.lab import ApplianceProcess, Lab, qemu, testkernel, write_lab_config

pytestmark = [pytest.mark.integration, pytest.mark.qemu]

MASTER_MAC = "08:00:aa:bb:cc:dd"
MASTER_IP = "10.20.17.253"
INSTANCE = "lab"
BOOT_TIMEOUT = 240.0  # TCG on a loaded 2-core CI box; a healthy boot takes 20-45 s

CASES = [
    # (firmware, MAC, expected boot file, master menu?)
    ("bios", "52:54:00:5a:00:01", "pxelinux.0", False),
    ("uefi", MASTER_MAC, "efi64/syslinux.efi", True),
    ("uefi-native", "52:54:00:5a:00:03", "efi64/syslinux.efi", False),
]


def dig(lab: Lab, name: str, rtype: str = "A") -> list[str]:
    out = subprocess.run(
        lab.server_argv(["dig", "@10.20.17.254", "+short", "+time=2", "+tries=2", name, rtype]),
        capture_output=True, text=True, timeout=20, check=True,
    ).stdout  # fmt: skip
    return out.split()


@pytest.mark.parametrize(("firmware", "mac", "boot_file", "master"), CASES, ids=[c[0] for c in CASES])
def test_pxe_boot_to_marker(
    firmware: qemu.Firmware,
    mac: str,
    boot_file: str,
    master: bool,
    lab: Lab,
    start_appliance: Callable[..., ApplianceProcess],
    test_kernel: testkernel.TestKernel,
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "appliance"
    instance_root = tmp_path / "nfsroot" / INSTANCE
    testkernel.publish(instance_root, test_kernel)
    overrides = testkernel.instance_overrides(instance_root, INSTANCE)
    staged = bootfiles.install(load_config(write_lab_config(workdir, overrides)))  # as `bootfiles install` does
    assert not staged.missing, str(staged)
    appliance = start_appliance(overrides, workdir=workdir)
    tap = lab.add_tap()

    result = qemu.boot(firmware, mac, tap, tmp_path / "qemu", lab.server_ns, timeout=BOOT_TIMEOUT,
                       kernel=test_kernel.vmlinuz)  # fmt: skip
    print(result.summary(), result.attempts, result.phases)
    log = appliance.log()
    assert result.ok, f"{result.summary()}\n--- serial tail:\n{result.serial_log.read_text(errors='replace')[-3000:]}"
    marker = result.marker
    assert marker is not None and marker.ip is not None

    # Address and name from the appliance's DHCP (option 12/15), and the appliance's DNS agrees.
    assert marker.mac == mac
    assert marker.domain == "sidus.zone"
    if master:
        assert (marker.ip, marker.hostname) == (MASTER_IP, "master")
    else:
        octet = marker.ip.rsplit(".", 1)[1]
        assert marker.ip.startswith("10.20.17.") and 10 <= int(octet) <= 249
        assert marker.hostname == f"dhcp-{octet}"
    assert dig(lab, f"{marker.hostname}.sidus.zone") == [marker.ip]

    # The firmware fetched the boot loader its arch dispatches to, from the appliance.
    assert result.serial.boot_file == boot_file
    assert f"sent {boot_file} " in log, log[-4000:]

    # The menu chosen by MAC: master boots the root read-write, everyone else the overlay.
    assert f"initrd=initrd.img-{test_kernel.version}@{INSTANCE}" in marker.cmdline
    assert f"root=nfs:10.20.17.254:{instance_root}:" in marker.cmdline
    assert qemu.is_master_cmdline(marker.cmdline) is master, marker.cmdline
    assert ("sidus=overlay" in marker.cmdline.split()) is not master, marker.cmdline
    menu_name = "pxelinux.cfg/01-" + mac.replace(":", "-")
    assert f"sent {menu_name} " in log, log[-4000:]
