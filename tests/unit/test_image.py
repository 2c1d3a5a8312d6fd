"""Image builder pieces that need no network: profiles, host mirrors, system files, chroot hygiene."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sidus_appliance import image
from sidus_appliance.config import parse_config
from sidus_appliance.image import builder as b
from sidus_appliance.image import chrootenv as ch
from sidus_appliance.image import instances as inst
from sidus_appliance.image.profiles import packages

CONFIG = """
interface: eth1
address: 10.20.17.254/24
domain: sidus.zone
state_dir: {tmp}/state
hosts:
  - {{name: master, mac: "08:00:aa:bb:cc:dd", address: 10.20.17.253, profile: master}}
instances:
  - {{name: bookworm}}
nfs:
  export_root: {tmp}/export
  home: {tmp}/export/home
  instances_dir: {tmp}/nfsroot
"""


@pytest.fixture
def config(tmp_path: Path):
    return parse_config(CONFIG.format(tmp=tmp_path), "test.yaml")


def test_profiles() -> None:
    minimal = packages("minimal", "amd64")
    assert minimal[0] == "linux-image-amd64"
    for needed in ("netbase", "dracut", "dracut-network", "nfs-common", "isc-dhcp-client", "iputils-arping", "procps",
                   "openssh-server"):
        assert needed in minimal
    assert set(minimal) < set(packages("cluster", "amd64")) < set(packages("workstation", "amd64"))
    assert "network-manager" not in " ".join(packages("workstation", "amd64"))
    assert packages("minimal", "arm64")[0] == "linux-image-arm64"
    with pytest.raises(ValueError):
        packages("huge", "amd64")
    with pytest.raises(ValueError):
        packages("minimal", "vax")


def test_host_mirrors_deb822_and_list(tmp_path: Path) -> None:
    sources = tmp_path / "debian.sources"
    sources.write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security/\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    assert b.host_mirrors([sources]) == ("http://mirror.example/debian", "http://mirror.example/debian-security")
    listed = tmp_path / "old.list"
    listed.write_text("deb [arch=amd64] http://old.example/debian bookworm main\n"
                      "deb https://packages.cloud.example/apt cloud main\n")
    assert b.host_mirrors([listed]) == ("http://old.example/debian", b.DEFAULT_SECURITY)
    assert b.host_mirrors([]) == (b.DEFAULT_MIRROR, b.DEFAULT_SECURITY)


def test_instance_root(config) -> None:
    assert image.instance_root(config, "bookworm") == config.nfs.instances_dir / "bookworm"
    assert image.instance_root(config, "other") == config.nfs.instances_dir / "other"
    with pytest.raises(ValueError):
        image.instance_root(config, "../etc")


def test_fstab_mounts_home_from_the_appliance(config) -> None:
    text = b.fstab_text(config)
    assert "10.20.17.254:/home /home nfs rw,vers=4,hard,noatime,_netdev,nofail 0 0" in text
    elsewhere = config.with_overrides(nfs=config.nfs.__class__(home=Path("/data/home")))
    assert "10.20.17.254:/data/home /home nfs rw,vers=3," in b.fstab_text(elsewhere)


def test_system_step_hygiene(config, tmp_path: Path) -> None:
    root = image.instance_root(config, "bookworm")
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("buildhost\n")
    (root / "etc" / "resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")
    (root / "etc" / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    builder = b.Builder(config, "bookworm", log=lambda m: None)
    builder.step_system()
    etc = root / "etc"
    assert not (etc / "hostname").exists()
    assert (etc / "network" / "interfaces").read_text().endswith("auto lo\niface lo inet loopback\n")
    assert "eth0" not in (etc / "network" / "interfaces").read_text().split("\n", 3)[-1]
    assert not (etc / "resolv.conf").is_symlink()
    assert (etc / "resolv.conf").read_text() == "nameserver 10.20.17.254\nsearch sidus.zone\n"
    assert "/home nfs" in (etc / "fstab").read_text()
    assert (etc / "machine-id").read_text() == ""
    assert "NAME=bookworm" in (etc / "sidus-release").read_text()


def test_apt_and_dracut_module_steps(config) -> None:
    root = image.instance_root(config, "bookworm")
    (root / "etc" / "apt").mkdir(parents=True)
    builder = b.Builder(config, "bookworm", log=lambda m: None, mirror="http://m.example/debian",
                        security_mirror="http://m.example/debian-security")
    builder.step_apt()
    assert (root / "etc/apt/sources.list").read_text().splitlines()[1:] == [
        "deb http://m.example/debian bookworm main",
        "deb http://m.example/debian bookworm-updates main",
        "deb http://m.example/debian-security bookworm-security main",
    ]
    assert 'Install-Recommends "false"' in (root / "etc/apt/apt.conf.d/90sidus").read_text()
    builder.step_dracut_module()
    module = root / "usr/lib/dracut/modules.d/90sidus"
    assert os.access(module / "module-setup.sh", os.X_OK)
    assert os.access(module / "sidus-overlay.sh", os.X_OK)
    conf = (root / "etc/dracut.conf.d/90-sidus.conf").read_text()
    assert 'add_dracutmodules+=" network-legacy nfs sidus "' in conf and 'hostonly="no"' in conf


def test_verify_listing() -> None:
    good = "\n".join([
        "-rw-r--r-- 1 root root 1 Jan 1 usr/lib/modules/6.1.0-50-amd64/kernel/fs/overlayfs/overlay.ko",
        "-rwxr-xr-x 1 root root 1 Jan 1 usr/lib/dracut/hooks/pre-pivot/20-sidus-overlay.sh",
        "-rwxr-xr-x 1 root root 1 Jan 1 usr/sbin/dhclient-script.dracut",
        "-rwxr-xr-x 1 root root 1 Jan 1 usr/sbin/mount.nfs",
        "-rw-r--r-- 1 root root 1 Jan 1 usr/lib/modules/6.1.0-50-amd64/kernel/fs/nfs/nfs.ko",
        "-rw-r--r-- 1 root root 1 Jan 1 etc/protocols",
    ])
    assert b.verify_listing(good) == []
    missing = b.verify_listing(good.replace("20-sidus-overlay.sh", "10-overlay-mount.sh"))
    assert missing == ["sidus pre-pivot hook"]
    no_protocols = good.replace("etc/protocols", "etc/protocols.bak")
    assert b.verify_listing(no_protocols) == ["/etc/protocols (mount.nfs needs it)"]


def test_refuses_a_foreign_directory(config) -> None:
    root = image.instance_root(config, "bookworm")
    (root / "precious").mkdir(parents=True)
    builder = b.Builder(config, "bookworm", log=lambda m: None)
    with pytest.raises(b.BuildError, match="refusing"):
        builder.step_bootstrap()
    assert (root / "precious").exists()


def test_steps_resume_from_stamps(config, monkeypatch: pytest.MonkeyPatch) -> None:
    root = image.instance_root(config, "bookworm")
    (root / b.STAMP_DIR).mkdir(parents=True)
    for step in b.STEPS[:5]:
        (root / b.STAMP_DIR / step).write_text("x")
    ran: list[str] = []
    for step in b.STEPS:
        monkeypatch.setattr(b.Builder, "step_" + step.replace("-", "_"), lambda self, s=step: ran.append(s))
    said: list[str] = []
    b.Builder(config, "bookworm", log=said.append, redo=["apt"]).run()
    assert ran == ["apt", "password", "initramfs", "verify", "clean"]
    assert any("[1/9] bootstrap: already done" in s for s in said)
    assert all((root / b.STAMP_DIR / s).exists() for s in b.STEPS)


def test_failure_names_the_step_and_the_log(config, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self):
        self._note("E: Unable to locate package linux-image-vax")
        raise b.BuildError("apt-get install failed")

    for step in b.STEPS:
        monkeypatch.setattr(b.Builder, "step_" + step.replace("-", "_"), lambda self: None)
    monkeypatch.setattr(b.Builder, "step_packages", boom)
    image.instance_root(config, "bookworm").mkdir(parents=True)
    with pytest.raises(b.BuildError) as info:
        b.Builder(config, "bookworm", log=lambda m: None).run()
    text = str(info.value)
    assert "packages failed" in text and "Unable to locate package" in text and "resume" in text
    assert not (image.instance_root(config, "bookworm") / b.STAMP_DIR / "packages").exists()


def test_generated_password() -> None:
    first, second = b.generate_password(), b.generate_password()
    assert first != second and len(first) == 23 and ":" not in first


def test_policy_rc_d_is_removed_afterwards(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with ch.policy_rc_d(root):
        script = root / "usr/sbin/policy-rc.d"
        assert script.read_text().endswith("exit 101\n") and os.access(script, os.X_OK)
    assert not script.exists()
    script.write_text("#!/bin/sh\nexit 0\n")  # the administrator's own: left alone
    with ch.policy_rc_d(root):
        pass
    assert script.read_text() == "#!/bin/sh\nexit 0\n"


def test_kernels_and_list(config) -> None:
    root = image.instance_root(config, "bookworm")
    boot = root / "boot"
    boot.mkdir(parents=True)
    for v in ("6.1.0-9-amd64", "6.1.0-10-amd64"):
        (boot / f"vmlinuz-{v}").write_text("k")
        (boot / f"initrd.img-{v}").write_text("i")
    (boot / "vmlinuz-6.2.0-1-amd64").write_text("no initrd yet")
    (config.nfs.instances_dir / "stray").mkdir()
    assert image.kernel_versions(root) == ["6.1.0-9-amd64", "6.1.0-10-amd64"]
    kernels = image.boot_kernels("bookworm", root)
    assert kernels[-1].kernel_name == "vmlinuz-6.1.0-10-amd64@bookworm"
    assert kernels[-1].initrd == boot / "initrd.img-6.1.0-10-amd64"
    infos = {i.name: i for i in image.list_instances(config)}
    assert infos["bookworm"].configured and infos["bookworm"].state == "foreign (not built here)"
    assert not infos["stray"].configured
    assert infos["bookworm"].size_bytes and infos["bookworm"].size_bytes > 0
    text = image.format_instances(list(infos.values()))
    assert "6.1.0-10-amd64" in text and "stray" in text
    assert inst.human_size(3 * 1024 * 1024) == "3.0 MiB"


# -- real chroot, with a busybox root: mounts exist during the command, never after ------------


@pytest.fixture
def busybox_root(tmp_path: Path) -> Path:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare")
    busybox = shutil.which("busybox")
    if busybox is None or not _static_hint(busybox):
        pytest.skip("needs busybox-static")
    root = tmp_path / "root"
    for d in ("bin", "proc", "sys", "dev", "etc", "usr/sbin", "var/cache/apt/archives"):
        (root / d).mkdir(parents=True)
    shutil.copy(busybox, root / "bin" / "busybox")
    for tool in ("sh", "cat", "ls", "test", "grep", "sleep", "echo"):
        (root / "bin" / tool).symlink_to("busybox")
    (root / "etc" / "resolv.conf").write_text("nameserver 10.20.17.254\n")
    return root


def _static_hint(path: str) -> str:
    # busybox-static has no interpreter, so ldd says "not a dynamic executable".
    result = subprocess.run(["ldd", path], capture_output=True, text=True, check=False)
    return "statically" if "not a dynamic" in result.stdout + result.stderr else ""


def test_chroot_mounts_only_during_the_command(busybox_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.log"
    with open(out, "w") as log:
        code = ch.run(busybox_root, ["/bin/sh", "-c",
                                     "test -e /proc/self/status && test -c /dev/null && test -d /sys/kernel "
                                     "&& grep -q ' /dev/pts ' /proc/self/mountinfo && echo inside-ok"], log=log)
    assert code == 0 and "inside-ok" in out.read_text()
    assert ch.mounts_under(busybox_root) == []
    assert (busybox_root / "etc/resolv.conf").read_text() == "nameserver 10.20.17.254\n"


def test_chroot_failure_leaves_no_mounts(busybox_root: Path) -> None:
    with pytest.raises(ch.ChrootError, match="exit status 3"):
        ch.run(busybox_root, ["/bin/sh", "-c", "exit 3"])
    assert ch.run(busybox_root, ["/bin/sh", "-c", "exit 4"], check=False) == 4
    assert ch.mounts_under(busybox_root) == []


def test_killed_chroot_leaves_no_mounts(busybox_root: Path) -> None:
    proc = subprocess.Popen(ch.chroot_argv(busybox_root, ["/bin/sleep", "30"]), env=ch.CHROOT_ENV)
    try:
        import time

        time.sleep(0.5)
        assert ch.mounts_under(busybox_root) == []  # private namespace: invisible from the host
    finally:
        proc.kill()
        proc.wait()
    assert ch.mounts_under(busybox_root) == []


def test_chroot_apt_cache_bind(busybox_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "pkg.deb").write_text("deb")
    out = tmp_path / "out.log"
    with open(out, "w") as log:
        ch.run(busybox_root, ["/bin/ls", "/var/cache/apt/archives"], log=log, apt_cache=cache)
    assert "pkg.deb" in out.read_text()
    assert not (busybox_root / "var/cache/apt/archives/pkg.deb").exists()
