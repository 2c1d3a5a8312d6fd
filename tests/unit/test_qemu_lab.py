"""The QEMU lab's pure parts: marker and serial-log parsing, QEMU argv, module closure, cpio."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest

from sidus_appliance.lab import qemu, testkernel

from ..conftest import require

# Excerpts of real serial logs from the lab (SeaBIOS+iPXE, OVMF+iPXE, OVMF native PXE).
BIOS_LOG = (
    "\x1b[2JSeaBIOS (version 1.16.2-debian-1.16.2-1)\r\n"
    "iPXE 1.0.0+git-20190125.36a4c85-5.1 -- Open Source Network Boot Firmware\r\n"
    "Configuring (net0 52:54:00:00:17:01).................. ok\r\n"
    "net0: 10.20.17.102/255.255.255.0 gw 10.20.17.254\r\n"
    "Next server: 10.20.17.254\r\nFilename: pxelinux.0\r\n"
    "tftp://10.20.17.254/pxelinux.0... ok\r\npxelinux.0 : 42430 bytes [PXE-NBP]\r\n"
    "PXELINUX 6.04 PXE 20200816 Copyright (C) 1994-2015 H. Peter Anvin et al\r\n"
    "Loading vmlinuz-6.1.0-56-amd64@lab... ok\r\nLoading initrd.img-6.1.0-56-amd64@lab...ok\r\n"
    "[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)\r\n"
    "SIDUS-MARKER ip=10.20.17.102 hostname=dhcp-102 domain=sidus.zone dns=10.20.17.254 "
    "mac=52:54:00:00:17:01 cmdline=BOOT_IMAGE=vmlinuz-6.1.0-56-amd64@lab initrd=initrd.img-6.1.0-56-amd64@lab "
    "sidus=overlay ip=dhcp root=nfs:10.20.17.254:/srv/nfsroot/lab:vers=3,tcp,nolock net.ifnames=0\r\n"
)
NATIVE_LOG = (
    ">>Start PXE over IPv4.\r\n  Station IP address is 10.20.17.102\r\n\r\n  Server IP address is 10.20.17.254\r\n"
    "  NBP filename is efi64/syslinux.efi\r\n  NBP filesize is 171456 Bytes\r\n Downloading NBP file...\r\n"
    "  NBP file downloaded successfully.\r\nGetting cached packet \r\nMy IP is 10.20.17.102\r\n"
    "Loading vmlinuz-6.1.0-56-amd64@lab... okLoading initrd.img-6.1.0-56-amd64@lab...ok"
)

# OVMF Secure Boot (.ms) native PXE through Debian's shim and GRUB; the grub.cfg echoes "Loading <name> ...".
SHIM_LOG = (
    ">>Start PXE over IPv4.\r\n  Station IP address is 10.20.17.10\r\n\r\n  Server IP address is 10.20.17.254\r\n"
    "  NBP filename is efi64/shimx64.efi\r\n  NBP filesize is 1048504 Bytes\r\n Downloading NBP file...\r\n"
    "  NBP file downloaded successfully.\r\n"
    'BdsDxe: loading Boot0001 "UEFI PXEv4 (MAC:5254005B0001)" from PciRoot(0x0)/Pci(0x2,0x0)/MAC(5254005B0001,0x1)'
    "/IPv4(0.0.0.0,0x0,DHCP,0.0.0.0,0.0.0.0,0.0.0.0)\r\n"
    'BdsDxe: starting Boot0001 "UEFI PXEv4 (MAC:5254005B0001)" from PciRoot(0x0)/Pci(0x2,0x0)/MAC(5254005B0001,0x1)'
    "/IPv4(0.0.0.0,0x0,DHCP,0.0.0.0,0.0.0.0,0.0.0.0)\r\n"
    "Fetching Netboot Image efi64/grubx64.efi\r\n\x1b[0m\x1b[30m\x1b[47mWelcome to GRUB!\r\n"
    "  Booting `lab (shared root, changes in RAM, 6.1.0-57-amd64)'\r\n"
    "Loading vmlinuz-6.1.0-57-amd64@lab ...\r\nLoading initrd.img-6.1.0-57-amd64@lab ...\r\n"
    "EFI stub: UEFI Secure Boot is enabled.\r\n"
    "[    0.000000] Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org)\r\n"
    "[    0.000000] secureboot: Secure boot enabled\r\n"
)
# The same firmware offered the unsigned syslinux.efi.
DENIED_LOG = (
    "  NBP filename is efi64/syslinux.efi\r\n  NBP file downloaded successfully.\r\n"
    'BdsDxe: failed to load Boot0001 "UEFI PXEv4 (MAC:5254005B0001)" from PciRoot(0x0)/Pci(0x2,0x0)'
    "/MAC(5254005B0001,0x1)/IPv4(0.0.0.0,0x0,DHCP,0.0.0.0,0.0.0.0,0.0.0.0): Access Denied\r\n"
    ">>Start PXE over IPv6.\r\n"
)
# OVMF UEFI HTTP boot (PXE off) chaining iPXE, which runs an iPXE script fetching kernel and initrd.
HTTP_LOG = (
    ">>Start HTTP Boot over IPv4....\r\n  Station IP address is 10.20.17.10\r\n\r\n"
    "  URI: http://10.20.17.254/ipxe/snponly.efi\r\n  File Size: 173792 Bytes\r\n"
    "\r  Downloading...1%\r  Downloading...100%"
    'BdsDxe: starting Boot0001 "UEFI HTTPv4 (MAC:5254005B0001)" from PciRoot(0x0)/Pci(0x2,0x0)'
    "/MAC(5254005B0001,0x1)/IPv4(0.0.0.0,0x0,DHCP,0.0.0.0,0.0.0.0,0.0.0.0)/Uri()\r\n"
    "net0: 10.20.17.10/255.255.255.0 gw 10.20.17.254\r\nFilename: http://10.20.17.254/boot.ipxe\r\n"
    "http://10.20.17.254/boot.ipxe... ok\r\nboot.ipxe : 426 bytes [script]\r\n"
    "http://10.20.17.254/vmlinuz-6.1.0-57-amd64%40lab... ok\r\n"
    "http://10.20.17.254/initrd.img-6.1.0-57-amd64%40lab... ok\r\n"
    "EFI stub: Loaded initrd from command line option\r\n"
    "[    0.000000] Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org)\r\n"
    "[    0.000000] secureboot: Secure boot disabled\r\n"
)


def test_marker_fields_and_cmdline() -> None:
    m = qemu.parse_marker(BIOS_LOG)
    assert m is not None
    assert (m.ip, m.hostname, m.domain, m.dns, m.mac) == (
        "10.20.17.102", "dhcp-102", "sidus.zone", "10.20.17.254", "52:54:00:00:17:01",
    )  # fmt: skip
    assert m.fqdn == "dhcp-102.sidus.zone"
    assert m.cmdline.startswith("BOOT_IMAGE=vmlinuz") and m.cmdline.endswith("net.ifnames=0")


def test_marker_incomplete_line_and_none_values() -> None:
    assert qemu.parse_marker("SIDUS-MARKER ip=10.0.0.1 hostname=x") is None  # no newline yet
    m = qemu.parse_marker("SIDUS-MARKER ip=none hostname=none domain=none dns=none mac=aa cmdline=quiet\n")
    assert m is not None and m.ip is None and m.hostname is None and m.fqdn is None and m.cmdline == "quiet"


def test_serial_report_ipxe_and_ovmf() -> None:
    bios = qemu.parse_serial(BIOS_LOG)
    assert bios.boot_file == "pxelinux.0"
    assert bios.firmware_ip == "10.20.17.102"
    assert bios.loaded == ("vmlinuz-6.1.0-56-amd64@lab", "initrd.img-6.1.0-56-amd64@lab")
    native = qemu.parse_serial(NATIVE_LOG)
    assert native.boot_file == "efi64/syslinux.efi"
    assert native.firmware_ip == "10.20.17.102"
    assert native.loaded == ("vmlinuz-6.1.0-56-amd64@lab", "initrd.img-6.1.0-56-amd64@lab")


def test_serial_report_secure_boot_shim_grub() -> None:
    report = qemu.parse_serial(SHIM_LOG)
    assert report.boot_file == "efi64/shimx64.efi"
    assert report.chained == ("efi64/grubx64.efi",)
    assert report.loaded == ("vmlinuz-6.1.0-57-amd64@lab", "initrd.img-6.1.0-57-amd64@lab")
    assert report.firmware_ip == "10.20.17.10"
    assert report.secure_boot is True and report.firmware_error is None
    # Before the kernel has spoken, nobody has said whether Secure Boot is on.
    assert qemu.parse_serial(SHIM_LOG[: SHIM_LOG.index("EFI stub")]).secure_boot is None


def test_serial_report_secure_boot_refusal() -> None:
    report = qemu.parse_serial(DENIED_LOG)
    assert report.boot_file == "efi64/syslinux.efi"
    assert report.firmware_error == 'Boot0001 "UEFI PXEv4 (MAC:5254005B0001)": Access Denied'
    assert qemu.ACCESS_DENIED_RE.search(DENIED_LOG)
    assert not qemu.ACCESS_DENIED_RE.search(SHIM_LOG + NATIVE_LOG)


def test_serial_report_http_boot_ipxe_script() -> None:
    report = qemu.parse_serial(HTTP_LOG)
    assert report.boot_file == "http://10.20.17.254/ipxe/snponly.efi"  # the firmware's URL, not iPXE's script
    assert report.firmware_ip == "10.20.17.10"
    # iPXE percent-encodes the '@'; the script itself is not a kernel or initrd.
    assert report.loaded == ("vmlinuz-6.1.0-57-amd64@lab", "initrd.img-6.1.0-57-amd64@lab")
    assert report.secure_boot is False and report.chained == ()


def test_phase_clock_secure_boot_and_http_paths() -> None:
    for log, phases in (
        (SHIM_LOG, {"dhcp", "loader", "grub", "kernel", "linux"}),
        (HTTP_LOG, {"dhcp", "loader", "kernel", "linux"}),
    ):
        clock = qemu.PhaseClock(start=0.0)
        clock.feed(log, 5.0)
        assert set(clock.seen) == phases


def test_phase_clock_times_each_phase_once() -> None:
    clock = qemu.PhaseClock(start=100.0)
    half = BIOS_LOG.index("Loading vmlinuz")
    clock.feed(BIOS_LOG[:half], 110.0)
    clock.feed(BIOS_LOG, 120.0)
    clock.feed(BIOS_LOG + "more", 130.0)
    assert clock.seen == {"dhcp": 10.0, "loader": 10.0, "kernel": 20.0, "linux": 20.0, "marker": 20.0}


def test_master_menu_detection() -> None:
    default = "initrd=x sidus=overlay ip=dhcp root=nfs:10.20.17.254:/srv/nfsroot/lab:vers=3,tcp,hard net.ifnames=0"
    master = "initrd=x ip=dhcp root=nfs:10.20.17.254:/srv/nfsroot/lab:vers=3,tcp,hard,rw net.ifnames=0"
    assert not qemu.is_master_cmdline(default)
    assert qemu.is_master_cmdline(master)
    assert qemu.is_master_cmdline("initrd=x root=/dev/nfs rw")
    assert not qemu.is_master_cmdline("initrd=x root=nfs:1.2.3.4:/r:vers=3,rwsize=1")


@pytest.mark.parametrize(
    ("firmware", "nic", "rom"),
    [("bios", "e1000", "pxe-e1000.rom"), ("uefi", "e1000", "efi-e1000.rom"), ("uefi-native", "virtio-net-pci", ""),
     ("uefi-secure", "virtio-net-pci", ""), ("uefi-http", "virtio-net-pci", ""),
     ("uefi-secure-http", "virtio-net-pci", "")],
)
def test_command_line(firmware: qemu.Firmware, nic: str, rom: str, tmp_path: Path) -> None:
    ipxe = any((d / rom).exists() for d in qemu.IPXE_ROM_DIRS)
    require("ipxe-qemu", root=False, ok=not rom or ipxe)
    secure_ovmf = any(c.exists() and v.exists() for c, v in qemu.OVMF_SECURE_PAIRS)
    require("ovmf (Secure Boot pair)", root=False, ok=firmware not in qemu.SECURE_FIRMWARES or secure_ovmf)
    ovmf = any(c.exists() for c, _ in qemu.OVMF_PAIRS) or any(p.exists() for p in qemu.OVMF_COMBINED)
    require("ovmf", root=False, ok=firmware == "bios" or ovmf)
    argv = qemu.build_command(firmware, "52:54:00:00:17:01", "tap0", tmp_path / "s.log", tmp_path, "tcg")
    joined = " ".join(argv)
    assert "-no-reboot" in argv and "tap,id=n0,ifname=tap0,script=no,downscript=no" in joined
    device = argv[argv.index("-device") + 1]
    assert device.startswith(f"{nic},") and "mac=52:54:00:00:17:01" in device and "bootindex=1" in device
    if rom:
        assert device.endswith(f"/{rom}")
    else:
        assert device.endswith("romfile=")  # no iPXE: OVMF's own virtio-net driver and PXE stack
    assert ("pflash" in joined or "-bios" in argv) is (firmware != "bios")
    assert qemu.in_netns("ns1", ["x"]) == ["ip", "netns", "exec", "ns1", "x"]
    secure = firmware in ("uefi-secure", "uefi-secure-http")
    # Secure Boot: the Microsoft-keys pair, which only starts on q35 with SMM, its flash locked to SMM.
    assert ("OVMF_CODE_4M.ms.fd" in joined or "OVMF_CODE.ms.fd" in joined) is secure
    assert ("-machine" in argv and argv[argv.index("-machine") + 1] == "q35,smm=on") is secure
    assert ("driver=cfi.pflash01,property=secure,value=on" in argv) is secure
    # HTTP boot: OVMF's PXE drivers off, so HTTPv4 is the first boot option.
    http = firmware in ("uefi-http", "uefi-secure-http")
    assert ("name=opt/org.tianocore/IPv4PXESupport,string=n" in argv) is http
    assert ("name=opt/org.tianocore/IPv6PXESupport,string=n" in argv) is http


def test_secure_vars_are_a_fresh_copy_of_the_ms_store(tmp_path: Path) -> None:
    require("ovmf", root=False, ok=all(c.exists() and v.exists() for c, v in qemu.OVMF_SECURE_PAIRS[:1]))
    copy = tmp_path / "vars.fd"
    copy.write_bytes(b"left over from an earlier boot")
    args = qemu.ovmf_args(copy, secure=True)
    code, template = qemu.OVMF_SECURE_PAIRS[0]
    assert args == ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                    "-drive", f"if=pflash,format=raw,unit=1,file={copy}"]  # fmt: skip
    assert copy.read_bytes() == template.read_bytes()


def test_secure_firmware_missing_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No fallback to a -bios image: it cannot enforce Secure Boot, and a test would pass unenforced.
    monkeypatch.setattr(qemu, "OVMF_SECURE_PAIRS", ((tmp_path / "no-code.fd", tmp_path / "no-vars.fd"),))
    with pytest.raises(qemu.QemuError, match="Secure Boot"):
        qemu.ovmf_args(tmp_path / "vars.fd", secure=True)


def test_every_firmware_has_an_arch_and_a_nic() -> None:
    assert set(qemu.FIRMWARE_ARCH) == set(qemu.FIRMWARES)
    assert qemu.FIRMWARE_ARCH["uefi-secure"] == 7 and qemu.FIRMWARE_ARCH["uefi-http"] == 16
    for firmware in qemu.NATIVE_FIRMWARES:
        assert qemu.nic_device(firmware, "52:54:00:00:00:01").startswith("virtio-net-pci,")


def test_unknown_firmware() -> None:
    with pytest.raises(qemu.QemuError):
        qemu.nic_device("floppy", "52:54:00:00:00:01")  # type: ignore[arg-type]


# ---------------------------------------------------------------- testkernel


def fake_module(path: Path, modinfo: dict[str, str]) -> Path:
    """A minimal ELF64 relocatable with a .modinfo section (what modinfo() reads)."""
    info = b"".join(f"{k}={v}".encode() + b"\0" for k, v in modinfo.items())
    shstr = b"\0.modinfo\0.shstrtab\0"
    body_off = 64
    info_off = body_off
    shstr_off = info_off + len(info)
    shoff = (shstr_off + len(shstr) + 7) & ~7
    header = b"\x7fELF" + bytes((2, 1, 1, 0)) + bytes(8)
    header += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2)
    sections = bytes(64)  # null section
    sections += struct.pack("<IIQQQQIIQQ", 1, 1, 2, 0, info_off, len(info), 0, 0, 1, 0)
    sections += struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, shstr_off, len(shstr), 0, 0, 1, 0)
    data = header + info + shstr
    data += bytes(shoff - len(data)) + sections
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_modinfo_and_closure_order(tmp_path: Path) -> None:
    root = tmp_path / "lib/modules/6.1.0-test"
    fake_module(root / "kernel/drivers/net/virtio_net.ko", {"depends": "net_failover,virtio", "license": "GPL"})
    fake_module(root / "kernel/drivers/net/net_failover.ko", {"depends": "failover"})
    fake_module(root / "kernel/net/core/failover.ko", {"depends": ""})
    fake_module(root / "kernel/drivers/virtio/virtio.ko", {"depends": ""})
    fake_module(root / "kernel/drivers/net/e1000.ko", {"depends": ""})
    (root / "modules.builtin").write_text("kernel/net/packet/af_packet.ko\n")
    assert testkernel.modinfo(root / "kernel/drivers/net/virtio_net.ko")["license"] == "GPL"
    order = [p.stem for p in testkernel.module_closure(root, ["virtio_net", "e1000", "af_packet"])]
    assert order == ["failover", "net_failover", "virtio", "virtio_net", "e1000"]
    with pytest.raises(RuntimeError, match="not found"):
        testkernel.module_closure(root, ["missing_driver"])


def read_newc(data: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    """name -> (mode, content, rdev) of a newc archive."""
    out, pos = {}, 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        f = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        content = data[pos : pos + filesize]
        pos = (pos + filesize + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out[name] = (f[1], content, (f[9], f[10]))


def test_initramfs_layout(tmp_path: Path) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF fake busybox")
    ko = fake_module(tmp_path / "e1000.ko", {"depends": ""})
    image = testkernel.build_initramfs([ko], busybox)
    assert image == testkernel.build_initramfs([ko], busybox)  # reproducible (mtime 0)
    entries = read_newc(gzip.decompress(image))
    assert entries["init"][0] == 0o100755 and b"SIDUS-MARKER" in entries["init"][1]
    assert b"poweroff -f" in entries["init"][1] and b"udhcpc" in entries["init"][1]
    assert entries["dev/console"][0] == 0o020600 and entries["dev/console"][2] == (5, 1)
    assert entries["bin/sh"] == (0o120777, b"busybox", (0, 0))
    assert entries["lib/modules/e1000.ko"][1] == ko.read_bytes()
    assert entries["etc/modules.order"][1] == b"e1000.ko\n"
    for d in ("bin", "dev", "proc", "sys", "tmp", "etc", "lib", "lib/modules"):
        assert entries[d][0] == 0o040755


def test_publish_places_kernel_in_instance_boot(tmp_path: Path) -> None:
    src = tmp_path / "cache"
    src.mkdir()
    (src / "vmlinuz-6.1.0-9-amd64").write_bytes(b"kernel")
    (src / "initrd.img-6.1.0-9-amd64").write_bytes(b"initrd")
    built = testkernel.TestKernel("6.1.0-9-amd64", src / "vmlinuz-6.1.0-9-amd64", src / "initrd.img-6.1.0-9-amd64")
    published = testkernel.publish(tmp_path / "nfsroot" / "lab", built)
    assert published.vmlinuz == tmp_path / "nfsroot/lab/boot/vmlinuz-6.1.0-9-amd64"
    assert published.initrd.read_bytes() == b"initrd"
    assert published.tftp_names("lab") == ("vmlinuz-6.1.0-9-amd64@lab", "initrd.img-6.1.0-9-amd64@lab")
    overrides = testkernel.instance_overrides(tmp_path / "nfsroot" / "lab")
    assert overrides["instances"][0]["name"] == "lab" and "console=ttyS0" in overrides["instances"][0]["append"]
