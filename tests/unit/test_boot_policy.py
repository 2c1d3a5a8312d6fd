"""The boot policy alone: arch → loader, kernel names, Debian version order (against dpkg), MAC → menu."""

from __future__ import annotations

import itertools
import random
import subprocess
from pathlib import Path

import pytest

from sidus_appliance.boot.kernels import (
    BootImage,
    ImageKind,
    initrd_name,
    kernel_name,
    kernel_versions,
    parse_served_name,
    versions_in,
)
from sidus_appliance.boot.loaders import (
    DEFAULT_BOOT_FILE,
    DEFAULT_BOOT_FILES,
    Machine,
    boot_spec,
    http_url,
    ipxe_script,
)
from sidus_appliance.boot.menus import menu_for, profile_for
from sidus_appliance.boot.model import BootMode, ClientKind, Profile, Transfer
from sidus_appliance.boot.versions import compare_versions, newest_first
from tests.conftest import require
from tests.unit.test_boot_menus import MASTER, make_config, make_root

MAC = "52:54:00:12:34:56"


def spec(arch: int | None = None, vendor: bytes = b"PXEClient", user: bytes = b"", ipxe: bool = False,
         raw_arch: bytes | None = None):
    option93 = raw_arch if raw_arch is not None else (None if arch is None else arch.to_bytes(2, "big"))
    return boot_spec(Machine(MAC, option93, vendor, user, ipxe), DEFAULT_BOOT_FILES, DEFAULT_BOOT_FILE)


# ---------------------------------------------------------------- arch -> loader


@pytest.mark.parametrize(("arch", "loader"), [
    (0, "pxelinux.0"), (6, "efi32/syslinux.efi"), (7, "efi64/syslinux.efi"), (9, "efi64/syslinux.efi"),
    (11, "pxelinux.0"), (None, "pxelinux.0"),
])
def test_seed_arch_table(arch: int | None, loader: str) -> None:
    result = spec(arch)
    assert (result.kind, result.arch, result.loader, result.vendor_pxe) == (ClientKind.PXE, arch, loader, True)
    assert ("unknown arch" in result.note) == (arch not in (0, 6, 7, 9, None))
    assert not result.over_http


def test_uefi_http_boot_gets_ipxe_over_http() -> None:
    result = spec(16, vendor=b"HTTPClient:Arch:00016:UNDI:003000")
    assert (result.kind, result.loader, result.over_http) == (ClientKind.HTTP, "efi64/snponly.efi", True)
    assert spec(None, vendor=b"HTTPClient:Arch:00016").loader == "efi64/snponly.efi"
    assert http_url("10.20.17.254", 80, result.loader) == "http://10.20.17.254/efi64/snponly.efi"
    assert http_url("10.20.17.254", 8080, "/x.efi") == "http://10.20.17.254:8080/x.efi"


def test_a_reservation_names_its_own_loader() -> None:
    mine = {7: "efi64/shimx64.efi"}
    machine = Machine(MAC, (7).to_bytes(2, "big"), b"PXEClient")
    assert boot_spec(machine, DEFAULT_BOOT_FILES, DEFAULT_BOOT_FILE, host_files=mine).loader == "efi64/shimx64.efi"
    bios = Machine(MAC, (0).to_bytes(2, "big"), b"PXEClient")
    assert boot_spec(bios, DEFAULT_BOOT_FILES, DEFAULT_BOOT_FILE, host_files=mine).loader == "pxelinux.0"


def test_ipxe_over_http_gets_its_own_script() -> None:
    machine = Machine(MAC, (7).to_bytes(2, "big"), b"PXEClient", b"iPXE")
    over_tftp = boot_spec(machine, DEFAULT_BOOT_FILES, DEFAULT_BOOT_FILE)
    assert (over_tftp.kind, over_tftp.loader, over_tftp.over_http) == (ClientKind.IPXE, "efi64/syslinux.efi", False)
    over_http = boot_spec(machine, DEFAULT_BOOT_FILES, DEFAULT_BOOT_FILE, transfer=Transfer.HTTP)
    assert (over_http.loader, over_http.over_http) == ("ipxe/01-52-54-00-12-34-56", True)
    assert ipxe_script(MAC) == over_http.loader


def test_arch_from_vendor_class_when_option_93_is_missing() -> None:
    assert spec(None, vendor=b"PXEClient:Arch:00007:UNDI:003016").loader == "efi64/syslinux.efi"
    assert spec(None, vendor=b"PXEClient:Arch:00000:UNDI:002001").arch == 0


def test_ipxe_by_option_175_or_user_class_and_several_arches_take_the_first() -> None:
    assert spec(7, ipxe=True).kind is ClientKind.IPXE
    assert spec(0, vendor=b"", user=b"iPXE").kind is ClientKind.IPXE
    assert spec(raw_arch=b"\x00\x07\x00\x00").arch == 7
    short = spec(raw_arch=b"\x07")
    assert short.arch is None and short.loader == "pxelinux.0" and "bad option 93" in short.note


def test_a_plain_client_gets_no_loader() -> None:
    result = spec(None, vendor=b"udhcp 1.35")
    assert (result.kind, result.loader) == (ClientKind.PLAIN, None)


def test_the_config_overrides_a_row_and_the_fallback(tmp_path: Path) -> None:
    config = make_config(tmp_path, dhcp={"boot_files": {7: "efi64/shimx64.efi"}, "default_boot_file": "x.0"})
    machine = Machine(MAC, (7).to_bytes(2, "big"), b"PXEClient")
    assert boot_spec(machine, config.dhcp.boot_files, config.dhcp.default_boot_file).loader == "efi64/shimx64.efi"
    other = Machine(MAC, (11).to_bytes(2, "big"), b"PXEClient")
    assert boot_spec(other, config.dhcp.boot_files, config.dhcp.default_boot_file).loader == "x.0"


# ---------------------------------------------------------------- kernel names


def test_kernel_names_round_trip() -> None:
    assert kernel_name("6.1.0-18-amd64", "bookworm") == "vmlinuz-6.1.0-18-amd64@bookworm"
    assert initrd_name("6.1.0-18-amd64", "bookworm") == "initrd.img-6.1.0-18-amd64@bookworm"
    image = parse_served_name("initrd.img-6.12.48+deb13-amd64@trixie")
    assert image == BootImage(ImageKind.INITRD, "6.12.48+deb13-amd64", "trixie")
    assert image.boot_parts == ("boot", "initrd.img-6.12.48+deb13-amd64")
    assert parse_served_name(image.served_name) == image


@pytest.mark.parametrize("name", ["vmlinuz-6.1@", "vmlinuz-@lab", "pxelinux.0", "vmlinuz-6.1", "lab@vmlinuz-1",
                                  "vmlinuz-1@2@lab", "initrd.img-@x", "splash.png"])
def test_other_names_are_not_instance_files(name: str) -> None:
    assert parse_served_name(name) is None


def test_versions_need_an_initrd_and_come_newest_first(tmp_path: Path) -> None:
    names = {"vmlinuz-6.1.0-9-amd64", "initrd.img-6.1.0-9-amd64", "vmlinuz-6.1.0-18-amd64",
             "initrd.img-6.1.0-18-amd64", "vmlinuz-6.2.0-1-amd64", "vmlinuz-x@y", "initrd.img-x@y", "config-6.1"}
    assert versions_in(names) == ["6.1.0-18-amd64", "6.1.0-9-amd64"]
    root = make_root(tmp_path, "lab", ["6.1.0-rc1-amd64", "6.1.0-18-amd64"])
    # The builder's old key raised TypeError comparing these two (int against str).
    assert kernel_versions(root) == ["6.1.0-rc1-amd64", "6.1.0-18-amd64"]  # dpkg: letters sort after digits


# ---------------------------------------------------------------- Debian version order

REAL_VERSIONS = [
    # kernels (ABI strings and package versions), bookworm and trixie
    "6.1.0-18-amd64", "6.1.0-9-amd64", "6.1.0-rc1-amd64", "5.10.0-28-amd64", "6.12.48+deb13-amd64",
    "6.12.41+deb13-amd64", "6.1.76-1", "6.1.158-1", "6.12.48-1", "6.12.48-1~bpo12+1", "6.1.0-0.deb11.17",
    # shapes found in the archive: epochs, tildes, pluses, dfsg, git snapshots, revisions
    "1:2.06-13+deb12u1", "2.06-13", "1:9.18.28-1~deb12u2", "1:9.18.24-1", "2:4.17.12+dfsg-0+deb12u1",
    "1.0~rc1", "1.0~rc1-1", "1.0", "1.0-1", "1.0-1+b1", "1.0+dfsg-1", "1.0.0", "1.00", "1.0a", "1.0~~",
    "1.0~", "0.0~git20230123.b2528b0-1", "0.1.29-1", "0.10.2-1", "0.9.24-1", "2.90-4", "2.9-4",
    "15.7-1+deb12u1", "15.8-1", "3.11.2-1+b1", "3.11.2-6+deb12u2", "1:1.2.13.dfsg-1", "7.88.1-10+deb12u8",
    "252.33-1~deb12u1", "252.30-1~deb12u2", "2.38.1-5+deb12u3", "1.5.2-1", "1.5.2a-1", "1.5.2-1ubuntu1",
    "0:1.0", "00001.0", "1.0-0", "1.0-00", "a", "1.2.3~beta4+really1.2.2-1", "20230210-5", "20230311",
]


def _dpkg(a: str, relation: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, relation, b], capture_output=True).returncode == 0


def test_version_order_agrees_with_dpkg() -> None:
    require("comparing with dpkg", root=False, tools=["dpkg", "dpkg-query"])
    installed = subprocess.run(["dpkg-query", "-W", "-f", "${Version}\\n"], capture_output=True, text=True,
                               check=True).stdout.split()
    rng = random.Random(1)
    versions = sorted(set(REAL_VERSIONS) | set(rng.sample(sorted(set(installed)), min(150, len(set(installed))))))
    ordered = newest_first(versions)[::-1]  # oldest first
    # Every adjacent pair agrees with dpkg: with dpkg a total order, so does the whole sort.
    for a, b in itertools.pairwise(ordered):
        relation = "eq" if compare_versions(a, b) == 0 else "lt"
        assert _dpkg(a, relation, b), f"ours: {a} {relation} {b}; dpkg disagrees"
    for _ in range(150):  # and random pairs, both ways
        a, b = rng.choice(versions), rng.choice(versions)
        ours = compare_versions(a, b)
        assert _dpkg(a, {-1: "lt", 0: "eq", 1: "gt"}[ours], b), f"{a} vs {b}: ours {ours}"
        assert compare_versions(b, a) == -ours


# ---------------------------------------------------------------- MAC -> menu


def test_mac_to_profile_and_entries(tmp_path: Path) -> None:
    make_root(tmp_path, "bookworm", ["6.1.0-9-amd64", "6.1.0-18-amd64"])
    make_root(tmp_path, "trixie", ["6.12.48+deb13-amd64"])
    config = make_config(tmp_path, [{"name": "bookworm", "modes": ["rw", "overlay"]}, {"name": "trixie"}])
    assert profile_for(config, MASTER) is Profile.MASTER and profile_for(config, MAC) is Profile.DEFAULT
    assert profile_for(config, None) is Profile.DEFAULT
    default = menu_for(config, MAC)
    assert [(e.instance, e.mode, e.version) for e in default.entries] == [
        ("bookworm", BootMode.OVERLAY, "6.1.0-18-amd64"), ("bookworm", BootMode.RW, "6.1.0-18-amd64"),
        ("trixie", BootMode.OVERLAY, "6.12.48+deb13-amd64")]
    assert default.entries[0].kernel == "vmlinuz-6.1.0-18-amd64@bookworm"
    assert default.entries[0].cmdline.startswith("sidus=overlay ip=dhcp root=nfs:10.20.17.254:")
    master = menu_for(config, MASTER)
    assert master.profile is Profile.MASTER
    assert [(e.instance, e.mode) for e in master.entries] == [("bookworm", BootMode.RW), ("trixie", BootMode.RW)]
    assert all("sidus=" not in e.cmdline and ",rw " in e.cmdline + " " for e in master.entries)


def test_an_instance_without_kernels_is_a_note_not_an_entry(tmp_path: Path) -> None:
    config = make_config(tmp_path, [{"name": "empty"}])
    menu = menu_for(config, None)
    assert menu.entries == () and "instance empty" in menu.notes[0]
