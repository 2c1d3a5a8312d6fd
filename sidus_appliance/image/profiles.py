"""What goes into an instance, per profile. Each profile extends the one before it."""

from __future__ import annotations

# Booting the shared root at all: kernel, dracut with our module's needs (network-legacy wants
# dhclient, arping and pgrep; nfs wants mount.nfs, and /etc/protocols from netbase: without it
# mount.nfs fails its port probe with "Protocol not supported"), an init, and a way in.
MINIMAL = (
    "netbase", "dracut", "dracut-network", "nfs-common", "isc-dhcp-client", "iputils-arping", "procps",
    "systemd-sysv", "udev", "kmod", "iproute2", "ifupdown", "openssh-server", "less", "nano",
)
# Compute nodes of a cluster: toolchains, MPI, the usual administration tools.
CLUSTER = (
    "build-essential", "gfortran", "openmpi-bin", "libopenmpi-dev", "python3", "python3-numpy",
    "htop", "tmux", "rsync", "sudo", "curl", "environment-modules",
)
# Self-service stations: a light desktop on top.
WORKSTATION = (
    "xfce4", "lightdm", "xserver-xorg", "firefox-esr", "xfce4-terminal", "fonts-dejavu",
)  # no NetworkManager: it would reconfigure the interface that carries the NFS root

PROFILES: dict[str, tuple[str, ...]] = {
    "minimal": MINIMAL,
    "cluster": MINIMAL + CLUSTER,
    "workstation": MINIMAL + CLUSTER + WORKSTATION,
}

KERNEL_PACKAGES = {
    "amd64": "linux-image-amd64",
    "arm64": "linux-image-arm64",
    "i386": "linux-image-686-pae",
    "armhf": "linux-image-armmp",
    "ppc64el": "linux-image-powerpc64le",
    "riscv64": "linux-image-riscv64",
}


def packages(profile: str, arch: str) -> list[str]:
    """Packages to install for `profile` on `arch`, kernel first; ValueError if unknown."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r} (one of {', '.join(PROFILES)})")
    if arch not in KERNEL_PACKAGES:
        raise ValueError(f"unknown architecture {arch!r} (one of {', '.join(KERNEL_PACKAGES)})")
    return [KERNEL_PACKAGES[arch], *PROFILES[profile]]
