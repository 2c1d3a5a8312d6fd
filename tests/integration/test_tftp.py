"""TFTP of the real `serve` in the lab namespace, fetched by curl, tftp-hpa and atftp.

One appliance for the module (DHCP and DNS off: this is about TFTP), with:
- a boot tree staged by `bootfiles install` plus test files of awkward sizes;
- an instance `bookworm` whose /boot holds a fake kernel and initrd (served in place);
- client `pc` at 10.20.17.5 and client `master` with the master's MAC at 10.20.17.253.
"""

from __future__ import annotations

import filecmp
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidus_appliance import bootfiles
from sidus_appliance.config import load_config
from sidus_appliance.lab import ApplianceProcess, ClientPort, Lab, write_lab_config

from ..conftest import require, serving

pytestmark = pytest.mark.integration

SERVER = "10.20.17.254"
MASTER_MAC = "08:00:aa:bb:cc:dd"
KERNEL = "6.1.0-18-amd64"
MIB = 1 << 20
SIZES = {"one": 1, "b511": 511, "b512": 512, "b1468": 1468, "b8192x3": 8192 * 3, "mib3": 3 * MIB + 7, "empty": 0}
TEXT_LINE = b"LABEL x\n  APPEND a=b\r\n\rbare CR, NUL \0 and CR at a block end"


@dataclass
class TftpLab:
    lab: Lab
    appliance: ApplianceProcess
    pc: ClientPort
    master: ClientPort
    root: Path
    out: Path


@pytest.fixture(scope="module")
def tftp_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TftpLab]:
    require("the TFTP lab (network namespaces)")
    workdir = tmp_path_factory.mktemp("tftp")
    boot = workdir / "nfsroot" / "bookworm" / "boot"
    boot.mkdir(parents=True)
    (boot / f"vmlinuz-{KERNEL}").write_bytes(os.urandom(MIB + 3))
    (boot / f"initrd.img-{KERNEL}").write_bytes(os.urandom(2 * MIB + 5))
    overrides = {
        "dhcp": {"enabled": False},
        "dns": {"enabled": False},
        "instances": [{"name": "bookworm", "label": "Debian 12"}],
        "kernel_args": "net.ifnames=0 console=ttyS0",
        # test_twenty_concurrent_clients runs 20 curls from one address (a real room: one each)
        "tftp": {"max_transfers_per_client": 32},
    }
    config_path = write_lab_config(workdir, overrides)
    root = load_config(config_path).tftp.root
    report = bootfiles.install(load_config(config_path))
    assert not report.missing, str(report)
    for name, size in SIZES.items():
        (root / name).write_bytes(os.urandom(size))
    (root / "big32").write_bytes(os.urandom(32 * MIB))
    (root / "text3m").write_bytes((TEXT_LINE * (3 * MIB // len(TEXT_LINE) + 1))[:3 * MIB + 1] + b"\r")
    (workdir / "secret").write_text("outside the tree\n")
    out = workdir / "out"
    out.mkdir()
    with Lab() as lab:
        pc = lab.add_client(address="10.20.17.5/24")
        master = lab.add_client(mac=MASTER_MAC, address="10.20.17.253/24")
        with serving(lab, config_path, workdir / "serve.log") as appliance:
            yield TftpLab(lab, appliance, pc, master, root, out)


def curl(client: ClientPort, path: str, dest: Path, blksize: int | None = None, timeout: float = 120) -> int:
    command = ["curl", "-sS", "--path-as-is", "-o", str(dest), f"tftp://{SERVER}/{path}"]
    if blksize:
        command[1:1] = ["--tftp-blksize", str(blksize)]
    return client.run(command, timeout=timeout).returncode


def fetch_text(client: ClientPort, path: str, out: Path) -> str:
    dest = out / path.replace("/", "_")
    assert curl(client, path, dest) == 0
    return dest.read_text()


@pytest.mark.parametrize("blksize", [512, 1468, 8192])
@pytest.mark.parametrize("name", [n for n in SIZES if n != "empty"])
def test_curl_byte_exact(tftp_lab: TftpLab, name: str, blksize: int) -> None:
    dest = tftp_lab.out / f"{name}.{blksize}"
    assert curl(tftp_lab.pc, name, dest, blksize) == 0
    assert filecmp.cmp(dest, tftp_lab.root / name, shallow=False)


def test_empty_file(tftp_lab: TftpLab) -> None:
    dest = tftp_lab.out / "empty.hpa"
    result = tftp_lab.pc.run(["tftp", SERVER, "-m", "binary", "-c", "get", "empty", str(dest)], timeout=30)
    assert result.returncode == 0 and dest.exists() and dest.stat().st_size == 0


@pytest.mark.parametrize("blksize", [512, 1468])
def test_curl_32mib(tftp_lab: TftpLab, blksize: int) -> None:
    # At blksize 512 the 32 MiB file is 65,536 blocks + an empty one: block numbers roll over.
    dest = tftp_lab.out / f"big32.{blksize}"
    assert curl(tftp_lab.pc, "big32", dest, blksize, timeout=300) == 0
    assert filecmp.cmp(dest, tftp_lab.root / "big32", shallow=False)


def test_tftp_hpa(tftp_lab: TftpLab) -> None:
    dest = tftp_lab.out / "mib3.hpa"
    result = tftp_lab.pc.run(["tftp", SERVER, "-m", "binary", "-c", "get", "mib3", str(dest)], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert filecmp.cmp(dest, tftp_lab.root / "mib3", shallow=False)


@pytest.mark.parametrize("options", [["--option", "windowsize 8"], ["--option", "windowsize 8", "--option",
                                                                       "blksize 1468"], []])
def test_atftp_windowsize(tftp_lab: TftpLab, options: list[str]) -> None:
    dest = tftp_lab.out / f"big32.atftp{len(options)}"
    command = ["atftp", *options, "-g", "-r", "big32", "-l", str(dest), SERVER]
    result = tftp_lab.pc.run(command, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert filecmp.cmp(dest, tftp_lab.root / "big32", shallow=False)


def test_master_menu_differs_from_default(tftp_lab: TftpLab) -> None:
    default = fetch_text(tftp_lab.pc, "pxelinux.cfg/default", tftp_lab.out)
    assert f"KERNEL vmlinuz-{KERNEL}@bookworm" in default
    assert "sidus=overlay ip=dhcp root=nfs:10.20.17.254:" in default
    assert "net.ifnames=0 console=ttyS0" in default
    mine = fetch_text(tftp_lab.pc, "pxelinux.cfg/01-52-54-00-12-34-56", tftp_lab.out)
    assert mine.split("\n", 1)[1] == default.split("\n", 1)[1]  # first line names the MAC
    master = fetch_text(tftp_lab.master, "pxelinux.cfg/01-" + MASTER_MAC.replace(":", "-"), tftp_lab.out)
    assert "sidus=" not in master and ",rw " in master
    # pxelinux's hex-IP lookup of the master's reserved address gets the master menu too
    assert fetch_text(tftp_lab.master, "pxelinux.cfg/0A1411FD", tftp_lab.out) == master


def test_pxelinux_misses_are_file_not_found(tftp_lab: TftpLab) -> None:
    for name in ("pxelinux.cfg/564d2a1b-1a2b-3c4d-5e6f-001122334455", "pxelinux.cfg/0A141105", "pxelinux.cfg/0A14"):
        result = tftp_lab.pc.run(["curl", "-sS", "-o", "/dev/null", f"tftp://{SERVER}/{name}"], timeout=10)
        assert result.returncode == 68, result.stderr  # CURLE_TFTP_NOTFOUND (its text is a curl oddity)


def test_efi64_paths(tftp_lab: TftpLab) -> None:
    out = tftp_lab.out
    assert curl(tftp_lab.pc, "efi64/syslinux.efi", out / "syslinux.efi") == 0
    assert filecmp.cmp(out / "syslinux.efi", "/usr/lib/SYSLINUX.EFI/efi64/syslinux.efi", shallow=False)
    assert curl(tftp_lab.pc, "efi64/ldlinux.e64", out / "ldlinux.e64") == 0
    assert curl(tftp_lab.pc, "efi64/menu.c32", out / "menu.e64.c32") == 0
    assert filecmp.cmp(out / "menu.e64.c32", "/usr/lib/syslinux/modules/efi64/menu.c32", shallow=False)
    assert fetch_text(tftp_lab.pc, "efi64/pxelinux.cfg/default", out) == fetch_text(
        tftp_lab.pc, "pxelinux.cfg/default", out)


def test_kernels_from_the_instance_root(tftp_lab: TftpLab) -> None:
    boot = tftp_lab.root.parent / "nfsroot" / "bookworm" / "boot"
    for name, path in ((f"vmlinuz-{KERNEL}@bookworm", f"vmlinuz-{KERNEL}"),
                       (f"efi64/initrd.img-{KERNEL}@bookworm", f"initrd.img-{KERNEL}")):
        dest = tftp_lab.out / name.replace("/", "_")
        assert curl(tftp_lab.pc, name, dest, 1468) == 0
        assert filecmp.cmp(dest, boot / path, shallow=False)


TRAVERSALS = ["../secret", "../../../../etc/passwd", "efi64/../../secret", "..\\secret"]


def test_traversal_refused_and_logged_once(tftp_lab: TftpLab) -> None:
    for name in TRAVERSALS:
        dest = tftp_lab.out / "stolen"
        result = tftp_lab.pc.run(["tftp", SERVER, "-m", "binary", "-c", "get", name, str(dest)], timeout=30)
        text = (result.stdout + result.stderr).lower()
        assert "access violation" in text or "error code 2" in text, text
        assert not dest.exists() or dest.stat().st_size == 0
    log = tftp_lab.appliance.wait_log(f"refused {TRAVERSALS[0]!r}")
    assert re.search(rf"10\.20\.17\.5:\d+: refused {re.escape(repr(TRAVERSALS[0]))}", log)  # with the client's address
    # The next ones within the minute are counted, not written: a flood cannot fill the disk.
    assert not any(f"refused {name!r}" in log for name in TRAVERSALS[1:]), log[-3000:]


def test_wrq_refused(tftp_lab: TftpLab) -> None:
    source = tftp_lab.out / "upload"
    source.write_text("data\n")
    result = tftp_lab.pc.run(["tftp", SERVER, "-m", "binary", "-c", "put", str(source), "upload"], timeout=30)
    text = (result.stdout + result.stderr).lower()
    assert "access violation" in text or "error code 2" in text, text
    assert not (tftp_lab.root / "upload").exists()
    tftp_lab.appliance.wait_log("write request for 'upload' refused")


def test_twenty_concurrent_clients(tftp_lab: TftpLab) -> None:
    procs = []
    for i in range(20):
        dest = tftp_lab.out / f"conc{i}"
        command = ["curl", "-sS", "--tftp-blksize", "1468", "-o", str(dest), f"tftp://{SERVER}/mib3"]
        procs.append((dest, tftp_lab.pc.popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
    for dest, proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        assert filecmp.cmp(dest, tftp_lab.root / "mib3", shallow=False)


def test_netascii_menu(tftp_lab: TftpLab) -> None:
    dest = tftp_lab.out / "menu.ascii"
    result = tftp_lab.pc.run(["tftp", SERVER, "-m", "ascii", "-c", "get", "pxelinux.cfg/default", str(dest)],
                             timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert dest.read_text() == fetch_text(tftp_lab.pc, "pxelinux.cfg/default", tftp_lab.out)


def test_netascii_file_byte_exact(tftp_lab: TftpLab) -> None:
    """Converted while sending (LF -> CR LF, CR -> CR NUL, across block boundaries); tftp-hpa
    converts back on receipt, so what it writes is the original file."""
    dest = tftp_lab.out / "text3m.ascii"
    result = tftp_lab.pc.run(["tftp", SERVER, "-m", "ascii", "-c", "get", "text3m", str(dest)], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert dest.read_bytes() == (tftp_lab.root / "text3m").read_bytes()
