"""dnsmasq as the reference DHCP+TFTP server, and a materialised boot tree it can serve.

Our appliance serves a virtual tree (loaders, generated menus, kernels read from instance roots);
dnsmasq needs real files, so `materialise_tree` writes the same names: loaders at the top and
under efi64/, one menu file per name, and the kernel/initrd (hard links when possible).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

PXELINUX_DIR = Path("/usr/lib/PXELINUX")
BIOS_MODULES = Path("/usr/lib/syslinux/modules/bios")
EFI64_MODULES = Path("/usr/lib/syslinux/modules/efi64")
SYSLINUX_EFI64 = Path("/usr/lib/SYSLINUX.EFI/efi64/syslinux.efi")

# What pxelinux.0 / syslinux.efi load before they read a menu (plus menu modules a menu may use).
BIOS_FILES = {"pxelinux.0": PXELINUX_DIR / "pxelinux.0", "ldlinux.c32": BIOS_MODULES / "ldlinux.c32"}
EFI64_FILES = {"efi64/syslinux.efi": SYSLINUX_EFI64, "efi64/ldlinux.e64": EFI64_MODULES / "ldlinux.e64"}
MENU_MODULES = ("menu.c32", "libutil.c32", "libcom32.c32")


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)  # the 32 MiB initrd need not be copied per run
    except OSError:
        shutil.copyfile(src, dst)


def stage_loaders(root: Path) -> None:
    for name, src in {**BIOS_FILES, **EFI64_FILES}.items():
        _place(src, root / name)
    for mod in MENU_MODULES:
        _place(BIOS_MODULES / mod, root / mod)
        _place(EFI64_MODULES / mod, root / "efi64" / mod)


def simple_menu(kernel: str, initrd: str, append: str) -> str:
    return f"DEFAULT lab\nPROMPT 0\nTIMEOUT 0\nLABEL lab\n  KERNEL {kernel}\n  APPEND initrd={initrd} {append}\n"


def mirror(src_root: Path, root: Path) -> None:
    """Every file under src_root (e.g. our staged tftp.root) at the same path under root."""
    for src in src_root.rglob("*"):
        if src.is_file() and not src.name.startswith("."):
            _place(src, root / src.relative_to(src_root))


def materialise_tree(
    root: Path, files: Mapping[str, Path], menus: Mapping[str, str], loaders_from: Path | None = None
) -> None:
    """Loaders (mirrored from loaders_from, our staged tftp.root, else from the packages) +
    `files` (TFTP name -> source) + `menus` (pxelinux.cfg name -> text), each also under efi64/
    because syslinux.efi resolves every relative name against its own directory."""
    if loaders_from is not None:
        mirror(loaders_from, root)
    else:
        stage_loaders(root)
    for name, src in files.items():
        _place(src, root / name)
        _place(src, root / "efi64" / name)
    for name, text in menus.items():
        for base in (root, root / "efi64"):
            path = base / "pxelinux.cfg" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


def dnsmasq_argv(
    interface: str,
    tftp_root: Path,
    leasefile: Path,
    pool: tuple[str, str],
    netmask: str = "255.255.255.0",
    hosts: Mapping[str, tuple[str, str]] | None = None,
    domain: str | None = None,
    dns: str | None = None,
    log_dhcp: bool = True,
    tftp_max: int = 1000,
    ipxe_no_pxedhcp: bool = True,
    no_ping: bool = False,
) -> list[str]:
    """dnsmasq as DHCP (arch 0 -> pxelinux.0, 7/9 -> efi64/syslinux.efi) + TFTP, no DNS, foreground.

    hosts: MAC -> (address, name) reservations (names go out as option 12)."""
    argv = [
        "dnsmasq", "--no-daemon", "--port=0", "--conf-file=/dev/null",
        f"--interface={interface}", "--bind-interfaces", "--except-interface=lo",
        f"--dhcp-range={pool[0]},{pool[1]},{netmask},infinite",
        f"--dhcp-leasefile={leasefile}", "--dhcp-authoritative",
        "--dhcp-match=set:efi64,option:client-arch,7", "--dhcp-match=set:efi64,option:client-arch,9",
        "--dhcp-boot=tag:efi64,efi64/syslinux.efi", "--dhcp-boot=tag:!efi64,pxelinux.0",
        "--enable-tftp", f"--tftp-root={tftp_root}", f"--tftp-max={tftp_max}",
        "--dhcp-lease-max=10000", "--log-facility=-",
    ]  # fmt: skip
    if log_dhcp:
        argv.append("--log-dhcp")
    if ipxe_no_pxedhcp:
        # iPXE option 175.176 = 1: do not wait for a proxyDHCP offer (our config's ipxe_no_pxedhcp).
        argv.append("--dhcp-option=encap:175,176,1")
    if no_ping:
        # dnsmasq pings an address before offering it (a 3 s delay per new client) unless told not to.
        argv.append("--no-ping")
    for mac, (addr, name) in (hosts or {}).items():
        argv.append(f"--dhcp-host={mac},{addr},{name}")
    if domain:
        argv.append(f"--domain={domain}")
    if dns:
        argv.append(f"--dhcp-option=option:dns-server,{dns}")
    return argv
