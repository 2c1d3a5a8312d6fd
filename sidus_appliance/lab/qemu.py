"""QEMU PXE clients for the lab, the tests and the benchmarks.

Six firmware paths, matching what real lab machines do:

- ``bios``: SeaBIOS + the NIC's iPXE option ROM (e1000, ``pxe-e1000.rom``); sends arch 0.
- ``uefi``: OVMF + the iPXE EFI ROM (e1000, ``efi-e1000.rom``; OVMF has no e1000 driver of its
  own, so iPXE's is the only network stack); sends arch 7.
- ``uefi-native``: OVMF's own VirtioNetDxe + PxeBcDxe (``virtio-net-pci,romfile=``); arch 7.
- ``uefi-secure``: as uefi-native, with Secure Boot enforced: Debian's OVMF ``.ms`` pair (Microsoft
  keys enrolled, SecureBoot on) on q35 with SMM, which that build requires. Only Microsoft-signed
  loaders run (Debian's shim); an unsigned one (syslinux.efi) ends in "Access Denied".
- ``uefi-http``: OVMF's own UEFI HTTP boot (HttpBootDxe), arch 16, vendor class
  ``HTTPClient:Arch:00016:UNDI:003000``; it only takes an offer that echoes option 60
  "HTTPClient" and carries a URL as boot file. Its PXE drivers are switched off through fw_cfg
  (``opt/org.tianocore/IPv4PXESupport``), else it tries PXEv4 and PXEv6 (~65 s) first.
- ``uefi-secure-http``: both of the above.

The guest is the test instance of :mod:`sidus_appliance.lab.testkernel`: it prints one ``SIDUS-MARKER``
line on the serial port and powers off, so a boot is "start QEMU, wait for the marker, read the
serial log". ``-no-reboot`` turns a guest reset into a QEMU exit, which is how a broken KVM
shows itself quickly (on our box nested KVM aborts on an MSR with ``-cpu host`` and hangs before
the kernel's first line without it); ``accel="auto"`` probes KVM once per process and falls back
to TCG, and retries a failed (or silent) KVM boot under TCG.

Timing fact (TCG, measured here): iPXE's "Configuring (net0 ...)" waits ~20 s for an IPv6 router
advertisement when no router is on the segment; one bare RA (router lifetime 0, no prefix) makes
it finish in ~3 s, and a BIOS boot to the marker took 12-14 s instead of 32 s. The appliance now
answers solicitations with that RA itself (ra.py, `dhcp.ipv6_ra_quench`); a boot against a server
without it (dnsmasq in bench/storm_boot.py) still pays the 20 s.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import unquote

from ..boot.kernels import parse_served_name
from ..boot.model import Profile
from .netns import end_process

Firmware = Literal["bios", "uefi", "uefi-native", "uefi-secure", "uefi-http", "uefi-secure-http"]
FIRMWARES: tuple[Firmware, ...] = ("bios", "uefi", "uefi-native", "uefi-secure", "uefi-http", "uefi-secure-http")
# The ones pxelinux/syslinux.efi boot (no Secure Boot, no HTTP boot): the benchmarks' default set.
SYSLINUX_FIRMWARES: tuple[Firmware, ...] = ("bios", "uefi", "uefi-native")
Accel = Literal["auto", "kvm", "tcg"]

QEMU = "qemu-system-x86_64"
IPXE_ROM_DIRS = (Path("/usr/lib/ipxe/qemu"), Path("/usr/share/qemu"))
OVMF_PAIRS = (
    (Path("/usr/share/OVMF/OVMF_CODE_4M.fd"), Path("/usr/share/OVMF/OVMF_VARS_4M.fd")),
    (Path("/usr/share/OVMF/OVMF_CODE.fd"), Path("/usr/share/OVMF/OVMF_VARS.fd")),
)
OVMF_COMBINED = (Path("/usr/share/qemu/OVMF.fd"), Path("/usr/share/ovmf/OVMF.fd"))
# Secure Boot: Debian's "ms" variable store has the Microsoft KEK/db enrolled and SecureBoot on;
# its code is the SMM build (a -bios image cannot enforce Secure Boot: no fallback).
OVMF_SECURE_PAIRS = (
    (Path("/usr/share/OVMF/OVMF_CODE_4M.ms.fd"), Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")),
    (Path("/usr/share/OVMF/OVMF_CODE.ms.fd"), Path("/usr/share/OVMF/OVMF_VARS.ms.fd")),
)
SECURE_FIRMWARES: frozenset[Firmware] = frozenset({"uefi-secure", "uefi-secure-http"})
HTTP_FIRMWARES: frozenset[Firmware] = frozenset({"uefi-http", "uefi-secure-http"})
# The firmwares that boot with OVMF's own virtio-net driver (no iPXE ROM).
NATIVE_FIRMWARES: frozenset[Firmware] = frozenset({"uefi-native"}) | SECURE_FIRMWARES | HTTP_FIRMWARES

MARKER_RE = re.compile(r"SIDUS-MARKER (?P<body>[^\r\n]*)\r?\n")
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1bc")
# Arch each firmware announces in DHCP option 93 (what the server should dispatch on).
FIRMWARE_ARCH: dict[Firmware, int] = {
    "bios": 0, "uefi": 7, "uefi-native": 7, "uefi-secure": 7, "uefi-http": 16, "uefi-secure-http": 16,
}  # fmt: skip


class QemuError(RuntimeError):
    pass


# ---------------------------------------------------------------- marker + serial log parsing


@dataclass(frozen=True)
class Marker:
    """The test instance's report: what DHCP gave it and the kernel command line the menu chose."""

    ip: str | None
    hostname: str | None
    domain: str | None
    dns: str | None
    mac: str | None
    cmdline: str

    @property
    def fqdn(self) -> str | None:
        if self.hostname and self.domain:
            return f"{self.hostname}.{self.domain}"
        return self.hostname


def parse_marker(text: str) -> Marker | None:
    """The first complete marker line in a serial log, or None."""
    m = MARKER_RE.search(strip_ansi(text))
    if not m:
        return None
    body = m.group("body").rstrip()
    head, _, cmdline = body.partition(" cmdline=")
    if head.startswith("cmdline="):
        head, cmdline = "", head[len("cmdline=") :]
    fields = dict(item.partition("=")[::2] for item in head.split())

    def get(key: str) -> str | None:
        value = fields.get(key, "")
        return None if value in ("", "none") else value

    return Marker(get("ip"), get("hostname"), get("domain"), get("dns"), get("mac"), cmdline.strip())


def strip_ansi(text: str) -> str:
    return _ANSI_RE.sub("", text)


@dataclass(frozen=True)
class SerialReport:
    """What the firmware and boot loader said on the serial port, for reports and assertions."""

    boot_file: str | None  # what the firmware fetched first (pxelinux.0, efi64/shimx64.efi, an http:// URL)
    config_tried: tuple[str, ...]  # pxelinux.cfg/... lookups in order
    loaded: tuple[str, ...]  # kernel/initrd names the boot loader loaded
    firmware_ip: str | None  # the address the firmware/boot loader got
    chained: tuple[str, ...] = ()  # second stages shim fetched (efi64/grubx64.efi)
    secure_boot: bool | None = None  # what the EFI stub / kernel said; None: not said (BIOS, no kernel yet)
    firmware_error: str | None = None  # OVMF's first refused boot option, e.g. '... : Access Denied'


_FETCH_RES = (
    re.compile(r"NBP filename is (?P<f>\S+)"),  # OVMF PxeBcDxe
    re.compile(r"^ *URI: (?P<f>\S+)", re.MULTILINE),  # OVMF HttpBootDxe: "  URI: http://10.20.17.254/..."
    re.compile(r"(?:tftp|https?)://[^/\s]+/(?P<f>\S+?)\.{3}"),  # iPXE: tftp://10.20.17.254/pxelinux.0... ok
    re.compile(r"Filename:\s*(?P<f>\S+)"),  # iPXE: "Filename: pxelinux.0"
)
# pxelinux "Loading vmlinuz-...@lab... ok" (a GRUB config echoing the same is read alike), or iPXE
# fetching a served kernel/initrd by URL (it percent-encodes the '@': vmlinuz-...%40lab).
_LOADED_RE = re.compile(r"Loading (?P<name>\S+?) ?\.{3}|(?:tftp|https?)://[^/\s]+/(?P<url>\S+?)\.{3}")
_SECURE_BOOT_ON = re.compile(r"secureboot: Secure boot enabled|EFI stub: UEFI Secure Boot is enabled")
_SECURE_BOOT_OFF = re.compile(r"secureboot: Secure boot disabled")
# OVMF's boot manager on a boot option it could not start; Secure Boot refusals say "Access Denied".
_FIRMWARE_ERROR_RE = re.compile(r'BdsDxe: failed to load (?P<option>Boot\w+ "[^"]*") from \S+: (?P<error>[^\n]+)')
ACCESS_DENIED_RE = re.compile(r'BdsDxe: failed to load Boot\w+ "[^"]*" from \S+: Access Denied')


def _loaded_names(text: str) -> tuple[str, ...]:
    names = []
    for m in _LOADED_RE.finditer(text):
        if m.group("name"):
            names.append(m.group("name"))
        elif parse_served_name(name := unquote(m.group("url")).rsplit("/", 1)[-1]) is not None:
            names.append(name)
    return tuple(names)


def parse_serial(text: str) -> SerialReport:
    text = strip_ansi(text).replace("\r", "\n")
    boot_file = None
    for rx in _FETCH_RES:
        m = rx.search(text)
        if m and m.group("f"):
            boot_file = m.group("f")
            break
    tried = tuple(dict.fromkeys(re.findall(r"Trying to load: (\S+)", text)))
    ip = None
    for rx in (
        re.compile(r"My IP address seems to be \S+ (\d+\.\d+\.\d+\.\d+)"),  # pxelinux
        re.compile(r"net\d: (\d+\.\d+\.\d+\.\d+)/"),  # iPXE
        re.compile(r"Station IP address is (\d+\.\d+\.\d+\.\d+)"),  # OVMF (PXE and HTTP boot)
    ):
        m = rx.search(text)
        if m:
            ip = m.group(1)
            break
    chained = tuple(re.findall(r"Fetching Netboot Image (\S+)", text))  # shim
    secure_boot = True if _SECURE_BOOT_ON.search(text) else False if _SECURE_BOOT_OFF.search(text) else None
    m = _FIRMWARE_ERROR_RE.search(text)
    error = f"{m.group('option')}: {m.group('error').strip()}" if m else None
    return SerialReport(boot_file, tried, _loaded_names(text), ip, chained, secure_boot, error)


# Boot phases as they show on the serial port, in order; the first line matching each is timed.
PHASES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("dhcp", re.compile(r"net\d: \d+\.\d+\.\d+\.\d+/|Station IP address is")),
    # The first boot program is in: pxelinux, OVMF starting a downloaded image (PXE or HTTP boot),
    # iPXE's "<name> : <size> bytes [<type>]".
    ("loader", re.compile(r"PXELINUX \d|Getting cached packet|NBP file downloaded|BdsDxe: starting Boot"
                          r"|\S+ : \d+ bytes \[")),
    ("grub", re.compile(r"Welcome to GRUB!")),  # shim's second stage (Secure Boot paths only)
    ("kernel", re.compile(r"Loading \S*vmlinuz|Booting `|https?://\S+/vmlinuz")),
    ("linux", re.compile(r"Linux version")),
    ("marker", re.compile(r"SIDUS-MARKER ")),
)


class PhaseClock:
    """Times the first appearance of each phase in a growing serial log (polled by the runner)."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.seen: dict[str, float] = {}
        self._pos = 0

    def feed(self, text: str, now: float) -> None:
        # Rescan from a little before the last position: a phase line may have been half-written.
        chunk = strip_ansi(text[max(0, self._pos - 200) :])
        self._pos = len(text)
        for name, rx in PHASES:
            if name not in self.seen and rx.search(chunk):
                self.seen[name] = round(now - self.start, 2)


# ---------------------------------------------------------------- command lines


def find_ipxe_rom(name: str) -> Path:
    for d in IPXE_ROM_DIRS:
        if (d / name).exists():
            return d / name
    raise QemuError(f"{name} not found in {', '.join(map(str, IPXE_ROM_DIRS))} (install ipxe-qemu)")


def ovmf_args(vars_copy: Path, secure: bool = False) -> list[str]:
    """OVMF as a read-only code flash + a fresh, writable copy of the variable store.

    Fresh per boot: OVMF saves the boot options it found, and a store inherited from a boot with
    another NIC (e1000 + iPXE) made a later virtio boot try PXEv6 and HTTP boot, never PXEv4.
    secure: the Secure Boot pair (Microsoft keys enrolled); it needs `secure_boot_machine_args()`."""
    for code, vars_template in OVMF_SECURE_PAIRS if secure else OVMF_PAIRS:
        if code.exists() and vars_template.exists():
            shutil.copyfile(vars_template, vars_copy)
            return [
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
            ]  # fmt: skip
    if secure:
        raise QemuError(f"OVMF Secure Boot firmware not found ({OVMF_SECURE_PAIRS[0][0]}; install ovmf)")
    for combined in OVMF_COMBINED:
        if combined.exists():
            return ["-bios", str(combined)]  # variables are volatile with -bios: nothing carries over
    raise QemuError("OVMF not found (install ovmf)")


def secure_boot_machine_args() -> list[str]:
    """What the SMM build of OVMF (Debian's .ms/.secboot code) needs to start and to keep its
    variables (the Secure Boot keys) out of the guest's reach: q35 with SMM and a secure flash.
    Measured under TCG: on the default `pc` machine that build prints nothing at all; q35 gets
    SMM by default from QEMU 7.2, said explicitly here."""
    return [
        "-machine", "q35,smm=on",
        "-global", "driver=cfi.pflash01,property=secure,value=on",
        "-global", "ICH9-LPC.disable_s3=1",  # S3 with SMM is unsupported; OVMF's docs ask for this
    ]  # fmt: skip


def http_boot_args() -> list[str]:
    """Switch OVMF's PXE drivers off (OvmfPkg RUNTIME_CONFIG.md), leaving UEFI HTTP boot as the
    first network boot option: otherwise PXEv4 runs first, and PXEv6 costs ~65 s to give up."""
    return [
        "-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=n",
        "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n",
    ]  # fmt: skip


def nic_device(firmware: Firmware, mac: str, netdev: str = "n0") -> str:
    # bootindex, not `-boot order=n`: OVMF only makes a PXE boot option for a NIC with a bootindex
    # (with -boot it tried the DVD and fell into the EFI shell).
    common = f"netdev={netdev},mac={mac},bootindex=1"
    if firmware == "bios":
        return f"e1000,{common},romfile={find_ipxe_rom('pxe-e1000.rom')}"
    if firmware == "uefi":
        return f"e1000,{common},romfile={find_ipxe_rom('efi-e1000.rom')}"
    if firmware in NATIVE_FIRMWARES:
        # Empty romfile: no iPXE, so OVMF's built-in virtio-net driver and PXE/HTTP stack do the boot.
        return f"virtio-net-pci,{common},romfile="
    raise QemuError(f"unknown firmware {firmware!r} (one of {', '.join(FIRMWARES)})")


def build_command(
    firmware: Firmware,
    mac: str,
    tap: str,
    serial_log: Path,
    workdir: Path,
    accel: Literal["kvm", "tcg"] = "tcg",
    memory_mb: int = 512,
) -> list[str]:
    """The QEMU argv for one PXE client on an existing tap device (run it in the tap's netns)."""
    cmd = [
        QEMU,
        "-accel", accel,
        "-m", str(memory_mb),
        "-smp", "1",
        "-nographic",
        "-serial", f"file:{serial_log}",
        "-monitor", "none",
        "-no-reboot",  # a reset ends QEMU: a stuck guest never loops through PXE again
        "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
        "-device", nic_device(firmware, mac),
    ]  # fmt: skip
    if accel == "kvm":
        cmd += ["-cpu", "host"]
    secure = firmware in SECURE_FIRMWARES
    if secure:
        cmd += secure_boot_machine_args()
    if firmware in HTTP_FIRMWARES:
        cmd += http_boot_args()
    if firmware != "bios":
        cmd += ovmf_args(workdir / f"{serial_log.stem}.OVMF_VARS.fd", secure)
    return cmd


def in_netns(netns: str | None, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


# ---------------------------------------------------------------- KVM probe


_kvm_usable: bool | None = None


def kvm_usable(kernel: Path | None = None, timeout: float = 8.0) -> bool:
    """Whether KVM actually runs a kernel here (cached per process; SIDUS_QEMU_ACCEL overrides).

    /dev/kvm existing is not enough: under nested virtualisation QEMU may abort on an MSR or the
    guest may hang before its first line. Boot the given kernel directly and wait for its banner.
    """
    global _kvm_usable
    forced = os.environ.get("SIDUS_QEMU_ACCEL", "auto")
    if forced in ("kvm", "tcg"):
        return forced == "kvm"
    if _kvm_usable is not None:
        return _kvm_usable
    _kvm_usable = False
    if kernel is None or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    with tempfile.TemporaryDirectory(prefix="sidus-kvm-") as tmp:
        log = Path(tmp) / "serial.log"
        argv = [
            QEMU, "-accel", "kvm", "-cpu", "host", "-m", "256", "-nographic", "-no-reboot",
            "-serial", f"file:{log}", "-monitor", "none", "-net", "none",
            "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1",
        ]  # fmt: skip
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                if log.exists() and "Linux version" in log.read_text(errors="replace"):
                    _kvm_usable = True
                    break
                time.sleep(0.1)
        finally:
            end_process(proc)
    return _kvm_usable


# ---------------------------------------------------------------- running a boot


@dataclass
class BootResult:
    firmware: Firmware
    mac: str
    accel: str
    ok: bool
    seconds: float  # QEMU start -> marker line complete (or -> failure)
    marker: Marker | None
    serial: SerialReport
    serial_log: Path
    reason: str = ""  # why it failed: timeout, exited without marker, ...
    phases: dict[str, float] = field(default_factory=dict)  # phase -> seconds since QEMU start
    attempts: list[str] = field(default_factory=list)  # e.g. ["kvm: exited without marker", "tcg: ok"]

    @property
    def menu(self) -> Profile | None:
        """Which menu the guest booted from (None without a marker)."""
        if self.marker is None:
            return None
        return Profile.MASTER if is_master_cmdline(self.marker.cmdline) else Profile.DEFAULT

    def row(self) -> dict[str, str]:
        """One line of a report table (lab boot, make demo)."""
        m = self.marker
        return {
            "firmware": self.firmware,
            "mac": self.mac,
            "address": (m.ip if m else None) or "-",
            "name": (m.fqdn if m else None) or "-",
            "boot file": self.serial.boot_file or "-",
            "menu": self.menu or "-",
            "secure boot": {True: "enforced", False: "off", None: "-"}[self.serial.secure_boot],
            "seconds": f"{self.seconds:.1f}" if self.ok else f"FAILED ({self.reason})",
            "accel": self.accel,
        }

    def summary(self) -> str:
        m = self.marker
        if not self.ok or m is None:
            return f"{self.firmware} {self.mac}: FAILED after {self.seconds:.1f}s ({self.reason}), {self.serial_log}"
        return (
            f"{self.firmware} {self.mac}: ip={m.ip} name={m.fqdn} boot_file={self.serial.boot_file} "
            f"menu={self.menu} {self.seconds:.1f}s ({self.accel})"
        )


def is_master_cmdline(cmdline: str) -> bool:
    """The master menu boots the shared root read-write: no sidus= mode and `rw` in the NFS options."""
    words = cmdline.split()
    if any(w.startswith("sidus=") for w in words):
        return False
    return "rw" in words or any(w.startswith("root=") and re.search(r"[:,]rw(,|$)", w) for w in words)


def run_once(
    firmware: Firmware,
    mac: str,
    tap: str,
    workdir: Path,
    accel: Literal["kvm", "tcg"],
    netns: str | None = None,
    timeout: float = 120.0,
    memory_mb: int = 512,
    stall: float | None = None,
) -> BootResult:
    """One QEMU run: start, wait for the marker (or exit/timeout), stop. No retries.

    stall: give up when the serial log has not grown for that long (a hung KVM guest)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"serial-{firmware}-{mac.replace(':', '')}-{accel}.log"
    log.unlink(missing_ok=True)
    argv = in_netns(netns, build_command(firmware, mac, tap, log, workdir, accel, memory_mb))
    (workdir / f"{log.stem}.cmd").write_text(" ".join(argv) + "\n")
    stderr = open(workdir / f"{log.stem}.stderr", "wb")  # noqa: SIM115 - closed in finally
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
    clock = PhaseClock(start)
    marker: Marker | None = None
    reason = ""
    seconds = 0.0
    grew_at, size = start, -1
    try:
        while True:
            text = log.read_text(errors="replace") if log.exists() else ""
            now = time.monotonic()
            if len(text) != size:
                grew_at, size = now, len(text)
            clock.feed(text, now)
            marker = parse_marker(text)
            seconds = now - start
            if marker is not None:
                break
            if ACCESS_DENIED_RE.search(text):
                # Secure Boot refused the loader; OVMF would go on through PXEv6 and HTTP boot for minutes.
                reason = "firmware refused the boot loader: Access Denied (Secure Boot)"
                break
            if proc.poll() is not None:
                text = log.read_text(errors="replace") if log.exists() else ""
                marker = parse_marker(text)
                if marker is None:
                    reason = f"QEMU exited (rc={proc.returncode}) without a marker"
                break
            if seconds > timeout:
                reason = f"no marker within {timeout:.0f}s"
                break
            if stall is not None and now - grew_at > stall:
                reason = f"serial output stalled for {stall:.0f}s"
                break
            time.sleep(0.05)
        if marker is not None:
            # The guest powers off right after the marker; let QEMU exit on its own.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
    finally:
        end_process(proc)
        stderr.close()
    text = log.read_text(errors="replace") if log.exists() else ""
    ok = marker is not None and marker.ip is not None
    if marker is not None and marker.ip is None:
        reason = "kernel booted but udhcpc got no lease"
    return BootResult(firmware, mac, accel, ok, seconds, marker, parse_serial(text), log, reason, phases=clock.seen)


def boot(
    firmware: Firmware,
    mac: str,
    tap: str,
    workdir: Path,
    netns: str | None = None,
    accel: Accel = "auto",
    timeout: float = 120.0,
    kernel: Path | None = None,
    memory_mb: int = 512,
) -> BootResult:
    """Boot one PXE client to the marker. auto: KVM when a probe shows it works, else TCG, and a
    KVM boot that fails is retried once under TCG. `kernel` (a vmlinuz) is only used by the probe."""
    if accel == "auto":
        order: list[Literal["kvm", "tcg"]] = ["kvm", "tcg"] if kvm_usable(kernel) else ["tcg"]
    else:
        order = [accel]
    attempts: list[str] = []
    result: BootResult | None = None
    for a in order:
        # Under KVM a healthy boot never goes quiet for long; a hung one should fall back quickly.
        result = run_once(firmware, mac, tap, workdir, a, netns, timeout, memory_mb, stall=30.0 if a == "kvm" else None)
        attempts.append(f"{a}: {'ok' if result.ok else result.reason} ({result.seconds:.1f}s)")
        # Only a KVM-specific failure is worth a TCG retry; a lease problem would fail the same way.
        if result.ok or (result.marker is not None and a == "kvm"):
            break
    assert result is not None
    result.attempts = attempts
    return result


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Boot one QEMU PXE client on an existing tap device")
    ap.add_argument("--firmware", choices=FIRMWARES, default="bios")
    ap.add_argument("--mac", default="52:54:00:12:34:56")
    ap.add_argument("--tap", required=True)
    ap.add_argument("--netns")
    ap.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "sidus-qemu")
    ap.add_argument("--print-command", action="store_true", help="print the QEMU argv and exit")
    args = ap.parse_args(argv)
    if args.print_command:
        accel = "tcg" if args.accel == "auto" else args.accel
        log = args.workdir / "serial.log"
        cmd = build_command(args.firmware, args.mac, args.tap, log, args.workdir, accel)
        print(" ".join(in_netns(args.netns, cmd)))
        return 0
    result = boot(args.firmware, args.mac, args.tap, args.workdir, args.netns, args.accel, args.timeout)
    print(result.summary())
    if result.marker:
        print(f"cmdline: {result.marker.cmdline}")
    print(f"attempts: {'; '.join(result.attempts)}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
