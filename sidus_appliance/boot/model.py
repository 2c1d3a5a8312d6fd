"""The boot policy's vocabulary. Only the values travel (YAML, journal, logs, menus)."""

from __future__ import annotations

from enum import StrEnum


class Profile(StrEnum):
    """Which menu a machine gets: a reservation's `profile:`; everyone else DEFAULT."""

    DEFAULT = "default"  # every instance in its configured modes (the shared, pristine root)
    MASTER = "master"  # every instance read-write: the machine that maintains the image


class BootMode(StrEnum):
    """How an instance's root is mounted by the booted client (the dracut module's `sidus=`)."""

    OVERLAY = "overlay"  # NFS root read-only + tmpfs upper: changes in RAM, pristine after reboot
    AUFS = "aufs"  # the same with aufs (older kernels, aufs-dkms)
    RW = "rw"  # NFS root read-write (the master only: no `sidus=`, `rw` in the NFS options)

    @property
    def menu_label(self) -> str:
        return _MODE_LABELS[self]


_MODE_LABELS = {BootMode.OVERLAY: "shared root, changes in RAM", BootMode.AUFS: "shared root, aufs",
                BootMode.RW: "read-write"}
MODE_ORDER = (BootMode.OVERLAY, BootMode.AUFS, BootMode.RW)  # menu order: overlay first, as in the seed


class Transfer(StrEnum):
    """How GRUB and iPXE fetch kernels and initrds (pxelinux/syslinux.efi always use TFTP)."""

    TFTP = "tftp"
    HTTP = "http"


class ClientKind(StrEnum):
    """What a DHCP request says about the software asking."""

    PXE = "pxe"  # firmware PXE (vendor class PXEClient, or option 93 alone)
    IPXE = "ipxe"  # iPXE (option 175 or user class "iPXE")
    HTTP = "http"  # UEFI HTTP boot firmware (vendor class HTTPClient, arch 16)
    PLAIN = "plain"  # not a network-boot client: the booted system's own DHCP
