"""The virtual boot tree: shared files under efiNN/, generated menus, kernels, path safety."""

from __future__ import annotations

import errno
import os
import stat
import threading
from ipaddress import IPv4Address
from pathlib import Path
from types import SimpleNamespace

import pytest

from sidus_appliance.boot.kernels import kernel_versions
from sidus_appliance.tftp import protocol
from sidus_appliance.tftp import tree as tree_module
from sidus_appliance.tftp.tree import BootTree, TreeError
from tests.unit.test_boot_menus import MASTER, make_config, make_root


def read_all(tree: BootTree, name: str, netascii: bool = False) -> bytes:
    r = tree.resolve(name, netascii)
    try:
        return r.read(0, r.size + 1)
    finally:
        r.close()


@pytest.fixture
def tree(tmp_path: Path) -> BootTree:
    root = tmp_path / "tftp"
    (root / "efi64").mkdir(parents=True)
    (root / "pxelinux.0").write_bytes(b"bios loader")
    (root / "ldlinux.c32").write_bytes(b"bios ldlinux")
    (root / "efi64" / "syslinux.efi").write_bytes(b"efi64 loader")
    (root / "efi64" / "ldlinux.e64").write_bytes(b"efi64 ldlinux")
    (root / "efi64" / "menu.c32").write_bytes(b"efi64 menu")
    (root / "menu.c32").write_bytes(b"bios menu")
    (root / "splash.png").write_bytes(b"PNG")
    (root / "sub").mkdir()
    (root / "sub" / "x").write_bytes(b"x")
    (tmp_path / "secret").write_bytes(b"secret")
    os.symlink(tmp_path / "secret", root / "escape")
    os.symlink("pxelinux.0", root / "alias")  # a symlink inside the tree is fine
    make_root(tmp_path, "bookworm", ["6.1.0-18-amd64"])
    os.symlink(tmp_path / "secret", tmp_path / "nfsroot" / "bookworm" / "boot" / "vmlinuz-evil")
    config = make_config(tmp_path, [{"name": "bookworm"}])
    lease = SimpleNamespace(mac="52:54:00:00:00:01")
    leases = SimpleNamespace(by_address=lambda ip: lease if ip == IPv4Address("10.20.17.10") else None)
    return BootTree(config, leases)


def test_plain_files_and_path_spellings(tree):
    assert read_all(tree, "pxelinux.0") == b"bios loader"
    assert read_all(tree, "/pxelinux.0") == b"bios loader"
    assert read_all(tree, "\\sub\\x") == b"x"
    assert read_all(tree, "./sub//x") == b"x"
    assert read_all(tree, "alias") == b"bios loader"


def test_arch_modules_stay_in_their_folder(tree):
    assert read_all(tree, "efi64/syslinux.efi") == b"efi64 loader"
    assert read_all(tree, "efi64/menu.c32") == b"efi64 menu"
    assert read_all(tree, "menu.c32") == b"bios menu"
    with pytest.raises(TreeError) as exc:
        tree.resolve("efi32/syslinux.efi")
    assert exc.value.code == protocol.ERR_NOT_FOUND


def test_shared_files_under_arch_folders(tree):
    assert read_all(tree, "efi64/splash.png") == b"PNG"
    assert read_all(tree, "efi32/splash.png") == b"PNG"
    assert read_all(tree, "efi64/pxelinux.cfg/default") == read_all(tree, "pxelinux.cfg/default")
    assert read_all(tree, "efi64/vmlinuz-6.1.0-18-amd64@bookworm") == b"kernel 6.1.0-18-amd64"


def test_kernels_and_initrds_from_instance_root(tree):
    assert read_all(tree, "vmlinuz-6.1.0-18-amd64@bookworm") == b"kernel 6.1.0-18-amd64"
    assert read_all(tree, "initrd.img-6.1.0-18-amd64@bookworm") == b"initrd 6.1.0-18-amd64"
    r = tree.resolve("vmlinuz-6.1.0-18-amd64@bookworm")
    assert r.kind == "kernel" and r.size == len(b"kernel 6.1.0-18-amd64")
    r.close()
    for name in ("vmlinuz-9.9@bookworm", "vmlinuz-6.1.0-18-amd64@nosuch", "vmlinuz-@bookworm"):
        with pytest.raises(TreeError) as exc:
            tree.resolve(name)
        assert exc.value.code == protocol.ERR_NOT_FOUND


def test_generated_menus(tree):
    default = read_all(tree, "pxelinux.cfg/default").decode()
    assert "KERNEL vmlinuz-6.1.0-18-amd64@bookworm" in default and "sidus=overlay" in default
    master = read_all(tree, "pxelinux.cfg/01-" + MASTER.replace(":", "-")).decode()
    assert "sidus=" not in master and ",rw " in master
    other = read_all(tree, "pxelinux.cfg/01-52-54-00-12-34-56").decode()
    assert "sidus=overlay" in other


def test_hex_ip_menus_for_reservations_and_leases(tree):
    assert b",rw " in read_all(tree, "pxelinux.cfg/0A1411FD")  # 10.20.17.253, the master
    assert b"sidus=overlay" in read_all(tree, "pxelinux.cfg/0A14110A")  # leased 10.20.17.10


@pytest.mark.parametrize("name", [
    "pxelinux.cfg/564d2a1b-0000-0000-0000-000000000000",  # UUID
    "pxelinux.cfg/0A141163",  # unknown address
    "pxelinux.cfg/0A14116", "pxelinux.cfg/0A", "pxelinux.cfg/01-zz-zz-zz-zz-zz-zz",
    "pxelinux.cfg/a/b", "pxelinux.cfg", "missing", "sub", "efi64/pxelinux.cfg/0A1",
])
def test_misses_are_file_not_found(tree, name):
    with pytest.raises(TreeError) as exc:
        tree.resolve(name)
    assert exc.value.code == protocol.ERR_NOT_FOUND and not exc.value.refused


@pytest.mark.parametrize("name", [
    "../secret", "sub/../../secret", "..\\secret", "efi64/../../secret", "escape",
    "vmlinuz-evil@bookworm", "a\0b", "x" * 300, "/" + "a/" * 300,
])
def test_escapes_are_refused(tree, name):
    with pytest.raises(TreeError) as exc:
        tree.resolve(name)
    assert exc.value.code == protocol.ERR_ACCESS and exc.value.refused


def test_absolute_paths_stay_inside_the_tree(tree):
    with pytest.raises(TreeError) as exc:
        tree.resolve("/etc/passwd")
    assert exc.value.code == protocol.ERR_NOT_FOUND


def test_netascii(tree, tmp_path):
    (tmp_path / "tftp" / "text").write_bytes(b"a\nb\n")
    assert read_all(tree, "text", netascii=True) == b"a\r\nb\r\n"
    assert b"\r\n" in read_all(tree, "pxelinux.cfg/default", netascii=True)


# ------------------------------------------------------------------ planted files (hostile master)

BOOT = ("nfsroot", "bookworm", "boot")


def test_fifo_and_device_nodes_are_refused_without_blocking(tree, tmp_path):
    boot = tmp_path.joinpath(*BOOT)
    os.mkfifo(boot / "vmlinuz-fifo")
    os.mknod(boot / "vmlinuz-dev", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mkfifo(tmp_path / "tftp" / "loader.fifo")
    for name in ("vmlinuz-fifo@bookworm", "efi64/vmlinuz-fifo@bookworm", "vmlinuz-dev@bookworm", "loader.fifo"):
        for netascii in (False, True):
            outcome: list[BaseException] = []
            thread = threading.Thread(target=lambda n=name, a=netascii, o=outcome: o.append(resolve_error(tree, n, a)))
            thread.start()
            thread.join(5)
            assert not thread.is_alive(), f"{name}: the open blocked"
            (exc,) = outcome
            assert exc.code == protocol.ERR_ACCESS and exc.refused, name


def resolve_error(tree: BootTree, name: str, netascii: bool = False) -> TreeError:
    with pytest.raises(TreeError) as exc:
        tree.resolve(name, netascii)
    return exc.value


def test_boot_swapped_for_a_link_out_of_the_instance(tree, tmp_path):
    boot = tmp_path.joinpath(*BOOT)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "vmlinuz-6.1.0-18-amd64").write_bytes(b"SECRET")
    os.rename(boot, boot.parent / "boot.real")
    os.symlink(tmp_path / "outside", boot)
    exc = resolve_error(tree, "vmlinuz-6.1.0-18-amd64@bookworm")
    assert exc.code == protocol.ERR_ACCESS and exc.refused
    assert kernel_versions(boot.parent) == []  # nor does the menu list what lies outside


def test_no_realpath_of_client_paths(tree, monkeypatch):
    """The check-then-open race came from realpath: it is not used on a client's path at all."""
    def forbidden(*args, **kwargs):
        raise AssertionError("realpath of an untrusted path")

    monkeypatch.setattr(os.path, "realpath", forbidden)
    assert read_all(tree, "vmlinuz-6.1.0-18-amd64@bookworm") == b"kernel 6.1.0-18-amd64"
    assert read_all(tree, "sub/x") == b"x"
    assert resolve_error(tree, "escape").refused


@pytest.mark.parametrize(("err", "code", "refused"), [
    (errno.EXDEV, protocol.ERR_ACCESS, True),
    (errno.ELOOP, protocol.ERR_ACCESS, True),
    (errno.ENOENT, protocol.ERR_NOT_FOUND, False),
    (errno.ENOTDIR, protocol.ERR_NOT_FOUND, False),
    (errno.EACCES, protocol.ERR_ACCESS, False),
    (errno.EMFILE, protocol.ERR_UNDEFINED, False),
    (errno.ENFILE, protocol.ERR_UNDEFINED, False),
    (errno.EIO, protocol.ERR_UNDEFINED, False),
])
def test_every_os_error_is_a_tftp_error(tree, monkeypatch, err, code, refused):
    def failing(*args, **kwargs):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(tree_module, "open_beneath", failing)
    exc = resolve_error(tree, "pxelinux.0")
    assert (exc.code, exc.refused) == (code, refused)


def test_netascii_scan_errors_close_the_file(tree, tmp_path, monkeypatch):
    (tmp_path / "tftp" / "text").write_bytes(b"a\n" * 10)

    def failing(*args, **kwargs):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(tree.scans, "starts", failing)
    before = len(os.listdir("/proc/self/fd"))
    assert resolve_error(tree, "text", netascii=True).code == protocol.ERR_UNDEFINED
    assert len(os.listdir("/proc/self/fd")) == before


def test_netascii_of_a_huge_file_is_refused(tree, tmp_path, monkeypatch):
    monkeypatch.setattr(tree_module, "NETASCII_SCAN_LIMIT", 10)
    (tmp_path / "tftp" / "text").write_bytes(b"a\n" * 10)
    assert resolve_error(tree, "text", netascii=True).code == protocol.ERR_ACCESS
    assert read_all(tree, "text") == b"a\n" * 10  # octet is fine


def test_close_is_idempotent(tree):
    r = tree.resolve("pxelinux.0")
    r.close()
    spare = os.open("/dev/null", os.O_RDONLY)  # may reuse the number the file had
    try:
        r.close()
        os.fstat(spare)  # still open: the second close did not close somebody else's descriptor
    finally:
        os.close(spare)
