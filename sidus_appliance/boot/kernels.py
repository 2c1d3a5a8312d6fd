"""How an instance's kernels and initrds are named in the boot tree, and how they are found.

The tree serves `<instance root>/boot/vmlinuz-<version>` as `vmlinuz-<version>@<instance>` (and
`initrd.img-<version>` likewise), read in place: no copies, no symlink farm. This module is the
only place that spells that name; the TFTP tree, the menus, the image builder, the lab and the
benches build and parse it here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from sidus_appliance.jail import list_beneath

from .versions import newest_first

SEPARATOR = "@"  # cannot appear in a Debian kernel version, can in no instance name
BOOT_DIR = "boot"  # where an instance keeps them, relative to its root


class ImageKind(StrEnum):
    """The two files a kernel boot needs, by their Debian file name prefix."""

    KERNEL = "vmlinuz-"
    INITRD = "initrd.img-"


@dataclass(frozen=True, slots=True)
class BootImage:
    """One kernel or initrd of one instance."""

    kind: ImageKind
    version: str
    instance: str

    @property
    def served_name(self) -> str:
        """The name clients ask for: `vmlinuz-6.1.0-18-amd64@bookworm`."""
        return f"{self.kind.value}{self.version}{SEPARATOR}{self.instance}"

    @property
    def boot_parts(self) -> tuple[str, str]:
        """Its path in the instance root, as components: ("boot", "vmlinuz-6.1.0-18-amd64")."""
        return BOOT_DIR, boot_path(self.kind, self.version).split("/", 1)[1]

    def path_in(self, root: Path) -> Path:
        return root.joinpath(*self.boot_parts)


def boot_path(kind: ImageKind, version: str) -> str:
    """Where Debian puts it, relative to a root: `boot/vmlinuz-6.1.0-18-amd64`."""
    return f"{BOOT_DIR}/{kind.value}{version}"


def kernel_name(version: str, instance: str) -> str:
    return BootImage(ImageKind.KERNEL, version, instance).served_name


def initrd_name(version: str, instance: str) -> str:
    return BootImage(ImageKind.INITRD, version, instance).served_name


def parse_served_name(name: str) -> BootImage | None:
    """`vmlinuz-<version>@<instance>` → BootImage; None for any other name."""
    base, sep, instance = name.rpartition(SEPARATOR)
    if not sep or not instance:
        return None
    for kind in ImageKind:
        if base.startswith(kind.value) and len(base) > len(kind.value):
            version = base[len(kind.value):]
            return None if SEPARATOR in version else BootImage(kind, version, instance)
    return None


def versions_in(names: set[str]) -> list[str]:
    """Versions that have both `vmlinuz-<v>` and `initrd.img-<v>` among a /boot listing, newest first."""
    kernel, initrd = ImageKind.KERNEL.value, ImageKind.INITRD.value
    found = [n[len(kernel):] for n in names if n.startswith(kernel) and len(n) > len(kernel)]
    return newest_first([v for v in found if f"{initrd}{v}" in names and SEPARATOR not in v])


def kernel_versions(root: Path) -> list[str]:
    """The instance's bootable kernel versions (kernel and initrd both present), newest first.

    `boot` is listed jailed in the instance root, as the kernels are served: a `boot` symlink
    out of the instance offers nothing (the tree would refuse its kernels anyway)."""
    try:
        names = set(list_beneath(root, [BOOT_DIR]))
    except OSError:
        return []
    return versions_in(names)
