"""Real minimal instances, one per Debian suite (bookworm, trixie): debootstrap (or the cached
base), kernel, dracut with 90sidus, lsinitrd, then served by ganesha in a namespace, read back
over NFS and booted end to end by PXE clients under QEMU.

Slow (minutes per suite: apt and one dracut run); the debootstrap base and the .debs are cached
per suite in SIDUS_IMAGE_CACHE (default /var/cache/sidus-appliance) so later runs skip the
downloads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidus_appliance import image, nfs
from sidus_appliance.config import Config, parse_config
from sidus_appliance.image import chrootenv
from sidus_appliance.lab.ganesha import apply_in_netns

from ..configs import nfs_config_text
from ..conftest import require
from .test_nfs_ganesha import NEEDED, SERVER, Pair, url

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

CACHE = Path(os.environ.get("SIDUS_IMAGE_CACHE", "/var/cache/sidus-appliance"))
# Debian 12 and Debian 13 (stable now): every test of this module runs against each build.
SUITES = ("bookworm", "trixie")
CODENAMES = {"bookworm": "12", "trixie": "13"}


def config_for(tmp: Path):
    return parse_config(nfs_config_text(tmp, ["mini"]), "test.yaml")


Built = tuple[Config, image.BuildResult, list[str]]  # config, result, what the build said


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Built]]:
    """`builds(suite)`: the instance `mini` of that suite, built on first use and kept for the
    module (each suite under its own tmp dir; the caches are keyed by suite)."""
    done: dict[str, Built] = {}
    dirs: list[Path] = []

    def build(suite: str) -> Built:
        if suite not in done:
            require("the image build (debootstrap, chroot, mount namespaces)", tools=("debootstrap",))
            tmp = Path(tmp_path_factory.mktemp(f"image-{suite}", numbered=True))
            dirs.append(tmp)
            config = config_for(tmp)
            said: list[str] = []
            started = time.monotonic()
            result = image.build(config, "mini", suite, "amd64", "minimal", said.append, cache_dir=CACHE)
            print(f"image build ({suite}) took {time.monotonic() - started:.0f}s: {result.timings}")
            done[suite] = (config, result, said)
        return done[suite]

    yield build
    for tmp in dirs:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(params=SUITES)
def suite(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def built(builds: Callable[[str], Built], suite: str) -> Built:
    return builds(suite)


def test_build_produces_a_bootable_root(built: Built, suite: str) -> None:
    _config, result, said = built
    root = result.root
    assert release_field(root, "SUITE") == suite
    assert f"VERSION_ID=\"{CODENAMES[suite]}\"" in (root / "etc/os-release").read_text()
    # apt's sources in the format of the suite's own apt (the packages step ran apt-get update on them).
    deb822 = root / "etc/apt/sources.list.d/debian.sources"
    if suite == "bookworm":
        assert (root / "etc/apt/sources.list").read_text().startswith("# sidus-appliance\ndeb ")
        assert not deb822.exists()
    else:
        assert deb822.read_text().count("Signed-By:") == 2 and not (root / "etc/apt/sources.list").exists()
    assert result.kernels and (root / "boot" / f"vmlinuz-{result.kernels[0]}").exists()
    assert all((root / image.builder.STAMP_DIR / step).exists() for step in image.STEPS)
    assert chrootenv.mounts_under(root) == []
    assert not (root / "usr/sbin/policy-rc.d").exists()
    assert not (root / "etc/hostname").exists()
    assert (root / "etc/resolv.conf").read_text().startswith(f"nameserver {SERVER}")
    assert "/home nfs" in (root / "etc/fstab").read_text()
    listing = (root / f"var/lib/sidus/lsinitrd-{result.kernels[0]}.txt").read_text()
    assert image.builder.verify_listing(listing) == []
    # The generated password was printed once, and is nowhere in the log.
    assert result.password and sum(result.password in line for line in said) == 1
    assert result.password not in result.log_path.read_text()
    assert "root:!" not in (root / "etc/shadow").read_text() and "root:*" not in (root / "etc/shadow").read_text()


def test_rebuild_resumes_without_work(built: Built, suite: str) -> None:
    config, result, _ = built
    said: list[str] = []
    again = image.build(config, "mini", suite, log=said.append)
    assert sum("already done" in line for line in said) == len(image.STEPS)
    assert again.password is None and again.kernels == result.kernels


def test_chroot_runs_commands_and_cleans_up(built: Built) -> None:
    config, result, _ = built
    code = image.chroot(config, "mini", ["/bin/sh", "-c", "test -r /proc/self/status && grep -q NAME=mini "
                                          "/etc/sidus-release && test -x /usr/sbin/policy-rc.d"])
    assert code == 0
    assert image.chroot(config, "mini", ["/bin/false"]) == 1
    assert chrootenv.mounts_under(result.root) == []
    assert not (result.root / "usr/sbin/policy-rc.d").exists()


def test_list_shows_the_instance(built: Built) -> None:
    config, result, _ = built
    (info,) = [i for i in image.list_instances(config) if i.name == "mini"]
    assert info.state == "ready" and info.configured and info.kernels == result.kernels
    assert info.size_bytes and info.size_bytes > 100 * 1024 * 1024


def test_the_built_root_is_served_over_nfs(built: Built) -> None:
    config, result, _ = built
    require("serving the built root over NFS", tools=NEEDED)
    kernel = f"/boot/vmlinuz-{result.kernels[0]}"
    with Pair() as pair:
        try:
            apply_in_netns(config, lambda m: None, pair.server)
            assert nfs.check(config, netns=pair.server) == []
            pair.client_address("10.20.17.10")
            got = pair.run("nfs-cat", url(f"{result.root}/etc/sidus-release"), check=True).stdout
            assert "NAME=mini" in got
            # The kernel the boot tree serves, read back whole over NFS.
            fetched = subprocess.run(
                ["ip", "netns", "exec", pair.client, "nfs-cat", url(f"{result.root}{kernel}")],
                capture_output=True, check=True, timeout=120,
            ).stdout
            assert fetched == (result.root / kernel.lstrip("/")).read_bytes()
        finally:
            nfs.stop_ganesha(config, lambda m: None)


def release_field(root: Path, key: str) -> str:
    """A field of the instance's /etc/sidus-release (the builder writes NAME, SUITE, ARCH, ...)."""
    fields = dict(line.partition("=")[::2] for line in (root / "etc/sidus-release").read_text().splitlines())
    return fields[key]


# -- end to end: PXE clients boot the built root over NFS from the appliance ------------------

MASTER_MAC = "08:00:aa:bb:cc:dd"  # profile master in config.example.yaml
CLIENT_MAC = "52:54:00:5e:00:01"
BOOT_TIMEOUT = 600.0  # TCG on a loaded 2-core box: ~80 s when healthy
# What each firmware fetches first: DHCP arch 0 and 7 as config.example.yaml dispatches them, and
# under Secure Boot Debian's signed shim (then signed GRUB, then the instance's Debian-signed kernel).
LOADER = {"bios": "pxelinux.0", "uefi": "efi64/syslinux.efi", "uefi-secure": "efi64/shimx64.efi"}
MARK = "sidus-e2e-written"  # the probe appends a line to /MARK on every boot

# A test-only unit in the instance: how is / mounted, what earlier boots left in /MARK, can we
# append to it, and the lab's marker line (sidus_appliance.lab.qemu waits for it), then power off.
PROBE = r"""#!/bin/sh
root_fs=$(findmnt -n -o FSTYPE /)
before=0
[ -f /MARK ] && before=$(wc -l < /MARK)
wrote=no
echo "written by $(cat /proc/sys/kernel/hostname)" >> /MARK 2>/dev/null && wrote=yes
dev=$(ip -4 -o route show default | awk '{print $5; exit}')
[ -n "$dev" ] || dev=$(ip -4 -o addr show scope global | awk '{print $2; exit}')
ip=$(ip -4 -o addr show dev "$dev" scope global | awk '{split($4, a, "/"); print a[1]; exit}')
lft=$(ip -4 -o addr show dev "$dev" scope global | grep -o 'valid_lft [a-z0-9]*' | head -1)
domain=$(awk '/^search/ {print $2; exit}' /etc/resolv.conf)
dns=$(awk '/^nameserver/ {print $2; exit}' /etc/resolv.conf)
mac=$(cat /sys/class/net/"$dev"/address)
name=$(cat /proc/sys/kernel/hostname)
lock=$(grep -o '\[[a-z]*\]' /sys/kernel/security/lockdown 2>/dev/null | tr -d '[]')
machine_id=$(cat /etc/machine-id)
{
  echo "SIDUS-E2E root=$root_fs wrote=$wrote before=$before machine_id=$machine_id lockdown=${lock:-none} dev=$dev $lft"
  echo "SIDUS-MARKER ip=$ip hostname=$name domain=$domain dns=$dns mac=$mac cmdline=$(cat /proc/cmdline)"
} > /dev/ttyS0
sync
systemctl poweroff
""".replace("/MARK", "/" + MARK)
PROBE_UNIT = """[Unit]
Description=sidus end-to-end probe (tests only)
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/sidus-e2e-probe
[Install]
WantedBy=multi-user.target
"""


def install_probe(root: Path) -> None:
    probe = root / "usr/local/sbin/sidus-e2e-probe"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text(PROBE)
    probe.chmod(0o755)
    (root / "etc/systemd/system/sidus-e2e.service").write_text(PROBE_UNIT)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "sidus-e2e.service"
    if not link.is_symlink():
        link.symlink_to("/etc/systemd/system/sidus-e2e.service")


def e2e_line(serial: str) -> dict[str, str]:
    from sidus_appliance.lab.qemu import strip_ansi

    for line in strip_ansi(serial).splitlines():
        if line.startswith("SIDUS-E2E root="):
            fields = line[len("SIDUS-E2E "):].replace("valid_lft ", "valid_lft=").split()
            return dict(f.partition("=")[::2] for f in fields)
    return {}


def boot_case(suite: str, firmware: str, mac: str, boots: int, *marks: pytest.MarkDecorator) -> object:
    kind = "master-rw" if mac == MASTER_MAC else "overlay-client" + ("-reboot" if boots > 1 else "")
    return pytest.param(suite, firmware, mac, boots, marks=marks, id=f"{suite}-{firmware}-{kind}")


# (suite, firmware, MAC, boots): an overlay client with boots=2 boots again, its reboot. `make test`
# runs one case per firmware kind on trixie (Debian stable), 4 boots covering overlay, reboot,
# master and Secure Boot; e2e_extra cases, the same checks on the other pairs and on bookworm, run
# with `make test-all`. A master case comes before an overlay case of the same suite: the
# machine-ID check needs the ID that boot commits to the shared root.
EXTRA = pytest.mark.e2e_extra
BOOTS = [
    boot_case("trixie", "bios", CLIENT_MAC, 2),
    boot_case("trixie", "uefi", MASTER_MAC, 1),
    # Secure Boot enforced (Microsoft keys enrolled): the kernel runs locked down, so the overlay
    # module it loads must be Debian-signed too.
    boot_case("trixie", "uefi-secure", CLIENT_MAC, 1),
    boot_case("trixie", "bios", MASTER_MAC, 1, EXTRA),
    boot_case("trixie", "uefi", CLIENT_MAC, 2, EXTRA),
    boot_case("bookworm", "bios", CLIENT_MAC, 2, EXTRA),
    boot_case("bookworm", "bios", MASTER_MAC, 1, EXTRA),
    boot_case("bookworm", "uefi", CLIENT_MAC, 2, EXTRA),
    boot_case("bookworm", "uefi", MASTER_MAC, 1, EXTRA),
    boot_case("bookworm", "uefi-secure", CLIENT_MAC, 1, EXTRA),
]


@pytest.mark.qemu
@pytest.mark.parametrize(("suite", "firmware", "mac", "boots"), BOOTS)
def test_pxe_client_boots_the_shared_root(built: Built, firmware, mac: str, boots: int, lab, start_appliance,
                                          tmp_path: Path) -> None:
    """A PXE client (SeaBIOS+iPXE, OVMF+iPXE, OVMF under Secure Boot) boots the instance over NFS
    (ganesha): / is an overlay whose writes stay in RAM, and its reboot finds the root as served;
    the master MAC boots the same root read-write and its write lands on the server."""
    from sidus_appliance import bootfiles
    from sidus_appliance.config import load_config
    from sidus_appliance.lab import qemu, write_lab_config

    require("the end-to-end boot", tools=(qemu.QEMU, *NEEDED))
    _config, result, _ = built
    root = result.root
    install_probe(root)
    written = root / MARK
    written.unlink(missing_ok=True)
    workdir = tmp_path / "appliance"
    overrides = {
        "instances": [{"name": "mini", "root": str(root), "append": "console=ttyS0", "modes": ["overlay"]}],
        "nfs": {"backend": "ganesha", "export_root": str(workdir / "export"), "home": str(workdir / "export/home"),
                "ganesha_config": str(workdir / "state/ganesha.conf")},
    }
    if firmware in qemu.SECURE_FIRMWARES:  # every 64-bit UEFI machine on the signed chain, as the README says
        overrides["dhcp"] = {"boot_files": {7: LOADER[firmware]}}
    staged = bootfiles.install(load_config(write_lab_config(workdir, overrides)))  # as `bootfiles install` does
    assert not staged.missing, str(staged)
    appliance = start_appliance(overrides, workdir=workdir)
    config = load_config(appliance.config_path)
    reports: list[dict[str, str]] = []
    try:
        apply_in_netns(config, lambda m: None, lab.server_ns)
        tap = lab.add_tap()
        for run in range(boots):
            boot = qemu.boot(firmware, mac, tap, tmp_path / f"qemu-{run}", lab.server_ns, accel="tcg",
                             timeout=BOOT_TIMEOUT, memory_mb=1024)
            serial = boot.serial_log.read_text(errors="replace")
            print(f"boot {run + 1}/{boots}:", boot.summary(), boot.attempts, boot.phases)
            assert boot.ok, f"{boot.summary()}\n--- serial tail:\n{qemu.strip_ansi(serial)[-4000:]}"
            assert boot.serial.boot_file == LOADER[firmware], boot.serial
            reports.append(e2e_line(serial))
            if firmware in qemu.SECURE_FIRMWARES:  # enforced, not merely present: the kernel is locked down
                assert boot.serial.secure_boot is True and "efi64/grubx64.efi" in boot.serial.chained, boot.serial
                assert reports[-1].get("lockdown") in ("integrity", "confidentiality"), reports[-1]
    finally:
        nfs.stop_ganesha(config, lambda m: None)
    for report in reports:
        assert report.get("valid_lft") == "forever", report  # the DHCP address never expires
        assert report.get("wrote") == "yes", report
    if mac == MASTER_MAC:
        assert reports[0].get("root") == "nfs", reports  # read-write NFS root, no overlay
        assert written.exists()  # the master's write is on the server
        assert "sidus=" not in boot.marker.cmdline
    else:
        assert all(r.get("root") == "overlay" for r in reports), reports
        assert not written.exists()  # the client's write stayed in its RAM
        assert "sidus=overlay" in boot.marker.cmdline.split()
        # Every boot, the reboot included, starts from the root as served: nothing of the write before.
        assert [r.get("before") for r in reports] == ["0"] * boots, reports
        # ... and each boot is a machine of its own: not the master's machine ID, nor the last boot's.
        ids = [r.get("machine_id") for r in reports]
        assert all(ids) and len(set(ids)) == boots, ids
        assert (root / "etc/machine-id").read_text().strip() not in ids
    written.unlink(missing_ok=True)
