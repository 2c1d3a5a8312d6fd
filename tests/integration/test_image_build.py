"""A real minimal instance: debootstrap (or the cached base), kernel, dracut with 90sidus, lsinitrd,
then served by ganesha in a namespace and read back over NFS.

Slow (minutes: apt and one dracut run); the debootstrap base and the .debs are cached in
SIDUS_IMAGE_CACHE (default /var/cache/sidus-appliance) so later runs skip the downloads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from sidus_appliance import image, nfs
from sidus_appliance.config import parse_config
from sidus_appliance.image import chrootenv

from .test_nfs_ganesha import NEEDED, SERVER, Pair, url

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

CACHE = Path(os.environ.get("SIDUS_IMAGE_CACHE", "/var/cache/sidus-appliance"))


def config_for(tmp: Path):
    return parse_config(f"""
interface: s0
address: {SERVER}/24
domain: sidus.zone
state_dir: {tmp}/state
hosts:
  - {{name: master, mac: "08:00:aa:bb:cc:dd", address: 10.20.17.253, profile: master}}
instances:
  - {{name: mini}}
nfs:
  backend: ganesha
  export_root: {tmp}/export
  home: {tmp}/export/home
  instances_dir: {tmp}/nfsroot
  ganesha_config: {tmp}/state/ganesha.conf
""", "test.yaml")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap, chroot, mount namespaces)")
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap not installed (apt-get install debootstrap)")
    tmp = Path(tmp_path_factory.mktemp("image", numbered=True))
    config = config_for(tmp)
    said: list[str] = []
    started = time.monotonic()
    result = image.build(config, "mini", "bookworm", "amd64", "minimal", said.append, cache_dir=CACHE)
    print(f"image build took {time.monotonic() - started:.0f}s: {result.timings}")
    yield config, result, said
    shutil.rmtree(tmp, ignore_errors=True)


def test_build_produces_a_bootable_root(built) -> None:
    _config, result, said = built
    root = result.root
    assert result.kernels and (root / "boot" / f"vmlinuz-{result.kernels[-1]}").exists()
    assert all((root / image.builder.STAMP_DIR / step).exists() for step in image.STEPS)
    assert chrootenv.mounts_under(root) == []
    assert not (root / "usr/sbin/policy-rc.d").exists()
    assert not (root / "etc/hostname").exists()
    assert (root / "etc/resolv.conf").read_text().startswith(f"nameserver {SERVER}")
    assert "/home nfs" in (root / "etc/fstab").read_text()
    listing = (root / f"var/lib/sidus/lsinitrd-{result.kernels[-1]}.txt").read_text()
    assert image.builder.verify_listing(listing) == []
    # The generated password was printed once, and is nowhere in the log.
    assert result.password and sum(result.password in line for line in said) == 1
    assert result.password not in result.log_path.read_text()
    assert "root:!" not in (root / "etc/shadow").read_text() and "root:*" not in (root / "etc/shadow").read_text()


def test_rebuild_resumes_without_work(built) -> None:
    config, result, _ = built
    said: list[str] = []
    again = image.build(config, "mini", log=said.append)
    assert sum("already done" in line for line in said) == len(image.STEPS)
    assert again.password is None and again.kernels == result.kernels


def test_chroot_runs_commands_and_cleans_up(built) -> None:
    config, result, _ = built
    code = image.chroot(config, "mini", ["/bin/sh", "-c", "test -r /proc/self/status && grep -q NAME=mini "
                                          "/etc/sidus-release && test -x /usr/sbin/policy-rc.d"])
    assert code == 0
    assert image.chroot(config, "mini", ["/bin/false"]) == 1
    assert chrootenv.mounts_under(result.root) == []
    assert not (result.root / "usr/sbin/policy-rc.d").exists()


def test_list_shows_the_instance(built) -> None:
    config, result, _ = built
    (info,) = [i for i in image.list_instances(config) if i.name == "mini"]
    assert info.state == "ready" and info.configured and info.kernels == result.kernels
    assert info.size_bytes and info.size_bytes > 100 * 1024 * 1024


def test_the_built_root_is_served_over_nfs(built) -> None:
    config, result, _ = built
    if os.geteuid() != 0 or any(shutil.which(b) is None for b in NEEDED):
        pytest.skip("needs the ganesha test tools")
    kernel = f"/boot/vmlinuz-{result.kernels[-1]}"
    with Pair() as pair:
        try:
            nfs.apply(config, lambda m: None, netns=pair.server)
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
