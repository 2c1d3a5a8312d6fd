"""Which entries a machine's boot menu holds: the same for every loader (pxelinux, syslinux.efi).

A MAC's reservation names its Profile (everyone else: DEFAULT). DEFAULT gets one entry per
instance and configured mode, overlay first as in the seed; MASTER boots each instance
read-write (no `sidus=`, `rw` added to the NFS options). Each entry boots the instance's newest
kernel (Debian version order), served as `vmlinuz-<version>@<instance>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .kernels import initrd_name, kernel_name, kernel_versions
from .model import MODE_ORDER, BootMode, Profile

if TYPE_CHECKING:
    from sidus_appliance.config import Config, Instance


@dataclass(frozen=True, slots=True)
class MenuEntry:
    label: str  # short id: `<instance>-<mode>`
    title: str  # what the menu shows
    instance: str
    mode: BootMode
    version: str
    kernel: str  # served names
    initrd: str
    cmdline: str  # kernel command line without the initrd= the pxelinux renderer adds


@dataclass(frozen=True, slots=True)
class Menu:
    mac: str | None  # None: the menu of any machine (pxelinux.cfg/default)
    profile: Profile
    domain: str
    entries: tuple[MenuEntry, ...]
    notes: tuple[str, ...]  # what was left out, and why (rendered as comments)


def profile_for(config: Config, mac: str | None) -> Profile:
    """The reservation's profile for this (normalised) MAC; DEFAULT for anyone else."""
    host = config.host_by_mac(mac) if mac else None
    return host.profile if host is not None else Profile.DEFAULT


def modes_for(instance: Instance, profile: Profile) -> list[BootMode]:
    if profile is Profile.MASTER:
        return [BootMode.RW]
    return sorted(instance.modes, key=MODE_ORDER.index)


def kernel_cmdline(config: Config, instance: Instance, mode: BootMode) -> str:
    """The seed's command line: `sidus=<mode> ip=dhcp root=nfs:<server>:<root>:<options> ...`."""
    options = config.nfs.options
    parts = []
    if mode is BootMode.RW:
        options = options + ",rw" if "rw" not in options.split(",") else options
    else:
        parts.append(f"sidus={mode.value}")
    parts += ["ip=dhcp", f"root=nfs:{config.server_ip}:{instance.root}:{options}"]
    parts += [a for a in (config.kernel_args.strip(), instance.append.strip()) if a]
    return " ".join(parts)


def menu_for(config: Config, mac: str | None) -> Menu:
    """The menu of the machine with this normalised MAC (None: the `default` file)."""
    profile = profile_for(config, mac)
    entries: list[MenuEntry] = []
    notes: list[str] = []
    for inst in config.instances:
        versions = kernel_versions(inst.root)
        if not versions:
            notes.append(f"instance {inst.name}: no vmlinuz-*/initrd.img-* pair in {inst.root}/boot, no entry")
            continue
        version = versions[0]
        for mode in modes_for(inst, profile):
            title = f"{inst.label or inst.name} ({mode.menu_label}, {version})"
            entries.append(MenuEntry(f"{inst.name}-{mode.value}", title, inst.name, mode, version,
                                     kernel_name(version, inst.name), initrd_name(version, inst.name),
                                     kernel_cmdline(config, inst, mode)))
    return Menu(mac, profile, config.domain, tuple(entries), tuple(notes))
