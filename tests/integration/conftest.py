"""Fixtures the integration tests share."""

from __future__ import annotations

import pytest

from sidus_appliance.lab import qemu, testkernel

from ..conftest import require

QEMU_TOOLS = (
    qemu.QEMU, "dpkg-deb", "apt-get", "dig", str(testkernel.BUSYBOX),
    "/usr/lib/ipxe/qemu/pxe-e1000.rom", "/usr/lib/ipxe/qemu/efi-e1000.rom", "/usr/share/OVMF",
)


@pytest.fixture(scope="module")
def test_kernel() -> testkernel.TestKernel:
    """The Debian kernel + marker initramfs, built once (cached under /var/cache/sidus-appliance)."""
    require("the QEMU boots", root=False, tools=QEMU_TOOLS)
    return testkernel.build()
