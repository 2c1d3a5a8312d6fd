"""A small test instance for the lab: a Debian kernel and a busybox initramfs that prints one marker line.

The kernel comes from the Debian archive (`apt-get download`, unpacked with `dpkg-deb -x`), so what
boots in the lab is the same kernel a SIDUS instance would boot. Debian builds the NIC drivers as
modules and its package ships no modules.dep (depmod runs at install time), so the dependency
closure is read from each module's own `.modinfo` section.

The initramfs is written by Python (cpio newc + gzip, fixed mtimes): no root-owned staging tree,
device nodes without mknod, and byte-identical output for identical inputs.

The guest's /init brings up the first NIC with busybox udhcpc and prints on the serial port:

    SIDUS-MARKER ip=<ip> hostname=<option 12> domain=<option 15> mac=<mac> cmdline=<kernel cmdline>

then powers off, so QEMU exits and the harness needs no guest agent.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sidus_appliance.boot.kernels import ImageKind, boot_path, initrd_name, kernel_name

DEFAULT_CACHE = Path("/var/cache/sidus-appliance/testkernel")
BUSYBOX = Path("/bin/busybox")
MARKER = "SIDUS-MARKER"

# virtio_net for virtio-net-pci (OVMF's own PXE), e1000 for the iPXE NICs; deps come from .modinfo.
NIC_MODULES: tuple[str, ...] = ("virtio_pci", "virtio_net", "e1000")

# Runs as PID 1. Writes the marker to ttyS0 only (not also /dev/console, which may be ttyS0 too),
# so the serial log holds exactly one marker line whatever console= the menu passes.
INIT_SCRIPT = r"""#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
out=/dev/ttyS0
[ -c $out ] || out=/dev/console
while read -r m; do insmod "/lib/modules/$m" 2>/dev/null; done < /etc/modules.order
ip link set lo up
# net.ifnames=0 names it eth0; without it take the first NIC the kernel found.
iface=eth0
[ -e /sys/class/net/$iface ] || iface=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
mac=$(cat /sys/class/net/$iface/address 2>/dev/null)
ip link set "$iface" up
ip=none; hostname=none; domain=none; dns=none
if udhcpc -i "$iface" -f -q -n -t 5 -T 2 -s /etc/udhcpc.script >/dev/null 2>&1 && [ -f /tmp/lease ]; then
    . /tmp/lease
fi
echo "SIDUS-MARKER ip=$ip hostname=$hostname domain=$domain dns=$dns mac=$mac cmdline=$(cat /proc/cmdline)" > $out
sync
poweroff -f
"""

UDHCPC_SCRIPT = r"""#!/bin/sh
case "$1" in
  bound|renew)
    ip addr add "$ip/${mask:-24}" dev "$interface"
    echo "ip=$ip hostname=${hostname:-none} domain=${domain:-none} dns=$(echo ${dns:-none} | tr ' ' ',')" > /tmp/lease
    ;;
esac
exit 0
"""


@dataclass(frozen=True)
class TestKernel:
    """A built kernel + initramfs pair, as published into an instance root."""

    __test__ = False  # not a pytest class despite the name

    version: str  # e.g. 6.1.0-56-amd64
    vmlinuz: Path
    initrd: Path

    def tftp_names(self, instance: str) -> tuple[str, str]:
        """The names the virtual boot tree serves them under."""
        return kernel_name(self.version, instance), initrd_name(self.version, instance)


# ---------------------------------------------------------------- kernel package


def default_version(cache_dir: Path = DEFAULT_CACHE) -> str:
    """The ABI version the linux-image-amd64 metapackage points at (e.g. 6.1.0-56-amd64).

    Without apt lists (no `apt-get update` yet, offline CI), the newest package already in
    cache_dir will do: the lab needs a kernel, not the latest one."""
    out = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True).stdout
    found = re.findall(r"Depends:\s*linux-image-(\d[\w.+~-]*-amd64)\b", out)
    if found:
        return found[0]
    cached = sorted(cache_dir.glob("linux-image-*-amd64_*_amd64.deb"), key=lambda p: p.stat().st_mtime)
    if cached:
        return cached[-1].name.split("_", 1)[0].removeprefix("linux-image-")
    raise RuntimeError(
        "cannot tell the kernel version: `apt-cache depends linux-image-amd64` names none "
        f"(run apt-get update) and {cache_dir} holds no kernel package"
    )


def fetch_package(version: str, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """The kernel .deb in cache_dir, downloaded with `apt-get download` when absent."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    pattern = f"linux-image-{version}_*_amd64.deb"
    found = sorted(cache_dir.glob(pattern))
    if not found:
        subprocess.run(["apt-get", "download", f"linux-image-{version}"], cwd=cache_dir, check=True)
        found = sorted(cache_dir.glob(pattern))
        if not found:
            raise RuntimeError(f"apt-get download left no {pattern} in {cache_dir}")
    return found[-1]


def unpack(deb: Path, dest: Path) -> Path:
    """dpkg-deb -x into dest (once); returns dest."""
    stamp = dest / ".unpacked"
    if not stamp.exists():
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
        stamp.write_text(deb.name + "\n")
    return dest


# ---------------------------------------------------------------- module dependencies


def modinfo(path: Path) -> dict[str, str]:
    """Key/value strings of a kernel module's .modinfo ELF section (first value per key)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path}: not a little-endian ELF64 module")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, offset, size

    _, stroff, _ = section(shstrndx)
    info: dict[str, str] = {}
    for i in range(shnum):
        name, offset, size = section(i)
        if data[stroff + name : data.index(b"\0", stroff + name)] != b".modinfo":
            continue
        for item in data[offset : offset + size].split(b"\0"):
            key, sep, value = item.decode(errors="replace").partition("=")
            if sep:
                info.setdefault(key, value)
    return info


def module_index(modroot: Path) -> dict[str, Path]:
    """Module name (dashes as underscores) -> .ko path, under lib/modules/<ver>."""
    index: dict[str, Path] = {}
    for ko in modroot.rglob("*.ko*"):
        name = ko.name.split(".ko")[0].replace("-", "_")
        index[name] = ko
    return index


def module_closure(modroot: Path, wanted: Iterable[str]) -> list[Path]:
    """The wanted modules and their dependencies, dependencies first (insmod order)."""
    index = module_index(modroot)
    builtin = set()
    builtin_file = modroot / "modules.builtin"
    if builtin_file.exists():
        builtin = {Path(line).name.split(".ko")[0].replace("-", "_") for line in builtin_file.read_text().split()}
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in seen or name in builtin:
            return
        if name in chain:
            raise RuntimeError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        ko = index.get(name)
        if ko is None:
            raise RuntimeError(f"module {name} not found under {modroot}")
        for dep in filter(None, modinfo(ko).get("depends", "").split(",")):
            visit(dep, (*chain, name))
        seen.add(name)
        order.append(ko)

    for name in wanted:
        visit(name, ())
    return order


# ---------------------------------------------------------------- cpio newc


class CpioWriter:
    """Minimal cpio "newc" archive writer (what the kernel's initramfs unpacker reads)."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 1
        self._dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 2 if mode & 0o040000 else 1, 0, len(data), 0, 0, *rdev, len(encoded), 0)
        self._ino += 1
        self._buf.write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        self._pad()
        self._buf.write(data)
        self._pad()

    def _pad(self) -> None:
        self._buf.write(b"\0" * (-self._buf.tell() % 4))

    def mkdir(self, name: str, mode: int = 0o755) -> None:
        """Add a directory (and its parents), once."""
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            path = "/".join(parts[:i])
            if path not in self._dirs:
                self._dirs.add(path)
                self._entry(path, 0o040000 | mode)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        name = name.strip("/")
        if "/" in name:
            self.mkdir(name.rsplit("/", 1)[0])
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        name = name.strip("/")
        if "/" in name:
            self.mkdir(name.rsplit("/", 1)[0])
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        name = name.strip("/")
        if "/" in name:
            self.mkdir(name.rsplit("/", 1)[0])
        self._entry(name, 0o020000 | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self._buf.getvalue()


def build_initramfs(modules: list[Path], busybox: Path = BUSYBOX) -> bytes:
    """gzip'd cpio of busybox, the NIC modules (in insmod order) and the marker /init."""
    cpio = CpioWriter()
    for d in ("bin", "dev", "proc", "sys", "tmp", "etc", "lib/modules"):
        cpio.mkdir(d)
    # The kernel opens /dev/console before /init runs, i.e. before devtmpfs is mounted.
    cpio.chardev("dev/console", 5, 1)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    cpio.symlink("bin/sh", "busybox")
    cpio.file("init", INIT_SCRIPT.encode(), 0o755)
    cpio.file("etc/udhcpc.script", UDHCPC_SCRIPT.encode(), 0o755)
    for ko in modules:
        cpio.file(f"lib/modules/{ko.name}", ko.read_bytes())
    cpio.file("etc/modules.order", "".join(f"{ko.name}\n" for ko in modules).encode())
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


# ---------------------------------------------------------------- build + publish


def _recipe_digest(version: str, modules: list[Path], busybox: Path) -> str:
    h = hashlib.sha256()
    for part in (version, INIT_SCRIPT, UDHCPC_SCRIPT, *(m.name for m in modules)):
        h.update(part.encode() + b"\0")
    st = busybox.stat()
    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def build(
    version: str | None = None,
    cache_dir: Path = DEFAULT_CACHE,
    modules: Iterable[str] = NIC_MODULES,
    busybox: Path = BUSYBOX,
) -> TestKernel:
    """Download/unpack the kernel and build the initramfs in cache_dir; cached across runs."""
    version = version or default_version(cache_dir)
    deb = fetch_package(version, cache_dir)
    tree = unpack(deb, cache_dir / f"linux-{version}")
    vmlinuz = tree / boot_path(ImageKind.KERNEL, version)
    if not vmlinuz.exists():
        raise RuntimeError(f"{deb.name} holds no {boot_path(ImageKind.KERNEL, version)}")
    kos = module_closure(tree / "lib" / "modules" / version, modules)
    initrd = cache_dir / Path(boot_path(ImageKind.INITRD, version)).name
    stamp = initrd.with_name(initrd.name + ".recipe")
    digest = _recipe_digest(version, kos, busybox)
    if not initrd.exists() or not stamp.exists() or stamp.read_text().strip() != digest:
        tmp = initrd.with_suffix(".tmp")
        tmp.write_bytes(build_initramfs(kos, busybox))
        os.replace(tmp, initrd)
        stamp.write_text(digest + "\n")
    return TestKernel(version, vmlinuz, initrd)


def publish(instance_root: Path, kernel: TestKernel | None = None, cache_dir: Path = DEFAULT_CACHE) -> TestKernel:
    """Place vmlinuz-<ver> and initrd.img-<ver> into <instance_root>/boot (what the TFTP tree serves)."""
    kernel = kernel or build(cache_dir=cache_dir)
    boot = instance_root / "boot"
    boot.mkdir(parents=True, exist_ok=True)
    published = TestKernel(kernel.version, instance_root / boot_path(ImageKind.KERNEL, kernel.version),
                           instance_root / boot_path(ImageKind.INITRD, kernel.version))
    for src, dst in ((kernel.vmlinuz, published.vmlinuz), (kernel.initrd, published.initrd)):
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            tmp = dst.with_name(dst.name + ".tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
    return published


def instance_overrides(instance_root: Path, name: str = "lab", modes: tuple[str, ...] = ("overlay",)) -> dict:
    """Config overrides declaring the published test instance (for lab.write_lab_config).

    console=ttyS0 only adds the kernel's own messages to the serial log (the marker goes to
    ttyS0 regardless); they let the QEMU runner time the kernel phase."""
    return {"instances": [{"name": name, "root": str(instance_root), "append": "console=ttyS0", "modes": list(modes)}]}


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Build the lab's test kernel + marker initramfs")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--version", help="kernel ABI, e.g. 6.1.0-56-amd64 (default: linux-image-amd64's)")
    ap.add_argument("--publish", type=Path, metavar="INSTANCE_ROOT", help="also copy into INSTANCE_ROOT/boot")
    args = ap.parse_args(argv)
    kernel = build(args.version, args.cache_dir)
    if args.publish:
        kernel = publish(args.publish, kernel)
    print(f"kernel {kernel.vmlinuz}\ninitrd {kernel.initrd} ({kernel.initrd.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
