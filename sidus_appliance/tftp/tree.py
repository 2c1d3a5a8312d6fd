"""The virtual boot tree TFTP serves: staged boot loaders, generated menus, instance kernels.

    pxelinux.0, ldlinux.c32, ...          files under tftp.root (staged by `bootfiles install`)
    efi64/syslinux.efi, efi64/*.c32       files under tftp.root/efi64 (arch modules stay apart)
    [efiNN/]pxelinux.cfg/default          generated: the default profile's menu
    [efiNN/]pxelinux.cfg/01-<mac>         generated: the menu of that MAC's profile
    [efiNN/]pxelinux.cfg/<hex ip>         generated when the address is a reservation or lease
    grub/grub.cfg                         generated: loads grub/grub.cfg-$net_default_mac (signed GRUB)
    grub/grub.cfg-<mac>, -default         generated: that MAC's menu for GRUB (same entries)
    ipxe/01-<mac>                         generated: that MAC's menu as an iPXE script (http.transfer: http)
    [efiNN/]vmlinuz-<ver>@<instance>      <instance root>/boot/vmlinuz-<ver>, read in place
    [efiNN/]initrd.img-<ver>@<instance>   <instance root>/boot/initrd.img-<ver>
    [efiNN/]splash.*                      the one shared copy under tftp.root

Every other pxelinux.cfg lookup (UUID, hex prefixes) is a fast "file not found". No request
leaves the tree: `..`, symlinks out of the root, NUL bytes and over-long names are refused.
Files are opened by jail.open_beneath (tftp.root for staged files, the instance root for
kernels): resolved by the kernel beneath the root in one step, regular files only, never a
blocking open; netascii is converted while sending (netascii.py), never as a whole-file copy.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from sidus_appliance.boot import grub, ipxe
from sidus_appliance.boot.kernels import BootImage, parse_served_name
from sidus_appliance.boot.loaders import IPXE_SCRIPTS
from sidus_appliance.boot.menus import menu_for
from sidus_appliance.boot.model import Transfer
from sidus_appliance.boot.pxelinux import render_menu
from sidus_appliance.config import Config, normalize_mac
from sidus_appliance.jail import NotRegularFile, open_beneath
from sidus_appliance.tftp import protocol
from sidus_appliance.tftp.netascii import NetasciiReader, ScanCache

ARCH_DIRS = ("efi32", "efi64")
GENERATED = ("pxelinux.cfg", grub.MENUS_DIR, IPXE_SCRIPTS)  # directories whose names we synthesise
MAX_COMPONENT = 255
# netascii needs one scan of the file (CR/LF count: its converted size) before the first block,
# on the event loop; 64 MiB of page cache is a few tens of ms once per file (the result is cached).
# Beyond, ask for octet: netascii is for text, no boot loader uses it for kernels.
NETASCII_SCAN_LIMIT = 64 << 20
_BUSY_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.ENOBUFS)


class TreeError(Exception):
    """A request the tree will not serve: TFTP error code, message, and whether it was an attack
    on the tree (logged as a warning with the client's address) or an ordinary miss."""

    def __init__(self, code: int, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.refused = refused


def tree_error(exc: OSError) -> TreeError:
    """What an OSError from opening a client's file means for the client."""
    if isinstance(exc, NotRegularFile):
        if exc.is_directory:
            return TreeError(protocol.ERR_NOT_FOUND, "file not found")
        return TreeError(protocol.ERR_ACCESS, "not a regular file", refused=True)  # FIFO, device, socket
    if exc.errno in (errno.EXDEV, errno.ELOOP):
        return TreeError(protocol.ERR_ACCESS, "path leaves the boot tree", refused=True)
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
        return TreeError(protocol.ERR_NOT_FOUND, "file not found")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return TreeError(protocol.ERR_ACCESS, "access violation")
    if exc.errno in _BUSY_ERRNOS:
        return TreeError(protocol.ERR_UNDEFINED, "server busy, try again")
    return TreeError(protocol.ERR_UNDEFINED, f"server error ({errno.errorcode.get(exc.errno or 0, exc.errno)})")


@dataclass
class Resolved:
    name: str  # canonical name, for logs
    kind: str  # "file", "menu" or "kernel"
    size: int
    read: protocol.Reader
    close: Callable[[], None]
    buffered: bool = False  # read already works in big chunks: no read-ahead on top
    fd: int | None = None  # the open regular file, for sendfile (None: generated or converted content)


def _bytes_source(name: str, kind: str, data: bytes) -> Resolved:
    view = memoryview(data)
    return Resolved(name, kind, len(data), lambda offset, length: bytes(view[offset:offset + length]), lambda: None)


def split_path(filename: str) -> list[str]:
    """Normalise a client path into safe components or raise TreeError (access violation)."""
    if "\0" in filename:
        raise TreeError(protocol.ERR_ACCESS, "NUL byte in file name", refused=True)
    try:
        encoded = filename.encode("utf-8", "surrogateescape")
    except UnicodeError:  # a lone surrogate that no client byte string decodes to
        raise TreeError(protocol.ERR_ACCESS, "file name not encodable", refused=True) from None
    if len(encoded) > protocol.MAX_FILENAME:
        raise TreeError(protocol.ERR_ACCESS, "file name too long", refused=True)
    parts = []
    # Windows-style clients send backslashes; a leading '/' means the tree's root, as with
    # tftpd-hpa -s.
    for part in filename.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise TreeError(protocol.ERR_ACCESS, "'..' in file name", refused=True)
        if len(part) > MAX_COMPONENT:
            raise TreeError(protocol.ERR_ACCESS, "file name too long", refused=True)
        parts.append(part)
    if not parts:
        raise TreeError(protocol.ERR_NOT_FOUND, "file not found")
    return parts


def _is_shared(parts: list[str]) -> bool:
    if parts[0] == "pxelinux.cfg":
        return True
    name = parts[-1]
    return len(parts) == 1 and (parse_served_name(name) is not None or name.startswith("splash."))


def _mac_from_pxe_name(name: str) -> str | None:
    # pxelinux: "01-" (ARP type Ethernet) then the MAC with dashes, lower case.
    if len(name) == 20 and name[:3] == "01-":
        return name[3:].replace("-", ":").lower()
    return None


def _ip_from_hex(name: str) -> IPv4Address | None:
    if len(name) != 8:
        return None
    try:
        return IPv4Address(int(name, 16))
    except ValueError:
        return None


class BootTree:
    def __init__(self, config: Config, leases: Any = None) -> None:
        self.config = config
        self.leases = leases
        self.root = Path(config.tftp.root)
        self.instances = {inst.name: inst for inst in config.instances}
        self.hosts_by_ip = {h.address: h.mac for h in config.hosts}
        self.scans = ScanCache()

    def resolve(self, filename: str, netascii: bool = False, client: str | None = None) -> Resolved:
        """`client`: the asking address, so `grub/grub.cfg` can be that machine's own menu."""
        parts = split_path(filename)
        if parts[0] in ARCH_DIRS and len(parts) > 1 and _is_shared(parts[1:]):
            parts = parts[1:]  # efi64/pxelinux.cfg/... is the shared pxelinux.cfg/...
        if len(parts) == 2 and parts[0] in GENERATED:
            text = self._generated(parts[0], parts[1], client)
            if text is not None:
                data = text.encode()
                name = "/".join(parts)
                return _bytes_source(name, "menu", protocol.to_netascii(data) if netascii else data)
            if parts[0] == "pxelinux.cfg":  # every other pxelinux lookup (UUID, hex prefixes): a fast miss
                raise TreeError(protocol.ERR_NOT_FOUND, "file not found")
        image = parse_served_name(parts[0]) if len(parts) == 1 else None
        if image is not None:
            return self._kernel(image, netascii)
        return self._file(self.root, parts, "/".join(parts), "file", netascii)

    def _generated(self, directory: str, name: str, client: str | None = None) -> str | None:
        """The menu or script generated under that name, None if the name is not one of ours."""
        try:
            if directory == "pxelinux.cfg":
                mac = None if name == "default" else self._mac_for_menu(name)
                return None if name != "default" and mac is None else render_menu(self.config, mac)
            if directory == grub.MENUS_DIR:
                if name == grub.ENTRY:
                    # The asking machine's own menu when its address is known (after an HTTP boot GRUB's
                    # $net_default_mac is empty); else the file that picks it by $net_default_mac.
                    mac = self._mac_for_client(client)
                    if mac is None:
                        return grub.entry_config()
                    return grub.render(menu_for(self.config, mac), self._grub_device())
                if not name.startswith(grub.PER_MAC):
                    return None
                wanted = name[len(grub.PER_MAC):]
                mac = None if wanted == "default" else normalize_mac(wanted)
                return grub.render(menu_for(self.config, mac), self._grub_device())
            if directory == IPXE_SCRIPTS and name.startswith("01-"):
                return ipxe.render(menu_for(self.config, normalize_mac(name[3:])))
        except ValueError:  # a malformed MAC in the name
            return None
        return None

    def _grub_device(self) -> str:
        """Kernels over HTTP when the config says so (GRUB 2.06 names no port: only on port 80)."""
        http = self.config.http
        if http.enabled and http.transfer is Transfer.HTTP and http.port == 80:
            return f"(http,{self.config.server_ip})"
        return ""

    def _mac_for_menu(self, name: str) -> str | None:
        mac = _mac_from_pxe_name(name)
        if mac is not None:
            return mac
        ip = _ip_from_hex(name)
        return None if ip is None else self._mac_for_ip(ip)

    def _mac_for_client(self, client: str | None) -> str | None:
        try:
            return self._mac_for_ip(IPv4Address(client)) if client else None
        except ValueError:  # not an IPv4 address
            return None

    def _mac_for_ip(self, ip: IPv4Address) -> str | None:
        mac = self.hosts_by_ip.get(ip)
        if mac is None and self.leases is not None:
            lease = self.leases.by_address(ip)
            mac = getattr(lease, "mac", None) if lease is not None else None
        return mac

    def _kernel(self, image: BootImage, netascii: bool) -> Resolved:
        inst = self.instances.get(image.instance)
        if inst is None:
            raise TreeError(protocol.ERR_NOT_FOUND, "file not found")
        return self._file(inst.root, image.boot_parts, image.served_name, "kernel", netascii)

    def _file(self, jail: Path, parts: Sequence[str], name: str, kind: str, netascii: bool) -> Resolved:
        try:
            fd, st = open_beneath(jail, parts)
        except OSError as exc:
            raise tree_error(exc) from None
        # os.pread rather than mmap: a kernel replaced under us (image rebuild) must not SIGBUS
        # the whole appliance; the file we opened stays readable until we close it.
        pread = os.pread

        def read(offset: int, length: int) -> bytes:
            return pread(fd, length, offset)

        closed = False

        def close() -> None:  # idempotent: a second os.close could hit a reused descriptor number
            nonlocal closed
            if not closed:
                closed = True
                os.close(fd)

        if not netascii:
            return Resolved(name, kind, st.st_size, read, close, fd=fd)
        try:
            if st.st_size > NETASCII_SCAN_LIMIT:
                raise TreeError(protocol.ERR_ACCESS, "file too large for netascii, use octet")
            identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            starts = self.scans.starts(identity, read, st.st_size)
        except OSError as exc:
            close()
            raise tree_error(exc) from None
        except BaseException:
            close()
            raise
        reader = NetasciiReader(read, starts)
        return Resolved(name, kind, reader.size, reader, close, buffered=True)
