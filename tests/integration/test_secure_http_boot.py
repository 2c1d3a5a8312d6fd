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

from .test_qemu_boot import BOOT_TIMEOUT, INSTANCE

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
    assert result.serial.boot_file == f"http://10.20.17.254/{script}"  # offered as its boot file
    http_lines = [line for line in log.splitlines() if " sidus.http: " in line]
    tftp_lines = [line for line in log.splitlines() if " sidus.tftp: " in line]
    for name in (script, f"vmlinuz-{test_kernel.version}@{INSTANCE}", f"initrd.img-{test_kernel.version}@{INSTANCE}"):
        assert any(f": sent {name} (" in line for line in http_lines), name
        assert not any(f": sent {name} (" in line for line in tftp_lines), name
    assert result.marker is not None and "sidus=overlay" in result.marker.cmdline
