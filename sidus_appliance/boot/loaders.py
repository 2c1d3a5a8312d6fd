"""Which boot loader a client gets, from what its DHCP request says (RFC 4578 option 93).

The table is the seed's PXE dispatch, with the errata: 7 and 9 are both x86-64 UEFI. The
config may override any row (`dhcp.boot_files`) and the fallback (`dhcp.default_boot_file`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .model import ClientKind

DEFAULT_BOOT_FILES: Mapping[int, str] = {
    0: "pxelinux.0",  # x86 BIOS
    6: "efi32/syslinux.efi",  # x86 UEFI (32-bit)
    7: "efi64/syslinux.efi",  # x86-64 UEFI
    9: "efi64/syslinux.efi",  # x86-64 UEFI (RFC 4578 errata: EFI BC)
}
DEFAULT_BOOT_FILE = "pxelinux.0"  # any other arch, or none given


@dataclass(frozen=True, slots=True)
class Machine:
    """What a DHCP request tells about the booting machine (the raw option values)."""

    mac: str
    client_arch: bytes | None = None  # option 93 (one or more 16-bit arch types)
    vendor_class: bytes = b""  # option 60
    user_class: bytes = b""  # option 77
    ipxe_options: bool = False  # option 175 present


@dataclass(frozen=True, slots=True)
class BootSpec:
    """The policy's answer for one request."""

    kind: ClientKind
    arch: int | None
    loader: str | None  # boot file to offer; None: not a network-boot client, no boot options
    vendor_pxe: bool  # the client sent "PXEClient...": the reply echoes it (PXE spec)
    note: str = ""  # something odd worth a word in the DHCP log line


PLAIN = BootSpec(ClientKind.PLAIN, None, None, False)


def boot_spec(machine: Machine, boot_files: Mapping[int, str], default_boot_file: str) -> BootSpec:
    """Classify the client and pick its loader."""
    vendor_pxe = machine.vendor_class.startswith(b"PXEClient")
    ipxe = machine.ipxe_options or b"iPXE" in machine.user_class
    # Option 93 alone marks a network-boot client too (dhclient/udhcpc configured to send it).
    if not (vendor_pxe or ipxe or machine.client_arch is not None):
        return PLAIN
    arch, note = None, ""
    if machine.client_arch is not None and len(machine.client_arch) >= 2:
        arch = int.from_bytes(machine.client_arch[:2], "big")  # several arches listed: the first
    elif machine.client_arch is not None:
        note = f"bad option 93 {machine.client_arch.hex()}"
    if arch is None and vendor_pxe:
        arch = arch_from_vendor_class(machine.vendor_class)
    if arch is not None and arch not in boot_files:
        note = f"unknown arch {arch}"
    loader = default_boot_file if arch is None else boot_files.get(arch, default_boot_file)
    return BootSpec(ClientKind.IPXE if ipxe else ClientKind.PXE, arch, loader, vendor_pxe, note)


def arch_from_vendor_class(vendor: bytes) -> int | None:
    """`PXEClient:Arch:00007:UNDI:003016` → 7 (firmware that omits option 93)."""
    parts = vendor.split(b":")
    if len(parts) >= 3 and parts[1] == b"Arch" and parts[2].isdigit():
        return int(parts[2])
    return None
