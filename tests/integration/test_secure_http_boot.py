"""Modern PCs: Secure Boot through Debian's signed shim and GRUB, UEFI HTTP boot, iPXE over HTTP.

Each case starts the appliance in a fresh lab with the test instance (a Debian-signed kernel and
the marker initramfs) and boots one QEMU client to its marker line (TCG: 20-60 s a boot).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sidus_appliance import bootfiles
from sidus_appliance.config import load_config
from sidus_appliance.lab import ApplianceProcess, Lab, qemu, testkernel, write_lab_config

from .test_qemu_boot import BOOT_TIMEOUT, INSTANCE, MASTER_MAC

pytestmark = [pytest.mark.integration, pytest.mark.qemu]

SHIM = "efi64/shimx64.efi"
SECURE_BOOT_LINE = "secureboot: Secure boot enabled"


def boot_once(firmware: qemu.Firmware, mac: str, overrides: dict[str, Any], lab: Lab,
              start_appliance: Callable[..., ApplianceProcess], kernel: testkernel.TestKernel,
              tmp_path: Path) -> tuple[qemu.BootResult, str, str]:
    """Boot one client; returns the result, the appliance log and the serial log."""
    workdir = tmp_path / "appliance"
    instance_root = tmp_path / "nfsroot" / INSTANCE
    testkernel.publish(instance_root, kernel)
    overrides = {**testkernel.instance_overrides(instance_root, INSTANCE), **overrides}
    staged = bootfiles.install(load_config(write_lab_config(workdir, overrides)))
    assert not staged.missing, str(staged)
    appliance = start_appliance(overrides, workdir=workdir)
    tap = lab.add_tap()
    result = qemu.boot(firmware, mac, tap, tmp_path / "qemu", lab.server_ns, timeout=BOOT_TIMEOUT,
                       kernel=kernel.vmlinuz)
    print(result.summary(), result.attempts, result.phases)
    return result, appliance.log(), result.serial_log.read_text(errors="replace")


def test_ipxe_fetches_its_menu_kernel_and_initrd_over_http(
        lab: Lab, start_appliance: Callable[..., ApplianceProcess], test_kernel: testkernel.TestKernel,
        tmp_path: Path) -> None:
    mac = "52:54:00:5c:00:01"
    result, log, serial = boot_once("bios", mac, {"http": {"transfer": "http"}}, lab, start_appliance,
                                    test_kernel, tmp_path)
    assert result.ok, f"{result.summary()}\n--- serial tail:\n{serial[-3000:]}\n--- log tail:\n{log[-3000:]}"
    script = "ipxe/01-" + mac.replace(":", "-")
    assert (result.serial.boot_file or "").endswith(script)  # offered as its boot file
    http_lines = [line for line in log.splitlines() if " sidus.http: " in line]
    tftp_lines = [line for line in log.splitlines() if " sidus.tftp: " in line]
    for name in (script, f"vmlinuz-{test_kernel.version}@{INSTANCE}", f"initrd.img-{test_kernel.version}@{INSTANCE}"):
        assert any(f": sent {name} (" in line for line in http_lines), name
        assert not any(f": sent {name} (" in line for line in tftp_lines), name
    assert result.marker is not None and "sidus=overlay" in result.marker.cmdline


def test_secure_boot_through_shim_and_grub_master_read_write(
        lab: Lab, start_appliance: Callable[..., ApplianceProcess], test_kernel: testkernel.TestKernel,
        tmp_path: Path) -> None:
    """Microsoft's keys enrolled, as on a stock PC: the master's reservation names the signed chain
    (one line of config), shim loads GRUB, GRUB reads the master's menu and boots it read-write."""
    hosts = [{"name": "master", "mac": MASTER_MAC, "address": "10.20.17.253", "profile": "master",
              "boot_files": {7: SHIM}}]
    result, log, serial = boot_once("uefi-secure", MASTER_MAC, {"hosts": hosts}, lab, start_appliance,
                                    test_kernel, tmp_path)
    assert result.ok, f"{result.summary()}\n--- serial tail:\n{serial[-3000:]}\n--- log tail:\n{log[-3000:]}"
    assert result.serial.secure_boot is True and SECURE_BOOT_LINE in serial  # enforced, not merely present
    assert result.serial.boot_file == SHIM and "efi64/grubx64.efi" in result.serial.chained
    for name in (SHIM, "efi64/grubx64.efi", "grub/grub.cfg", f"vmlinuz-{test_kernel.version}@{INSTANCE}"):
        assert f": sent {name} (" in log, name
    marker = result.marker
    assert marker is not None and qemu.is_master_cmdline(marker.cmdline), marker
    assert "sidus=" not in marker.cmdline and f"initrd=initrd.img-{test_kernel.version}@{INSTANCE}" in marker.cmdline


def test_secure_boot_refuses_the_unsigned_syslinux(
        lab: Lab, start_appliance: Callable[..., ApplianceProcess], test_kernel: testkernel.TestKernel,
        tmp_path: Path) -> None:
    """The negative control: the same firmware given syslinux.efi (the seed's default) refuses it,
    so the test above shows Secure Boot really enforced."""
    result, log, serial = boot_once("uefi-secure", "52:54:00:5c:00:02", {}, lab, start_appliance,
                                    test_kernel, tmp_path)
    assert not result.ok and result.marker is None
    assert result.serial.boot_file == "efi64/syslinux.efi" and "sent efi64/syslinux.efi (" in log
    assert result.serial.firmware_error is not None and "Access Denied" in result.serial.firmware_error, serial[-2000:]


def test_uefi_http_boot_to_the_marker_over_http(
        lab: Lab, start_appliance: Callable[..., ApplianceProcess], test_kernel: testkernel.TestKernel,
        tmp_path: Path) -> None:
    """OVMF's HTTP boot (arch 16, HTTPClient): iPXE over HTTP, then the machine's menu, kernel and
    initrd over HTTP; nothing of the boot over TFTP."""
    mac = "52:54:00:5c:00:03"
    result, log, serial = boot_once("uefi-http", mac, {"http": {"transfer": "http"}}, lab, start_appliance,
                                    test_kernel, tmp_path)
    assert result.ok, f"{result.summary()}\n--- serial tail:\n{serial[-3000:]}\n--- log tail:\n{log[-3000:]}"
    assert f"dhcp: DISCOVER from {mac} (http, arch 16) -> OFFER" in log
    http_lines = [line for line in log.splitlines() if " sidus.http: " in line]
    script = "ipxe/01-" + mac.replace(":", "-")
    for name in ("efi64/snponly.efi", script, f"vmlinuz-{test_kernel.version}@{INSTANCE}",
                 f"initrd.img-{test_kernel.version}@{INSTANCE}"):
        assert any(f": sent {name} (" in line for line in http_lines), name
    assert not [line for line in log.splitlines() if " sidus.tftp: " in line and ": sent " in line]
